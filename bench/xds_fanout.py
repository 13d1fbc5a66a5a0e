"""xDS fan-out: one gateway process, many simulated delta-xDS clients (issue 4 item 7).

Setup. The gateway is the real ``AdsServicer`` over a real ``ViewCache`` in
its own process (grpc.aio server with the same options as ``xds-gateway
run``), fed *in process*: the parent folds and renders a mesh with the
projector's own ``fold_many``/``render_all``/``plan_views``/``plan_changes``
and the gateway process applies exactly the view records the projector would
publish (bodies, then the changed memberships) with ``apply_records`` — no
Kafka, so the figures are the gateway's alone. Clients run in several
processes (``bench/xds_fanout_client.py``), each holding thousands of
``grpc.aio`` streams on a few channels (one HTTP/2 connection each). A client
stream behaves like Envoy: CDS legacy wildcard with node.id; subscribes EDS
to its EDS clusters before ACKing CDS; then LDS wildcard, then RDS for the
route names its listeners carry; every response is ACKed by nonce.

The mesh (defaults): 1,000 HTTP services x 10 instances, each instance a
sidecar node depending on 4 random services (10,000 nodes); ``svc-000`` is
the hot service: 999 nodes plus ``edge-0`` (a node depending on all 1,000
services) depend on it = 1,000 subscribers. ``edge-1`` (also depends on all
1,000) is used only by the state-of-the-world probe at the end.

Figures printed:

1. Endpoint change to all subscribers: a health flip of one ``svc-000``
   instance (one ClusterLoadAssignment body + 1,001 membership records,
   applied in one ``apply_records`` call). Latency = client receive time
   (time.time() in the client process, as the response is read) minus
   time.time() just before ``apply_records`` in the gateway (client processes
   run with their cyclic GC frozen and off while measuring). Reported per
   change ("reached all" = the slowest subscriber) and per delivery.
2. Streams held and the gateway's VmRSS (``/proc/PID/status``) with all
   streams open and initialised (plus before any stream, for the per-stream
   cost).
3. Delta responses per second of gateway CPU: the gateway's responses counter
   over its utime+stime (``/proc/PID/stat``, all threads) while churn batches
   (health flips of random services, each reaching their dependents) are
   applied at a fixed interval; also for the hot fan-out of phase 1.
4. Bytes per change: ByteSize() of the delta response carrying the changed
   ClusterLoadAssignment, vs the ByteSize() of the SotW CDS and EDS responses
   the same gateway sends a node depending on all services (``edge-1``, over
   ``StreamAggregatedResources``).
5. Bytes (and responses) received during phase 1 by the streams whose node
   does not depend on ``svc-000``, counted at the clients (should be 0).

Usage:  .venv/bin/python bench/xds_fanout.py            (full: ~2 min on 2 cores)
        .venv/bin/python bench/xds_fanout.py --quick    (about 20 s; 1,000 streams, 200 subscribers)
        --profile    also runs 5 hot changes and the churn again under cProfile in the
                     gateway process and prints its top functions
        --json FILE  writes the figures as JSON
        --no-gc-freeze  experiment: leave out the garbage-collector policy of `xds-gateway run`
                     (``xds_gateway.gc_policy``: a higher young-generation threshold and a
                     gc.freeze() every 30 s, here from the view's load on, and once more when
                     the streams are up)
        --tls        the gateway serves mTLS as `xds-gateway run` does (xds_gateway.tls credentials and a
                     TrustGuard deciding every stream and view change); the clients present an
                     operator certificate (operators may watch any node, so one certificate serves
                     10,000 node ids; the decision path is the same pure function a sidecar's takes)
        --no-floor   skips the closing calibration: a bare grpc.aio servicer pushing the
                     same payload to the same number of subscribers (this machine's and
                     these Python clients' floor for figure 1)
        --peer go    the same phases and clients against the go-control-plane v0.14 peer
                     (bench/go_peer; bench/xds_fanout_go.py feeds it the same view records);
                     --peer both runs the meshlog gateway, then the Go peer, then the floor,
                     and prints a side-by-side table. Needs Go on PATH: the peer is built with
                     `go build` into ~/.cache/meshlog/go_peer on first use (modules from the Go
                     module proxy; the first build compiles the Envoy API, minutes on 2 cores)

Besides the figures, it reports the gateway's GC collections (gc.callbacks) per phase:
at 10,000 streams the process tracks ~1.6 M objects and a full collection stalls it
for over a second.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import multiprocessing as mp
import os
import random
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.append(str(Path(__file__).resolve().parent))  # after ROOT: bench/projector.py must not shadow projector/

from bench.host_window import HostWindow, steal_text  # noqa: E402

HOT = "svc-000"
CDS = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
EDS = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"

# the options ``xds_gateway.cli.serve`` builds its server with (kept in step by hand)
GATEWAY_SERVER_OPTIONS = [
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.max_concurrent_streams", 100_000),
]

TARGETS = {  # issue 14's, for 10,000 streams
    "p50_ms_to_all_subscribers": 60.0,
    "p99_ms_to_all_subscribers": 100.0,
    "streams_per_process": 10_000,
    "rss_mb_at_10k_streams": 600.0,
    "cpu_ms_per_1000_responses": 60.0,
    "cpu_s_to_open_10k_streams": 3.0,
    "bytes_per_change_pct_of_sotw": 1.0,
}


# ====================================================================== /proc readers


def proc_rss_kb(pid: int) -> dict[str, int]:
    out = {}
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith(("VmRSS:", "VmHWM:")):
                key, value = line.split(":", 1)
                out[key] = int(value.split()[0])
    return out


_TICK = os.sysconf("SC_CLK_TCK")


def proc_cpu_s(pid: int) -> float:
    """utime + stime of every thread of the process, in seconds."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK  # fields 14 and 15 of stat(5)


