"""Replay speed: ``replay --at T`` over a long log, cold and from a snapshot.

Figures printed (wall time of the real ``replay`` CLI in a subprocess, and
the in-process breakdown of the same work):

1. append: how fast the bench log was written (batched, acks=1, linger).
2. cold: ``replay --at T --no-snapshot --json`` — every event of the log
   fetched, decoded and folded, then the whole mesh rendered.
3. snapshot: ``replay --at T --json`` with a snapshot ``--tail`` events
   (default 10,000: the projector's default snapshot interval) before T.

4. walks: ``replay diff --from @0 --to T --node N`` and ``replay log --from @0
   --to T --service S``, each over the whole log (goal: stream, bounded memory).

Each CLI figure is wall time, CPU time and peak RSS of the replay process
alone (``bench/child_usage.py``: started by a small stub, because Linux carries
the peak RSS of the process that forked a child into the child's, and this
bench holds the whole log), as a range over ``--repeat`` runs, with the load average
(the machine is shared: report ranges and the load). ``--baseline-code DIR``
runs every figure also with an older source tree (``git archive <commit> |
tar -x -C DIR``) on the same log, for before/after in one run.

Usage: python bench/replay.py [--events 1000000] [--services 500] [--instances 4] [--tail 10000]
       [--repeat N] [--baseline-code DIR] [--no-walks] [--no-in-process]
       MESHLOG_KAFKA_BOOTSTRAP=H:P python bench/replay.py --reuse T_MS ...   (measure a log appended before)
A replay reads the log in one process unless MESHLOG_REPLAY_PARALLEL=1 (always read
in a second process, ``replay.pipeline``) or =auto (while a core is idle) says otherwise.
Uses $MESHLOG_KAFKA_BOOTSTRAP if set (then the log holds other data too and
"events" counts only this run's), else starts a fresh local broker for the run
(meshlog.kafka_local), so the log holds exactly the bench events.

The log: a mesh of services x instances, every instance a sidecar node
depending on 3 other services, then a seeded random mix: 70% health
transitions, 20% re-registrations (a label flips now and then), 3%
deregistrations (re-registered later), 7% rules (destination policies and
route rules with canary splits, the odd stale revision that is rejected).
The snapshot record is written with ``projector.snapshots.encode_snapshot``
from the state folded (by the projector's fold) at the snapshot cut — the
record the live projector appends every 10,000 events.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import orjson  # noqa: E402
from aiokafka import AIOKafkaProducer  # noqa: E402

from events import topics  # noqa: E402
from events import types as t  # noqa: E402
from events.kafka_security import connection_kwargs  # noqa: E402
from bench.child_usage import run_measured  # noqa: E402
from bench.host_window import HostWindow  # noqa: E402

BIN = Path(sys.executable).parent


# ---------------------------------------------------------------- the log


class History:
    """A seeded random, valid event history (payload dicts ready to encode)."""

    def __init__(self, services: int, instances: int, prefix: str, seed: int = 1) -> None:
        self.rnd = random.Random(seed)
        self.prefix = prefix
        self.services = [f"{prefix}-svc-{i}" for i in range(services)]
        self.instances = instances
        self.revision: dict[str, int] = {}
        self.subsets: dict[str, tuple[str, ...]] = {}
        self.registered: set[tuple[str, int]] = set()
        self._reg_cache: dict[tuple[str, int, str], dict] = {}
        self._initial = self._initial_registrations()

    def _reg(self, s: int, i: int, version: str) -> tuple[str, dict]:
        svc = self.services[s]
        key = (svc, i, version)
        doc = self._reg_cache.get(key)
        if doc is None:
            rnd = random.Random(f"{svc}/{i}")
            deps = sorted({self.services[rnd.randrange(len(self.services))] for _ in range(3)} - {svc})
            payload = t.InstanceRegistered(
                service=svc, instance_id=f"i{i}", address=f"10.{s // 250}.{s % 250}.{i + 1}", port=8080,
                node_id=f"{svc}-n{i}", sidecar=t.SidecarPorts(inbound_port=15001, outbound_port=15002),
                depends_on=tuple(deps), labels={"version": version, "zone": f"z{i % 2}"},
            )
            doc = payload.model_dump(mode="json")
            self._reg_cache[key] = doc
        self.registered.add((svc, i))
        return t.InstanceRegistered.TYPE, doc

    def take(self):
        """The next event: the mesh's initial registrations first, then the random mix."""
        item = next(self._initial, None)
        return item if item is not None else self.next()

    def _initial_registrations(self):
        for s in range(len(self.services)):
            for i in range(self.instances):
                yield self._reg(s, i, "v1" if i % 2 else "v2")

    def _rule(self):
        rnd = self.rnd
        svc = rnd.choice(self.services)
        if rnd.random() < 0.5:
            key = f"policy/{svc}"
            rev = self.revision.get(key, 0) + 1
            if rnd.random() < 0.03:
                rev += 5  # a stale writer: rejected by the fold, recorded as a rejection
            else:
                self.revision[key] = rev
            subsets = ("v1", "v2")
            self.subsets[svc] = subsets
            p = t.DestinationPolicyUpserted(
                service=svc, revision=rev, subsets=tuple(t.Subset(name=n, labels={"version": n}) for n in subsets),
                lb_policy=rnd.choice(("round_robin", "least_request")),
            )
            return p.TYPE, p.model_dump(mode="json")
        if svc not in self.subsets:
            return self._rule()
        key = f"route/{svc}"
        rev = self.revision.get(key, 0) + 1
        self.revision[key] = rev
        canary = rnd.choice((1, 5, 10, 50))
        p = t.RouteRuleUpserted(host=svc, revision=rev, routes=(
            t.HttpRoute(match=t.RouteMatch(path_prefix="/", headers=(t.HeaderMatch(name="x-canary", exact="1"),)),
                        destinations=(t.WeightedDestination(subset="v2"),)),
            t.HttpRoute(destinations=(t.WeightedDestination(subset="v1", weight=100 - canary),
                                      t.WeightedDestination(subset="v2", weight=canary)),
                        timeout_ms=rnd.choice((500, 1000, 2000))),
        ))
        return p.TYPE, p.model_dump(mode="json")

    def next(self):
        rnd = self.rnd
        x = rnd.random()
        s = rnd.randrange(len(self.services))
        i = rnd.randrange(self.instances)
        svc = self.services[s]
        if x < 0.70:
            p = t.InstanceHealthChanged(service=svc, instance_id=f"i{i}",
                                        status=rnd.choice(("healthy", "unhealthy", "draining")),
                                        reason=rnd.choice(("probe", "timeout", "manual")), observer="checker-1")
            return p.TYPE, p.model_dump(mode="json")
        if x < 0.90 or (svc, i) not in self.registered:
            return self._reg(s, i, rnd.choice(("v1", "v2")))
        if x < 0.93:
            self.registered.discard((svc, i))
            p = t.InstanceDeregistered(service=svc, instance_id=f"i{i}", reason="drained")
            return p.TYPE, p.model_dump(mode="json")
        return self._rule()


