"""End to end: one health flip through the real system until every subscriber has it (issue 14 goal 6).

Setup (every part is the real thing, each in its own process):

- a fresh local Kafka broker from the project's launcher (``meshlog.kafka_local``);
- the mesh of ``bench/xds_fanout.py`` (its ``registrations``): 1,000 services x
  10 instances, each a sidecar node depending on 4 random services; 1,000 nodes
  (999 plus ``edge-0``, which depends on every service) subscribe ``svc-000``;
  appended with ``events.producer.EventProducer`` (registrar's write path);
- ``projector run --insecure-events`` (fresh data dir, ``-v`` so it logs each
  batch's timeline): the bench appends unsigned events as ``registrar`` does
  without a mesh identity, so the projector folds them unverified (the
  default would refuse every one of them); verifying one flip costs the
  projector one ECDSA check (~75 µs, ``bench/projector.py``);
- two ``xds-gateway run --insecure`` replicas;
- simulated Envoys from ``bench/xds_fanout_client.py``: 10,000 delta ADS
  streams, each client process on one replica (half the streams each).

Then ``--flips`` times, one at a time: append an ``InstanceHealthChanged`` of a
``svc-000`` instance (alternating healthy/unhealthy) with a long-lived
``EventProducer`` (acks=all, as ``registrar health`` and the health checkers
append), wait until all subscribers have received the changed
ClusterLoadAssignment, read both gateways' view-tail gauges, pause ``--gap``.

Times, all on one machine and one clock (``time.time()`` in every Python
process; the broker's LogAppendTime):

- ``t0``: the bench, just before ``append``;
- ``logged``: the event's broker timestamp (LogAppendTime, returned by the ack);
- ``fetched``: the projector's fetch returning the batch with it (its DEBUG
  ``batch N timeline`` line);
- ``view topic``: the broker timestamp of the newest view record of the flip,
  as applied by the gateway (``meshlog_view_tail_applied_record_timestamp_seconds``);
- ``gateway``: when the gateway's view tail applied that batch
  (``meshlog_view_tail_applied_timestamp_seconds``, checked against the flip by
  ``..._applied_source_timestamp_seconds`` = the event's broker time);
- ``client``: a stream reading the response that carries the changed resource.

A flip's reach-all time is ``t0`` to the slowest subscriber; it splits exactly
into append (t0 -> logged), to projector (logged -> fetched), projector
(fetched -> view topic: decode, fold, render, publish), to gateway (view topic
-> applied, on the slowest subscriber's replica) and to client (applied ->
slowest subscriber). p50 and p99 are over the flips (with ``--flips 40`` p99 is
the worst but one).

Usage:  .venv/bin/python bench/e2e_propagation.py            (full; a few minutes on 2 cores)
        .venv/bin/python bench/e2e_propagation.py --quick    (201 streams, 5 flips: a minute or two)
        --json FILE   also write the figures (and every flip) as JSON
        --keep        keep the work dir (process logs) after a successful run
        --projector-only  the projector alone, events arriving at random times (what its chores make wait)
        --projector-args "--linger-ms 5 --full-gc-interval 60 --checkpoint-interval 5"  the old defaults (A/B)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import multiprocessing as mp
import os
import random
import re
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.append(str(Path(__file__).resolve().parent))  # after ROOT: bench/projector.py must not shadow projector/

from bench.host_window import HostWindow, steal_text  # noqa: E402
from xds_fanout import HOT, add_mesh_arguments, ask, pct, registrations, wait_until  # noqa: E402

TARGET_P99_MS = 150.0
STAGES = ("append", "to_projector", "projector", "to_gateway", "to_client")
STAGE_LABELS = {
    "append": "append (bench -> broker log time)",
    "to_projector": "log -> projector fetched it",
    "projector": "projector: decode+fold+render+publish -> view topic",
    "to_gateway": "view topic -> gateway applied it",
    "to_client": "gateway applied -> last subscriber read it",
}
_TIMELINE = re.compile(r"batch (\d+) timeline: newest event logged at (\d+) ms, fetched ([-\d.]+) ms after it, "
                       r"views published ([-\d.]+) ms after the fetch")
_BATCH = re.compile(r"batch (\d+): .*decode ([\d.]+)ms fold ([\d.]+)ms render ([\d.]+)ms publish ([\d.]+)ms")


def load_line(window: HostWindow | None = None) -> str:
    """The load average; with ``window``, also the CPU time the hypervisor stole since it opened."""
    one, five, fifteen = os.getloadavg()
    stolen = "" if window is None else f"; {steal_text(window.steal_share())} of the CPU time over the run"
    return f"load average {one:.2f}, {five:.2f}, {fifteen:.2f} ({os.cpu_count()} cores){stolen}"


def gateway_gauges(http_port: int) -> dict[str, float]:
    from tests.support.stack import metrics

    values = metrics(http_port)
    return {"applied_at": values.get("meshlog_view_tail_applied_timestamp_seconds", 0.0),
            "record_s": values.get("meshlog_view_tail_applied_record_timestamp_seconds", 0.0),
            "source_s": values.get("meshlog_view_tail_applied_source_timestamp_seconds", 0.0)}


def projector_timelines(log_path: Path) -> dict[int, dict]:
    """newest event ms -> {fetched_after_ms, published_after_ms, decode/fold/render/publish ms}."""
    batches: dict[int, dict] = {}
    by_event: dict[int, dict] = {}
    for line in log_path.read_text(errors="replace").splitlines():
        if m := _BATCH.search(line):
            batches[int(m.group(1))] = {k: float(v) for k, v in zip(("decode", "fold", "render", "publish"),
                                                                    m.groups()[1:])}
        elif m := _TIMELINE.search(line):
            entry = {"fetched_after_ms": float(m.group(3)), "published_after_ms": float(m.group(4)),
                     **batches.get(int(m.group(1)), {})}
            by_event[int(m.group(2))] = entry
    return by_event


async def append_all(bootstrap: str, regs: list) -> None:
    from events.envelope import new_event
    from events.producer import EventProducer

    async with EventProducer(bootstrap, timeout_s=60) as producer:
        for i in range(0, len(regs), 2000):
            await producer.append_batch([new_event(p, producer="e2e-bench") for p in regs[i:i + 2000]])


def stage_split(flip: dict) -> dict | None:
    """The five stages of one flip's reach-all time (ms), or None when a mark is missing."""
    if flip.get("fetched_ms") is None or flip.get("reach_all_ms") is None:
        return None
    gw = flip["gateways"].get(str(flip["slowest_replica"]))
    if not gw or not gw["matches"]:
        return None
    t0_ms, logged, fetched = flip["t0"] * 1000, flip["logged_ms"], flip["fetched_ms"]
    record, applied, last = gw["record_s"] * 1000, gw["applied_at"] * 1000, flip["t_last"] * 1000
    return {"append": logged - t0_ms, "to_projector": fetched - logged, "projector": record - fetched,
            "to_gateway": applied - record, "to_client": last - applied}


