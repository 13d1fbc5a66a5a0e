"""What verification adds to a cold replay: decode + fold of the same log, unsigned and signed, in process.

The log is ``bench/replay.py``'s history (a mesh of services x instances, then
70 % health transitions, 20 % re-registrations, 3 % deregistrations, 7 %
rules), signed as its producers sign it: each registration and
deregistration alone by its instance's sidecar identity, health transitions
by the checker alone (``--health-batch 1``, the default: ``registrar
healthcheck`` signs a transition alone unless others were decided while its
previous append was in flight) or ``N`` at a time (a burst: ``append_batch``,
one signature over a Merkle root, a proof per event), rules alone by an
operator; the
certificates' issuance events signed by the root. Each record goes through
replay's own decoder (``events.record_decoder.RecordDecoder``) and a
``projector.fold.FoldBuffer`` in batches of 5,000, as ``replay --at
--no-snapshot``'s rebuild runs them after the fetch (the fetch is left out
here: the signed log is 1.5 times the bytes with transitions signed alone,
2.6 times in batches of 1,000, so ``--cli`` is the figure that counts).

Figures, per run: CPU seconds of the process (all threads) and wall seconds,
for: unsigned records folded without a verifier; signed records verified in
the fold (one thread); signed records with ``Verifier.verify_ahead`` in a
worker process (the wall figure is what a free second core buys; the CPU
figure is this process's only); signed records attested by the projector:
its attestation records (``projector.attestations``, one per 5,000 events
it folded in merge order, naming the runs of each partition's records in
that batch, signed by its identity: ``attestation_values``) are checked as
replay's ``rebuild`` does (``replay.attestations.vouch_records``, counted:
one ECDSA check per record), each run is matched against the records'
bytes as replay's read does (``replay.attested_runs``), and a matched run
then stands for each of its signatures' ECDSA check and Merkle proof. The
folds must agree byte for byte (checked). The log's size
is also given as the event producers send it, zstd-compressed per producer
batch (``compressed_size``).

``--cli``: the same two logs through the real ``replay`` CLI instead, each
on a fresh local broker (bench/replay.py's, or $MESHLOG_KAFKA_BOOTSTRAP),
fetch included: the unsigned log replayed with ``--insecure-events``; the
signed one with its identities and the projector's attestations on their
topics (made from the records as the broker logged them: read back, in
merge order, in batches of 5,000), replayed verifying (the default). ``replay --at T --no-snapshot
--json``, in one process (MESHLOG_REPLAY_PARALLEL=0, so its CPU is all in
the figure; ``--parallel 1``: with replay's second reading process),
``--repeat`` runs each, alternating, of: the unsigned log, the signed log
unverified (``--insecure-events``: the same records, what verification
itself adds) and the signed log verified; wall, CPU and peak RSS of the
replay process; the two outputs must name the same nodes and versions. On a
plaintext broker no mesh root is configured (``configured_roots``), so the
identities topic is trusted as it is: the in-process figures (verified
against the root) are the stricter ones for the certificate work.

Usage: python bench/replay_verify.py [--events 200000] [--services 500] [--instances 4] [--health-batch 1] [--no-ahead]
       python bench/replay_verify.py --cli [--repeat 2] [--events 1000000] [--baseline TREE]
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _bench_replay():
    """bench/replay.py (its history), loaded by path: its module name is the ``replay`` package's."""
    from tests.support.benches import bench_module

    return bench_module("replay", registered_as="bench_replay")


