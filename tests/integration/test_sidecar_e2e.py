"""Story: apps talk through `meshlog-sidecar` Envoys; the mesh routes, reacts to health, and survives outages.

Everything is real: the Kafka broker (the session's shared one), the
`projector`, two `xds-gateway` replicas, Envoy 1.40 run and supervised by
`meshlog-sidecar run` subprocesses (which register their apps themselves),
and small threaded HTTP apps (``tests.support.apps``) answering with their
instance id and version. Apps call their own sidecar on
127.0.0.1:<outbound port> naming the service in the Host header.

The mesh (one per module, service names unique per run): ``srv<sfx>`` with
two instances s1 (version v1) and s2 (version v2), each behind its sidecar;
client ``cli<sfx>`` (instance c1) depends on ``srv<sfx>``; the test process
is the client app's code, calling the client sidecar's outbound port.

The scenarios share that control plane and run in file order (each leaves
the mesh as the next expects; the last one stops the control plane):
(a) both instances get traffic; (c) an unhealthy instance gets no new request
2 s after its health event was appended (run before (b): with the 90/10
rule in place an unhealthy v2 would empty a subset); (b) a 90/10 route rule
between subsets v1/v2 holds over 1,000 requests; (d) kill -9 of the gateway
holding the client Envoy's ADS stream fails no request; (d2) an Envoy killed
under its sidecar is restarted; (d3) a sidecar told to stop keeps serving
while it drains, deregisters, and only then stops its Envoy (on a service of
its own); (e) with the control plane stopped, a
restarted client sidecar serves from its disk cache, then goes back to ADS
(hot restart) when a gateway returns, failing no request.

Every wait is bounded (``wait_until``); request loops are bounded in count or
in time. The whole file takes about 30 s on the 2-core machine.
"""

from __future__ import annotations

import asyncio
import collections
import http.client
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from events.admin import ensure_topics
from meshlog.kafka_local import free_port, free_ports
from meshlog.xds_trust import sidecar_tls_args
from proxy.envoy_process import dynamic_names
from tests.support.apps import App, KeepAliveClient
from tests.support.stack import Process, spawn, start_gateway, start_projector, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.envoy]

BIN = Path(sys.executable).parent


def registrar(bootstrap: str, *args: str) -> list[dict]:
    result = subprocess.run([str(BIN / "registrar"), "--bootstrap", bootstrap, "--json", *args], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


# ---------------------------------------------------------------- sidecar subprocesses


@dataclass
class Sidecar:
    name: str
    process: Process
    argv: list[str]
    workdir: Path
    status_file: Path
    admin_port: int
    outbound_port: int

    def status(self) -> dict:
        return json.loads(self.status_file.read_text())

    def admin(self, path: str) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}{path}", timeout=5) as response:
            return response.read().decode()

    def config_dump(self) -> dict:
        return json.loads(self.admin("/config_dump?include_eds"))

    def log_tail(self) -> str:
        envoy_log = self.workdir / f"cache-{self.name}" / "run" / "envoy.log"
        tail = envoy_log.read_text(errors="replace").splitlines()[-15:] if envoy_log.exists() else []
        return self.process.log_tail() + f"\n--- {self.name} envoy log ---\n" + "\n".join(tail)

    def stop(self, timeout: float = 30.0) -> int | None:
        return self.process.stop(timeout)

    def restart(self, **replace: str) -> "Sidecar":
        """Start the same sidecar again (same ports, same cache dir), some flag values replaced."""
        argv = list(self.argv)
        for flag, value in replace.items():
            argv[argv.index(flag) + 1] = value
        return _spawn_sidecar(self.name, argv, self.workdir, self.status_file, self.admin_port, self.outbound_port)


def _spawn_sidecar(name, argv, workdir, status_file, admin_port, outbound_port) -> Sidecar:
    status_file.unlink(missing_ok=True)
    process = spawn(f"sidecar-{name}", argv, workdir)
    sidecar = Sidecar(name, process, argv, workdir, status_file, admin_port, outbound_port)
    wait_until(lambda: status_file.exists() and sidecar.status()["mode"] in ("ads", "cache")
               and (sidecar.status()["envoy"] or {}).get("state") == "LIVE", 30,
               f"sidecar {name}'s Envoy to be LIVE", on_fail=sidecar.log_tail)
    return sidecar


