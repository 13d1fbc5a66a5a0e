"""Signed snapshots: the projector signs each snapshot's header; replay uses only what a projector signed.

A forged snapshot (unsigned, signed by another identity, or altered after
signing) is skipped with a warning and replay falls back to an older snapshot
or to the start of the log; the mesh it rebuilds is the same either way.
"""

from __future__ import annotations

import asyncio
import logging
import random
from datetime import datetime, timedelta, timezone

import orjson
from aiokafka import TopicPartition

from events import topics
from events.signing import Signer
from identity import pki, records, spiffe
from identity.registry import EMPTY, fold_many as fold_identities
from identity.verifier import Verifier
from events.envelope import Logged, new_event
from projector.framing import HEADER_LEN as _LEN
from projector.snapshots import MAGIC, MERGE_ORDER, decode_header, encode_snapshot
from projector.state import empty_state, state_to_bytes
from replay.engine import rebuild
from replay.snapshots import find_snapshot, snapshot_refusal
from tests.unit.replay.fake_consumer import FakeConsumer, Rec
from tests.unit.replay.test_snapshots import REG_KEY, SNAP, T, event_log, mesh_log, snapshot_of

ISSUED_AT = datetime.fromtimestamp((T - 3_600_000) / 1000, timezone.utc)  # valid from an hour before T
CA = pki.create_root("mesh.local", now=ISSUED_AT - timedelta(days=1))


def identity(ident: spiffe.SpiffeId) -> tuple[Signer, Logged]:
    key = pki.generate_key()
    cert = pki.issue(CA, ident, key.public_key(), now=ISSUED_AT)
    issued = records.issued(cert, CA.certificate, how="offline", requested_by="test")
    return Signer(key, pki.serial_hex(cert)), Logged(new_event(issued), topics.IDENTITIES, 0, 0, T - 60_000)


PROJECTOR, PROJECTOR_ISSUED = identity(spiffe.projector("mesh.local"))
SIDECAR, SIDECAR_ISSUED = identity(spiffe.sidecar("mesh.local", "web", "w1"))
VERIFIER = Verifier(fold_identities(EMPTY, [PROJECTOR_ISSUED, SIDECAR_ISSUED]), [CA.certificate])


def snapshot(signer=None, **header_changes) -> bytes:
    value = encode_snapshot(state_to_bytes(empty_state()), next_offsets={REG_KEY: 0}, max_timestamp_ms=T, events=0,
                            fold_order=MERGE_ORDER, signer=signer)
    if not header_changes:
        return value
    header = {**decode_header(value), **header_changes}
    head = orjson.dumps(header, option=orjson.OPT_SORT_KEYS)
    (old_len,) = _LEN.unpack_from(value, len(MAGIC) + 1)
    return value[: len(MAGIC) + 1] + _LEN.pack(len(head)) + head + value[len(MAGIC) + 1 + _LEN.size + old_len:]


def test_a_snapshot_signed_by_the_projector_is_accepted():
    header = decode_header(snapshot(PROJECTOR))
    assert header["signer"] == PROJECTOR.serial
    assert snapshot_refusal(VERIFIER, header, T) is None


def test_unsigned_foreign_and_altered_snapshots_are_refused():
    assert snapshot_refusal(VERIFIER, decode_header(snapshot()), T) == "it is not signed"
    assert snapshot_refusal(VERIFIER, decode_header(snapshot(SIDECAR)), T) == \
        "it is signed by spiffe://mesh.local/sidecar/web/w1, not by a projector"
    altered = decode_header(snapshot(PROJECTOR, max_timestamp_ms=T - 1))  # claims to cover less than it does
    assert snapshot_refusal(VERIFIER, altered, T).startswith("bad_signature: the signature does not verify")
    swapped_body = decode_header(snapshot(PROJECTOR, state_sha256="0" * 64))
    assert snapshot_refusal(VERIFIER, swapped_body, T).startswith("bad_signature")
    assert snapshot_refusal(VERIFIER, decode_header(snapshot(PROJECTOR)), T - 120_000).startswith("unknown_signer")


def _signed_mesh_log(best_signer) -> dict[TopicPartition, list[Rec]]:
    """Snapshots at 3 events (signed by the projector) and at exactly T (signed by ``best_signer``)."""
    logs = mesh_log(T)
    events = event_log()

    def signed_snapshot(count: int, offset: int, appended_ms: int, signer) -> Rec:
        rec = snapshot_of(events, count, offset, appended_ms)
        from projector.snapshots import decode_snapshot

        snap = decode_snapshot(rec.value)
        value = encode_snapshot(zlib_state(snap), next_offsets={REG_KEY: count},
                                max_timestamp_ms=events[count - 1].timestamp, events=count,
                                fold_order=MERGE_ORDER, signer=signer)
        return Rec(SNAP.topic, 0, offset, appended_ms, value, b"snapshot")

    logs[SNAP] = [signed_snapshot(3, 0, T - 2, PROJECTOR), signed_snapshot(6, 1, T, best_signer)]
    return logs


def zlib_state(snap) -> bytes:
    return state_to_bytes(snap.state())


def test_replay_skips_a_forged_snapshot_and_falls_back_to_an_older_one(caplog):
    honest = asyncio.run(find_snapshot(FakeConsumer(_signed_mesh_log(PROJECTOR), random.Random(1)), T,
                                       {REG_KEY: 6}, verifier=VERIFIER))
    assert honest.offset == 1
    with caplog.at_level(logging.WARNING, logger="replay.snapshots"):
        fallback = asyncio.run(find_snapshot(FakeConsumer(_signed_mesh_log(SIDECAR), random.Random(1)), T,
                                             {REG_KEY: 6}, verifier=VERIFIER))
    assert fallback.offset == 0  # the older, honest one
    assert "snapshot at offset 1 skipped: it is signed by spiffe://mesh.local/sidecar/web/w1" in caplog.text
    # without verification (--insecure-events) the newest is used, as before signing
    insecure = asyncio.run(find_snapshot(FakeConsumer(_signed_mesh_log(SIDECAR), random.Random(1)), T, {REG_KEY: 6}))
    assert insecure.offset == 1


def test_the_mesh_rebuilt_past_a_forged_snapshot_is_the_mesh_of_the_log():
    logs = _signed_mesh_log(None)  # the newest snapshot is unsigned
    logs[SNAP][0] = Rec(SNAP.topic, 0, 0, T - 2, snapshot(SIDECAR), b"snapshot")  # and the older one is foreign
    rebuilt = asyncio.run(rebuild(FakeConsumer(logs, random.Random(4)), T, verifier=None, use_snapshot=False))
    checked = asyncio.run(rebuild(FakeConsumer(logs, random.Random(4)), T, verifier=_insecure_folding_verifier()))
    assert checked.snapshot is None and checked.state == rebuilt.state  # folded from the start


def _insecure_folding_verifier():
    """A verifier whose event verdicts always pass (the log's events here are unsigned test events), so only
    the snapshot choice differs: it still refuses the snapshots."""
    class Lenient(Verifier):
        def verdict(self, env, logged_ms):
            from identity.verifier import Verdict

            return Verdict(spiffe.operator("mesh.local", "t"), None)

    return Lenient(VERIFIER.registry, [CA.certificate])
