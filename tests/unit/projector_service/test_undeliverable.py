"""A record the broker refuses for good never stops the projector, and a retry appends nothing twice (issue 11)."""

from __future__ import annotations

import asyncio

from aiokafka.errors import KafkaTimeoutError, MessageSizeTooLargeError

from events import topics
from projector import publisher as pub
from projector.deadletter import parse_dead_letter

from .helpers import FakeProducer, Log, registered
from .test_service import close, make, views


class FlakyProducer(FakeProducer):
    """Acknowledges, refuses for good, or times out each record according to its value."""

    async def send(self, topic, value=None, key=None):
        fut = asyncio.get_running_loop().create_future()
        self.attempts += 1
        if value == b"too-big":
            fut.set_exception(MessageSizeTooLargeError())
        elif value == b"flaky" and self.fail_next:
            self.fail_next -= 1
            fut.set_exception(KafkaTimeoutError())
        else:
            self.sent.append(type("S", (), {"topic": topic, "key": key, "value": value})())
            fut.set_result(None)
        return fut


async def test_a_retry_resends_only_what_was_not_acknowledged_and_sets_aside_what_cannot_be_sent():
    producer = FlakyProducer(fail_next=1)
    phases = [[("a", b"1", b"ok-1"), ("a", b"2", b"too-big"), ("a", b"3", b"flaky")], [("b", b"4", b"ok-2")]]
    sender = pub.OrderedSender(producer, phases, timeout_s=5)
    try:
        await sender.run()
        raise AssertionError("the timeout of 'flaky' must be raised for the caller to retry")
    except KafkaTimeoutError:
        pass
    assert [s.value for s in producer.sent] == [b"ok-1"]  # phase 2 waits for phase 1 to settle
    await sender.run()
    assert [s.value for s in producer.sent] == [b"ok-1", b"flaky", b"ok-2"]  # ok-1 is not appended again
    assert [(r[2], type(e)) for r, e in sender.undeliverable] == [(b"too-big", MessageSizeTooLargeError)]
    assert sender.acked == [2, 1]


async def test_the_projector_goes_on_when_the_broker_refuses_a_record_for_good(tmp_path):
    # the broker refuses every dead letter here (as it refused the 1.23 MB base64 copy of a 900 KB record)
    log, producer = Log(), FakeProducer(refuse_over=300)
    log.raw(topics.REGISTRATIONS, b"x/y", b"garbage " * 200)
    log.append(registered("api", "api-1", "node-api"))
    svc = make(tmp_path, producer)
    res = await asyncio.wait_for(svc.process(log.records[topics.REGISTRATIONS]), 20)
    assert res.dead_lettered == 1 and svc.totals["undeliverable"] >= 1
    assert producer.to(topics.DEADLETTER) == []
    # a later event is projected
    producer.refuse_over = None
    log.append(registered("web", "web-1", "node-web"))
    await asyncio.wait_for(svc.process(log.records[topics.REGISTRATIONS][2:]), 20)
    assert "node-web" in [n for n, _v in views(producer)[1]]
    assert svc.emitted == {f"{topics.REGISTRATIONS}/0": 3}
    close(svc)


async def test_a_900_kb_record_is_dead_lettered_within_what_the_broker_accepts(tmp_path):
    log, producer = Log(), FakeProducer(refuse_over=1 << 20)  # under the dead-letter topic's max.message.bytes
    bad = log.raw(topics.REGISTRATIONS, b"x/y", bytes(range(256)) * 3600)
    log.append(registered("api", "api-1", "node-api"))
    svc = make(tmp_path, producer)
    res = await svc.process(log.records[topics.REGISTRATIONS])
    assert res.dead_lettered == 1 and svc.totals["undeliverable"] == 0
    (letter,) = producer.to(topics.DEADLETTER)
    parsed = parse_dead_letter(letter.value)
    assert parsed.value_bytes.size == len(bad.value) and len(letter.value) < 4096
    assert "node-api" in [n for n, _v in views(producer)[1]]
    close(svc)