def start_sidecar(name: str, workdir: Path, bootstrap: str, gateways: list[str], *, service: str, instance: str,
                  app_port: int, labels: tuple[str, ...] = (), depends_on: tuple[str, ...] = (),
                  extra: tuple[str, ...] = (), identity=None) -> Sidecar:
    """A ``meshlog-sidecar run``: mTLS to the gateways with ``identity``'s files, else ``--insecure``."""
    admin, inbound, outbound = free_ports(3)  # distinct: the OS may hand out a port just closed again
    status_file = workdir / f"cache-{name}" / "status.json"
    argv = [str(BIN / "meshlog-sidecar"), "run", "--service", service, "--instance-id", instance,
            "--app-port", str(app_port), "--inbound-port", str(inbound), "--outbound-port", str(outbound),
            "--admin-port", str(admin), "--bootstrap", bootstrap, "--cache-dir", str(workdir / f"cache-{name}"),
            "--drain-seconds", "1", "--append-timeout", "3", *sidecar_tls_args(identity)]
    for gw in gateways:
        argv += ["--gateway", gw]
    for label in labels:
        argv += ["--label", label]
    for dep in depends_on:
        argv += ["--depends-on", dep]
    argv += list(extra)
    return _spawn_sidecar(name, argv, workdir, status_file, admin, outbound)


# ---------------------------------------------------------------- traffic


class Traffic:
    """Keep-alive GETs in background threads; every request recorded as (start wall time, ok, instance|error)."""

    def __init__(self, port: int, host: str, threads: int = 2, pause: float = 0.002):
        self.port, self.host, self.pause = port, host, pause
        self.records: list[tuple[float, bool, str]] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]
        self.reconnects = 0

    def _run(self) -> None:
        client = KeepAliveClient(self.port, timeout=5)
        while not self._stop.is_set():
            started = time.time()
            try:
                status, body = client.get(self.host)
                ok = status == 200
                what = json.loads(body)["instance"] if ok else f"HTTP {status}: {body[:80]!r}"
            except Exception as exc:  # noqa: BLE001 - every failure is recorded, none is retried
                ok, what = False, repr(exc)
                client.close()
            self.records.append((started, ok, what))
            time.sleep(self.pause)
        self.reconnects += client.reconnects
        client.close()

    def __enter__(self) -> "Traffic":
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(10)

    def failures(self) -> list[tuple[float, bool, str]]:
        return [r for r in self.records if not r[1]]


def send(port: int, host: str, n: int) -> collections.Counter:
    """``n`` sequential keep-alive GETs; counts by instance id (and by error text)."""
    client = KeepAliveClient(port)
    counts: collections.Counter = collections.Counter()
    try:
        for _ in range(n):
            status, body = client.get(host)
            counts[json.loads(body)["instance"] if status == 200 else f"HTTP {status}"] += 1
    finally:
        client.close()
    return counts


# ---------------------------------------------------------------- the shared mesh


@dataclass
class Mesh:
    bootstrap: str
    workdir: Path
    projector: Process
    gateways: list[Process]
    gateway_addresses: list[str]
    srv: str
    apps: dict[str, App]
    sidecars: dict[str, Sidecar]

    @property
    def client(self) -> Sidecar:
        return self.sidecars["c1"]

    def diagnostics(self) -> str:
        return "\n".join([s.log_tail() for s in self.sidecars.values()] + [g.log_tail() for g in self.gateways])


