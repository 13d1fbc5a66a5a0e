"""replay.engine's pure parts: node views, walking a window step by step."""

from __future__ import annotations

import pytest

from projector.fold import fold_many, fold_with_decisions
from projector.render import render_all
from projector.state import empty_state
from projector.state import same_state, state_to_bytes
from replay.engine import (
    LONG_WINDOW_EVENTS,
    MAX_GROUP_EVENTS,
    NO_EFFECT,
    RENDER_BUDGET_MIN_S,
    RENDER_BUDGET_S,
    Step,
    Walker,
    _node_effect,
    _Pacer,
    flatten,
    node_versions,
    render_budget,
)
from tests.unit.projector.helpers import Log
from tests.unit.replay.history import RandomHistory


def history_log(seed: int, count: int, prefix: str = "w") -> tuple[RandomHistory, Log]:
    h = RandomHistory(prefix, seed)
    log = Log()
    for p in h.payloads(count):
        log.append(p)
    return h, log


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_node_versions_equal_render_all_membership(seed):
    h, log = history_log(seed, 300)
    state, _ = fold_many(empty_state(), log.events)
    rendered = render_all(state)
    assert rendered.membership  # the history has nodes
    for node in h.nodes():
        want = rendered.membership.get(node)
        got = node_versions(state, node)
        if want is None:
            assert not flatten(got)
        else:
            assert got == want


@pytest.mark.parametrize("seed", [4, 5])
def test_mesh_walk_reports_every_change_and_ends_where_a_fresh_render_ends(seed):
    _h, log = history_log(seed, 250)
    base_events, window = log.events[:120], log.events[120:]
    base, _ = fold_many(empty_state(), base_events)
    walker = Walker(base)
    seen = dict(walker.start_versions)
    for lg in window:
        step = walker.step([lg])
        for key, version in step.effect.changed.items():
            assert seen.get(key) != version
            seen[key] = version
        for key in step.effect.removed:
            seen.pop(key)
    end, _ = fold_many(base, window)
    fresh = render_all(end)
    assert seen == fresh.versions == walker.versions()
    assert walker.membership() == fresh.membership


def _reference_node_steps(base, window, node):
    """The node walk as it was before ``replay.node_view``: fold each event, render the node from scratch."""
    state, view, steps = base, node_versions(base, node), []
    for lg in window:
        before = state
        state, decided = fold_with_decisions(state, lg)
        effect = NO_EFFECT
        if not same_state(before, state):
            new = node_versions(state, node)
            effect, view = _node_effect(node, view, new), new
        steps.append(Step([lg], [(lg, j) for j in decided], effect, True))
    return steps, state


@pytest.mark.parametrize("seed", [6, 7, 8, 9])
def test_the_node_walk_gives_the_steps_of_a_fresh_render_after_every_event(seed):
    h, log = history_log(seed, 400)
    base, _ = fold_many(empty_state(), log.events[:60])
    window = log.events[60:]
    for node in h.nodes()[:3]:
        want, end = _reference_node_steps(base, window, node)
        walker = Walker(base, node=node)
        got = [walker.step([lg]) for lg in window]
        assert [(s.events, s.decisions, s.effect, s.exact) for s in got] == \
               [(s.events, s.decisions, s.effect, s.exact) for s in want]
        assert any(not s.effect.empty for s in got)  # the node's dependencies flap in this history
        assert walker.versions() == flatten(node_versions(end, node))
        assert state_to_bytes(walker.state) == state_to_bytes(end)


def test_rejections_come_with_the_event_that_caused_them():
    log = Log()
    log.register("a", "a1")
    bad = log.policy("a", 3)  # the first revision must be 1
    walker = Walker(fold_many(empty_state(), log.events[:1])[0])
    step = walker.step([bad])
    assert step.effect.empty
    [(lg, rejection)] = step.decisions
    assert lg is bad and rejection.revision == 3 and "first revision must be 1" in rejection.reason


def test_a_node_appearing_and_leaving():
    log = Log()
    log.register("b", "b1", "10.0.0.2")
    reg = log.register("a", "a1", "10.0.0.1", node_id="n", sidecar=(15001, 15002), depends_on=("b",))
    dereg = log.deregister("a", "a1")
    walker = Walker(fold_many(empty_state(), log.events[:1])[0], node="n")
    assert walker.start_membership == {}
    appear = walker.step([reg]).effect
    assert appear.changed_nodes == {"n"} and ("type.googleapis.com/envoy.config.cluster.v3.Cluster", "b") in appear.changed
    leave = walker.step([dereg]).effect
    assert leave.removed_nodes == {"n"} and not leave.changed
    assert walker.membership() == {}


def test_same_state():
    s = empty_state()
    log = Log()
    s2, _ = fold_many(s, [log.health("x", "i", "healthy")])  # healthy is the default: nothing stored
    assert same_state(s, s2)