def proc_main_thread_cpu_s(pid: int) -> float:
    """utime + stime of the process's main thread (the asyncio loop running all Python code)."""
    with open(f"/proc/{pid}/task/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    k = max(0, min(len(s) - 1, math.ceil(q / 100 * len(s)) - 1))
    return s[k]


# ====================================================================== the mesh (parent process)


def add_mesh_arguments(p: argparse.ArgumentParser) -> None:
    """The flags ``registrations`` and the clients read (shared with ``bench/e2e_propagation.py``)."""
    p.add_argument("--services", type=int, default=1000)
    p.add_argument("--instances", type=int, default=10, help="instances (= sidecar nodes) per service")
    p.add_argument("--deps", type=int, default=4, help="random dependencies per node (plus the hot one)")
    p.add_argument("--hot", type=int, default=1000, help="subscribers of the hot service (incl. edge-0)")
    p.add_argument("--streams-per-channel", type=int, default=1250)
    p.add_argument("--ramp", type=int, default=200, help="streams initialising at once per client process")
    p.add_argument("--seed", type=int, default=7)


def registrations(args: argparse.Namespace) -> tuple[list, list[str], set[str]]:
    """The mesh's registrations (services x instances sidecar nodes, plus ``edge-0`` and ``edge-1``
    depending on every service), the regular node ids, and the nodes whose view has ``HOT``
    (``args.hot`` of them, ``edge-0`` included). Shared with ``bench/e2e_propagation.py``."""
    from events import types as t

    S, I = args.services, args.instances
    rnd = random.Random(args.seed)
    sidecar = t.SidecarPorts(inbound_port=15001, outbound_port=15002)
    regs = []
    regular: list[str] = []
    dependents: set[str] = set()  # nodes whose view has the hot service
    hot_regular = args.hot - 1  # edge-0 is the last subscriber
    for s in range(S):
        for i in range(I):
            node = f"n-{s:03d}-{i}"
            deps: set[str] = set()
            while len(deps) < min(args.deps, S - 2):
                d = rnd.randrange(1, S)
                if d != s:
                    deps.add(f"svc-{d:03d}")
            if s != 0 and len(dependents) < hot_regular:
                deps.add(HOT)
                dependents.add(node)
            regs.append(t.InstanceRegistered(
                service=f"svc-{s:03d}", instance_id=f"i{i}", address=f"10.{s // 250}.{s % 250}.{i + 1}",
                port=8080, node_id=node, sidecar=sidecar, depends_on=tuple(sorted(deps)),
                labels={"version": "v1" if i % 2 else "v2"}))
            regular.append(node)
    everything = tuple(f"svc-{d:03d}" for d in range(S))
    for e in range(2):
        regs.append(t.InstanceRegistered(
            service="edge", instance_id=f"e{e}", address=f"10.250.0.{e + 1}", port=8080,
            node_id=f"edge-{e}", sidecar=sidecar, depends_on=everything))
    dependents.add("edge-0")
    return regs, regular, dependents


class Mesh:
    """The rendered mesh, its view records, and the changes to apply (all precomputed)."""

    def __init__(self, args: argparse.Namespace) -> None:
        from events import topics
        from events import types as t
        from events.envelope import Envelope, Logged
        from projector.fold import fold_many
        from projector.publisher import PublishedViews, plan_changes, plan_records, plan_views
        from projector.render import render_all
        from projector.state import empty_state

        self._t, self._topics, self._Envelope, self._Logged = t, topics, Envelope, Logged
        self._fold_many, self._render_all, self._plan_changes, self._plan_records = (
            fold_many, render_all, plan_changes, plan_records)
        self._now = datetime.now(timezone.utc)
        self._seq = 0
        S, I = args.services, args.instances
        regs, self.regular, self.dependents = registrations(args)
        self.health = {(s, i): "healthy" for s in range(S) for i in range(I)}
        self.S, self.I = S, I

        t0 = time.perf_counter()
        self.state, _ = fold_many(empty_state(), [self._logged(p, topics.REGISTRATIONS) for p in regs])
        self.rendered = render_all(self.state)
        self.published = PublishedViews()
        plan = plan_views(self.rendered, self.published)
        self.published.apply(plan)
        self.initial = [r for phase in plan_records(plan) for r in phase]
        self.render_s = time.perf_counter() - t0
        self.resources = len(self.rendered.resources)
        self.nodes = len(self.rendered.membership)
        real_dependents = {n for n, m in self.rendered.membership.items() if HOT in m.get(EDS, {})}
        assert real_dependents == self.dependents | {"edge-1"}, "mesh bookkeeping disagrees with the render"

        # phase 1: toggle svc-000 instance k % I, one change at a time
        self.hot_changes: list[tuple[list, str]] = []  # (records, new version of the hot CLA)
        for k in range(args.changes + args.profile_changes):
            recs = self._flip([(0, k % I)])
            self.hot_changes.append((recs, self.rendered.versions[(EDS, HOT)]))
        # phase 3: batches flipping random instances of random services (never the hot one)
        self.churn: list[list] = []
        crnd = random.Random(args.seed + 1)
        for _ in range(args.churn_batches):
            flips = [(crnd.randrange(1, S), crnd.randrange(I)) for _ in range(args.churn_services)]
            self.churn.append(self._flip(flips))
        self.total_s = time.perf_counter() - t0

    def _logged(self, payload, topic):
        self._seq += 1
        env = self._Envelope(f"bench-{self._seq}", payload.TYPE, payload.SCHEMA_VERSION, self._now, "bench", payload)
        return self._Logged(env, topic, 0, self._seq, 1_000_000 + self._seq)

    def _flip(self, flips: list[tuple[int, int]]) -> list:
        events = []
        for s, i in flips:
            status = "unhealthy" if self.health[(s, i)] == "healthy" else "healthy"
            self.health[(s, i)] = status
            events.append(self._logged(self._t.InstanceHealthChanged(
                service=f"svc-{s:03d}", instance_id=f"i{i}", status=status, observer="bench"), self._topics.HEALTH))
        self.state, _ = self._fold_many(self.state, events)
        self.rendered = self._render_all(self.state, previous=self.rendered)
        plan = self._plan_changes(self.rendered, self.published)
        self.published.apply(plan)
        return [r for phase in self._plan_records(plan) for r in phase]


# ====================================================================== the gateway process


class _Rec:
    __slots__ = ("topic", "key", "value", "timestamp", "headers")

    def __init__(self, topic, key, value, timestamp, headers=None):
        self.topic, self.key, self.value, self.timestamp, self.headers = topic, key, value, timestamp, headers


def _as_records(rows: list, ts: int) -> list[_Rec]:
    """``publisher.plan_records`` rows (topic, key, value, headers: a body's version) as consumer records."""
    return [_Rec(topic, key, value, ts, headers) for topic, key, value, headers in rows]


def gateway_main(conn, write_timeout_s: float, gc_freeze: bool, sync_log: bool = True, tls_dir: str | None = None,
                 port: int = 0) -> None:
    asyncio.run(_gateway(conn, write_timeout_s, gc_freeze, sync_log, tls_dir, port))


def _gateway_counters() -> dict:
    from xds_gateway import metrics

    def total(metric, suffix="_total"):
        return sum(s.value for fam in metric.collect() for s in fam.samples if s.name.endswith(suffix))

    streams = {s.labels["kind"]: s.value for fam in metrics.STREAMS.collect() for s in fam.samples}
    return {
        "responses": total(metrics.RESPONSES),
        "bytes": total(metrics.BYTES_SENT),
        "view_changes": total(metrics.VIEW_CHANGES),
        "streams": streams,
        "slow_closed": total(metrics.SLOW_STREAMS_CLOSED),
        "sync_records": {s.labels["type"]: s.value for fam in metrics.SYNC_RECORDS.collect() for s in fam.samples
                         if s.name.endswith("_total")},
        "sync_dropped": total(metrics.SYNC_DROPPED),
        "sync_coalesced": total(metrics.SYNC_COALESCED),
        "sync_bytes": _SYNC_BYTES[0],
    }


_SYNC_BYTES = [0]


async def _encoding_sink(envs) -> None:
    """Stands in for the events producer: encodes every record (its cost is the gateway's), sends nothing."""
    from events.codec import encode

    _SYNC_BYTES[0] += sum(len(encode(e)) for e in envs)


class _GcClock:
    """Times the gateway process's cyclic-GC collections (gc.callbacks): count, total and longest, per generation."""

    def __init__(self) -> None:
        import gc

        self._start = self._cpu = 0.0
        self.reset()
        gc.callbacks.append(self._cb)

    def reset(self) -> None:
        self.stats = {g: [0, 0.0, 0.0, 0] for g in (0, 1, 2)}  # count, CPU s, longest (wall) s, objects collected

    def _cb(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._start = time.perf_counter()
            self._cpu = time.thread_time()
        else:
            took = time.perf_counter() - self._start
            st = self.stats[info["generation"]]
            st[0] += 1
            st[1] += time.thread_time() - self._cpu
            st[2] = max(st[2], took)
            st[3] += info["collected"]

    def take(self) -> dict:
        out = {f"gen{g}": {"count": c, "cpu_s": round(t, 3), "max_ms": round(m * 1000, 1), "collected": n}
               for g, (c, t, m, n) in self.stats.items()}
        self.reset()
        return out


async def _gateway(conn, write_timeout_s: float, gc_freeze: bool, sync_log: bool = True, tls_dir: str | None = None,
                   port: int = 0) -> None:
    import cProfile
    import gc
    import io
    import pstats

    import grpc

    from xds_gateway.admission import GatewayLimits
    from xds_gateway.gc_policy import keep_long_lived_objects_out_of_gc
    from xds_gateway.server import AdsServicer, add_to_server
    from xds_gateway.view_cache import ViewCache

    from xds_gateway.sync_log import SyncLog

    cache = ViewCache()
    sync = SyncLog(_encoding_sink, "bench-gateway") if sync_log else None
    if sync is not None:
        sync.start()
    guard = None
    if tls_dir:
        from xds_gateway.guard import TrustGuard
        from xds_gateway.tls import TlsFiles, load_material, server_credentials

        files = TlsFiles(Path(tls_dir) / "cert.pem", Path(tls_dir) / "key.pem", Path(tls_dir) / "ca.pem")
        material = load_material(files)
        guard = TrustGuard(material.identity.domain)
    # the simulated Envoys share connections (--streams-per-channel): lift the per-connection cap (16)
    servicer = AdsServicer(cache, write_timeout_s=write_timeout_s, sync_log=sync,
                           limits=GatewayLimits(max_streams_per_connection=100_000), guard=guard)
    server = grpc.aio.server(options=GATEWAY_SERVER_OPTIONS)
    add_to_server(servicer, server)
    # with --workers, every worker binds the first one's port (grpc sets SO_REUSEPORT), as `xds-gateway run --workers`
    if guard is not None:
        port = server.add_secure_port(f"127.0.0.1:{port}", server_credentials(files, material))
    else:
        port = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    loop = asyncio.get_running_loop()
    conn.send(("port", port))
    hot: list[list[tuple]] = []
    churn: list[list[tuple]] = []
    profiler = None
    gc_clock = _GcClock()
    ts = int(time.time() * 1000)
    while True:
        msg = await loop.run_in_executor(None, conn.recv)
        cmd = msg[0]
        if cmd == "load":
            _, initial, hot_rows, churn_rows = msg
            t0 = time.perf_counter()
            cache.apply_records(_as_records(initial, ts))
            cache.ready.set()
            # kept as tuples of str/bytes (which the GC untracks), made records only when applied, so that the
            # bench's own precomputed batches do not add to the gateway's GC work
            hot = [[tuple(r) for r in rows] for rows in hot_rows]
            churn = [[tuple(r) for r in rows] for rows in churn_rows]
            msg = initial = hot_rows = churn_rows = None
            gc.collect()
            if gc_freeze:  # what `xds-gateway run` does once its view is loaded
                loop.create_task(keep_long_lived_objects_out_of_gc())
            conn.send(("loaded", time.perf_counter() - t0, len(cache.nodes())))
        elif cmd == "apply":  # one hot change; report when it was applied
            batch = _as_records(hot[msg[1]], ts)
            t_applied = time.time()
            t0 = time.perf_counter()
            changed = cache.apply_records(batch)
            conn.send(("applied", t_applied, time.perf_counter() - t0, len(changed)))
        elif cmd == "churn":
            _, duration, interval = msg
            applied = 0
            apply_s = 0.0
            start = loop.time()
            next_at = start
            while applied < len(churn) and loop.time() - start < duration:
                t0 = time.thread_time()
                cache.apply_records(_as_records(churn[applied], ts))
                apply_s += time.thread_time() - t0
                applied += 1
                next_at += interval
                await asyncio.sleep(max(0.0, next_at - loop.time()))
            churn = churn[applied:]
            conn.send(("churned", applied, apply_s, loop.time() - start))
        elif cmd == "counters":
            conn.send(("counters", _gateway_counters()))
        elif cmd == "gc":  # GC pauses since the last ask; optionally freeze what exists now (an experiment)
            stats = gc_clock.take()
            if msg[1]:
                stats["tracked_objects"] = len(gc.get_objects())
                by_type: dict = {}
                for o in gc.get_objects():
                    k = type(o).__name__
                    by_type[k] = by_type.get(k, 0) + 1
                stats["top_types"] = sorted(by_type.items(), key=lambda kv: -kv[1])[:12]
            if msg[1] and gc_freeze:
                gc.collect()
                gc.freeze()
                # reported apart, not charged to the phase after it (it ran before that phase's changes began)
                stats["bench_collect_before_freeze"] = gc_clock.take()["gen2"]
            if msg[1] and os.environ.get("XDS_FANOUT_GC_PROBE"):
                probe = {}
                for gen in (0, 1, 2):
                    t0 = time.thread_time()
                    gc.collect(gen)
                    probe[f"collect{gen}_ms"] = round((time.thread_time() - t0) * 1000, 2)
                young = [{} for _ in range(2000)]  # a young generation of 2,000 dicts to collect
                t0 = time.thread_time()
                gc.collect(0)
                probe["collect0_2000_dicts_ms"] = round((time.thread_time() - t0) * 1000, 2)
                del young
                stats["probe"] = probe
            conn.send(("gc", stats, gc.get_freeze_count()))
        elif cmd == "profile_start":
            profiler = cProfile.Profile()
            profiler.enable()
            conn.send(("ok",))
        elif cmd == "profile_stop":
            profiler.disable()
            out = io.StringIO()
            st = pstats.Stats(profiler, stream=out)
            st.sort_stats("tottime").print_stats(msg[1])
            st.sort_stats("cumulative").print_stats(msg[1])
            conn.send(("profile", out.getvalue()))
        elif cmd == "stop":
            loop.set_exception_handler(lambda _loop, _ctx: None)  # handlers cancelled by stop() are expected
            await server.stop(1.0)
            conn.send(("stopped",))
            return


# ====================================================================== harness floor


def floor_server_main(conn, body: bytes) -> None:
    asyncio.run(_floor_server(conn, body))


async def _floor_server(conn, body: bytes) -> None:
    """A bare grpc.aio ADS servicer: on "go", every stream writes one EDS response and reads its ACK."""
    import grpc
    from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

    events: list[asyncio.Event] = []

    class Floor(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):
        async def DeltaAggregatedResources(self, request_iterator, context):
            await context.read()
            ev = asyncio.Event()
            events.append(ev)
            n = 0
            try:
                while True:
                    await ev.wait()
                    ev.clear()
                    n += 1
                    resp = discovery_pb2.DeltaDiscoveryResponse(type_url=EDS, nonce=f"{id(ev)}-{n}",
                                                                system_version_info="0123456789abcdef")
                    resp.resources.add(name=HOT, version="0123456789abcdef").resource.value = body
                    await context.write(resp)
                    if await context.read() is grpc.aio.EOF:
                        return
            except (asyncio.CancelledError, grpc.aio.AioRpcError):
                return  # the bench is tearing the clients down

    server = grpc.aio.server(options=GATEWAY_SERVER_OPTIONS)
    ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(Floor(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    loop = asyncio.get_running_loop()
    conn.send(("port", port))
    while True:
        msg = await loop.run_in_executor(None, conn.recv)
        if msg[0] == "count":
            conn.send(("count", len(events)))
        elif msg[0] == "go":
            t = time.time()
            for ev in events:
                ev.set()
            conn.send(("went", t))
        else:
            loop.set_exception_handler(lambda _loop, _ctx: None)
            await server.stop(0.5)
            conn.send(("stopped",))
            return


def harness_floor(ctx, subscribers: int, procs: int, body: bytes, rounds: int) -> dict:
    """What this machine and these Python clients allow at best: a bare grpc.aio server pushing one
    response of the same size to ``subscribers`` streams (spread over ``procs`` client processes)."""
    from xds_fanout_client import floor_client_main

    conn, child = ctx.Pipe()
    srv = ctx.Process(target=floor_server_main, args=(child, body), name="xds-floor-server", daemon=True)
    srv.start()
    cl = []
    try:
        if not conn.poll(60):
            raise TimeoutError("floor server did not start")
        port = conn.recv()[1]
        counts = ctx.Array("q", procs, lock=False)
        last = ctx.Array("d", procs, lock=False)
        for i in range(procs):
            n = subscribers // procs + (1 if i < subscribers % procs else 0)
            proc = ctx.Process(target=floor_client_main, args=(port, i, n, counts, last), daemon=True)
            proc.start()
            cl.append(proc)
        if not wait_until(lambda: ask(conn, ("count",), 10, "count")[1] >= subscribers, 60, 0.2):
            raise TimeoutError("floor streams did not open")
        reach, cpu0 = [], proc_cpu_s(srv.pid)
        for k in range(rounds):
            t_go = ask(conn, ("go",), 10, "went")[1]
            if not wait_until(lambda: sum(counts) >= subscribers * (k + 1), 10.0):
                break
            reach.append((max(last) - t_go) * 1000)
            time.sleep(0.15)
        cpu = proc_cpu_s(srv.pid) - cpu0
        return {"subscribers": subscribers, "rounds": len(reach), "reach_all_ms_p50": round(pct(reach, 50), 1),
                "reach_all_ms_p99": round(pct(reach, 99), 1),
                "server_cpu_us_per_push": round(cpu / max(1, len(reach) * subscribers) * 1e6, 1)}
    finally:
        for proc in cl:  # clients first: the server sees its streams close before it stops
            proc.terminate()
            proc.join(5)
        time.sleep(1.0)
        try:
            conn.send(("stop",))
            conn.poll(10)
        except (BrokenPipeError, OSError):
            pass
        srv.join(10)
        if srv.is_alive():
            srv.terminate()
            srv.join(5)


class PhaseSampler:
    """``--py-spy DIR``: py-spy samples the gateway process during one phase (its raw stacks to DIR/<phase>.txt),
    and ``stop`` summarises them: the frames with the most samples, on their own and with what they call.

    py-spy attaches to a running process (root, or ptrace allowed); ``native`` adds the C frames (grpc's core,
    the kernel's send calls) at the price of pausing the process at each sample. Not installed: the phase runs
    unsampled and the summary says so.
    """

    def __init__(self, out_dir: str, phase: str, pid: int, native: bool) -> None:
        import shutil
        import subprocess

        self.path = Path(out_dir) / f"{phase}.txt"
        self.phase = phase
        exe = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
        self.proc = None
        if Path(exe).exists():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.proc = subprocess.Popen([exe, "record", "--pid", str(pid), "--rate", "250", "--format", "raw",
                                          "-o", str(self.path), "--native" if native else "--nonblocking"],
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def stop(self, top: int = 25) -> str:
        import signal

        if self.proc is None:
            return f"--- py-spy ({self.phase}): not installed (pip install py-spy)"
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(60)
        return summarise_stacks(self.path, f"py-spy, gateway during {self.phase}", top)


def summarise_stacks(path: Path, title: str, top: int = 25) -> str:
    """The top frames of py-spy's raw output (one "frame;frame;... count" line per stack): own samples, then
    samples in the frame or below it, each as a share of all samples (idle waits included when sampled)."""
    own: dict[str, int] = {}
    below: dict[str, int] = {}
    total = 0
    if path.exists():
        for line in path.read_text().splitlines():
            stack, _, n = line.rpartition(" ")
            if not stack or not n.isdigit():
                continue
            count = int(n)
            total += count
            frames = [f.replace(str(ROOT) + "/", "") for f in stack.split(";")]
            own[frames[-1]] = own.get(frames[-1], 0) + count
            for frame in set(frames):
                below[frame] = below.get(frame, 0) + count
    lines = [f"--- {title}: {total} samples ({path})"]
    for label, counts in (("own", own), ("with callees", below)):
        lines.append(f"  {label}:")
        for frame, count in sorted(counts.items(), key=lambda kv: -kv[1])[:top]:
            lines.append(f"    {100 * count / max(1, total):5.1f}%  {frame[:160]}")
    return "\n".join(lines)


# ====================================================================== the orchestrator


class Gateways:
    """The gateway process, or with ``--workers N`` the N worker processes sharing one port (SO_REUSEPORT,
    as ``xds-gateway run --workers``): every command goes to each, the answers are merged (counters,
    CPU and RSS summed; a change counts as applied when the first worker applied it)."""

    def __init__(self, ctx, n: int, gw_args: tuple) -> None:
        self.ctx, self.n, self.gw_args = ctx, n, gw_args
        self.procs: list = []
        self.conns: list = []

    def _spawn(self, i: int, port: int) -> int:
        conn, child = self.ctx.Pipe()
        proc = self.ctx.Process(target=gateway_main, args=(child, *self.gw_args, port), name=f"xds-gateway-{i}",
                                daemon=True)
        proc.start()
        self.procs.append(proc)
        self.conns.append(conn)
        if not conn.poll(60):
            raise TimeoutError(f"gateway {i} did not start")
        return conn.recv()[1]

    def start(self) -> int:
        port = self._spawn(0, 0)
        for i in range(1, self.n):
            if self._spawn(i, port) != port:
                raise RuntimeError(f"gateway worker {i} did not bind port {port}")
        return port

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def ask(self, msg, timeout: float, expect: str):
        for c in self.conns:
            c.send(msg)
        replies = []
        for c in self.conns:
            if not c.poll(timeout):
                raise TimeoutError(f"no answer to {msg[0]!r} within {timeout:.0f}s")
            reply = c.recv()
            if reply[0] != expect:
                raise RuntimeError(f"unexpected answer to {msg[0]!r}: {reply!r}")
            replies.append(reply)
        if len(replies) == 1:
            return replies[0]
        self.last_replies = replies
        if expect == "loaded":
            return ("loaded", max(r[1] for r in replies), replies[0][2])
        if expect == "applied":
            return ("applied", min(r[1] for r in replies), max(r[2] for r in replies), replies[0][3])
        if expect == "counters":
            return ("counters", _sum_counters([r[1] for r in replies]))
        if expect == "gc":
            return ("gc", replies[0][1], sum(r[2] for r in replies))
        if expect == "churned":
            return ("churned", replies[0][1], sum(r[2] for r in replies), max(r[3] for r in replies))
        return replies[0]

    def cpu_s(self) -> float:
        return sum(proc_cpu_s(p) for p in self.pids)

    def main_thread_cpu_s(self) -> float:
        return sum(proc_main_thread_cpu_s(p) for p in self.pids)

    def rss_kb(self) -> dict[str, int]:
        each = [proc_rss_kb(p) for p in self.pids]
        return {"VmRSS": sum(e["VmRSS"] for e in each), "VmHWM": sum(e["VmHWM"] for e in each),
                "each_mb": [round(e["VmRSS"] / 1024, 1) for e in each]}

    def stop(self) -> None:
        for c in self.conns:
            try:
                c.send(("stop",))
            except (BrokenPipeError, OSError):
                pass
        for c in self.conns:
            try:
                c.poll(15)
            except (BrokenPipeError, OSError):
                pass


def _sum_counters(all_counters: list[dict]) -> dict:
    out: dict = {}
    for c in all_counters:
        for k, v in c.items():
            if isinstance(v, dict):
                d = out.setdefault(k, {})
                for kk, vv in v.items():
                    d[kk] = d.get(kk, 0) + vv
            else:
                out[k] = out.get(k, 0) + v
    return out


class Deadline:
    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()

    def check(self, what: str) -> None:
        if self.left() <= 0:
            raise TimeoutError(f"bench deadline passed during {what}")


def ask(conn, msg, timeout: float, expect: str):
    conn.send(msg)
    if not conn.poll(timeout):
        raise TimeoutError(f"no answer to {msg[0]!r} within {timeout:.0f}s")
    reply = conn.recv()
    if reply[0] != expect:
        raise RuntimeError(f"unexpected answer to {msg[0]!r}: {reply!r}")
    return reply


def wait_until(pred, timeout: float, step: float = 0.002) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(step)
    return pred()


async def sotw_probe(port: int, node_id: str, timeout: float, tls_dir: str | None = None) -> dict:
    """State of the world for a node depending on every service: CDS wildcard, then EDS for all clusters."""
    from envoy.config.cluster.v3 import cluster_pb2
    from envoy.config.core.v3 import base_pb2
    from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

    from xds_fanout_client import _channel

    async with _channel(port, [("grpc.max_receive_message_length", 256 << 20)], tls_dir) as ch:
        call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(ch).StreamAggregatedResources()
        await call.write(discovery_pb2.DiscoveryRequest(node=base_pb2.Node(id=node_id), type_url=CDS))
        cds = await asyncio.wait_for(call.read(), timeout)
        names = []
        for any_ in cds.resources:
            c = cluster_pb2.Cluster.FromString(any_.value)
            if c.type == cluster_pb2.Cluster.EDS:
                names.append(c.eds_cluster_config.service_name or c.name)
        await call.write(discovery_pb2.DiscoveryRequest(type_url=EDS, resource_names=sorted(names)))
        await call.write(discovery_pb2.DiscoveryRequest(type_url=CDS, version_info=cds.version_info,
                                                        response_nonce=cds.nonce))
        eds = await asyncio.wait_for(call.read(), timeout)
        while eds.type_url != EDS:
            eds = await asyncio.wait_for(call.read(), timeout)
        call.cancel()
    return {"cds_bytes": cds.ByteSize(), "cds_resources": len(cds.resources),
            "eds_bytes": eds.ByteSize(), "eds_resources": len(eds.resources)}


def main(argv=None) -> int:
    window = HostWindow()  # the end line says how much CPU time the host stole over the run
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="a small run (1,000 streams, 200 services)")
    add_mesh_arguments(p)
    p.add_argument("--streams", type=int, default=10_000, help="delta streams to open (incl. edge-0)")
    p.add_argument("--procs", type=int, default=4, help="client processes")
    p.add_argument("--changes", type=int, default=20, help="hot endpoint changes (phase 1)")
    p.add_argument("--gap", type=float, default=0.15, help="pause after a change reached everyone (s)")
    p.add_argument("--churn-services", type=int, default=10, help="services flipped per churn batch")
    p.add_argument("--churn-interval", type=float, default=0.1, help="seconds between churn batches")
    p.add_argument("--churn-seconds", type=float, default=10.0)
    p.add_argument("--write-timeout", type=float, default=30.0)
    p.add_argument("--profile", action="store_true",
                   help="profile the gateway (cProfile) during 5 more hot changes and a second churn")
    p.add_argument("--deadline", type=float, default=290.0, help="abort the run after this many seconds")
    p.add_argument("--no-floor", action="store_true", help="skip the bare grpc.aio floor calibration")
    p.add_argument("--tls", action="store_true", help="mTLS between the clients and the gateway")
    p.add_argument("--workers", type=int, default=1,
                   help="gateway worker processes sharing the port (SO_REUSEPORT), as `xds-gateway run --workers`")
    p.add_argument("--no-gc-freeze", dest="gc_freeze", action="store_false",
                   help="experiment: leave out the garbage-collector policy of xds-gateway run (xds_gateway.gc_policy)")
    p.add_argument("--json", help="also write the figures to this file")
    p.add_argument("--py-spy", dest="py_spy", metavar="DIR",
                   help="sample the gateway with py-spy while streams open, in phase 1 and in the churn; raw stacks to "
                        "DIR, the top frames printed (meshlog gateway, one worker)")
    p.add_argument("--py-spy-native", action="store_true",
                   help="with --py-spy: C frames too (grpc core, system calls); pauses the gateway at each sample")
    p.add_argument("--no-sync-log", dest="sync_log", action="store_false",
                   help="leave out the gateway's sync log (ACK/NACK records, encoded but not sent: no Kafka here)")
    p.add_argument("--peer", choices=sorted(PEERS), default="meshlog",
                   help="the server the clients talk to: the meshlog gateway, the go-control-plane peer "
                        "(bench/go_peer, built with `go build` on first use), or both one after the other on the "
                        "same mesh and changes, with a side-by-side table")
    args = p.parse_args(argv)
    if args.peer != "meshlog" and (args.tls or args.workers > 1 or args.profile):
        p.error("--tls, --workers and --profile are for the meshlog gateway only (use --peer meshlog)")
    if args.py_spy and (args.peer != "meshlog" or args.workers > 1):
        p.error("--py-spy samples the meshlog gateway's one process (use --peer meshlog, one worker)")
    if args.quick:
        args.services, args.instances, args.hot, args.streams = 200, 5, 200, 1000
        args.procs, args.changes, args.churn_seconds = 2, 10, 4.0
    args.streams = min(args.streams, args.services * args.instances + 1)
    args.hot = min(args.hot, args.streams)
    runs = 2 if args.profile else 1
    args.profile_changes = 5 if args.profile else 0
    args.churn_batches = int(math.ceil(args.churn_seconds / args.churn_interval)) * runs + 1

    if "go" in PEERS[args.peer]:  # built before the deadline starts: the first build compiles the Envoy API
        from xds_fanout_go import GoMissing, build_peer

        try:
            build_peer()
        except GoMissing as exc:
            p.error(str(exc))
    deadline = Deadline(args.deadline)
    t_run = time.monotonic()
    results: dict = {"config": {k: v for k, v in vars(args).items() if k != "json"}}
    print(f"building the mesh: {args.services} services x {args.instances} instances, "
          f"{args.hot} subscribers of {HOT}, {args.streams} streams ...", flush=True)
    mesh = Mesh(args)
    results["mesh"] = {"nodes": mesh.nodes, "resources": mesh.resources, "render_s": round(mesh.render_s, 2),
                       "precompute_s": round(mesh.total_s, 2), "initial_records": len(mesh.initial),
                       "records_per_hot_change": len(mesh.hot_changes[0][0])}
    print(f"  {mesh.nodes} nodes, {mesh.resources} resources, render {mesh.render_s:.1f}s, "
          f"precomputed changes in {mesh.total_s - mesh.render_s:.1f}s", flush=True)

    # the streams: edge-0 plus the first regular nodes, hot ones always included
    hot_regular = [n for n in mesh.regular if n in mesh.dependents]
    others = [n for n in mesh.regular if n not in mesh.dependents]
    nodes = ["edge-0"] + hot_regular + others[: max(0, args.streams - 1 - len(hot_regular))]
    rnd = random.Random(args.seed + 2)
    rnd.shuffle(nodes)
    per_proc = [nodes[i:: args.procs] for i in range(args.procs)]

    ctx = mp.get_context("spawn")
    tls_dirs = {"gateway": None, "client": None}
    if args.tls:
        import tempfile

        from xds_tls import make_identities

        tls_dirs = {k: str(v) for k, v in make_identities(Path(tempfile.mkdtemp(prefix="fanout-tls-")),
                                                          client_role="operator").items()}
    by_peer: dict[str, dict] = {}
    for peer in PEERS[args.peer]:
        if by_peer:  # each server gets the whole deadline; the mesh and its changes are shared
            deadline, t_run = Deadline(args.deadline), time.monotonic()
        by_peer[peer] = {**results, "peer": peer}
        run_peer(args, peer, mesh, nodes, per_proc, ctx, tls_dirs, by_peer[peer], deadline)
        by_peer[peer]["run_s"] = round(time.monotonic() - t_run, 1)
    if not args.no_floor and deadline.left() > 30:
        body = mesh.rendered.resources[(EDS, HOT)]
        floor = harness_floor(ctx, results_of(by_peer)["phase1_latency"]["subscribers"], args.procs, body, args.changes)
        for r in by_peer.values():
            r["floor"] = floor
    for r in by_peer.values():
        report(r)
    if len(by_peer) > 1:
        report_side_by_side(by_peer)
    print(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}; "
          f"{steal_text(window.steal_share())} of the CPU time over the run")
    if args.json:
        out = results_of(by_peer) if len(by_peer) == 1 else by_peer
        Path(args.json).write_text(json.dumps(out, indent=2, default=str))
    return 0


PEERS = {"meshlog": ("meshlog",), "go": ("go",), "both": ("meshlog", "go")}


def results_of(by_peer: dict[str, dict]) -> dict:
    return next(iter(by_peer.values()))


def run_peer(args, peer: str, mesh: Mesh, nodes: list[str], per_proc: list[list[str]], ctx, tls_dirs: dict,
             results: dict, deadline: Deadline) -> None:
    """Phases 1-5 against one server: the meshlog gateway (``Gateways``) or the go-control-plane peer
    (``bench/xds_fanout_go.GoPeer``, the same commands over its stdin), with the same clients."""
    if peer == "go":
        from xds_fanout_go import GoPeer

        gws = GoPeer(HOT)
    else:
        gws = Gateways(ctx, args.workers, (args.write_timeout, args.gc_freeze, args.sync_log, tls_dirs["gateway"]))
    clients: list = []
    client_conns: list = []

    def sample(phase: str):
        """A py-spy sampler of the gateway for one phase (``--py-spy``), or None."""
        if not args.py_spy or peer != "meshlog":
            return None
        return PhaseSampler(args.py_spy, phase, gws.pids[0], args.py_spy_native)

    def sampled(sampler) -> None:
        if sampler is not None:
            results.setdefault("py_spy", []).append(sampler.stop())

    try:
        port = gws.start()
        rss_empty = gws.rss_kb()["VmRSS"]
        hot_rows = [recs for recs, _v in mesh.hot_changes]
        _, load_s, view_nodes = gws.ask(("load", mesh.initial, hot_rows, mesh.churn), 120, "loaded")
        rss_loaded = gws.rss_kb()["VmRSS"]
        print(f"{'Go peer' if peer == 'go' else 'gateway'} pids {gws.pids} on 127.0.0.1:{port}: view of {view_nodes} nodes loaded in {load_s:.2f}s; "
              f"RSS {rss_empty / 1024:.0f} MB empty, {rss_loaded / 1024:.0f} MB with the view and the "
              f"precomputed changes", flush=True)

        # ---------------------------------------------------------------- streams
        from xds_fanout_client import client_main

        ready = ctx.Array("q", args.procs, lock=False)
        hot_count = ctx.Array("q", args.procs, lock=False)
        failed = ctx.Array("q", args.procs, lock=False)
        sampler = sample("ramp")
        cpu0 = gws.cpu_s()
        t0 = time.monotonic()
        for i, chunk in enumerate(per_proc):
            parent_end, child_end = ctx.Pipe()
            deps = [n in mesh.dependents for n in chunk]
            proc = ctx.Process(target=client_main, name=f"xds-client-{i}", daemon=True,
                               args=(child_end, port, i, chunk, deps, HOT, args.streams_per_channel, args.ramp,
                                     ready, hot_count, failed, tls_dirs["client"]))
            proc.start()
            clients.append(proc)
            client_conns.append(parent_end)
        total = len(nodes)
        last = -1
        while sum(ready) + sum(failed) < total:
            deadline.check("stream ramp-up")
            if time.monotonic() - t0 > min(180.0, deadline.left()):
                break
            time.sleep(0.5)
            n = sum(ready)
            if n // 1000 != last // 1000:
                print(f"  {n} streams initialised ({time.monotonic() - t0:.0f}s)", flush=True)
                last = n
        ramp_s = time.monotonic() - t0
        time.sleep(1.0)  # let the last ACKs land
        sampled(sampler)
        counters = gws.ask(("counters",), 30, "counters")[1]
        per_worker_streams = [int(r[1]["streams"].get("delta", 0)) for r in getattr(gws, "last_replies", [])]
        rss = gws.rss_kb()
        ramp_cpu = gws.cpu_s() - cpu0
        _, gc_ramp, frozen = gws.ask(("gc", True), 60, "gc")
        results["gc"] = {"ramp": gc_ramp, "frozen_objects": frozen}
        results["streams"] = {
            "opened": total, "initialised": sum(ready), "failed": sum(failed),
            "held_by_gateway": int(counters["streams"].get("delta", 0)),
            "client_processes": args.procs,
            "connections": sum(math.ceil(len(c) / args.streams_per_channel) for c in per_proc),
            "ramp_s": round(ramp_s, 1), "ramp_gateway_cpu_s": round(ramp_cpu, 1),
            "rss_mb_empty": round(rss_empty / 1024, 1), "rss_mb_view_loaded": round(rss_loaded / 1024, 1),
            "rss_mb": round(rss["VmRSS"] / 1024, 1), "hwm_mb": round(rss["VmHWM"] / 1024, 1),
            "workers": args.workers, "rss_mb_per_worker": rss["each_mb"],
            "streams_per_worker": per_worker_streams,
            "kb_per_stream": round((rss["VmRSS"] - rss_loaded) / max(1, total), 1),
            "initial_responses": int(counters["responses"]),
        }
        print(f"streams: {sum(ready)}/{total} initialised in {ramp_s:.1f}s (gateway CPU {ramp_cpu:.1f}s), "
              f"gateway holds {results['streams']['held_by_gateway']}; RSS {rss['VmRSS'] / 1024:.0f} MB "
              f"(HWM {rss['VmHWM'] / 1024:.0f} MB)", flush=True)
        if sum(ready) < total:
            print("  WARNING: not every stream finished initialising", flush=True)

        def drain_counters() -> None:
            """Wait until the gateway's responses counter stops moving (it counts after each write completes)."""
            prev = -1.0
            while True:
                time.sleep(0.3)
                now = gws.ask(("counters",), 30, "counters")[1]["responses"]
                if now == prev:
                    return
                prev = now

        # ---------------------------------------------------------------- phase 1 (+5)
        for c in client_conns:
            ask(c, ("mark",), 30, "marked")
        subscribers = sum(1 for n in nodes if n in mesh.dependents)
        c0 = gws.ask(("counters",), 30, "counters")[1]
        sampler = sample("phase1")
        cpu0, main0 = gws.cpu_s(), gws.main_thread_cpu_s()
        applied = []
        for k in range(args.changes):
            deadline.check("phase 1")
            _, t_applied, apply_s, changed = gws.ask(("apply", k), 30, "applied")
            applied.append((t_applied, apply_s, changed))
            want = subscribers * (k + 1)
            if not wait_until(lambda: sum(hot_count) >= want, 10.0):
                print(f"  change {k}: only {sum(hot_count) - subscribers * k}/{subscribers} deliveries after 10s",
                      flush=True)
            time.sleep(args.gap)
        drain_counters()
        sampled(sampler)
        cpu_hot = gws.cpu_s() - cpu0
        main_hot = gws.main_thread_cpu_s() - main0
        c1 = gws.ask(("counters",), 30, "counters")[1]
        results["gc"]["phase1"] = gws.ask(("gc", False), 60, "gc")[1]
        reports = [ask(c, ("report",), 60, "report")[1] for c in client_conns]
        deliveries = [d for r in reports for d in r["hot"]]
        # attribute each delivery to the latest change with that version applied before it was read
        by_change: list[list[float]] = [[] for _ in applied]
        # the version each change gives the hot resource as this server names it (the Go peer hashes its own)
        hot_versions = getattr(gws, "hot_versions", None) or [v for _recs, v in mesh.hot_changes]
        unattributed = 0
        for version, t_recv, _node in deliveries:
            best = None
            for k, (t_applied, _a, _c) in enumerate(applied):
                if hot_versions[k] == version and t_applied <= t_recv:
                    best = k
            if best is None:
                unattributed += 1
            else:
                by_change[best].append(t_recv - applied[best][0])
        complete = [max(lat) * 1000 for lat in by_change if len(lat) >= subscribers]
        every = [x * 1000 for lat in by_change for x in lat]
        hot_resp = c1["responses"] - c0["responses"]
        sizes = [s for r in reports for s in r["hot_sizes"]]
        results["phase1_latency"] = {
            "subscribers": subscribers, "changes": len(applied),
            "changes_reaching_all": len(complete),
            "reach_all_ms_p50": round(pct(complete, 50), 1), "reach_all_ms_p99": round(pct(complete, 99), 1),
            "reach_all_ms_max": round(max(complete), 1) if complete else None,
            "delivery_ms_p50": round(pct(every, 50), 1), "delivery_ms_p99": round(pct(every, 99), 1),
            "deliveries": len(every), "unattributed": unattributed,
            "reach_all_ms_each": [round(max(lat) * 1000, 1) if lat else None for lat in by_change],
            "apply_records_ms_p50": round(pct([a * 1000 for _t, a, _c in applied], 50), 2),
            "nodes_notified_per_change": applied[0][2],
            "gateway_responses": int(hot_resp), "gateway_cpu_s": round(cpu_hot, 2),
            "gateway_main_thread_cpu_s": round(main_hot, 2),
            "responses_per_cpu_s": round(hot_resp / cpu_hot, 0) if cpu_hot else None,
        }
        results["phase5_non_dependents"] = {
            "streams": sum(r["nondep_streams"] for r in reports),
            "bytes": sum(r["nondep_bytes"] for r in reports),
            "responses": sum(r["nondep_responses"] for r in reports),
            "dependent_bytes": sum(r["dep_bytes"] for r in reports),
        }
        ph = results["phase1_latency"]
        print(f"phase 1: {ph['changes_reaching_all']}/{ph['changes']} changes reached all {subscribers} "
              f"subscribers; reach-all p50 {ph['reach_all_ms_p50']} ms p99 {ph['reach_all_ms_p99']} ms; "
              f"per delivery p50 {ph['delivery_ms_p50']} ms p99 {ph['delivery_ms_p99']} ms", flush=True)

        if args.profile:
            deadline.check("profile")
            gws.ask(("profile_start",), 30, "ok")
            for k in range(args.changes, args.changes + args.profile_changes):
                gws.ask(("apply", k), 30, "applied")
                time.sleep(1.5)
            results["profile_hot"] = gws.ask(("profile_stop", 30), 60, "profile")[1]

        # ---------------------------------------------------------------- phase 3
        def churn(label: str) -> dict:
            c0 = gws.ask(("counters",), 30, "counters")[1]
            gws.ask(("gc", False), 60, "gc")
            cpu0, w0, main0 = gws.cpu_s(), time.monotonic(), gws.main_thread_cpu_s()
            ccpu0 = sum(proc_cpu_s(c.pid) for c in clients)
            _, batches, apply_s, _took = gws.ask(("churn", args.churn_seconds, args.churn_interval),
                                             args.churn_seconds + 120, "churned")
            drain_counters()
            c1 = gws.ask(("counters",), 30, "counters")[1]
            cpu = gws.cpu_s() - cpu0
            main_cpu = gws.main_thread_cpu_s() - main0
            wall = time.monotonic() - w0
            ccpu = sum(proc_cpu_s(c.pid) for c in clients) - ccpu0
            n = c1["responses"] - c0["responses"]
            out = {"batches": batches, "services_per_batch": args.churn_services,
                   "interval_s": args.churn_interval, "responses": int(n), "gateway_cpu_s": round(cpu, 2),
                   "gateway_main_thread_cpu_s": round(main_cpu, 2), "wall_s": round(wall, 2), "responses_per_cpu_s": round(n / cpu, 0) if cpu else None,
                   "responses_per_wall_s": round(n / wall, 0), "gateway_cpu_util": round(cpu / wall, 2),
                   "apply_records_cpu_share": round(apply_s / cpu, 3) if cpu else None,
                   "mean_response_bytes": round((c1["bytes"] - c0["bytes"]) / n, 0) if n else None,
                   "client_cpu_s": round(ccpu, 2), "slow_streams_closed": int(c1["slow_closed"]),
                   "gc": gws.ask(("gc", False), 60, "gc")[1]}
            print(f"{label}: {n:.0f} delta responses in {wall:.1f}s wall, {cpu:.2f}s gateway CPU "
                  f"-> {out['responses_per_cpu_s']} responses/CPU-s ({out['gateway_cpu_util']:.0%} of a core; "
                  f"clients used {ccpu:.1f} CPU-s)", flush=True)
            return out

        deadline.check("phase 3")
        sampler = sample("churn")
        results["phase3_throughput"] = churn("phase 3")
        sampled(sampler)
        if args.profile:
            deadline.check("profile")
            gws.ask(("profile_start",), 30, "ok")
            results["phase3_profiled"] = churn("phase 3 under cProfile")
            results["profile"] = gws.ask(("profile_stop", 30), 60, "profile")[1]

        # ---------------------------------------------------------------- phase 4
        deadline.check("phase 4")
        sotw = asyncio.run(sotw_probe(port, "edge-1", 30.0, tls_dirs["client"]))
        delta_bytes = statistics.median(sizes) if sizes else float("nan")
        results["phase4_bytes"] = {
            "delta_change_bytes_median": delta_bytes, "delta_change_bytes_max": max(sizes) if sizes else None,
            **sotw,
            "pct_of_sotw_eds": round(100 * delta_bytes / sotw["eds_bytes"], 3),
            "pct_of_sotw_cds": round(100 * delta_bytes / sotw["cds_bytes"], 3),
        }
        end = gws.ask(("counters",), 30, "counters")[1]
        results["sync_log"] = {"enabled": args.sync_log and peer == "meshlog", "records": end["sync_records"],
                               "records_total": sum(end["sync_records"].values()), "bytes": end["sync_bytes"],
                               "dropped": end["sync_dropped"], "coalesced": end["sync_coalesced"],
                               "responses": end["responses"],
                               "records_after_ramp": sum(counters["sync_records"].values())}
        rss_end = gws.rss_kb()
        results["streams"]["rss_mb_end"] = round(rss_end["VmRSS"] / 1024, 1)
        results["streams"]["hwm_mb_end"] = round(rss_end["VmHWM"] / 1024, 1)
        results["client_errors"] = [e for r in reports for e in r["errors"]][:5]
    finally:
        for c in client_conns:
            try:
                c.send(("stop",))
            except (BrokenPipeError, OSError):
                pass
        for proc in clients:  # clients first: their streams end cleanly before the server stops
            proc.join(20)
        gws.stop()
        for proc in clients + gws.procs:
            proc.join(15)
            if proc.is_alive():
                proc.terminate()
                proc.join(5)


def report_side_by_side(by_peer: dict[str, dict]) -> None:
    """The figures of every server of one run (same mesh, changes and clients), and the grpc.aio floor."""
    names = {"meshlog": "meshlog gateway", "go": "go-control-plane v0.14"}
    floor = results_of(by_peer).get("floor") or {}

    def per_1000(r):
        rate = r["phase3_throughput"]["responses_per_cpu_s"]
        return round(1e6 / rate) if rate else None

    rows = [
        ("change to all subscribers, p50 (ms)", lambda r: r["phase1_latency"]["reach_all_ms_p50"],
         floor.get("reach_all_ms_p50")),
        ("change to all subscribers, p99 (ms)", lambda r: r["phase1_latency"]["reach_all_ms_p99"],
         floor.get("reach_all_ms_p99")),
        ("per delivery p50 / p99 (ms)",
         lambda r: f"{r['phase1_latency']['delivery_ms_p50']} / {r['phase1_latency']['delivery_ms_p99']}", None),
        ("server hands a change to its cache, p50 (ms)", lambda r: r["phase1_latency"]["apply_records_ms_p50"], None),
        ("changes that reached all", lambda r: f"{r['phase1_latency']['changes_reaching_all']}/"
                                               f"{r['phase1_latency']['changes']}", None),
        (f"server CPU to open {results_of(by_peer)['streams']['opened']:,} streams (s)",
         lambda r: r["streams"]["ramp_gateway_cpu_s"], None),
        ("server CPU per 1,000 responses, churn (ms)", per_1000, None),
        ("churn: batches applied, responses", lambda r: f"{r['phase3_throughput']['batches']}, "
                                                        f"{r['phase3_throughput']['responses']:,}", None),
        ("churn: server CPU share of a core", lambda r: r["phase3_throughput"]["gateway_cpu_util"], None),
        ("hot fan-out: responses per CPU-s", lambda r: r["phase1_latency"]["responses_per_cpu_s"], None),
        ("RSS with the streams open (MB)", lambda r: r["streams"]["rss_mb"], None),
        ("bytes per change (delta response)", lambda r: r["phase4_bytes"]["delta_change_bytes_median"], None),
        ("bytes to non-dependents", lambda r: r["phase5_non_dependents"]["bytes"], None),
    ]
    head = ["figure"] + [names.get(p, p) for p in by_peer] + ["bare grpc.aio floor"]
    print("\n=== side by side (same mesh, changes and clients; one server at a time) ===")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for label, get, fl in rows:
        print("| " + " | ".join([label] + [str(get(r)) for r in by_peer.values()] + [str(fl if fl is not None else "—")])
              + " |")


def report(r: dict) -> None:
    s, p1, p3, p4, p5 = r["streams"], r["phase1_latency"], r["phase3_throughput"], r["phase4_bytes"], \
        r["phase5_non_dependents"]
    workers = s.get("workers", 1)
    server = "one gateway process" if workers == 1 else f"{workers} gateway worker processes on one port"
    if r.get("peer") == "go":
        server = "the go-control-plane v0.14 peer (bench/go_peer: EDS from a LinearCache, per-node snapshots)"
    print(f"\n=== xDS fan-out, {server} (in-process view feed, no Kafka) ===")
    if not r["config"].get("gc_freeze", True):
        print("EXPERIMENT (no gc.freeze): not the gateway as shipped")
    print(f"mesh: {r['mesh']['nodes']} nodes, {r['mesh']['resources']} resources; "
          f"{s['opened']} delta streams from {s['client_processes']} client processes over {s['connections']} "
          f"connections; run {r['run_s']}s")
    print(f"1. endpoint change -> {p1['subscribers']} subscribers ({p1['changes']} changes, "
          f"{p1['changes_reaching_all']} reached all): reach-all p50 {p1['reach_all_ms_p50']} ms, "
          f"p99 {p1['reach_all_ms_p99']} ms; per delivery p50 {p1['delivery_ms_p50']} ms, "
          f"p99 {p1['delivery_ms_p99']} ms; apply_records {p1['apply_records_ms_p50']} ms")
    print(f"   opening {s['opened']} streams: {s['ramp_gateway_cpu_s']} gateway CPU-s ({s['ramp_s']} s wall)")
    if workers > 1:
        print(f"   workers: streams {s['streams_per_worker']}, RSS MB {s['rss_mb_per_worker']}")
    print(f"2. streams held: {s['held_by_gateway']} ({s['initialised']} initialised, {s['failed']} failed); "
          f"RSS {s['rss_mb']} MB (view only {s['rss_mb_view_loaded']} MB, {s['kb_per_stream']} kB/stream), "
          f"HWM {s['hwm_mb_end']} MB at the end")
    print(f"3. delta responses per gateway CPU-second: churn {p3['responses_per_cpu_s']:.0f} "
          f"(= {1e6 / (p3['responses_per_cpu_s'] or float('nan')):.0f} ms CPU per 1,000 responses, "
          f"{p3['batches']} batches of {p3['services_per_batch']} services applied) "
          f"({p3['responses']} responses, {p3['gateway_cpu_s']} CPU-s, {p3['responses_per_wall_s']:.0f}/s wall); "
          f"hot fan-out {p1['responses_per_cpu_s']:.0f}")
    print(f"4. bytes per change: delta {p4['delta_change_bytes_median']:.0f} B vs SotW EDS {p4['eds_bytes']} B "
          f"({p4['eds_resources']} CLAs) = {p4['pct_of_sotw_eds']}%, vs SotW CDS {p4['cds_bytes']} B "
          f"({p4['cds_resources']} clusters) = {p4['pct_of_sotw_cds']}%")
    print(f"5. non-dependent streams ({p5['streams']}): {p5['bytes']} bytes, {p5['responses']} responses "
          f"during phase 1 (dependents got {p5['dependent_bytes']} bytes)")
    sl = r.get("sync_log") or {}
    if sl.get("enabled"):
        n = sl["records_total"]
        print(f"6. sync log (encoded, not sent): {n:.0f} records ({', '.join(f'{k} {v:.0f}' for k, v in sorted(sl['records'].items()))}), "
              f"{sl['bytes'] / 1e6:.2f} MB, {sl['bytes'] / n if n else 0:.0f} B/record; "
              f"{n / sl['responses'] if sl['responses'] else 0:.2f} records per response sent "
              f"({sl['records_after_ramp']:.0f} of them while the streams opened); "
              f"{sl['coalesced']:.0f} ACKs coalesced, {sl['dropped']:.0f} dropped")
    elif r.get("peer") == "go":
        print("6. sync log: n/a (the Go peer keeps none)")
    else:
        print("6. sync log: off (--no-sync-log)")
    if r.get("floor"):
        f = r["floor"]
        print(f"   harness floor (bare grpc.aio servicer, same clients/machine, {f['subscribers']} streams, same "
              f"payload): reach-all p50 {f['reach_all_ms_p50']} ms, p99 {f['reach_all_ms_p99']} ms; "
              f"{f['server_cpu_us_per_push']} us server CPU per push+ACK")
    g1, g3 = r["gc"]["phase1"]["gen2"], p3["gc"]["gen2"]
    print(f"{'Go peer GC (cycles, GC CPU, longest stop-the-world pause)' if r.get('peer') == 'go' else 'gateway GC (gen2)'}: "
          f"phase 1 {g1['count']} collections, {g1['cpu_s']} CPU-s, longest {g1['max_ms']} ms; "
          f"churn {g3['count']}, {g3['cpu_s']} CPU-s, longest {g3['max_ms']} ms"
          + (f" [gc.freeze() of {r['gc']['frozen_objects']} objects]" if r["gc"]["frozen_objects"] else ""))
    forced = r["gc"]["ramp"].get("bench_collect_before_freeze")
    if forced and forced["count"]:
        print(f"   (the bench's own full collection before that freeze, after the streams opened and before phase 1: "
              f"{forced['cpu_s']} CPU-s, {forced['max_ms']} ms; not in the figures above)")
    checks = [
        ("p50 to all subscribers <= 60 ms", p1["reach_all_ms_p50"] <= TARGETS["p50_ms_to_all_subscribers"]),
        ("p99 to all subscribers <= 100 ms", p1["reach_all_ms_p99"] <= TARGETS["p99_ms_to_all_subscribers"]),
        (">= 10,000 streams held", s["held_by_gateway"] >= TARGETS["streams_per_process"]),
        ("RSS at 10k streams <= 600 MB", s["rss_mb"] <= TARGETS["rss_mb_at_10k_streams"]),
        ("<= 3 CPU-s to open 10k streams", s["ramp_gateway_cpu_s"] <= TARGETS["cpu_s_to_open_10k_streams"]),
        ("<= 60 ms CPU per 1,000 responses (churn)",
         1000 / (p3["responses_per_cpu_s"] or 1e-9) * 1000 <= TARGETS["cpu_ms_per_1000_responses"]),
        ("bytes per change <= 1% of SotW (EDS)", p4["pct_of_sotw_eds"] <= TARGETS["bytes_per_change_pct_of_sotw"]),
        ("non-dependents receive 0 bytes", p5["bytes"] == 0),
    ]
    small = s["opened"] < TARGETS["streams_per_process"]
    scaled = {"p50 to all subscribers <= 60 ms": p1["subscribers"] < 1000,
              "p99 to all subscribers <= 100 ms": p1["subscribers"] < 1000,
              ">= 10,000 streams held": small, "RSS at 10k streams <= 600 MB": small,
              "<= 3 CPU-s to open 10k streams": small}
    print("targets: " + "; ".join(
        f"{name}: {'n/a (scaled down)' if scaled.get(name) else 'MET' if ok else 'MISSED'}" for name, ok in checks))
    if r.get("client_errors"):
        print(f"client stream errors (first few): {r['client_errors']}")
    for summary in r.get("py_spy", ()):
        print()
        print(summary)
    if r.get("profile_hot"):
        print("\n--- gateway cProfile: hot endpoint changes (phase 1 repeated) ---")
        print(r["profile_hot"])
    if r.get("profile"):
        print("\n--- gateway cProfile during churn ---")
        print(r["profile"])


if __name__ == "__main__":
    sys.exit(main())
