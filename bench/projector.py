"""Projector throughput: fold-only in process, then the live projector against a real broker.

Figures printed:

1. fold only (in process, no Kafka): events/s of ``fold_many`` in batches and
   of ``fold_with_decisions`` one by one; ``render_all`` and
   ``state_to_bytes`` time for the bench mesh, from scratch and as the live
   projector's checkpoints run it (``RowMemo``: after each 5,000 transitions,
   the median).
2. sustained: a running, caught-up projector (in this process, one asyncio
   thread) while a separate producer process appends a mesh's registrations
   and then ``--events`` health transitions as fast as it can; events/s
   through decode + fold + render (once per batch) + publish + RocksDB
   commit, over wall time and over the projector's own CPU time.
   The producers sign as the real ones do (each registration by its
   sidecar identity, transitions by a checker: ``--health-batch N`` at a
   time, default 1, each alone, as ``registrar healthcheck`` signs a lone
   transition; 1000 is a burst's extreme, one signature over a batch's Merkle
   root; their identities issued, root-signed, on the identities topic
   first) and the projector verifies (``--unsigned``: the figures before
   issue 13, the projector in ``--insecure-events``).
3. burst: a ``--burst`` burst (default 10,000 health transitions) appended to
   the caught-up projector; time from the burst's first broker timestamp to
   the commit of the batch that published the views of its last event.

Usage: python bench/projector.py [--services 200] [--instances 5] [--events 100000] [--burst 10000]
Uses $MESHLOG_KAFKA_BOOTSTRAP, else starts a local broker for the run
(meshlog.kafka_local). The mesh: services x instances, every instance a
sidecar node depending on 3 other services; health transitions hit random
instances, so each batch changes endpoints seen by many nodes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import NamedTuple

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from events import topics  # noqa: E402
from events import types as t  # noqa: E402
from events.codec import encode  # noqa: E402
from events.envelope import Envelope, Logged  # noqa: E402

NOW = datetime.now(timezone.utc)


def envelope(payload: t.Payload, n: int) -> Envelope:
    return Envelope(f"bench-{n}", payload.TYPE, payload.SCHEMA_VERSION, NOW, "bench", payload)


def registrations(services: int, instances: int, prefix: str) -> list[t.Payload]:
    rnd = random.Random(7)
    out = []
    for s in range(services):
        for i in range(instances):
            deps = sorted({f"{prefix}-svc-{rnd.randrange(services)}" for _ in range(3)} - {f"{prefix}-svc-{s}"})
            out.append(t.InstanceRegistered(
                service=f"{prefix}-svc-{s}", instance_id=f"i{i}", address=f"10.{s // 250}.{s % 250}.{i + 1}",
                port=8080, node_id=f"{prefix}-node-{s}-{i}",
                sidecar=t.SidecarPorts(inbound_port=15001, outbound_port=15002), depends_on=tuple(deps),
                labels={"version": "v1" if i % 2 else "v2"},
            ))
    return out


def flaps(services: int, instances: int, prefix: str, count: int, seed: int) -> list[t.Payload]:
    rnd = random.Random(seed)
    return [
        t.InstanceHealthChanged(
            service=f"{prefix}-svc-{rnd.randrange(services)}", instance_id=f"i{rnd.randrange(instances)}",
            status=rnd.choice(("healthy", "unhealthy")), observer="bench",
        )
        for _ in range(count)
    ]


# ---------------------------------------------------------------- 1. fold only


def fold_only(services: int, instances: int, events: int) -> dict:
    from projector.fold import fold_many, fold_with_decisions
    from projector.render import render_all
    from projector.state import RowMemo, empty_state, state_to_bytes

    regs = [Logged(envelope(p, i), topics.REGISTRATIONS, 0, i, 1_000_000 + i)
            for i, p in enumerate(registrations(services, instances, "f"))]
    hs = [Logged(envelope(p, i), topics.HEALTH, 0, i, 2_000_000 + i)
          for i, p in enumerate(flaps(services, instances, "f", events, 1))]
    t0 = time.perf_counter()
    state, _ = fold_many(empty_state(), regs)
    t1 = time.perf_counter()
    s = state
    for i in range(0, len(hs), 5000):
        s, _ = fold_many(s, hs[i : i + 5000])
    t2 = time.perf_counter()
    s1 = state
    for lg in hs:
        s1, _ = fold_with_decisions(s1, lg)
    t3 = time.perf_counter()
    r = render_all(s)
    t4 = time.perf_counter()
    body = state_to_bytes(s)
    t5 = time.perf_counter()
    memo, checkpoints, s2 = RowMemo(), [], state
    state_to_bytes(s2, memo)
    for i in range(0, len(hs), 5000):
        s2, _ = fold_many(s2, hs[i : i + 5000])
        c = time.perf_counter()
        state_to_bytes(s2, memo)
        checkpoints.append(time.perf_counter() - c)
    return {
        "registrations_per_s": len(regs) / (t1 - t0),
        "fold_many_per_s": len(hs) / (t2 - t1),
        "fold_one_by_one_per_s": len(hs) / (t3 - t2),
        "render_all_ms": (t4 - t3) * 1000,
        "resources": len(r.resources),
        "nodes": len(r.membership),
        "state_to_bytes_ms": (t5 - t4) * 1000,
        "state_bytes": len(body),
        "checkpoint_ms": sorted(checkpoints)[len(checkpoints) // 2] * 1000,
    }


def _pool_cpu(pool) -> float:
    """CPU seconds the verification pool's (one) worker process has used so far (0 without a pool)."""
    return 0.0 if pool is None else pool.submit(time.process_time).result()


