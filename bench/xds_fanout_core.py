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

``--shell`` runs the gateway's gRPC shell too (``AdsServicer``: inbox, reader
task, metrics, the sync log encoding its records as ``xds_fanout.py`` does),
each stream on a stand-in for grpc.aio's servicer context whose ``read`` and
``write`` cost next to nothing: the gateway's whole Python per stream and per
response, short of gRPC itself.

Usage: .venv/bin/python bench/xds_fanout_core.py [--services 1000] [--profile] [--shell [--no-sync-log]]
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


def loaded_mesh(args):
    """The xds_fanout mesh and a ready ViewCache holding its view records."""
    from xds_fanout import Mesh, _as_records
    from xds_gateway.view_cache import ViewCache

    mesh = Mesh(argparse.Namespace(services=args.services, instances=args.instances, deps=4, hot=1000, seed=7,
                                   changes=args.changes, profile_changes=0, churn_batches=args.churn_batches,
                                   churn_services=10))
    cache = ViewCache()
    cache.apply_records(_as_records(mesh.initial, 0))
    cache.ready.set()
    return mesh, cache


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--services", type=int, default=1000)
    p.add_argument("--instances", type=int, default=10)
    p.add_argument("--changes", type=int, default=20)
    p.add_argument("--churn-batches", type=int, default=100)
    p.add_argument("--profile", action="store_true", help="print the top functions of the hot changes (cProfile)")
    p.add_argument("--shell", action="store_true", help="through the gateway's gRPC shell (AdsServicer), see above")
    p.add_argument("--no-sync-log", dest="sync_log", action="store_false", help="with --shell: no sync log")
    p.add_argument("--profile-phase", choices=("open", "hot", "churn"), default="hot",
                   help="the phase --profile profiles")
    args = p.parse_args(argv)
    if args.shell:
        import asyncio

        return asyncio.run(shell_main(args))

    from envoy.config.core.v3 import base_pb2
    from envoy.service.discovery.v3 import discovery_pb2

    from xds_fanout import CDS, EDS, _as_records
    from xds_gateway.protocol.delta import DeltaStream

    mesh, cache = loaded_mesh(args)
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


# ---------------------------------------------------------------------------------------- --shell


def _rss_kb() -> int:
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmRSS:"))


class _Context:
    """What ``AdsServicer`` uses of a grpc.aio servicer context, in memory; ``write`` hands the bytes to the client."""

    def __init__(self, client) -> None:
        import collections

        self._requests = collections.deque()
        self._waiter = None
        self._client = client

    def peer(self) -> str:
        return "ipv4:127.0.0.1:40000"

    def push(self, request) -> None:
        self._requests.append(request)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def read(self):
        import asyncio

        while not self._requests:
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
        return self._requests.popleft()

    async def write(self, payload: bytes) -> None:
        self._client.on_response(payload)

    async def send_initial_metadata(self, metadata) -> None:
        pass

    async def abort(self, code, details):
        raise RuntimeError(f"stream aborted: {code} {details}")


def _type_and_nonce(payload: bytes) -> tuple[str, str]:
    """Fields 4 (type_url) and 5 (nonce) of an encoded DeltaDiscoveryResponse, skipping the others."""
    out = {}
    i, n = 0, len(payload)
    while i < n:
        key = payload[i]
        i += 1
        length = shift = 0
        while True:
            b = payload[i]
            i += 1
            length |= (b & 0x7F) << shift
            shift += 7
            if b < 0x80:
                break
        if key >> 3 in (4, 5):
            out[key >> 3] = payload[i:i + length].decode()
        i += length
    return out[4], out[5]


class _Client:
    """An Envoy-like client on one in-memory stream: CDS wildcard, EDS by name, LDS wildcard, RDS by name, ACKs."""

    def __init__(self, node: str, view, on_ready) -> None:
        from envoy.config.core.v3 import base_pb2
        from envoy.service.discovery.v3 import discovery_pb2

        self.Request = discovery_pb2.DeltaDiscoveryRequest
        self.node, self.view, self.on_ready = node, view, on_ready
        self.context = _Context(self)
        self.lds_asked = self.eds_asked = self.ready = False
        self.responses = 0
        self.context.push(self.Request(node=base_pb2.Node(id=node), type_url=_CDS))

    def on_response(self, payload: bytes) -> None:
        t, nonce = _type_and_nonce(payload)
        self.responses += 1
        push, R = self.context.push, self.Request
        if t == _CDS and not self.eds_asked:
            self.eds_asked = True
            push(R(type_url=_EDS, resource_names_subscribe=sorted(self.view.get(_EDS, {}))))
        push(R(type_url=t, response_nonce=nonce))
        if t == _EDS and not self.lds_asked:
            self.lds_asked = True
            push(R(type_url=LDS))
        elif t == LDS and nonce:
            push(R(type_url=RDS, resource_names_subscribe=sorted(self.view.get(RDS, {}))))
        elif t == RDS and not self.ready:
            self.ready = True
            self.on_ready()


