"""Reading the event log in integration tests (read_committed, no consumer group).

Registrations and health have several partitions (``events.topics.EVENT_PARTITIONS``): a position in a
topic is one next offset per partition (``end_offsets``); ``end_offset`` sums them, which is enough to
compare "before" and "after" (it equals partition 0's next offset on a one-partition topic).
"""

from __future__ import annotations

from aiokafka import AIOKafkaConsumer, TopicPartition

from events.admin import partitions_of
from events.kafka_security import connection_kwargs


async def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    """The next offset of every partition of ``topic`` (last committed record + 1)."""
    consumer = AIOKafkaConsumer(**connection_kwargs(bootstrap), isolation_level="read_committed")
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in (await partitions_of(consumer, [topic])).get(topic, [0])]
        return {tp.partition: offset for tp, offset in (await consumer.end_offsets(tps)).items()}
    finally:
        await consumer.stop()


async def end_offset(bootstrap: str, topic: str) -> int:
    """The sum of the next offsets of ``topic``'s partitions: grows by one per appended record."""
    return sum((await end_offsets(bootstrap, topic)).values())


async def read_since(bootstrap: str, topic: str, starts: dict[int, int]) -> list:
    """Records of every partition of ``topic`` from ``starts`` (partition -> offset; 0 if absent) to its
    current end, read_committed, in broker-time order."""
    ends = await end_offsets(bootstrap, topic)
    consumer = AIOKafkaConsumer(**connection_kwargs(bootstrap), isolation_level="read_committed",
                                enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in ends]
        consumer.assign(tps)
        for tp in tps:
            consumer.seek(tp, starts.get(tp.partition, 0))
        records = []
        for tp in tps:
            while await consumer.position(tp) < ends[tp.partition]:
                batch = await consumer.getmany(tp, timeout_ms=1000)
                records += [r for r in batch.get(tp, []) if r.offset < ends[tp.partition]]
        return sorted(records, key=lambda r: (r.timestamp, r.partition, r.offset))
    finally:
        await consumer.stop()