def summary(values: list[float]) -> dict:
    if not values:
        return {"p50": None, "p99": None, "min": None, "max": None, "n": 0}
    return {"p50": round(pct(values, 50), 1), "p99": round(pct(values, 99), 1),
            "min": round(min(values), 1), "max": round(max(values), 1), "n": len(values)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="a small run (200 nodes, 201 streams, 5 flips)")
    add_mesh_arguments(p)
    p.add_argument("--streams", type=int, default=10_000, help="delta streams, over all replicas")
    p.add_argument("--replicas", type=int, default=2, help="xds-gateway replicas")
    p.add_argument("--procs", type=int, default=4, help="client processes (each on one replica)")
    p.add_argument("--flips", type=int, default=40, help="health flips measured, one at a time")
    p.add_argument("--gap", type=float, default=0.5, help="pause after a flip reached everyone, +0-50%% jitter (s)")
    p.add_argument("--deadline", type=float, default=900.0, help="abort the run after this many seconds")
    p.add_argument("--json", help="also write the figures to this file")
    p.add_argument("--keep", action="store_true", help="keep the work dir (process logs) after a successful run")
    p.add_argument("--projector-only", action="store_true",
                   help="no gateways or clients: --flips flips of random instances at random times (mean gap --gap), "
                   "each measured from its append to the projector's fetch and to its views acknowledged")
    p.add_argument("--projector-args", default="", metavar="ARGS",
                   help='extra `projector run` flags, e.g. "--linger-ms 5 --full-gc-interval 60 --checkpoint-interval 5" (the old defaults)')
    if "--quick" in (sys.argv[1:] if argv is None else argv):  # smaller defaults; flags given still win
        p.set_defaults(services=40, instances=5, hot=50, streams=201, procs=2, flips=5, gap=0.2, deadline=300.0)
    args = p.parse_args(argv)
    # a broker that has just created its topics answers the first appends NotLeaderForPartition; aiokafka retries
    logging.getLogger("aiokafka").setLevel(logging.ERROR)
    args.procs = max(args.procs, args.replicas)
    args.streams = min(args.streams, args.services * args.instances + 1)
    args.hot = min(args.hot, args.streams)
    deadline = time.monotonic() + args.deadline
    workdir = Path(tempfile.mkdtemp(prefix="meshlog-bench-e2e-"))
    window = HostWindow()
    results: dict = {"config": {k: v for k, v in vars(args).items() if k != "json"}, "load_start": load_line()}
    shape = ("the projector alone" if args.projector_only else
             f"{args.hot} subscribers of {HOT}, {args.streams} streams over {args.replicas} gateway replicas")
    print(f"e2e propagation: {args.services} services x {args.instances} instances, {shape}; work dir {workdir}; "
          f"{results['load_start']}", flush=True)
    ok = False
    try:
        run(args, workdir, results, deadline)
        ok = True
    finally:
        if ok and not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        elif not ok:
            print(f"logs kept in {workdir}", flush=True)
    results["load_end"] = load_line(window)
    report(results)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str))
    return 0


