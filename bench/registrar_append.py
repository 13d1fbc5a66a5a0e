"""Registrar append latency: p50/p99 of 1,000 sequential publishes (acks=all, idempotent).

Measures the in-process append path the `registrar` CLI uses (validate, encode,
send, wait for the broker's ack), and separately the wall time of whole CLI
invocations (Python start-up included) over a smaller sample.

Usage: python bench/registrar_append.py [--count 1000] [--cli-count 20]
Uses $MESHLOG_KAFKA_BOOTSTRAP, else starts a local broker for the run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from events.admin import ensure_topics
from events.codec import validate_payload
from events.envelope import new_event
from events.producer import EventProducer
from events.types import InstanceRegistered


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


async def in_process(bootstrap: str, count: int) -> list[float]:
    await ensure_topics(bootstrap)
    latencies = []
    async with EventProducer(bootstrap) as producer:
        for i in range(count):
            t0 = time.perf_counter()
            payload = validate_payload(
                InstanceRegistered,
                {"service": "bench", "instance_id": f"b-{i}", "address": "10.1.0.1", "port": 8080,
                 "labels": {"version": "v1"}},
            )
            await producer.append(new_event(payload, producer="bench"))
            latencies.append((time.perf_counter() - t0) * 1000)
    return latencies


def cli(bootstrap: str, count: int) -> list[float]:
    exe = str(Path(sys.executable).with_name("registrar"))
    latencies = []
    for i in range(count):
        t0 = time.perf_counter()
        subprocess.run([exe, "--bootstrap", bootstrap, "publish", "--service", "bench-cli", "--instance-id", f"c-{i}",
                        "--address", "10.1.0.2", "--port", "8080"], check=True, capture_output=True)
        latencies.append((time.perf_counter() - t0) * 1000)
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--cli-count", type=int, default=20)
    args = parser.parse_args()
    with contextlib.ExitStack() as stack:
        bootstrap = os.environ.get("MESHLOG_KAFKA_BOOTSTRAP")
        if not bootstrap:
            from meshlog.kafka_local import LocalKafka

            bootstrap = stack.enter_context(LocalKafka()).bootstrap
        lat = asyncio.run(in_process(bootstrap, args.count))
        print(f"registrar append (in-process, acks=all, idempotent), n={len(lat)}: "
              f"p50 {pct(lat, 50):.2f} ms  p99 {pct(lat, 99):.2f} ms  mean {statistics.mean(lat):.2f} ms")
        if args.cli_count:
            lat = cli(bootstrap, args.cli_count)
            print(f"registrar publish CLI (whole process), n={len(lat)}: "
                  f"p50 {pct(lat, 50):.0f} ms  p99 {pct(lat, 99):.0f} ms")


if __name__ == "__main__":
    main()
