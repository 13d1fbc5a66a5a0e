"""``replay.node_view.NodeViewTracker``: one node's versions kept up to date by what the fold writes.

After every event it must say exactly what ``node_versions`` of the folded state says (the render of the
node from scratch), however the events change the node's inputs: registrations, health, rules,
subscriptions, access policies, callers of a secure sidecar, the node id moving between instances.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from projector.fold import fold_many, fold_with_decisions
from projector.state import empty_state, state_to_bytes
from replay.engine import node_versions
from replay.node_view import NodeViewTracker
from tests.unit.projector.test_authz_properties import FORGED, HONEST, VERIFIER, interleave, logged_in_order
from tests.unit.projector.test_properties import by_timestamp, topic_logs
from tests.unit.replay.test_engine import history_log


def _follow(base, events, node, verifier=None, *, group: int = 1):
    """Fold ``events`` through a tracker and the reference fold side by side, comparing after each group."""
    tracker = NodeViewTracker(base, node)
    assert tracker.versions() == node_versions(base, node)
    state = base
    for i in range(0, len(events), group):
        chunk = events[i : i + group]
        got = tracker.fold(chunk, verifier)
        want = []
        for lg in chunk:
            state, decided = fold_with_decisions(state, lg, verifier)
            want += decided
        assert got == want
        assert tracker.versions() == node_versions(state, node), f"after event {i + len(chunk)}"
    assert state_to_bytes(tracker.state()) == state_to_bytes(state)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("group", [1, 7])
def test_the_tracked_view_equals_a_fresh_render_after_every_event(seed, group):
    h, log = history_log(seed, 400)
    base, _ = fold_many(empty_state(), log.events[:50])
    for node in h.nodes()[:3]:
        _follow(base, log.events[50:], node, group=group)


@settings(max_examples=80, deadline=None)
@given(logs=topic_logs(), node=st.sampled_from(["n1", "n2", "n3.x"]), start=st.integers(0, 10))
def test_the_tracked_view_follows_any_history(logs, node, start):
    """Subscriptions, access policies, trust domains, node ids claimed by several instances: all covered."""
    events = by_timestamp(logs)
    base, _ = fold_many(empty_state(), events[:start])
    _follow(base, events[start:], node)


@settings(max_examples=30, deadline=None)
@given(forged=st.lists(st.sampled_from(range(len(FORGED))), max_size=10),
       picks=st.lists(st.booleans(), max_size=24))
def test_a_verifying_tracker_refuses_what_the_fold_refuses(forged, picks):
    events = [lg for _h, lg in logged_in_order(interleave(HONEST, [FORGED[i] for i in forged], picks))]
    nodes = {lg.envelope.payload.node_id for lg in events if getattr(lg.envelope.payload, "node_id", None)}
    for node in sorted(nodes)[:2]:
        _follow(empty_state(), events, node, VERIFIER)


def test_an_event_that_touches_nothing_the_node_reads_renders_nothing():
    h, log = history_log(3, 300)
    node = h.nodes()[0]
    base, _ = fold_many(empty_state(), log.events[:40])
    tracker = NodeViewTracker(base, node)
    refreshed = []
    tracker._refresh_resource = lambda part, _orig=tracker._refresh_resource: (refreshed.append(part), _orig(part))
    for lg in log.events[40:]:
        tracker.fold([lg])
    # far fewer resource renders than events times the node's resources (a from-scratch render each time)
    per_event = sum(len(names) for names in tracker.versions().values())
    assert 0 < len(refreshed) < (len(log.events) - 40) * per_event / 4