def run(args: argparse.Namespace, workdir: Path, results: dict, deadline: float) -> None:
    from events.admin import ensure_topics
    from meshlog.kafka_local import LocalKafka
    from tests.support.stack import start_gateway, start_projector
    from xds_fanout_client import client_main

    regs, regular, dependents = registrations(args)
    hot_regular = [n for n in regular if n in dependents]
    others = [n for n in regular if n not in dependents]
    nodes = ["edge-0"] + hot_regular + others[: max(0, args.streams - 1 - len(hot_regular))]
    random.Random(args.seed + 2).shuffle(nodes)
    per_proc = [nodes[i:: args.procs] for i in range(args.procs)]
    subscribers = sum(1 for n in nodes if n in dependents)

    processes, clients, client_conns = [], [], []
    ctx = mp.get_context("spawn")
    loop = asyncio.new_event_loop()
    kafka = LocalKafka(data_dir=workdir / "kafka", keep_data=False, start_timeout=180)  # a loaded host starts it slowly
    try:
        t = time.monotonic()
        bootstrap = kafka.start()
        loop.run_until_complete(ensure_topics(bootstrap))
        print(f"Kafka at {bootstrap} in {time.monotonic() - t:.1f}s", flush=True)
        t = time.monotonic()
        loop.run_until_complete(append_all(bootstrap, regs))
        projector = start_projector(bootstrap, workdir, extra=["-v", "--insecure-events", *shlex.split(args.projector_args)])
        processes.append(projector)
        if not wait_until(lambda: "caught up at" in projector.log_path.read_text(errors="replace"),
                          max(1.0, deadline - time.monotonic()), 0.2):
            raise TimeoutError(f"the projector did not catch up before the deadline\n{projector.log_tail()}")
        print(f"{len(regs)} registrations appended and projected in {time.monotonic() - t:.1f}s", flush=True)
        if args.projector_only:
            logged = loop.run_until_complete(arrivals(args, bootstrap, deadline))
            time.sleep(5.0)  # the last batches publish
            results["arrivals"] = arrival_delays(logged, projector_timelines(projector.log_path))
            return
        gateways = []
        for r in range(args.replicas):
            gw = start_gateway(bootstrap, workdir, f"gateway-{r}", timeout=max(1.0, deadline - time.monotonic()),
                               extra=["--max-streams-per-connection", "100000"])
            processes.append(gw)
            gateways.append(gw)
        print("gateways ready: " + ", ".join(f"{g.name} xDS :{g.info['xds_port']}" for g in gateways), flush=True)

        ready = ctx.Array("q", args.procs, lock=False)
        hot_count = ctx.Array("q", args.procs, lock=False)
        failed = ctx.Array("q", args.procs, lock=False)
        replica_of = [i % args.replicas for i in range(args.procs)]
        t = time.monotonic()
        for i, chunk in enumerate(per_proc):
            parent_end, child_end = ctx.Pipe()
            proc = ctx.Process(target=client_main, name=f"e2e-client-{i}", daemon=True,
                               args=(child_end, gateways[replica_of[i]].info["xds_port"], i, chunk,
                                     [n in dependents for n in chunk], HOT, args.streams_per_channel, args.ramp,
                                     ready, hot_count, failed, None))
            proc.start()
            clients.append(proc)
            client_conns.append(parent_end)
        last_print = 0
        while sum(ready) + sum(failed) < len(nodes):
            if time.monotonic() > deadline:
                raise TimeoutError(f"deadline passed with {sum(ready)}/{len(nodes)} streams initialised")
            time.sleep(0.5)
            if sum(ready) // 2000 != last_print:
                last_print = sum(ready) // 2000
                print(f"  {sum(ready)} streams initialised ({time.monotonic() - t:.0f}s)", flush=True)
        results["streams"] = {"opened": len(nodes), "initialised": sum(ready), "failed": sum(failed),
                              "subscribers": subscribers, "ramp_s": round(time.monotonic() - t, 1),
                              "per_replica": [sum(len(c) for i, c in enumerate(per_proc) if replica_of[i] == r)
                                              for r in range(args.replicas)]}
        print(f"streams: {sum(ready)}/{len(nodes)} initialised in {results['streams']['ramp_s']}s "
              f"({sum(failed)} failed); {subscribers} subscribe {HOT}", flush=True)
        time.sleep(1.0)  # the last ACKs land
        for c in client_conns:
            ask(c, ("mark",), 60, "marked")

        flips = loop.run_until_complete(
            flip_all(args, bootstrap, subscribers, hot_count, [g.info["http_port"] for g in gateways], deadline))

        reports = [ask(c, ("report",), 120, "report")[1] for c in client_conns]
        attribute(flips, reports, replica_of, dependents, subscribers)
        timelines = projector_timelines(projector.log_path)
        for f in flips:
            tl = timelines.get(f["logged_ms"])
            f["projector"] = tl
            f["fetched_ms"] = f["logged_ms"] + tl["fetched_after_ms"] if tl else None
            f["stages"] = stage_split(f)
        results["flips"] = flips
        results["client_errors"] = [e for r in reports for e in r["errors"]][:5]
    finally:
        for c in client_conns:
            try:
                c.send(("stop",))
            except (BrokenPipeError, OSError):
                pass
        for proc in clients:
            proc.join(20)
            if proc.is_alive():
                proc.terminate()
        for proc in reversed(processes):
            proc.stop()
        loop.close()
        kafka.stop()


