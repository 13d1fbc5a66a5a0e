"""A thin producer for envelopes: idempotent, acks=all, bounded in time.

Invariants:
- Only validated envelopes are appended (the types make an invalid one
  unconstructible); the key is the payload's entity key.
- ``append_many`` is all-or-nothing: several envelopes go in one Kafka
  transaction, so a failure half-way leaves no visible half of a batch for
  read_committed consumers (the projector and replay read that way).
- No event over ``topics.EVENT_RECORD_MAX_BYTES`` (key + value) is sent:
  ``encoded_event`` refuses it with ``EventValidationError`` first, so a
  writer says what is too big instead of the broker's MessageSizeTooLarge.
- Every network step has a deadline; a broker that does not answer becomes
  ``BrokerUnavailable`` with the address in its message, never a hang.
- Every event is signed (``events.signing``) when the producer has a signer:
  by default the process's own Kafka client identity (``process_signer``),
  so a process that speaks mTLS to Kafka signs with that certificate; an
  envelope already signed is sent as it is.
- Nothing is sent to a topic the broker does not have: that is
  ``TopicsMissing`` at once (one metadata request), not aiokafka's retry loop
  logging "Topic ... not found" until the deadline.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from typing import Sequence

from aiokafka import AIOKafkaProducer
from aiokafka.protocol.metadata import MetadataRequest
from aiokafka.errors import KafkaError, TopicAuthorizationFailedError

from events import topics
from events.admin import AppendFailed, BrokerUnavailable, TopicsMissing, TopicsNotAuthorized
from events.codec import encode
from events.envelope import Envelope
from events.errors import EventValidationError
from events.kafka_security import KafkaSecurity, connection_kwargs
from events.signing import FileSigner, Signer, process_signer

#: what the event producers compress their batches with (aiokafka needs cramjam for it: a dependency)
LOG_COMPRESSION = "zstd"

_PROCESS_SIGNER = object()


def encoded_event(env: Envelope) -> tuple[bytes, bytes]:
    """(key, value) of ``env`` as appended; EventValidationError if the log would refuse it as too large."""
    key, value = env.key.encode(), encode(env)
    size = len(key) + len(value)
    if size > topics.EVENT_RECORD_MAX_BYTES:
        raise EventValidationError.single(
            "", f"the {env.type} event for {env.key[:100]} is {size:,} bytes encoded, over the "
            f"{topics.EVENT_RECORD_MAX_BYTES:,} bytes an event may have ({env.topic} accepts at most "
            f"{topics.EVENT_MAX_MESSAGE_BYTES:,} bytes per record batch)",
        )
    return key, value


@dataclass(frozen=True, slots=True)
class Appended:
    event_id: str
    type: str
    key: str
    topic: str
    partition: int
    offset: int
    timestamp_ms: int

    def as_dict(self) -> dict:
        return {
            "event_id": self.event_id,
            "type": self.type,
            "key": self.key,
            "topic": self.topic,
            "partition": self.partition,
            "offset": self.offset,
            "timestamp_ms": self.timestamp_ms,
        }


class EventProducer:
    """``async with EventProducer(bootstrap) as p: await p.append(env)``."""

    def __init__(self, bootstrap: str, *, timeout_s: float = 15.0, transactional: bool = False,
                 security: KafkaSecurity | None = None, signer: Signer | FileSigner | None | object = _PROCESS_SIGNER):
        """``signer``: who signs the events (default: this process's Kafka client identity, if it has one;
        ``None``: send unsigned, for plaintext development)."""
        self._bootstrap = bootstrap
        if signer is _PROCESS_SIGNER:
            signer = process_signer() if security is None else (
                FileSigner(security.cert_file, security.key_file) if security.cert_file and security.key_file else None)
        self._signer = signer
        self._timeout_s = timeout_s
        kwargs = {}
        if transactional:
            kwargs["transactional_id"] = f"meshlog-registrar-{uuid.uuid4()}"
        self._producer = AIOKafkaProducer(
            **connection_kwargs(bootstrap, security),  # None: this process's settings
            enable_idempotence=True,  # implies acks=all; aiokafka's default is acks=1 without it
            acks="all",
            request_timeout_ms=int(timeout_s * 1000),
            linger_ms=0,
            # signed events carry a signature and, batch-signed, a Merkle proof whose upper steps the events of
            # one producer batch share: zstd (aiokafka's codec, cramjam) shrinks what the broker stores and
            # every reader fetches (bench/replay_verify.py reports the sizes)
            compression_type=LOG_COMPRESSION,
            **kwargs,
        )
        self._started = False
        self._topics_seen: set[str] = set()

    async def __aenter__(self) -> "EventProducer":
        try:
            await asyncio.wait_for(self._producer.start(), self._timeout_s)
        except (asyncio.TimeoutError, KafkaError, OSError) as exc:
            await self._close_quietly()
            raise BrokerUnavailable(
                f"Kafka at {self._bootstrap} did not answer within {self._timeout_s:g}s ({type(exc).__name__})"
            ) from None
        self._started = True
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self._close_quietly()

    async def _close_quietly(self) -> None:
        try:
            await asyncio.wait_for(self._producer.stop(), self._timeout_s)
        except Exception:  # noqa: BLE001 - shutting down after a failure must not mask it
            pass

    async def _require_topics(self, topics: set[str]) -> None:
        if topics <= self._topics_seen:
            return
        try:
            metadata = await asyncio.wait_for(self._producer.client.fetch_all_metadata(), self._timeout_s)
        except (asyncio.TimeoutError, KafkaError) as exc:
            raise BrokerUnavailable(
                f"Kafka at {self._bootstrap} did not answer within {self._timeout_s:g}s ({type(exc).__name__})"
            ) from None
        self._topics_seen = set(metadata.topics())
        missing = topics - self._topics_seen
        if not missing:
            return
        # A broker with ACLs leaves out of "all topics" the ones this identity may not describe: ask for the
        # missing ones by name, which answers TOPIC_AUTHORIZATION_FAILED for those instead of "unknown topic"
        # (read from the response itself: aiokafka's cluster model would log an error per unknown topic).
        refused: set[str] = set()
        client = self._producer.client
        try:
            response = await asyncio.wait_for(
                client.send(client.get_random_node(),
                            MetadataRequest(sorted(missing), allow_auto_topic_creation=False)),
                self._timeout_s)
            refused = {t[1] for t in response.topics if t[0] == TopicAuthorizationFailedError.errno}
        except (asyncio.TimeoutError, KafkaError):
            pass  # the topics are missing either way; say the more common reason
        if refused:
            raise TopicsNotAuthorized(self._bootstrap, refused)
        raise TopicsMissing(self._bootstrap, missing)

    @property
    def signs(self) -> bool:
        """Whether this producer signs what it appends (it has a signer: a mesh identity)."""
        return self._signer is not None

    def signed(self, env: Envelope) -> Envelope:
        """``env`` as this producer appends it: signed by its signer, if it has one and ``env`` is not signed yet."""
        if self._signer is None or env.signed:
            return env
        return self._signer.sign(env)

    async def _send(self, env: Envelope):
        key, value = encoded_event(self.signed(env))
        return await self._producer.send(env.topic, value=value, key=key)

    @staticmethod
    def _appended(env: Envelope, meta) -> Appended:
        return Appended(env.event_id, env.type, env.key, meta.topic, meta.partition, meta.offset, meta.timestamp)

    async def append(self, env: Envelope) -> Appended:
        await self._require_topics({env.topic})
        try:
            future = await asyncio.wait_for(self._send(env), self._timeout_s)
            meta = await asyncio.wait_for(future, self._timeout_s)
        except (asyncio.TimeoutError, KafkaError) as exc:
            raise AppendFailed(
                f"append to {env.topic} at {self._bootstrap} was not acknowledged: {type(exc).__name__}: {exc}"
            ) from None
        return self._appended(env, meta)

    def signed_batch(self, envs: Sequence[Envelope]) -> list[Envelope]:
        """``envs`` signed together (one signature over their Merkle root, ``events.signing``), if unsigned."""
        if self._signer is None or not envs or any(env.signed for env in envs):
            return list(envs)
        return self._signer.sign_batch(list(envs))

    async def append_batch(self, envs: Sequence[Envelope]) -> list[Appended]:
        """Append ``envs`` pipelined (all sent, then all acknowledged); not atomic: for high-volume facts.
        They are signed as one batch: one signature for all, verified once. AppendFailed if any was not
        acknowledged (some of the others may have been logged)."""
        envs = self.signed_batch(envs)
        await self._require_topics({env.topic for env in envs})
        try:
            futures = [await asyncio.wait_for(self._send(env), self._timeout_s) for env in envs]
            metas = await asyncio.wait_for(asyncio.gather(*futures), self._timeout_s)
        except (asyncio.TimeoutError, KafkaError) as exc:
            raise AppendFailed(f"append at {self._bootstrap} was not acknowledged: {type(exc).__name__}: {exc}") from None
        return [self._appended(env, meta) for env, meta in zip(envs, metas)]

    async def append_many(self, envs: Sequence[Envelope]) -> list[Appended]:
        """Append all of ``envs`` in one transaction (the producer must be transactional), signed as one batch."""
        envs = self.signed_batch(envs)
        await self._require_topics({env.topic for env in envs})
        try:
            async with self._producer.transaction():
                futures = [await asyncio.wait_for(self._send(env), self._timeout_s) for env in envs]
            metas = [await asyncio.wait_for(f, self._timeout_s) for f in futures]
        except (asyncio.TimeoutError, KafkaError) as exc:
            # the transaction was aborted or never committed: read_committed readers see none of it
            raise AppendFailed(f"transactional append at {self._bootstrap} failed: {type(exc).__name__}: {exc}") from None
        return [self._appended(env, meta) for env, meta in zip(envs, metas)]
