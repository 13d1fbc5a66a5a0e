"""The demo's scripted scenes. Each one acts on the real mesh, measures what
the client app saw, and reports checks that can fail.

Scenes, in order (``--scene`` picks some; the mesh is always started first):

- ``baseline``          no rule: web's Envoy balances over all three reviews instances
- ``canary``            route rule v1/v2 = 90/10, then 50/50, then 100/0 (rolled back to v1)
- ``failing-instance``  reviews-v1-b starts failing: the central checkers log it unhealthy
                        and traffic leaves it; it recovers and traffic returns
- ``gateway-kill``      kill -9 of the gateway web's Envoy streams from: no request fails,
                        and config still flows through the other replica
- ``impostor``          (secure only) another instance's valid certificate asks a gateway for
                        web's node: PERMISSION_DENIED, nothing of web's config; a plaintext
                        client: refused; web's sidecar certificate renewed during traffic:
                        Envoy presents the new one (file SDS), no request fails
- ``on-demand``         web starts calling ``ratings``, which it never declared: a
                        ``ratings`` instance starts, web's first call to it succeeds (its
                        Envoy asked the gateway on demand), the event log holds web's
                        learned dependency and ``replay at --node web-1`` shows since when
- ``undeclared``        (secure only) a process holding a valid sidecar certificate of
                        ``ratings``, which declared no dependency on reviews, calls a reviews
                        sidecar: 403 from its RBAC (counted in its Envoy), web's own calls
                        pass; an operator's access policy opens reviews to ratings, and
                        deleting it closes the door again; no request of web fails
- ``forged``            (secure only) a process holding ratings-1's valid certificate appends, signed
                        with it, a registration of itself as an instance of reviews at its own
                        address with weight 128, and a re-registration claiming web-1's node id:
                        the projector's fold refuses both (``event.refused``, shown by ``replay log``
                        with the verified author), web's Envoy never holds the forged address and
                        no request of web fails
- ``broker-kill``       (``--brokers 3`` only) kill -9 the Kafka node leading ``meshlog.registrations``
                        while traffic flows and registrations are appended: no request fails,
                        every acknowledged append is in the log, the node restarts and is back in
                        sync (``meshlog.demo.broker_kill``)
- ``replay``            ``replay at`` an instant from the start and from the canary,
                        and ``replay diff`` of the whole run (the real ``replay`` CLI);
                        ``meshlog status`` and the last convergences of rule changes
                        (``replay log``: from each rule's append to the last proxy's ACK)

Invariants:
- Every wait is bounded; a scene that times out reports a failed check and the
  demo goes on to the next one (and exits 1 at the end).
- Rules go through ``events.producer`` (the registrar's own path), as one
  transaction; a scene waits until web's Envoy *holds* the new route before it
  measures, so a split is never measured across a change.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable, Protocol

from events.envelope import new_event
from events.producer import EventProducer
from identity import pki
from events.types import (
    AccessPolicyDeleted,
    AccessPolicyUpserted,
    DestinationPolicyUpserted,
    HttpRoute,
    InstanceRegistered,
    RouteRuleUpserted,
    Subset,
    WeightedDestination,
)
from meshlog.demo.broker_kill import broker_kill
from meshlog.demo.events_tail import EventTail
from meshlog.demo.stack import REPLAY_IDENTITY, DemoStack
from meshlog.demo.traffic import Traffic
from meshlog.demo_app import KeepAliveClient, classify
from meshlog.procs import BIN, wait_until
from replay.text import WIDTH_VAR

SCENES = ("baseline", "canary", "failing-instance", "gateway-kill", "impostor", "on-demand", "undeclared", "forged",
          "broker-kill", "replay")
PRODUCER = "meshlog-demo"
ROUTE_DUMP = "dynamic_route_configs"


class Reporter(Protocol):
    def scene(self, name: str, title: str) -> None: ...
    def step(self, text: str) -> None: ...
    def check(self, name: str, ok: bool, detail: str) -> None: ...
    def block(self, title: str, text: str) -> None: ...
    block_width: int  # columns a block's text may use


@dataclass
class Demo:
    stack: DemoStack
    traffic: Traffic
    tail: EventTail
    report: Reporter
    pace: float = 6.0
    marks: dict[str, float] = field(default_factory=dict)
    revision: int = 0

    @property
    def web(self):
        return self.stack.sidecars["web-1"]

    def measure(self, what: str) -> "object":
        """Count what the client sees for ``pace`` seconds from now."""
        since = time.time()
        self.report.step(f"measuring {what} for {self.pace:g} s…")
        time.sleep(self.pace)
        return self.traffic.window(since, time.time())


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def split_text(window) -> str:
    parts = [f"{inst}={n}" for inst, n in sorted(window.by_instance.items())]
    return f"{window.requests} requests, {window.errors} errors; " + ", ".join(parts)


# ---------------------------------------------------------------- Envoy and replay readings


def route_weights(route_configs: list[dict], host: str) -> dict[str, int] | None:
    """Cluster -> weight of the first route of the virtual host serving ``host`` (None if there is none).

    Works on Envoy's /config_dump route configs and on ``replay --full --json``
    bodies alike: both are protobuf JSON with the proto field names.
    """
    for config in route_configs:
        for vhost in config.get("virtual_hosts", []):
            if host not in vhost.get("domains", []) and f"{host}:*" not in vhost.get("domains", []):
                continue
            for route in vhost.get("routes", []):
                action = route.get("route") or {}
                if "cluster" in action:
                    return {action["cluster"]: 100}
                if "weighted_clusters" in action:
                    return {c["name"]: int(c.get("weight", 0)) for c in action["weighted_clusters"].get("clusters", [])}
    return None


def envoy_route_weights(sidecar, host: str) -> dict[str, int] | None:
    dump = sidecar.config_dump(ROUTE_DUMP)
    configs = [c.get("route_config", {}) for c in dump.get("configs", [])]
    return route_weights(configs, host)


def expected_weights(host: str, v1: int, v2: int) -> dict[str, int]:
    """A v1/v2 split as any route holding it reads: zero-weight subsets absent, a lone one at 100."""
    live = {f"{host}|v1": v1, f"{host}|v2": v2}
    live = {k: w for k, w in live.items() if w > 0}
    return {next(iter(live)): 100} if len(live) == 1 else live


def replay_cli(demo: Demo, *args: str, json_out: bool = False) -> tuple[int, str]:
    argv = [str(BIN / "replay"), *args, "--bootstrap", demo.stack.bootstrap, "--no-progress",
            *demo.stack.event_flags()]
    if json_out:
        argv.append("--json")
    # its tables are printed inside the demo's own output, as wide as that has room for (a panel on the live
    # screen; 200 columns in the headless lines): wider lines would wrap and break the tables' box edges
    width = str(demo.report.block_width)
    result = subprocess.run(argv, capture_output=True, text=True, timeout=120,
                            env={**os.environ, **demo.stack.kafka_env(REPLAY_IDENTITY), WIDTH_VAR: width})
    return result.returncode, result.stdout + (result.stderr if result.returncode else "")


# ---------------------------------------------------------------- actions


def append_rules(demo: Demo, payloads) -> None:
    async def go():
        async with EventProducer(demo.stack.bootstrap, transactional=True) as producer:
            await producer.append_many([new_event(p, producer=PRODUCER) for p in payloads])

    asyncio.run(go())


def set_split(demo: Demo, v1: int, v2: int, first: bool) -> bool:
    host = demo.stack.reviews
    demo.revision += 1
    payloads = []
    if first:
        payloads.append(DestinationPolicyUpserted(
            service=host, revision=1,
            subsets=(Subset(name="v1", labels={"version": "v1"}), Subset(name="v2", labels={"version": "v2"}))))
    payloads.append(RouteRuleUpserted(host=host, revision=demo.revision, routes=(HttpRoute(destinations=(
        WeightedDestination(subset="v1", weight=v1), WeightedDestination(subset="v2", weight=v2))),)))
    appended_at = time.time()
    append_rules(demo, payloads)
    demo.report.step(f"appended route rule rev {demo.revision}: {host} v1={v1} v2={v2}"
                     + (" (with the v1/v2 subsets policy)" if first else ""))
    want = expected_weights(host, v1, v2)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if envoy_route_weights(demo.web, host) == want:
                demo.report.step(f"web's Envoy holds the new route {time.time() - appended_at:.2f} s after the append")
                return True
        except (OSError, ValueError):
            pass
        time.sleep(0.1)
    demo.report.check(f"route {v1}/{v2} reached web's Envoy", False, "not within 30 s")
    return False


# ---------------------------------------------------------------- scenes


def baseline(demo: Demo) -> None:
    demo.report.scene("baseline", "no route rule yet: web's Envoy balances over all three reviews instances")
    window = demo.measure("the default route")
    everyone = all(window.by_instance.get(i, 0) > 0 for i in ("reviews-v1-a", "reviews-v1-b", "reviews-v2-a"))
    demo.report.check("all three instances serve", everyone and window.errors == 0, split_text(window))
    demo.marks["baseline"] = time.time()


def canary(demo: Demo) -> None:
    demo.report.scene("canary", "canary v2 at 10 %, then 50 %, then rolled back: v1/v2 = 90/10 → 50/50 → 100/0")
    bands = {(90, 10): (0.02, 0.25), (50, 50): (0.30, 0.70), (100, 0): (0.0, 0.0)}
    for i, ((v1, v2), (low, high)) in enumerate(bands.items()):
        if not set_split(demo, v1, v2, first=i == 0):
            continue
        demo.marks[f"canary-{v1}-{v2}"] = time.time()
        window = demo.measure(f"the {v1}/{v2} split")
        share = window.share("v2")
        demo.report.check(f"v1/v2 {v1}/{v2}", window.requests > 0 and window.errors == 0 and low <= share <= high,
                          f"v2 got {share:.1%} (expected {low:.0%}–{high:.0%}); {split_text(window)}")


def _health_event(demo: Demo, instance: str, status: str, timeout: float, since: float):
    """The first ``status`` health event of ``instance`` logged at or after ``since`` (a checker may have
    logged one before: under load a probe can time out while the mesh starts)."""
    key = f"{demo.stack.reviews}/{instance}"
    return demo.tail.wait_for(lambda e: e.type == "instance.health_changed" and e.key == key
                              and e.payload.status == status and e.log_time >= since, timeout)


def failing_instance(demo: Demo) -> None:
    demo.report.scene("failing-instance", "reviews-v1-b starts failing (503 on every request, its /healthz too)")
    app = demo.stack.apps["reviews-v1-b"]
    failed_at = time.time()
    app.failing = True
    demo.report.step("reviews-v1-b is failing; the central checkers probe every 0.5 s and need 3 failures")
    event = _health_event(demo, "reviews-v1-b", "unhealthy", 30, since=failed_at)
    if event is None:
        demo.report.check("checker logged reviews-v1-b unhealthy", False, "no health event within 30 s")
        app.failing = False
        return
    before = demo.traffic.window(failed_at, event.log_time + 1.0)
    demo.report.check("checker logged reviews-v1-b unhealthy", True,
                      f"{event.log_time - failed_at:.2f} s after it began failing, by {event.payload.observer}; "
                      f"{before.errors} requests failed until Envoy had the verdict")
    time.sleep(max(0.0, event.log_time + 1.0 - time.time()))
    window = demo.measure("traffic with reviews-v1-b unhealthy")
    demo.report.check("no request reaches reviews-v1-b, none fails",
                      window.requests > 0 and window.by_instance.get("reviews-v1-b", 0) == 0 and window.errors == 0,
                      split_text(window))
    demo.marks["failing"] = time.time()


def recover(demo: Demo, what: str) -> None:
    app = demo.stack.apps["reviews-v1-b"]
    healed_at = time.time()
    app.failing = False
    demo.report.step("reviews-v1-b recovers; the checkers need 2 good probes")
    event = _health_event(demo, "reviews-v1-b", "healthy", 30, since=healed_at)
    returned = demo.traffic.wait_for(lambda w: w.by_instance.get("reviews-v1-b", 0) > 0, 30) if event else None
    demo.report.check(f"reviews-v1-b back in service {what}", event is not None and returned is not None,
                      f"healthy logged {event.log_time - healed_at:.2f} s after recovery by {event.payload.observer}"
                      if event else "no healthy event within 30 s")


def gateway_kill(demo: Demo) -> None:
    demo.report.scene("gateway-kill", "kill -9 the gateway replica web's Envoy streams from")
    stack = demo.stack
    by_address = {f"127.0.0.1:{port}": name for name, port in stack.gateway_ports.items()}
    try:
        connected = [by_address[a] for a in demo.web.connected_gateways() if a in by_address]
    except OSError:
        connected = []
    victim = connected[0] if connected else next(iter(stack.gateways))
    port = stack.gateway_ports[victim]
    stack.gateways[victim].kill9()
    demo.report.step(f"killed {victim} (127.0.0.1:{port}) with SIGKILL; web's Envoy reconnects to the other replica")
    window = demo.measure("traffic after the kill")
    demo.report.check("no request fails after the kill", window.requests > 0 and window.errors == 0, split_text(window))
    try:
        now_on = [by_address.get(a, a) for a in demo.web.connected_gateways()]
    except OSError:
        now_on = []
    demo.report.step(f"web's Envoy now streams from: {', '.join(now_on) or 'no gateway yet'}")
    if "failing" in demo.marks:
        recover(demo, "through the surviving gateway")
    demo.report.step(f"scaling back up: a new replica on 127.0.0.1:{port}")
    del stack.gateways[victim]
    stack.start_gateway(victim + "-new", port)
    del stack.gateway_ports[victim]


def presented_serials(sidecar) -> set[int]:
    """Serials of the certificates Envoy's TLS contexts hold now (its admin ``/certs``)."""
    doc = json.loads(sidecar.admin("/certs"))
    return {int(c["serial_number"], 16) for ctx in doc.get("certificates", ()) for c in ctx.get("cert_chain", ())}


