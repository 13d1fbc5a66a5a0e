"""meshlog.procs: children die with their parent, lead their own group when asked, and are spawned without preexec_fn."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from meshlog import procs

needs_setpriv = pytest.mark.skipif(not procs._death_signal_prefix(), reason="no setpriv with --pdeathsig on this host")


def _alive(pid: int) -> bool:
    """Running (a zombie, exited but not reaped, counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _cmdline(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[:-1]


def _wait(predicate, timeout: float, what: str):
    return procs.wait_until(predicate, timeout, what, interval=0.02)


def test_no_preexec_fn_and_own_group_by_process_group():
    argv, kwargs = procs.tied_to_parent(["sleep", "1"], own_group=True)
    assert "preexec_fn" not in kwargs
    assert kwargs == {"process_group": 0}
    assert argv[-2:] == ["sleep", "1"]
    assert procs.tied_to_parent(["sleep", "1"])[1] == {}


@needs_setpriv
def test_the_command_runs_under_setpriv_pdeathsig():
    argv, _ = procs.tied_to_parent(["sleep", "1"])
    assert Path(argv[0]).name == "setpriv" and argv[1:4] == ["--pdeathsig", "KILL", "--"]


def test_a_missing_program_still_raises_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        procs.tied_to_parent(["meshlog-no-such-program"])
    with pytest.raises(FileNotFoundError):
        procs.spawn("missing", [str(tmp_path / "nope")], tmp_path)
    with pytest.raises(FileNotFoundError):  # PATH as the child would see it
        procs.spawn("missing", ["sleep", "1"], tmp_path, env={"PATH": str(tmp_path)})


def test_spawned_child_keeps_its_pid_and_runs_the_real_command(tmp_path):
    child = procs.spawn("sleeper", ["sleep", "60"], tmp_path)
    try:
        assert _wait(lambda: _cmdline(child.pid) == ["sleep", "60"], 5, "the child to exec sleep")
        assert os.getpgid(child.pid) == os.getpgid(0)  # not its own group unless asked
        assert child.stop(5) == -signal.SIGTERM
    finally:
        child.kill9()


def test_own_group_makes_the_child_a_process_group_leader(tmp_path):
    child = procs.spawn("leader", ["sleep", "60"], tmp_path, own_group=True)
    try:
        assert os.getpgid(child.pid) == child.pid
        _wait(lambda: _cmdline(child.pid) == ["sleep", "60"], 5, "the child to exec sleep")
        assert os.getpgid(child.pid) == child.pid  # still after setpriv's exec
    finally:
        child.kill9()


@needs_setpriv
@pytest.mark.parametrize("own_group", [False, True])
def test_spawned_child_dies_when_its_parent_is_killed(tmp_path, own_group):
    parent_code = textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from meshlog.procs import spawn
        child = spawn("sleeper", ["sleep", "60"], Path({str(tmp_path)!r}), own_group={own_group})
        print(child.pid, flush=True)
        time.sleep(60)
    """)
    parent = subprocess.Popen([sys.executable, "-c", parent_code], stdout=subprocess.PIPE, text=True)
    child_pid = None
    try:
        child_pid = int(parent.stdout.readline())
        _wait(lambda: _cmdline(child_pid) == ["sleep", "60"], 10, "the child to exec sleep")
        parent.kill()
        parent.wait(5)
        _wait(lambda: not _alive(child_pid), 5, "the child to die with its parent")
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait(5)
        if child_pid is not None and _alive(child_pid):
            os.kill(child_pid, signal.SIGKILL)


@needs_setpriv
def test_a_child_whose_parent_is_already_gone_does_not_run(tmp_path):
    # as if the spawner had died before setpriv set the death signal: the child's parent is not the one expected
    marker = tmp_path / "ran"
    argv, kwargs = procs._tied(["touch", str(marker)], False, parent_pid=os.getpid() + 1)
    done = subprocess.run(argv, capture_output=True, text=True, timeout=10, **kwargs)
    assert done.returncode == 1
    assert "died before the child started" in done.stderr
    assert not marker.exists()
    argv, kwargs = procs._tied(["touch", str(marker)], False, parent_pid=os.getpid())
    assert subprocess.run(argv, timeout=10, **kwargs).returncode == 0
    assert marker.exists()


def test_an_argument_is_passed_through_unchanged(tmp_path):
    odd = ["a b", "$HOME", "'\"", "", "-c", "--", "*"]
    child = procs.spawn("echo", [sys.executable, "-c", "import sys, json; print(json.dumps(sys.argv[1:]))", *odd],
                        tmp_path)
    assert child.proc.wait(10) == 0
    assert json.loads(child.log_path.read_text().splitlines()[-1]) == odd
