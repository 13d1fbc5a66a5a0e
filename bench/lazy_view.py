"""Gateway memory and connect latency: a replica serving 10,000 of 100,000 nodes, whole view vs lazy view.

Setup. The parent folds and renders a 100,000-node mesh with the projector's own
``fold_many``/``render_all``/``plan_views`` (the ``bench/xds_fanout.py`` mesh:
10,000 services x 10 instances, 4 random dependencies each) and writes its view
records to a real broker as the projector publishes them (bodies, then
memberships; a fresh local broker unless ``--bootstrap``). Then, for each mode,
one real ``xds-gateway run`` process (``--views all``, or ``--views
connected`` with ``--view-index bytes`` or ``offsets``) (insecure, no sync
log, no on-demand) catches up on the view topics, and simulated delta clients
(grpc.aio, in ``--client-procs`` processes) open one stream each for 10,000 of
the nodes (a random sample), the first ``--sequential`` of them one at a time,
the rest ``--ramp`` at once per client process. A stream asks CDS (legacy
wildcard, node.id), ACKs, then LDS (wildcard), and ACKs every response.

Figures per mode (same run, same broker, modes back to back):
- catch-up: wall seconds and gateway CPU seconds (utime+stime, /proc) from
  process start to ready; VmRSS at ready; peak VmHWM.
- connect latency: from the stream's first write to its first full response
  (the CDS response holding every cluster of the node), client side; one at a
  time (``--sequential``: each a fetch of its own in lazy mode), and during the
  ramp (connects batched into one fetch round).
- the gateway's VmRSS with the 10,000 streams open, and its CPU seconds to
  open them; ``meshlog_view_nodes_in_memory`` and load rounds from /metrics.
- after every stream closed: how long until no node is left in memory
  (lazy modes; the grace ``--view-grace`` included).
The load average (``uptime``) is printed with them: the host is shared.

Usage: .venv/bin/python bench/lazy_view.py                 (100,000 nodes, 10,000 streams; ~10 min)
       .venv/bin/python bench/lazy_view.py --quick         (10,000 nodes, 1,000 streams)
       --modes all,bytes,offsets  --json FILE  --bootstrap HOST:PORT (a broker whose view topics are empty)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.append(str(Path(__file__).resolve().parent))  # after ROOT: bench/projector.py must not shadow projector/

from xds_fanout import CDS, pct, proc_cpu_s, proc_rss_kb, registrations  # noqa: E402

LDS = "type.googleapis.com/envoy.config.listener.v3.Listener"


# ====================================================================== the mesh and the broker


def render_records(services: int, instances: int) -> tuple[list, list[str]]:
    """The view records the projector would publish for the mesh (in its order), and the sidecar node ids."""
    from datetime import datetime, timezone

    from events import topics
    from events.envelope import Envelope, Logged
    from projector.fold import fold_many
    from projector.publisher import PublishedViews, plan_records, plan_views
    from projector.render import render_all
    from projector.state import empty_state

    mesh = argparse.Namespace(services=services, instances=instances, deps=4, hot=min(1000, services), seed=7)
    regs, regular, _ = registrations(mesh)
    now = datetime.now(timezone.utc)
    logged = [Logged(Envelope(f"bench-{i}", p.TYPE, p.SCHEMA_VERSION, now, "bench", p), topics.REGISTRATIONS, 0, i,
                     1_000_000 + i) for i, p in enumerate(regs)]
    state, _ = fold_many(empty_state(), logged)
    plan = plan_views(render_all(state), PublishedViews())
    return [r for phase in plan_records(plan) for r in phase], regular


async def write_records(bootstrap: str, records: list) -> None:
    from aiokafka import AIOKafkaProducer

    from events.admin import ensure_topics
    from events.kafka_security import connection_kwargs

    await ensure_topics(bootstrap)
    producer = AIOKafkaProducer(**connection_kwargs(bootstrap), enable_idempotence=True, acks="all",
                                max_batch_size=1 << 20, max_request_size=16 << 20, linger_ms=20)
    await producer.start()
    try:
        for start in range(0, len(records), 5000):
            sent = [await producer.send(topic, key=key, value=value, headers=headers)
                    for topic, key, value, headers in records[start:start + 5000]]
            await asyncio.gather(*sent)
    finally:
        await producer.stop()


# ====================================================================== clients


def client_main(conn, port: int, nodes: list[str], sequential: int, ramp: int) -> None:
    asyncio.run(_client(conn, port, nodes, sequential, ramp))


async def _client(conn, port: int, nodes: list[str], sequential: int, ramp_n: int) -> None:
    import grpc
    from envoy.config.core.v3 import base_pb2
    from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

    Request = discovery_pb2.DeltaDiscoveryRequest
    per_channel = 1250
    channels = [grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1),
                                                                        ("grpc.max_receive_message_length", 256 << 20)])
                for _ in range(max(1, -(-len(nodes) // per_channel)))]
    stubs = [ads_pb2_grpc.AggregatedDiscoveryServiceStub(ch) for ch in channels]
    first_ms: list[float] = []
    errors: list[str] = []
    tasks: list[asyncio.Task] = []

    async def stream(i: int, node: str, initialised: asyncio.Future) -> None:
        call = stubs[i % len(stubs)].DeltaAggregatedResources()
        try:
            t0 = time.perf_counter()
            await call.write(Request(node=base_pb2.Node(id=node, cluster="bench"), type_url=CDS))
            first = await call.read()
            first_ms.append((time.perf_counter() - t0) * 1000)
            if first.type_url != CDS or not first.resources:
                errors.append(f"{node}: first response {first.type_url} with {len(first.resources)} resources")
            await call.write(Request(type_url=CDS, response_nonce=first.nonce))
            await call.write(Request(type_url=LDS))
            while True:
                response = await call.read()
                if response is grpc.aio.EOF:
                    return
                await call.write(Request(type_url=response.type_url, response_nonce=response.nonce))
                if response.type_url == LDS and not initialised.done():
                    initialised.set_result(None)
        except asyncio.CancelledError:
            call.cancel()
            raise
        except grpc.aio.AioRpcError as exc:
            if len(errors) < 5:
                errors.append(f"{node}: {exc.code().name} {exc.details()}")
        finally:
            if not initialised.done():
                initialised.set_result(None)

    def start(i: int, node: str) -> asyncio.Future:
        done = asyncio.get_running_loop().create_future()
        tasks.append(asyncio.create_task(stream(i, node, done)))
        return done

    loop = asyncio.get_running_loop()
    # one at a time: each connect alone (in lazy mode, a fetch of its own)
    for i, node in enumerate(nodes[:sequential]):
        await start(i, node)
    conn.send(("sequential", list(first_ms)))
    await loop.run_in_executor(None, conn.recv)  # "ramp"
    first_ms.clear()
    gate = asyncio.Semaphore(ramp_n)

    async def ramped(i: int, node: str) -> None:
        async with gate:
            await start(i, node)

    t0 = time.perf_counter()
    await asyncio.gather(*(ramped(i, node) for i, node in enumerate(nodes[sequential:], sequential)))
    conn.send(("ramp", list(first_ms), time.perf_counter() - t0, errors[:5]))
    await loop.run_in_executor(None, conn.recv)  # "stop"
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for ch in channels:
        await ch.close()
    conn.send(("stopped",))


# ====================================================================== one gateway run


def gauge(http_port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return sum(float(m.group(1)) for m in re.finditer(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M))


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def run_mode(mode: str, bootstrap: str, nodes: list[str], args, workdir: Path) -> dict:
    ready_file = workdir / f"gateway-{mode}.ready.json"
    log_file = open(workdir / f"gateway-{mode}.log", "w")
    t0 = time.monotonic()
    gw = subprocess.Popen([str(ROOT / ".venv" / "bin" / "xds-gateway"), "run", "--bootstrap", bootstrap, "--port", "0",
                           "--http-port", "0", "--insecure", "--no-sync-log", "--on-demand-hold", "0", "--grace", "1",
                           "--max-streams-per-connection", "100000", "--max-streams", "100000",
                           *(["--views", "all"] if mode == "all" else ["--views", "connected", "--view-index", mode]),
                           "--view-grace", str(args.view_grace), "--ready-file", str(ready_file),
                           "--log-level", "WARNING"], stdout=subprocess.DEVNULL, stderr=log_file)
    out: dict = {"mode": mode, "view_grace": args.view_grace}
    try:
        while not (ready_file.exists() and ready_file.read_text().strip()):
            if gw.poll() is not None:
                raise SystemExit(f"gateway ({mode}) exited with {gw.returncode}: see {log_file.name}")
            time.sleep(0.1)
        info = json.loads(ready_file.read_text())
        out["catch_up_s"] = time.monotonic() - t0
        out["catch_up_cpu_s"] = proc_cpu_s(gw.pid)
        out["rss_ready_mb"] = proc_rss_kb(gw.pid)["VmRSS"] / 1024
        out["load_at_ready"] = load_average()

        ctx = mp.get_context("spawn")
        shares = [nodes[i::args.client_procs] for i in range(args.client_procs)]
        pipes, procs = [], []
        for i, share in enumerate(shares):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=client_main, args=(child, info["xds_port"], share,
                                                         args.sequential if i == 0 else 0, args.ramp))
            proc.start()
            pipes.append(parent)
            procs.append(proc)
        sequential = [m for m in pipes[0].recv()[1]]
        for p in pipes[1:]:
            p.recv()
        cpu0 = proc_cpu_s(gw.pid)
        for p in pipes:
            p.send("ramp")
        ramp_ms, ramp_wall, errors = [], 0.0, []
        for p in pipes:
            _, ms, wall, errs = p.recv()
            ramp_ms += ms
            ramp_wall = max(ramp_wall, wall)
            errors += errs
        out["open_cpu_s"] = proc_cpu_s(gw.pid) - cpu0
        out["open_wall_s"] = ramp_wall
        time.sleep(2)  # the last ACKs
        status = proc_rss_kb(gw.pid)
        out["rss_streams_mb"] = status["VmRSS"] / 1024
        out["hwm_mb"] = status["VmHWM"] / 1024
        out["streams"] = len(sequential) + len(ramp_ms)
        out["errors"] = errors
        out["sequential_ms"] = {"n": len(sequential), "p50": pct(sequential, 50), "p99": pct(sequential, 99)}
        out["ramp_ms"] = {"n": len(ramp_ms), "p50": pct(ramp_ms, 50), "p99": pct(ramp_ms, 99)}
        out["nodes_in_memory"] = gauge(info["http_port"], "meshlog_view_nodes_in_memory")
        out["load_rounds"] = gauge(info["http_port"], "meshlog_view_load_rounds_total")
        loads = gauge(info["http_port"], "meshlog_view_load_seconds_count")
        out["load_mean_ms"] = gauge(info["http_port"], "meshlog_view_load_seconds_sum") / loads * 1000 if loads else None
        out["load_at_streams"] = load_average()
        for p in pipes:
            p.send("stop")
        for p in pipes:
            p.recv()
        for proc in procs:
            proc.join(30)
        closed = time.monotonic()
        time.sleep(args.view_grace)
        while (left := gauge(info["http_port"], "meshlog_view_nodes_in_memory")) and time.monotonic() - closed < 120:
            time.sleep(0.5)
        out["nodes_in_memory_after_close"] = left
        out["drained_after_s"] = time.monotonic() - closed
        out["rss_after_close_mb"] = proc_rss_kb(gw.pid)["VmRSS"] / 1024
    finally:
        gw.send_signal(signal.SIGTERM)
        try:
            gw.wait(30)
        except subprocess.TimeoutExpired:
            gw.kill()
            gw.wait()
        log_file.close()
    return out


def show(r: dict) -> None:
    s, rp = r["sequential_ms"], r["ramp_ms"]
    print(f"--- {r['mode']}: catch-up {r['catch_up_s']:.1f} s wall, {r['catch_up_cpu_s']:.1f} CPU-s; "
          f"RSS at ready {r['rss_ready_mb']:.0f} MB (load {r['load_at_ready']})")
    print(f"    connect, one at a time: p50 {s['p50']:.1f} ms, p99 {s['p99']:.1f} ms ({s['n']} streams)")
    print(f"    connect, {rp['n']} in a ramp: p50 {rp['p50']:.1f} ms, p99 {rp['p99']:.1f} ms; all open in "
          f"{r['open_wall_s']:.1f} s wall, {r['open_cpu_s']:.1f} gateway CPU-s")
    print(f"    {r['streams']} streams open: RSS {r['rss_streams_mb']:.0f} MB (peak {r['hwm_mb']:.0f} MB); nodes in "
          f"memory {r['nodes_in_memory']:.0f}, load rounds {r['load_rounds']:.0f}"
          + (f" (a node's load: {r['load_mean_ms']:.1f} ms mean)" if r["load_mean_ms"] is not None else "")
          + f" (load {r['load_at_streams']})")
    print(f"    after every stream closed: nodes in memory {r['nodes_in_memory_after_close']:.0f} "
          f"{r['drained_after_s']:.1f} s later (grace {r['view_grace']:g} s), "
          f"RSS {r['rss_after_close_mb']:.0f} MB" + (f"; errors {r['errors']}" if r["errors"] else ""))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--services", type=int, default=10_000)
    p.add_argument("--instances", type=int, default=10)
    p.add_argument("--connect", type=int, default=10_000, help="nodes with a stream (a random sample)")
    p.add_argument("--sequential", type=int, default=200, help="of them, connected one at a time first")
    p.add_argument("--ramp", type=int, default=200, help="streams opening at once per client process")
    p.add_argument("--client-procs", type=int, default=2)
    p.add_argument("--view-grace", type=float, default=2.0)
    p.add_argument("--modes", default="all,bytes,offsets",
                   help="all: --views all; bytes / offsets: --views connected --view-index bytes / offsets")
    p.add_argument("--bootstrap", help="use this broker (empty view topics) instead of starting one")
    p.add_argument("--quick", action="store_true", help="1,000 services (10,000 nodes), 1,000 streams")
    p.add_argument("--json", help="write the figures here")
    args = p.parse_args(argv)
    if args.quick:
        args.services, args.connect, args.sequential = 1000, 1000, 100

    t0, c0 = time.monotonic(), time.process_time()
    records, regular = render_records(args.services, args.instances)
    nodes = random.Random(11).sample(regular, min(args.connect, len(regular)))
    print(f"mesh: {len(regular):,} sidecar nodes, {len(records):,} view records "
          f"({sum(len(v) for _t, _k, v, _h in records) / 1e6:.0f} MB), rendered in {time.monotonic() - t0:.0f} s wall, "
          f"{time.process_time() - c0:.0f} CPU-s; {len(nodes):,} nodes connect", flush=True)

    from meshlog.kafka_local import kafka_for_tests

    results = []
    with tempfile.TemporaryDirectory(prefix="meshlog-lazy-view-") as tmp:
        if args.bootstrap:
            os.environ["MESHLOG_KAFKA_BOOTSTRAP"] = args.bootstrap
        with kafka_for_tests() as bootstrap:
            t0 = time.monotonic()
            asyncio.run(write_records(bootstrap, records))
            print(f"written to {bootstrap} in {time.monotonic() - t0:.0f} s", flush=True)
            del records
            for mode in args.modes.split(","):
                result = run_mode(mode, bootstrap, nodes, args, Path(tmp))
                show(result)
                results.append(result)
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
