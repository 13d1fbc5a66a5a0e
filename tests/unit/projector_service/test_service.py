"""The projector's batch step without a broker: a fake producer, a real RocksDB in a temp dir.

Covers: publish order, idempotent re-delivery, dead letters, rejections,
restart without republishing, a crash before the commit, a failing fold,
broker errors while publishing, and holding renders back during catch-up.
"""

from __future__ import annotations

import pytest

from events import topics
from events import types as t
from events.codec import decode, encode
from projector import service as service_mod
from projector.deadletter import parse_dead_letter
from projector.publisher import parse_membership_value, parse_resource_key, source_ms_of
from projector.service import ProjectorConfig, ProjectorService, Store
from projector.state import same_state
from projector.typeurls import CLUSTER, LISTENER

from .helpers import FakeProducer, Log, Rec, envelope, registered


def make(tmp_path, producer: FakeProducer, ends: dict | None = None, **cfg) -> ProjectorService:
    svc = ProjectorService(ProjectorConfig(bootstrap="test:9092", data_dir=tmp_path, sync_writes=False,
                                           **{"insecure_events": True, **cfg}))
    svc.load_store("cluster-1")
    svc.producer = producer
    svc.hold_rendering_until(ends or {})
    return svc


def close(svc: ProjectorService) -> None:
    svc.store.close()
    svc.store = None


def mesh_log() -> Log:
    log = Log()
    log.append(registered("db", "db-1"))
    log.append(registered("api", "api-1", "node-api", deps=("db",)))
    return log


def views(producer: FakeProducer):
    res = [(parse_resource_key(s.key), s.value) for s in producer.to(topics.VIEW_RESOURCES)]
    mem = [(s.key.decode(), s.value) for s in producer.to(topics.VIEW_MEMBERSHIP)]
    return res, mem


async def test_a_batch_publishes_bodies_before_memberships_and_stores_the_versions(tmp_path):
    log, producer = mesh_log(), FakeProducer()
    svc = make(tmp_path, producer)
    res = await svc.process(log.records[topics.REGISTRATIONS])
    assert res.folded == 2 and res.rendered
    kinds = [s.topic for s in producer.sent]
    first_membership = kinds.index(topics.VIEW_MEMBERSHIP)
    assert set(kinds[:first_membership]) == {topics.VIEW_RESOURCES}
    assert kinds[first_membership:] == [topics.VIEW_MEMBERSHIP]
    _res, mem = views(producer)
    node, resources = parse_membership_value(mem[0][1])
    assert node == "node-api" and "db" in resources[CLUSTER]
    assert svc.emitted == {f"{topics.REGISTRATIONS}/0": 2}
    close(svc)
    stored = Store(tmp_path / service_mod.DB_NAME).load()
    assert stored.published.membership["node-api"] == resources
    assert set(stored.published.resources) == {rk for rk, _ in _res}


async def test_view_records_carry_the_append_time_of_the_newest_event_of_their_batch(tmp_path):
    log, producer = mesh_log(), FakeProducer()
    svc = make(tmp_path, producer)
    records = log.records[topics.REGISTRATIONS]
    await svc.process(records)
    newest = max(r.timestamp for r in records)
    views_sent = [s for s in producer.sent if s.topic in (topics.VIEW_RESOURCES, topics.VIEW_MEMBERSHIP)]
    assert views_sent and all(source_ms_of(s.headers) == newest for s in views_sent)
    close(svc)


async def test_redelivered_records_are_skipped(tmp_path):
    log, producer = mesh_log(), FakeProducer()
    svc = make(tmp_path, producer)
    await svc.process(log.records[topics.REGISTRATIONS])
    before, state = len(producer.sent), svc.state
    res = await svc.process(log.records[topics.REGISTRATIONS])
    assert res.skipped == 2 and res.folded == 0
    assert len(producer.sent) == before and svc.state is state
    close(svc)


