"""Decoding event records fast: ``events.codec`` semantics, memoized payloads.

Used wherever many records are read: the live projector, replay, the proxy
sync reader.

Invariants:
- ``RecordDecoder()(record)`` returns exactly what ``events.codec.decode_record``
  returns for that record, or raises the same ``EventValidationError`` (the
  error always comes from the codec itself): replay and the live projector
  agree on which records are folded and which were dead-lettered.
  Property-tested against the codec on valid and garbage input.
- The codec (pydantic payload types, ``events.codec``) stays the one schema:
  nothing here re-states a payload rule. What this module adds is a cheaper
  way to *reach* the codec's answer for a record whose payload the codec has
  already accepted: payload validation (pydantic, upcasting) is a pure
  function of ``(type, schema_version, payload bytes)`` (``events.upcast``
  promises purity), so its result is memoized under that key. Payloads are
  frozen models: one validated object is shared by every envelope that
  carries the same bytes. A real log repeats payloads all the time (a health
  flap, a heartbeat re-registration), which is where most of a cold replay's
  decoding time went. The memo is bounded (two generations), and a payload
  type a log never repeats (a rule edit, with its revision) is validated
  every time and never takes a place in it.
- Envelopes and ``Logged`` values built here are the frozen classes
  themselves, equal to what their constructors build (filled as unfrozen
  drafts of the same layout, then given their class: ``_draft_of``).
- The envelope's header is read with msgspec into a struct whose fields are
  the envelope's wire fields (``events.envelope.REQUIRED_FIELDS`` and
  ``ENVELOPE_FIELDS``, the one list the codec reads too; the signature fields
  are optional, as in the codec; the payload stays raw bytes, the memo key).
  msgspec only ever *narrows*:
  a record it refuses, or whose header is not the plain shape (an unknown or
  missing field, a ``schema_version`` that is not a plain int in range, an
  empty ``event_id``/``producer``, an ``occurred_at`` the codec would refuse,
  a type on the wrong topic), goes through the codec itself — so the decoder
  is exactly as total as the codec.
- A first sighting of a payload under a plain header is validated the way
  the codec validates a payload, and nothing more: orjson reads the payload's
  own bytes, ``events.upcast.upcast`` then ``codec.validate_payload`` (the
  pydantic types). Everything else the codec checks of the envelope is the
  header's, read by msgspec and checked here exactly as on a memo hit, so
  the codec's per-event work (reading the whole document again, its key and
  field checks, ``Envelope.__init__``) is not done twice. Whatever that
  validation refuses (orjson cannot read the bytes, they are not an object,
  the upcaster or pydantic refuses them) goes through the codec, which says
  why. So a memo entry always holds payload bytes that the codec's own
  payload validation accepted for that (type, version): msgspec's laxer
  skipping of raw values (it does not check UTF-8 or number range inside
  them) never lets anything new through.
- A signed envelope takes the same path. Its signature fields are checked by
  the codec's own shape rules (``codec._signature_fields``/``_proof_field``),
  and its ``signed_bytes`` are ``codec.signing_bytes`` of the document as the
  codec would have parsed it: the header's values, with the payload as the
  canonical bytes orjson writes for it (memoized with the payload, computed
  from the same raw bytes the codec accepted, the first time a signed
  envelope needs them: an unsigned log never pays for them), so the
  verifier checks exactly the bytes it would check after
  ``events.codec.decode``. Its
  ``received_digest`` is ``events.envelope.received_digest_of`` the record's
  value, as the codec sets it.
- Lazily, on an attestation: a decoder given ``attested`` (what a read
  matched of the projector's attested runs: ``replay.attested_runs.RunScreen``,
  whose ``covers(record)`` says the record lies in a run whose bytes were
  found exactly as the projector verified them) decodes a signed record of
  an event topic it covers without its signature fields: no shape checks of
  the signature and proof, no ``signed_bytes``, no ``proof``, no digest of
  its own (the projector's codec accepted and its verifier checked exactly
  these bytes: the run's digest binds every one of them). Its
  ``received_digest`` is ``events.envelope.ATTESTED_RUN``, which only this
  path sets. Everything else is the fast path's (a memo hit or a first
  sighting's payload validation, the topic, id, producer and time checks);
  anything refused there goes the full way (and is refused with the codec's
  reason). Such an envelope verifies only as attested
  (``Verifier.verdict``); a record no matched run covers is decoded and
  checked the full way, so a bad signature or proof is refused exactly as
  before.
"""