async def flip_all(args, bootstrap: str, subscribers: int, hot_count, http_ports: list[int], deadline: float) -> list:
    from events import types as t
    from events.envelope import new_event
    from events.producer import EventProducer

    rnd = random.Random(args.seed + 3)
    health: dict[int, str] = {}
    flips = []
    expected = subscribers  # deliveries per flip; fewer once a flip shows some subscriber streams failed
    async with EventProducer(bootstrap) as producer:
        for k in range(args.flips):
            if time.monotonic() > deadline:
                print(f"  deadline: stopping after {k} flips", flush=True)
                break
            instance = k % args.instances
            status = health[instance] = "unhealthy" if health.get(instance, "healthy") == "healthy" else "healthy"
            env = new_event(t.InstanceHealthChanged(service=HOT, instance_id=f"i{instance}", status=status,
                                                    observer="e2e-bench"), producer="e2e-bench")
            base = sum(hot_count)
            t0 = time.time()
            appended = await producer.append(env)
            t_ack = time.time()
            end = time.monotonic() + 10.0
            while sum(hot_count) - base < expected and time.monotonic() < end:
                await asyncio.sleep(0.002)
            got = sum(hot_count) - base
            reached = got >= expected
            await asyncio.sleep(0.05)  # the gauges are set right after the last apply; let a straggler batch land
            gauges = {}
            for r, port in enumerate(http_ports):
                g = await asyncio.to_thread(gateway_gauges, port)
                g["matches"] = abs(g["source_s"] * 1000 - appended.timestamp_ms) < 0.5
                gauges[str(r)] = g
            flips.append({"k": k, "instance": instance, "status": status, "t0": t0, "t_ack": t_ack,
                          "logged_ms": appended.timestamp_ms, "reached_all_within_10s": reached,
                          "gateways": gauges})
            if not reached:
                print(f"  flip {k}: {got}/{expected} deliveries after 10s; expecting {max(1, got)} from now on",
                      flush=True)
                expected = max(1, got)
            await asyncio.sleep(args.gap * (1 + 0.5 * rnd.random()))
    return flips


