"""The walks' shortcuts change no step and no document.

A long ``replay log`` folds its large whole-mesh groups into a ``FoldBuffer``
(``Walker.fold_part(buffered=True)``) instead of copy-on-write maps; a node
walk folds a batch through ``NodeViewTracker.fold_each`` (``Walker.node_steps``)
instead of one ``step`` per event; a service log asks ``report.mentions``
instead of building ``payload_services``' set for every event. Each must give
exactly what the plain way gives.
"""

from __future__ import annotations

import asyncio

import pytest

from events import types as t
from projector.fold import fold_many
from projector.state import empty_state, state_to_bytes
from replay import engine, report
from replay.engine import Dropped, Walker, _Group, if_changes_something, rebuild, walk
from tests.unit.replay.history import RandomHistory
from tests.unit.replay.test_engine import _FixedPacer, history_log
from tests.unit.replay.test_walk_keep import fake_log


def _buffering(monkeypatch, on: bool) -> None:
    """Every group buffered (``on``) or none."""
    monkeypatch.setattr(engine, "BUFFER_MIN_EVENTS", 1 if on else 10**9)
    monkeypatch.setattr(engine, "BUFFER_STATE_SHARE", 10**9 if on else 1)


def _grouped(base, window, sizes, wanted=None):
    got: list = []
    walker = Walker(base)
    used = []
    fold_part = walker.fold_part

    def noting(events, *, buffered=False):
        used.append(buffered)
        return fold_part(events, buffered=buffered)

    walker.fold_part = noting
    group = _Group(walker, _FixedPacer(sizes), wanted, got.extend)
    for i in range(0, len(window), 23):  # batches that cut across groups
        group.feed(window[i : i + 23])
    group.close()
    return walker, got, used


@pytest.mark.parametrize("seed", [21, 22, 23])
@pytest.mark.parametrize("wanted", [None, "about-s2"])
def test_buffered_groups_give_the_steps_of_copy_on_write_groups(monkeypatch, seed, wanted):
    h, log = history_log(seed, 700)
    base, _ = fold_many(empty_state(), log.events[:90])
    window = log.events[90:]
    pred = None if wanted is None else (lambda lg: report.mentions(lg.envelope.payload, h.services[2]))
    sizes = [1, 2, 150, 1, 60, 300, 5]
    _buffering(monkeypatch, False)
    plain_walker, plain, plain_used = _grouped(base, window, sizes, pred)
    _buffering(monkeypatch, True)
    walker, got, used = _grouped(base, window, sizes, pred)
    assert not any(plain_used) and all(used)  # each way was taken throughout
    assert len(got) == len(plain)
    for g, w in zip(got, plain):
        assert (g.events, g.size, g.decisions, g.effect, g.exact) == (w.events, w.size, w.decisions, w.effect, w.exact)
    assert any(g.decisions for g in got)  # stale revisions are refused in these histories: decisions are named
    assert state_to_bytes(walker.state) == state_to_bytes(plain_walker.state)
    assert walker.versions() == plain_walker.versions() and walker.membership() == plain_walker.membership()


