"""xds_gateway.write_deadlines: one checking task bounds every stream's write.

The waits' bounds only catch a hang; nothing here measures time.
"""

from __future__ import annotations

import asyncio

import pytest

from xds_gateway.write_deadlines import WriteDeadlines

TIMEOUT_S = 0.2


class Context:
    """A servicer context whose writes complete when ``release`` is set (at once when it is None)."""

    def __init__(self, release: asyncio.Event | None = None) -> None:
        self.release = release
        self.written: list = []

    async def write(self, payload) -> None:
        if self.release is not None:
            await self.release.wait()
        self.written.append(payload)


async def test_a_write_that_does_not_complete_raises_timeout_error():
    deadlines = WriteDeadlines(TIMEOUT_S)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(deadlines.write(Context(asyncio.Event()), b"x"), 30 * TIMEOUT_S)
    assert deadlines.in_progress() == 0
    assert asyncio.current_task().cancelling() == 0  # its cancellation was taken back


async def test_only_the_stalled_stream_times_out():
    deadlines = WriteDeadlines(TIMEOUT_S)
    stalled = asyncio.create_task(deadlines.write(Context(asyncio.Event()), b"stalled"))
    fine = Context()
    for i in range(20):  # writes that complete keep going meanwhile
        await deadlines.write(fine, i)
        await asyncio.sleep(TIMEOUT_S / 10)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(stalled, 30 * TIMEOUT_S)
    assert fine.written == list(range(20))


async def test_another_cancellation_passes_through_as_cancelled():
    deadlines = WriteDeadlines(30.0)
    task = asyncio.create_task(deadlines.write(Context(asyncio.Event()), b"x"))
    await asyncio.sleep(0)
    task.cancel()  # grpc cancelling the handler: the client reset the stream
    with pytest.raises(asyncio.CancelledError):
        await task
    assert deadlines.in_progress() == 0


async def test_a_completed_write_leaves_no_cancellation_behind():
    deadlines = WriteDeadlines(TIMEOUT_S)
    release = asyncio.Event()

    async def stream() -> str:
        await deadlines.write(Context(release), b"x")
        await asyncio.sleep(2 * TIMEOUT_S)  # a stream waiting for its next request must not be cancelled
        return "served"

    task = asyncio.create_task(stream())
    await asyncio.sleep(0)
    release.set()
    assert await asyncio.wait_for(task, 30 * TIMEOUT_S) == "served"


async def test_the_checking_task_ends_once_no_write_is_in_progress():
    deadlines = WriteDeadlines(TIMEOUT_S)
    await deadlines.write(Context(), b"x")
    assert deadlines._checker is not None
    checker = deadlines._checker
    await asyncio.wait_for(checker, 30 * TIMEOUT_S)
    assert deadlines._checker is None


def test_the_timeout_must_be_positive():
    with pytest.raises(ValueError, match="write timeout must be positive"):
        WriteDeadlines(0)
