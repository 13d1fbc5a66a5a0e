"""Fetch and decode in a second process, fold in this one: a long read on two cores.

``iter_cut_in_child(bootstrap, cut)`` yields what ``replay.source.iter_cut``
yields for the same cut, but the fetching, decoding and merging run in a
child process while this one folds the previous batch.

Invariants:
- The child runs ``replay.source.iter_cut`` itself, with ``RecordDecoder``
  (the codec's answers): the same merge order, the same events, the same
  undecodable reports. Only the transport is added, and it is lossless:
  ``rows_from_events``/``events_from_rows`` give back equal ``Logged``
  values, every envelope field included (the signature fields and the signed
  bytes unchanged, so the fold here verifies exactly what it would verify
  after an in-process decode). Property-tested; the real broker path is
  tested against the in-process path in tests/integration.
- The transport is what makes the split pay: a pickled ``Logged`` costs more
  than decoding it again. A payload (a validated, frozen model) crosses once,
  the first time it is seen, and is named by a number after that; an event
  crosses as one flat tuple of its envelope's fields (``Envelope``'s own
  field list, whatever it holds) and its log position.
- Attested records (``events.record_decoder``'s lazy path) are decoded
  lazily in the child too: the caller passes the runs it believes
  (``replay.attested_runs.AttestedRuns``, from attestations whose signatures
  it checked), which cross once; the child matches them against the bytes
  it reads, exactly as ``iter_cut`` does in process, and the envelopes of
  matched runs cross without their signed bytes and proofs, marked
  ``ATTESTED_RUN`` (which pickles as itself). The child is this program
  reading the same log: it matches runs, it cannot add one.
- The child only reads: it has its own consumer (same bootstrap, same
  security settings, ``read_committed``) and writes nothing. It dies with the
  parent (daemon process; its sends fail once the pipe closes). A failure in
  the child reaches the parent as the same exception type where replay
  handles it (``ReadStalled``, a Kafka error), else as ``PipelineFailed``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import multiprocessing
import pickle
import time
from datetime import datetime, timedelta, timezone
from typing import Any, AsyncIterator, Iterable

from aiokafka import TopicPartition

from events import kafka_security, record_decoder
from events.envelope import Envelope, Logged
from replay.attested_runs import AttestedRuns
from replay.source import Batch, Cut, ReadStalled

log = logging.getLogger(__name__)

# the payload table is reset (on both sides) past this many entries: memory stays bounded on any log
MAX_PAYLOADS = 50_000

_FIELDS = tuple(f.name for f in dataclasses.fields(Envelope))
_PAYLOAD_AT = _FIELDS.index("payload")
# the envelope's fields as this module knows them: rows are then flat and rebuilt positionally (the hot path);
# an envelope that gains a field is carried the generic way (every field by name order) until this is updated
_KNOWN = ("event_id", "type", "schema_version", "occurred_at", "producer", "payload",
          "signer", "signature", "signed_bytes", "proof", "received_digest")
FLAT = _FIELDS == _KNOWN
utc = timezone.utc
# an envelope rebuilt here was built and checked in the reading process (the codec's or the decoder's own
# checks): the decoder's constructor sets its slots without ``__post_init__`` re-checking it, which cost the
# folding process more than the rest of taking an event in; ``Envelope`` itself if that constructor is unavailable
_ENVELOPE = getattr(record_decoder, "_SIGNED_ENVELOPE", None) or Envelope
_LOGGED = record_decoder.LOGGED  # the same for the frozen ``Logged`` around it
_EPOCH = datetime(1970, 1, 1, tzinfo=utc)
_MICROSECOND = timedelta(microseconds=1)


class PipelineFailed(RuntimeError):
    """The reading process failed (its error, bounded)."""


# ---------------------------------------------------------------- the transport (pure)


class RowWriter:
    """Logged events -> (new payloads, rows): each payload object is sent once, then named by its number."""

    __slots__ = ("_refs", "_topics", "flat")

    def __init__(self, flat: bool = FLAT) -> None:
        self.flat = flat
        self._refs: dict[int, tuple[int, Any]] = {}  # id(payload) -> (ref, payload): the payload kept alive
        self._topics: dict[str, int] = {}

    def rows(self, events: Iterable[Logged]) -> tuple[bool, list, list, list]:
        """(reset, new payloads [(ref, payload)], new topics, rows) for one batch."""
        reset = len(self._refs) > MAX_PAYLOADS
        if reset:
            self._refs.clear()
        refs = self._refs
        topics = self._topics
        new: list[tuple[int, Any]] = []
        new_topics: list[str] = []
        rows = []
        append = rows.append
        getattr_ = getattr
        flat = self.flat
        for lg in events:
            env = lg.envelope
            p = env.payload
            known = refs.get(id(p))
            if known is None:
                known = refs[id(p)] = (len(refs), p)
                new.append(known)
            ti = topics.get(lg.topic)
            if ti is None:
                ti = topics[lg.topic] = len(topics)
                new_topics.append(lg.topic)
            if flat:  # ``type`` is the payload's TYPE (an Envelope invariant): it is not sent
                at = env.occurred_at
                if at.tzinfo is utc:  # as microseconds: a pickled datetime costs more than the rest of the row
                    at = (at - _EPOCH) // _MICROSECOND
                append((known[0], env.event_id, env.schema_version, at, env.producer, env.signer,
                        env.signature, env.signed_bytes, env.proof, env.received_digest, ti, lg.partition, lg.offset,
                        lg.timestamp_ms))
            else:
                append((known[0], tuple(getattr_(env, n) for n in _FIELDS if n != "payload"),
                        ti, lg.partition, lg.offset, lg.timestamp_ms))
        return reset, new, new_topics, rows


class RowReader:
    """The inverse of ``RowWriter``, fed the same sequence of batches."""

    __slots__ = ("_payloads", "_topics", "flat")

    def __init__(self, flat: bool = FLAT) -> None:
        self.flat = flat
        self._payloads: dict[int, Any] = {}
        self._topics: list[str] = []

    def events(self, reset: bool, new: list, new_topics: list, rows: list) -> list[Logged]:
        if reset:
            self._payloads.clear()
        payloads = self._payloads
        payloads.update(new)
        self._topics += new_topics
        topics = self._topics
        out = []
        append = out.append
        if self.flat:
            envelope, logged = _ENVELOPE, _LOGGED
            for ref, eid, version, at, producer, signer, signature, signed_bytes, proof, digest, ti, part, off, ts in rows:
                p = payloads[ref]
                if type(at) is int:
                    at = _EPOCH + timedelta(microseconds=at)
                append(logged(envelope(eid, p.TYPE, version, at, producer, p, signer, signature, signed_bytes, proof,
                                       digest), topics[ti], part, off, ts))
            return out
        for ref, values, ti, part, off, ts in rows:
            append(Logged(Envelope(*values[:_PAYLOAD_AT], payloads[ref], *values[_PAYLOAD_AT:]),
                          topics[ti], part, off, ts))
        return out


# ---------------------------------------------------------------- the child


def _child(conn, bootstrap: str, security, start: dict, stop: dict, batch: int, stall_s: float,
           attested: list | None = None) -> None:
    """The reading process: ``iter_cut`` over its own consumer, each batch sent as one pickled message."""
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("aiokafka").setLevel(logging.ERROR)
    kafka_security.configure(security)
    try:
        asyncio.run(_read(conn, bootstrap, start, stop, batch, stall_s, AttestedRuns(attested or ())))
    except (BrokenPipeError, EOFError):
        pass  # the parent is gone or stopped listening
    except BaseException as exc:  # noqa: BLE001 - every failure is reported to the parent, which decides
        try:
            conn.send_bytes(pickle.dumps(("error", _portable(exc)), pickle.HIGHEST_PROTOCOL))
        except (BrokenPipeError, OSError):
            pass
    finally:
        conn.close()


def _portable(exc: BaseException) -> BaseException:
    """The exception itself if it pickles and unpickles, else a PipelineFailed naming it."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:  # noqa: BLE001
        return PipelineFailed(f"{type(exc).__name__}: {str(exc)[:500]}")


