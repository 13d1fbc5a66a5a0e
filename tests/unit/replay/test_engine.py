"""replay.engine's pure parts: node views, walking a window step by step."""

from __future__ import annotations

import pytest

from projector.fold import fold_many
from projector.render import render_all
from projector.state import empty_state
from projector.state import same_state, state_to_bytes
from replay.engine import Walker, _Pacer, flatten, node_versions
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


@pytest.mark.parametrize("seed", [6, 7])
def test_node_walk_per_event_and_bisected_agree_on_the_end_and_on_change_points(seed):
    h, log = history_log(seed, 400)
    node = h.nodes()[1]
    base, _ = fold_many(empty_state(), log.events[:60])
    window = log.events[60:]

    exact = Walker(base, node=node)
    exact_steps = [exact.step([lg]) for lg in window]
    grouped = Walker(base, node=node)
    grouped_steps = []
    for i in range(0, len(window), 32):
        grouped_steps += grouped.steps_bisected(window[i : i + 32])

    assert grouped.versions() == exact.versions() == flatten(node_versions(fold_many(base, window)[0], node))
    assert len(grouped_steps) == len(window)
    changed_exact = {i for i, s in enumerate(exact_steps) if not s.effect.empty}
    changed_grouped = {i for i, s in enumerate(grouped_steps) if not s.effect.empty}
    # bisection finds a subset of the change points (it can miss a change reverted within a group) ...
    assert changed_grouped <= changed_exact
    assert changed_grouped  # the node's dependencies flap in this history
    # ... and reports each found one exactly as the per-event walk does
    for i in changed_grouped:
        assert grouped_steps[i].effect.changed == exact_steps[i].effect.changed
        assert grouped_steps[i].effect.removed == exact_steps[i].effect.removed
    assert not grouped_steps[0].exact and exact_steps[0].exact


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


@pytest.mark.parametrize("seed", range(6))
def test_bisected_node_walk_takes_the_batch_path_only_where_it_gives_the_same_steps(seed):
    """``steps_bisected`` folds a group that leaves the node unchanged as one batch: same steps, same end."""
    h, log = history_log(seed, 500)
    base, _ = fold_many(empty_state(), log.events[:60])
    window = log.events[60:]
    for node in h.nodes()[:3]:
        fast, reference = Walker(base, node=node), Walker(base, node=node)
        for size in (8, 32, 64):
            for i in range(0, len(window), size):
                group = window[i : i + size]
                got, want = fast.steps_bisected(group), reference._bisected(group)
                assert [(s.events, s.decisions, s.effect, s.exact) for s in got] == \
                       [(s.events, s.decisions, s.effect, s.exact) for s in want]
                assert state_to_bytes(fast.state) == state_to_bytes(reference.state)
                assert fast.node_view == reference.node_view
