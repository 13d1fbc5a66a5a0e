"""replay.pipeline's transport: events cross from the reading process to the folding one unchanged.

The real two-process read over a broker is compared with the in-process read in
tests/integration/test_replay_pipeline.py; here the transport alone, over pickling as it is sent.
"""

from __future__ import annotations

import dataclasses
import pickle
from datetime import datetime, timedelta, timezone

import pytest

from events.codec import encode
from events.envelope import Logged, new_event
from replay import pipeline
from events.record_decoder import RecordDecoder
from replay.pipeline import RowReader, RowWriter
from tests.unit.projector.helpers import OCCURRED
from tests.unit.projector.signed import Trust, sidecar
from tests.unit.replay.history import RandomHistory
from tests.unit.events.test_record_decoder import Rec


def _log(n: int = 400) -> list[Logged]:
    """Decoded events as replay reads them: unsigned, signed one by one and batch-signed, payloads repeating."""
    trust = Trust()
    signer = trust.issue(sidecar("web", "1"))
    payloads = RandomHistory("pipe", 3).payloads(n)
    envs = [new_event(p, producer=f"p{i % 3}", occurred_at=OCCURRED + timedelta(microseconds=7 * i))
            for i, p in enumerate(payloads)]
    envs = envs[:150] + [signer.sign(e) for e in envs[150:250]] + signer.sign_batch(envs[250:])
    decode = RecordDecoder()
    out = []
    for i, env in enumerate(envs * 2):  # twice: the second time every payload comes from the decoder's memo
        rec = Rec(encode(env), env.topic)
        rec.offset, rec.timestamp = i, 1_700_000_000_000 + i
        out.append(decode(rec))
    return out


def _exactly(lg: Logged):
    """Everything a Logged holds, including what equality leaves out (``signed_bytes``)."""
    return (lg, lg.envelope.signed_bytes, lg.envelope.occurred_at.tzinfo)


def _carry(events: list[Logged], flat: bool, batch: int = 37) -> list[Logged]:
    writer, reader = RowWriter(flat), RowReader(flat)
    out: list[Logged] = []
    for i in range(0, len(events), batch):
        message = pickle.loads(pickle.dumps(writer.rows(events[i : i + batch]), pickle.HIGHEST_PROTOCOL))
        out += reader.events(*message)
    return out


@pytest.mark.parametrize("flat", [True, False])
def test_events_arrive_equal_signatures_and_signed_bytes_included(flat):
    events = _log()
    assert any(lg.envelope.proof for lg in events) and any(lg.envelope.signature for lg in events)
    got = _carry(events, flat)
    assert [_exactly(lg) for lg in got] == [_exactly(lg) for lg in events]


def test_each_payload_crosses_once_and_is_shared_again_on_arrival():
    events = _log()
    writer, reader = RowWriter(), RowReader()
    first = writer.rows(events)
    _reset, new, _topics, rows = first
    assert len(new) == len({id(lg.envelope.payload) for lg in events}) < len(rows)
    reader.events(*pickle.loads(pickle.dumps(first)))
    again = writer.rows(events)
    assert again[1] == []  # nothing new the second time: every payload is named by its number
    got = reader.events(*pickle.loads(pickle.dumps(again)))
    assert got == events
    by_payload = {}
    for sent, arrived in zip(events, got):
        by_payload.setdefault(id(sent.envelope.payload), set()).add(id(arrived.envelope.payload))
    assert all(len(ids) == 1 for ids in by_payload.values())


def test_the_payload_table_is_reset_on_both_sides_when_it_grows(monkeypatch):
    monkeypatch.setattr(pipeline, "MAX_PAYLOADS", 10)
    events = _log(120)
    assert _carry(events, True, batch=5) == events


def test_a_time_in_another_zero_offset_zone_is_carried_as_it_is():
    """UTC times cross as microseconds; any other (zero-offset) tzinfo crosses as the datetime itself."""
    lg = _log(20)[0]
    other = timezone(timedelta(0), "Z0")
    odd = dataclasses.replace(lg, envelope=dataclasses.replace(lg.envelope, occurred_at=lg.envelope.occurred_at
                                                              .replace(tzinfo=other)))
    far = dataclasses.replace(lg, envelope=dataclasses.replace(
        lg.envelope, occurred_at=datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=timezone.utc)))
    got = _carry([odd, far, lg], True)
    assert [_exactly(x) for x in got] == [_exactly(x) for x in (odd, far, lg)]
    assert got[0].envelope.occurred_at.tzinfo == other and got[0].envelope.occurred_at.tzinfo is not timezone.utc


@pytest.mark.parametrize("mode, load, cores, events, bootstrap, expected", [
    ("auto", 0.5, 2, 200_000, "b:1", True),     # a core idle: the second process reads
    ("auto", 3.0, 2, 200_000, "b:1", False),    # every core busy: it would only add its transport's CPU
    ("auto", 0.0, 1, 200_000, "b:1", False),    # one core
    ("auto", 0.0, 2, 5_000, "b:1", False),      # too short to pay for its start-up
    ("auto", 0.0, 2, 200_000, None, False),     # no broker address given
    ("1", 9.0, 2, 200_000, "b:1", True),
    ("0", 0.0, 2, 200_000, "b:1", False),
])
def test_when_a_read_goes_to_the_second_process(monkeypatch, mode, load, cores, events, bootstrap, expected):
    from replay import engine

    monkeypatch.setattr(engine, "PARALLEL", mode)
    monkeypatch.setattr(engine.os, "getloadavg", lambda: (load, load, load))
    monkeypatch.setattr(engine.os, "cpu_count", lambda: cores)
    assert engine._use_child(bootstrap, events) is expected


def test_a_read_stays_in_one_process_unless_asked():
    """One process is the default: the second one did not pay on the hosts measured (``engine.PARALLEL``)."""
    from replay import engine

    assert engine.parallel_mode({}) == "0"
    assert engine.parallel_mode({"MESHLOG_REPLAY_PARALLEL": "auto"}) == "auto"