async def test_garbage_is_dead_lettered_and_the_rest_of_the_batch_is_folded(tmp_path):
    log, producer = Log(), FakeProducer()
    bad = log.raw(topics.REGISTRATIONS, b"x/y", b'{"type": "instance.registered"}')
    log.append(registered("api", "api-1", "node-api"))
    svc = make(tmp_path, producer)
    res = await svc.process(log.records[topics.REGISTRATIONS])
    assert res.dead_lettered == 1 and res.folded == 1
    (letter,) = producer.to(topics.DEADLETTER)
    assert letter.key == f"{topics.REGISTRATIONS}/0/{bad.offset}".encode()
    parsed = parse_dead_letter(letter.value)
    assert parsed.value == bad.value and "is required" in parsed.reason
    assert producer.sent.index(letter) < min(i for i, s in enumerate(producer.sent) if s.topic == topics.VIEW_RESOURCES)
    assert "node-api" in [n for n, _v in views(producer)[1]]
    assert svc.counters["dead_lettered"] == 1 and svc.counters["events"] == 1
    close(svc)


async def test_an_invalid_rule_is_recorded_as_a_rejection_and_changes_no_view(tmp_path):
    log, producer = mesh_log(), FakeProducer()
    svc = make(tmp_path, producer)
    await svc.process(log.records[topics.REGISTRATIONS])
    sent_before = len(producer.sent)
    rule = t.RouteRuleUpserted(host="db", revision=1, routes=(
        t.HttpRoute(destinations=(t.WeightedDestination(subset="v9", weight=100),)),))
    rec = log.append(rule)
    res = await svc.process([rec])
    assert res.rejected == 1 and not res.rendered  # state unchanged: nothing to render
    new = producer.sent[sent_before:]
    assert [s.topic for s in new] == [topics.REJECTIONS]
    env = decode(new[0].value)
    assert env.producer == "projector" and new[0].key == b"route_rule/db"
    assert env.payload.source_offset == rec.offset and "v9" in env.payload.reason
    close(svc)


async def test_a_batch_is_folded_in_the_merge_order_replay_uses_ties_included(tmp_path):
    """Two partitions, one millisecond: the dependency's first registration (partition 0) and a subscription to it
    (partition 1) arrive in the other order. Replay folds partition 0 first (``topics.merge_order``); so does the
    projector, and the subscription is accepted by both."""
    log, producer = Log(), FakeProducer()
    svc = make(tmp_path, producer)
    await svc.process([log.append(registered("api", "api-1", "node-api"))])
    api_partition = Rec(topics.REGISTRATIONS, 1, 0, 2_000_000, b"api/api-1",
                        encode(envelope(t.DependencySubscribed(service="api", instance_id="api-1", dependency="cache"),
                                        "sub")))
    cache_first = Rec(topics.REGISTRATIONS, 0, 1, 2_000_000, b"cache/cache-1",
                      encode(envelope(registered("cache", "cache-1"), "cache")))
    res = await svc.process([api_partition, cache_first])
    assert res.folded == 2 and res.rejected == 0
    assert any(name == "cache" for name in parse_resource_names(producer, CLUSTER))
    close(svc)


async def test_a_refused_subscription_is_recorded_and_an_accepted_one_reaches_the_views(tmp_path):
    log, producer = mesh_log(), FakeProducer()
    svc = make(tmp_path, producer)
    await svc.process(log.records[topics.REGISTRATIONS])
    sent_before = len(producer.sent)
    refused = log.append(t.DependencySubscribed(service="api", instance_id="api-1", dependency="nowhere"))
    res = await svc.process([refused])
    assert res.rejected == 1 and not res.rendered
    new = producer.sent[sent_before:]
    assert [s.topic for s in new] == [topics.REJECTIONS] and new[0].key == b"subscription/api/api-1"
    env = decode(new[0].value)
    assert env.payload.problem == "unknown_service" and env.payload.source_offset == refused.offset
    log.append(registered("cache", "cache-1"))
    await svc.process(log.records[topics.REGISTRATIONS][-1:])
    await svc.process([log.append(t.DependencySubscribed(service="api", instance_id="api-1", dependency="cache"))])
    assert any(name == "cache" for name in parse_resource_names(producer, CLUSTER))
    close(svc)


