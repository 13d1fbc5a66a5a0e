"""Nothing on the way from an event to the views waits by default (issue 14 goal 6).

The view producer does not linger, a full garbage collection (which holds the
loop for as long as it scans the whole state) runs once an hour rather than
every idle minute, the state checkpoint (which holds it while serializing the
state) is timed every minute rather than every 5 s, and each published batch
logs its timeline (log -> fetched -> views acknowledged) at DEBUG for
bench/e2e_propagation.py.
"""

from __future__ import annotations

import logging
import time

from events import topics
from projector import cli
from projector import service as service_mod
from projector.service import ProjectorConfig

from .helpers import FakeProducer
from .test_service import close, make, mesh_log


def test_no_default_parks_events_linger_0_full_gc_hourly_checkpoint_each_minute(tmp_path):
    args = cli.build_parser().parse_args(["run", "--data-dir", str(tmp_path)])
    cfg = cli.config_from_args(args, "test:9092")
    assert cfg.linger_ms == 0
    assert cfg.full_gc_interval_s == 3600.0
    assert cfg.checkpoint_interval_s == 60.0
    assert ProjectorConfig(bootstrap="b", data_dir=tmp_path).linger_ms == 0


def test_both_waits_are_flags(tmp_path):
    args = cli.build_parser().parse_args(["run", "--data-dir", str(tmp_path), "--linger-ms", "5",
                                          "--full-gc-interval", "0"])
    cfg = cli.config_from_args(args, "test:9092")
    assert (cfg.linger_ms, cfg.full_gc_interval_s) == (5, 0.0)


def test_the_merge_gate_waits_2s_for_a_stuck_partition_unless_told_otherwise(tmp_path):
    """Only a partition that is behind and stops moving is ever waited for this long (events.merge_gate)."""
    default = cli.config_from_args(cli.build_parser().parse_args(["run", "--data-dir", str(tmp_path)]), "test:9092")
    told = cli.config_from_args(cli.build_parser().parse_args(["run", "--data-dir", str(tmp_path),
                                                               "--merge-hold-ms", "250"]), "test:9092")
    assert (default.merge_hold_s, told.merge_hold_s) == (2.0, 0.25)


def _collections(monkeypatch) -> list[int]:
    done: list[int] = []
    monkeypatch.setattr(service_mod.gc, "collect", lambda *a: done.append(1) or 0)
    monkeypatch.setattr(service_mod.gc, "unfreeze", lambda: None)
    monkeypatch.setattr(service_mod.gc, "freeze", lambda: None)
    return done


def test_an_idle_minute_no_longer_triggers_a_full_collection(tmp_path, monkeypatch):
    svc = make(tmp_path, FakeProducer())
    done = _collections(monkeypatch)
    svc._full_gc_mono = time.monotonic() - 120
    svc._manage_gc(idle=True)
    assert done == []
    svc._full_gc_mono = time.monotonic() - 3601
    svc._manage_gc(idle=True)
    assert done == [1]
    close(svc)


def test_interval_zero_never_collects(tmp_path, monkeypatch):
    svc = make(tmp_path, FakeProducer(), full_gc_interval_s=0)
    done = _collections(monkeypatch)
    svc._full_gc_mono = time.monotonic() - 10 * 86_400
    svc._manage_gc(idle=True)
    svc._manage_gc(idle=False)
    assert done == []
    close(svc)


async def test_a_published_batch_logs_its_timeline(tmp_path, caplog):
    log, producer = mesh_log(), FakeProducer()
    svc = make(tmp_path, producer)
    svc._fetched_at = time.time()
    records = log.records[topics.REGISTRATIONS]
    with caplog.at_level(logging.DEBUG, logger="projector"):
        await svc.process(records)
    newest = max(r.timestamp for r in records)
    lines = [r.getMessage() for r in caplog.records if "timeline" in r.getMessage()]
    assert len(lines) == 1
    assert f"batch 1 timeline: newest event logged at {newest} ms, fetched " in lines[0]
    assert "views published " in lines[0] and lines[0].endswith(" ms after the fetch")
    close(svc)