def impostor(demo: Demo) -> None:
    import grpc

    from meshlog.demo.impostor import ask_for_node

    stack = demo.stack
    if stack.trust is None:
        demo.report.scene("impostor", "skipped: the demo runs --insecure (no identities to check)")
        return
    demo.report.scene("impostor", "who may have web's config? only web's own sidecar identity")
    address = stack.gateway_addresses()[0]
    thief = stack.sidecar_identity(stack.reviews, "reviews-v1-a")
    demo.report.step(f"a client holding reviews-v1-a's valid certificate asks {address} for node web-1")
    attempt = ask_for_node(address, "web-1", thief)
    demo.report.check("another instance's certificate gets PERMISSION_DENIED for web's node",
                      attempt.refused_with(grpc.StatusCode.PERMISSION_DENIED), attempt.detail())
    demo.report.step(f"a plaintext client asks {address} for node web-1")
    attempt = ask_for_node(address, "web-1", None)
    demo.report.check("a plaintext client is refused", attempt.status is not None and attempt.responses == 0,
                      attempt.detail())
    if stack.ca_url and f"sidecar/{stack.web}/web-1" in stack.trust.redeemed:
        demo.report.step(f"the join token web-1 enrolled with is presented again at {stack.ca_url}")
        refused = stack.trust.redeem_again(stack.ca_url, stack.web, "web-1")
        demo.report.check("a join token used twice is refused", refused is not None and refused.reason == "used",
                          f"HTTP {refused.status} {refused.reason}: {refused.detail[:160]}" if refused
                          else "the CA issued a second certificate for it")

    web = demo.web
    before = presented_serials(web)
    renewed_at = time.time()
    path = f"sidecar/{stack.web}/web-1"
    if stack.ca_url:  # as `meshlog ca renew` does: mTLS with the current certificate, a new key
        files, how = stack.trust.renew(stack.ca_url, path), f"at {stack.ca_url} with its current certificate"
    else:
        files, how = stack.trust.reissue(path), "offline"
        stack.log_identities()
    new_serial = pki.load_identity(files.cert.parent)[0].serial_number
    demo.report.step(f"renewed web-1's workload certificate {how} (serial {new_serial:x}) during traffic")
    deadline = time.monotonic() + 30
    presented = False
    while time.monotonic() < deadline and not presented:
        try:
            presented = new_serial in presented_serials(web)
        except (OSError, ValueError):
            pass
        time.sleep(0.2)
    if presented:
        demo.report.step(f"web's Envoy presents the new certificate {time.time() - renewed_at:.2f} s after the "
                         f"renewal (file SDS, no restart; it held {len(before)} before)")
    time.sleep(max(0.0, renewed_at + demo.pace - time.time()))
    window = demo.traffic.window(renewed_at, time.time())
    demo.report.check("certificate renewal during traffic: Envoy uses the new one, no request fails",
                      presented and window.requests > 0 and window.errors == 0,
                      ("new serial presented; " if presented else "new serial not presented within 30 s; ")
                      + split_text(window))