_TOPIC = {cls.TYPE: cls.TOPIC for cls in t.PAYLOAD_TYPES.values()}
_VERSION = {cls.TYPE: cls.SCHEMA_VERSION for cls in t.PAYLOAD_TYPES.values()}
_KEY = {cls.TYPE: cls for cls in t.PAYLOAD_TYPES.values()}


def record(typ: str, payload: dict, n: int, run: str) -> tuple[str, bytes, bytes]:
    """(topic, key, value) exactly as ``events.codec.encode`` would write it (sorted keys)."""
    if typ in (t.RouteRuleUpserted.TYPE, t.RouteRuleDeleted.TYPE):
        key = f"route/{payload['host']}"
    elif typ in (t.DestinationPolicyUpserted.TYPE, t.DestinationPolicyDeleted.TYPE):
        key = f"policy/{payload['service']}"
    else:
        key = f"{payload['service']}/{payload['instance_id']}"
    doc = {
        "event_id": f"{run}-{n}",
        "occurred_at": datetime.now(timezone.utc).isoformat(timespec="microseconds"),
        "payload": payload,
        "producer": "bench-replay",
        "schema_version": _VERSION[typ],
        "type": typ,
    }
    return _TOPIC[typ], key.encode(), orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)


async def append(bootstrap: str, history: History, events: int, run: str) -> tuple[float, int]:
    producer = AIOKafkaProducer(**connection_kwargs(bootstrap), acks=1, linger_ms=50, max_batch_size=1 << 20,
                                max_request_size=16 << 20, compression_type=None)
    await producer.start()
    t0 = time.perf_counter()
    n = 0
    pending = []
    try:
        while n < events:
            topic, key, value = record(*history.take(), n, run)
            pending.append(await producer.send(topic, value=value, key=key))
            n += 1
            if len(pending) >= 20_000:
                await asyncio.gather(*pending)
                pending.clear()
                if n % 100_000 == 0:
                    print(f"  appended {n:,} ({n / (time.perf_counter() - t0):,.0f}/s)", flush=True)
        await asyncio.gather(*pending)
        await producer.flush()
    finally:
        await producer.stop()
    return time.perf_counter() - t0, n


