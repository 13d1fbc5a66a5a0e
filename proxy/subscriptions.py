"""The sidecar's local subscription API: the app asks its sidecar for a service at run time.

HTTP/1.1 on 127.0.0.1 only (``meshlog-sidecar run --api-port``)::

    PUT    /v1/subscriptions/<service>   subscribe   (POST is accepted too)
    DELETE /v1/subscriptions/<service>   unsubscribe
    GET    /v1/subscriptions             what this instance depends on now

and the same from a shell: ``meshlog-sidecar subscribe NAME`` /
``unsubscribe NAME`` / ``subscriptions`` (``proxy.cli``), which call this API:
one code path.

Invariants:
- A subscription is a fact in the log: subscribing appends
  ``DependencySubscribed`` (unsubscribing ``DependencyUnsubscribed``) for this
  instance, validated by the same payload type the fold reads and appended
  with the events package's idempotent producer, as the registration is.
  Nothing here decides whether it is valid: the projector's fold does, and a
  refusal is a ``SubscriptionRejected`` (or, when the fold refused the
  event for who signed it, an ``EventRefused``: 403) on the rejections topic
  naming the event's log position, which is how the answer finds it.
- An answer comes only once the outcome is visible, and always within the
  bounded wait (``--subscribe-timeout``):
  200 Envoy holds it (subscribe: the cluster, its endpoints, and the outbound
  route's virtual host or the TCP listener; unsubscribe: neither the virtual
  host nor the TCP listener any more — when Envoy did not serve it to begin
  with, only the fold can answer: a refusal, else 200 after the wait); 404 unknown service; 409 refused for
  another recorded reason (declared at registration, not subscribed, a
  service restricted to its declared callers, the
  instance not registered); 400 not a service name; 503 the sidecar cannot
  ask yet (not registered, no broker, no Envoy); 504 timed out (the event is
  in the log; Envoy did not show the change in time).
- The listing reads what Envoy holds (``/config_dump``), not a copy kept here:
  ``declared`` are the registration's ``depends_on``, ``subscribed`` the other
  services the outbound route or a TCP listener serves.
- Every reply is JSON (escaped by the encoder); what a client sent is echoed
  only after validation or cut to 64 characters.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from typing import Callable
from urllib.parse import unquote

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from events import topics
from events import types as t
from events.admin import BrokerUnavailable
from events.codec import decode_record, validate_payload
from events.envelope import new_event
from events.errors import EventValidationError
from events.printable import printable, quoted
from events.kafka_security import connection_kwargs
from events.producer import EventProducer
from projector import naming
from proxy import local_http
from proxy.envoy_process import EnvoyProcess, dynamic_names
from proxy.registration import producer_identity

log = logging.getLogger("meshlog.sidecar.subscriptions")

PREFIX = "/v1/subscriptions"
POLL_S = 0.1
_ECHO_MAX = 64
_PROBLEM_STATUS = {"unknown_service": 404, "unknown_instance": 409, "declared": 409, "not_subscribed": 409,
                   "restricted": 409}


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    body: dict


# ------------------------------------------------------------------ pure parts


@dataclass(frozen=True, slots=True)
class Request:
    action: str  # "subscribe" | "unsubscribe" | "list"
    dependency: str | None = None


def parse_request(method: str, path: str) -> Request | Reply:
    """The request line's method and path -> what is asked, or the error reply."""
    path = path.split("?", 1)[0]
    if path.rstrip("/") == PREFIX:
        if method != "GET":
            return Reply(405, {"error": f"{printable(method, _ECHO_MAX)} {PREFIX}: use GET to list, PUT or DELETE "
                               f"{PREFIX}/<service> to change"})
        return Request("list")
    if not path.startswith(PREFIX + "/"):
        return Reply(400, {"error": f"unknown path {quoted(path, _ECHO_MAX)}: use {PREFIX} or {PREFIX}/<service>"})
    name = unquote(path[len(PREFIX) + 1:])
    if method in ("PUT", "POST"):
        action = "subscribe"
    elif method == "DELETE":
        action = "unsubscribe"
    else:
        return Reply(405, {"error": f"{printable(method, _ECHO_MAX)} {PREFIX}/<service>: use PUT to subscribe, DELETE to "
                           "unsubscribe"})
    try:  # the dependency field's own rule, so the API refuses exactly what the event type refuses
        validate_payload(t.DependencyUnsubscribed, {"service": "x", "instance_id": "x", "dependency": name})
    except EventValidationError as exc:
        return Reply(400, {"error": f"service {quoted(name, _ECHO_MAX)}: {exc.problems[0].problem}"})
    return Request(action, name)


