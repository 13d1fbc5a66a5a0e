"""The event producers compress their batches with zstd: signed events are ~2.5x the bytes of unsigned ones.

aiokafka refuses a compression type whose codec is missing at construction, so
this fails if cramjam (aiokafka's zstd codec) is not installed.
"""

from __future__ import annotations

from aiokafka.codec import has_zstd, zstd_decode, zstd_encode

from events.producer import LOG_COMPRESSION, EventProducer


async def test_event_producers_send_zstd_batches():
    producer = EventProducer("127.0.0.1:9", signer=None)  # never started: only its configuration is looked at
    assert LOG_COMPRESSION == "zstd" and has_zstd()
    assert producer._producer._compression_type == LOG_COMPRESSION
    batch = b'{"signature":"MEUCIQ..."}' * 50
    assert zstd_decode(zstd_encode(batch)) == batch and len(zstd_encode(batch)) < len(batch) // 10
