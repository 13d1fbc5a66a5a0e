"""Snapshot records: header + zlib(state), decoded back to the same state."""

from __future__ import annotations

import zlib

import pytest

from events.envelope import Logged
from events import topics
from projector.fold import fold_many
from projector.snapshots import (
    KEY,
    MERGE_ORDER,
    SnapshotError,
    decode_header,
    decode_snapshot,
    encode_snapshot,
    parse_tp_key,
    tp_key,
)
from projector.state import empty_state, state_to_bytes

from .helpers import envelope, registered


def _state():
    events = [
        Logged(envelope(registered("db", f"i{i}", f"n{i}", deps=("api",))), topics.REGISTRATIONS, 0, i, 1000 + i)
        for i in range(5)
    ]
    return fold_many(empty_state(), events)[0]


def test_a_snapshot_round_trips_state_and_header():
    state = _state()
    body = state_to_bytes(state)
    data = encode_snapshot(body, next_offsets={tp_key(topics.REGISTRATIONS, 0): 5, tp_key(topics.RULES, 0): 0},
                           max_timestamp_ms=1004, events=5, dead_lettered=1,
                           fold_order=MERGE_ORDER)
    assert KEY == b"snapshot" and data.startswith(b"MLSNAP\x01")
    header = decode_header(data)
    assert header["next_offsets"] == {"meshlog.registrations/0": 5, "meshlog.rules/0": 0}
    assert header["compression"] == "zlib" and header["state_encoding"] == "projector.state/orjson"
    snap = decode_snapshot(data)
    assert snap.state_bytes == body and snap.state() == state
    assert snap.events == 5 and snap.dead_lettered == 1 and snap.max_timestamp_ms == 1004
    assert snap.next_offset(topics.REGISTRATIONS) == 5 and snap.next_offset(topics.HEALTH) == 0
    assert len(data) < len(body)  # compressed


def test_corrupt_or_foreign_bytes_are_refused():
    data = encode_snapshot(b'{"format": 1}', next_offsets={}, max_timestamp_ms=None, events=0, fold_order=None)
    with pytest.raises(SnapshotError):
        decode_snapshot(b"nope")
    with pytest.raises(SnapshotError):
        decode_snapshot(data[:-3] + b"xyz")
    with pytest.raises(SnapshotError):
        decode_snapshot(b"MLSNAP\x02" + data[7:])
    # a body that decompresses but does not match the header's hash
    head_len = int.from_bytes(data[7:11], "big")
    forged = data[: 11 + head_len] + zlib.compress(b'{"format": 2}')
    with pytest.raises(SnapshotError):
        decode_snapshot(forged)


def test_tp_keys():
    assert parse_tp_key(tp_key("meshlog.a/b", 3)) == ("meshlog.a/b", 3)
