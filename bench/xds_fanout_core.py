"""The gateway's own work per delta response, without gRPC: the xds_fanout workload run in one process.

Same mesh and changes as ``bench/xds_fanout.py`` (its ``Mesh``), but no
sockets: a ``ViewCache`` applies the view records, one ``DeltaStream`` per
node plays what the gateway shell does (``node_view`` on a change, the
machine's responses, each response serialized as the gateway writes it), and
an in-process client ACKs every response at once, as Envoy does. What it
measures is the Python the gateway runs per response (view cache, machine,
encoding) — the part this repository can change; gRPC's own cost is what
``xds_fanout.py`` adds on top. Process CPU time, so it is steadier than the
full bench on a loaded host, though contention still inflates it.

Usage: .venv/bin/python bench/xds_fanout_core.py [--services 1000] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.append(str(Path(__file__).resolve().parent))

LDS = "type.googleapis.com/envoy.config.listener.v3.Listener"
RDS = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--services", type=int, default=1000)
    p.add_argument("--instances", type=int, default=10)
    p.add_argument("--changes", type=int, default=20)
    p.add_argument("--churn-batches", type=int, default=100)
    p.add_argument("--profile", action="store_true", help="print the top functions of the hot changes (cProfile)")
    args = p.parse_args(argv)

    from envoy.config.core.v3 import base_pb2
    from envoy.service.discovery.v3 import discovery_pb2

    from xds_fanout import CDS, EDS, Mesh, _as_records
    from xds_gateway.protocol.delta import DeltaStream
    from xds_gateway.view_cache import ViewCache

    mesh = Mesh(argparse.Namespace(services=args.services, instances=args.instances, deps=4, hot=1000, seed=7,
                                   changes=args.changes, profile_changes=0, churn_batches=args.churn_batches,
                                   churn_services=10))
    cache = ViewCache()
    cache.apply_records(_as_records(mesh.initial, 0))
    cache.ready.set()
    streams: dict[str, DeltaStream] = {}
    sent = [0, 0]

    def wire(response) -> bytes:  # what the gateway writes (delta: bytes assembled; before: protobuf serialized)
        return response.encode() if hasattr(response, "encode") else response.SerializeToString()

    def exchange(stream: DeltaStream, responses: list) -> None:
        while responses:
            r = responses.pop(0)
            sent[0] += 1
            sent[1] += len(wire(r))
            responses.extend(stream.on_request(discovery_pb2.DeltaDiscoveryRequest(type_url=r.type_url,
                                                                                   response_nonce=r.nonce)))

    t0 = time.process_time()
    for node in cache.nodes():
        s = streams[node] = DeltaStream(node, cache.node_view(node))
        exchange(s, s.on_request(discovery_pb2.DeltaDiscoveryRequest(node=base_pb2.Node(id=node), type_url=CDS)))
        for t in (EDS, LDS, RDS):
            names = sorted(cache.node_view(node).get(t, {})) if t == EDS else ["*"]
            exchange(s, s.on_request(discovery_pb2.DeltaDiscoveryRequest(type_url=t, resource_names_subscribe=names)))
    open_s = time.process_time() - t0

    def run(batches: list) -> tuple[float, int]:
        sent[0] = 0
        t0 = time.process_time()
        for rows in batches:
            for node in cache.apply_records(_as_records(rows, 0)):
                exchange(streams[node], streams[node].on_view(cache.node_view(node)))
        return time.process_time() - t0, sent[0]

    profiler = cProfile.Profile() if args.profile else None
    if profiler:
        profiler.enable()
    hot_s, hot_n = run([rows for rows, _v in mesh.hot_changes])
    if profiler:
        profiler.disable()
    churn_s, churn_n = run(mesh.churn)
    print(f"{len(streams)} streams opened and initialised: {open_s:.2f} CPU-s "
          f"({open_s / len(streams) * 1e6:.0f} us per stream, without gRPC)")
    print(f"hot change to {hot_n // len(mesh.hot_changes)} subscribers: {hot_s / len(mesh.hot_changes) * 1000:.0f} ms CPU "
          f"per change, {hot_s / hot_n * 1e6:.0f} us per response (incl. its ACK)")
    print(f"churn: {churn_n} responses, {churn_s / churn_n * 1e6:.0f} us per response = "
          f"{churn_s / churn_n * 1e6:.0f} ms CPU per 1,000 responses (incl. ACKs, without gRPC)")
    if profiler:
        pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
    return 0


if __name__ == "__main__":
    sys.exit(main())