from __future__ import annotations

import dataclasses
import types
from typing import Any

import msgspec
import orjson

from events import codec, topics
from events.codec import decode_record, utc_time_or_none, validate_payload
from events.envelope import (ATTESTED_RUN, ENVELOPE_FIELDS, REQUIRED_FIELDS, SIGNATURE_FIELDS, Envelope, Logged,
                             received_digest_of)
from events.types import PAYLOAD_TYPES
from events.upcast import upcast

# The header types the fast path understands. The field *list* is the envelope's; a field it gains
# that is not typed here (e.g. a new envelope field) switches the fast path off (``_HEADER`` is None)
# rather than letting an unchecked field through.
_HEADER_TYPES: dict[str, Any] = {
    "event_id": str,
    "type": str,
    "schema_version": int,
    "occurred_at": str,
    "producer": str,
    "payload": msgspec.Raw,
    "signer": str,
    "signature": str,
    "proof": list[str],
}
# the fields an envelope may leave out (signer, signature, proof): absent is UNSET, never None, so an explicit
# ``null`` (which the codec refuses) is refused by msgspec too and goes to the codec
_OPTIONAL_FIELDS = tuple(name for name in ENVELOPE_FIELDS if name not in REQUIRED_FIELDS)


def _header_decoder(types: dict[str, Any]) -> msgspec.json.Decoder | None:
    if any(name not in types for name in ENVELOPE_FIELDS):
        return None
    fields = [(name, types[name]) for name in sorted(REQUIRED_FIELDS)]
    fields += [(name, types[name] | msgspec.UnsetType, msgspec.UNSET) for name in sorted(_OPTIONAL_FIELDS)]
    struct = msgspec.defstruct("EnvelopeHeader", fields, kw_only=True, forbid_unknown_fields=True, frozen=True)
    return msgspec.json.Decoder(struct)


_HEADER = _header_decoder(_HEADER_TYPES)
# an attested record's header: its proof is not read (only what the verifier needs of an attested event is)
_LAZY_HEADER = _header_decoder({**_HEADER_TYPES, "proof": msgspec.Raw})
# the topics whose events the fold verifies (``Verifier.verdict``): the only ones decoded lazily; an identity
# event, say, is checked against the root with its signed bytes (``Verifier.identity_refusal``)
_LAZY_TOPICS = frozenset({topics.REGISTRATIONS, topics.HEALTH, topics.RULES})
_UNSET = msgspec.UNSET
# payload types the log never repeats, so a memo entry of theirs is never hit: each rule edit carries its own
# revision (the fold refuses a stale one). Validated like any other, never memoized: memoized, a burst of edits
# pushed the payloads that do repeat (health flaps, re-registrations) out of the memo, to be validated again
# (the 1,000,000-event bench log: 133,784 validations instead of 87,256, decoding 10-16 % slower)
_NEVER_REPEATED = frozenset(name for name, cls in PAYLOAD_TYPES.items() if "revision" in cls.model_fields)


def _draft_of(cls: type) -> type | None:
    """An unfrozen twin of the frozen slotted dataclass ``cls``: the same bases and slots, no ``__setattr__``
    guard, so a builder fills its slots with plain attribute stores (a fraction of the cost of calling each
    slot's descriptor) and then makes it a ``cls`` by assigning ``__class__``, which Python allows between
    classes of one layout. None if this interpreter refuses that assignment."""
    draft = types.new_class(f"_{cls.__name__}Draft", getattr(cls, "__orig_bases__", cls.__bases__),
                            exec_body=lambda ns: ns.update(__slots__=cls.__slots__))
    try:
        probe = object.__new__(draft)
        probe.__class__ = cls
    except TypeError:
        return None
    return draft