def on_demand(demo: Demo) -> None:
    stack = demo.stack
    ratings = "ratings" + stack.suffix
    demo.report.scene("on-demand", f"web starts calling {ratings}, which it never declared: its Envoy asks for it "
                                   "on demand, and the dependency is a fact in the log")
    started = time.time()
    sidecar = stack.sidecars.get("ratings-1") or stack.start_instance("ratings-1", "v1", ratings)
    own_listener = "ratings-1~outbound"
    # its own listener rendered: the projector has folded the registration, so it knows the service
    wait_until(lambda: sidecar.live() and own_listener in json.dumps(sidecar.config_dump()), 60,
               "ratings-1's registration to be rendered", interval=0.2, on_fail=sidecar.log_tail)
    demo.report.step(f"ratings-1 registered and serving; web declares only {stack.reviews}")
    client = KeepAliveClient(demo.web.outbound_port, timeout=10)
    try:
        asked = time.monotonic()
        ok, _version, instance = classify(*client.get(ratings))
        took = time.monotonic() - asked
        later = sum(classify(*client.get(ratings))[0] for _ in range(20))
    except OSError as exc:
        ok, instance, took, later = False, f"{type(exc).__name__}", 0.0, 0
    finally:
        client.close()
    demo.report.check("web's first call to the undeclared ratings succeeds", ok and instance == "ratings-1",
                      f"{'200 from ' + instance if ok else instance} after {took:.2f} s; 20 later calls: {later} ok")
    code, out = replay_cli(demo, "log", "--from", iso(started), "--to", "now", "--service", stack.web, json_out=True)
    learned = []
    if code == 0:
        learned = [e for e in json.loads(out)["entries"] if e["kind"] == "event" and e["type"] == "dependency.subscribed"
                   and e["payload"].get("dependency") == ratings and e["rejection"] is None]
    demo.report.check("the event log holds web's learned dependency on ratings",
                      bool(learned) and learned[0]["payload"].get("origin") == "learned",
                      f"dependency.subscribed {ratings} origin {learned[0]['payload'].get('origin')} at "
                      f"{learned[0]['time']}" if learned else (out.strip().splitlines() or ["nothing logged"])[-1])
    code, text = replay_cli(demo, "at", "--at", "now", "--node", "web-1")
    demo.report.block("$ replay at --at now --node web-1", text)
    code, out = replay_cli(demo, "at", "--at", "now", "--node", "web-1", json_out=True)
    subs = json.loads(out).get("instance", {}).get("subscriptions", []) if code == 0 else []
    since = [s for s in subs if s.get("dependency") == ratings and s.get("origin") == "learned"]
    demo.report.check("replay shows since when web depends on ratings", bool(since),
                      f"{ratings} (learned) since {since[0]['since']}" if since else f"subscriptions: {subs}")


