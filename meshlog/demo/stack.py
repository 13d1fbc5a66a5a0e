"""Everything the demo runs, started in dependency order and stopped in reverse.

The topology (all on 127.0.0.1, ports picked free at start):

    Kafka (a fresh single-node KRaft broker, unless --bootstrap; --brokers 3: a
           three-node KRaft cluster, each node broker and controller, as
           `meshlog kafka up --brokers 3` runs it)
    projector                         one, RocksDB state under the work dir
    gateway-1, gateway-2              xds-gateway replicas; every sidecar lists both
    checker-1, checker-2              registrar healthcheck, splitting the instances
    reviews-v1-a, reviews-v1-b        demo apps (in this process) behind sidecars (real Envoy)
    reviews-v2-a
    web-1                             the client app (this process) behind its sidecar

Secure by default (``meshlog.demo.trust``): the broker listens TLS only,
requires client certificates and enforces the ACL table; every process
gets its own identity from the demo's CA and speaks Kafka and xDS over mTLS
with it. ``secure=False`` (``meshlog demo --insecure``): plaintext, as for
loopback development.

Invariants:
- Children run in their own process groups (Ctrl-C reaches only the demo)
  and die with the demo (PDEATHSIG). ``stop`` is idempotent and stops, in
  order: sidecars (they drain and deregister while Kafka is still up),
  checkers, gateways, projector, then the broker it started.
- Nothing listens beyond 127.0.0.1.
"""

from __future__ import annotations

import http.client
import json
import re
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from events import kafka_security
from meshlog.demo.trust import DemoTrust
from meshlog.demo_app import DemoApp
from meshlog.kafka_local import free_port, free_ports
from identity.pki import IdentityFiles
from meshlog.procs import BIN, Process, spawn, wait_until
from meshlog.xds_trust import gateway_tls_args, sidecar_tls_args


# a node's start (and a killed node's restart) on a busy 2-core laptop: 52-106 s seen at load average 20+
CLUSTER_START_TIMEOUT = 240.0
REPLAY_IDENTITY = "replay/demo"  # the replay, `meshlog status` and console steps: read-only on the broker


@dataclass
class Sidecar:
    node: str
    service: str
    instance: str
    version: str
    process: Process
    admin_port: int
    inbound_port: int
    outbound_port: int
    status_file: Path
    envoy_log: Path

    def status(self) -> dict:
        return json.loads(self.status_file.read_text())

    def live(self) -> bool:
        try:
            status = self.status()
        except (OSError, ValueError):
            return False
        return status.get("mode") in ("ads", "cache") and (status.get("envoy") or {}).get("state") == "LIVE"

    def admin(self, path: str) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}{path}", timeout=3) as response:
            return response.read().decode()

    def config_dump(self, resource: str | None = None) -> dict:
        return json.loads(self.admin("/config_dump" + (f"?resource={resource}" if resource else "")))

    def connected_gateways(self) -> list[str]:
        """Gateway addresses Envoy's xDS cluster has an open connection to (from /clusters)."""
        out = []
        for line in self.admin("/clusters").splitlines():
            match = re.match(r"^meshlog_xds::([0-9.]+:\d+)::cx_active::(\d+)$", line)
            if match and int(match.group(2)) > 0:
                out.append(match.group(1))
        return out

    def log_tail(self) -> str:
        tail = self.envoy_log.read_text(errors="replace").splitlines()[-15:] if self.envoy_log.exists() else []
        return self.process.log_tail() + f"\n--- {self.node} envoy log ---\n" + "\n".join(tail)