def verified_fold(services: int, instances: int, events: int, decode: str = "projector", freeze: bool = True) -> dict:
    """Decode + fold with and without signature verification, in process, on the same records.

    Every registration is signed by its own sidecar identity, every health transition by one checker (as the
    demo's events are); the records are decoded from their bytes each round (the decode keeps the bytes the
    signature covers), with the projector's own decoder (``events.record_decoder.RecordDecoder``, a fresh one
    each round: its memo of validated payloads starts empty, as after a projector's start), or with
    ``decode="codec"`` the write side's codec (``events.codec.decode``: every payload validated again; what this
    bench measured before 2026-12-02). Verification happens in the fold (``fold_many(..., verifier)``), exactly
    as the projector runs it; one certificate check per identity, one ECDSA P-256 verification per event.
    """
    from events.codec import decode_record, encode
    from events.envelope import new_event
    from events.record_decoder import RecordDecoder
    from events.signing import Signer
    from identity import pki, records, spiffe
    from identity.registry import EMPTY, fold_many as fold_identities
    from identity.verifier import Verifier, verification_pool
    from projector.fold import fold_many
    from projector.state import empty_state, state_to_bytes

    ca = pki.create_root("mesh.local")
    identity_events, signers = [], {}

    def signer_for(ident: spiffe.SpiffeId) -> Signer:
        if ident.uri not in signers:
            key = pki.generate_key()
            cert = pki.issue(ca, ident, key.public_key())
            signers[ident.uri] = Signer(key, pki.serial_hex(cert))
            issued = records.issued(cert, ca.certificate, how="offline", requested_by="bench")
            identity_events.append(Logged(new_event(issued), topics.IDENTITIES, 0, len(identity_events), 1))
        return signers[ident.uri]

    checker = signer_for(spiffe.checker("mesh.local", "bench"))
    regs = registrations(services, instances, "v")
    hs = flaps(services, instances, "v", events, 2)
    t_sign = time.perf_counter()
    raw = [(topics.REGISTRATIONS, encode(signer_for(spiffe.sidecar("mesh.local", p.service, p.instance_id))
                                         .sign(envelope(p, i)))) for i, p in enumerate(regs)]
    single = [(topics.HEALTH, encode(checker.sign(envelope(p, i)))) for i, p in enumerate(hs)]
    sign_s = time.perf_counter() - t_sign
    # the same transitions as the bench's producer appends them (append_batch of 1,000): one signature per batch
    batched = [(topics.HEALTH, encode(env)) for i in range(0, len(hs), 1000)
               for env in checker.sign_batch([envelope(p, i + j) for j, p in enumerate(hs[i: i + 1000])])]
    raw_batched = raw + batched
    raw += single
    unsigned = [(topic, encode(envelope(p, i))) for topic, p, i in
                [(topics.REGISTRATIONS, p, i) for i, p in enumerate(regs)] + [(topics.HEALTH, p, i) for i, p in enumerate(hs)]]
    now_ms = int(time.time() * 1000)

    folded: dict[str, bytes] = {}

    def run(name: str, records, verifier, pool=None) -> dict:
        # CPU time of this process (all its threads) and of the verification pool's worker process (measured
        # there): the figure cores give, whatever else the machine runs; wall time: what the second core buys
        w0 = _pool_cpu(pool)
        gc.collect()
        t0, c0, m0 = time.perf_counter(), time.process_time(), time.thread_time()
        decoder = RecordDecoder() if decode == "projector" else decode_record
        state = empty_state()
        # in batches, as the projector takes them: decode, (verify ahead,) fold, then freeze what survived
        # (ProjectorConfig.gc_freeze: a collection then never walks the state again)
        for i in range(0, len(records), 5000):
            logged = [decoder(_Record(value, topic, 0, n, now_ms + n))
                      for n, (topic, value) in enumerate(records[i: i + 5000], start=i)]
            if pool is not None:  # as the projector runs it: checks start in the pool, the fold takes the answers
                verifier.verify_ahead(logged, pool)
            state, decisions = fold_many(state, logged, verifier)
            assert not decisions, decisions[:1]
            if freeze:
                gc.freeze()
        cpu, wall, main = time.process_time() - c0, time.perf_counter() - t0, time.thread_time() - m0
        cpu += _pool_cpu(pool) - w0
        gc.unfreeze()
        folded[name] = state_to_bytes(state)
        # on two free cores the slower of the two sides sets the pace: the bound, whatever the host's load
        return {"per_cpu_s": len(records) / cpu, "per_wall_s": len(records) / wall,
                "two_core_bound_per_s": len(records) / max(main, cpu - main), "main_thread_cpu_s": main,
                "other_threads_cpu_s": cpu - main, "checked": verifier.checked if verifier else 0,
                "checked_ahead": verifier.checked_ahead if verifier else 0}

    def fresh() -> Verifier:
        return Verifier(fold_identities(EMPTY, identity_events), [ca.certificate])

    out = {"events": len(raw), "identities": len(signers), "sign_per_s": len(raw) / sign_s,
           "unsigned": run("unsigned", unsigned, None), "per_event": run("per_event", raw, fresh()),
           "mix": run("mix", raw_batched, fresh())}
    pool = verification_pool(1)
    try:
        out["per_event_ahead"] = run("per_event_ahead", raw, fresh(), pool)
        out["mix_ahead"] = run("mix_ahead", raw_batched, fresh(), pool)
    finally:
        pool.shutdown()
    # verifying ahead moves work, never changes an answer: the same state, byte for byte
    assert len(set(folded.values())) == 1, "the folds disagree"
    return out