def _rbac_denied(sidecar) -> int | None:
    for line in sidecar.admin("/stats?filter=^http.inbound.rbac.denied$").splitlines():
        name, _, value = line.partition(": ")
        if name == "http.inbound.rbac.denied" and value.strip().isdigit():
            return int(value)
    return None


def _answers(call, want: str, timeout: float = 30.0) -> tuple[bool, str, float]:
    """Call until the answer is ``want`` (the projector and the gateway push the new RBAC); (ok, last, seconds)."""
    started = time.monotonic()
    last = call()
    while last != want and time.monotonic() - started < timeout:
        time.sleep(0.2)
        last = call()
    return last == want, last, time.monotonic() - started


def undeclared(demo: Demo) -> None:
    from meshlog.demo.impostor import call_inbound

    stack = demo.stack
    if stack.trust is None:
        demo.report.scene("undeclared", "skipped: the demo runs --insecure (no mesh identities between sidecars)")
        return
    demo.report.scene("undeclared", "who may call reviews? only the services that declared it (the graph is the policy)")
    started = time.time()
    reviews, ratings = stack.reviews, "ratings" + stack.suffix
    target = stack.sidecars["reviews-v1-a"]
    intruder = stack.trust.sidecar(ratings, "ratings-1")  # valid, of the mesh root: but ratings declared nothing
    caller = stack.trust.issued[f"sidecar/{stack.web}/web-1"]
    call = lambda files: call_inbound(target.inbound_port, files, reviews)  # noqa: E731
    before = _rbac_denied(target)
    demo.report.step(f"a process holding the valid certificate of sidecar/{ratings}/ratings-1 ({ratings} declared no "
                     f"dependency on {reviews}) calls reviews-v1-a's inbound listener")
    answer = call(intruder)
    after = _rbac_denied(target)
    counted = before is not None and after == before + 1
    demo.report.check("an undeclared caller gets 403, counted in the reviews sidecar's Envoy",
                      answer == "HTTP 403" and counted,
                      f"{answer}; http.inbound.rbac.denied {before} -> {after}")
    web_answer = call(caller)
    demo.report.check("the declared caller's certificate (web) is admitted", web_answer == "HTTP 200", web_answer)

    demo.report.step(f"an operator opens {reviews} to {ratings} (access_policy.upserted, like `registrar rules apply`)")
    append_rules(demo, [AccessPolicyUpserted(service=reviews, revision=1, also=(ratings,))])
    opened, last, took = _answers(lambda: call(intruder), "HTTP 200")
    demo.report.step(f"ratings admitted {took:.2f} s after the append" if opened else f"still {last} after 30 s")
    append_rules(demo, [AccessPolicyDeleted(service=reviews, revision=2)])
    closed, last_closed, took = _answers(lambda: call(intruder), "HTTP 403")
    demo.report.step(f"access policy deleted: 403 again {took:.2f} s after the append" if closed
                     else f"still {last_closed} 30 s after the delete")
    demo.report.check("an access policy opens the door and its deletion closes it", opened and closed,
                      f"after the upsert: {last}; after the delete: {last_closed}")
    time.sleep(max(0.0, started + demo.pace - time.time()))
    window = demo.traffic.window(started, time.time())
    demo.report.check("web's traffic to reviews is untouched", window.requests > 0 and window.errors == 0,
                      split_text(window))