@dataclass
class DemoStack:
    workdir: Path
    bootstrap: str | None = None
    suffix: str = ""  # appended to service names when sharing someone else's broker
    say: Callable[[str], None] = print
    checkers: int = 2
    secure: bool = True  # mTLS with the demo's CA (Kafka and xDS); False: plaintext (--insecure)
    brokers: int = 1  # > 1: a LocalCluster of that many nodes instead of one LocalKafka
    trust: DemoTrust | None = None  # the CA and the identities it issued (secure only)
    kafka: object | None = None
    projector: Process | None = None
    ca_server: Process | None = None  # `meshlog ca serve`: the sidecars' join tokens are redeemed there (secure)
    ca_url: str | None = None
    gateways: dict[str, Process] = field(default_factory=dict)
    gateway_ports: dict[str, int] = field(default_factory=dict)
    checker_procs: dict[str, Process] = field(default_factory=dict)
    apps: dict[str, DemoApp] = field(default_factory=dict)
    sidecars: dict[str, Sidecar] = field(default_factory=dict)
    console: Process | None = None  # `replay ui` over the demo's log, once the scenes are done
    _stopped: bool = False

    @property
    def reviews(self) -> str:
        return "reviews" + self.suffix

    @property
    def web(self) -> str:
        return "web" + self.suffix

    def gateway_addresses(self) -> list[str]:
        return [f"127.0.0.1:{port}" for port in self.gateway_ports.values()]

    # -- start ----------------------------------------------------------------
    def start_kafka(self) -> str:
        if self.secure:
            self.trust = DemoTrust(self.workdir / "tls")
            self.say(f"mesh CA for trust domain {self.trust.domain} in {self.trust.tls_dir / 'ca'}; every process "
                     "gets its own certificate (sidecars: join tokens at `ca serve`; the others: offline issue)")
        if self.bootstrap:
            self.say(f"using the Kafka broker at {self.bootstrap} (its security from the MESHLOG_KAFKA_* variables)")
            return self.bootstrap
        from meshlog.kafka_local import LocalCluster, LocalKafka

        what = (f"a fresh local Kafka cluster of {self.brokers} nodes (KRaft, each node broker and controller"
                if self.brokers > 1 else "a fresh local Kafka broker (KRaft")
        self.say(f"starting {what}; the first run fetches its jars from Maven Central)"
                 + (": TLS only, client certificates required, ACLs enforced" if self.secure else ": PLAINTEXT"))
        tls_dir = self.workdir / "tls" if self.secure else None
        started = time.monotonic()
        if self.brokers > 1:
            self.kafka = LocalCluster(self.brokers, self.workdir / "kafka", keep_data=False, secure=self.secure,
                                      tls_dir=tls_dir, start_timeout=CLUSTER_START_TIMEOUT)
        else:
            self.kafka = LocalKafka(self.workdir / "kafka", keep_data=False, secure=self.secure, tls_dir=tls_dir)
        self.bootstrap = self.kafka.start()
        if self.trust is not None:  # the demo's own clients (rule appends, the event tail) speak as an operator
            kafka_security.configure(self.trust.kafka_security("operator/demo"))
        self.say(f"Kafka is up at {self.bootstrap} ({time.monotonic() - started:.1f} s)")
        return self.bootstrap

    @property
    def cluster(self):
        """The LocalCluster the demo started (--brokers > 1), else None."""
        from meshlog.kafka_local import LocalCluster

        return self.kafka if isinstance(self.kafka, LocalCluster) else None

    def kafka_env(self, path: str) -> dict[str, str]:
        """The ``MESHLOG_KAFKA_*`` variables a child runs with: identity ``path`` on the broker the demo started
        secure; nothing on a plaintext one or on a ``--bootstrap`` broker (whose settings children inherit)."""
        if self.trust is None or self.kafka is None:
            return {}
        return self.trust.kafka_env(path)

    def ensure_topics(self) -> None:
        import asyncio

        from events.admin import ensure_topics

        admin = self.kafka.admin_security if self.kafka is not None else None
        report = asyncio.run(ensure_topics(self.bootstrap, security=admin))
        if report.created:
            self.say(f"created {len(report.created)} topics")
        for mismatch in report.mismatches:
            self.say(f"topic mismatch left unchanged: {mismatch}")
        if admin is not None:  # what `meshlog topics ensure` does on a secure broker
            from meshlog.kafka_acl_apply import apply_acls

            acls = apply_acls(self.bootstrap, admin)
            self.say(f"ACLs per role applied ({acls.created} created, {acls.present} already present)")
        if self.trust is not None and self.kafka is not None:
            logged = self.trust.start_logging(self.bootstrap, self.kafka_identities())
            self.say(f"logged the {logged} certificates issued before the log existed to meshlog.identities; "
                     "every offline issuance from now on is logged as it is made")

    def kafka_identities(self) -> tuple[IdentityFiles, ...]:
        """The broker's and the launcher's admin certificates (issued by ``LocalKafka`` before any topic)."""
        from identity import spiffe
        from meshlog import kafka_tls

        brokers = [str(n.node_id) for n in self.cluster.nodes] if self.cluster else [kafka_tls.BROKER_ID]
        return tuple(IdentityFiles.in_dir(kafka_tls.identity_dir(
            self.trust.tls_dir, spiffe.SpiffeId.of(self.trust.domain, kafka_tls.BROKER_ROLE, name)))
            for name in (*brokers, kafka_tls.ADMIN_ID))

    def log_identities(self) -> None:
        """Append the certificates issued offline since the last call to ``meshlog.identities`` (as the demo's
        operator, like ``meshlog ca issue``): the projector verifies each event against them."""
        if self.trust is not None and self.kafka is not None:
            self.trust.log_issued()  # a no-op once logging started: each issuance is then appended as it is made

    def event_flags(self) -> list[str]:
        """What the projector and replay run with: the demo's processes sign with the demo's identities only on
        the broker it started (with --bootstrap they inherit that broker's settings, under --insecure they have
        none), so only then is every event verified; otherwise it is folded unverified, explicitly."""
        return [] if self.trust is not None and self.kafka is not None else ["--insecure-events"]

    def start_control_plane(self) -> None:
        assert self.bootstrap
        if self.trust is not None:  # issued (and logged, in one append) before any of them starts
            with self.trust.batch():
                for path in ("projector", "ca-server/ca-1", REPLAY_IDENTITY,
                             *(f"checker/checker-{i}" for i in range(1, self.checkers + 1))):
                    self.trust.identity(path)
                for name in ("gateway-1", "gateway-2"):
                    self.trust.gateway(name)
        env = self.kafka_env("projector")
        self.projector = spawn("projector", [str(BIN / "projector"), "run", "--bootstrap", self.bootstrap,
                                             "--data-dir", str(self.workdir / "projector-data"),
                                             *self.event_flags()],
                               self.workdir, env, own_group=True)
        self.say(f"projector started (pid {self.projector.pid})")
        if self.trust is not None:
            self.start_ca_server()  # it starts while the gateways do; ready before the first sidecar enrols
        for name in ("gateway-1", "gateway-2"):
            self.start_gateway(name)
        if self.ca_server is not None:
            self.wait_ca_server()
        for i in range(1, self.checkers + 1):
            self.start_checker(f"checker-{i}")

    def start_ca_server(self, replica: str = "ca-1") -> Process:
        """``meshlog ca serve`` over the demo's CA (HTTPS on 127.0.0.1), appending what it issues to
        ``meshlog.identities`` as ``ca-server/<replica>`` (``wait_ca_server``: until it serves)."""
        assert self.trust is not None
        ready = self.workdir / "ca-serve.ready"
        ready.unlink(missing_ok=True)
        self.ca_server = spawn("ca-serve", [str(BIN / "meshlog"), "ca", "serve", "--dir", str(self.trust.tls_dir / "ca"),
                                            "--bootstrap", self.bootstrap, "--port", "0", "--replica", replica,
                                            "--ready-file", str(ready)],
                               self.workdir, self.kafka_env(f"ca-server/{replica}"), own_group=True)
        return self.ca_server

    def wait_ca_server(self) -> str:
        ready = self.workdir / "ca-serve.ready"
        wait_until(lambda: ready.exists() and ready.read_text().strip(), 60, "ca serve to be ready",
                   on_fail=self.ca_server.log_tail)
        self.ca_url = f"https://127.0.0.1:{int(ready.read_text())}"
        self.say(f"ca serve at {self.ca_url}: sidecars enrol with one-time join tokens (pid {self.ca_server.pid})")
        return self.ca_url

    def gateway_identity(self, name: str) -> IdentityFiles | None:
        """The files gateway replica ``name`` serves xDS with (127.0.0.1 as an IP SAN); None: --insecure."""
        return self.trust.gateway(name) if self.trust is not None else None

    def sidecar_identity(self, service: str, instance: str) -> IdentityFiles | None:
        """The workload certificate a sidecar dials the gateways with (enrolled through ``ca serve`` with a join
        token when it runs, else issued offline); None: plaintext (--insecure)."""
        if self.trust is None:
            return None
        path = f"sidecar/{service}/{instance}"
        if self.ca_url and path not in self.trust.issued:
            return self.trust.join(self.ca_url, service, instance)
        return self.trust.sidecar(service, instance)

    def start_gateway(self, name: str, port: int | None = None) -> Process:
        port = port or free_port()
        ready = self.workdir / f"{name}.ready.json"
        ready.unlink(missing_ok=True)
        tls_args, env = gateway_tls_args(self.gateway_identity(name)), self.kafka_env(f"gateway/{name}")
        self.log_identities()
        gw = spawn(name, [str(BIN / "xds-gateway"), "run", "--bootstrap", self.bootstrap, "--port", str(port),
                          "--http-port", "0", "--grace", "1", "--ready-file", str(ready), *tls_args],
                   self.workdir, env, own_group=True)
        wait_until(lambda: ready.exists() and ready.read_text().strip(), 60, f"{name} to be ready",
                   on_fail=gw.log_tail)
        gw.info = json.loads(ready.read_text())
        self.gateways[name] = gw
        self.gateway_ports[name] = port
        self.say(f"{name} serving delta xDS on 127.0.0.1:{port} (pid {gw.pid})")
        return gw

    def start_checker(self, name: str) -> Process:
        env = self.kafka_env(f"checker/{name}")
        self.log_identities()
        checker = spawn(name, [str(BIN / "registrar"), "healthcheck", "--bootstrap", self.bootstrap,
                               "--checker-id", name, "--interval", "0.5", "--timeout", "0.5", "--fall", "3",
                               "--rise", "2", "--status-file", str(self.workdir / f"{name}.status.json")],
                        self.workdir, env, own_group=True)
        self.checker_procs[name] = checker
        self.say(f"{name} started: central health checks, sharing instances through a consumer group (pid {checker.pid})")
        return checker

    def start_instance(self, instance: str, version: str, service: str, depends_on: tuple[str, ...] = ()) -> Sidecar:
        app = DemoApp(instance, version, service).start()
        self.apps[instance] = app
        admin, inbound, outbound = free_ports(3)  # distinct: the OS may hand out a port just closed again
        cache = self.workdir / f"sidecar-{instance}"
        status_file = cache / "status.json"
        status_file.unlink(missing_ok=True)
        argv = [str(BIN / "meshlog-sidecar"), "run", "--service", service, "--instance-id", instance,
                "--node-id", instance, "--app-port", str(app.port), "--inbound-port", str(inbound),
                "--outbound-port", str(outbound), "--admin-port", str(admin), "--bootstrap", self.bootstrap,
                "--cache-dir", str(cache), "--drain-seconds", "1", "--append-timeout", "3",
                "--label", f"version={version}", *sidecar_tls_args(self.sidecar_identity(service, instance))]
        if self.ca_url and self.trust is not None:  # enrolled at `ca serve`: the sidecar renews itself there
            argv += ["--ca-url", self.ca_url]
        for address in self.gateway_addresses():
            argv += ["--gateway", address]
        for dep in depends_on:
            argv += ["--depends-on", dep]
        env = self.kafka_env(f"sidecar/{service}/{instance}")
        self.log_identities()  # a sidecar issued offline (no `ca serve`); enrolled ones are logged by the CA
        process = spawn(f"sidecar-{instance}", argv, self.workdir, env, own_group=True)
        sidecar = Sidecar(instance, service, instance, version, process, admin, inbound, outbound, status_file,
                          cache / "run" / "envoy.log")
        self.sidecars[instance] = sidecar
        return sidecar

    def start_mesh(self) -> None:
        for instance, version in (("reviews-v1-a", "v1"), ("reviews-v1-b", "v1"), ("reviews-v2-a", "v2")):
            self.start_instance(instance, version, self.reviews)
        self.start_instance("web-1", "v1", self.web, depends_on=(self.reviews,))
        for sidecar in self.sidecars.values():
            wait_until(sidecar.live, 60, f"{sidecar.node}'s Envoy to be live", interval=0.2,
                       on_fail=sidecar.log_tail)
            self.say(f"sidecar {sidecar.node}: Envoy live (admin 127.0.0.1:{sidecar.admin_port}, "
                     f"inbound {sidecar.inbound_port}, outbound {sidecar.outbound_port})")
        self.wait_until_routed()

    def wait_until_routed(self, timeout: float = 60.0) -> None:
        """Until a request through web's sidecar has reached every reviews instance: an Envoy is live once it
        has *a* config, but the per-node listeners and endpoints may still be on their way (a node's own
        resources follow its registration into the view). The demo's traffic and checks start after this."""
        from meshlog.demo_app import KeepAliveClient, classify

        wanted = {i for i, s in self.sidecars.items() if s.service == self.reviews}
        seen: set[str] = set()
        client = KeepAliveClient(self.sidecars["web-1"].outbound_port, timeout=2)

        def probe() -> bool:
            try:
                ok, _version, instance = classify(*client.get(self.reviews))
            except (OSError, ValueError, http.client.HTTPException):
                client.close()
                return False
            if ok:
                seen.add(instance)
            return wanted <= seen

        try:
            wait_until(probe, timeout, "web's sidecar to route to every reviews instance", interval=0.05,
                       on_fail=lambda: f"reached only {sorted(seen)}")
        finally:
            client.close()

    def start_console(self) -> str:
        """`replay ui` over the demo's log (read-only, 127.0.0.1); returns its URL."""
        ready = self.workdir / "console.ready.json"
        ready.unlink(missing_ok=True)
        self.console = spawn("console", [str(BIN / "replay"), "ui", "--bootstrap", self.bootstrap,
                                         "--ready-file", str(ready), *self.event_flags()], self.workdir, self.kafka_env(REPLAY_IDENTITY),
                        own_group=True)
        wait_until(lambda: ready.exists() and ready.read_text().strip(), 60, "the console to be ready",
                   on_fail=self.console.log_tail)
        return json.loads(ready.read_text())["url"]

    # -- view -----------------------------------------------------------------
    def processes(self) -> list[tuple[str, int | None, str]]:
        rows: list[tuple[str, int | None, str]] = []
        if self.cluster is not None:
            for node in self.cluster.nodes:
                rows.append((f"kafka-{node.node_id}", node.pid, "running" if node.is_running() else "killed"))
        elif self.kafka is not None:
            pid = getattr(self.kafka, "pid", None)
            rows.append(("kafka", pid, "running" if self.kafka.is_running() else "stopped"))
        named: list[Process] = [p for p in (self.projector,) if p] + list(self.gateways.values()) \
            + list(self.checker_procs.values()) + [s.process for s in self.sidecars.values()]
        for process in named:
            code = process.proc.poll()
            rows.append((process.name, process.pid, "running" if code is None else f"exited {code}"))
        return rows

    def diagnostics(self) -> str:
        parts = [s.log_tail() for s in self.sidecars.values()]
        parts += [p.log_tail() for p in (self.projector, self.ca_server, *self.gateways.values(),
                                         *self.checker_procs.values()) if p]
        return "\n".join(parts)

    # -- stop -----------------------------------------------------------------
    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        if self.console is not None:
            self.console.stop(10)
        for sidecar in self.sidecars.values():  # drain them all at once, then wait for each
            sidecar.process.terminate()
        for sidecar in self.sidecars.values():
            sidecar.process.stop(20)
        others = [*self.checker_procs.values(), *self.gateways.values(), *([self.ca_server] if self.ca_server else [])]
        for process in others:
            process.terminate()
        for process in others:
            process.stop(15)
        if self.projector is not None:
            self.projector.stop(20)
        for app in self.apps.values():
            app.stop()
        if self.kafka is not None:
            self.kafka.stop()
        if self.trust is not None:
            kafka_security.configure(None)