class _Record(NamedTuple):
    """What the decoders read of a consumer record."""

    value: bytes
    topic: str
    partition: int
    offset: int
    timestamp: int


# ---------------------------------------------------------------- the producer process


async def produce(bootstrap: str, kind: str, services: int, instances: int, prefix: str, count: int, seed: int,
                  signed: bool = True, health_batch: int = 1) -> dict:
    from aiokafka import AIOKafkaProducer

    from events.kafka_security import connection_kwargs

    payloads = registrations(services, instances, prefix) if kind == "registrations" else flaps(
        services, instances, prefix, count, seed)
    envs = [envelope(p, i) for i, p in enumerate(payloads)]
    identities = []
    if signed:  # as the real producers sign: each registration by its sidecar, transitions by a checker's batches
        from events.envelope import new_event
        from events.signing import Signer
        from identity import pki, records as identity_records, spiffe

        ca = pki.create_root("mesh.local")
        root = identity_records.authority_signer(ca)

        def signer_of(ident) -> Signer:
            key = pki.generate_key()
            cert = pki.issue(ca, ident, key.public_key())
            identities.append(root.sign(new_event(identity_records.issued(cert, ca.certificate, how="offline",
                                                                          requested_by="bench"))))
            return Signer(key, pki.serial_hex(cert))

        if kind == "registrations":
            envs = [signer_of(spiffe.sidecar("mesh.local", e.payload.service, e.payload.instance_id)).sign(e)
                    for e in envs]
        else:
            checker = signer_of(spiffe.checker("mesh.local", prefix))
            if health_batch > 1:
                envs = [x for i in range(0, len(envs), health_batch)
                        for x in checker.sign_batch(envs[i: i + health_batch])]
            else:
                envs = [checker.sign(e) for e in envs]
    first = [(e.payload.TOPIC, e.payload.key().encode(), encode(e)) for e in identities]
    records = [(e.payload.TOPIC, e.payload.key().encode(), encode(e)) for e in envs]
    producer = AIOKafkaProducer(**connection_kwargs(bootstrap), enable_idempotence=True, linger_ms=10,
                                max_batch_size=1 << 20)
    await producer.start()
    try:
        # the identities acknowledged before any event is sent: sent together, the broker may log an event of
        # another topic a millisecond before its signer's issuance, and the projector rightly refuses it
        # (unknown_signer: seen as 919-3,729 refusals in some runs)
        await asyncio.gather(*[await producer.send(topic, value=value, key=key) for topic, key, value in first])
        t0 = time.perf_counter()
        futures = [await producer.send(topic, value=value, key=key) for topic, key, value in records]
        metas = await asyncio.gather(*futures)
        elapsed = time.perf_counter() - t0
    finally:
        await producer.stop()
    ends: dict[str, int] = {}  # "topic/partition" -> the offset after the last record appended there
    for m in metas:
        key = f"{m.topic}/{m.partition}"
        ends[key] = max(ends.get(key, 0), m.offset + 1)
    return {"ends": ends, "count": len(metas),
            "first_timestamp_ms": min(m.timestamp for m in metas), "produce_s": elapsed}


