"""meshlog.logbounds: bounded, escaped excerpts and the log-line throttle."""

from __future__ import annotations

import pytest

from meshlog.logbounds import Throttle, excerpt


def test_short_printable_text_is_itself():
    assert excerpt("node-1.default", 200) == "node-1.default"
    assert excerpt("héllo wörld ✓", 200) == "héllo wörld ✓"


def test_control_characters_are_escaped_so_a_line_stays_one_line():
    out = excerpt("a\x1b[2J\nb\rc\u202ed\u2028e\x00", 200)
    assert out == "a\\x1b[2J\\x0ab\\x0dc\\u202ed\\u2028e\\x00"
    assert out.isprintable()


def test_backslashes_are_escaped_so_escapes_are_unambiguous():
    assert excerpt("a\\x1b", 200) == "a\\\\x1b"


def test_lone_surrogates_are_escaped():
    assert excerpt("x\ud800", 200) == "x\\ud800"


def test_long_text_is_cut_and_says_how_much_was_left_out():
    out = excerpt("x" * 1_000_000, 200)
    assert out == "x" * 200 + "…[+999800 chars]"


def test_escapes_count_towards_the_limit():
    out = excerpt("\n" * 1000, 10)
    assert out.startswith("\\x0a\\x0a")
    assert len(out.split("…")[0]) <= 10
    assert out.endswith("…[+998 chars]")


def test_limit_must_be_positive():
    with pytest.raises(ValueError):
        excerpt("x", 0)


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
