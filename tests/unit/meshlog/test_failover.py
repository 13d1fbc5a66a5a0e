"""meshlog.failover's figures: what a run of steady appends through a broker kill shows (no broker needed)."""

from __future__ import annotations

import pytest

from meshlog.failover import figures


def steady(start: float, end: float, rate: float) -> list[float]:
    n = int((end - start) * rate)
    return [start + (i + 1) / rate for i in range(n)]


def test_the_stall_is_the_gap_across_the_kill_and_rates_are_split_before_during_after():
    # 100/s for 3 s, nothing for 2.5 s after the kill at 3.0, then the backlog and 100/s again until 13.0
    acks = steady(0.0, 3.0, 100) + [5.5] * 250 + steady(5.5, 13.0, 100)
    f = figures(acks, start=0.0, kill_at=3.0, end=13.0, during_s=5.0)
    assert f.acked == len(acks)
    assert f.stall_s == pytest.approx(2.5)
    assert f.first_ack_after_kill_s == pytest.approx(2.5)
    assert f.rate_before == pytest.approx(100)
    assert f.rate_during == pytest.approx((250 + 250) / 5.0)  # the backlog lands in the window
    assert f.rate_after == pytest.approx(500 / 5.0)
    assert sum(f.per_second) == len(acks) and f.per_second[4] == 0 and f.per_second[5] >= 250
    assert "stall 2.50 s" in f.text()


def test_a_kill_right_after_an_acknowledgement_still_counts_from_the_last_acknowledgement_before_it():
    f = figures([1.0, 1.99, 4.0], start=0.0, kill_at=2.0, end=5.0)
    assert f.stall_s == pytest.approx(2.01)  # 1.99 -> 4.0
    assert f.first_ack_after_kill_s == pytest.approx(2.0)


def test_nothing_acknowledged_after_the_kill_is_a_stall_to_the_end_and_says_so():
    f = figures([0.5, 1.0], start=0.0, kill_at=2.0, end=10.0)
    assert f.first_ack_after_kill_s is None
    assert f.stall_s == pytest.approx(8.0)
    assert f.rate_during == 0 and f.rate_after == 0
    assert "first acknowledgement after the kill: none" in f.text()


def test_the_slow_start_counts_as_a_stall_too_and_acks_outside_the_run_are_ignored():
    f = figures([-1.0, 3.0, 3.1, 99.0], start=0.0, kill_at=3.05, end=4.0)
    assert f.acked == 2
    assert f.stall_s == pytest.approx(3.0)


def test_a_kill_outside_the_run_is_refused():
    with pytest.raises(ValueError, match="kill_at"):
        figures([1.0], start=0.0, kill_at=5.0, end=4.0)