def run_producer(bootstrap: str, kind: str, args: argparse.Namespace, prefix: str, count: int, seed: int) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, __file__, "--produce", kind, "--bootstrap", bootstrap, "--services", str(args.services),
         "--instances", str(args.instances), "--prefix", prefix, "--count", str(count), "--seed", str(seed),
         "--health-batch", str(args.health_batch), *(["--unsigned"] if args.unsigned else [])],
        stdout=subprocess.PIPE, text=True,
    )


# ---------------------------------------------------------------- 2./3. the live projector


class Recorder:
    """Wraps ProjectorService.process to time every batch."""

    def __init__(self, svc) -> None:
        self.svc = svc
        self.batches: list[dict] = []
        original = svc.process

        async def process(records, **kwargs):  # the service's own keywords (in_merge_order), passed through
            t0, c0 = time.perf_counter(), time.process_time()
            res = await original(records, **kwargs)
            self.batches.append({
                "start": t0, "end": time.perf_counter(), "cpu": time.process_time() - c0, "wall_end": time.time(),
                "records": res.records, "folded": res.folded, "rendered": res.rendered, "refused": res.rejected,
                "published": len(res.plan.bodies) + len(res.plan.membership) + len(res.plan.removals),
                "next": dict(svc.next_folded),
            })
            return res

        svc.process = process

    async def until(self, ends: dict[str, int], timeout: float = 600) -> dict:
        """The first batch after which every partition in ``ends`` is folded up to its end."""
        deadline = time.monotonic() + timeout
        while not self.batches or any(self.batches[-1]["next"].get(k, 0) < v for k, v in ends.items()):
            if time.monotonic() > deadline:
                raise TimeoutError(f"projector did not reach {ends}")
            await asyncio.sleep(0.01)
        return self.batches[-1]