def _clusters_hold(sidecar, address: str) -> bool:
    """Whether Envoy's admin ``/clusters`` lists ``address`` as a host of any cluster (``<cluster>::<host>::…``)."""
    return f"::{address}::" in sidecar.admin("/clusters")


def _refusals_logged(demo: Demo, since: float, event_ids: set[str], timeout: float = 30.0) -> dict[str, dict]:
    """``replay log`` entries of the events ``event_ids`` once the live projector has recorded every one of
    their refusals on the rejections topic (or what the log shows at the timeout): event id -> entry."""
    deadline = time.monotonic() + timeout
    found: dict[str, dict] = {}
    while True:
        code, out = replay_cli(demo, "log", "--from", iso(since), "--to", "now", json_out=True)
        if code == 0:
            found = {e["event_id"]: e for e in json.loads(out)["entries"]
                     if e["kind"] == "event" and e["event_id"] in event_ids}
            if len(found) == len(event_ids) and all((e["rejection"] or {}).get("recorded") for e in found.values()):
                return found
        if time.monotonic() > deadline:
            return found
        time.sleep(0.5)


def _refused_text(entry: dict | None, author: str, because: str) -> tuple[bool, str]:
    """Whether ``replay log`` shows ``entry`` refused (on the rejections topic) for ``because``, stated by the
    verified ``author``; and what it shows."""
    if entry is None:
        return False, "not in replay log within 30 s"
    rejection, by = entry["rejection"] or {}, entry.get("author") or {}
    ok = (bool(rejection.get("recorded")) and because in rejection.get("reason", "")
          and by.get("verified") is True and by.get("spiffe_id") == author)
    shown = f"refused: {rejection['reason']}" if rejection else "folded (not refused)"
    who = by.get("spiffe_id") if by.get("verified") else f"unverified ({by.get('problem')})"
    return ok, f"{entry['type']} {entry['key']} by {who}; {shown}"[:400]