def build(args) -> tuple[list, list, list, object]:
    from events import types as t
    from events.codec import encode
    from events.envelope import Envelope, Logged, new_event
    from events.signing import Signer
    from identity import pki, records, spiffe

    domain = "mesh.local"
    now = datetime.now(timezone.utc)
    ca = pki.create_root(domain, now=now - timedelta(days=1))
    root = records.authority_signer(ca)
    identities, signers = [], {}

    def signer_for(ident) -> Signer:
        if ident.uri not in signers:
            key = pki.generate_key()
            cert = pki.issue(ca, ident, key.public_key(), now=now - timedelta(hours=1))
            signers[ident.uri] = Signer(key, pki.serial_hex(cert))
            env = root.sign(new_event(records.issued(cert, ca.certificate, how="offline", requested_by="bench")))
            identities.append(Logged(env, t.IdentityIssued.TOPIC, 0, len(identities), 1))
        return signers[ident.uri]

    bench_replay = _bench_replay()
    history, _KEY = bench_replay.History(args.services, args.instances, "rv"), bench_replay._KEY
    envs = []
    for n in range(args.events):
        typ, doc = history.take()
        payload = _KEY[typ].model_validate(doc)
        envs.append(Envelope(f"rv-{n}", payload.TYPE, payload.SCHEMA_VERSION, now, "bench", payload))
    checker = signer_for(spiffe.checker(domain, "c1"))
    operator = signer_for(spiffe.operator(domain, "ops"))
    projector = signer_for(spiffe.projector(domain))  # signs the attestations
    signed: list = [None] * len(envs)
    health = [i for i, env in enumerate(envs) if isinstance(env.payload, t.InstanceHealthChanged)]
    t0 = time.process_time()
    step = args.health_batch
    for j in range(0, len(health), step):
        idx = health[j: j + step]
        batch = [envs[i] for i in idx]
        for i, env in zip(idx, checker.sign_batch(batch) if step > 1 else [checker.sign(batch[0])]):
            signed[i] = env
    singles = 0
    for i, env in enumerate(envs):
        if signed[i] is not None:
            continue
        p = env.payload
        if isinstance(p, (t.InstanceRegistered, t.InstanceDeregistered)):
            signed[i] = signer_for(spiffe.sidecar(domain, p.service, p.instance_id)).sign(env)
        else:
            signed[i] = operator.sign(env)
        singles += 1
    sign_cpu = time.process_time() - t0
    unsigned_values = [(env.payload.TOPIC, encode(env)) for env in envs]
    signed_values = [(env.payload.TOPIC, encode(env)) for env in signed]
    stats = {"singles": singles, "batch_signed": len(health), "identities": len(signers), "sign_cpu_s": sign_cpu,
             "unsigned_bytes": sum(len(v) for _t, v in unsigned_values),
             "signed_bytes": sum(len(v) for _t, v in signed_values), "projector": projector,
             "keys": [env.payload.key().encode() for env in envs]}  # as the producers key them (both logs)
    stats["unsigned_zstd_bytes"] = compressed_size(envs, unsigned_values, health, step)
    stats["signed_zstd_bytes"] = compressed_size(envs, signed_values, health, step)
    return unsigned_values, signed_values, identities, (ca, stats)


