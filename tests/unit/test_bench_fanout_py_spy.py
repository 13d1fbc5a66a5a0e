"""bench/xds_fanout.py --py-spy: the summary of py-spy's raw stacks (the sampling itself needs py-spy and a gateway)."""

from __future__ import annotations

from tests.support.benches import bench_module

xds_fanout = bench_module("xds_fanout")


def test_the_summary_ranks_frames_by_own_and_inclusive_samples(tmp_path):
    raw = tmp_path / "ramp.txt"
    raw.write_text("main (a.py:1);serve (server.py:10);write (grpc:1) 6\n"
                   "main (a.py:1);serve (server.py:10) 3\n"
                   "main (a.py:1);on_view (delta.py:5) 1\n")
    summary = xds_fanout.summarise_stacks(raw, "py-spy, gateway during ramp", top=2)
    lines = summary.splitlines()
    assert lines[0].startswith("--- py-spy, gateway during ramp: 10 samples")
    own = lines[lines.index("  own:") + 1: lines.index("  with callees:")]
    assert [line.split("%")[0].strip() for line in own] == ["60.0", "30.0"]
    assert own[0].endswith("write (grpc:1)") and own[1].endswith("serve (server.py:10)")
    callees = lines[lines.index("  with callees:") + 1:]
    assert callees[0].strip() == "100.0%  main (a.py:1)" and callees[1].strip() == "90.0%  serve (server.py:10)"


def test_a_missing_file_gives_an_empty_summary(tmp_path):
    summary = xds_fanout.summarise_stacks(tmp_path / "none.txt", "py-spy, gateway during churn")
    assert summary.splitlines()[0].startswith("--- py-spy, gateway during churn: 0 samples")