def held_dependencies(dump: dict, node_id: str) -> set[str]:
    """The services Envoy serves this node's app: outbound route virtual hosts and TCP listeners."""
    out: set[str] = set()
    route = naming.outbound_route(node_id)
    tcp_prefix = naming.tcp_listener(node_id, "")
    for config in dump.get("configs", []):
        kind = config.get("@type", "")
        if kind.endswith("RoutesConfigDump"):
            for r in config.get("dynamic_route_configs", []):
                rc = r.get("route_config", {})
                if rc.get("name") == route:
                    # a virtual host named like a per-node resource is no service's (the on-demand catch-all)
                    out.update(vh.get("name", "") for vh in rc.get("virtual_hosts", [])
                               if not naming.is_per_node(vh.get("name", "")))
        elif kind.endswith("ListenersConfigDump"):
            for listener in config.get("dynamic_listeners", []):
                name = listener.get("name", "")
                if name.startswith(tcp_prefix) and listener.get("active_state"):
                    out.add(name[len(tcp_prefix):])
    out.discard("")
    return out


def holds(dump: dict, node_id: str, service: str) -> bool:
    """Envoy can serve the app's calls to ``service``: cluster, endpoints, and a route or listener to it."""
    names = dynamic_names(dump)
    return (service in names["clusters"] and service in names["endpoints"]
            and service in held_dependencies(dump, node_id))


def rejection_reply(j: t.SubscriptionRejected | t.EventRefused) -> Reply:
    if isinstance(j, t.EventRefused):  # refused for its author (projector.authz): this sidecar may not say it
        return Reply(403, {"error": j.reason, "problem": j.problem, "author": j.author,
                           "event": {"topic": j.source_topic, "partition": j.source_partition,
                                     "offset": j.source_offset}})
    return Reply(_PROBLEM_STATUS.get(j.problem, 409), {
        "error": j.reason, "problem": j.problem, "dependency": j.dependency, "action": j.action,
        "event": {"topic": j.source_topic, "partition": j.source_partition, "offset": j.source_offset},
    })


# ------------------------------------------------------------------ the service