@pytest.fixture(scope="module")
def mesh(kafka_bootstrap, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("sidecar-e2e")
    asyncio.run(ensure_topics(kafka_bootstrap))
    sfx = uuid.uuid4().hex[:6]
    srv, cli = f"srv{sfx}", f"cli{sfx}"
    started: list = []
    m: Mesh | None = None
    apps = {"s1": App("s1", "v1", srv).start(), "s2": App("s2", "v2", srv).start(), "c1": App("c1", "v1", cli).start()}
    try:
        projector = start_projector(kafka_bootstrap, workdir)
        started.append(projector)
        gateways = []
        for i in (1, 2):
            gateways.append(start_gateway(kafka_bootstrap, workdir, f"gateway-{i}"))
            started.append(gateways[-1])
        addresses = [f"127.0.0.1:{g.info['xds_port']}" for g in gateways]
        sidecars = {}
        for inst, version in (("s1", "v1"), ("s2", "v2")):
            sidecars[inst] = start_sidecar(inst, workdir, kafka_bootstrap, addresses, service=srv, instance=inst,
                                           app_port=apps[inst].port, labels=(f"version={version}",))
            started.append(sidecars[inst])
        sidecars["c1"] = start_sidecar("c1", workdir, kafka_bootstrap, addresses, service=cli, instance="c1",
                                       app_port=apps["c1"].port, depends_on=(srv,), extra=("--status-port", "0"))
        started.append(sidecars["c1"])
        m = Mesh(kafka_bootstrap, workdir, projector, gateways, addresses, srv, apps, sidecars)
        seen: collections.Counter = collections.Counter()

        def both_reachable():
            try:
                seen.update(send(m.client.outbound_port, srv, 4))
            except OSError:
                return False
            return seen["s1"] and seen["s2"]

        wait_until(both_reachable, 60, "the client sidecar to reach both instances", interval=0.3,
                   on_fail=m.diagnostics)
        yield m
    finally:
        if m is not None:  # the scenarios replace sidecars and add gateways
            started += [*m.sidecars.values(), *m.gateways]
        for sidecar in [p for p in started if isinstance(p, Sidecar)]:
            if sidecar.process.alive():  # drain them all at once
                sidecar.process.proc.send_signal(signal.SIGTERM)
        for process in reversed(started):
            process.stop()
        for app in apps.values():
            app.stop()


# ---------------------------------------------------------------- scenarios


def test_a_both_instances_get_traffic(mesh):
    counts = send(mesh.client.outbound_port, mesh.srv, 200)
    assert set(counts) == {"s1", "s2"}, counts
    assert counts["s1"] >= 60 and counts["s2"] >= 60, counts  # round robin: about 100 each
    # the app's port is `port`; peers reach s1 on its sidecar's inbound port, never the app's port directly
    cla = next(e for e in _endpoints(mesh.client.config_dump()) if e["cluster_name"] == mesh.srv)
    ports = {lb["endpoint"]["address"]["socket_address"]["port_value"]
             for group in cla["endpoints"] for lb in group["lb_endpoints"]}
    assert ports == {mesh.sidecars[i].status()["ports"]["inbound"] for i in ("s1", "s2")}
    assert not ports & {mesh.apps["s1"].port, mesh.apps["s2"].port}
    # the agent's own status: a file, and over HTTP when --status-port is given
    status = mesh.client.status()
    assert status["mode"] == "ads" and status["registered"] and status["envoy"]["state"] == "LIVE"
    with urllib.request.urlopen(f"http://127.0.0.1:{status['ports']['status']}/healthz", timeout=5) as response:
        assert response.status == 200
    with urllib.request.urlopen(f"http://127.0.0.1:{status['ports']['status']}/status", timeout=5) as response:
        assert json.loads(response.read())["node_id"] == status["node_id"]


def test_c_an_unhealthy_instance_gets_no_new_request_within_2_s(mesh):
    with Traffic(mesh.client.outbound_port, mesh.srv) as traffic:
        wait_until(lambda: {r[2] for r in traffic.records} >= {"s1", "s2"}, 10, "traffic to both instances")
        [appended] = registrar(mesh.bootstrap, "health", "--service", mesh.srv, "--instance-id", "s2",
                               "--status", "unhealthy", "--reason", "e2e test")
        t_event = appended["timestamp_ms"] / 1000  # the broker's append time (LogAppendTime, this host's clock)
        wait_until(lambda: time.time() >= t_event + 3.0, 10, "one second of traffic after the 2 s bound")
    assert not traffic.failures(), traffic.failures()[:5]
    after = [r for r in traffic.records if r[0] >= t_event + 2.0]
    assert len(after) >= 20, f"only {len(after)} requests in the second after the bound"
    late = [r for r in after if r[2] == "s2"]
    last_s2 = max((r[0] for r in traffic.records if r[2] == "s2"), default=t_event) - t_event
    assert not late, f"{len(late)} requests reached the unhealthy s2 more than 2 s after the event"
    print(f"\n(c) last request to s2 started {last_s2:+.3f} s after the health event was appended")

    # back to healthy, so that the next scenario has both subsets
    registrar(mesh.bootstrap, "health", "--service", mesh.srv, "--instance-id", "s2", "--status", "healthy")
    wait_until(lambda: send(mesh.client.outbound_port, mesh.srv, 6)["s2"], 30, "s2 to get traffic again",
               interval=0.2, on_fail=mesh.diagnostics)


def _endpoints(dump: dict) -> list[dict]:
    for config in dump.get("configs", []):
        if config.get("@type", "").endswith("EndpointsConfigDump"):
            return [e["endpoint_config"] for e in config.get("dynamic_endpoint_configs", [])]
    return []


def _routes_text(dump: dict) -> str:
    for config in dump.get("configs", []):
        if config.get("@type", "").endswith(".RoutesConfigDump"):
            return json.dumps(config.get("dynamic_route_configs", []))
    return ""


def _has_split(sidecar: Sidecar, srv: str) -> bool:
    dump = sidecar.config_dump()
    counts = {e["cluster_name"]: sum(len(g.get("lb_endpoints", [])) for g in e.get("endpoints", []))
              for e in _endpoints(dump)}
    return (counts.get(f"{srv}|v1") == 1 and counts.get(f"{srv}|v2") == 1
            and '"weight": 90' in _routes_text(dump) and '"weight": 10' in _routes_text(dump))


def test_b_a_90_10_route_rule_between_subsets(mesh):
    rules = mesh.workdir / "split.yaml"
    rules.write_text(f"""
kind: DestinationPolicy
service: {mesh.srv}
revision: 1
subsets:
  - {{name: v1, labels: {{version: v1}}}}
  - {{name: v2, labels: {{version: v2}}}}
---
kind: RouteRule
host: {mesh.srv}
revision: 1
routes:
  - destinations: [{{subset: v1, weight: 90}}, {{subset: v2, weight: 10}}]
""")
    registrar(mesh.bootstrap, "rules", "apply", "-f", str(rules))
    wait_until(lambda: _has_split(mesh.client, mesh.srv), 30, "the client Envoy to hold the 90/10 split",
               on_fail=mesh.diagnostics)
    counts = send(mesh.client.outbound_port, mesh.srv, 1000)
    assert sum(counts.values()) == 1000 and set(counts) <= {"s1", "s2"}, counts
    share = counts["s1"] / 1000
    print(f"\n(b) v1 {counts['s1']} / v2 {counts['s2']} of 1,000")
    assert 0.85 <= share <= 0.95, counts


def _xds_connections(sidecar: Sidecar) -> dict[str, int]:
    """gateway address -> active connections of the sidecar's Envoy (its ADS stream), from admin /clusters."""
    out = {}
    for line in sidecar.admin("/clusters").splitlines():
        match = re.match(r"^meshlog_xds::([\d.]+:\d+)::cx_active::(\d+)$", line)
        if match:
            out[match.group(1)] = int(match.group(2))
    return out


def test_d_killing_the_gateway_the_client_uses_fails_no_request(mesh):
    wait_until(lambda: any(_xds_connections(mesh.client).values()), 30, "the client's ADS stream")
    conns = _xds_connections(mesh.client)
    [serving_addr] = [a for a, n in conns.items() if n]
    serving = mesh.gateways[mesh.gateway_addresses.index(serving_addr)]
    [other_addr] = [a for a in mesh.gateway_addresses if a != serving_addr]
    with Traffic(mesh.client.outbound_port, mesh.srv) as traffic:
        wait_until(lambda: len(traffic.records) >= 50, 10, "traffic before the kill")
        serving.kill9()
        killed_at = len(traffic.records)
        wait_until(lambda: _xds_connections(mesh.client).get(other_addr, 0) >= 1, 60,
                   "the client Envoy to reconnect to the other gateway", on_fail=mesh.diagnostics)
        wait_until(lambda: len(traffic.records) >= killed_at + 200, 15, "traffic after the failover")
    assert not traffic.failures(), traffic.failures()[:5]
    assert len(traffic.records) >= 250
    print(f"\n(d) {len(traffic.records)} requests across the kill -9 of {serving_addr}, none failed")


def test_d2_an_envoy_that_dies_is_restarted_by_its_sidecar(mesh):
    """kill -9 of the client's Envoy (not of the agent): the agent restarts it (ADS mode, gateways are up)."""
    client = mesh.client
    before = client.status()
    os.kill(before["envoy"]["pid"], signal.SIGKILL)
    wait_until(lambda: client.status()["restarts"] == before["restarts"] + 1
               and client.status()["envoy"]["state"] == "LIVE", 30, "the agent to restart Envoy",
               on_fail=client.log_tail)
    after = client.status()
    assert after["mode"] == "ads" and after["envoy"]["pid"] != before["envoy"]["pid"]
    assert any("exited with code" in line for line in after["history"])
    wait_until(lambda: _has_split(client, mesh.srv), 30, "the restarted Envoy to get its configuration again",
               on_fail=client.log_tail)
    counts = send(client.outbound_port, mesh.srv, 100)
    assert sum(counts.values()) == 100 and set(counts) <= {"s1", "s2"}, counts


def _instance_via(port: int) -> str | None:
    """One GET on a new connection to 127.0.0.1:port: the answering app's instance id, None if it failed."""
    client = KeepAliveClient(port, timeout=2)
    try:
        status, body = client.get("inbound")
        return json.loads(body)["instance"] if status == 200 else None
    except (OSError, http.client.HTTPException, ValueError, KeyError):
        return None
    finally:
        client.close()


_SIDECAR_STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) ")
_ENVOY_STAMP = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)\.(\d{3})\]")