async def arrivals(args, bootstrap: str, deadline: float) -> list[int]:
    """``--flips`` health flips of random instances at random times (exponential gaps of mean ``--gap``),
    each appended without waiting for the last one's views: what arrives during the projector's chores waits."""
    from events import types as t
    from events.envelope import new_event
    from events.producer import EventProducer

    rnd = random.Random(args.seed + 4)
    health: dict[tuple[int, int], str] = {}
    logged = []
    async with EventProducer(bootstrap) as producer:
        for _ in range(args.flips):
            if time.monotonic() > deadline:
                break
            s, i = rnd.randrange(args.services), rnd.randrange(args.instances)
            status = health[(s, i)] = "unhealthy" if health.get((s, i), "healthy") == "healthy" else "healthy"
            env = new_event(t.InstanceHealthChanged(service=f"svc-{s:03d}", instance_id=f"i{i}", status=status,
                                                    observer="e2e-bench"), producer="e2e-bench")
            logged.append((await producer.append(env)).timestamp_ms)
            await asyncio.sleep(rnd.expovariate(1 / args.gap))
    return logged


def arrival_delays(logged: list[int], timelines: dict[int, dict]) -> dict:
    """Per event: log -> fetched, and log -> its views acknowledged (its batch is the first whose newest event
    is at or after it)."""
    newest = sorted(timelines)
    fetch, views = [], []
    for ms in logged:
        batch = next((n for n in newest if n >= ms), None)
        if batch is None:
            continue
        fetched = batch + timelines[batch]["fetched_after_ms"]
        fetch.append(fetched - ms)
        views.append(fetched + timelines[batch]["published_after_ms"] - ms)
    return {"events": len(logged), "measured": len(fetch), "log_to_fetched_ms": summary(fetch),
            "log_to_views_ms": summary(views), "fetched_over_100ms": sum(1 for x in fetch if x > 100)}


def attribute(flips: list, reports: list, replica_of: list[int], dependents: set[str], subscribers: int) -> None:
    """Each delivery belongs to the flip whose window [t0, next t0) holds its receive time. A flip reached all
    when every subscriber stream that received any flip received it (a stream that failed to open gets none)."""
    starts = [f["t0"] for f in flips] + [math.inf]
    firsts: list[dict[str, tuple[float, int]]] = [{} for _ in flips]
    for proc, rep in enumerate(reports):
        for _version, t_recv, node in rep["hot"]:
            for k in range(len(flips)):
                if starts[k] <= t_recv < starts[k + 1]:
                    seen = firsts[k].get(node)
                    if seen is None or t_recv < seen[0]:
                        firsts[k][node] = (t_recv, replica_of[proc])
                    break
    reachable = len({node for got in firsts for node in got})
    for f, got in zip(flips, firsts):
        f["subscribers_reachable"] = reachable
        f["deliveries"] = [round((tr - f["t0"]) * 1000, 2) for tr, _r in got.values()]
        f["subscribers_reached"] = len(got)
        if len(got) >= reachable and got:
            t_last, replica = max(got.values())
            f["t_last"], f["slowest_replica"] = t_last, replica
            f["reach_all_ms"] = (t_last - f["t0"]) * 1000
        else:
            f["t_last"] = f["slowest_replica"] = f["reach_all_ms"] = None