def _envelope_builders():
    """``Envelope(...)`` that sets the slots directly: ``__init__`` goes through the frozen ``__setattr__`` guard
    and ``__post_init__``'s checks, which cost more than the rest of a memo hit. Only for what ``__call__``
    has established: ``type`` is ``payload.TYPE`` (the memo's key), ``at`` is in UTC (``utc_time_or_none``), and
    a signed envelope has both ``signer`` and ``signature`` (a proof only with them; ``signed_bytes`` and the
    proof left out only when decoded lazily on an attestation). (unsigned, signed), or
    (None, None), and the callers build with ``Envelope(...)``, if the envelope's fields change or ``_draft_of``
    finds no draft. Equal to ``Envelope(...)`` and as frozen (tested)."""
    names = ("event_id", "type", "schema_version", "occurred_at", "producer", "payload",
             "signer", "signature", "signed_bytes", "proof", "received_digest")
    if tuple(f.name for f in dataclasses.fields(Envelope)) != names or Envelope.__slots__ != names:
        return None, None
    draft = _draft_of(Envelope)  # 0.9 us an envelope, against 1.9 setting each slot through its descriptor
    if draft is None:
        return None, None
    new = draft.__new__

    def signed(event_id: str, type_: str, version: int, at: Any, producer: str, payload: Any,
               signer: str | None, signature: str | None, signed_bytes: bytes | None,
               proof: tuple[str, ...] | None, received_digest: bytes | None) -> Envelope:
        env = new(draft)
        env.event_id = event_id
        env.type = type_
        env.schema_version = version
        env.occurred_at = at
        env.producer = producer
        env.payload = payload
        env.signer = signer
        env.signature = signature
        env.signed_bytes = signed_bytes
        env.proof = proof
        env.received_digest = received_digest
        env.__class__ = Envelope
        return env

    def unsigned(event_id: str, type_: str, version: int, at: Any, producer: str, payload: Any) -> Envelope:
        return signed(event_id, type_, version, at, producer, payload, None, None, None, None, None)

    return unsigned, signed


_UNSIGNED_ENVELOPE, _SIGNED_ENVELOPE = _envelope_builders()


def _logged_builder():
    """``Logged(envelope, topic, partition, offset, timestamp_ms)`` that sets the slots directly: the frozen
    dataclass's ``__init__`` sets each field through ``object.__setattr__`` (~4 % of a cold replay's CPU). Equal
    to ``Logged(...)`` and as frozen (tested); ``Logged`` itself if its fields change or ``_draft_of`` finds no
    draft."""
    names = ("envelope", "topic", "partition", "offset", "timestamp_ms")
    if tuple(f.name for f in dataclasses.fields(Logged)) != names or Logged.__slots__ != names:
        return Logged
    draft = _draft_of(Logged)
    if draft is None:
        return Logged
    new = draft.__new__

    def logged(envelope: Envelope, topic: str, partition: int, offset: int, timestamp_ms: int) -> Logged:
        lg = new(draft)
        lg.envelope = envelope
        lg.topic = topic
        lg.partition = partition
        lg.offset = offset
        lg.timestamp_ms = timestamp_ms
        lg.__class__ = Logged
        return lg

    return logged


#: ``Logged(...)`` for the fast paths (``_logged_builder``); replay's reading transport uses it too
LOGGED = _logged_builder()