def _first_line(text: str, needle: str, stamp: re.Pattern) -> tuple[int, str]:
    """(line index, "YYYY-MM-DD HH:MM:SS.mmm" local time) of the first line containing ``needle``."""
    for index, line in enumerate(text.splitlines()):
        match = stamp.match(line)
        if needle in line and match:
            return index, f"{match.group(1)}.{match.group(2)}"
    raise AssertionError(f"no line with {needle!r} in:\n{text[-3000:]}")


def test_d3_a_draining_sidecar_deregisters_before_its_envoy_stops(mesh):
    """SIGTERM: 'draining' is appended, the inbound listener keeps serving for --drain-seconds, the instance is
    deregistered, and only then does Envoy stop (peers are never sent to a port nobody listens on).

    A sidecar of its own (service ``drn<sfx>``, no peers depend on it) so that the mesh of the other scenarios
    is untouched. Requests go straight to its inbound listener, each on a new connection. Envoy's "caught
    ENVOY_SIGTERM" line (a warning) dates its stop; the agent and Envoy both log local time.
    """
    service = "drn" + mesh.srv[3:]
    app = App("d1", "v1", service).start()
    sidecar = None
    try:
        sidecar = start_sidecar("d1", mesh.workdir, mesh.bootstrap, mesh.gateway_addresses, service=service,
                                instance="d1", app_port=app.port,
                                extra=("--drain-seconds", "3"))
        inbound = sidecar.status()["ports"]["inbound"]
        wait_until(lambda: _instance_via(inbound) == "d1", 60, "the inbound listener to serve the app",
                   on_fail=sidecar.log_tail)
        envoy_log = Path(sidecar.status()["envoy"]["log"])
        log_path = sidecar.process.log_path
        deregistered = f"deregistered {service}/d1"

        sidecar.process.terminate()
        during_drain: list[str | None] = []  # requests begun after 'draining' and answered before 'deregistered'
        deadline = time.monotonic() + 30
        while sidecar.process.alive() and time.monotonic() < deadline:
            before = log_path.read_text(errors="replace")
            answer = _instance_via(inbound)
            if "draining:" in before and deregistered not in log_path.read_text(errors="replace"):
                during_drain.append(answer)
            time.sleep(0.05)
        assert sidecar.stop() == 0, sidecar.log_tail()

        assert len(during_drain) >= 5 and set(during_drain) == {"d1"}, (during_drain, sidecar.log_tail())
        text = log_path.read_text(errors="replace")
        draining_line, _ = _first_line(text, "draining:", _SIDECAR_STAMP)
        deregistered_line, deregistered_at = _first_line(text, deregistered, _SIDECAR_STAMP)
        assert draining_line < deregistered_line
        _, envoy_stopped_at = _first_line(envoy_log.read_text(errors="replace"), "caught ENVOY_SIGTERM", _ENVOY_STAMP)
        assert deregistered_at <= envoy_stopped_at, (deregistered_at, envoy_stopped_at)
    finally:
        if sidecar is not None:
            sidecar.stop()
        app.stop()