class SubscriptionService:
    """Subscribe/unsubscribe/list for one sidecar; ``envoy()`` gives the Envoy running now (or None)."""

    def __init__(self, *, registration: t.InstanceRegistered, bootstrap: str, envoy: Callable[[], EnvoyProcess | None],
                 registered: Callable[[], bool], timeout_s: float = 10.0, append_timeout_s: float = 5.0) -> None:
        self.reg = registration
        self.node_id = registration.node_id or ""
        self.bootstrap = bootstrap
        self.envoy = envoy
        self.registered = registered
        self.timeout_s = timeout_s
        self.append_timeout_s = append_timeout_s

    async def handle(self, req: Request) -> Reply:
        if req.action == "list":
            return await self.listing()
        if not self.registered():
            return Reply(503, {"error": "this instance is not registered yet; retry shortly"})
        if self.envoy() is None:
            return Reply(503, {"error": "Envoy is not running"})
        assert req.dependency is not None
        started = time.monotonic()
        payload: t.Payload
        if req.action == "subscribe":
            payload = t.DependencySubscribed(service=self.reg.service, instance_id=self.reg.instance_id,
                                             dependency=req.dependency, origin="explicit")
        else:
            payload = t.DependencyUnsubscribed(service=self.reg.service, instance_id=self.reg.instance_id,
                                               dependency=req.dependency)
        try:
            reply = await asyncio.wait_for(self._append_and_wait(payload, req), self.timeout_s + self.append_timeout_s)
        except asyncio.TimeoutError:
            reply = Reply(504, {"error": f"timed out after {self.timeout_s:g} s"})
        reply.body.setdefault("dependency", req.dependency)
        reply.body["seconds"] = round(time.monotonic() - started, 3)
        return reply

    async def _append_and_wait(self, payload: t.Payload, req: Request) -> Reply:
        consumer = AIOKafkaConsumer(**connection_kwargs(self.bootstrap), enable_auto_commit=False,
                                    isolation_level="read_committed",
                                    request_timeout_ms=int(self.append_timeout_s * 1000))
        # Unsubscribing what Envoy does not serve: "Envoy no longer serves it" holds already and says nothing;
        # the fold's answer (most likely a refusal) is the only signal
        dump = await self._dump()
        served_before = dump is not None and req.dependency in held_dependencies(dump, self.node_id)
        watch_envoy = req.action == "subscribe" or served_before
        try:
            try:
                await asyncio.wait_for(consumer.start(), self.append_timeout_s)
                tps = [TopicPartition(topics.REJECTIONS, p)
                       for p in range(topics.BY_NAME[topics.REJECTIONS].partitions)]
                consumer.assign(tps)
                await consumer.seek_to_end(*tps)  # a decision about our event comes after this
                # bounded: a broker that refuses this read (ACLs) would otherwise hold the lookup for the whole wait
                await asyncio.wait_for(asyncio.gather(*(consumer.position(tp) for tp in tps)), self.append_timeout_s)
                async with EventProducer(self.bootstrap, timeout_s=self.append_timeout_s) as producer:
                    appended = await producer.append(new_event(payload, producer=producer_identity(self.node_id)))
            except (BrokerUnavailable, KafkaError, OSError, asyncio.TimeoutError) as exc:
                return Reply(503, {"error": f"the subscription could not be appended: {exc}"})
            where = {"topic": appended.topic, "partition": appended.partition, "offset": appended.offset}
            log.info("%s %s appended at %s/%d/%d", payload.TYPE, req.dependency, appended.topic, appended.partition,
                     appended.offset)
            rejected = asyncio.create_task(self._rejection_of(consumer, (appended.topic, appended.partition,
                                                                         appended.offset)))
            visible = asyncio.create_task(self._envoy_shows(req) if watch_envoy else asyncio.Event().wait())
            try:
                done, _ = await asyncio.wait({rejected, visible}, timeout=self.timeout_s,
                                             return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in (rejected, visible):
                    task.cancel()
                await asyncio.gather(rejected, visible, return_exceptions=True)
            if rejected in done and rejected.exception() is None:
                return rejection_reply(rejected.result())
            if visible in done and visible.exception() is None:
                verb = "holds" if req.action == "subscribe" else "no longer serves"
                return Reply(200, {"result": f"{req.action}d: Envoy {verb} {req.dependency}", "event": where})
            if not watch_envoy:
                return Reply(200, {"result": f"unsubscribed: Envoy did not serve {req.dependency}, and no refusal "
                                   f"was recorded within {self.timeout_s:g} s", "event": where})
            return Reply(504, {"error": f"the {payload.TYPE} event is in the log but Envoy did not "
                               f"{'hold' if req.action == 'subscribe' else 'drop'} {req.dependency!r} within "
                               f"{self.timeout_s:g} s (is the projector running?)", "event": where})
        finally:
            try:
                await asyncio.wait_for(consumer.stop(), self.append_timeout_s)
            except Exception:  # noqa: BLE001 - closing after an answer must not change it
                pass

    @staticmethod
    async def _rejection_of(consumer: AIOKafkaConsumer,
                            source: tuple[str, int, int]) -> t.SubscriptionRejected | t.EventRefused:
        while True:
            batches = await consumer.getmany(timeout_ms=200)
            for records in batches.values():
                for record in records:
                    try:
                        j = decode_record(record).payload
                    except EventValidationError:
                        continue
                    if isinstance(j, (t.SubscriptionRejected, t.EventRefused)) and (
                            j.source_topic, j.source_partition, j.source_offset) == source:
                        return j

    async def _dump(self) -> dict | None:
        envoy = self.envoy()
        if envoy is None:
            return None
        try:
            return await asyncio.to_thread(envoy.config_dump)
        except (OSError, ValueError):
            return None

    async def _envoy_shows(self, req: Request) -> None:
        assert req.dependency is not None
        while True:
            dump = await self._dump()
            if dump is not None:
                if req.action == "subscribe" and holds(dump, self.node_id, req.dependency):
                    return
                if req.action == "unsubscribe" and req.dependency not in held_dependencies(dump, self.node_id):
                    return
            await asyncio.sleep(POLL_S)

    async def listing(self) -> Reply:
        dump = await self._dump()
        if dump is None:
            return Reply(503, {"error": "Envoy's admin did not answer"})
        held = held_dependencies(dump, self.node_id)
        declared = sorted(self.reg.depends_on)
        return Reply(200, {"node_id": self.node_id, "declared": declared,
                           "subscribed": sorted(held - set(declared)),
                           "declared_not_yet_served": sorted(set(declared) - held)})


# ------------------------------------------------------------------ HTTP on 127.0.0.1


async def serve(service: SubscriptionService, port: int) -> asyncio.AbstractServer:
    """Start the API on 127.0.0.1:``port`` (0 picks one: read it from the server's socket)."""

    async def handle(method: str, path: str) -> tuple[int, str, bytes]:
        parsed = parse_request(method, path)
        reply = parsed if isinstance(parsed, Reply) else await service.handle(parsed)
        return reply.status, "application/json", (json.dumps(reply.body, indent=1) + "\n").encode()

    return await local_http.serve(handle, port)


# ------------------------------------------------------------------ the client (``meshlog-sidecar subscribe``)


def call(port: int, method: str, dependency: str | None, timeout_s: float) -> tuple[int, dict]:
    """One request to a sidecar's API on 127.0.0.1:``port``: (HTTP status, JSON body). Blocking."""
    import http.client
    from urllib.parse import quote

    path = PREFIX if dependency is None else f"{PREFIX}/{quote(dependency, safe='')}"
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout_s)
    try:
        conn.request(method, path)
        resp = conn.getresponse()
        raw = resp.read(1 << 20)
    finally:
        conn.close()
    try:
        body = json.loads(raw)
    except ValueError:
        body = {"error": f"not JSON: {raw[:200]!r}"}
    return resp.status, body if isinstance(body, dict) else {"error": f"unexpected reply {str(body)[:200]}"}
