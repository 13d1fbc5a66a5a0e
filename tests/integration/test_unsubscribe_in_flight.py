"""Story: unsubscribing removes a service from the node while requests to it are in flight, and none of them fails.

Real Kafka, ``projector``, ``xds-gateway``, two ``meshlog-sidecar run``
(Envoy 1.40). ``ratings<sfx>``'s app answers ``/slow`` after
``SLOW_S`` seconds. ``web<sfx>`` subscribes to ratings through its
sidecar's API, starts ``IN_FLIGHT`` slow requests through its outbound
listener, and -- once the app holds all of them -- unsubscribes. The
unsubscribe answers only when web's Envoy no longer serves ratings (route
gone first, cluster last: make before break); every request that was in
flight still completes with 200.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from events.admin import ensure_topics
from meshlog.demo_app import KeepAliveClient
from proxy.envoy_process import dynamic_names
from proxy.subscriptions import call
from tests.integration.test_sidecar_e2e import start_sidecar
from tests.support.stack import start_gateway, start_projector, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.envoy]

SLOW_S = 10.0  # long enough for the unsubscribe to land while they wait, even on a loaded machine
IN_FLIGHT = 6


class _SlowApp:
    """An HTTP app whose ``/slow`` answers after ``SLOW_S``; ``started`` counts requests it is holding or held."""

    def __init__(self) -> None:
        app = self
        self.started = 0
        self._lock = threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                if self.path == "/slow":
                    with app._lock:
                        app.started += 1
                    time.sleep(SLOW_S)
                body = json.dumps({"instance": "r1", "path": self.path}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_unsubscribe_removes_the_cluster_without_failing_a_request_in_flight(kafka_bootstrap, tmp_path):
    asyncio.run(ensure_topics(kafka_bootstrap))
    sfx = uuid.uuid4().hex[:6]
    web, ratings = f"web{sfx}", f"ratings{sfx}"
    slow = _SlowApp()
    started = []
    try:
        started.append(start_projector(kafka_bootstrap, tmp_path))
        gateway = start_gateway(kafka_bootstrap, tmp_path, "gateway")
        started.append(gateway)
        gateways = [f"127.0.0.1:{gateway.info['xds_port']}"]
        r1 = start_sidecar("r1", tmp_path, kafka_bootstrap, gateways, service=ratings, instance="r1", app_port=slow.port)
        started.append(r1)
        w1 = start_sidecar("w1", tmp_path, kafka_bootstrap, gateways, service=web, instance="w1", app_port=slow.port,
                           extra=("--api-port", "0", "--subscribe-timeout", "20"))
        started.append(w1)
        wait_until(lambda: w1.status()["registered"] and w1.status()["ports"]["api"], 30, "web registered",
                   on_fail=w1.log_tail)
        api_port = w1.status()["ports"]["api"]

        def subscribed() -> bool:
            status, body = call(api_port, "PUT", ratings, 30)
            assert status in (200, 404), body  # 404 until ratings' registration is folded
            return status == 200

        wait_until(subscribed, 60, "web subscribed to ratings", interval=0.5, on_fail=w1.log_tail)

        results: list[tuple[int, bytes] | BaseException] = []

        def one_slow_call() -> None:
            client = KeepAliveClient(w1.outbound_port, timeout=SLOW_S + 20)
            try:
                results.append(client.get(ratings, "/slow"))
            except BaseException as exc:  # noqa: BLE001 - recorded and asserted below
                results.append(exc)
            finally:
                client.close()

        callers = [threading.Thread(target=one_slow_call) for _ in range(IN_FLIGHT)]
        for caller in callers:
            caller.start()
        wait_until(lambda: slow.started == IN_FLIGHT, SLOW_S, "every slow request to reach the app")

        status, body = call(api_port, "DELETE", ratings, 30)
        assert status == 200, body
        assert slow.started == IN_FLIGHT and any(c.is_alive() for c in callers), \
            "the unsubscribe must land while requests are in flight"
        assert ratings not in dynamic_names(w1.config_dump())["clusters"]
        for caller in callers:
            caller.join(SLOW_S + 30)
        assert [r[0] if isinstance(r, tuple) else repr(r) for r in results] == [200] * IN_FLIGHT
    finally:
        for process in reversed(started):
            process.stop()
        slow.stop()
