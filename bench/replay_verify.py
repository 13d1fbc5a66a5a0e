"""What verification adds to a cold replay: decode + fold of the same log, unsigned and signed, in process.

The log is ``bench/replay.py``'s history (a mesh of services x instances, then
70 % health transitions, 20 % re-registrations, 3 % deregistrations, 7 %
rules), signed as its producers sign it: each registration and
deregistration alone by its instance's sidecar identity, health transitions
by the checker in batches of 1,000 (``append_batch``: one signature over a
Merkle root, a proof per event), rules alone by an operator; the
certificates' issuance events signed by the root. Each record goes through
replay's own decoder (``events.record_decoder.RecordDecoder``) and ``fold_many`` in
batches of 5,000, as ``replay --at --no-snapshot`` runs them after the fetch
(the fetch is left out: it costs both logs alike, the signed one ~40 % more
bytes).

Figures, per run: CPU seconds of the process (all threads) and wall seconds,
for: unsigned records folded without a verifier; signed records verified in
the fold (one thread); signed records with ``Verifier.verify_ahead`` in a
worker process (the wall figure is what a free second core buys; the CPU
figure is this process's only); signed records attested by the projector:
its attestation records (``projector.attestations``, one per 5,000 events
it folded, signed by its identity) are checked as replay's ``rebuild`` does
(``replay.attestations.vouch_records``, counted: one ECDSA check per record)
and their digests then stand for each listed signature's ECDSA check and
Merkle proof. The folds must agree byte for byte (checked). The log's size
is also given as the event producers send it, zstd-compressed per producer
batch (``compressed_size``).

Usage: python bench/replay_verify.py [--events 200000] [--services 500] [--instances 4]
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _bench_replay():
    """bench/replay.py (its history), loaded by path: its module name is the ``replay`` package's."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_replay", Path(__file__).resolve().parent / "replay.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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
    for j in range(0, len(health), 1000):
        idx = health[j: j + 1000]
        for i, env in zip(idx, checker.sign_batch([envs[i] for i in idx])):
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
             "signed_bytes": sum(len(v) for _t, v in signed_values), "projector": projector}
    stats["unsigned_zstd_bytes"] = compressed_size(envs, unsigned_values, health)
    stats["signed_zstd_bytes"] = compressed_size(envs, signed_values, health)
    return unsigned_values, signed_values, identities, (ca, stats)


def compressed_size(envs, values, health) -> int:
    """The log's bytes as ``events.producer`` sends them with zstd (aiokafka's own codec): each event alone
    (linger 0), except the health transitions, appended 1,000 at a time (``append_batch``): per partition
    of their key, in producer batches of up to 16 KiB (aiokafka's default ``max_batch_size``)."""
    import zlib

    from aiokafka.codec import zstd_encode

    from events.producer import LOG_COMPRESSION
    from events.topics import EVENT_PARTITIONS

    assert LOG_COMPRESSION == "zstd"
    in_batches = set(health)
    total = sum(len(zstd_encode(values[i][1])) for i in range(len(values)) if i not in in_batches)
    for j in range(0, len(health), 1000):
        partitions: dict[int, list[bytes]] = {}
        for i in health[j: j + 1000]:
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


def run(values, verifier, pool, attestations=()) -> tuple[float, float, bytes]:
    from events.record_decoder import RecordDecoder
    from replay.engine import no_gc
    from tests.unit.events.test_record_decoder import Rec

    records = [Rec(v, topic, 0, i, BASE_MS + i) for i, (topic, v) in enumerate(values)]
    decoder = RecordDecoder()
    with no_gc():  # as rebuild folds: the cyclic GC off while millions of long-lived objects are built
        return _run(records, decoder, verifier, pool, attestations)


def _run(records, decoder, verifier, pool, attestations) -> tuple[float, float, bytes]:
    from projector.fold import fold_many
    from projector.state import empty_state, state_to_bytes

    t0, c0 = time.perf_counter(), time.process_time()
    if attestations:  # as replay's rebuild takes them: each record's signature checked once, then its digests
        from replay.attestations import vouch_records

        vouched = vouch_records(verifier, attestations)
        assert vouched.refused == 0, vouched.why
        decoder.attested = verifier.attested()  # as rebuild decodes: the attested records without their signatures
    state, refused = empty_state(), []
    for i in range(0, len(records), 5000):
        batch = [decoder(r) for r in records[i: i + 5000]]
        if pool is not None:
            verifier.verify_ahead(batch, pool)
        state, decisions = fold_many(state, batch, verifier)
        refused += [d for d in decisions if getattr(d, "problem", None) and d.TYPE == "event.refused"]
    assert not refused, refused[:3]  # every producer states only what it may: nothing refused
    return time.process_time() - c0, time.perf_counter() - t0, state_to_bytes(state)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--services", type=int, default=500)
    ap.add_argument("--instances", type=int, default=4)
    ap.add_argument("--no-ahead", action="store_true",
                    help="skip the verify_ahead run (the longest at 1,000,000 events, and it needs the second core)")
    args = ap.parse_args()
    import os

    from identity.verifier import Verifier, verification_pool

    unsigned, signed, identities, (ca, stats) = build(args)
    print(f"log: {args.events:,} events ({stats['singles']:,} signed alone, {stats['batch_signed']:,} batch-signed "
          f"by 1,000; {stats['identities']:,} identities; signing took {stats['sign_cpu_s']:.1f} CPU-s); "
          f"{stats['unsigned_bytes'] / 1e6:,.0f} MB unsigned, {stats['signed_bytes'] / 1e6:,.0f} MB signed; with the "
          f"producers' zstd {stats['unsigned_zstd_bytes'] / 1e6:,.1f} MB unsigned, {stats['signed_zstd_bytes'] / 1e6:,.1f} "
          f"MB signed; "
          f"load average {os.getloadavg()[0]:.1f}", flush=True)

    def verifier() -> Verifier:
        v = Verifier(roots=[ca.certificate])
        v.update(identities)
        assert v.identities_refused == 0
        return v

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

    projector = stats["projector"]
    # the projector's attestation records: one per batch it folded (5,000 events here), signed by it
    from projector.attestations import KEY, encode_attestation
    from tests.unit.events.test_record_decoder import Rec

    per = 5000 * len(vouches) // max(1, args.events)
    attestations = [Rec(encode_attestation(vouches[i: i + per], projector), topics.ATTESTATIONS, 0, n, BASE_MS + args.events)
                    for n, i in enumerate(range(0, len(vouches), per))]
    print(f"attestations: {len(attestations):,} records, {sum(len(r.value) for r in attestations) / 1e6:.1f} MB",
          flush=True)
    v = verifier()
    cpu, wall, body = run(signed, v, None, attestations)
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