def test_the_pacer_keeps_short_windows_exact_and_bounds_long_ones():
    short = _Pacer(total=500, budget_s=20)
    short.record(1, 0.001)
    assert short.size() == 1  # 499 more steps at 1 ms fit easily
    long = _Pacer(total=1_000_000, budget_s=20)
    long.record(1, 0.01)
    assert long.size() in (500, 501)  # 999,999 events in ~2,000 steps of 10 ms
    long.record(500, 0.01)
    assert 400 < long.size() < 600
    spent = _Pacer(total=100, budget_s=1)
    spent.record(1, 5.0)
    assert spent.size() == 99  # over budget: the rest in one step


@pytest.mark.parametrize("seed", [10, 11, 12])
def test_a_whole_mesh_group_step_equals_folding_its_events_one_by_one(seed):
    """A group is folded with ``fold_many``; its decisions still name the events that caused them."""
    _h, log = history_log(seed, 500)
    base, _ = fold_many(empty_state(), log.events[:80])
    window = log.events[80:]
    walker, state, rendered = Walker(base), base, render_all(base)
    rejected = 0
    for i in range(0, len(window), 37):
        group = window[i : i + 37]
        got = walker.step(group)
        want = []
        for lg in group:
            state, decided = fold_with_decisions(state, lg)
            want += [(lg, j) for j in decided]
        cur = render_all(state, previous=rendered)
        assert got.decisions == want
        assert got.effect.changed == {k: cur.versions[k] for k in cur.changed}
        assert got.effect.changed_nodes == cur.changed_nodes and not got.exact
        rendered, rejected = cur, rejected + len(want)
    assert rejected  # stale rule revisions are refused in this history
    assert state_to_bytes(walker.state) == state_to_bytes(state)


class _FixedPacer:
    def __init__(self, sizes):
        self.sizes, self.i, self.recorded = list(sizes), 0, []

    def record(self, events, seconds):
        self.recorded.append(events)

    def size(self):
        self.i += 1
        return self.sizes[self.i % len(self.sizes)]


@pytest.mark.parametrize("seed", [13, 14])
@pytest.mark.parametrize("wanted", [None, "about-s1"])
def test_a_group_folded_as_its_events_arrive_gives_the_step_of_the_whole_group(seed, wanted):
    """``walk``'s groups are folded chunk by chunk (as batches arrive) and rendered once full: the same steps
    as ``Walker.step`` over each whole group; with a ``group_events`` predicate only the first, last and
    wanted events are held (``size`` still counts them all)."""
    from replay.engine import _Group
    from replay.report import payload_services

    h, log = history_log(seed, 600)
    base, _ = fold_many(empty_state(), log.events[:80])
    window = log.events[80:]
    pred = None if wanted is None else (lambda lg: h.services[1] in payload_services(lg.envelope.payload))
    sizes = [1, 1, 3, 70, 1, 45, 200]
    got: list = []
    walker = Walker(base)
    group = _Group(walker, _FixedPacer(sizes), pred, got.extend)
    for i in range(0, len(window), 17):  # batches that cut across groups
        group.feed(window[i : i + 17])
    group.close()

    reference, want, i, k = Walker(base), [], 0, 0
    size = 1
    while i < len(window):
        want.append(reference.step(window[i : i + size]))
        i += size
        k += 1
        size = sizes[k % len(sizes)]
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert (g.size, g.decisions, g.effect, g.exact) == (w.size, w.decisions, w.effect, w.exact)
        if pred is None:
            assert g.events == w.events
        else:
            keep = [lg for lg in w.events[1:-1] if pred(lg)]
            assert g.events == ([w.events[0], *keep, w.events[-1]] if w.size > 1 else w.events)
    assert state_to_bytes(walker.state) == state_to_bytes(reference.state)


def test_a_group_that_holds_every_event_is_bounded():
    from replay.engine import _Group

    _h, log = history_log(15, 30)
    for wanted, expected in ((None, MAX_GROUP_EVENTS), (lambda lg: False, 10 * MAX_GROUP_EVENTS)):
        group = _Group(Walker(empty_state()), _FixedPacer([10 * MAX_GROUP_EVENTS]), wanted, lambda steps: None)
        group.feed(log.events[:1])  # the first group is one event; then the pacer asks for a huge one
        assert group.size == expected


def test_a_long_window_gets_a_smaller_render_budget():
    """Up to LONG_WINDOW_EVENTS a whole-mesh walk keeps the full budget (short windows stay exact); past it the
    budget shrinks with the window, never under the floor: a 1,000,000-event walk renders coarser groups instead
    of spending 20 s rendering them."""
    assert render_budget(0) == render_budget(LONG_WINDOW_EVENTS) == RENDER_BUDGET_S
    assert render_budget(2 * LONG_WINDOW_EVENTS) == RENDER_BUDGET_S / 2
    assert render_budget(1_000_000) == render_budget(10**9) == RENDER_BUDGET_MIN_S
    budgets = [render_budget(n) for n in range(0, 2_000_000, 50_000)]
    assert budgets == sorted(budgets, reverse=True)
    # at the same cost per step, the long window's pacer asks for larger groups than the full budget would
    full, scaled = _Pacer(1_000_000, RENDER_BUDGET_S), _Pacer(1_000_000, render_budget(1_000_000))
    for pacer in (full, scaled):
        pacer.record(1, 0.01)
    assert scaled.size() > 5 * full.size()

