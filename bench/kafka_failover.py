#!/usr/bin/env python3
"""Failover under load: kill -9 the leader of meshlog.registrations while the registrar appends.

    python bench/kafka_failover.py [--rate 100] [--before 5] [--after 20] [--runs 3] [--json]

Starts a three-node KRaft cluster as a developer does (``meshlog kafka up --brokers 3`` in a home of
its own: tests/support/cluster.py), then, per run: registrations are appended at a steady, bounded
``--rate`` (meshlog.failover.SteadyAppends: idempotent producer, acks=all, never bursting to catch up),
the node leading partition 0 of ``meshlog.registrations`` is killed with SIGKILL ``--before`` seconds
in, appends go on for ``--after`` seconds, then ``meshlog kafka up`` restarts the node on its data.

Printed per run (meshlog.failover.figures):
* stall: the longest time without an acknowledgement (normally the one across the kill), and when the
  first acknowledgement after the kill came;
* acknowledged per second before the kill, in the 5 s after it ("during") and after that, and a
  per-second timeline;
* appended, acknowledged, in the log (read back from the offsets where the run began), lost (acknowledged
  but not in the log: must be 0), twice (must be 0: idempotence);
* rejoin: from ``meshlog kafka up`` to the killed node being in the in-sync replicas of every partition
  of meshlog.registrations;
* CPU seconds of this process (the appender) and of the three broker JVMs over the run, and the load
  average: the host is shared, so wall figures are mostly the host's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from events import topics  # noqa: E402
from events import types as t  # noqa: E402
from events.envelope import new_event  # noqa: E402
from meshlog import failover  # noqa: E402
from meshlog.procs import wait_until  # noqa: E402
from tests.support.cluster import CliCluster  # noqa: E402

SERVICE = "failover-bench"
TICKS = os.sysconf("SC_CLK_TCK")


def registration(run: int, n: int) -> t.InstanceRegistered:
    return t.InstanceRegistered(service=SERVICE, instance_id=f"r{run}-i{n}",
                                address=f"127.2.{n // 250 % 250}.{n % 250 + 1}", port=8080)


def process_cpu_s(pid: int) -> float:
    """utime + stime of a running process, in seconds (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICKS


def brokers_cpu_s(cluster: CliCluster) -> dict[int, float]:
    return {n["node_id"]: process_cpu_s(n["pid"]) for n in cluster.state()["nodes"]}


def one_run(cluster: CliCluster, run: int, rate: float, before_s: float, after_s: float) -> dict:
    bootstrap = cluster.bootstrap
    leaders = asyncio.run(failover.partition_leaders(bootstrap, topics.REGISTRATIONS))
    victim, isr = leaders[0]
    since = asyncio.run(failover.end_offsets(bootstrap, topics.REGISTRATIONS))
    appends = failover.SteadyAppends(bootstrap, lambda n: new_event(registration(run, n), producer="bench-failover"),
                                     rate=rate)
    victim_cpu: list[float] = []
    cpu0, self0, load0 = brokers_cpu_s(cluster), resource.getrusage(resource.RUSAGE_SELF), os.getloadavg()
    wall0 = time.monotonic()

    def kill() -> None:
        victim_cpu.append(brokers_cpu_s(cluster)[victim])  # the victim's CPU up to its death
        cluster.kill(victim)

    killed_at = asyncio.run(failover.run_through(appends, before_s + after_s, before_s, kill))
    ended = time.monotonic()
    cpu1, self1 = brokers_cpu_s(cluster), resource.getrusage(resource.RUSAGE_SELF)
    cpu1[victim] = victim_cpu[0] if victim_cpu else cpu1[victim]
    figures = failover.figures(appends.ack_times(), appends.started_at, killed_at or ended, ended)
    prefix = f"{SERVICE}/r{run}-"
    logged = asyncio.run(failover.logged_events(bootstrap, topics.REGISTRATIONS, since,
                                                keys=lambda key: key.startswith(prefix)))
    ids = [event_id for event_id, *_ in logged]
    lost = len(set(appends.acked) - set(ids))

    restart = time.monotonic()
    cluster.up()

    def in_sync() -> bool:
        now = asyncio.run(failover.partition_leaders(bootstrap, topics.REGISTRATIONS))
        return all(victim in replicas for _leader, replicas in now.values())

    wait_until(in_sync, 300, f"node {victim} to rejoin the in-sync replicas", interval=0.25)
    rejoin_s = time.monotonic() - restart
    return {
        "run": run, "killed_node": victim, "isr_before": isr, "rate": rate,
        "appended": appends.next_n, "acknowledged": len(appends.acked), "in_log": len(ids), "lost": lost,
        "twice": len(ids) - len(set(ids)), "not_acknowledged_in_time": appends.failed,
        "stall_s": round(figures.stall_s, 3),
        "first_ack_after_kill_s": None if figures.first_ack_after_kill_s is None
        else round(figures.first_ack_after_kill_s, 3),
        "acked_per_s": {"before": round(figures.rate_before, 1), "during_5s": round(figures.rate_during, 1),
                        "after": round(figures.rate_after, 1)},
        "per_second": list(figures.per_second),
        "rejoin_s": round(rejoin_s, 2),
        "wall_s": round(ended - wall0, 2),
        "appender_cpu_s": round(self1.ru_utime + self1.ru_stime - self0.ru_utime - self0.ru_stime, 2),
        "brokers_cpu_s": {str(k): round(cpu1[k] - cpu0.get(k, 0.0), 2) for k in sorted(cpu1)},
        "loadavg_1m": [round(load0[0], 2), round(os.getloadavg()[0], 2)],
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=float, default=100.0, help="appends per second (default 100)")
    ap.add_argument("--before", type=float, default=5.0, help="seconds of appends before the kill (default 5)")
    ap.add_argument("--after", type=float, default=20.0, help="seconds of appends after the kill (default 20)")
    ap.add_argument("--runs", type=int, default=3, help="kills, one per run, each of the then leader (default 3)")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="meshlog-bench-failover-") as home:
        cluster = CliCluster(Path(home), brokers=3)
        try:
            started = time.monotonic()
            cluster.bootstrap = cluster.up("--brokers", "3")
            up_s = time.monotonic() - started
            runs = [one_run(cluster, i + 1, args.rate, args.before, args.after) for i in range(args.runs)]
        finally:
            cluster.cleanup()
    out = {"brokers": 3, "cluster_up_s": round(up_s, 1), "cpus": os.cpu_count(), "runs": runs,
           "median_stall_s": statistics.median(r["stall_s"] for r in runs),
           "median_rejoin_s": statistics.median(r["rejoin_s"] for r in runs)}
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    print(f"3-node KRaft cluster up in {out['cluster_up_s']} s on {out['cpus']} CPUs; appends at {args.rate:g}/s, "
          f"kill -9 of the registrations leader after {args.before:g} s, {args.after:g} s more")
    for r in runs:
        a = r["acked_per_s"]
        print(f"run {r['run']}: killed node {r['killed_node']} (ISR {r['isr_before']}); stall {r['stall_s']:.2f} s "
              f"(first ack {r['first_ack_after_kill_s']} s after the kill); acked/s before {a['before']:g}, "
              f"during {a['during_5s']:g}, after {a['after']:g}")
        print(f"       appended {r['appended']}, acknowledged {r['acknowledged']}, in the log {r['in_log']}, "
              f"lost {r['lost']}, twice {r['twice']}, not acknowledged in time {r['not_acknowledged_in_time']}; "
              f"rejoin {r['rejoin_s']:.1f} s")
        print(f"       wall {r['wall_s']} s; CPU s: appender {r['appender_cpu_s']}, brokers {r['brokers_cpu_s']}; "
              f"load avg 1 min {r['loadavg_1m'][0]} -> {r['loadavg_1m'][1]}")
        print(f"       acks per second: {r['per_second']}")
    print(f"median stall {out['median_stall_s']:.2f} s; median rejoin {out['median_rejoin_s']:.1f} s")
    bad = [r["run"] for r in runs if r["lost"] or r["twice"]]
    if bad:
        print(f"LOST OR DUPLICATED acknowledged appends in runs {bad}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