def report(r: dict) -> None:
    if "arrivals" in r:
        a = r["arrivals"]
        f, v = a["log_to_fetched_ms"], a["log_to_views_ms"]
        print("\n=== projector only: health flips at random times, append -> fetched -> views acknowledged ===")
        print(f"{a['measured']}/{a['events']} events; log -> projector fetched: p50 {f['p50']} ms, p99 {f['p99']} ms, "
              f"max {f['max']} ms ({a['fetched_over_100ms']} over 100 ms); log -> views acknowledged: p50 {v['p50']} "
              f"ms, p99 {v['p99']} ms, max {v['max']} ms")
        print(f"{r['load_start']} at start, {r.get('load_end', '?')} at the end")
        return
    flips = r.get("flips") or []
    s = r.get("streams", {})
    complete = [f["reach_all_ms"] for f in flips if f.get("reach_all_ms") is not None]
    deliveries = [d for f in flips for d in f.get("deliveries", [])]
    split = [f["stages"] for f in flips if f.get("stages")]
    r["reach_all_ms"] = summary(complete)
    r["delivery_ms"] = summary(deliveries)
    r["stages_ms"] = {st: summary([x[st] for x in split]) for st in STAGES}
    r["ack_ms"] = summary([(f["t_ack"] - f["t0"]) * 1000 for f in flips])
    proj = [f["projector"] for f in flips if f.get("projector")]
    r["projector_ms"] = {k: summary([x[k] for x in proj if k in x])
                         for k in ("decode", "fold", "render", "publish", "published_after_ms")}
    ra = r["reach_all_ms"]
    r["target"] = {"p99_ms": TARGET_P99_MS, "met": ra["p99"] is not None and ra["p99"] <= TARGET_P99_MS
                   and len(complete) == len(flips)}
    print("\n=== end to end: registrar append -> projector -> view topic -> gateway -> client ===")
    reachable = flips[0]["subscribers_reachable"] if flips else 0
    print(f"streams: {s.get('initialised')}/{s.get('opened')} over replicas {s.get('per_replica')}; "
          f"{s.get('subscribers')} subscribers of {HOT}"
          + (f" ({reachable} reachable: the others' streams failed)" if reachable != s.get("subscribers") else "")
          + f"; {len(flips)} flips, {len(complete)} reached all")
    print(f"reach all subscribers: p50 {ra['p50']} ms, p99 {ra['p99']} ms (min {ra['min']}, max {ra['max']}); "
          f"per delivery p50 {r['delivery_ms']['p50']} ms, p99 {r['delivery_ms']['p99']} ms")
    print(f"split of reach-all (p50 / p99 / max ms over {len(split)} flips):")
    for st in STAGES:
        x = r["stages_ms"][st]
        print(f"  {STAGE_LABELS[st]:<56} {x['p50']} / {x['p99']} / {x['max']}")
    pm = r["projector_ms"]
    print(f"projector per flip (p50 ms): decode {pm['decode']['p50']}, fold {pm['fold']['p50']}, render "
          f"{pm['render']['p50']}, publish {pm['publish']['p50']} (acked {pm['published_after_ms']['p50']} after "
          f"the fetch); append acknowledged p50 {r['ack_ms']['p50']} ms")
    print(f"{r['load_start']} at start, {r.get('load_end', '?')} at the end")
    print(f"target: reach-all p99 <= {TARGET_P99_MS:g} ms: {'MET' if r['target']['met'] else 'MISSED'}")
    if r.get("client_errors"):
        print(f"client stream errors (first few): {r['client_errors']}")


if __name__ == "__main__":
    sys.exit(main())
