"""Data-plane latency: what the sidecar path adds over calling the app directly.

Setup (everything real, on 127.0.0.1, ports picked at run time):
- Kafka (``--bootstrap``, else ``meshlog.kafka_local.kafka_for_tests``:
  $MESHLOG_KAFKA_BOOTSTRAP, a testcontainers broker, or a local broker), the
  ``projector`` and one ``xds-gateway``;
- the upstream app: an asyncio HTTP/1.1 responder with a fixed 11-byte body
  (``python -m tests.support.apps --fast``) in its own process;
- two ``meshlog-sidecar run`` processes (each one Envoy 1.40, one worker
  thread): the server's, in front of the app, and the client's, whose app
  depends on the server's service.

Paths measured in interleaved rounds (direct, sidecar, mtls, then mtls,
sidecar, direct, ...: ABBA order, so a drift of the neighbours' load weighs on
every path alike; latencies pooled per path), same generator, same app:
- direct:  generator -> app
- sidecar: generator -> client sidecar 127.0.0.1:<outbound> (Host: <service>)
           -> server sidecar <inbound> -> app           (two Envoy hops: the mesh)
- mtls:    the same with a second pair of sidecars holding mesh identities
           (one trust domain, a TLS gateway): the hop between the sidecars is
           mTLS, the server's inbound listener runs the RBAC filter admitting
           the client's service (``projector.mesh_tls``). Reported as added
           latency over the plaintext sidecar path measured in the same run.

Load generator: this file's own ``generate`` — an open-loop, constant-rate
generator in Python asyncio (no apt package, nothing to install): C
keep-alive HTTP/1.1 connections, each sending at R/C requests/s on its own
fixed schedule (connections staggered evenly), one request in flight per
connection. Latency is measured from the *intended* send time to the end of
the response (wrk2-style correction for coordinated omission: a late
response delays the next send, and that delay is counted). It runs in its own
process. Its own scheduling jitter is part of both paths' figures, which is
why the figure of interest is the difference.

The seeds' benchmark point: 40 connections, 1,600 requests/s. Defaults:
6 rounds of 2 s warm-up + 5 s measured per path (48,000 measured requests
per path): many short rounds, because on a shared 2-core host one round's
p50 is mostly the neighbours' load at that moment (per-round mTLS-plaintext
differences of +0.2 and +1.4 ms in one 2-round run); the per-round
differences are printed with their median, min and max beside the pooled
figure. The 1-minute load average is printed before, after, and with every
round.

Evidence printed beside the latencies (issue 13: where does the mTLS hop's
time go?): CPU microseconds per request of each process on a path (Envoys
and app from /proc, the generator from rusage; warm-up requests included),
the TLS handshakes and connection/request counters of the four sidecars
(``ssl.handshake`` vs ``upstream_rq_total``: are connections reused?), and
the connections established to each server sidecar's inbound port (``ss``).
Each Envoy's /config_dump and /stats are saved in the work dir.

Usage:  .venv/bin/python bench/dataplane.py [--duration 5] [--rounds 6] [--rate 1600] [--connections 40]
                                            [--bootstrap HOST:PORT] [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import uuid
from contextlib import ExitStack
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.apps import read_message  # noqa: E402  (the one HTTP/1.1 message reader, as the fast app's)

BIN = Path(sys.executable).parent


# ---------------------------------------------------------------- the generator (runs in its own process)


async def _connection(i: int, port: int, request: bytes, t0: float, interval: float, stagger: float,
                      end: float, warm_end: float, out: dict) -> None:
    loop = asyncio.get_running_loop()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    k = 0
    try:
        while True:
            intended = t0 + stagger + k * interval
            if intended >= end:
                break
            k += 1
            delay = intended - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            sent = loop.time()
            writer.write(request)
            try:
                status = int((await read_message(reader)).split(b" ", 2)[1])
            except (asyncio.IncompleteReadError, ConnectionError, ValueError) as exc:
                out["errors"].append(repr(exc))
                writer.close()
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                continue
            done = loop.time()
            if intended < warm_end:
                continue
            if status != 200:
                out["errors"].append(f"HTTP {status}")
                continue
            out["latency"].append(done - intended)
            out["service"].append(done - sent)
    finally:
        writer.close()


async def _generate(port: int, host: str, rate: float, connections: int, duration: float, warmup: float) -> dict:
    request = f"GET / HTTP/1.1\r\nHost: {host}\r\nUser-Agent: meshlog-bench\r\n\r\n".encode()
    loop = asyncio.get_running_loop()
    interval = connections / rate  # per connection
    t0 = loop.time() + 0.2
    warm_end = t0 + warmup
    end = warm_end + duration
    out: dict = {"latency": [], "service": [], "errors": []}
    await asyncio.gather(*(
        _connection(i, port, request, t0, interval, i * interval / connections, end, warm_end, out)
        for i in range(connections)))
    return out


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summarize(out: dict, duration: float) -> dict:
    lat = out["latency"]
    ms = lambda v: round(v * 1000, 3)  # noqa: E731
    return {
        "requests": len(lat),
        "errors": len(out["errors"]),
        "error_samples": out["errors"][:5],
        "achieved_rps": round(len(lat) / duration, 1),
        "p50_ms": ms(_pct(lat, 0.50)),
        "p90_ms": ms(_pct(lat, 0.90)),
        "p99_ms": ms(_pct(lat, 0.99)),
        "p999_ms": ms(_pct(lat, 0.999)),
        "max_ms": ms(max(lat)) if lat else None,
        "mean_ms": ms(statistics.fmean(lat)) if lat else None,
        "service_p50_ms": ms(_pct(out["service"], 0.50)),
        "service_p99_ms": ms(_pct(out["service"], 0.99)),
    }


def generate_main(args: argparse.Namespace) -> None:
    out = asyncio.run(_generate(args.port, args.host, args.rate, args.connections, args.duration, args.warmup))
    print(json.dumps(out))


def run_generator(port: int, host: str, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "generate", "--port", str(port), "--host", host, "--rate", str(args.rate),
           "--connections", str(args.connections), "--duration", str(args.duration), "--warmup", str(args.warmup)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=args.duration + args.warmup + 120)
    if result.returncode != 0:
        raise RuntimeError(f"generator failed: {result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- the mesh under test


def _spawn(name: str, argv: list[str], workdir: Path):
    from tests.support.stack import spawn

    return spawn(name, argv, workdir, env={"PYTHONPATH": str(ROOT)})


def envoy_stats(status_path: Path, prefix: str) -> dict[str, int]:
    """Counters of the sidecar's Envoy whose name starts with ``prefix`` (admin /stats)."""
    import urllib.request

    admin = json.loads(Path(status_path).read_text())["ports"]["admin"]
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/stats?usedonly", timeout=5) as response:
        text = response.read().decode()
    out = {}
    for line in text.splitlines():
        name, _, value = line.partition(": ")
        if name.startswith(prefix) and value.strip().isdigit():
            out[name] = int(value)
    return out