def test_e_a_restarted_sidecar_serves_from_its_cache_while_the_control_plane_is_down(mesh):
    """The whole control plane is stopped, the client's sidecar restarted: traffic flows from the disk cache.

    The broker is the test session's shared one and must keep running for
    other tests, so "stop the whole control plane" here means: stop both
    gateways and the projector, and restart the client's sidecar with
    ``--bootstrap`` pointing at a dead address, so that, for the sidecar, the
    broker is unreachable too (its registration keeps failing and is retried
    with backoff; that does not hold up Envoy). The old sidecar drains on
    SIGTERM (it exits 0; its draining/deregistration events reach the log
    but no projector folds them while the control plane is down).

    Then a gateway comes back (on the killed replica's port, reading the views
    the projector last published): the sidecar hands over to an ADS-mode Envoy
    by hot restart while traffic runs, failing no request.
    """
    client = mesh.client
    cache = client.workdir / "cache-c1" / "envoy-config.json"
    wait_until(lambda: cache.exists() and f"{mesh.srv}|v2" in cache.read_text(), 15,
               "the split configuration in the client's disk cache", on_fail=client.log_tail)

    for gateway in mesh.gateways:
        gateway.stop()
    mesh.projector.stop()

    started = time.monotonic()
    assert client.stop() == 0, client.log_tail()
    assert time.monotonic() - started < 1 + 2 * 3 + 10  # drain 1 s + two bounded appends + Envoy stop
    dead = f"127.0.0.1:{free_port()}"
    restarted = client.restart(**{"--bootstrap": dead})
    mesh.sidecars["c1"] = restarted
    status = restarted.status()
    assert status["mode"] == "cache", status
    assert status["cache"]["serving_from"], status

    counts = send(restarted.outbound_port, mesh.srv, 300)
    assert set(counts) <= {"s1", "s2"} and sum(counts.values()) == 300, counts
    assert counts["s2"] >= 5 and counts["s1"] > 3 * counts["s2"], counts  # the cached 90/10 split
    assert not restarted.status()["registered"]
    print(f"\n(e) from the disk cache: {dict(counts)}")

    # a gateway returns: the sidecar goes back to ADS with a hot restart, under traffic
    port = int(mesh.gateway_addresses[0].rsplit(":", 1)[1])
    with Traffic(restarted.outbound_port, mesh.srv) as traffic:
        wait_until(lambda: len(traffic.records) >= 50, 10, "traffic before the gateway returns")
        gateway = start_gateway(mesh.bootstrap, mesh.workdir, "gateway-back", port=port)
        mesh.gateways.append(gateway)
        wait_until(lambda: restarted.status()["mode"] == "ads", 60, "the sidecar to go back to ADS",
                   on_fail=restarted.log_tail)
        switched_at = len(traffic.records)
        wait_until(lambda: len(traffic.records) >= switched_at + 200, 20, "traffic after the switch")
    assert not traffic.failures(), traffic.failures()[:5]
    names = dynamic_names(restarted.config_dump())
    assert f"{mesh.srv}|v2" in names["clusters"] and names["listeners"], names  # delivered over ADS again
    assert restarted.status()["envoy"]["epoch"] == 1
    print(f"\n(e) back to ADS by hot restart: {len(traffic.records)} requests, none failed "
          f"({traffic.reconnects} idle keep-alive reconnects)")
