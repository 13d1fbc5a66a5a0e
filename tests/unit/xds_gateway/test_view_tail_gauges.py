"""The view tail says when it last applied records and how old they were (three /metrics gauges)."""

from aiokafka import TopicPartition

from events import topics
from projector.publisher import source_headers
from tests.unit.projector_service.helpers import Rec
from xds_gateway import metrics
from xds_gateway.view_cache import _note_applied


def rec(topic: str, offset: int, timestamp: int, source_ms: int | None) -> Rec:
    return Rec(topic, 0, offset, timestamp, b"k", b"v", tuple(source_headers(source_ms) or ()))


def test_the_gauges_carry_the_newest_record_and_event_of_the_batch_and_when_it_was_applied(monkeypatch):
    monkeypatch.setattr("xds_gateway.view_cache.time.time", lambda: 1_700_000_000.25)
    batch = {
        TopicPartition(topics.VIEW_RESOURCES, 0): [rec(topics.VIEW_RESOURCES, 0, 5_000, 4_000)],
        TopicPartition(topics.VIEW_MEMBERSHIP, 0): [rec(topics.VIEW_MEMBERSHIP, 7, 5_010, 4_000),
                                                    rec(topics.VIEW_MEMBERSHIP, 8, 5_020, 4_500)],
    }
    _note_applied(batch)
    assert metrics.VIEW_APPLIED_AT._value.get() == 1_700_000_000.25
    assert metrics.VIEW_APPLIED_RECORD._value.get() == 5.02
    assert metrics.VIEW_APPLIED_SOURCE._value.get() == 4.5


def test_records_without_the_source_header_leave_the_source_gauge_at_zero():
    _note_applied({TopicPartition(topics.VIEW_MEMBERSHIP, 0): [rec(topics.VIEW_MEMBERSHIP, 0, 9_000, None)]})
    assert metrics.VIEW_APPLIED_SOURCE._value.get() == 0
    assert metrics.VIEW_APPLIED_RECORD._value.get() == 9.0
