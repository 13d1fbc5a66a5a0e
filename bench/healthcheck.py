"""Central health checker throughput: probes/s one `registrar healthcheck` process sustains.

Registers N http instances (unique service per run) that all point at a few
ports of an asyncio HTTP responder in this process (which counts the probes
it answers), starts ONE real `registrar healthcheck` subprocess (its own
consumer group, so it owns all 12 shards) with --interval I, waits for the
probe rate to settle, then measures over a window: probes answered per
second against the target N/I, and the checker's CPU seconds (from
/proc/<pid>/stat) per probe. Instances are deregistered at the end.

Usage: python bench/healthcheck.py [--instances 1000 5000] [--interval 1.0] [--window 10]
Uses $MESHLOG_KAFKA_BOOTSTRAP, else starts a local broker for the run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from events.admin import ensure_topics
from events.envelope import new_event
from events.producer import EventProducer
from events.types import InstanceDeregistered, InstanceRegistered

REGISTRAR = str(Path(sys.executable).with_name("registrar"))
_TICK = os.sysconf("SC_CLK_TCK")


class Responder:
    """HTTP/1.1 200 on every request, on ``ports`` listeners; counts requests."""

    def __init__(self) -> None:
        self.count = 0
        self.servers: list[asyncio.base_events.Server] = []

    async def _conn(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                line = await reader.readline()
                if not line:
                    break
                if line in (b"\r\n", b"\n"):
                    self.count += 1
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                    await writer.drain()
                    break
        except OSError:
            pass
        finally:
            writer.close()

    async def start(self, ports: int) -> list[int]:
        for _ in range(ports):
            self.servers.append(await asyncio.start_server(self._conn, "127.0.0.1", 0, backlog=1024))
        return [s.sockets[0].getsockname()[1] for s in self.servers]

    def close(self) -> None:
        for s in self.servers:
            s.close()


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK  # utime, stime


async def run_one(bootstrap: str, n: int, interval: float, window: float, responder: Responder,
                  ports: list[int]) -> dict:
    service = f"bench-hc-{uuid.uuid4().hex[:6]}"
    ids = [f"i-{k}" for k in range(n)]
    async with EventProducer(bootstrap) as producer:
        await asyncio.gather(*[
            producer.append(new_event(InstanceRegistered(service=service, instance_id=i, address="127.0.0.1",
                                                         port=ports[k % len(ports)]), producer="bench"))
            for k, i in enumerate(ids)
        ])
    # the bench appends unsigned registrations (no mesh identities here): the checker folds them in the explicit
    # insecure mode, as the projector would have to; by default it refuses them and has nothing to probe
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen([REGISTRAR, "--bootstrap", bootstrap, "healthcheck", "--checker-id", f"bench-{n}",
                             "--group", f"bench-hc-{uuid.uuid4().hex[:8]}", "--interval", str(interval),
                             "--timeout", "1.0", "--fall", "3", "--rise", "2", "--insecure-events"],
                            stdout=subprocess.DEVNULL, stderr=log)
    try:
        # settle: the first probes are spread over one interval after the group assignment
        deadline = time.monotonic() + 60
        while responder.count < n and time.monotonic() < deadline and proc.poll() is None:
            await asyncio.sleep(0.2)
        if responder.count == 0:  # a checker that probed nothing measures nothing: say why, from its own log
            log.seek(0)
            raise SystemExit(f"the checker probed nothing in 60 s (exit {proc.poll()}); its log ends:\n"
                             f"{log.read().decode(errors='replace')[-3000:]}")
        await asyncio.sleep(2 * interval)
        c0, cpu0, t0 = responder.count, cpu_seconds(proc.pid), time.monotonic()
        await asyncio.sleep(window)
        c1, cpu1, t1 = responder.count, cpu_seconds(proc.pid), time.monotonic()
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
        async with EventProducer(bootstrap) as producer:
            await asyncio.gather(*[producer.append(new_event(InstanceDeregistered(service=service, instance_id=i),
                                                             producer="bench")) for i in ids])
    rate = (c1 - c0) / (t1 - t0)
    cpu = cpu1 - cpu0
    return {"instances": n, "interval": interval, "target": n / interval, "rate": rate,
            "cpu_pct": 100 * cpu / (t1 - t0), "probes_per_cpu_s": (c1 - c0) / cpu if cpu else float("inf")}


async def bench(bootstrap: str, sizes: list[int], interval: float, window: float) -> None:
    await ensure_topics(bootstrap)
    responder = Responder()
    ports = await responder.start(8)
    try:
        for n in sizes:
            r = await run_one(bootstrap, n, interval, window, responder, ports)
            print(f"healthcheck, one checker, {r['instances']} http instances, --interval {r['interval']:g}: "
                  f"{r['rate']:,.0f} probes/s sustained (target {r['target']:,.0f}/s, "
                  f"{100 * r['rate'] / r['target']:.0f}%), checker CPU {r['cpu_pct']:.0f}% of one core, "
                  f"{r['probes_per_cpu_s']:,.0f} probes per checker CPU-second", flush=True)
    finally:
        responder.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--instances", type=int, nargs="+", default=[1000, 5000])
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--window", type=float, default=10.0)
    args = parser.parse_args()
    from meshlog.kafka_local import kafka_for_tests  # $MESHLOG_KAFKA_BOOTSTRAP, else a broker for the run

    with kafka_for_tests() as bootstrap:
        asyncio.run(bench(bootstrap, args.instances, args.interval, args.window))


if __name__ == "__main__":
    main()