def compressed_size(envs, values, health, step: int) -> int:
    """The log's bytes as ``events.producer`` sends them with zstd (aiokafka's own codec): each event alone
    (linger 0; estimated from an even sample when there are more than 20,000), except the health transitions
    when they are signed ``step`` at a time (``append_batch``): per partition of their key, in producer batches
    of up to 16 KiB (aiokafka's default ``max_batch_size``)."""
    import zlib

    from aiokafka.codec import zstd_encode

    from events.producer import LOG_COMPRESSION
    from events.topics import EVENT_PARTITIONS

    assert LOG_COMPRESSION == "zstd"
    in_batches = set(health) if step > 1 else set()
    alone = [i for i in range(len(values)) if i not in in_batches]
    # each compressed alone: at most 20,000 of them, evenly spaced, scaled up (compressing a million records one
    # by one grew this process by gigabytes: cramjam's compressor does not give its memory back at once)
    sample = alone[:: max(1, len(alone) // 20_000)]
    total = sum(len(zstd_encode(values[i][1])) for i in sample) * len(alone) // max(1, len(sample))
    for j in range(0, len(health) if step > 1 else 0, step):
        partitions: dict[int, list[bytes]] = {}
        for i in health[j: j + step]:
            partitions.setdefault(zlib.crc32(envs[i].payload.key().encode()) % EVENT_PARTITIONS, []).append(values[i][1])
        for records in partitions.values():
            batch, size = [], 0
            for value in records:
                if batch and size + len(value) > 16384:
                    total += len(zstd_encode(b"".join(batch)))
                    batch, size = [], 0
                batch.append(value)
                size += len(value)
            if batch:
                total += len(zstd_encode(b"".join(batch)))
    return total


BASE_MS = int(time.time() * 1000)  # the records' broker time: one for every run (the state keeps it)


def attestation_values(records, signer, good=lambda record: True, per: int = 5000) -> list[bytes]:
    """The attestation records a projector folding ``records`` (in merge order) in batches of ``per`` appends: the
    runs of each batch's records found ``good`` (``projector.attestations.runs_of``), signed by ``signer``."""
    from projector.attestations import MAX_RUNS, encode_attestation, runs_of

    values = []
    for i in range(0, len(records), per):
        runs = runs_of((r.topic, r.partition, r.offset, r.value, good(r)) for r in records[i: i + per])
        values += [encode_attestation(runs[j: j + MAX_RUNS], signer) for j in range(0, len(runs), MAX_RUNS)]
    return values


def run(values, verifier, pool, attestations=()) -> tuple[float, float, bytes]:
    from events.record_decoder import RecordDecoder
    from replay.engine import no_gc
    from tests.unit.events.test_record_decoder import Rec

    records = [Rec(v, topic, 0, i, BASE_MS + i) for i, (topic, v) in enumerate(values)]
    decoder = RecordDecoder()
    with no_gc():  # as rebuild folds: the cyclic GC off while millions of long-lived objects are built
        return _run(records, decoder, verifier, pool, attestations)


def _run(records, decoder, verifier, pool, attestations) -> tuple[float, float, bytes]:
    from projector.fold import FoldBuffer
    from projector.state import empty_state, state_to_bytes

    t0, c0 = time.perf_counter(), time.process_time()
    if attestations:  # as replay's rebuild takes them: each record's signature checked once, then its runs
        from replay.attestations import vouch_records

        vouched = vouch_records(verifier, attestations)
        assert vouched.refused == 0, vouched.why
        # as replay's read matches them (``iter_cut``), a partition at a time here: the log is in memory
        screen = vouched.attested().screen()
        by_partition: dict = {}
        for r in records:
            by_partition.setdefault((r.topic, r.partition), []).append(r)
        for (topic, partition), found in by_partition.items():
            held = screen.offer(topic, partition, found) + screen.finish(topic, partition)
            assert len(held) == len(found)
        assert screen.mismatched == 0, screen.as_dict()
        decoder.attested = screen  # as rebuild decodes: the records of matched runs without their signatures
    buffer, refused = FoldBuffer(empty_state()), []  # as rebuild folds a long cut
    for i in range(0, len(records), 5000):
        batch = [decoder(r) for r in records[i: i + 5000]]
        if pool is not None:
            verifier.verify_ahead(batch, pool)
        decisions = buffer.fold(batch, verifier)
        refused += [d for d in decisions if getattr(d, "problem", None) and d.TYPE == "event.refused"]
    assert not refused, refused[:3]  # every producer states only what it may: nothing refused
    state = buffer.state()
    return time.process_time() - c0, time.perf_counter() - t0, state_to_bytes(state)


async def _append(bootstrap: str, records: list[tuple[str, bytes | None, bytes]]) -> None:
    """Append (topic, key, value) in this order (batched, acks=1: the bench log, not the producers' path; but
    compressed as they compress, so replay decompresses what it would)."""
    import asyncio

    from aiokafka import AIOKafkaProducer

    from events.kafka_security import connection_kwargs
    from events.producer import LOG_COMPRESSION

    producer = AIOKafkaProducer(**connection_kwargs(bootstrap), acks=1, linger_ms=50, max_batch_size=1 << 20,
                                max_request_size=16 << 20, compression_type=LOG_COMPRESSION)
    await producer.start()
    try:
        pending = []
        for topic, key, value in records:
            pending.append(await producer.send(topic, value=value, key=key))
            if len(pending) >= 20_000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
        await producer.flush()
    finally:
        await producer.stop()


def cli(args, unsigned, signed, identities, stats) -> None:
    """Both logs through the ``replay`` CLI, each on its own fresh broker (see the module docstring)."""
    import asyncio
    import os

    from events import topics
    from events.admin import ensure_topics
    from events.codec import encode
    from projector.attestations import KEY as ATTESTATION_KEY

    from bench.host_window import HostWindow

    bench_replay = _bench_replay()
    # "0": one process, its CPU is the whole figure; "1": fetch and decode in a second process (replay.pipeline),
    # what a cold replay does by default on a host with a free core (the CPU figure then counts both processes)
    os.environ["MESHLOG_REPLAY_PARALLEL"] = args.parallel
    keys = stats["keys"]
    logs = {
        "unsigned, --insecure-events": ([(topic, keys[i], v) for i, (topic, v) in enumerate(unsigned)],
                                        ["--insecure-events"]),
        # in two appends, each acknowledged before the next: an event logged before its signer's issuance is
        # refused (unknown_signer); the attestations follow, made from the log as the broker wrote it
        "signed, verified, attested": (
            [(topics.IDENTITIES, lg.envelope.payload.key().encode(), encode(lg.envelope)) for lg in identities],
            [(topic, keys[i], v) for i, (topic, v) in enumerate(signed)],
            []),
    }
    # what is timed: each log replayed as it must be, and the signed log also unverified (what verification
    # itself adds, on the same records)
    runs = [("unsigned log, --insecure-events", "unsigned, --insecure-events", ["--insecure-events"]),
            ("signed log, --insecure-events", "signed, verified, attested", ["--insecure-events"]),
            ("signed log, verified (attested)", "signed, verified, attested", [])]
    # with --baseline: each replay also from that source tree, right after the same replay of this one
    # (this tree then starts the same way too, from its source: the two differ only in their code)
    here = str(Path(__file__).resolve().parents[1]) if args.baseline else None
    codes = [(here, "")] + ([(args.baseline, " [baseline]")] if args.baseline else [])
    figures: dict[str, list[tuple[float, float, float]]] = {label + suffix: [] for label, _log, _flags in runs
                                                            for _code, suffix in codes}
    outputs: dict[str, dict] = {}
    with contextlib.ExitStack() as stack:
        brokers = {}
        for name, (*parts, _flags) in logs.items():
            bootstrap = stack.enter_context(bench_replay.broker())
            asyncio.run(ensure_topics(bootstrap))
            time.sleep(1)  # the new topics' leaders elected (else the first sends retry, noisily)
            t0 = time.perf_counter()
            for records in parts:
                asyncio.run(_append(bootstrap, records))
                time.sleep(0.05)
            appended = sum(map(len, parts))
            if name == "signed, verified, attested":  # what the projector, folding this log, would attest
                logged = asyncio.run(_read_back(bootstrap))
                values = attestation_values(logged, stats["projector"])
                asyncio.run(_append(bootstrap, [(topics.ATTESTATIONS, ATTESTATION_KEY, v) for v in values]))
                appended += len(values)
                print(f"attestations: {len(values):,} records naming {len(logged):,} records, "
                      f"{sum(map(len, values)) / 1e6:.1f} MB", flush=True)
            brokers[name] = (bootstrap, f"@{int(time.time() * 1000)}")
            print(f"{name}: {appended:,} records appended in {time.perf_counter() - t0:.0f} s "
                  f"({bootstrap})", flush=True)
        logs.clear()
        for repeat in range(args.repeat):
            for label, log_name, flags in runs:
                bootstrap, at = brokers[log_name]
                for code, suffix in (codes if repeat % 2 == 0 else codes[::-1]):  # each tree first in turn
                    window = HostWindow()
                    wall, cpu, rss, doc = bench_replay.run_cli(bootstrap, "--at", at, "--no-snapshot", "--json",
                                                               "--no-progress", *flags, code=code)
                    figures[label + suffix].append((wall, cpu, rss))
                    outputs[label + suffix] = doc
                    print(f"  {label + suffix:<44} {wall:6.2f} s wall  {cpu:6.2f} CPU-s  ({window.describe()})",
                          flush=True)
        vouched = asyncio.run(_vouched(brokers["signed, verified, attested"][0]))
        if args.hold:
            _hold(brokers)
    # every node is told the same resources at the same versions verified as unverified: verification refused
    # nothing the producers signed. (The unsigned log is another log: the broker's append times interleave its
    # topics differently, so its views are not compared.)
    # With --baseline, the baseline's replays must tell every node the same too.
    for _code, suffix in codes:
        views = [[(n["node"], n["resources"]) for n in outputs[label + suffix]["nodes"]]
                 for label, _log, _flags in runs[1:]]
        if views[0] != views[1]:
            diff = [(x, y) for x, y in zip(*views) if x != y]
            raise SystemExit(f"verification changed {len(diff)} of {len(views[1])} nodes' views{suffix}; "
                             f"first: {diff[:1]}")
    best = {label: (min(w for w, _c, _r in f), min(c for _w, c, _r in f)) for label, f in figures.items()}
    print(f"best of {args.repeat}, wall and CPU-s: " + "; ".join(f"{k} {w:.2f} s, {c:.2f} CPU-s" for k, (w, c)
                                                                 in best.items()))
    for _code, suffix in codes:
        unsigned_best, unverified_best, verified_best = (best[label + suffix] for label, _log, _flags in runs)
        print(f"verified signed log over the unsigned log{suffix}: wall {verified_best[0] / unsigned_best[0] - 1:+.1%}, "
              f"CPU {verified_best[1] / unsigned_best[1] - 1:+.1%}; over the same signed log unverified: wall "
              f"{verified_best[0] / unverified_best[0] - 1:+.1%}, CPU {verified_best[1] / unverified_best[1] - 1:+.1%}",
              flush=True)
    print(f"{len(views[0]):,} nodes told the same verified as unverified; the attestations on the log vouch for "
          f"{vouched['records']:,} records in {vouched['runs']:,} runs ({vouched['refused']} refused)", flush=True)


def _hold(brokers: dict[str, tuple[str, str]]) -> None:
    """``--hold``: keep the brokers and their logs until interrupted, saying how to replay each by hand."""
    for name, (bootstrap, at) in brokers.items():
        print(f"holding {name}: replay --bootstrap {bootstrap} --at {at} --no-snapshot", flush=True)
    print("holding the brokers until interrupted (Ctrl-C, SIGINT or SIGTERM)", flush=True)
    import signal

    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("stopping the brokers", flush=True)


async def _read_back(bootstrap: str) -> list:
    """Every record of the event topics as the broker logged them, in merge order (as the projector folds)."""
    from events import topics
    from replay.engine import open_log
    from replay.source import plan_cut

    async with open_log(bootstrap) as consumer:
        cut = await plan_cut(consumer, int(time.time() * 1000) + 60_000)
        consumer.assign(list(cut.stop))
        records = []
        for tp, stop in cut.stop.items():
            consumer.seek(tp, cut.start[tp])
            while await consumer.position(tp) < stop:
                records += (await consumer.getmany(tp, timeout_ms=1000, max_records=50_000)).get(tp, [])
    order = topics.merge_order
    return sorted(records, key=lambda r: order(r.timestamp, r.topic, r.partition, r.offset))


async def _vouched(bootstrap: str) -> dict:
    """What replay's rebuild takes from the attestations topic of this log (``replay.attestations``)."""
    from replay.attestations import vouch_attested
    from replay.engine import open_log
    from replay.identities import load_verifier

    async with open_log(bootstrap) as consumer:
        verifier = await load_verifier(consumer, int(time.time() * 1000))
        return (await vouch_attested(consumer, verifier, 0, None)).as_dict()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--services", type=int, default=500)
    ap.add_argument("--instances", type=int, default=4)
    ap.add_argument("--health-batch", type=int, default=1, metavar="N",
                    help="health transitions signed N at a time (default 1: each alone, as `registrar healthcheck` "
                         "signs a lone transition; 1000: a burst signed as one batch, each event with its proof)")
    ap.add_argument("--no-ahead", action="store_true",
                    help="skip the verify_ahead run (the longest at 1,000,000 events, and it needs the second core)")
    ap.add_argument("--cli", action="store_true", help="measure through the replay CLI, fetch included (see above)")
    ap.add_argument("--repeat", type=int, default=2, help="with --cli: runs of each replay (default 2)")
    ap.add_argument("--baseline", metavar="TREE",
                    help="with --cli: also run each replay from this source tree (e.g. an older commit's `git archive`), "
                         "right after the same replay of this one, on the same logs: before/after figures")
    ap.add_argument("--hold", action="store_true",
                    help="with --cli: after the figures, keep the brokers and their logs running until interrupted "
                         "(SIGINT/SIGTERM), printing each log's bootstrap and cut, to measure them further by hand")
    ap.add_argument("--parallel", choices=("0", "1"), default="0",
                    help="with --cli: MESHLOG_REPLAY_PARALLEL for the replays (default 0: one process)")
    args = ap.parse_args()
    import os

    from identity.verifier import Verifier, verification_pool

    unsigned, signed, identities, (ca, stats) = build(args)
    how = f"in batches of {args.health_batch:,}" if args.health_batch > 1 else "alone"
    print(f"log: {args.events:,} events ({stats['singles']:,} signed alone, {stats['batch_signed']:,} health "
          f"transitions signed {how}; {stats['identities']:,} identities; signing took {stats['sign_cpu_s']:.1f} CPU-s); "
          f"{stats['unsigned_bytes'] / 1e6:,.0f} MB unsigned, {stats['signed_bytes'] / 1e6:,.0f} MB signed; with the "
          f"producers' zstd {stats['unsigned_zstd_bytes'] / 1e6:,.1f} MB unsigned, {stats['signed_zstd_bytes'] / 1e6:,.1f} "
          f"MB signed; "
          f"load average {os.getloadavg()[0]:.1f}", flush=True)

    def verifier() -> Verifier:
        v = Verifier(roots=[ca.certificate])
        v.update(identities)
        assert v.identities_refused == 0
        return v

    if args.cli:  # the attestations are made from the log the broker wrote (``cli``): nothing to verify here
        cli(args, unsigned, signed, identities, stats)
        return 0
    results = {}
    folds: dict[str, bytes] = {}
    cpu, wall, body = run(unsigned, None, None)
    results["unsigned, no verifier"] = (cpu, wall, 0)
    folds["unsigned"] = body
    v = verifier()
    v.record_vouches = vouches = []  # what the live projector, verifying the same records, could attest
    cpu, wall, body = run(signed, v, None)
    results["signed, verified in the fold"] = (cpu, wall, v.checked)
    folds["inline"] = body
    from events import topics

    # the projector's attestation records: one per batch it folded (5,000 events here), naming the runs of the
    # records it found well signed (those the verifier above found so), signed by it
    from events.envelope import received_digest_of
    from tests.unit.events.test_record_decoder import Rec

    good = set(vouches)
    logged = [Rec(v, topic, 0, i, BASE_MS + i) for i, (topic, v) in enumerate(signed)]  # as ``run`` logs them
    attested = [Rec(value, topics.ATTESTATIONS, 0, n, BASE_MS + args.events) for n, value in
                enumerate(attestation_values(logged, stats["projector"], lambda r: received_digest_of(r.value) in good))]
    print(f"attestations: {len(attested):,} records, {sum(len(r.value) for r in attested) / 1e6:.1f} MB",
          flush=True)
    v = verifier()
    cpu, wall, body = run(signed, v, None, attested)
    results["signed, attested by the projector"] = (cpu, wall, v.checked)
    folds["attested"] = body
    assert v.vouched_hits == len(vouches), (v.vouched_hits, len(vouches))
    if not args.no_ahead:
        pool = verification_pool(1)
        try:
            v = verifier()
            cpu, wall, body = run(signed, v, pool)
            results["signed, verify_ahead (worker process)"] = (cpu, wall, v.checked)
            folds["ahead"] = body
        finally:
            pool.shutdown()
    # honest producers' signed log folds to the unsigned log's state; verifying ahead changes no answer
    assert len(set(folds.values())) == 1, "the folds disagree"
    base_cpu, base_wall, _ = results["unsigned, no verifier"]
    for name, (cpu, wall, checked) in results.items():
        print(f"  {name:<40} {cpu:7.2f} CPU-s ({cpu / base_cpu - 1:+6.1%})  {wall:7.2f} s wall "
              f"({wall / base_wall - 1:+6.1%})  {args.events / cpu:,.0f} events/CPU-s  ({checked:,} ECDSA checks)")
    print(f"load average {os.getloadavg()[0]:.1f} after", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
