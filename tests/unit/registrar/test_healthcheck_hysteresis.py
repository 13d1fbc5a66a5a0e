"""Hysteresis rules of the central checker (pure: no I/O, no clock)."""

import pytest

from registrar.healthcheck.hysteresis import DRAINING, HEALTHY, UNHEALTHY, Hysteresis

K = "reviews/reviews-v1-b"


def feed(h: Hysteresis, results: str, key: str = K):
    """'F' = failed probe, 'P' = passed; returns the transitions returned, in order."""
    out = []
    for r in results:
        t = h.record(key, r == "P", "HTTP 503 on /healthz" if r == "F" else "HTTP 200 on /healthz")
        if t is not None:
            out.append(t)
    return out


def test_unhealthy_after_exactly_fall_consecutive_failures():
    h = Hysteresis(fall=3, rise=2)
    h.track(K, HEALTHY)
    assert feed(h, "FF") == []
    [t] = feed(h, "F")
    assert (t.previous, t.status, t.count) == (HEALTHY, UNHEALTHY, 3)
    assert t.describe() == f"{K} healthy -> unhealthy after 3 failures (HTTP 503 on /healthz)"
    assert t.reason == "3 consecutive failures (HTTP 503 on /healthz)"


def test_healthy_after_rise_consecutive_successes_when_logged_unhealthy():
    h = Hysteresis(fall=3, rise=2)
    h.track(K, UNHEALTHY)
    assert feed(h, "P") == []
    [t] = feed(h, "P")
    assert (t.previous, t.status, t.count) == (UNHEALTHY, HEALTHY, 2)
    assert "after 2 successes" in t.describe()


def test_flapping_never_transitions():
    h = Hysteresis(fall=3, rise=2)
    h.track(K, HEALTHY)
    assert feed(h, "FFPFFPFPFFP" * 5) == []
    h2 = Hysteresis(fall=3, rise=2)
    h2.track(K, UNHEALTHY)
    assert feed(h2, "PFPFPFPF" * 5) == []


def test_passes_while_healthy_and_failures_while_unhealthy_append_nothing():
    h = Hysteresis(fall=1, rise=1)
    h.track(K, HEALTHY)
    assert feed(h, "PPPP") == []
    h.track("a/b", UNHEALTHY)
    assert feed(h, "FFFF", key="a/b") == []


def test_draining_is_left_alone():
    h = Hysteresis(fall=1, rise=1)
    h.track(K, DRAINING)
    assert feed(h, "FFFFPPPPFFFF") == []


def test_one_transition_in_flight_until_read_back_then_no_duplicate():
    h = Hysteresis(fall=2, rise=2)
    h.track(K, HEALTHY)
    [t] = feed(h, "FF")
    assert t.status == UNHEALTHY
    assert h.get(K).pending == UNHEALTHY
    assert feed(h, "FFFF") == []  # appended, not yet read back: no second append
    h.logged(K, UNHEALTHY)  # our record read back from the log
    assert h.get(K).pending is None
    assert feed(h, "FFFFFF") == []  # the log already says unhealthy
    [back] = feed(h, "PP")
    assert back.status == HEALTHY


def test_a_logged_status_read_back_suppresses_a_duplicate_on_takeover():
    # a checker taking over a shard: another checker already logged the instance unhealthy
    h = Hysteresis(fall=2, rise=2)
    h.track(K, UNHEALTHY)
    assert feed(h, "FFFFFFFF") == []


def test_someone_elses_event_resets_the_counts():
    h = Hysteresis(fall=3, rise=2)
    h.track(K, HEALTHY)
    assert feed(h, "FF") == []
    h.logged(K, UNHEALTHY)  # e.g. an operator's `registrar health`
    assert h.get(K).failures == 0
    assert feed(h, "F") == []
    h.logged(K, HEALTHY)  # e.g. a re-registration resets to healthy
    assert feed(h, "FF") == []
    [t] = feed(h, "F")
    assert t.status == UNHEALTHY


def test_a_failed_append_is_retried_on_the_next_result():
    h = Hysteresis(fall=2, rise=2)
    h.track(K, HEALTHY)
    [t] = feed(h, "FF")
    h.append_failed(K)
    [again] = feed(h, "F")
    assert again.status == UNHEALTHY and again.count == 3


def test_settled_without_a_change_allows_a_new_decision():
    # our append was read back but the fold did not apply it (e.g. a newer registration reset the instance)
    h = Hysteresis(fall=2, rise=2)
    h.track(K, HEALTHY)
    feed(h, "FF")
    h.settled(K)
    [t] = feed(h, "F")
    assert t.status == UNHEALTHY


def test_forgotten_and_untracked_keys_are_ignored():
    h = Hysteresis(fall=1, rise=1)
    assert h.record("x/y", False, "refused") is None
    h.track(K, HEALTHY)
    h.forget(K)
    assert K not in h and h.record(K, False, "refused") is None


def test_counters_are_reported():
    h = Hysteresis(fall=5, rise=2)
    h.track(K, HEALTHY)
    feed(h, "PPFF")
    d = h.get(K).as_dict()
    assert d["consecutive_failures"] == 2 and d["consecutive_successes"] == 0
    assert d["probes"] == 4 and d["failures_total"] == 2 and d["believed"] == HEALTHY
    assert d["last_detail"] == "HTTP 503 on /healthz" and d["last_ok"] is False


def test_bad_parameters_and_statuses_are_refused():
    with pytest.raises(ValueError):
        Hysteresis(fall=0, rise=1)
    with pytest.raises(ValueError):
        Hysteresis(fall=1, rise=1).track(K, "sick")
