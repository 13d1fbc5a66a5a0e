"""Gateway probes answer yes/no within their bound, whatever is (not) listening."""

from __future__ import annotations

import asyncio
import socket
import time

from meshlog.kafka_local import free_port
from proxy import probe


def test_nothing_listening_is_no_gateway_and_no_view():
    dead = f"127.0.0.1:{free_port()}"

    async def run():
        return (await probe.serving_gateways([dead], timeout=1.0),
                await probe.listeners_served(dead, "n", "c", timeout=1.0))

    assert asyncio.run(run()) == ([], None)


def test_a_silent_peer_is_bounded_by_the_timeout():
    with socket.socket() as server:  # accepts TCP, never speaks HTTP/2
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        address = f"127.0.0.1:{server.getsockname()[1]}"
        started = time.monotonic()
        got = asyncio.run(probe.serving_gateways([address], timeout=0.5))
        assert got == [] and time.monotonic() - started < 3