def test_only_a_group_large_for_its_state_is_buffered(monkeypatch):
    """Sealing a buffer copies every map: a group is buffered when it has at least a 1/BUFFER_STATE_SHARE of the
    state's entries in events (and at least BUFFER_MIN_EVENTS)."""
    assert not Walker(empty_state()).worth_buffering(engine.BUFFER_MIN_EVENTS - 1)
    assert Walker(empty_state()).worth_buffering(engine.BUFFER_MIN_EVENTS)
    _h, log = history_log(24, 400)
    walker = Walker(fold_many(empty_state(), log.events)[0])
    entries = sum(len(getattr(walker.state, f)) for f in engine.STATE_FIELDS)
    monkeypatch.setattr(engine, "BUFFER_MIN_EVENTS", 1)
    least = -(-entries // engine.BUFFER_STATE_SHARE)
    assert walker.worth_buffering(least) and not walker.worth_buffering(least - 1)


def _fixed_groups(monkeypatch, sizes):
    monkeypatch.setattr(engine._Pacer, "size", lambda self, it=iter(sizes * 1000): next(it))


@pytest.mark.parametrize("seed", range(3))
def test_a_service_log_with_buffered_groups_equals_the_log_without(monkeypatch, seed):
    """Through ``walk`` and ``log_document``: the same groups (a fixed pacer), buffered or not, the same document."""
    consumer, end = fake_log(seed, 900)
    service = RandomHistory("walk", seed).services[seed % 3]

    async def logged():
        base = await rebuild(consumer, 1_050, use_snapshot=False)
        dropped = Dropped()
        keep = report.for_service_log(service, ())
        _walker, steps, _cut = await walk(consumer, base, end, keep=keep, dropped=dropped)
        return report.log_document(from_ms=1_050, to_ms=end, service=service, node=None, steps=steps,
                                   dropped=dropped)

    docs = []
    for on in (False, True):
        _buffering(monkeypatch, on)
        _fixed_groups(monkeypatch, [1, 40, 3, 120, 200])
        docs.append(asyncio.run(logged()))
    plain, buffered = docs
    assert buffered == plain
    assert plain["groups"] and plain["entries"]


@pytest.mark.parametrize("seed", [26, 27, 28, 29])
def test_node_steps_over_a_batch_equal_one_step_per_event(seed):
    h, log = history_log(seed, 500)
    base, _ = fold_many(empty_state(), log.events[:70])
    window = log.events[70:]
    for node in h.nodes()[:3]:
        reference = Walker(base, node=node)
        want = [reference.step([lg]) for lg in window]
        every, changing = Walker(base, node=node), Walker(base, node=node)
        got_every, got_changing = [], []
        for i in range(0, len(window), 31):
            got_every += every.node_steps(window[i : i + 31], every=True)
            got_changing += changing.node_steps(window[i : i + 31])

        def key(s):
            return (s.events, s.decisions, s.effect, s.exact)

        assert [key(s) for s in got_every] == [key(s) for s in want]
        assert [key(s) for s in got_changing] == [key(s) for s in want if if_changes_something(s) is not None]
        assert any(not s.effect.empty for s in got_changing) and len(got_changing) < len(want)
        for w in (every, changing):
            assert w.versions() == reference.versions() and w.membership() == reference.membership()
            assert state_to_bytes(w.state) == state_to_bytes(reference.state)


def _special_payloads(services: list[str]) -> list[t.Payload]:
    a, b = services[0], services[1]
    return [
        t.RuleRejected(kind="route_rule", name=a, revision=3, reason="stale", source_topic="meshlog.rules",
                       source_partition=0, source_offset=7),
        t.EventRefused(event_key=f"{a}/i0", event_type="instance.registered", event_id="e1",
                       problem="not_permitted", reason="no", producer="p", source_topic="meshlog.registrations", source_partition=0,
                       source_offset=3),
        t.EventRefused(event_key=f"route/{b}", event_type="route_rule.upserted", event_id="e2",
                       problem="not_permitted", reason="no", producer="p", source_topic="meshlog.rules", source_partition=0, source_offset=4),
        t.DependencySubscribed(service=a, instance_id="i0", dependency=b),
    ]


@pytest.mark.parametrize("seed", [30, 31])
def test_mentions_is_membership_in_payload_services(seed):
    h = RandomHistory("m", seed)
    payloads = h.payloads(400) + _special_payloads(h.services)
    names = [*h.services, "m-ghost", "route", "policy", ""]
    kinds = set()
    for p in payloads:
        kinds.add(type(p))
        for name in names:
            assert report.mentions(p, name) == (name in report.payload_services(p)), (p, name)
    assert {t.RouteRuleUpserted, t.InstanceHealthChanged, t.RuleRejected, t.EventRefused} <= kinds
