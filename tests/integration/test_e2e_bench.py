"""bench/e2e_propagation.py --quick runs the real system end to end and prints every figure.

The bench starts its own broker (the project's launcher), a projector, two
gateway replicas and simulated Envoy streams, appends health flips with the
events producer and measures each one until every subscriber has it. This
checks that it completes and that the time split is whole: each flip's five
stages are known (the projector's batch timeline line and the gateways' view
tail gauges were found for it) and add up to its reach-all time. No timing
is asserted.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
STAGE_LINES = (
    "append (bench -> broker log time)",
    "log -> projector fetched it",
    "projector: decode+fold+render+publish -> view topic",
    "view topic -> gateway applied it",
    "gateway applied -> last subscriber read it",
)


def test_quick_bench_prints_every_figure_and_a_whole_split(tmp_path):
    out_json = tmp_path / "e2e.json"
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "e2e_propagation.py"), "--quick", "--json",
                           str(out_json)], cwd=ROOT, capture_output=True, text=True, timeout=420)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    assert "streams: 201/201 over replicas [101, 100]; 50 subscribers of svc-000; 5 flips, 5 reached all" in out
    assert "reach all subscribers: p50 " in out and "per delivery p50 " in out
    for label in STAGE_LINES:
        line = next(x for x in out.splitlines() if x.strip().startswith(label))
        assert "None" not in line, line
    assert "projector per flip (p50 ms): decode " in out
    assert "load average" in out
    assert "target: reach-all p99 <= 150 ms: " in out

    figures = json.loads(out_json.read_text())
    flips = figures["flips"]
    assert len(flips) == 5
    for flip in flips:
        assert flip["subscribers_reached"] == 50
        assert all(g["matches"] for g in flip["gateways"].values()), flip["gateways"]
        stages = flip["stages"]
        assert stages is not None, flip
        assert abs(sum(stages.values()) - flip["reach_all_ms"]) < 0.01
    assert figures["stages_ms"]["to_client"]["n"] == 5
