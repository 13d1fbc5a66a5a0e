"""replay.engine.walk's ``keep``: thinning the steps a long window keeps changes no document.

A walk over a long window used to hold every event of it (1M events: about 1 GB). ``replay diff`` keeps
only the steps that changed something (``if_changes_something``), ``replay log --service`` what its
filtered log lists plus what convergence needs (``report.for_service_log``). The documents built from
the thinned steps must equal those built from all of them.
"""

from __future__ import annotations

import asyncio
import random

import pytest
from aiokafka import TopicPartition

from events import topics
from events import types as t
from events.codec import encode
from events.envelope import new_event
from replay import report
from replay.engine import Dropped, if_changes_something, rebuild, walk
from tests.unit.replay.fake_consumer import FakeConsumer, Rec
from tests.unit.replay.history import RandomHistory


def fake_log(seed: int, count: int) -> tuple[FakeConsumer, int]:
    logs = {TopicPartition(spec.name, p): [] for spec in topics.EVENT_TOPICS for p in range(spec.partitions)}
    rnd = random.Random(seed)
    ts = 1_000
    for payload in RandomHistory("walk", seed).payloads(count):
        ts += rnd.choice((0, 1, 1, 2))
        tp = TopicPartition(payload.TOPIC, 0)
        logs[tp].append(Rec(tp.topic, 0, len(logs[tp]), ts, encode(new_event(payload, producer="t"))))
    return FakeConsumer(logs, rnd), ts


async def walked(consumer, from_ms: int, to_ms: int, node: str | None, keep):
    base = await rebuild(consumer, from_ms, use_snapshot=False)
    dropped = Dropped()
    walker, steps, _cut = await walk(consumer, base, to_ms, node=node, keep=keep, dropped=dropped)
    return walker, steps, dropped


def diff_doc(walker, steps, node, dropped, to_ms):
    return report.diff_document(
        from_ms=0, to_ms=to_ms, node=node, start_versions=walker.start_versions, end_versions=walker.versions(),
        start_membership=walker.start_membership, end_membership=walker.membership(), steps=steps,
        dropped=dropped)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("whole_mesh", [True, False])
def test_diff_from_the_kept_steps_equals_the_diff_from_every_step(seed, whole_mesh):
    consumer, end = fake_log(seed, 300)
    node = None if whole_mesh else RandomHistory("walk", seed).nodes()[seed % 3]

    async def go():
        every = await walked(consumer, 1_050, end, node, None)
        kept = await walked(consumer, 1_050, end, node, if_changes_something)
        return every, kept

    (w1, all_steps, d1), (w2, kept_steps, d2) = asyncio.run(go())
    assert d1 == Dropped() and len(kept_steps) < len(all_steps)
    assert d2.events == sum(len(s.events) for s in all_steps) - sum(len(s.events) for s in kept_steps)
    assert diff_doc(w2, kept_steps, node, d2, end) == diff_doc(w1, all_steps, node, d1, end)


@pytest.mark.parametrize("seed", range(4))
def test_a_service_log_from_the_kept_steps_equals_the_log_from_every_step(seed):
    consumer, end = fake_log(seed, 300)
    history = RandomHistory("walk", seed)
    service = history.services[seed % len(history.services)]

    async def go():
        every = await walked(consumer, 1_050, end, None, None)
        kept = await walked(consumer, 1_050, end, None, report.for_service_log(service))
        return every, kept

    (_w1, all_steps, d1), (_w2, kept_steps, d2) = asyncio.run(go())
    assert sum(len(s.events) for s in kept_steps) < sum(len(s.events) for s in all_steps)

    def log_doc(steps, dropped):
        # convergence with no sync records: every view change still counts (superseded changes)
        from replay.acceptance import step_convergences

        converged = {key: c.as_dict() for key, c in step_convergences(steps, []).items()}
        return report.log_document(from_ms=0, to_ms=end, service=service, node=None, steps=steps,
                                   convergence=converged, dropped=dropped)

    whole = log_doc(all_steps, d1)
    assert whole["entries"], "the service appears in the window"
    assert log_doc(kept_steps, d2) == whole


def _service_log(steps, dropped, service, sync, end):
    from replay.acceptance import step_convergences

    converged = {key: c.as_dict() for key, c in step_convergences(steps, sync).items()}
    return report.log_document(from_ms=0, to_ms=end, service=service, node=None, steps=steps,
                               convergence=converged, dropped=dropped)


