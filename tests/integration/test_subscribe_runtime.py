"""Story: an app subscribes to a service at run time through its sidecar, and the subscription is in the log.

Everything is real: the session's Kafka broker, the `projector`, one
`xds-gateway`, Envoy 1.40 under `meshlog-sidecar run` subprocesses, small
HTTP apps (``tests.support.apps``). ``web<sfx>`` (instance w1) registers
depending on nothing; ``ratings<sfx>`` (instance r1) serves. Then:

- ``meshlog-sidecar subscribe ratings`` (the CLI, which calls the sidecar's
  local API) returns only once web's Envoy holds the ``ratings`` cluster and
  its endpoints, and the first request through web's sidecar succeeds;
- the API lists it as subscribed; a subscription to a service that never
  registered is answered 404 with the projector's recorded reason;
- ``unsubscribe`` returns once the cluster is gone from web's Envoy; a
  second one is refused (409, not subscribed);
- ``replay log --service web`` shows both events, the refusal of the unknown
  service, and ``replay --at --node`` shows since when web depended on ratings.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from events.admin import ensure_topics
from proxy.envoy_process import dynamic_names
from proxy.subscriptions import call
from tests.integration.test_sidecar_e2e import send, start_sidecar
from tests.support.apps import App
from tests.support.stack import start_gateway, start_projector, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.envoy]

BIN = Path(sys.executable).parent


def sidecar_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "meshlog-sidecar"), *args], capture_output=True, text=True, timeout=60)


def replay_json(bootstrap: str, *args: str) -> dict:
    proc = subprocess.run([str(BIN / "replay"), "--bootstrap", bootstrap, *args, "--json"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


def test_subscribe_at_run_time_then_unsubscribe_and_replay_shows_it(kafka_bootstrap, tmp_path):
    asyncio.run(ensure_topics(kafka_bootstrap))
    sfx = uuid.uuid4().hex[:6]
    web, ratings = f"web{sfx}", f"ratings{sfx}"
    apps = {"r1": App("r1", "v1", ratings).start(), "w1": App("w1", "v1", web).start()}
    started = []
    try:
        started.append(start_projector(kafka_bootstrap, tmp_path))
        gateway = start_gateway(kafka_bootstrap, tmp_path, "gateway")
        started.append(gateway)
        gateways = [f"127.0.0.1:{gateway.info['xds_port']}"]
        started.append(start_sidecar("r1", tmp_path, kafka_bootstrap, gateways, service=ratings, instance="r1",
                                     app_port=apps["r1"].port))
        before_ms = int(time.time() * 1000)
        w1 = start_sidecar("w1", tmp_path, kafka_bootstrap, gateways, service=web, instance="w1",
                           app_port=apps["w1"].port, extra=("--api-port", "0", "--subscribe-timeout", "20"))
        started.append(w1)
        wait_until(lambda: w1.status()["registered"] and w1.status()["ports"]["api"], 30, "web registered",
                   on_fail=w1.log_tail)
        api_port = w1.status()["ports"]["api"]
        assert ratings not in dynamic_names(w1.config_dump())["clusters"]

        # ratings' registration must be folded before a subscription to it can be accepted
        def ratings_known() -> bool:
            status, body = call(api_port, "PUT", ratings, 30)
            assert status in (200, 404), body
            return status == 200

        subscribe = sidecar_cli("subscribe", ratings, "--status-file", str(w1.status_file))
        if subscribe.returncode != 0:
            assert "unknown service" in subscribe.stderr, subscribe.stderr
            wait_until(ratings_known, 30, "ratings to be known to the projector", interval=0.5, on_fail=w1.log_tail)
        else:
            answer = json.loads(subscribe.stdout)
            assert answer["result"] == f"subscribed: Envoy holds {ratings}"
            print(f"subscribe answered after {answer['seconds']} s")  # measured, not asserted
        # it returned only after Envoy held the cluster and its endpoints: the first request succeeds
        names = dynamic_names(w1.config_dump())
        assert ratings in names["clusters"] and ratings in names["endpoints"]
        assert send(w1.outbound_port, ratings, 5) == {"r1": 5}

        listing = json.loads(sidecar_cli("subscriptions", "--api-port", str(api_port)).stdout)
        assert listing["subscribed"] == [ratings] and listing["declared"] == []

        status, body = call(api_port, "PUT", f"nosuch{sfx}", 30)
        assert status == 404, body
        assert body["problem"] == "unknown_service" and "no instance of it has ever registered" in body["error"]

        unsubscribe = sidecar_cli("unsubscribe", ratings, "--api-port", str(api_port))
        assert unsubscribe.returncode == 0, unsubscribe.stderr + started[0].log_tail()
        print(f"unsubscribe answered after {json.loads(unsubscribe.stdout)['seconds']} s")
        assert ratings not in dynamic_names(w1.config_dump())["clusters"]
        again = sidecar_cli("unsubscribe", ratings, "--api-port", str(api_port))
        assert again.returncode == 1 and "is not subscribed to" in again.stderr
        bad = sidecar_cli("subscribe", "Not_A_Name", "--api-port", str(api_port))
        assert bad.returncode == 2 and "must be a lowercase DNS-style name" in bad.stderr

        # the log holds the facts; replay answers "since when did web depend on ratings?"
        log = replay_json(kafka_bootstrap, "log", "--from", f"@{before_ms}", "--to", "now", "--service", web)
        events = [e for e in log["entries"] if e["kind"] == "event"]
        types = [(e["type"], e["payload"].get("dependency")) for e in events]
        assert ("dependency.subscribed", ratings) in types and ("dependency.unsubscribed", ratings) in types
        refused = [e for e in events if e["payload"].get("dependency") == f"nosuch{sfx}"]
        assert refused and "unknown service" in refused[0]["rejection"]["reason"]
        subscribed_at = next(e["timestamp_ms"] for e in events if e["type"] == "dependency.subscribed"
                             and e["rejection"] is None)
        node = replay_json(kafka_bootstrap, "--at", f"@{subscribed_at}", "--node", f"{web}-w1")
        assert node["instance"]["subscriptions"] == [
            {"dependency": ratings, "origin": "explicit", "since": node["instance"]["subscriptions"][0]["since"],
             "since_ms": subscribed_at}]
        assert ratings in node["resources"]["type.googleapis.com/envoy.config.cluster.v3.Cluster"]
    finally:
        for process in reversed(started):
            process.stop()
        for app in apps.values():
            app.stop()