async def write_snapshot(bootstrap: str, at_ms: int) -> dict:
    """Fold the log up to ``at_ms`` (the projector's fold) and append the snapshot record of that cut."""
    from projector.snapshots import KEY, MERGE_ORDER, encode_snapshot
    from projector.state import state_to_bytes
    from replay.engine import open_log, rebuild

    async with open_log(bootstrap) as consumer:
        rebuilt = await rebuild(consumer, at_ms, use_snapshot=False)
    offsets = {k: v for k, v in rebuilt.cut.stops_by_key().items()}
    value = encode_snapshot(state_to_bytes(rebuilt.state), next_offsets=offsets, max_timestamp_ms=at_ms,
                            events=rebuilt.folded, fold_order=MERGE_ORDER)  # replay folds in merge order
    producer = AIOKafkaProducer(**connection_kwargs(bootstrap), acks="all", max_request_size=64 << 20)
    await producer.start()
    try:
        await producer.send_and_wait(topics.SNAPSHOTS, value=value, key=KEY)
    finally:
        await producer.stop()
    return {"events": rebuilt.folded, "bytes": len(value), "next_offsets": offsets}


# ---------------------------------------------------------------- measuring


def run_cli(bootstrap: str, *args: str, code: str | None = None) -> tuple[float, float, float, dict | None]:
    """(wall s, CPU s and peak RSS MB of the replay process, its JSON output if --json).

    ``code``: run the CLI from that source tree instead (an older commit's ``git archive``), for
    before/after figures in one run on the same log and the same load.
    """
    if code is None:
        argv = [str(BIN / "replay")]
    else:
        # the editable install's import finder would win over sys.path: drop it, then import from ``code``
        # (its console script's entry point: replay.launch where the tree has it)
        boot = ("import sys; sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in repr(f)]; "
                f"sys.path.insert(0, {code!r})\ntry: from replay.launch import main\nexcept ImportError: from replay.cli import main\n"
                "sys.exit(main())")
        argv = [sys.executable, "-c", boot]
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        # through a small stub: a child forked from this process would report this process's peak RSS as its own
        usage = run_measured([*argv, "--bootstrap", bootstrap, *args, "--log-level", "INFO"], stdout=out, stderr=err)
        out.seek(0)
        err.seek(0)
        if usage.returncode != 0:
            raise SystemExit(f"replay {' '.join(args)} failed ({usage.returncode}): {err.read().decode()[-2000:]}")
        doc = json.loads(out.read()) if "--json" in args else None
    return usage.wall_s, usage.cpu_s, usage.peak_rss_mb, doc


async def in_process(bootstrap: str, at_ms: int, use_snapshot: bool) -> dict:
    from replay.engine import open_log, rebuild

    t0, c0 = time.perf_counter(), time.process_time()
    async with open_log(bootstrap) as consumer:
        rebuilt = await rebuild(consumer, at_ms, use_snapshot=use_snapshot)
    t1, c1 = time.perf_counter(), time.process_time()
    rebuilt.rendered(bodies=False)  # what `replay at --json` renders: every version, no body built
    t2, c2 = time.perf_counter(), time.process_time()
    return {"rebuild_s": t1 - t0, "rebuild_cpu_s": c1 - c0, "render_s": t2 - t1, "render_cpu_s": c2 - c1,
            "folded": rebuilt.folded, **rebuilt.stats,
            "resources": len(rebuilt.rendered(bodies=False).versions),
            "nodes": len(rebuilt.rendered(bodies=False).membership)}