_CDS = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
_EDS = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"


async def shell_main(args) -> int:
    import asyncio
    import gc

    from xds_fanout import _as_records, _encoding_sink, _gateway_counters
    from xds_gateway.admission import GatewayLimits
    from xds_gateway.gc_policy import keep_long_lived_objects_out_of_gc
    from xds_gateway.server import AdsServicer
    from xds_gateway.sync_log import SyncLog

    mesh, cache = loaded_mesh(args)
    sync = SyncLog(_encoding_sink, "bench-gateway") if args.sync_log else None
    if sync is not None:
        sync.start()
    servicer = AdsServicer(cache, sync_log=sync, limits=GatewayLimits(max_streams_per_connection=100_000))
    gc.collect()
    freezer = asyncio.create_task(keep_long_lived_objects_out_of_gc())  # as `xds-gateway run` once its view is loaded
    profiler = cProfile.Profile() if args.profile else None

    def responses() -> int:
        return int(_gateway_counters()["responses"])

    async def settle() -> None:
        """Until no response was written for a while and the sync log's window has passed."""
        prev = -1
        while (now := responses()) != prev:
            prev = now
            await asyncio.sleep(1.1 if sync is not None else 0.05)

    ready = asyncio.Event()
    left = [len(cache.nodes())]

    def on_ready() -> None:
        left[0] -= 1
        if not left[0]:
            ready.set()

    if profiler and args.profile_phase == "open":
        profiler.enable()
    rss0 = _rss_kb()
    t0 = time.process_time()
    clients = []
    tasks = []
    for node in cache.nodes():
        client = _Client(node, cache.node_view(node), on_ready)
        clients.append(client)
        tasks.append(asyncio.create_task(servicer.DeltaAggregatedResources(None, client.context)))
        if len(tasks) % 200 == 0:
            await asyncio.sleep(0)
    await ready.wait()
    await settle()
    open_s = time.process_time() - t0
    if profiler and args.profile_phase == "open":
        profiler.disable()
    n_streams = len(clients)
    clients_kb = sum(sys.getsizeof(c.context._requests) + sys.getsizeof(c) for c in clients) / 1024  # the stand-ins
    stream_kb = (_rss_kb() - rss0 - clients_kb) / n_streams

    async def run(batches: list, phase: str) -> tuple[float, int]:
        gc.collect()
        if profiler and args.profile_phase == phase:
            profiler.enable()
        r0 = responses()
        t0 = time.process_time()
        for rows in batches:
            cache.apply_records(_as_records(rows, 0))
            await asyncio.sleep(0.01)  # the streams answer and the clients ACK (all in memory)
        await settle()
        took = time.process_time() - t0
        if profiler and args.profile_phase == phase:
            profiler.disable()
        return took, responses() - r0

    hot_s, hot_n = await run([rows for rows, _v in mesh.hot_changes], "hot")
    churn_s, churn_n = await run(mesh.churn, "churn")
    print(f"through the shell ({'with' if sync is not None else 'without'} the sync log), no gRPC:")
    print(f"{n_streams} streams opened and initialised: {open_s:.2f} CPU-s ({open_s / n_streams * 1e6:.0f} us per stream); "
          f"RSS +{stream_kb:.1f} kB per stream (the gateway's Python state, without gRPC's)")
    print(f"hot change: {hot_n} responses, {hot_s / len(mesh.hot_changes) * 1000:.0f} ms CPU per change, "
          f"{hot_s / hot_n * 1e6:.0f} us per response (incl. its ACK)")
    print(f"churn: {churn_n} responses, {churn_s / churn_n * 1e6:.0f} ms CPU per 1,000 responses (incl. ACKs)")
    if profiler:
        pstats.Stats(profiler).sort_stats("tottime").print_stats(30)
    for task in tasks + [freezer]:
        task.cancel()
    await asyncio.gather(*tasks, freezer, return_exceptions=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
