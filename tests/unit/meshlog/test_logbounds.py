"""meshlog.logbounds: the log-line throttle and the throttled logger."""

from __future__ import annotations

import logging

import pytest

from meshlog.logbounds import Throttle, ThrottledLog


def test_throttle_passes_a_burst_then_one_per_interval_with_the_suppressed_count():
    t = Throttle(burst=3, interval=10.0)
    assert [t.admit(0.0) for _ in range(3)] == [0, 0, 0]
    assert [t.admit(0.1 * i) for i in range(1, 100)] == [None] * 99  # up to 9.9 s
    assert t.suppressed == 99
    assert t.admit(10.5) == 99  # one token back after an interval: passes and reports what it hid
    assert t.suppressed == 0
    assert t.admit(10.6) is None


def test_throttle_refills_no_more_than_the_burst():
    t = Throttle(burst=2, interval=1.0)
    assert t.admit(0.0) == 0
    assert [t.admit(1000.0) for _ in range(3)] == [0, 0, None]


def test_throttle_bounds_a_flood():
    t = Throttle(burst=5, interval=10.0)
    passed = sum(t.admit(i * 0.0002) is not None for i in range(20_000))  # 20,000 lines in 4 s
    assert passed == 5


def test_throttle_rejects_nonsense_settings():
    with pytest.raises(ValueError):
        Throttle(burst=0)
    with pytest.raises(ValueError):
        Throttle(interval=0)


def test_throttled_log_writes_one_line_per_interval_and_counts_the_rest(caplog):
    now = [0.0]
    warn = ThrottledLog(logging.getLogger("t.throttled"), interval=10.0, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="t.throttled"):
        for i in range(5):
            now[0] = float(i)
            warn.warning("queue full: %d", i)
        now[0] = 10.0
        warn.warning("queue full: %d", 10)
    assert [r.getMessage() for r in caplog.records] == ["queue full: 0", "queue full: 10 (4 similar lines suppressed)"]
