"""A bench measures a command's own peak RSS, not the bench's (bench/child_usage.py).

Linux carries a process's peak RSS into a child it forks: a bench holding a big log
reported its own size as every replay's peak. The stub the bench now starts commands
through is small, so the command's figure is its own.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from bench.child_usage import run_measured

BIG_MB = 300


@pytest.fixture(scope="module")
def big_parent():
    """This process grown to BIG_MB of resident memory, as a bench holding a long log is."""
    ballast = bytearray(BIG_MB << 20)
    ballast[:: 4096] = b"\1" * len(ballast[:: 4096])  # touch every page: resident, not just reserved
    yield ballast
    del ballast


def test_a_child_forked_directly_reports_the_parents_peak(big_parent):
    # the bug the stub exists for: wait4's ru_maxrss of a tiny child includes what this process held at the fork
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    _pid, _status, usage = os.wait4(proc.pid, 0)
    assert usage.ru_maxrss / 1024 >= BIG_MB


def test_through_the_stub_a_small_command_reports_its_own_peak(big_parent):
    usage = run_measured([sys.executable, "-c", "pass"])
    assert usage.returncode == 0
    assert usage.peak_rss_mb < BIG_MB / 3


def test_a_command_that_grows_reports_what_it_grew_to(big_parent):
    grow = "b = bytearray(120 << 20); b[::4096] = b'1' * len(b[::4096])"
    usage = run_measured([sys.executable, "-c", grow])
    assert 120 <= usage.peak_rss_mb < BIG_MB
    assert usage.cpu_s > 0 and usage.wall_s >= usage.cpu_s * 0.5


def test_output_and_exit_status_pass_through(tmp_path):
    out = tmp_path / "out"
    with out.open("wb") as f:
        usage = run_measured([sys.executable, "-c", "import sys; print('hello'); sys.exit(3)"], stdout=f)
    assert usage.returncode == 3
    assert out.read_text() == "hello\n"


def test_a_command_that_cannot_start_is_an_error():
    with pytest.raises(RuntimeError, match="no usage figures"):
        run_measured(["/nonexistent/command"], stderr=subprocess.DEVNULL)
