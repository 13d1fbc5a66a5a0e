"""Which records the live projector dead-lettered, as recorded on the dead-letter topic.

Replay finds undecodable records by decoding them itself; whether the live
projector dead-lettered them is a fact of the dead-letter topic, not of
replay's decoding (the projector may not have reached them yet, or may never
have run against this log). So replay says "dead-lettered live" only for a
record found here.

Invariants:
- A dead letter is appended after its source record, so its broker
  timestamp is at or after the source's: reading the topic from the earliest
  source timestamp asked about finds every dead letter of those records.
- Unreadable records on the dead-letter topic are skipped; the first record
  for a source wins (a source can be dead-lettered more than once, e.g. by a
  projector restarted mid-batch).
"""

from __future__ import annotations

from typing import Callable

from aiokafka import AIOKafkaConsumer

from events import topics
from events.printable import printable
from events.undecodable import REASON_MAX
from projector.deadletter import parse_dead_letter
from replay.source import read_window

Source = tuple[str, int, int]  # topic, partition, offset of the dead-lettered record


def _entity_service(key: bytes | None) -> str | None:
    if not key:
        return None
    text_key = key.decode(errors="replace")
    head, sep, tail = text_key.partition("/")
    if not sep:
        return None
    return tail if head in ("route", "policy") else head


async def recorded_dead_letters(
    consumer: AIOKafkaConsumer, since_ms: int, wanted: Callable[[str, int, int], bool]
) -> dict[Source, dict]:
    """Dead letters logged since ``since_ms`` whose source ``wanted(topic, partition, offset)`` accepts.

    Each maps to ``{reason, stage, timestamp_ms, service}`` (``timestamp_ms`` is the source record's).
    """
    if topics.DEADLETTER not in set(await consumer.topics()):
        return {}
    found: dict[Source, dict] = {}
    for record in await read_window(consumer, topics.DEADLETTER, since_ms):
        try:
            d = parse_dead_letter(record.value)
        except (ValueError, KeyError, TypeError):
            continue
        if wanted(d.topic, d.partition, d.offset):
            found.setdefault((d.topic, d.partition, d.offset), {
                "reason": printable(d.reason, REASON_MAX), "stage": d.stage, "timestamp_ms": d.timestamp_ms,
                "service": _entity_service(d.key)})
    return found


async def dead_lettered_among(consumer: AIOKafkaConsumer, undecodable: list) -> dict[Source, dict]:
    """The recorded dead letters of these undecodable records (``events.undecodable.Undecodable``)."""
    if not undecodable:
        return {}
    sources = {(u.topic, u.partition, u.offset) for u in undecodable}
    since = min((u.timestamp_ms for u in undecodable if u.timestamp_ms is not None), default=0)
    return await recorded_dead_letters(consumer, since, lambda *src: src in sources)
