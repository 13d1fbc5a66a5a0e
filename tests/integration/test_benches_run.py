"""The benches the README's figures come from still run, and still measure something.

A bench is a script nobody runs between measurements, so it rots silently: on
2026-12-02 three were found broken by changes elsewhere (bench/projector.py's live
part crashed on a keyword the projector service gained; the health checker bench's
checker and the on-demand bench's projector refused the benches' unsigned events
once events were verified by default, so one measured "0 probes/s" and the other
timed out). Each runs here at a tiny size, on a broker of its own (a bench's
projector and checker write to the log, which the session's other tests read), with
``MESHLOG_INSECURE_EVENTS`` unset as on a developer's machine, so a bench must say
itself what it needs. No timing is asserted; what is checked is that each completes
and that its figures describe work done.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def run_bench(name: str, *args: str, timeout: float) -> str:
    env = {k: v for k, v in os.environ.items()
           if k not in ("MESHLOG_INSECURE_EVENTS", "MESHLOG_KAFKA_BOOTSTRAP", "MESHLOG_KAFKA_BROKERS")}
    done = subprocess.run([sys.executable, str(ROOT / "bench" / f"{name}.py"), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


@pytest.mark.timeout(300)
def test_the_health_checker_bench_probes_what_it_registered():
    out = run_bench("healthcheck", "--instances", "20", "--window", "2", timeout=240)
    rate = re.search(r"20 http instances, --interval 1: ([\d,]+) probes/s sustained", out)
    assert rate, out
    assert int(rate.group(1).replace(",", "")) > 0, out


@pytest.mark.timeout(420)
def test_the_projector_bench_measures_the_live_projector_verifying_what_it_folds():
    out = run_bench("projector", "--services", "10", "--instances", "2", "--events", "2000", "--burst", "500",
                    timeout=360)
    assert "decode+verify+fold, one signature per event:" in out, out
    sustained = re.search(r"sustained: ([\d,]+) events in .*signed and verified \(transitions signed alone\), "
                          r"(\d+) refused", out)
    assert sustained, out
    assert int(sustained.group(1).replace(",", "")) >= 2000 and sustained.group(2) == "0", sustained.group(0)
    assert re.search(r"burst: 500 events caught up", out), out


@pytest.mark.timeout(420)
def test_the_on_demand_bench_gets_every_first_request_answered():
    out = run_bench("on_demand_first_request", "--services", "2", timeout=360)
    assert re.search(r"^first +n= +2 ", out, re.MULTILINE), out
    assert "failed first requests: 0 []" in out, out


@pytest.mark.timeout(300)
def test_the_catch_up_order_bench_builds_its_log_and_the_gate_folds_it_in_merge_order():
    out = run_bench("catchup_order", "--events", "3000", "--projector", timeout=240)
    assert re.search(r"^log: 3,000 events of bench/replay\.py's history appended", out, re.MULTILINE), out
    assert re.search(r"^fetch order +3,000 records in", out, re.MULTILINE), out
    # the projector's own fetch shell releases every record in the merge order
    assert re.search(r"^merge gate +3,000 records in .*: +0 folded after a later record", out, re.MULTILINE), out
    assert re.search(r"^projector +caught up in [\d.]+ s wall", out, re.MULTILINE), out


@pytest.mark.timeout(120)
def test_the_view_cache_memory_bench_changes_every_endpoint_and_keeps_no_body_before():
    out = run_bench("view_cache_memory", "--names", "200", "--nodes", "100", "--changes", "2", timeout=90)
    assert re.search(r"^200 endpoint bodies of 300 B, 100 memberships naming 5 each at LATEST: [\d.]+ MB held",
                     out, re.MULTILINE), out
    assert len(re.findall(r"^after change round \d \(every body once\): [\d.]+ MB held, 0 bodies before kept",
                          out, re.MULTILINE)) == 2, out