def forged(demo: Demo) -> None:
    from meshlog.demo_app import DemoApp

    stack = demo.stack
    if stack.trust is None:
        demo.report.scene("forged", "skipped: the demo runs --insecure (events are not signed)")
        return
    reviews, ratings = stack.reviews, "ratings" + stack.suffix
    demo.report.scene("forged", f"a valid certificate of {ratings} states facts about {reviews} and web: "
                                "the fold refuses what its author may not state")
    signer = f"sidecar/{ratings}/ratings-1"  # enrolled by on-demand, or issued as undeclared does
    stack.trust.sidecar(ratings, "ratings-1")
    author = stack.trust.spiffe_id(signer).uri
    lure = DemoApp("ratings-1", "v1", reviews).start()  # the forger's own listener: answers as reviews would
    address = f"127.0.0.1:{lure.port}"
    try:
        as_reviews = new_event(InstanceRegistered(service=reviews, instance_id="ratings-1", address="127.0.0.1",
                                                  port=lure.port, labels={"version": "v1"}, weight=128),
                               producer=f"sidecar/{reviews}/reviews-v1-a")  # the name it claims: not who it is
        as_web = new_event(InstanceRegistered(service=ratings, instance_id="ratings-1", address="127.0.0.1",
                                              port=lure.port, labels={"version": "v1"}, node_id="web-1"),
                           producer=signer)

        async def append() -> None:  # signed with ratings-1's key: the producer signs with its Kafka identity
            async with EventProducer(stack.bootstrap, security=stack.trust.kafka_security(signer)) as producer:
                await producer.append(as_reviews)
                await producer.append(as_web)

        started = time.time()
        asyncio.run(append())
        demo.report.step(f"appended, signed as {signer}: {reviews}/ratings-1 at {address} with weight 128, "
                         f"and {ratings}/ratings-1 re-registered with node id web-1")
        held = samples = 0
        watch_until = time.time() + demo.pace  # what the projector would have folded reaches web's Envoy by then
        while time.time() < watch_until:
            try:
                held += _clusters_hold(demo.web, address)
                samples += 1
            except OSError:
                pass
            time.sleep(0.25)
        logged = _refusals_logged(demo, started - 1, {as_reviews.event_id, as_web.event_id})
        held += _clusters_hold(demo.web, address)
        samples += 1
        window = demo.traffic.window(started, time.time())
    finally:
        lure.stop()
    ok, detail = _refused_text(logged.get(as_reviews.event_id), author, "may not state instance.registered")
    demo.report.check(f"a registration of ratings-1 as an instance of {reviews} is refused", ok, detail)
    ok, detail = _refused_text(logged.get(as_web.event_id), author, "node id 'web-1' is held")
    demo.report.check("a re-registration claiming web-1's node id is refused", ok, detail)
    if logged:
        _code, text = replay_cli(demo, "log", "--from", iso(started - 1), "--to", "now")
        demo.report.block(f"$ replay log --from {iso(started - 1)} --to now", text)
    demo.report.check("web's Envoy never holds the forged address, no request of web goes there or fails",
                      samples > 0 and held == 0 and window.requests > 0 and window.errors == 0
                      and window.by_instance.get("ratings-1", 0) == 0,
                      f"{address} in web's /clusters in {held} of {samples} samples; {split_text(window)}")


