"""``FoldBuffer`` (the fold into mutable maps) equals ``fold_many`` (the fold into persistent maps)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from projector.fold import FoldBuffer, fold_many
from projector.state import empty_state, state_to_bytes
from tests.unit.projector.test_authz_properties import FORGED, HONEST, VERIFIER, interleave, logged_in_order
from tests.unit.projector.test_fold import _story
from tests.unit.projector.test_properties import by_timestamp, topic_logs


def _cuts(draw, n: int) -> list[int]:
    return sorted(draw(st.lists(st.integers(0, n), max_size=4)))


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_a_buffer_folds_what_fold_many_folds_whatever_the_batches(data):
    events = by_timestamp(data.draw(topic_logs()))
    start = data.draw(st.integers(0, len(events)))
    base, base_decisions = fold_many(empty_state(), events[:start])  # a snapshot to start from
    reference, decisions = fold_many(base, events[start:])
    base_bytes = state_to_bytes(base)

    buffer = FoldBuffer(base)
    got: list = []
    sealed = []
    bounds = [start, *(start + c for c in _cuts(data.draw, len(events) - start)), len(events)]
    for lo, hi in zip(bounds, bounds[1:]):
        got += buffer.fold(events[lo:hi])
        sealed.append((buffer.state(), fold_many(base, events[start:hi])[0]))
    assert buffer.state() == reference
    assert state_to_bytes(buffer.state()) == state_to_bytes(reference)
    assert got == list(decisions)
    # every state handed out stays what it was when sealed, and the input state is never touched
    for handed_out, expected in sealed:
        assert handed_out == expected
    assert state_to_bytes(base) == base_bytes


@settings(max_examples=60, deadline=None)
@given(forged=st.lists(st.sampled_from(range(len(FORGED))), max_size=12),
       picks=st.lists(st.booleans(), max_size=30))
def test_a_verifying_buffer_refuses_what_fold_many_refuses(forged, picks):
    events = [lg for _h, lg in logged_in_order(interleave(HONEST, [FORGED[i] for i in forged], picks))]
    reference, decisions = fold_many(empty_state(), events, VERIFIER)
    buffer = FoldBuffer(empty_state())
    assert buffer.fold(events, VERIFIER) == list(decisions)
    assert buffer.state() == reference


def test_an_unused_buffer_gives_back_its_state():
    base, _ = fold_many(empty_state(), _story().events)
    assert FoldBuffer(base).state() is base
