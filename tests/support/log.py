"""Reading the event log in integration tests (read_committed, no consumer group)."""

from __future__ import annotations

from aiokafka import AIOKafkaConsumer, TopicPartition

from events.kafka_security import connection_kwargs

async def end_offset(bootstrap: str, topic: str) -> int:
    """The next offset of partition 0 of ``topic`` (last committed record + 1)."""
    consumer = AIOKafkaConsumer(**connection_kwargs(bootstrap), isolation_level="read_committed")
    await consumer.start()
    try:
        tp = TopicPartition(topic, 0)
        return (await consumer.end_offsets([tp]))[tp]
    finally:
        await consumer.stop()
