"""events.printable: the one escaping and bounding rule for untrusted text."""

from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from events.printable import printable, quoted


def test_short_printable_text_is_itself():
    assert printable("node-1.default", 200) == "node-1.default"
    assert printable("héllo wörld ✓", 200) == "héllo wörld ✓"


def test_control_bidi_and_separator_characters_are_escaped_so_a_line_stays_one_line():
    out = printable("a\x1b[2J\nb\rc\u202ed\u2028e\x00\u200b\ufeff\u2066", 200)
    assert out == "a\\x1b[2J\\x0ab\\x0dc\\u202ed\\u2028e\\x00\\u200b\\ufeff\\u2066"
    assert out.isprintable()


def test_lone_surrogates_and_astral_format_characters_are_escaped():
    assert printable("x\ud800", 200) == "x\\ud800"
    assert printable("x\U000e0041", 200) == "x\\U000e0041"  # a tag character: invisible text


def test_long_text_is_cut_within_the_limit_and_says_how_much_was_left_out():
    out = printable("x" * 1_000_000, 200)
    assert out == "x" * 184 + "…[+999816 chars]"
    assert len(out) == 200


def test_escapes_count_towards_the_limit_and_are_never_cut_in_half():
    out = printable("\n" * 1000, 20)
    assert out == "\\x0a…[+999 chars]"


def test_a_limit_too_small_for_the_count_still_marks_the_cut():
    assert printable("x" * 100, 10) == "x" * 9 + "…"
    assert len(printable("\n" * 100, 10)) <= 10


def test_anything_is_shown_as_its_str():
    assert printable(ValueError("bad\nthing"), 50) == "bad\\x0athing"


def test_limit_must_be_positive():
    with pytest.raises(ValueError):
        printable("x", 0)


@given(st.text(), st.integers(min_value=1, max_value=300))
def test_result_is_printable_and_within_the_limit(text, limit):
    out = printable(text, limit)
    assert out.isprintable() and len(out) <= limit
    if len(text) <= limit and text.isprintable():
        assert out == text


def test_quoted_names_a_value_in_a_message_escaped_and_bounded():
    assert quoted("web") == "'web'"
    assert quoted("a\x1b[2J\u202e") == "'a\\x1b[2J\\u202e'"
    assert quoted("x" * 100, 10) == "'" + "x" * 10 + "…'"
    assert quoted(None) == "'None'"
