"""First request to a never-subscribed service through the sidecar: what on-demand discovery adds.

Real parts: Kafka (``--bootstrap``, else ``meshlog.kafka_local.kafka_for_tests``),
one ``projector``, one ``xds-gateway``, one ``meshlog-sidecar run`` (Envoy
1.40) for a client node that declares nothing, and one small HTTP app.
``--services`` services are registered (one instance each, the app's
address) by direct appends; then, one service at a time, the client sends
a GET through its sidecar's outbound listener with that service as Host --
the first one makes Envoy ask for the cluster on demand, the gateway hold
it and append the learned subscription, the projector render it and the
gateway answer -- and right after it the same GET again (now an ordinary
route). Both on the same keep-alive connection.

Printed: p50/p99/max of the first request, of the second, and of the
difference per service (the added latency; target p99 <= 250 ms including
the log round trip), with the machine's load average. n is small (one
sample per service): the p99 is close to the maximum.

Usage: python bench/on_demand_first_request.py [--services 40] [--bootstrap HOST:PORT] [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
import uuid
from contextlib import ExitStack
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


def _summary(values: list[float]) -> dict:
    return {"n": len(values), "p50_ms": round(_pct(values, .5) * 1000, 1), "p99_ms": round(_pct(values, .99) * 1000, 1),
            "max_ms": round(max(values) * 1000, 1)}


async def _register(bootstrap: str, services: list[str], port: int) -> None:
    from events import types as t
    from events.envelope import new_event
    from events.producer import EventProducer

    async with EventProducer(bootstrap) as producer:
        await producer.append_batch([new_event(t.InstanceRegistered(service=s, instance_id="i1", address="127.0.0.1",
                                                                    port=port)) for s in services])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--services", type=int, default=40, help="never-subscribed services to call (default 40)")
    parser.add_argument("--bootstrap", help="an existing Kafka (default: start one for the bench)")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    if not 1 <= args.services <= 500:
        parser.error("--services: keep it between 1 and 500")

    workdir = Path(tempfile.mkdtemp(prefix="meshlog-bench-on-demand-"))
    code = _measure(args, workdir)
    if code == 0:  # the processes' logs stay only when something went wrong, to be read
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        print(f"the processes' logs are kept in {workdir}", flush=True)
    return code


def _measure(args, workdir: Path) -> int:
    import logging

    from events.admin import ensure_topics
    from meshlog.demo_app import KeepAliveClient
    from meshlog.kafka_local import kafka_for_tests
    from proxy.envoy_process import dynamic_names
    from tests.integration.test_sidecar_e2e import start_sidecar
    from tests.support.apps import App
    from tests.support.stack import start_gateway, start_projector, wait_until

    logging.basicConfig(level=logging.WARNING)
    sfx = uuid.uuid4().hex[:6]
    services = [f"od{i}-{sfx}" for i in range(args.services)]
    processes = []
    app, client_app = App("i1", "v1", "bench").start(), App("c1", "v1", f"client-{sfx}").start()
    with ExitStack() as stack:
        bootstrap = args.bootstrap or stack.enter_context(kafka_for_tests())
        try:
            print(f"Kafka {bootstrap}; work dir {workdir}", flush=True)
            asyncio.run(ensure_topics(bootstrap))
            # the bench's processes run plaintext, without mesh identities: their events are unsigned, which
            # the projector refuses unless told to fold them in the explicit insecure mode
            processes.append(start_projector(bootstrap, workdir, extra=["--insecure-events"]))
            gateway = start_gateway(bootstrap, workdir, "gateway")
            processes.append(gateway)
            asyncio.run(_register(bootstrap, services, app.port))
            client = start_sidecar("client", workdir, bootstrap, [f"127.0.0.1:{gateway.info['xds_port']}"],
                                   service=f"client-{sfx}", instance="c1", app_port=client_app.port)
            processes.append(client)
            node = f"client-{sfx}-c1"
            wait_until(lambda: f"{node}~outbound" in dynamic_names(client.config_dump())["listeners"], 60,
                       "the client's outbound listener", on_fail=client.log_tail)
            time.sleep(1.0)  # the services' registrations, appended before the client's, folded too
            load_before = os.getloadavg()[0]
            first, second, added, failed = [], [], [], []
            http = KeepAliveClient(client.outbound_port, timeout=10)
            try:
                for service in services:
                    t0 = time.perf_counter()
                    status1, _ = http.get(service)
                    t1 = time.perf_counter()
                    status2, _ = http.get(service)
                    t2 = time.perf_counter()
                    if status1 != 200 or status2 != 200:
                        failed.append(f"{service}: {status1}/{status2}")
                        continue
                    first.append(t1 - t0)
                    second.append(t2 - t1)
                    added.append((t1 - t0) - (t2 - t1))
            finally:
                http.close()
            load_after = os.getloadavg()[0]
            if not added:
                print(f"every first request failed: {failed[:5]}", flush=True)
                return 1
            results = {"first": _summary(first), "subscribed": _summary(second), "added": _summary(added),
                       "failed": failed, "loadavg_before_after": [load_before, load_after]}
            for name in ("first", "subscribed", "added"):
                r = results[name]
                print(f"{name:10s} n={r['n']:3d}  p50 {r['p50_ms']:7.1f} ms  p99 {r['p99_ms']:7.1f} ms  "
                      f"max {r['max_ms']:7.1f} ms", flush=True)
            print(f"failed first requests: {len(failed)} {failed[:5]}; load average {load_before:.2f} -> "
                  f"{load_after:.2f} (1 min) on {os.cpu_count()} CPUs", flush=True)
            if args.json:
                Path(args.json).write_text(json.dumps(results, indent=1))
            return 1 if failed else 0
        finally:
            for p in reversed(processes):
                p.stop()
            app.stop()
            client_app.stop()


if __name__ == "__main__":
    sys.exit(main())