def parse_resource_names(producer: FakeProducer, type_url: str) -> list[str]:
    return [name for s in producer.to(topics.VIEW_RESOURCES)
            for u, name in [parse_resource_key(s.key)] if u == type_url]


async def test_a_restart_republishes_nothing_and_repeats_no_side_effect(tmp_path):
    log, producer = mesh_log(), FakeProducer()
    log.raw(topics.REGISTRATIONS, None, b"garbage")
    rule = t.RouteRuleUpserted(host="db", revision=1, routes=(
        t.HttpRoute(destinations=(t.WeightedDestination(subset="v9", weight=100),)),))
    log.append(rule)
    # no checkpoint of the state at all: the restart refolds everything from offset 0
    svc = make(tmp_path, producer, checkpoint_events=10**9, checkpoint_interval_s=10**9)
    everything = log.records[topics.REGISTRATIONS] + log.records[topics.RULES]
    await svc.process(everything)
    assert producer.to(topics.DEADLETTER) and producer.to(topics.REJECTIONS)
    state = svc.state
    close(svc)  # like a crash after the commit: no final checkpoint

    producer2 = FakeProducer()
    svc2 = make(tmp_path, producer2, ends={f"{topics.REGISTRATIONS}/0": 3, f"{topics.RULES}/0": 1})
    assert svc2.next_folded == {} and svc2.emitted == {f"{topics.REGISTRATIONS}/0": 3, f"{topics.RULES}/0": 1}
    res = await svc2.process(everything)
    assert res.rendered  # once caught up: the reconcile render...
    assert producer2.sent == []  # ...found nothing to republish, and no dead letter / rejection repeats
    assert svc2.state == state
    close(svc2)


async def test_a_crash_before_the_commit_loses_nothing(tmp_path, monkeypatch):
    log, producer = mesh_log(), FakeProducer()
    svc = make(tmp_path, producer)

    def crash(*a, **k):
        raise SystemExit("killed between publish and commit")

    monkeypatch.setattr(svc.store, "commit", crash)
    with pytest.raises(SystemExit):
        await svc.process(log.records[topics.REGISTRATIONS])
    monkeypatch.undo()
    close(svc)

    producer2 = FakeProducer()
    svc2 = make(tmp_path, producer2)
    await svc2.process(log.records[topics.REGISTRATIONS])
    # at-least-once: the batch is redone and its views published again (identical records)
    assert [(s.topic, s.key, s.value) for s in producer2.sent] == [(s.topic, s.key, s.value) for s in producer.sent]
    close(svc2)


async def test_a_fold_that_raises_dead_letters_only_the_offending_event(tmp_path, monkeypatch):
    log, producer = Log(), FakeProducer()
    log.append(registered("db", "db-1"))
    poison = log.append(registered("api", "api-1", "node-api", deps=("db",)))
    log.append(registered("web", "web-1", "node-web", deps=("db",)))
    real = service_mod.fold_with_decisions

    def many(state, events, verifier=None):
        raise RuntimeError("fold_many bug")

    def one(state, logged, verifier=None):
        if logged.offset == poison.offset:
            raise ValueError("bug in the fold")
        return real(state, logged, verifier)

    monkeypatch.setattr(service_mod, "fold_many", many)
    monkeypatch.setattr(service_mod, "fold_with_decisions", one)
    svc = make(tmp_path, producer)
    res = await svc.process(log.records[topics.REGISTRATIONS])
    assert res.dead_lettered == 1 and res.folded == 2
    letter = parse_dead_letter(producer.to(topics.DEADLETTER)[0].value)
    assert letter.stage == "fold" and letter.offset == poison.offset and "bug in the fold" in letter.reason
    nodes = [n for n, _v in views(producer)[1]]
    assert nodes == ["node-web"]
    close(svc)


async def test_broker_errors_while_publishing_are_retried(tmp_path):
    log, producer = mesh_log(), FakeProducer(fail_next=1)
    svc = make(tmp_path, producer)
    await svc.process(log.records[topics.REGISTRATIONS])
    assert "node-api" in [n for n, _v in views(producer)[1]]
    close(svc)