def round_order(paths: tuple, round_no: int) -> tuple:
    """ABBA order (forward, then backward, ...): a drift in the neighbours' load over the run then weighs on
    every path alike, instead of always on the last path of a round."""
    return paths if round_no % 2 == 0 else paths[::-1]


def admin_get(status_path: Path, path: str, out: Path) -> None:
    """Save one admin endpoint's answer (``/config_dump``, ``/stats``) of a sidecar's Envoy to ``out``."""
    import urllib.request

    admin = json.loads(Path(status_path).read_text())["ports"]["admin"]
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}{path}", timeout=10) as response:
        out.write_bytes(response.read())


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a live process, all its threads (/proc/<pid>/stat fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def established_to(port: int) -> int:
    """Established TCP connections whose peer port is ``port`` (``ss -tnH``): the pool from one sidecar to another."""
    try:
        out = subprocess.run(["ss", "-tnH", "state", "established", f"( dport = :{port} )"],
                             capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return -1
    return sum(1 for line in out.splitlines() if line.strip())


def connection_counters(status_path: Path) -> dict[str, int]:
    """A sidecar's counters that tell whether connections are reused: TLS handshakes, connections, requests."""
    keep = (".ssl.handshake", ".ssl.session_reused", ".ssl.connection_error", ".upstream_cx_total",
            ".upstream_rq_total", ".downstream_cx_total", ".downstream_rq_total")
    stats = envoy_stats(status_path, "")
    return {k: v for k, v in sorted(stats.items()) if k.endswith(keep) and v
            and not k.startswith(("cluster.meshlog_xds", "listener.admin", "http.admin", "cluster_manager"))}


def envoy_pid(status_path: Path) -> int:
    return json.loads(Path(status_path).read_text())["envoy"]["pid"]


def sidecar_argv(workdir: Path, bootstrap: str, gateway: str, *, service: str, instance: str, app_port: int,
                 depends_on: str | None = None, identity=None) -> tuple[list[str], int, Path]:
    from meshlog.kafka_local import free_port
    from meshlog.xds_trust import sidecar_tls_args

    outbound = free_port()
    cache = workdir / f"sidecar-{service}-{instance}"
    argv = [str(BIN / "meshlog-sidecar"), "run", "--service", service, "--instance-id", instance,
            "--app-port", str(app_port), "--inbound-port", str(free_port()), "--outbound-port", str(outbound),
            "--gateway", gateway, "--bootstrap", bootstrap, "--cache-dir", str(cache), "--drain-seconds", "0",
            *sidecar_tls_args(identity)]
    if depends_on:
        argv += ["--depends-on", depends_on]
    return argv, outbound, cache / "status.json"


def inbound_port(argv: list[str]) -> int:
    return int(argv[argv.index("--inbound-port") + 1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command")
    gen = sub.add_parser("generate", help="(internal) run the load generator against one port")
    gen.add_argument("--port", type=int, required=True)
    gen.add_argument("--host", default="localhost")
    for p in (parser, gen):
        p.add_argument("--rate", type=float, default=1600.0, help="requests per second (default 1600)")
        p.add_argument("--connections", type=int, default=40, help="keep-alive connections (default 40)")
        p.add_argument("--duration", type=float, default=5.0, help="measured seconds per path and round (default 5)")
        p.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds first (default 2)")
    parser.add_argument("--rounds", type=int, default=6, help="interleaved rounds per path, pooled (default 6)")
    parser.add_argument("--bootstrap", help="an existing Kafka (default: start one for the bench)")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    if args.command == "generate":
        generate_main(args)
        return 0
    if not (1 <= args.connections <= 1000 and 1 <= args.rate <= 20000 and 1 <= args.duration <= 120
            and 1 <= args.rounds <= 10):
        parser.error("keep it bounded: 1-1000 connections, 1-20000 req/s, 1-120 s, 1-10 rounds")

    import logging

    from events.admin import ensure_topics
    from meshlog.kafka_local import free_port, kafka_for_tests
    from tests.support.apps import KeepAliveClient
    from tests.support.stack import start_gateway, start_projector, wait_until

    logging.basicConfig(level=logging.WARNING)
    workdir = Path(tempfile.mkdtemp(prefix="meshlog-bench-dataplane-"))
    sfx = uuid.uuid4().hex[:6]
    service = f"bench-srv-{sfx}"
    processes = []
    with ExitStack() as stack:
        bootstrap = args.bootstrap or stack.enter_context(kafka_for_tests())
        try:
            print(f"Kafka {bootstrap}; work dir {workdir}", flush=True)
            asyncio.run(ensure_topics(bootstrap))
            # the bench's broker is plaintext: no process holds a Kafka client identity, so none signs its events;
            # the projector folds them in the explicit insecure mode (it refuses unsigned events by default, and
            # then no sidecar ever gets a view). This bench measures the data plane, not the log's authorship.
            processes.append(start_projector(bootstrap, workdir, extra=["--insecure-events"]))
            gateway = start_gateway(bootstrap, workdir, "gateway")
            processes.append(gateway)
            gw = f"127.0.0.1:{gateway.info['xds_port']}"

            app_port = free_port()
            app = _spawn("app", [sys.executable, "-m", "tests.support.apps", "--fast", "--port", str(app_port)],
                         workdir)
            processes.append(app)
            server_argv, _, server_status = sidecar_argv(workdir, bootstrap, gw, service=service, instance="s1",
                                                         app_port=app_port)
            processes.append(_spawn("sidecar-server", server_argv, workdir))
            client_argv, outbound, client_status = sidecar_argv(workdir, bootstrap, gw, service=f"bench-cli-{sfx}",
                                                    instance="c1", app_port=free_port(), depends_on=service)
            processes.append(_spawn("sidecar-client", client_argv, workdir))

            def through_mesh() -> bool:
                try:
                    return KeepAliveClient(outbound, timeout=2).get(service)[0] == 200
                except OSError:
                    return False

            wait_until(through_mesh, 90, "a request through both sidecars", interval=0.3,
                       on_fail=lambda: "\n".join(p.log_tail() for p in processes))

            # the same pair again, with mesh identities: mTLS + RBAC between the sidecars
            from identity import spiffe
            from identity.pki import IdentityFiles
            from tests.support.trust import MeshCA

            ca = MeshCA("bench.mesh", workdir / "ca")
            ids = {name: ca.issue(sid, name) for name, sid in (
                ("s2", spiffe.sidecar("bench.mesh", f"{service}-tls", "s2")),
                ("c2", spiffe.sidecar("bench.mesh", f"bench-cli-{sfx}-tls", "c2")))}
            gw_ident = ca.issue(spiffe.gateway("bench.mesh", "g1"), "gateway", server_names=["127.0.0.1"])
            as_files = lambda i: IdentityFiles(cert=i.cert, key=i.key, bundle=i.ca)  # noqa: E731
            tls_gateway = start_gateway(bootstrap, workdir, "gateway-tls", identity=as_files(gw_ident))
            processes.append(tls_gateway)
            tls_gw = f"127.0.0.1:{tls_gateway.info['xds_port']}"
            s2_argv, _, s2_status = sidecar_argv(workdir, bootstrap, tls_gw, service=f"{service}-tls", instance="s2",
                                                 app_port=app_port, identity=as_files(ids["s2"]))
            processes.append(_spawn("sidecar-server-tls", s2_argv, workdir))
            c2_argv, tls_outbound, c2_status = sidecar_argv(
                workdir, bootstrap, tls_gw, service=f"bench-cli-{sfx}-tls", instance="c2", app_port=free_port(),
                depends_on=f"{service}-tls", identity=as_files(ids["c2"]))
            processes.append(_spawn("sidecar-client-tls", c2_argv, workdir))

            def through_tls_mesh() -> bool:
                try:
                    return KeepAliveClient(tls_outbound, timeout=2).get(f"{service}-tls")[0] == 200
                except OSError:
                    return False

            wait_until(through_tls_mesh, 90, "a request through both mTLS sidecars", interval=0.3,
                       on_fail=lambda: "\n".join(p.log_tail() for p in processes))
            print(f"load: {args.connections} keep-alive connections, {args.rate:g} requests/s open loop, "
                  f"{args.warmup:g} s warm-up + {args.duration:g} s measured per path; generator: this file's "
                  "asyncio open-loop constant-rate generator (latency from intended send time)", flush=True)
            load_before = os.getloadavg()
            print(f"machine: {os.cpu_count()} CPUs, load average {load_before[0]:.2f} (1 min) before the runs",
                  flush=True)
            paths = (("direct", app_port, "localhost"), ("sidecar", outbound, service),
                     ("mtls", tls_outbound, f"{service}-tls"))
            pooled: dict[str, dict] = {name: {"latency": [], "service": [], "errors": []} for name, _, _ in paths}
            # CPU per request of each process on a path: on 2 shared cores, CPU is what turns into queueing
            cpu_pids = {"app": app.pid,
                        "client envoy": envoy_pid(client_status), "server envoy": envoy_pid(server_status),
                        "mTLS client envoy": envoy_pid(c2_status), "mTLS server envoy": envoy_pid(s2_status)}
            on_path = {"direct": ("app",), "sidecar": ("client envoy", "server envoy", "app"),
                       "mtls": ("mTLS client envoy", "mTLS server envoy", "app")}
            cpu: dict[str, dict[str, float]] = {name: {} for name, _, _ in paths}
            per_round: dict[str, list[float]] = {name: [] for name, _, _ in paths}
            for round_no in range(args.rounds):  # interleaved, so that a change in machine load hits every path
                for name, port, host in round_order(paths, round_no):
                    before = {k: cpu_seconds(pid) for k, pid in cpu_pids.items()}
                    gen_before = resource.getrusage(resource.RUSAGE_CHILDREN)
                    raw = run_generator(port, host, args)
                    gen_after = resource.getrusage(resource.RUSAGE_CHILDREN)
                    for k, pid in cpu_pids.items():
                        cpu[name][k] = cpu[name].get(k, 0.0) + cpu_seconds(pid) - before[k]
                    cpu[name]["generator"] = cpu[name].get("generator", 0.0) + (
                        gen_after.ru_utime + gen_after.ru_stime - gen_before.ru_utime - gen_before.ru_stime)
                    for key in pooled[name]:
                        pooled[name][key] += raw[key]
                    per_round[name].append(_pct(raw["latency"], .5) * 1000)
                    print(f"  round {round_no + 1} {name}: p50 {_pct(raw['latency'], .5) * 1000:.3f} ms, "
                          f"p99 {_pct(raw['latency'], .99) * 1000:.3f} ms (load average {os.getloadavg()[0]:.2f})",
                          flush=True)
            results = {name: summarize(raw, args.duration * args.rounds) for name, raw in pooled.items()}
            sent = {name: (args.duration + args.warmup) * args.rate * args.rounds for name in cpu}  # incl. warm-up
            cpu_us = {name: {k: round(v / sent[name] * 1e6, 1) for k, v in cpu[name].items()
                             if k in on_path[name] + ("generator",)} for name in cpu}
            for name, parts in cpu_us.items():
                print(f"  CPU per request, {name}: " + ", ".join(f"{k} {v:.1f} us" for k, v in parts.items()),
                      flush=True)
            added_cpu = {side: round(cpu_us["mtls"][f"mTLS {side} envoy"] - cpu_us["sidecar"][f"{side} envoy"], 1)
                         for side in ("client", "server")}
            print(f"  Envoy CPU per request added by mTLS + RBAC: client {added_cpu['client']:+.1f} us, server "
                  f"{added_cpu['server']:+.1f} us (the hop's own cost; the latency figures below add the host's "
                  "queueing)", flush=True)
            spread = [round(m - p, 3) for m, p in zip(per_round["mtls"], per_round["sidecar"])]
            print(f"  mTLS - plaintext p50 per round: {', '.join(f'{d:+.3f}' for d in spread)} ms (median "
                  f"{statistics.median(spread):+.3f}, min {min(spread):+.3f}, max {max(spread):+.3f})", flush=True)
            for what, (status_path, argv_) in {"plaintext": (server_status, server_argv),
                                               "mTLS": (s2_status, s2_argv)}.items():
                print(f"  {what} server sidecar: {established_to(inbound_port(argv_))} established connections to "
                      "its inbound port (ss)", flush=True)
            for what, status_path in (("client", client_status), ("server", server_status),
                                      ("mTLS client", c2_status), ("mTLS server", s2_status)):
                print(f"  {what} sidecar counters: {connection_counters(status_path)}", flush=True)
                stem = what.replace(" ", "-")
                admin_get(status_path, "/config_dump?include_eds", workdir / f"{stem}.config_dump.json")
                admin_get(status_path, "/stats", workdir / f"{stem}.stats.txt")
            print(f"  Envoy config dumps and stats: {workdir}/*.config_dump.json, *.stats.txt", flush=True)
            pools = {"client sidecar -> server sidecar": (client_status, f"cluster.{service}."),
                     "server sidecar -> app": (server_status, "cluster.bench-srv-"),
                     "mTLS client sidecar -> server sidecar": (c2_status, f"cluster.{service}-tls."),
                     "mTLS server sidecar -> app": (s2_status, "cluster.bench-srv-")}
            for what, (status_path, prefix) in pools.items():
                stats = envoy_stats(status_path, prefix)
                cx = sum(v for k, v in stats.items() if k.endswith(".upstream_cx_total"))
                rq = sum(v for k, v in stats.items() if k.endswith(".upstream_rq_total"))
                print(f"  {what}: {rq} requests over {cx} upstream connections (keep-alive pool)", flush=True)
            load_after = os.getloadavg()
            for name in results:
                r = results[name]
                print(f"{name:8s} n={r['requests']:6d} errors={r['errors']} rps={r['achieved_rps']:7.1f}  "
                      f"p50 {r['p50_ms']:.3f} ms  p90 {r['p90_ms']:.3f} ms  p99 {r['p99_ms']:.3f} ms  "
                      f"p99.9 {r['p999_ms']:.3f} ms  max {r['max_ms']:.3f} ms  "
                      f"(service time p50 {r['service_p50_ms']:.3f} / p99 {r['service_p99_ms']:.3f} ms)", flush=True)
            added = {q: round(results["sidecar"][f"{q}_ms"] - results["direct"][f"{q}_ms"], 3) for q in ("p50", "p99")}
            print(f"added by the sidecar path (two Envoy hops): p50 +{added['p50']:.3f} ms, p99 +{added['p99']:.3f} ms",
                  flush=True)
            added_tls = {q: round(results["mtls"][f"{q}_ms"] - results["sidecar"][f"{q}_ms"], 3) for q in ("p50", "p99")}
            denied = envoy_stats(s2_status, "http.inbound.rbac.")
            print(f"added by mTLS + RBAC over the plaintext sidecar path: p50 {added_tls['p50']:+.3f} ms, "
                  f"p99 {added_tls['p99']:+.3f} ms (server RBAC counters: {denied or 'none used'})", flush=True)
            print(f"load average {load_after[0]:.2f} (1 min) after the runs; on a shared machine the p99 mostly "
                  "measures the neighbours: compare runs at a low load average", flush=True)
            if args.json:
                Path(args.json).write_text(json.dumps({"results": results, "added_ms": added,
                                                       "cpu_us_per_request": cpu_us, "mtls_added_envoy_cpu_us": added_cpu,
                                                       "mtls_minus_plain_p50_per_round": spread,
                                                       "added_by_mtls_ms": added_tls,
                                                       "loadavg_before_after": [load_before[0], load_after[0]],
                                                       "rate": args.rate, "connections": args.connections,
                                                       "duration_s": args.duration}, indent=1))
            bad = sum(r["errors"] for r in results.values())
            return 1 if bad else 0
        finally:
            for p in processes:
                if p.name.startswith("sidecar") and p.alive():
                    p.proc.send_signal(signal.SIGTERM)
            for p in reversed(processes):
                p.stop()


if __name__ == "__main__":
    sys.exit(main())