async def _read(conn, bootstrap: str, start: dict, stop: dict, batch: int, stall_s: float,
                attested: AttestedRuns) -> None:
    from events.record_decoder import RecordDecoder
    from replay.source import iter_cut, new_consumer
    from replay.young_gc import young_gc_only

    cut = Cut(start={TopicPartition(*k): v for k, v in start.items()},
              stop={TopicPartition(*k): v for k, v in stop.items()})
    consumer = new_consumer(bootstrap)
    await consumer.start()
    try:
        writer = RowWriter()
        dumps = pickle.dumps
        decoder = RecordDecoder()
        # decoding makes millions of objects, nearly all freed with their batch, and next to no cyclic garbage:
        # collections only between batches, once the young objects grew (replay.young_gc)
        with young_gc_only() as collect:
            async for b in iter_cut(consumer, cut, decoder=decoder, batch=batch, stall_s=stall_s, attested=attested):
                message = ("batch", writer.rows(b.events), b.undecodable, b.records)
                conn.send_bytes(dumps(message, pickle.HIGHEST_PROTOCOL))
                b = message = None  # sent: not to be scanned
                collect()
        matched = decoder.attested.as_dict() if decoder.attested is not None else {}
        conn.send_bytes(dumps(("end", time.process_time(), matched), pickle.HIGHEST_PROTOCOL))
    finally:
        await consumer.stop()