async def test_renders_wait_for_the_catch_up_after_start(tmp_path):
    log, producer = Log(), FakeProducer()
    for i in range(4):
        log.append(registered("api", f"api-{i}", f"node-{i}"))
    recs = log.records[topics.REGISTRATIONS]
    svc = make(tmp_path, producer, ends={f"{topics.REGISTRATIONS}/0": 4})
    res = await svc.process(recs[:2])
    assert not res.rendered and views(producer) == ([], [])
    res = await svc.process(recs[2:])
    assert res.rendered
    assert sorted(n for n, _v in views(producer)[1]) == [f"node-{i}" for i in range(4)]
    # a listener of a node folded before the end was published only once, at the end
    assert len([k for k, _b in views(producer)[0] if k == (LISTENER, "node-0~inbound")]) == 1
    close(svc)


async def test_checkpoint_and_snapshot(tmp_path):
    log, producer = mesh_log(), FakeProducer()
    svc = make(tmp_path, producer, snapshot_events=2, checkpoint_events=2)
    await svc.process(log.records[topics.REGISTRATIONS])
    (snap,) = producer.to(topics.SNAPSHOTS)
    from projector.snapshots import decode_snapshot

    decoded = decode_snapshot(snap.value)
    assert decoded.next_offsets == {f"{topics.REGISTRATIONS}/0": 2} and decoded.events == 2
    assert decoded.state() == svc.state
    close(svc)
    stored = Store(tmp_path / service_mod.DB_NAME).load()
    assert stored.state == svc.state and stored.state_offsets == {f"{topics.REGISTRATIONS}/0": 2}
    assert stored.snapshot_marks["events"] == 2


async def test_only_a_state_folded_in_merge_order_from_empty_says_so_in_its_snapshots(tmp_path):
    from projector.snapshots import MERGE_ORDER, decode_header

    log, producer = mesh_log(), FakeProducer()
    log.append(registered("web", "web-1"))
    svc = make(tmp_path / "new", producer, snapshot_events=1, checkpoint_events=1)
    await svc.process(log.records[topics.REGISTRATIONS][:1])
    close(svc)
    assert decode_header(producer.to(topics.SNAPSHOTS)[-1].value)["fold_order"] == MERGE_ORDER

    # a data dir checkpointed by a projector from before the merge gate: its counters have no fold_order
    old = tmp_path / "old"
    svc = make(old, FakeProducer(), checkpoint_events=1)
    await svc.process(log.records[topics.REGISTRATIONS][:1])
    close(svc)
    store = Store(old / service_mod.DB_NAME)
    stored = store.load()
    del stored.counters["fold_order"]
    store.commit(checkpoint=(service_mod.state_to_bytes(stored.state), stored.state_offsets, stored.counters))
    store.close()
    headers = []
    for record in log.records[topics.REGISTRATIONS][1:]:  # restarted on it, and again: it never forgets
        producer = FakeProducer()
        svc = make(old, producer, snapshot_events=1, checkpoint_events=1)
        await svc.process([record])
        close(svc)
        headers += [decode_header(s.value) for s in producer.to(topics.SNAPSHOTS)]
    assert svc.counters["events"] == 3
    assert len(headers) == 2 and all(h["fold_order"] is None for h in headers)


def test_a_data_dir_of_another_cluster_is_refused(tmp_path):
    svc = make(tmp_path, FakeProducer())
    close(svc)
    other = ProjectorService(ProjectorConfig(bootstrap="b:1", data_dir=tmp_path))
    with pytest.raises(service_mod.ProjectorError, match="fresh --data-dir"):
        other.load_store("cluster-2")


def test_same_state_sees_shared_maps():
    import dataclasses

    from projector.state import empty_state

    s = empty_state()
    assert same_state(s, s) and same_state(s, dataclasses.replace(s))
    assert not same_state(s, dataclasses.replace(s, instances=s.instances.set("k", 1)))


