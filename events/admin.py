"""Make the broker's topics match ``events.topics`` — without ever changing one silently.

Invariants:
- ``ensure_topics`` is idempotent: it creates what is missing and only reports
  a topic whose partitions or settings differ from the spec; an operator
  decides what to do about a mismatch (changing retention of history is not a
  thing to do behind anyone's back). The one exception is a size cap
  (``ADJUSTABLE``): it limits future writes and rewrites no history, so an
  existing topic gets the spec's cap, reported as updated, with every other
  setting the topic has kept as it is.
- Replication follows the live brokers the cluster reports
  (``TopicSpec.replicated``): a topic whose replica count differs is a
  mismatch like a partition count (reported, never changed: reassigning
  replicas moves data and is an operator's call). Ensure on a healthy cluster.
- Fewer partitions than the spec (a log created before ``events.topics``
  raised a count) is a mismatch whose message names the command that raises
  it: ``meshlog topics ensure --add-partitions`` (``add_partitions=True``)
  adds partitions, never removes any (Kafka cannot), and reports what it
  raised as updated. Readers consume every partition the broker reports, so
  a log keeps working at its old count until then.
- Topics are pre-created here; the broker's auto-creation (wrong partition
  counts, wrong policies) is never relied on.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any, Iterable

from aiokafka.admin import AIOKafkaAdminClient, NewPartitions, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaError, TopicAlreadyExistsError, TopicAuthorizationFailedError

from events.kafka_security import KafkaSecurity, connection_kwargs
from events.topics import ALL_TOPICS, TopicSpec

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class TopicMismatch:
    topic: str
    setting: str
    expected: str
    actual: str
    hint: str = ""  # what an operator can do about it

    def __str__(self) -> str:
        text = f"{self.topic}: {self.setting} is {self.actual!r}, expected {self.expected!r}"
        return f"{text} ({self.hint})" if self.hint else text


ADD_PARTITIONS_HINT = "raise it with `meshlog topics ensure --add-partitions`"


# settings ensure_topics also sets on an existing topic (see the module invariants)
ADJUSTABLE = frozenset({"max.message.bytes"})
_DYNAMIC_TOPIC_CONFIG = 1  # DescribeConfigs (v1+) config_source of a topic's own setting


@dataclass(slots=True)
class TopicReport:
    created: list[str] = field(default_factory=list)
    ok: list[str] = field(default_factory=list)
    mismatches: list[TopicMismatch] = field(default_factory=list)
    updated: list[TopicMismatch] = field(default_factory=list)  # adjustable settings changed: from actual to expected

    @property
    def consistent(self) -> bool:
        return not self.mismatches


class BrokerUnavailable(RuntimeError):
    """The broker did not answer within the allowed time; nothing was sent."""


class NotAuthorized(RuntimeError):
    """The broker refused this identity an operation (Kafka's ACLs); nothing was changed."""


class AppendFailed(BrokerUnavailable):
    """A send was attempted but not acknowledged in time: its outcome is unknown."""


class TopicsNotAuthorized(NotAuthorized, BrokerUnavailable):
    """The broker hides a topic meshlog writes to from this identity (Kafka's ACLs); nothing was sent.

    A ``BrokerUnavailable`` too, so every writer's existing handling (exit 3, retry with backoff) applies,
    with a message that says what is wrong instead of "no topic".
    """

    def __init__(self, bootstrap: str, refused: Iterable[str]):
        self.refused = sorted(refused)
        super().__init__(
            f"Kafka at {bootstrap} refused this identity the topic {', '.join(self.refused)} "
            f"(TopicAuthorizationFailed): the ACL table does not let its role write there"
        )


class TopicsMissing(BrokerUnavailable):
    """The broker answers but lacks a topic meshlog writes to; nothing was sent."""

    def __init__(self, bootstrap: str, missing: Iterable[str]):
        self.missing = sorted(missing)
        super().__init__(
            f"Kafka at {bootstrap} has no topic {', '.join(self.missing)}: create meshlog's topics with "
            f"`meshlog topics ensure` (`meshlog kafka up` does it for the broker it starts)"
        )


async def connect_admin(bootstrap: str, timeout_s: float = 15.0, *,
                        security: KafkaSecurity | None = None) -> AIOKafkaAdminClient:
    admin = AIOKafkaAdminClient(**connection_kwargs(bootstrap, security), request_timeout_ms=int(timeout_s * 1000))
    try:
        await asyncio.wait_for(admin.start(), timeout_s)
    except (asyncio.TimeoutError, KafkaError, OSError) as exc:
        try:
            await admin.close()
        except Exception:  # noqa: BLE001 - closing a never-started client can itself fail
            pass
        raise BrokerUnavailable(f"Kafka at {bootstrap} did not answer within {timeout_s:g}s ({type(exc).__name__})") from None
    return admin


def _configs_from_response(responses) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    for response in responses:
        for resource in response.resources:
            error_code, _msg, _rtype, name, entries = resource[:5]
            if error_code:
                continue
            out[name] = {entry[0]: entry[1] for entry in entries}
    return out


async def ensure_topics(
    bootstrap: str, specs: Iterable[TopicSpec] = ALL_TOPICS, *, timeout_s: float = 30.0,
    security: KafkaSecurity | None = None, add_partitions: bool = False,
) -> TopicReport:
    report = TopicReport()
    admin = await connect_admin(bootstrap, timeout_s, security=security)
    try:
        # the brokers the cluster reports as live decide the replication (events.topics.replication_for)
        brokers = len((await admin.describe_cluster())["brokers"]) or 1
        specs = [s.replicated(brokers) for s in specs]
        existing = set(await admin.list_topics())
        missing = [s for s in specs if s.name not in existing]
        if missing:
            try:
                response = await admin.create_topics(
                    [
                        NewTopic(s.name, s.partitions, s.replication_factor, topic_configs=dict(s.config))
                        for s in missing
                    ],
                    timeout_ms=int(timeout_s * 1000),
                )
                errors = {entry[0]: entry[1] for entry in response.topic_errors}
            except TopicAlreadyExistsError:
                errors = {s.name: TopicAlreadyExistsError.errno for s in missing}
            for s in missing:
                code = errors.get(s.name, 0)
                if code == TopicAlreadyExistsError.errno:
                    # created meanwhile (by a concurrent ensure, or metadata lagged): check it like any other
                    existing.add(s.name)
                elif code == TopicAuthorizationFailedError.errno:
                    # a topic this identity may not even describe looks missing; creating it is the admin's job
                    raise NotAuthorized(
                        f"topic {s.name} is missing or not visible to this identity, which may not create it "
                        f"(Kafka error {code}, TOPIC_AUTHORIZATION_FAILED): run `meshlog topics ensure` as the Kafka admin"
                    )
                elif code:
                    raise RuntimeError(f"creating topic {s.name} failed with Kafka error code {code}")
                else:
                    report.created.append(s.name)
                    log.info("created topic %s (%d partitions, %d replicas)", s.name, s.partitions,
                             s.replication_factor)
        present = [s for s in specs if s.name in existing]
        if present:
            described = await _describe_topics(admin, [s.name for s in present])
            partitions = {t["topic"]: len(t["partitions"]) for t in described}
            replicas = {t["topic"]: sorted({len(p["replicas"]) for p in t["partitions"]}) for t in described}
            configs = await _describe_topic_configs(admin, [s.name for s in present])
            for s in present:
                bad = False
                have = partitions.get(s.name)
                if have is not None and have < s.partitions and add_partitions:
                    raised = TopicMismatch(s.name, "partitions", str(s.partitions), str(have))
                    if await _add_partitions(admin, s.name, s.partitions, timeout_s):
                        report.updated.append(raised)
                    else:
                        report.mismatches.append(raised)
                        bad = True
                elif have != s.partitions:
                    hint = ADD_PARTITIONS_HINT if have is not None and have < s.partitions else (
                        "Kafka cannot remove partitions: the topic is read as it is")
                    report.mismatches.append(TopicMismatch(s.name, "partitions", str(s.partitions), str(have), hint))
                    bad = True
                if replicas.get(s.name) != [s.replication_factor]:
                    have = ",".join(str(n) for n in replicas.get(s.name, [])) or "None"
                    report.mismatches.append(
                        TopicMismatch(s.name, "replication factor", str(s.replication_factor), have))
                    bad = True
                adjust = []
                for key, want in s.config.items():
                    have = configs.get(s.name, {}).get(key)
                    if have != want and key in ADJUSTABLE:
                        adjust.append(TopicMismatch(s.name, key, want, str(have)))
                    elif have != want:
                        report.mismatches.append(TopicMismatch(s.name, key, want, str(have)))
                        bad = True
                if adjust and not await _adjust(admin, s.name, adjust):
                    report.mismatches += adjust
                    bad = True
                elif adjust:
                    report.updated += adjust
                if not bad:
                    report.ok.append(s.name)
        for m in report.updated:
            log.info("topic setting updated: %s: %s %r -> %r", m.topic, m.setting, m.actual, m.expected)
        for m in report.mismatches:
            log.warning("topic mismatch (left unchanged): %s", m)
        return report
    finally:
        await admin.close()


async def partitions_of(consumer: Any, names: Iterable[str]) -> dict[str, list[int]]:
    """The partitions the broker has for each topic (absent: no such topic), read with ``consumer``.

    A reader asks the broker, not ``events.topics``: a log created before a count was raised keeps its
    own until ``meshlog topics ensure --add-partitions``. (aiokafka's ``partitions_for_topic`` knows only
    topics the consumer already subscribed to or was assigned; a full metadata read knows them all.)
    """
    cluster = await consumer._client.fetch_all_metadata()
    out = {}
    for name in names:
        parts = cluster.partitions_for_topic(name)
        if parts:
            out[name] = sorted(parts)
    return out


async def _add_partitions(admin: AIOKafkaAdminClient, topic: str, total: int, timeout_s: float) -> bool:
    """Raise ``topic`` to ``total`` partitions; False (logged) if the broker refused."""
    try:
        response = await admin.create_partitions({topic: NewPartitions(total)}, timeout_ms=int(timeout_s * 1000))
    except KafkaError as exc:
        log.error("raising %s to %d partitions failed: %s", topic, total, exc)
        return False
    for entry in response.topic_errors:
        if entry[1]:
            log.error("raising %s to %d partitions failed: Kafka error %d %s", topic, total, entry[1], entry[2])
            return False
    return True


# On a cluster, the broker asked may not know a topic created a moment ago (its metadata lags the
# controller's) and answers with an error for it: ask again for those, briefly, rather than report
# every setting of the topic as missing.
_DESCRIBE_ATTEMPTS = 25
_DESCRIBE_RETRY_S = 0.2


async def _describe_topics(admin: AIOKafkaAdminClient, names: list[str]) -> list[dict]:
    known: dict[str, dict] = {}
    for attempt in range(_DESCRIBE_ATTEMPTS):
        wanted = [n for n in names if n not in known]
        if not wanted:
            break
        if attempt:
            await asyncio.sleep(_DESCRIBE_RETRY_S)
        for topic in await admin.describe_topics(wanted):
            if not topic.get("error_code") and topic.get("partitions"):
                known[topic["topic"]] = topic
    return [known.get(n, {"topic": n, "partitions": []}) for n in names]


async def _describe_topic_configs(admin: AIOKafkaAdminClient, names: list[str]) -> dict[str, dict[str, str]]:
    configs: dict[str, dict[str, str]] = {}
    for attempt in range(_DESCRIBE_ATTEMPTS):
        wanted = [n for n in names if n not in configs]
        if not wanted:
            break
        if attempt:
            await asyncio.sleep(_DESCRIBE_RETRY_S)
        configs.update(_configs_from_response(
            await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, n) for n in wanted])))
    return configs


async def _adjust(admin: AIOKafkaAdminClient, topic: str, changes: list[TopicMismatch]) -> bool:
    """Set adjustable settings on an existing topic, keeping every setting of its own; False if refused.

    AlterConfigs replaces all of a topic's own settings at once (aiokafka has no incremental
    variant), so the request carries the topic's current ones (config_source DYNAMIC_TOPIC_CONFIG)
    with only the adjusted values changed.
    """
    [response] = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)], include_synonyms=True)
    own: dict[str, str] = {}
    for resource in response.resources:
        error_code, _msg, _rtype, _name, entries = resource[:5]
        if error_code:
            return False
        for entry in entries:
            name, value, read_only, source = entry[:4]
            if source == _DYNAMIC_TOPIC_CONFIG and not read_only and value is not None:
                own[name] = value
    own.update({c.setting: c.expected for c in changes})
    answers = await admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, topic, configs=own)])
    codes = [resource[0] for answer in answers for resource in getattr(answer, "resources", ())]
    if any(codes):
        log.warning("topic %s: setting %s refused (Kafka error codes %s)", topic,
                    ", ".join(f"{c.setting}={c.expected}" for c in changes), codes)
        return False
    return True
