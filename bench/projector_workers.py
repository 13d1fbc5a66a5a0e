"""Projector workers sharing the render (``projector run --group``): throughput with 1, 2, 4 workers,
the takeover of a killed worker's shards, and a brand-new worker becoming useful.

For each worker count W (``--workers 1,2,4``), on a fresh local broker (or $MESHLOG_KAFKA_BOOTSTRAP with
``--wipe-topics``: meshlog's topics on it are deleted and recreated before each run):

1. the bench mesh's registrations are appended (``bench/projector.py``'s mesh: services x instances,
   every instance a sidecar node depending on 3 other services; default 2,000 x 5 = 10,000 nodes);
2. W ``projector run --group`` processes start on empty data dirs; the bench waits until every one
   has caught up, joined the group and taken its shards over;
3. ``--events`` health transitions on random instances are appended as fast as a producer can (the
   worst case: each batch changes endpoints that most nodes hold, so most memberships change);
4. throughput = events / (time from the first transition's broker timestamp to the time the last
   worker logged the batch that published past the last one); CPU = the workers' user+system CPU
   seconds over that span (from /proc), beside the wall time and the load average. The producer runs
   meanwhile, on the same 2 cores: this is the pipeline's rate, and it cannot exceed the producer's;
5. then the workers' own capacity, on a backlog: every worker is paused (SIGSTOP), another
   ``--events`` transitions are appended, the workers are resumed (SIGCONT) and throughput = events /
   (time from the resume until the last worker published past the last one). The pause is shorter
   than the group's session timeout (6 s) at the default event count, so no worker is evicted
   (evictions are counted and printed).

With W = 2, then: one worker is killed with SIGKILL and the time until the other logs the gained
shards (the group's session timeout, 6 s, plus the rebalance) and until it has published them is
measured; then a brand-new worker on an empty data dir is started and the time until it has caught
up, joined and published its first shards is measured.

``--in-process`` (no broker): what one worker's batches cost in CPU-s, by stage, when it owns all 12
shards, 6 or 3 (``render_all`` scoped by its ownership): decode, fold, render (of it, for the shared
resources: reading their render inputs, which every worker does to name their versions, and building
the bodies of its shards), planning; per ``--batch`` events (default 5,000) of the same health
transitions.

Usage: python bench/projector_workers.py [--services 2000] [--instances 5] [--events 50000]
       [--workers 1,2,4] [--in-process [--batch 5000]]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import json
import os
import re
import shutil
import signal
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.host_window import HostWindow, steal_text  # noqa: E402
from meshlog.procs import BIN, Process, spawn, wait_until  # noqa: E402

_spec = importlib.util.spec_from_file_location("bench_projector", Path(__file__).with_name("projector.py"))
bench_projector = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench_projector)

LINE_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")
BATCH = re.compile(r"DEBUG projector: batch \d+: .*next offsets \{(.*)\}$")
TICKS = os.sysconf("SC_CLK_TCK")


def line_time(line: str) -> float | None:
    m = LINE_TIME.match(line)
    if m is None:
        return None
    return datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").replace(tzinfo=timezone.utc).timestamp()


def log_lines(worker: Process) -> list[str]:
    return worker.log_path.read_text(errors="replace").splitlines()


def first_after(worker: Process, text: str, after: float = 0.0) -> float | None:
    for line in log_lines(worker):
        if text in line:
            at = line_time(line)
            if at is not None and at >= after:
                return at
    return None


def reached(worker: Process, ends: dict[str, int]) -> float | None:
    """When the worker logged the first batch whose next offsets reach ``ends`` (None: not yet)."""
    for line in log_lines(worker):
        m = BATCH.search(line)
        if m is None:
            continue
        offsets = dict(item.rsplit("@", 1) for item in m.group(1).split(", ") if "@" in item)
        if all(int(offsets.get(k, 0)) >= v for k, v in ends.items()):
            return line_time(line)
    return None


STAGES = re.compile(r"decode ([\d.]+)ms fold ([\d.]+)ms render ([\d.]+)ms publish ([\d.]+)ms commit ([\d.]+)ms")


def stage_split(worker: Process, since: float, until: float) -> dict[str, float]:
    """Seconds per batch stage (wall, in the worker) over the batches logged in [since, until]: decode,
    fold and render (+ planning) are done by every worker in full; publish and commit only for its shards."""
    out = {"batches": 0, "decode": 0.0, "fold": 0.0, "render": 0.0, "publish": 0.0, "commit": 0.0}
    for line in log_lines(worker):
        at = line_time(line)
        m = STAGES.search(line)
        if m is None or at is None or not since <= at <= until:
            continue
        out["batches"] += 1
        for name, value in zip(("decode", "fold", "render", "publish", "commit"), m.groups()):
            out[name] += float(value) / 1000
    return out


def cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime


def peak_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def start_worker(bootstrap: str, workdir: Path, name: str, group: str) -> Process:
    return spawn(name, [str(BIN / "projector"), "-v", "run", "--bootstrap", bootstrap, "--data-dir",
                        str(workdir / f"{name}-data"), "--group", group, "--worker-id", name, "--insecure-events",
                        "--poll-ms", "100", "--snapshot-interval", "3600", "--snapshot-events", "10000000"], workdir)


def produce(bootstrap: str, kind: str, args: argparse.Namespace, prefix: str, count: int, seed: int) -> dict:
    p = bench_projector.run_producer(bootstrap, kind, args, prefix, count, seed)
    out = json.loads(p.communicate()[0])
    if p.returncode:
        raise SystemExit(f"the {kind} producer failed")
    return out


def run(bootstrap: str, workers: int, args: argparse.Namespace, workdir: Path) -> dict:
    prefix = f"w{workers}-{os.getpid()}"
    group = f"meshlog-projector-bench-{prefix}"
    regs = produce(bootstrap, "registrations", args, prefix, 0, 0)
    started = time.time()
    procs = [start_worker(bootstrap, workdir, f"w{i}", group) for i in range(workers)]
    out: dict = {"workers": workers}
    try:
        wait_until(lambda: all(reached(w, regs["ends"]) and first_after(w, "took over shards") for w in procs),
                   1800, f"{workers} workers caught up and sharing", interval=1.0,
                   on_fail=lambda: "\n".join(w.log_tail() for w in procs))
        out["first_useful_s"] = max(first_after(w, "took over shards") for w in procs) - started
        time.sleep(2.0)  # let the last rebalance settle
        cpu0 = {w.name: cpu_s(w.pid) for w in procs}
        load0, window = os.getloadavg(), HostWindow()
        flap = produce(bootstrap, "flaps", args, prefix, args.events, 2)
        wait_until(lambda: all(reached(w, flap["ends"]) for w in procs), 3600, "every worker past the flaps",
                   interval=1.0, on_fail=lambda: "\n".join(w.log_tail() for w in procs))
        done = max(reached(w, flap["ends"]) for w in procs)
        cpu = {w.name: cpu_s(w.pid) - cpu0[w.name] for w in procs}
        wall = done - flap["first_timestamp_ms"] / 1000.0
        out.update(events=flap["count"], wall_s=wall, events_per_s=flap["count"] / wall,
                   cpu_s=sum(cpu.values()), cpu_per_worker_s=cpu, producer_s=flap["produce_s"],
                   peak_rss_mb={w.name: peak_rss_mb(w.pid) for w in procs},
                   evictions=sum(sum("member_id was not recognized" in line for line in log_lines(w)) for w in procs),
                   stages={w.name: stage_split(w, flap["first_timestamp_ms"] / 1000.0, done + 0.01) for w in procs},
                   load_before=load0, load_after=os.getloadavg(), steal=window.steal_share())
        out["backlog"] = backlog(bootstrap, procs, args, prefix)
        if workers == 2:
            out.update(takeover(bootstrap, procs, workdir, group))
    finally:
        for w in procs:
            w.stop()
    return out


def backlog(bootstrap: str, procs: list[Process], args: argparse.Namespace, prefix: str) -> dict:
    """The workers' own rate: ``--events`` transitions appended while every worker is paused, then folded,
    rendered and published from the moment they resume (no producer beside them)."""
    time.sleep(1.0)
    for w in procs:
        os.kill(w.pid, signal.SIGSTOP)
    try:
        flap = produce(bootstrap, "flaps", args, prefix, args.events, 3)
        cpu0 = {w.name: cpu_s(w.pid) for w in procs}
        load0, window = os.getloadavg(), HostWindow()
    finally:
        resumed = time.time()
        for w in procs:
            os.kill(w.pid, signal.SIGCONT)
    wait_until(lambda: all(reached(w, flap["ends"]) for w in procs), 3600, "every worker past the backlog",
               interval=0.5, on_fail=lambda: "\n".join(w.log_tail() for w in procs))
    done = max(reached(w, flap["ends"]) for w in procs)
    cpu = {w.name: cpu_s(w.pid) - cpu0[w.name] for w in procs}
    wall = done - resumed
    return {"events": flap["count"], "wall_s": wall, "events_per_s": flap["count"] / wall, "cpu_s": sum(cpu.values()),
            "cpu_per_worker_s": cpu, "paused_s": resumed - flap["first_timestamp_ms"] / 1000.0,
            "stages": {w.name: stage_split(w, resumed, done + 0.01) for w in procs},
            "load_before": load0, "load_after": os.getloadavg(), "steal": window.steal_share()}


def takeover(bootstrap: str, procs: list[Process], workdir: Path, group: str) -> dict:
    survivor, victim = procs
    if first_after(survivor, "of 12 (gained [], lost [", 0) and not first_after(victim, "took over shards", 0):
        raise SystemExit("the victim owns nothing: no takeover to measure")
    killed = time.time()
    victim.kill9()
    wait_until(lambda: first_after(survivor, "took over shards", killed), 120, "the survivor to take over",
               interval=0.2, on_fail=survivor.log_tail)
    gained = first_after(survivor, "(gained [", killed)
    published = first_after(survivor, "took over shards", killed)
    # a brand-new worker on an empty data dir: catch up, join, take its shards over
    shutil.rmtree(workdir / "w-new-data", ignore_errors=True)
    born = time.time()
    fresh = start_worker(bootstrap, workdir, "w-new", group)
    procs.append(fresh)
    wait_until(lambda: first_after(fresh, "took over shards"), 1800, "the new worker to take shards over",
               interval=0.5, on_fail=fresh.log_tail)
    return {
        "takeover_detected_s": gained - killed, "takeover_published_s": published - killed,
        "new_worker_caught_up_s": first_after(fresh, "caught up: joining group") - born,
        "new_worker_useful_s": first_after(fresh, "took over shards") - born,
        "new_worker_took": next(line for line in log_lines(fresh) if "took over shards" in line).split("took over ")[1],
    }


def in_process(args: argparse.Namespace) -> list[dict]:
    from aiokafka.structs import ConsumerRecord

    from events import topics
    from events.codec import encode
    from events.envelope import Logged
    from events.record_decoder import RecordDecoder
    from projector import publisher as pub
    from projector import render_view
    from projector.fold import fold_many
    from projector.render import render_all
    from projector.sharding import Ownership
    from projector.state import empty_state

    shared_s = {"inputs": 0.0, "build": 0.0}  # shared resources: naming their versions, building their bodies
    originals = {"inputs": render_view.Renderer.shared_inputs, "build": render_view.Renderer.build_shared}

    def timed(stage):
        original = originals[stage]

        def call(self, *args):
            c = time.process_time()
            try:
                return original(self, *args)
            finally:
                shared_s[stage] += time.process_time() - c
        return call

    render_view.Renderer.shared_inputs = timed("inputs")
    render_view.Renderer.build_shared = timed("build")
    regs = [Logged(bench_projector.envelope(p, i), topics.REGISTRATIONS, 0, i, 1_000_000 + i)
            for i, p in enumerate(bench_projector.registrations(args.services, args.instances, "f"))]
    raw = [encode(bench_projector.envelope(p, i))
           for i, p in enumerate(bench_projector.flaps(args.services, args.instances, "f", args.events, 1))]
    out = []
    for shards in (12, 6, 3):
        scope = Ownership(frozenset(range(shards)), 12)
        state, _ = fold_many(empty_state(), regs)
        rendered = render_all(state, scope=scope, endpoint_versions=False)  # as the worker renders
        published = pub.PublishedViews()
        published.apply(pub.plan_views(rendered, published, scope))
        cpu = {"decode": 0.0, "fold": 0.0, "render": 0.0, "plan": 0.0}
        shared_s.update(inputs=0.0, build=0.0)
        decoder = RecordDecoder()  # as the worker decodes (projector.service): a health flap repeats its payload
        for i in range(0, len(raw), args.batch):
            c0 = time.process_time()
            logged = [decoder(ConsumerRecord(topics.HEALTH, 0, i + j, 2_000_000 + i + j, 1, None, v, None, 0, len(v), ()))
                      for j, v in enumerate(raw[i: i + args.batch])]
            c1 = time.process_time()
            state, _ = fold_many(state, logged)
            c2 = time.process_time()
            rendered = render_all(state, previous=rendered, scope=scope, consume_previous=True)  # as the worker does
            c3 = time.process_time()
            plan = pub.plan_changes(rendered, published, scope)
            c4 = time.process_time()
            published.apply(plan)
            for name, took in zip(cpu, (c1 - c0, c2 - c1, c3 - c2, c4 - c3)):
                cpu[name] += took
        batches = -(-len(raw) // args.batch)
        cpu["total"] = sum(cpu.values())
        out.append({"shards": shards, "batches": batches, "shared_inputs": shared_s["inputs"] / batches,
                    "shared_build": shared_s["build"] / batches, **{k: v / batches for k, v in cpu.items()}})
    render_view.Renderer.shared_inputs, render_view.Renderer.build_shared = originals["inputs"], originals["build"]
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, default=2000)
    parser.add_argument("--instances", type=int, default=5)
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--workers", default="1,2,4", help="worker counts to run, comma-separated")
    parser.add_argument("--in-process", action="store_true", help="the per-batch CPU split, no broker")
    parser.add_argument("--batch", type=int, default=5000, help="--in-process: events per batch")
    parser.add_argument("--signed", action="store_true",
                        help="the producers sign their events (the workers run --insecure-events and do not verify)")
    parser.add_argument("--health-batch", type=int, default=1000, metavar="N",
                        help="with --signed: the checker signs its transitions N at a time (default 1000, as this "
                             "bench always has; 1: each alone, bench/projector.py's default)")
    parser.add_argument("--wipe-topics", action="store_true",
                        help="with $MESHLOG_KAFKA_BOOTSTRAP: let the bench delete and recreate meshlog's topics on "
                             "that broker before each run (every record on them is lost); a broker the bench starts "
                             "itself is always wiped")
    args = parser.parse_args()
    args.unsigned = not args.signed  # bench/projector.py's producer
    if args.in_process:
        print(f"in process, CPU-s per batch of {args.batch:,} health transitions on {args.services * args.instances:,} "
              f"nodes; load average {os.getloadavg()[0]:.1f}", flush=True)
        for r in in_process(args):
            print(f"  owning {r['shards']:>2} of 12 shards: decode {r['decode']:.3f}, fold {r['fold']:.3f}, render "
                  f"{r['render']:.3f} (of it shared resources: inputs {r['shared_inputs']:.3f}, bodies built "
                  f"{r['shared_build']:.3f}), planning {r['plan']:.3f}; total {r['total']:.3f}", flush=True)
        return 0
    counts = [int(x) for x in args.workers.split(",")]
    print(f"mesh: {args.services} services x {args.instances} instances = {args.services * args.instances} "
          f"sidecar nodes; {args.events:,} health transitions; host: {os.cpu_count()} cores", flush=True)
    results = []
    with contextlib.ExitStack() as broker:
        bootstrap = os.environ.get("MESHLOG_KAFKA_BOOTSTRAP")
        if bootstrap and not args.wipe_topics:
            raise SystemExit(f"projector_workers.py: each run starts by deleting and recreating meshlog's topics; on "
                             f"$MESHLOG_KAFKA_BOOTSTRAP={bootstrap} that loses every record on them (another "
                             f"bench's log, a demo's mesh). Pass --wipe-topics to allow it, or unset "
                             f"MESHLOG_KAFKA_BOOTSTRAP to run on a broker of the bench's own.")
        if not bootstrap:
            from meshlog.kafka_local import LocalKafka

            bootstrap = broker.enter_context(LocalKafka(start_timeout=600)).bootstrap  # the host may be loaded
        for n in counts:
            asyncio.run(fresh_topics(bootstrap))  # every run folds one mesh: its own
            with tempfile.TemporaryDirectory(prefix="projector-workers-") as workdir:
                r = run(bootstrap, n, args, Path(workdir))
            results.append(r)
            report(r)
    print(json.dumps(results, default=str))
    return 0


async def fresh_topics(bootstrap: str) -> None:
    """Delete and recreate meshlog's topics: the next run starts from an empty log."""
    from events import topics
    from events.admin import connect_admin, ensure_topics

    admin = await connect_admin(bootstrap)
    try:
        present = set(await admin.list_topics()) & {t.name for t in topics.ALL_TOPICS}
        if present:
            await admin.delete_topics(sorted(present))
    finally:
        await admin.close()
    for _ in range(60):  # deletion is asynchronous: creating too early fails with "marked for deletion"
        try:
            report = await ensure_topics(bootstrap)
        except RuntimeError:
            await asyncio.sleep(1.0)
            continue
        if report.consistent:
            return
        await asyncio.sleep(1.0)
    raise SystemExit("could not recreate the topics")