# ---------------------------------------------------------------- the parent


async def iter_cut_in_child(bootstrap: str, cut: Cut, *, batch: int = 10_000, stall_s: float = 60.0,
                            attested: AttestedRuns | None = None) -> AsyncIterator[Batch]:
    """``iter_cut(consumer, cut, decoder=RecordDecoder(), attested=attested)``'s batches, read and decoded by a
    child process."""
    ctx = multiprocessing.get_context("spawn")  # a fresh interpreter: no inherited event loop or sockets
    ours, theirs = ctx.Pipe(duplex=False)
    start = {(tp.topic, tp.partition): off for tp, off in cut.start.items()}
    stop = {(tp.topic, tp.partition): off for tp, off in cut.stop.items()}
    proc = ctx.Process(target=_child, name="replay-reader", daemon=True,
                       args=(theirs, bootstrap, kafka_security.current(), start, stop, batch, stall_s,
                             attested.as_runs() if attested else None))
    proc.start()
    theirs.close()
    loop = asyncio.get_running_loop()
    reader = RowReader()
    spent = 0.0  # CPU this process spends unpickling and rebuilding events (reported at INFO)
    try:
        # one receive always in flight: the child reads the next batch while this process folds the last
        pending = loop.run_in_executor(None, ours.recv_bytes)
        while True:
            try:
                data = await pending
            except EOFError:
                raise PipelineFailed(f"the reading process ended without a word (exit code {proc.exitcode})") from None
            c0 = time.process_time()
            message = pickle.loads(data)
            if message[0] == "end":
                log.info("reading process: %.2f CPU-s; here, taking its batches in: %.2f CPU-s; attested runs: %s",
                         message[1], spent, message[2] or "none")
                return
            if message[0] == "error":
                raise message[1]
            pending = loop.run_in_executor(None, ours.recv_bytes)
            _kind, rows, undecodable, records = message
            events = reader.events(*rows)
            spent += time.process_time() - c0
            yield Batch(events, undecodable, records)
    finally:
        if proc.is_alive():
            proc.terminate()  # a receive still in flight then ends with EOFError (its result is dropped)
        await loop.run_in_executor(None, proc.join, 5)
        ours.close()


__all__ = ["PipelineFailed", "RowReader", "RowWriter", "iter_cut_in_child", "ReadStalled"]