async def test_a_stop_while_the_broker_fails_does_not_checkpoint_the_unpublished_batch(tmp_path):
    log, producer = mesh_log(), FakeProducer(fail_next=10**6)
    svc = make(tmp_path, producer, checkpoint_events=1)
    svc.request_stop()
    with pytest.raises(service_mod._Stopping):
        await svc.process(log.records[topics.REGISTRATIONS])
    await svc.close()
    stored = Store(tmp_path / service_mod.DB_NAME).load()
    assert stored.state_offsets == {} and stored.emitted == {}  # the batch is redone on the next start


async def test_by_default_an_unsigned_event_is_refused_recorded_and_reaches_no_view(tmp_path):
    """Verification on (the default): the fold refuses what it cannot verify; the decision is a signed record."""
    from events.signing import Signer
    from identity import pki, spiffe

    ca = pki.create_root("mesh.local")
    key = pki.generate_key()
    projector_signer = Signer(key, pki.serial_hex(pki.issue(ca, spiffe.projector("mesh.local"), key.public_key())))
    log, producer = mesh_log(), FakeProducer()
    svc = make(tmp_path, producer, insecure_events=False)
    svc._signer = projector_signer
    res = await svc.process(log.records[topics.REGISTRATIONS])
    assert res.rejected == 2
    assert [s.topic for s in producer.sent] == [topics.REJECTIONS] * 2  # no view: nothing was folded
    env = decode(producer.sent[0].value, topics.REJECTIONS)
    assert env.type == "event.refused" and env.payload.problem == "unsigned"
    assert env.payload.event_key == "db/db-1" and env.payload.source_offset == 0
    assert producer.sent[0].key == b"refused/db/db-1"
    assert env.signer == projector_signer.serial  # the projector's own decision, signed by its identity
    assert len(svc.state.instances) == 0
    close(svc)


async def test_a_signing_projector_attests_the_signatures_its_fold_found_good(tmp_path):
    """Verification on, the projector with a mesh identity: after the batch, one signed attestation on
    meshlog.attestations names the run of records with good signatures (the two signed registrations), which the
    unsigned one after them ends."""
    from identity import spiffe
    from projector.attestations import Run, decode_attestation, run_digest
    from replay.attestations import attestation_refusal
    from tests.unit.projector.signed import MS0, SignedLog, Trust, sidecar

    trust = Trust()
    projector_signer = trust.issue(spiffe.projector("mesh.local"))
    log = SignedLog(trust)
    log.by(sidecar("db", "db-1")).register("db", "db-1", "10.0.0.1", 5432)
    log.by(sidecar("api", "api-1")).register("db", "db-2", "10.0.0.2", 5432)  # not api's to state
    log.by(None).register("db", "db-3", "10.0.0.3", 5432)
    records = [Rec(lg.topic, 0, lg.offset, lg.timestamp_ms, lg.envelope.payload.key().encode(), encode(lg.envelope))
               for lg in log.events]
    producer = FakeProducer()
    svc = make(tmp_path, producer, insecure_events=False)
    svc.verifier = trust.verifier()
    svc._signer = projector_signer
    res = await svc.process(records)
    assert res.folded == 3 and res.rejected == 2
    (sent,) = producer.to(topics.ATTESTATIONS)
    header, runs = decode_attestation(sent.value)
    assert sent.key == b"attestation"
    # both signed registrations carry good signatures (api's is refused for what it states, not how it is signed)
    assert runs == [Run(topics.REGISTRATIONS, 0, 0, 1, 2, run_digest([r.value for r in records[:2]]))]
    assert attestation_refusal(trust.verifier(), header, MS0 + 10) is None  # the projector's, checkable by replay
    assert svc.totals["attestations"] == 1
    close(svc)


async def test_an_insecure_projector_attests_nothing(tmp_path):
    log, producer = mesh_log(), FakeProducer()
    svc = make(tmp_path, producer)
    await svc.process(log.records[topics.REGISTRATIONS])
    assert producer.to(topics.ATTESTATIONS) == []
    close(svc)
