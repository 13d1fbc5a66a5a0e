"""Story: an app calls a service it never declared, its Envoy asks for the cluster on demand, the first call succeeds.

Everything is real: the session's Kafka broker, the ``projector``, one
``xds-gateway``, Envoy 1.40 under ``meshlog-sidecar run`` subprocesses, small
HTTP apps. ``web<sfx>`` (instance w1) registers depending on nothing;
``ratings<sfx>`` (r1) serves. Then:

- the first GET through web's outbound listener with ``Host: ratings<sfx>``
  (port included, as an HTTP client sends it) is answered by r1: Envoy's
  on-demand filter asked the gateway for the cluster, the gateway held the
  request and appended a learned subscription, the projector rendered it,
  and the held request was answered from the view;
- later calls go through the ordinary virtual host of the new dependency;
- a call to a service that never registered ends in Envoy's "not found"
  after the gateway's hold, and the fold's refusal is recorded;
- ``secret<sfx>`` is restricted to declared callers (an operator's
  destination policy): the local API refuses web's subscription with 409 and
  the reason, and an on-demand call to it fails, each refusal recorded;
- ``replay log`` shows the learned subscription and the refusal, and
  ``replay --at --node`` shows web depending on ratings since then, origin
  ``learned``.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from events import types as t
from events.admin import ensure_topics
from events.envelope import new_event
from events.producer import EventProducer
from meshlog.demo_app import KeepAliveClient
from proxy.envoy_process import dynamic_names
from proxy.subscriptions import call
from tests.integration.test_sidecar_e2e import send, start_sidecar
from tests.integration.test_subscribe_runtime import replay_json
from tests.support.apps import App
from tests.support.stack import start_gateway, start_projector, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.envoy]


def test_first_call_to_an_undeclared_service_succeeds_and_the_learned_dependency_is_in_the_log(kafka_bootstrap,
                                                                                               tmp_path):
    asyncio.run(ensure_topics(kafka_bootstrap))
    sfx = uuid.uuid4().hex[:6]
    web, ratings, nosuch, secret = f"web{sfx}", f"ratings{sfx}", f"nosuch{sfx}", f"secret{sfx}"
    asyncio.run(_operator_appends(kafka_bootstrap, [
        t.InstanceRegistered(service=secret, instance_id="s1", address="127.0.0.1", port=9),
        t.DestinationPolicyUpserted(service=secret, revision=1, restricted=True)]))
    apps = {"r1": App("r1", "v1", ratings).start(), "w1": App("w1", "v1", web).start()}
    started = []
    try:
        started.append(start_projector(kafka_bootstrap, tmp_path))
        gateway = start_gateway(kafka_bootstrap, tmp_path, "gateway")
        started.append(gateway)
        gateways = [f"127.0.0.1:{gateway.info['xds_port']}"]
        r1 = start_sidecar("r1", tmp_path, kafka_bootstrap, gateways, service=ratings, instance="r1",
                           app_port=apps["r1"].port)
        started.append(r1)
        before_ms = int(time.time() * 1000)
        w1 = start_sidecar("w1", tmp_path, kafka_bootstrap, gateways, service=web, instance="w1",
                           app_port=apps["w1"].port, extra=("--api-port", "0", "--subscribe-timeout", "20"))
        started.append(w1)
        # both registrations rendered (so the projector knows ratings), web's outbound listener serving
        for sidecar, node in ((r1, f"{ratings}-r1"), (w1, f"{web}-w1")):
            wait_until(lambda: f"{node}~outbound" in dynamic_names(sidecar.config_dump())["listeners"], 60,
                       f"{node}'s listeners", on_fail=sidecar.log_tail)
        assert ratings not in dynamic_names(w1.config_dump())["clusters"]

        asked = time.monotonic()
        status, body = _one_call(w1.outbound_port, f"{ratings}:{w1.outbound_port}")
        print(f"first call answered after {time.monotonic() - asked:.3f} s")  # measured, not asserted
        assert status == 200, (status, body[:200], gateway.log_tail())
        assert b'"r1"' in body
        assert ratings in dynamic_names(w1.config_dump())["clusters"]
        assert send(w1.outbound_port, ratings, 5) == {"r1": 5}

        # a service nobody registered: held, refused by the fold, then "not found" from Envoy
        assert _one_call(w1.outbound_port, nosuch)[0] == 503  # Envoy's "cluster not found"
        assert nosuch not in dynamic_names(w1.config_dump())["clusters"]

        # restricted: refused through the API (409, the reason) and on demand
        status, answer = call(w1.status()["ports"]["api"], "PUT", secret, 30)
        assert status == 409 and answer["problem"] == "restricted", answer
        assert "restricted to the callers that declare it" in answer["error"]
        assert _one_call(w1.outbound_port, secret)[0] == 503

        # the log holds the facts; replay answers "since when did web depend on ratings?"
        def logged() -> list[dict]:
            log = replay_json(kafka_bootstrap, "log", "--from", f"@{before_ms}", "--to", "now", "--service", web)
            return [e for e in log["entries"] if e["kind"] == "event" and e["type"] == "dependency.subscribed"]

        def refused(dependency: str, origin: str) -> bool:
            return any(e["payload"]["dependency"] == dependency and e["payload"]["origin"] == origin
                       and e["rejection"] for e in logged())

        wait_until(lambda: refused(nosuch, "learned") and refused(secret, "learned"), 30, "the on-demand refusals")
        assert refused(secret, "explicit")
        events = logged()
        learned = [e for e in events if e["payload"]["dependency"] == ratings]
        assert len(learned) == 1 and learned[0]["payload"]["origin"] == "learned" and learned[0]["rejection"] is None
        refused = next(e for e in events if e["payload"]["dependency"] == nosuch)
        assert refused["payload"]["origin"] == "learned" and "unknown service" in refused["rejection"]["reason"]
        since = learned[0]["timestamp_ms"]
        node = replay_json(kafka_bootstrap, "--at", f"@{since}", "--node", f"{web}-w1")
        assert node["instance"]["subscriptions"] == [
            {"dependency": ratings, "origin": "learned", "since": node["instance"]["subscriptions"][0]["since"],
             "since_ms": since}]
        assert ratings in node["resources"]["type.googleapis.com/envoy.config.cluster.v3.Cluster"]
        secret_refusals = [e["rejection"]["reason"] for e in logged() if e["payload"]["dependency"] == secret]
        assert secret_refusals and all("restricted to the callers that declare it" in r for r in secret_refusals)
    finally:
        for process in reversed(started):
            process.stop()
        for app in apps.values():
            app.stop()


async def _operator_appends(bootstrap: str, payloads) -> None:
    async with EventProducer(bootstrap) as producer:
        for payload in payloads:
            await producer.append(new_event(payload))


def _one_call(port: int, host: str) -> tuple[int, bytes]:
    """One GET through the sidecar's outbound listener on a new connection."""
    client = KeepAliveClient(port, timeout=10)
    try:
        return client.get(host)
    finally:
        client.close()
