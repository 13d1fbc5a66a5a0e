"""Story: signed events through a real broker, a real `projector run` (verifying, its default) and `replay log`.

A mesh CA issues identities and logs them on meshlog.identities. web's and
reviews' sidecars register themselves, signed with their keys. An impostor
holding a valid certificate of ``reviews`` claims web-1's node id, then
registers itself with weight 128; someone appends an unsigned registration;
web's sidecar tries to write a route rule. The projector refuses all four
with their reasons on meshlog.rejections, no record of the view topics ever
carries the impostor's address, and `replay log` names each event's verified
author (the impostor's SPIFFE id), not the name it claimed.

The module starts its own broker: a verifying projector on the session's
shared broker would refuse every other test's unsigned events and publish
views without them.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from events import topics
from events import types as t
from events.admin import ensure_topics
from events.codec import decode
from events.envelope import new_event
from events.kafka_security import connection_kwargs
from events.producer import EventProducer
from events.signing import Signer
from identity import pki, records, spiffe

pytestmark = [pytest.mark.integration]

BIN = Path(sys.executable).parent
DOMAIN = "mesh.local"
EVIL_ADDRESS = "10.66.66.66"


def _env() -> dict[str, str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("MESHLOG_INSECURE_EVENTS", None)  # the default: verify
    return env


@pytest.fixture(scope="module")
def broker():
    from meshlog.kafka_local import LocalKafka

    with LocalKafka() as kafka:
        asyncio.run(ensure_topics(kafka.bootstrap))
        yield kafka.bootstrap


def _reg(service, instance, address, port, **kw) -> t.InstanceRegistered:
    return t.InstanceRegistered(service=service, instance_id=instance, address=address, port=port,
                                sidecar=t.SidecarPorts(inbound_port=15006, outbound_port=15001), **kw)


async def _read_all(bootstrap: str, topic: str) -> list:
    consumer = AIOKafkaConsumer(**connection_kwargs(bootstrap), enable_auto_commit=False, group_id=None,
                                isolation_level="read_committed")
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or {0})]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        out = []
        pending = [tp for tp in tps if ends[tp] > 0]
        while pending:
            for recs in (await consumer.getmany(*pending, timeout_ms=500)).values():
                out += recs
            pending = [tp for tp in pending if await consumer.position(tp) < ends[tp]]
        return out
    finally:
        await consumer.stop()


async def _refusals(bootstrap: str) -> list[t.EventRefused]:
    out = []
    for r in await _read_all(bootstrap, topics.REJECTIONS):
        env = decode(r.value, topics.REJECTIONS)
        if isinstance(env.payload, t.EventRefused):
            out.append(env.payload)
    return out


async def test_forged_events_are_refused_and_replay_names_their_verified_author(broker, tmp_path):
    suffix = uuid.uuid4().hex[:6]
    web, reviews = f"web-{suffix}", f"reviews-{suffix}"
    ca = pki.create_root(DOMAIN)
    signers: dict[str, Signer] = {}
    async with EventProducer(broker, signer=None) as identities:
        for ident in (spiffe.sidecar(DOMAIN, web, "w1"), spiffe.sidecar(DOMAIN, reviews, "r1"),
                      spiffe.sidecar(DOMAIN, reviews, "evil")):
            key = pki.generate_key()
            cert = pki.issue(ca, ident, key.public_key())
            await identities.append(new_event(records.issued(cert, ca.certificate, how="offline", requested_by="t")))
            signers[ident.uri] = Signer(key, pki.serial_hex(cert))

    def by(service: str, instance: str) -> Signer:
        return signers[spiffe.sidecar(DOMAIN, service, instance).uri]

    log_path = tmp_path / "projector.log"
    with open(log_path, "wb") as log_file:
        projector = subprocess.Popen(
            [str(BIN / "projector"), "run", "--bootstrap", broker, "--data-dir", str(tmp_path / "data"),
             "--poll-ms", "100"], stdout=log_file, stderr=subprocess.STDOUT, env=_env())
    try:
        t0 = int(time.time() * 1000) - 1
        async with EventProducer(broker, signer=by(web, "w1")) as p:
            await p.append(new_event(_reg(web, "w1", "10.0.0.1", 8080, node_id=f"web-1-{suffix}",
                                          depends_on=(reviews,)), producer="web-sidecar"))
        async with EventProducer(broker, signer=by(reviews, "r1")) as p:
            await p.append(new_event(_reg(reviews, "r1", "10.0.0.2", 9080), producer="reviews-sidecar"))
        async with EventProducer(broker, signer=by(reviews, "evil")) as p:  # a valid certificate of reviews
            await p.append(new_event(_reg(reviews, "evil", EVIL_ADDRESS, 22, node_id=f"web-1-{suffix}"),
                                     producer=f"sidecar/{web}/w1"))  # claims to be web's sidecar
            await p.append(new_event(_reg(reviews, "evil", EVIL_ADDRESS, 9080, weight=128), producer="evil"))
        async with EventProducer(broker, signer=None) as p:
            await p.append(new_event(_reg(reviews, "r9", EVIL_ADDRESS, 9080), producer="operator"))
        async with EventProducer(broker, signer=by(web, "w1")) as p:
            await p.append(new_event(t.RouteRuleUpserted(host=reviews, revision=1, routes=(t.HttpRoute(
                destinations=(t.WeightedDestination(weight=100),)),)), producer="web-sidecar"))

        deadline = time.monotonic() + 90
        refused: list[t.EventRefused] = []
        while len(refused) < 4:
            assert projector.poll() is None, log_path.read_text()[-4000:]
            assert time.monotonic() < deadline, f"refusals: {refused}\n{log_path.read_text()[-4000:]}"
            await asyncio.sleep(0.5)
            refused = await _refusals(broker)
        to_ms = int(time.time() * 1000)
    finally:
        projector.send_signal(signal.SIGTERM)
        projector.wait(30)

    evil = spiffe.sidecar(DOMAIN, reviews, "evil").uri
    assert [(r.problem, r.author, r.event_key) for r in refused] == [
        ("node_id_taken", evil, f"{reviews}/evil"),
        ("weight_too_high", evil, f"{reviews}/evil"),
        ("unsigned", None, f"{reviews}/r9"),
        ("not_permitted", spiffe.sidecar(DOMAIN, web, "w1").uri, f"route/{reviews}"),
    ]
    assert f"node id 'web-1-{suffix}' is held by the live registration of '{web}/w1'" in refused[0].reason
    assert refused[0].producer == f"sidecar/{web}/w1"  # what it claimed, kept apart from who it is
    # the honest registrations reached the views; nothing the impostor stated ever did
    views = await _read_all(broker, topics.VIEW_RESOURCES)
    assert any(b"10.0.0.2" in (r.value or b"") for r in views)
    assert not any(EVIL_ADDRESS.encode() in (r.value or b"") for r in views)

    result = subprocess.run([str(BIN / "replay"), "log", "--bootstrap", broker, "--from", f"@{t0}", "--to",
                             f"@{to_ms}", "--json", "--no-progress"], capture_output=True, text=True, env=_env(),
                            timeout=120)
    assert result.returncode == 0, result.stderr
    entries = [e for e in json.loads(result.stdout)["entries"] if e["kind"] == "event"]
    by_key = {}
    for e in entries:
        by_key.setdefault(e["key"], []).append(e)
    claimed_web = by_key[f"{reviews}/evil"][0]
    assert claimed_web["producer"] == f"sidecar/{web}/w1"
    assert claimed_web["author"] == {"verified": True, "spiffe_id": evil, "serial": by(reviews, "evil").serial,
                                     "problem": None}
    assert claimed_web["rejection"] == {"reason": refused[0].reason, "recorded": True}
    assert by_key[f"{reviews}/r9"][0]["author"]["problem"] == "unsigned"
    assert by_key[f"{reviews}/r1"][0]["rejection"] is None

    text = subprocess.run([str(BIN / "replay"), "log", "--bootstrap", broker, "--from", f"@{t0}", "--to",
                           f"@{to_ms}", "--no-progress"], capture_output=True, text=True, env=_env(), timeout=120,
                          )
    assert text.returncode == 0, text.stderr
    assert "unverified (unsigned): claims operator" in " ".join(text.stdout.split())


async def test_replay_takes_the_projectors_attestations_from_the_log(broker, monkeypatch):
    """Through the real broker: a projector-signed attestation on meshlog.attestations stands for the signature
    checks of the events in the runs it names, in `replay --at`'s rebuild; one signed by a sidecar is not believed;
    the mesh rebuilt is the same either way."""
    from aiokafka import AIOKafkaProducer

    from events.codec import encode
    from events.envelope import ATTESTED_RUN
    from projector.attestations import KEY, Run, encode_attestation, run_digest
    from replay import attestations
    from replay.attested_runs import AttestedRuns
    from replay.engine import rebuild
    from replay.identities import load_verifier
    from replay.source import new_consumer

    monkeypatch.setattr(attestations, "MIN_EVENTS", 1)  # a short cut: read them anyway
    suffix = uuid.uuid4().hex[:6]
    svc = f"ratings-{suffix}"
    ca = pki.create_root(DOMAIN)
    signers = {}
    async with EventProducer(broker, signer=None) as identities:
        for ident in (spiffe.sidecar(DOMAIN, svc, "a"), spiffe.sidecar(DOMAIN, svc, "b"), spiffe.projector(DOMAIN)):
            key = pki.generate_key()
            cert = pki.issue(ca, ident, key.public_key())
            await identities.append(new_event(records.issued(cert, ca.certificate, how="offline", requested_by="t")))
            signers[ident.uri] = Signer(key, pki.serial_hex(cert))
    envs = [signers[spiffe.sidecar(DOMAIN, svc, i).uri].sign(new_event(_reg(svc, i, f"10.0.9.{n}", 9080)))
            for n, i in enumerate(("a", "b"), start=1)]
    producer = AIOKafkaProducer(**connection_kwargs(broker), enable_idempotence=True)
    await producer.start()
    try:
        runs = []  # each record where the broker logged it, named by its bytes as the projector received them
        for env in envs:
            at = await producer.send_and_wait(topics.REGISTRATIONS, encode(env), key=env.key.encode())
            runs.append(Run(topics.REGISTRATIONS, at.partition, at.offset, at.offset, 1, run_digest([encode(env)])))
        # a sidecar's "attestation" first (not believed), then the projector's
        await producer.send_and_wait(topics.ATTESTATIONS, encode_attestation(
            runs, signers[spiffe.sidecar(DOMAIN, svc, "a").uri]), key=KEY)
        await producer.send_and_wait(topics.ATTESTATIONS, encode_attestation(
            runs, signers[spiffe.projector(DOMAIN).uri]), key=KEY)
    finally:
        await producer.stop()
    at_ms = int(time.time() * 1000) + 1000

    async def rebuilt():
        consumer = new_consumer(broker)
        await consumer.start()
        try:
            verifier = await load_verifier(consumer, at_ms)
            return await rebuild(consumer, at_ms, verifier=verifier, use_snapshot=False), verifier
        finally:
            await consumer.stop()

    attested, verifier = await rebuilt()
    assert attested.stats["attestations"]["refused"] >= 1  # the sidecar's
    assert attested.stats["attestations"]["accepted"] >= 1
    assert verifier.vouched_hits == 2  # both registrations taken on the projector's word, nothing else
    assert {i.reg.instance_id for i in attested.state.instances.values() if i.reg.service == svc} == {"a", "b"}
    monkeypatch.setattr(attestations, "MIN_EVENTS", 10 ** 9)  # the full check: the same mesh
    full, verifier = await rebuilt()
    assert verifier.vouched_hits == 0 and full.state == attested.state
    # read by replay's second process (replay.pipeline): the attested records cross decoded lazily, without their
    # signed bytes and proofs, and the verifier here takes them on the same attestation: the same mesh
    from replay import engine
    from replay.engine import plan_cut
    from replay.pipeline import iter_cut_in_child

    consumer = new_consumer(broker)
    await consumer.start()
    try:
        cut = await plan_cut(consumer, at_ms)
    finally:
        await consumer.stop()
    read = [lg.envelope for b in [b async for b in iter_cut_in_child(broker, cut, attested=AttestedRuns(runs))]
            for lg in b.events]
    ours = [e for e in read if e.received_digest is ATTESTED_RUN]
    assert len(ours) == 2 and all(e.signed_bytes is None and e.signer is not None for e in ours)
    assert all(e.signed_bytes is not None for e in read if e.signer is not None and e not in ours)  # the full way
    monkeypatch.setattr(attestations, "MIN_EVENTS", 1)
    monkeypatch.setattr(engine, "PARALLEL_MIN_EVENTS", 0)
    monkeypatch.setattr(engine, "PARALLEL", "1")  # whatever the host's load

    async def rebuilt_in_child():
        consumer = new_consumer(broker)
        await consumer.start()
        try:
            verifier = await load_verifier(consumer, at_ms)
            return await rebuild(consumer, at_ms, verifier=verifier, use_snapshot=False, bootstrap=broker), verifier
        finally:
            await consumer.stop()

    in_child, verifier = await rebuilt_in_child()
    assert in_child.stats["reader"] == "child process"
    assert verifier.vouched_hits == 2 and in_child.state == attested.state