def print_stages(stages: dict, indent: str = "  ") -> None:
    for name, st in sorted(stages.items()):
        print(f"{indent}{name}: {st['batches']} batches; in every worker: decode {st['decode']:.2f} s, fold "
              f"{st['fold']:.2f} s, render+plan {st['render']:.2f} s; for its shards: publish {st['publish']:.2f} s, "
              f"commit {st['commit']:.2f} s (wall in the worker)", flush=True)


def report(r: dict) -> None:
    n = r["workers"]
    per = ", ".join(f"{k} {v:.1f}" for k, v in sorted(r["cpu_per_worker_s"].items()))
    print(f"{n} worker(s): {r['events']:,} events in {r['wall_s']:.1f} s = {r['events_per_s']:,.0f} events/s; "
          f"workers' CPU {r['cpu_s']:.1f} s ({per}); load average {r['load_before'][0]:.1f} -> "
          f"{r['load_after'][0]:.1f}, {steal_text(r.get('steal'))}; first useful {r['first_useful_s']:.1f} s after start; peak RSS per worker "
          f"{max(r['peak_rss_mb'].values()):.0f} MB; "
          f"producer took {r['producer_s']:.1f} s; group evictions seen {r['evictions']}", flush=True)
    print_stages(r.get("stages", {}))
    b = r.get("backlog")
    if b is not None:
        per = ", ".join(f"{k} {v:.1f}" for k, v in sorted(b["cpu_per_worker_s"].items()))
        print(f"  on a backlog ({b['events']:,} more appended while the workers were paused, the first waiting "
              f"{b['paused_s']:.1f} s; then resumed): {b['wall_s']:.2f} s = {b['events_per_s']:,.0f} events/s; workers' CPU {b['cpu_s']:.1f} s "
              f"({per}); load average {b['load_before'][0]:.1f} -> {b['load_after'][0]:.1f}, {steal_text(b.get('steal'))}", flush=True)
        print_stages(b["stages"], indent="    ")
    if "takeover_detected_s" in r:
        print(f"  kill -9 of one of 2: the other got its shards {r['takeover_detected_s']:.1f} s later and had "
              f"published them {r['takeover_published_s']:.1f} s after the kill; a brand-new worker (empty data "
              f"dir) caught up in {r['new_worker_caught_up_s']:.1f} s and was useful (took over "
              f"{r['new_worker_took']}) {r['new_worker_useful_s']:.1f} s after its start", flush=True)


if __name__ == "__main__":
    sys.exit(main())