async def live(bootstrap: str, args: argparse.Namespace) -> dict:
    import logging

    from events.admin import ensure_topics
    from projector.service import ProjectorConfig, ProjectorService

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    await ensure_topics(bootstrap)
    prefix = f"b{os.getpid()}"
    out: dict = {}
    with tempfile.TemporaryDirectory(prefix="projector-bench-") as data:
        svc = ProjectorService(ProjectorConfig(bootstrap=bootstrap, data_dir=Path(data), max_batch=args.max_batch,
                                               gc_freeze=not args.no_gc_freeze, insecure_events=args.unsigned,
                                               verify_workers=args.verify_workers))
        rec = Recorder(svc)
        task = asyncio.ensure_future(svc.run())
        try:
            await asyncio.wait_for(svc.caught_up.wait(), 300)
            # the mesh: registrations (nodes appear), then the sustained stream of health transitions
            p = run_producer(bootstrap, "registrations", args, prefix, 0, 0)
            reg = json.loads((await asyncio.to_thread(p.communicate))[0])
            await rec.until(reg["ends"])
            n0 = len(rec.batches)
            p = run_producer(bootstrap, "flaps", args, prefix, args.events, 2)
            # waited for in a thread: the projector folds while the producer appends (a blocking wait here had
            # held the projector until the producer was done, so 'sustained' measured a backlog)
            flap = json.loads((await asyncio.to_thread(p.communicate))[0])
            last = await rec.until(flap["ends"])
            batches = [b for b in rec.batches[n0:]]
            first = batches[0]
            events = sum(b["folded"] for b in batches)
            wall = last["end"] - first["start"]
            cpu = sum(b["cpu"] for b in batches)
            out["sustained"] = {
                "events": events, "batches": len(batches), "wall_s": wall, "events_per_s_wall": events / wall,
                "projector_cpu_s": cpu, "events_per_cpu_s": events / cpu,
                "busy_fraction": sum(b["end"] - b["start"] for b in batches) / wall,
                "view_records_published": sum(b["published"] for b in batches),
                "producer_events_per_s": flap["count"] / flap["produce_s"],
                "mean_batch": events / len(batches),
                "refused": sum(b["refused"] for b in rec.batches),  # honest producers: must be 0
            }
            # the burst, against a caught-up projector
            await asyncio.sleep(1.0)
            n1 = len(rec.batches)
            p = run_producer(bootstrap, "flaps", args, prefix, args.burst, 3)
            burst = json.loads((await asyncio.to_thread(p.communicate))[0])
            done = await rec.until(burst["ends"])
            bb = rec.batches[n1:]
            out["burst"] = {
                "events": burst["count"],
                "catch_up_s": done["wall_end"] - burst["first_timestamp_ms"] / 1000.0,
                "producer_s": burst["produce_s"],
                "batches": len(bb),
                "processing_s": sum(b["end"] - b["start"] for b in bb),
                "view_records_published": sum(b["published"] for b in bb),
            }
        finally:
            svc.request_stop()
            await asyncio.wait_for(task, 60)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, default=200)
    parser.add_argument("--instances", type=int, default=5)
    parser.add_argument("--events", type=int, default=100_000, help="sustained health transitions")
    parser.add_argument("--burst", type=int, default=10_000)
    parser.add_argument("--max-batch", type=int, default=20_000)
    parser.add_argument("--no-gc-freeze", action="store_true", help="leave Python's GC as it is (the live projector, and the in-process signed part's per-batch freeze)")
    parser.add_argument("--skip-live", action="store_true", help="fold-only figures, no broker")
    parser.add_argument("--unsigned", action="store_true",
                        help="live part: unsigned events, the projector in --insecure-events (the figures before "
                        "issue 13); by default events are signed as their producers sign them and verified")
    parser.add_argument("--decode", choices=("projector", "codec"), default="projector",
                        help="in-process signed part: decode with the projector's RecordDecoder (default) or with "
                             "the codec (events.codec, every payload validated again: this bench before 2026-12-02)")
    parser.add_argument("--health-batch", type=int, default=1, metavar="N",
                        help="live part: the checker signs its transitions N at a time (default 1: each alone, as "
                             "`registrar healthcheck` signs a lone transition; 1000: a burst's extreme, one signature "
                             "per batch)")
    parser.add_argument("--verify-workers", type=int, default=1, help="live part: the projector's --verify-workers")
    # internal: the producer process
    parser.add_argument("--produce", choices=("registrations", "flaps"), help=argparse.SUPPRESS)
    parser.add_argument("--bootstrap", help=argparse.SUPPRESS)
    parser.add_argument("--prefix", help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.produce:
        result = asyncio.run(produce(args.bootstrap, args.produce, args.services, args.instances, args.prefix,
                                     args.count, args.seed, signed=not args.unsigned,
                                     health_batch=args.health_batch))
        print(json.dumps(result))
        return 0

    from bench.host_window import HostWindow

    mesh = f"{args.services} services x {args.instances} instances = {args.services * args.instances} sidecar nodes"
    print(f"mesh: {mesh}")
    window = HostWindow()
    f = fold_only(args.services, args.instances, args.events)
    print(f"fold only (in process; {window.describe()}): registrations {f['registrations_per_s']:,.0f}/s; health transitions "
          f"fold_many {f['fold_many_per_s']:,.0f}/s, one by one {f['fold_one_by_one_per_s']:,.0f}/s")
    print(f"render_all: {f['render_all_ms']:.0f} ms for {f['resources']:,} resources / {f['nodes']:,} nodes; "
          f"state_to_bytes {f['state_to_bytes_ms']:.0f} ms ({f['state_bytes']:,} bytes), "
          f"{f['checkpoint_ms']:.1f} ms as a checkpoint after 5,000 transitions (RowMemo)")
    window = HostWindow()
    v = verified_fold(args.services, args.instances, min(args.events, 30_000), args.decode,
                      freeze=not args.no_gc_freeze)
    print(f"signed events (in process, decoded by the {'projector' if args.decode == 'projector' else 'codec'}'s "
          f"decoder; {window.describe()}; {v['events']:,} events from {v['identities']:,} identities; events per CPU-s of "
          f"all threads / per wall-s; producers sign {v['sign_per_s']:,.0f}/s):")
    for key, what in (("unsigned", "decode+fold, unsigned"),
                      ("per_event", "decode+verify+fold, one signature per event"),
                      ("per_event_ahead", "  the same, verify_ahead (a worker process)"),
                      ("mix", "decode+verify+fold, registrations per event + transitions batch-signed (1,000)"),
                      ("mix_ahead", "  the same, verify_ahead (a worker process)")):
        r = v[key]
        print(f"  {what}: {r['per_cpu_s']:,.0f}/CPU-s, {r['per_wall_s']:,.0f}/wall-s ({r['checked']:,} ECDSA checks)"
              + (f"; CPU main thread {r['main_thread_cpu_s']:.2f} s, other threads + verify worker "
                 f"{r['other_threads_cpu_s']:.2f} s, {r['checked_ahead']:,} checks in the worker" if key.endswith("_ahead") else ""))
    if args.skip_live:
        return 0

    with contextlib.ExitStack() as stack:
        bootstrap = os.environ.get("MESHLOG_KAFKA_BOOTSTRAP")
        if not bootstrap:
            from meshlog.kafka_local import LocalKafka

            kafka = stack.enter_context(LocalKafka())
            bootstrap = kafka.bootstrap
            print(f"started a local broker at {bootstrap}")
        window = HostWindow()
        r = asyncio.run(live(bootstrap, args))
    s, b = r["sustained"], r["burst"]
    print(f"sustained: {s['events']:,} events in {s['wall_s']:.2f} s = {s['events_per_s_wall']:,.0f} events/s "
          f"(fold+render+publish+commit; {s['batches']} batches, mean {s['mean_batch']:,.0f} events; "
          f"projector CPU {s['projector_cpu_s']:.2f} s = {s['events_per_cpu_s']:,.0f} events/CPU-s; "
          f"busy {s['busy_fraction']:.0%}; {s['view_records_published']:,} view records published; "
          f"producer offered {s['producer_events_per_s']:,.0f}/s; {'unsigned, not verified' if args.unsigned else 'signed and verified'}"
          f"{'' if args.unsigned else ' (transitions signed ' + ('alone' if args.health_batch <= 1 else f'in batches of {args.health_batch:,}') + ')'}, "
          f"{s['refused']} refused; over both live parts: {window.describe()})")
    print(f"burst: {b['events']:,} events caught up {b['catch_up_s']:.2f} s after the first was appended "
          f"(producer took {b['producer_s']:.2f} s; projector busy {b['processing_s']:.2f} s in {b['batches']} "
          f"batches; {b['view_records_published']:,} view records published)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