def replay(demo: Demo) -> None:
    demo.report.scene("replay", "what was every proxy told, and when? the real `replay` CLI over the same log")
    stack = demo.stack
    start = demo.marks.get("baseline") or demo.marks["mesh-up"]
    code, text = replay_cli(demo, "at", "--at", iso(start), "--service", stack.reviews)
    demo.report.block(f"$ replay at --at {iso(start)} --service {stack.reviews}", text)
    if "canary-90-10" in demo.marks:
        t90 = demo.marks["canary-90-10"]
        code, text = replay_cli(demo, "at", "--at", iso(t90), "--node", "web-1")
        demo.report.block(f"$ replay at --at {iso(t90)} --node web-1", text)
        code, out = replay_cli(demo, "at", "--at", iso(t90), "--node", "web-1", "--full", json_out=True)
        weights = None
        if code == 0:
            doc = json.loads(out)
            bodies = doc.get("bodies", {}).get("type.googleapis.com/envoy.config.route.v3.RouteConfiguration", {})
            weights = route_weights(list(bodies.values()), stack.reviews)
        want = expected_weights(stack.reviews, 90, 10)
        demo.report.check("replay at the canary instant shows web told 90/10", weights == want,
                          f"route weights then: {weights}")
    begin = demo.marks["begin"]
    code, text = replay_cli(demo, "diff", "--from", iso(begin), "--to", "now", "--node", "web-1")
    demo.report.block(f"$ replay diff --from {iso(begin)} --to now --node web-1", text)
    code, out = replay_cli(demo, "diff", "--from", iso(begin), "--to", "now", json_out=True)
    ok = code == 0
    detail = out.strip().splitlines()[-1] if not ok and out.strip() else ""
    if ok:
        doc = json.loads(out)
        added = doc.get("added", [])
        causes = {c.get("type") for e in added for c in e.get("caused_by", [])}
        ok = bool(added) and "instance.registered" in causes
        detail = f"{len(added)} resources added, {len(doc.get('changed', []))} changed, " \
                 f"{len(doc.get('removed', []))} removed over the whole run; causes include {sorted(causes)[:4]}"
    demo.report.check("replay diff of the whole run explains it by events", ok, detail)

    result = subprocess.run([str(BIN / "meshlog"), "status", "--bootstrap", stack.bootstrap], capture_output=True,
                            text=True, timeout=120, env={**os.environ, **stack.kafka_env(REPLAY_IDENTITY)})
    demo.report.block("$ meshlog status", result.stdout + (result.stderr if result.returncode else ""))
    code, out = replay_cli(demo, "log", "--from", iso(begin), "--to", "now", json_out=True)
    lines, ok = [], code == 0
    if ok:
        from proxysync.convergence import summary_text

        rules = [e for e in json.loads(out)["entries"] if e["kind"] == "event" and e["type"] == "route_rule.upserted"]
        for e in rules[-4:]:
            conv = e.get("convergence") or {}
            lines.append(f"{e['time']} {e['type']} {e['key']}: {summary_text(conv) or 'no connected proxy affected'}")
        # every rule change of the run reached every proxy it changed (none left waiting)
        ok = bool(rules) and all((e.get("convergence") or {}).get("reached", 0) >= 1
                                 and e["convergence"]["not_reached"] == 0 for e in rules)
    demo.report.block(f"$ replay log --from {iso(begin)} --to now   (convergence of the rule changes)",
                      "\n".join(lines) or out)
    demo.report.check("each rule change reached its proxies (append to ACK, from meshlog.sync)", ok,
                      lines[-1] if lines else "no convergence recorded")


SCENE_FUNCS: dict[str, Callable[[Demo], None]] = {
    "baseline": baseline,
    "canary": canary,
    "failing-instance": failing_instance,
    "gateway-kill": gateway_kill,
    "impostor": impostor,
    "on-demand": on_demand,
    "undeclared": undeclared,
    "forged": forged,
    "broker-kill": broker_kill,
    "replay": replay,
}