def _kept(steps, keep):
    """What ``walk`` does with its ``keep`` (the steps it holds, and what it counts as dropped)."""
    from replay.engine import thin

    dropped = Dropped()
    out = [kept for st in steps if (kept := thin(st, keep, dropped)) is not None]
    return out, dropped


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("sizes", [(1,), (1, 9, 1, 23), (40,)])
def test_a_thinned_service_log_of_groups_with_proxies_equals_the_log_from_every_step(seed, sizes):
    """Groups keep only their first, last and listed events; views are kept only for nodes with a proxy;
    the log (entries, groups, convergence of each listed event) is the same."""
    from datetime import datetime, timezone

    from events import types as t
    from events.envelope import Logged, new_event
    from projector.fold import fold_many
    from projector.state import empty_state
    from replay.engine import Walker
    from tests.unit.replay.test_engine import history_log

    h, log = history_log(seed, 400, prefix="walk")
    service = h.services[seed % len(h.services)]
    base, _ = fold_many(empty_state(), log.events[:40])
    window = log.events[40:]
    walker, steps, i, k = Walker(base), [], 0, 0
    while i < len(window):
        size = sizes[k % len(sizes)]
        steps.append(walker.step(window[i : i + size]))
        i, k = i + size, k + 1
    end = window[-1].timestamp_ms
    proxied = h.nodes()[:2]

    def sync(payload, ms, offset):
        return Logged(new_event(payload, producer="gw", occurred_at=datetime.fromtimestamp(ms / 1000, timezone.utc)),
                      "meshlog.sync", 0, offset, ms)

    records = [sync(t.ProxyStreamOpened(node=n, gateway="gw", stream_id=n, kind="delta", peer="ipv4:1.2.3.4:5"),
                    0, j) for j, n in enumerate(proxied)]
    # each proxied node ACKs what it was told at a few of the steps that changed it
    for st in steps:
        for n in proxied:
            told = st.effect.views.get(n)
            if told and st.events[-1].offset % 3 == 0:
                ms = st.events[-1].timestamp_ms + 5
                records += [sync(t.ProxyAcked(node=n, gateway="gw", stream_id=n, type_url=u, nonce=str(len(records)),
                                              held=dict(names)), ms, len(records)) for u, names in told.items()]
    records.sort(key=lambda lg: lg.timestamp_ms)
    from replay.acceptance import nodes_with_proxies

    kept, dropped = _kept(steps, report.for_service_log(service, nodes_with_proxies(records)))
    whole = _service_log(steps, Dropped(), service, records, end)
    assert whole["entries"], "the service appears in the window"
    assert _service_log(kept, dropped, service, records, end) == whole
    if max(sizes) > 1:
        assert whole["groups"]
        # a kept group holds its first, last and listed events only, and no view of a node without a proxy
        assert sum(len(s.events) for s in kept) < sum(len(s.events) for s in steps)
    assert all(set(s.effect.views) <= set(proxied) for s in kept)
    convergences = [e.get("convergence") for e in whole["entries"]] + [g["convergence"] for g in whole["groups"]]
    assert any(c and c["proxies"] and c["reached"] for c in convergences)


def _services_asking_each(payload) -> set[str]:
    """``payload_services`` as it was: every attribute asked of the payload itself."""
    out = {v for a in ("service", "host", "dependency") if isinstance(v := getattr(payload, a, None), str)}
    if isinstance(payload, t.RouteRuleUpserted):
        out |= report.rule_destinations(payload)
    if isinstance(payload, t.RuleRejected):
        out.add(payload.name)
    if isinstance(payload, t.EventRefused):
        head, _sep, rest = payload.event_key.partition("/")
        out.add(rest.partition("/")[0] if head in ("route", "policy") else head)
    return out


def test_payload_services_reads_only_the_attributes_a_payload_type_has_and_answers_the_same():
    """A service log asks ``about_service`` of every event of a long window: the attributes a payload type has
    are looked up once per type (no failed lookup per event), with the same answer for every payload type."""
    from events.envelope import Logged

    history = RandomHistory("about", 5)
    payloads = history.payloads(400)
    payloads += [t.RuleRejected(kind="route_rule", name="about-s1", revision=2, reason="stale", source_topic="x",
                                source_partition=0, source_offset=1),
                 t.DependencySubscribed(service="about-s0", instance_id="i0", dependency="about-s2")]
    assert len({type(p) for p in payloads}) >= 6
    for p in payloads:
        assert report.payload_services(p) == _services_asking_each(p)
        assert report._naming_attrs(type(p)) is not None  # every payload type is known from its class
    events = [Logged(new_event(p, producer="t"), p.TOPIC, 0, i, 1_000 + i) for i, p in enumerate(payloads)]
    for service in [*history.services, "nobody"]:
        about = report.about_service(service)
        assert [about(lg) for lg in events] == [service in _services_asking_each(lg.payload) for lg in events]

    class Plain:  # not a payload model: its attributes are asked of each instance, as before
        def __init__(self, service):
            self.service = service

    assert report.payload_services(Plain("web")) == {"web"}


def test_a_walk_goes_on_with_the_decoder_of_its_rebuild():
    """The window's payloads seen before its start (a health flap, a re-registration) are not validated again:
    the walk decodes with the rebuild's decoder, memo and all; the steps are those a fresh decoder gives."""
    consumer, end = fake_log(3, 600)
    mid = end // 2

    async def go(reuse: bool):
        base = await rebuild(consumer, mid, use_snapshot=False)
        before = base.decoder.misses
        if not reuse:
            base.decoder = None
        _walker, steps, _cut = await walk(consumer, base, end, node=None, keep=None)
        return base, before, steps

    base, before, steps = asyncio.run(go(True))
    assert base.decoder.hits > 0 and base.decoder.misses > before  # the walk went on with it
    _fresh, _before, fresh_steps = asyncio.run(go(False))
    assert [(s.events, s.decisions, s.effect.changed, s.effect.changed_nodes) for s in steps] == \
        [(s.events, s.decisions, s.effect.changed, s.effect.changed_nodes) for s in fresh_steps]