class RecordDecoder:
    """``decoder(record) -> Logged``; keeps hit/miss counters for reporting."""

    __slots__ = ("_memo", "_old", "_young_bytes", "max_entries", "max_bytes", "hits", "misses", "attested", "lazy")

    def __init__(self, max_entries: int = 65_536, max_bytes: int = 8 << 20,
                 attested: Any = None) -> None:
        # (type, version, payload bytes) -> [validated payload, the canonical bytes orjson writes for it or None
        # until a signed envelope needs them], in two
        # generations of at most max_entries / 2: when the young one is full it becomes the old one and the old
        # one is let go; a hit in the old one moves the entry back. Payloads a log repeats (health flaps,
        # re-registrations) stay; those it rarely repeats age out, and those it never repeats (a rule edit, with its
        # revision: ``_NEVER_REPEATED``) never enter. Bounded memory on any log:
        # a validated rule holds several KB, and a million-event log has tens of thousands of them. A generation
        # also ends at max_bytes / 2 of payload bytes (a validated model takes about ten times its JSON).
        self._memo: dict[tuple[str, int, bytes], list] = {}
        self._old: dict[tuple[str, int, bytes], list] = {}
        self._young_bytes = 0
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.hits = 0
        self.misses = 0
        # what this read matched of the believed attestations (``replay.attested_runs.RunScreen``: ``covers``);
        # None: every record is decoded whole
        self.attested = attested
        self.lazy = 0  # records decoded lazily on an attestation

    def __call__(self, record: Any) -> Logged:
        value = record.value
        if value is None or _HEADER is None:
            return decode_record(record)  # the codec's answer (or its error)
        topic = record.topic
        if (self.attested is not None and _LAZY_HEADER is not None and topic in _LAZY_TOPICS
                and self.attested.covers(record)):
            logged = self._attested(record, value)
            if logged is not None:
                return logged
        try:
            head = _HEADER.decode(value)
        except Exception:  # noqa: BLE001 - msgspec refuses (or recurses): the codec decides, and says why
            return decode_record(record)
        # one function for the common case (a memo hit on an unsigned record): this runs for every record
        key = (head.type, head.schema_version, bytes(head.payload))
        known = self._memo.get(key)
        hit = known is not None
        if not hit:
            known, hit = self._young_miss(head, key, topic)
        if known is not None:
            # the type is one the codec knows (it accepted a payload of it); what depends on this record: its
            # topic, id, producer, time and signature
            ptype = PAYLOAD_TYPES[head.type]
            if ptype.TOPIC == topic and head.event_id and head.producer:
                at = utc_time_or_none(head.occurred_at)
                if at is not None:
                    if (head.signer is _UNSET and head.signature is _UNSET and head.proof is _UNSET
                            and _UNSIGNED_ENVELOPE is not None):
                        env = _UNSIGNED_ENVELOPE(head.event_id, ptype.TYPE, ptype.SCHEMA_VERSION, at, head.producer,
                                                 known[0])
                    else:
                        env = _signed_or_none(head, ptype, at, known, key[2], value)
                    if env is not None:
                        if hit:
                            self.hits += 1
                        return LOGGED(env, topic, record.partition, record.offset, record.timestamp)
        logged = decode_record(record)  # the reference path; raises EventValidationError
        if known is None:
            self._remember(head, logged.envelope.payload)
        return logged

    def _young_miss(self, head: Any, key: tuple[str, int, bytes], topic: str) -> tuple[list | None, bool]:
        """After a miss in the young generation: (the old generation's entry, True), else (the entry of a first
        sighting whose payload validates, or None: the codec decides, False)."""
        known = self._recall(key)
        if known is not None:
            return known, True
        return self._first_sighting(head, key, topic), False

    def _first_sighting(self, head: Any, key: tuple[str, int, bytes], topic: str) -> list | None:
        """The memo entry for a payload seen for the first time, validated as the codec validates a payload
        (orjson, ``upcast``, ``validate_payload``); None: the codec decides (and says why)."""
        ptype = PAYLOAD_TYPES.get(head.type)
        if ptype is None or ptype.TOPIC != topic or not 1 <= head.schema_version <= ptype.SCHEMA_VERSION:
            return None
        try:
            data = orjson.loads(key[2])
            if type(data) is not dict:
                return None
            payload = validate_payload(ptype, upcast(ptype.TYPE, head.schema_version, data), "payload")
        except Exception:  # noqa: BLE001 - refused (EventValidationError, orjson's error) or a validator's bug: the
            return None  # codec says which, and why (DECODER_BUG for a bug)
        self.misses += 1
        entry = [payload, None]  # [payload, its canonical bytes once a signed envelope needs them]
        self._keep(key, entry)
        return entry

    def _remember(self, head: Any, payload: Any) -> None:
        """Memoize ``payload``, which the codec accepted from the header's payload bytes (a first sighting)."""
        self.misses += 1
        self._keep((head.type, head.schema_version, bytes(head.payload)), [payload, None])

    def _recall(self, key: tuple[str, int, bytes]) -> list | None:
        """The old generation's entry for ``key``, moved back to the young one; None if it has none."""
        if not self._old:
            return None
        known = self._old.pop(key, None)
        if known is not None:
            self._keep(key, known)
        return known

    def _attested(self, record: Any, value: Any) -> Logged | None:
        """The envelope of a signed record in a matched attested run, decoded without its signature fields; None:
        decode it whole.

        The projector decoded and verified exactly these bytes (the run's digest binds them all), so what its codec
        checked of the signature fields (their shape) holds; ``signed_bytes`` and ``proof`` are only needed to
        check a signature the verifier will not check."""
        try:
            head = _LAZY_HEADER.decode(value)
        except Exception:  # noqa: BLE001 - the whole way decides
            return None
        if head.signer is _UNSET or head.signature is _UNSET:
            return None  # not signed (or half): nothing an attestation names
        key = (head.type, head.schema_version, bytes(head.payload))
        known = self._memo.get(key)
        hit = known is not None
        if not hit:
            known, hit = self._young_miss(head, key, record.topic)
            if known is None:
                return None  # the whole way decides, and says why
        ptype = PAYLOAD_TYPES[head.type]
        if ptype.TOPIC != record.topic or not head.event_id or not head.producer or _SIGNED_ENVELOPE is None:
            return None
        at = utc_time_or_none(head.occurred_at)
        if at is None:
            return None
        env = _SIGNED_ENVELOPE(head.event_id, ptype.TYPE, ptype.SCHEMA_VERSION, at, head.producer, known[0],
                               head.signer, head.signature, None, None, ATTESTED_RUN)
        if hit:
            self.hits += 1
        self.lazy += 1
        return LOGGED(env, record.topic, record.partition, record.offset, record.timestamp)

    def _keep(self, key: tuple[str, int, bytes], entry: list) -> None:
        """Memoize ``entry`` under ``key``, unless its type is one a log never repeats (``_NEVER_REPEATED``)."""
        if key[0] in _NEVER_REPEATED:
            return
        if len(self._memo) >= max(1, self.max_entries // 2) or self._young_bytes >= self.max_bytes // 2:
            self._old, self._memo, self._young_bytes = self._memo, {}, 0
        self._memo[key] = entry
        self._young_bytes += len(key[2])

    @property
    def hit_rate(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0


def _signed_or_none(head: Any, ptype: Any, at: Any, known: list, raw: bytes, value: Any) -> Envelope | None:
    """The envelope ``events.codec`` builds from a header whose payload (``known``, read from ``raw``) it accepts,
    when the header is signed (or the fast constructors are off); None: the codec decides."""
    try:
        if head.signer is _UNSET and head.signature is _UNSET and head.proof is _UNSET:
            return Envelope(head.event_id, ptype.TYPE, ptype.SCHEMA_VERSION, at, head.producer, known[0])
        if known[1] is None:  # the first signed envelope with this payload: its canonical bytes, kept with it
            canonical = orjson.dumps(orjson.loads(raw), option=orjson.OPT_SORT_KEYS)
            known[1] = raw if canonical == raw else canonical
        return _signed_envelope(head, ptype.TYPE, ptype.SCHEMA_VERSION, at, known, received_digest_of(value))
    except (ValueError, orjson.JSONEncodeError):  # EventValidationError is a ValueError: the codec decides
        return None


def _signed_envelope(head: Any, type_: str, version: int, at: Any, known: list, digest: bytes) -> Envelope | None:
    """The signed envelope the codec builds from ``head``: its shape rules, its ``signing_bytes``."""
    signer, signature, proof = head.signer, head.signature, head.proof
    if signer is _UNSET or signature is _UNSET:
        return None  # one without the other, or a proof without a signature: the codec says why
    if not (_SERIAL_RE.match(signer) and _SIGNATURE_RE.match(signature)):
        return None  # an ill-shaped signature field: the codec says why
    if proof is _UNSET:
        proof = None
    elif not 1 <= len(proof) <= codec.PROOF_MAX or not codec._proof_steps_ok(proof):
        return None
    else:
        proof = tuple(proof)
    # codec.signing_bytes of the document as the codec reads it: every field but signature and proof, keys
    # sorted, the payload as orjson writes it (checked equal to the codec's by tests/unit/replay/test_decode_signed)
    doc = {name: getattr(head, name) for name in _SIGNED_DOC_FIELDS}
    doc["payload"] = orjson.Fragment(known[1])
    data = orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)
    if _SIGNED_ENVELOPE is not None:
        return _SIGNED_ENVELOPE(head.event_id, type_, version, at, head.producer, known[0], signer, signature, data,
                                proof, digest)
    return Envelope(head.event_id, type_, version, at, head.producer, known[0], signer, signature, data, proof, digest)


_SERIAL_RE, _SIGNATURE_RE = codec._SERIAL_RE, codec._SIGNATURE_RE
# what codec.signing_bytes keeps of a signed document: every wire field but the signature and the proof
_SIGNED_DOC_FIELDS = tuple(name for name in REQUIRED_FIELDS + SIGNATURE_FIELDS if name != "signature")