@contextlib.contextmanager
def broker():
    explicit = os.environ.get("MESHLOG_KAFKA_BOOTSTRAP")
    if explicit:
        yield explicit
        return
    from meshlog.kafka_local import LocalKafka

    with LocalKafka() as kafka:
        yield kafka.bootstrap


def _range(values: list[float], fmt: str = "{:.2f}") -> str:
    lo, hi = min(values), max(values)
    return fmt.format(lo) if len(values) == 1 or fmt.format(lo) == fmt.format(hi) else f"{fmt.format(lo)}–{fmt.format(hi)}"


def measure(label: str, bootstrap: str, args: list[str], repeat: int, code: str | None) -> dict | None:
    """Run the CLI ``repeat`` times; print wall, CPU and peak RSS as ranges, and the share of the machine's CPU
    time the hypervisor stole during the runs (bench/host_window.py: where wall exceeds CPU, that is usually
    why); return the last JSON output."""
    walls, cpus, rsss, steals, doc = [], [], [], [], None
    for _ in range(repeat):
        window = HostWindow()
        wall, cpu, rss, doc = run_cli(bootstrap, *args, code=code)
        walls.append(wall)
        cpus.append(cpu)
        rsss.append(rss)
        share = window.steal_share()
        if share is not None:
            steals.append(share * 100)
    stolen = f"steal {_range(steals, '{:.0f}')} %" if steals else "steal n/a"
    print(f"{label:<58} wall {_range(walls):>12}s  CPU {_range(cpus):>12}s  peak RSS {_range(rsss, '{:.0f}'):>9} MB  "
          f"(load {os.getloadavg()[0]:.1f}, {stolen})", flush=True)
    return doc


def main() -> None:
    # the bench's log and snapshot are unsigned (signing is measured by bench/replay_verify.py): without this,
    # replay refuses the unsigned snapshot and the "snapshot" figure silently folds from the log's start
    os.environ.setdefault("MESHLOG_INSECURE_EVENTS", "1")
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--services", type=int, default=500)
    ap.add_argument("--instances", type=int, default=4)
    ap.add_argument("--tail", type=int, default=10_000, help="events after the snapshot (default 10000)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--reuse", metavar="T_MS", type=int,
                    help="measure a log a previous run appended (with $MESHLOG_KAFKA_BOOTSTRAP): its T in epoch ms "
                         "(printed as 'T=' by that run); nothing is appended")
    ap.add_argument("--repeat", type=int, default=1, help="runs of each CLI figure (ranges are printed; default 1)")
    ap.add_argument("--baseline-code", metavar="DIR",
                    help="also run every CLI figure with the source tree in DIR (e.g. `git archive` of the commit "
                         "before a change), interleaved, on the same log and load")
    ap.add_argument("--figures", default="cold,snapshot,walks",
                    help="which CLI figures, comma-separated: cold, snapshot, walks (`replay diff --node` and "
                         "`replay log --service` over the whole log); default all")
    ap.add_argument("--no-in-process", action="store_true", help="skip the in-process breakdown")
    args = ap.parse_args()
    from events.admin import ensure_topics

    run = uuid.uuid4().hex[:6]
    with broker() as bootstrap:
        if args.reuse is None:
            asyncio.run(ensure_topics(bootstrap))
            print(f"broker {bootstrap}; appending {args.events:,} events ({args.services} services x "
                  f"{args.instances} instances, seed {args.seed})", flush=True)
            history = History(args.services, args.instances, f"b{run}", args.seed)
            head = max(0, args.events - args.tail)
            secs, n = asyncio.run(append(bootstrap, history, head, run))
            time.sleep(0.05)
            snap_ms = int(time.time() * 1000)
            time.sleep(0.05)
            secs2, n2 = asyncio.run(append(bootstrap, history, args.events - head, run + "t"))
            print(f"append: {n + n2:,} events in {secs + secs2:.1f}s ({(n + n2) / (secs + secs2):,.0f}/s)", flush=True)
            time.sleep(0.05)
            at_ms = int(time.time() * 1000)
            snap = asyncio.run(write_snapshot(bootstrap, snap_ms))
            print(f"snapshot: {snap['events']:,} events folded, {snap['bytes']:,} bytes, next offsets "
                  f"{snap['next_offsets']}", flush=True)
            print(f"T={at_ms} (measure this log again: MESHLOG_KAFKA_BOOTSTRAP={bootstrap} python bench/replay.py "
                  f"--reuse {at_ms})", flush=True)
        else:
            at_ms = args.reuse
        at = f"@{at_ms}"
        codes = [("", None)] + ([("baseline ", args.baseline_code)] if args.baseline_code else [])
        print(f"\nuptime: {subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}")
        print(f"{os.cpu_count()} CPUs; every figure is the replay process alone (bench/child_usage.py); wall times suffer from "
              f"the load, CPU times less\n", flush=True)
        figures = set(args.figures.split(","))
        docs: dict[str, dict] = {}
        if "cold" in figures:
            for name, code in codes:
                docs[name] = measure(f"{name}cold      replay --at T --no-snapshot --json", bootstrap,
                                     ["--at", at, "--no-snapshot", "--json", "--no-progress"], args.repeat, code)
        if "snapshot" in figures or not docs:
            for name, code in codes:
                snap_doc = measure(f"{name}snapshot  replay --at T --json", bootstrap,
                                   ["--at", at, "--json", "--no-progress"], args.repeat, code)
                if name in docs:
                    assert snap_doc["nodes"] == docs[name]["nodes"], "snapshot replay differs from the cold replay"
                docs.setdefault(name, snap_doc)
                assert snap_doc["source"]["snapshot"] is not None, "the snapshot was not used"
                measure(f"{name}snapshot  replay --at T (table)", bootstrap, ["--at", at, "--no-progress"],
                        args.repeat, code)
        cold_doc = docs[""]
        total = cold_doc["source"]["events_total"]
        if "walks" in figures:
            node = cold_doc["nodes"][len(cold_doc["nodes"]) // 2]
            for name, code in codes:
                measure(f"{name}walk      replay diff --from @0 --to T --node N --json", bootstrap,
                        ["diff", "--from", "@0", "--to", at, "--node", node["node"], "--json", "--no-progress"],
                        args.repeat, code)
                measure(f"{name}walk      replay log --from @0 --to T --service S --json", bootstrap,
                        ["log", "--from", "@0", "--to", at, "--service", node["service"], "--json", "--no-progress"],
                        args.repeat, code)
        print(f"\nlog: {total:,} events; mesh at T: {len(cold_doc['nodes']):,} nodes")
        if args.no_in_process:
            return
        cold = asyncio.run(in_process(bootstrap, at_ms, False))
        warm = asyncio.run(in_process(bootstrap, at_ms, True))
        print(f"in process, cold: rebuild wall {cold['rebuild_s']:.2f}s / CPU {cold['rebuild_cpu_s']:.2f}s "
              f"(plan {cold['plan_s']:.2f}s; fetch+decode+fold {cold['fold_s']:.2f}s of which fold alone "
              f"{cold['fold_only_s']:.2f}s; decode memo hit rate {cold['decode_memo_hit_rate']:.1%}); "
              f"render_all {cold['render_s']:.2f}s; {cold['resources']:,} resources")
        print(f"in process, from the snapshot: rebuild wall {warm['rebuild_s']:.2f}s / CPU {warm['rebuild_cpu_s']:.2f}s "
              f"(plan+snapshot {warm['plan_s']:.2f}s, fold {warm['fold_s']:.2f}s); render_all {warm['render_s']:.2f}s")
        if total < 1_000_000:
            scale = 1_000_000 / total
            print(f"EXTRAPOLATED to 1,000,000 events (linear in events, same mesh): cold rebuild ≈ "
                  f"{cold['rebuild_cpu_s'] * scale:.1f}s CPU + render {cold['render_cpu_s']:.1f}s; the snapshot path "
                  f"does not grow with the log (its tail and the mesh size are fixed)")


if __name__ == "__main__":
    main()
