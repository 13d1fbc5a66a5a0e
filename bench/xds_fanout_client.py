"""Simulated Envoy delta-xDS clients for ``bench/xds_fanout.py``: one process, many grpc.aio streams.

Each stream follows what Envoy does on a delta ADS stream (FIELD-NOTES):
CDS with an empty subscribe list (legacy wildcard) and node.id on the first
request; on a CDS response it subscribes EDS to the EDS clusters' names
*before* ACKing CDS; after the first EDS response it asks LDS (wildcard);
on an LDS response it subscribes RDS to the route names the listeners'
HTTP connection managers name, then ACKs LDS. Every response is ACKed with
its nonce (and nothing else), so the gateway's un-ACKed coalescing gate is
exercised exactly as with Envoy. Removed clusters are unsubscribed from EDS.

Controlled by the parent over a Pipe: ``mark`` starts the measurement window
(hot-service deliveries and bytes per stream class are recorded from then
on), ``report`` returns them, ``stop`` closes every stream and exits.
Shared counters (one slot per process, written by that process only):
streams initialised, hot deliveries in the window, streams failed.
"""

from __future__ import annotations

import asyncio
import gc
import time

import grpc
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

CDS = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
EDS = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
LDS = "type.googleapis.com/envoy.config.listener.v3.Listener"
RDS = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"

Request = discovery_pb2.DeltaDiscoveryRequest


class Stats:
    def __init__(self, hot_name: str) -> None:
        self.hot_name = hot_name
        self.window = False
        self.hot: list[tuple[str, float, str]] = []  # (version, receive time, node)
        self.hot_sizes: list[int] = []  # ByteSize of the responses carrying the hot resource
        self.dep_bytes = self.nondep_bytes = self.dep_responses = self.nondep_responses = 0
        self.nondep_streams = 0
        self.responses = 0
        self.errors: list[str] = []

    def mark(self) -> None:
        self.window = True
        self.hot.clear()
        self.hot_sizes.clear()
        self.dep_bytes = self.nondep_bytes = self.dep_responses = self.nondep_responses = 0


def eds_names(resources) -> set[str]:
    names = set()
    for r in resources:
        c = cluster_pb2.Cluster.FromString(r.resource.value)
        if c.WhichOneof("cluster_discovery_type") == "type" and c.type == cluster_pb2.Cluster.EDS:
            names.add(c.eds_cluster_config.service_name or c.name)
    return names


def route_names(resources) -> set[str]:
    names = set()
    for r in resources:
        listener = listener_pb2.Listener.FromString(r.resource.value)
        for chain in listener.filter_chains:
            for f in chain.filters:
                if f.typed_config.type_url == HCM:
                    hcm = http_connection_manager_pb2.HttpConnectionManager.FromString(f.typed_config.value)
                    if hcm.HasField("rds"):
                        names.add(hcm.rds.route_config_name)
    return names


async def run_stream(stub, node_id: str, dependent: bool, st: Stats, idx: int, ready, hot_count, failed,
                     ramp: asyncio.Semaphore) -> None:
    await ramp.acquire()
    held = True
    call = stub.DeltaAggregatedResources()
    eds_subs: set[str] | None = None
    lds_asked = False
    rds_subs: set[str] = set()
    initialised = False
    hot = st.hot_name
    try:
        await call.write(Request(node=base_pb2.Node(id=node_id, cluster="bench"), type_url=CDS))
        while True:
            resp = await call.read()
            if resp is grpc.aio.EOF:
                break
            now = time.time()
            t = resp.type_url
            st.responses += 1
            if st.window:
                n = resp.ByteSize()
                if dependent:
                    st.dep_bytes += n
                    st.dep_responses += 1
                else:
                    st.nondep_bytes += n
                    st.nondep_responses += 1
            if t == CDS:
                names = eds_names(resp.resources)
                gone = {n for n in resp.removed_resources} & (eds_subs or set())
                if eds_subs is None:
                    eds_subs = names
                    await call.write(Request(type_url=EDS, resource_names_subscribe=sorted(names)))
                else:
                    new = names - eds_subs
                    if new or gone:
                        eds_subs = (eds_subs | new) - gone
                        await call.write(Request(type_url=EDS, resource_names_subscribe=sorted(new),
                                                 resource_names_unsubscribe=sorted(gone)))
                await call.write(Request(type_url=CDS, response_nonce=resp.nonce))
            elif t == EDS:
                if st.window:
                    for r in resp.resources:
                        if r.name == hot:
                            st.hot.append((r.version, now, node_id))
                            st.hot_sizes.append(resp.ByteSize())
                            hot_count[idx] += 1
                            break
                await call.write(Request(type_url=EDS, response_nonce=resp.nonce))
                if not lds_asked:
                    lds_asked = True
                    await call.write(Request(type_url=LDS))
            elif t == LDS:
                new = route_names(resp.resources) - rds_subs
                if new:
                    rds_subs |= new
                    await call.write(Request(type_url=RDS, resource_names_subscribe=sorted(new)))
                await call.write(Request(type_url=LDS, response_nonce=resp.nonce))
            else:
                await call.write(Request(type_url=t, response_nonce=resp.nonce))
                if t == RDS and not initialised:
                    initialised = True
                    ready[idx] += 1
                    ramp.release()
                    held = False
    except asyncio.CancelledError:
        call.cancel()
        raise
    except grpc.aio.AioRpcError as exc:
        if len(st.errors) < 5:
            st.errors.append(f"{node_id}: {exc.code().name} {exc.details()}")
        failed[idx] += 1
    finally:
        if held:
            ramp.release()


def client_main(conn, port: int, idx: int, nodes: list[str], dependent: list[bool], hot_name: str,
                streams_per_channel: int, ramp: int, ready, hot_count, failed, tls_dir: str | None = None) -> None:
    asyncio.run(_client(conn, port, idx, nodes, dependent, hot_name, streams_per_channel, ramp, ready, hot_count,
                        failed, tls_dir))


def _channel(port: int, options: list, tls_dir: str | None):
    if tls_dir is None:
        return grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=options)
    from pathlib import Path

    d = Path(tls_dir)
    creds = grpc.ssl_channel_credentials((d / "ca.pem").read_bytes(), (d / "key.pem").read_bytes(),
                                         (d / "cert.pem").read_bytes())
    return grpc.aio.secure_channel(f"127.0.0.1:{port}", creds, options=options)


async def _client(conn, port, idx, nodes, dependent, hot_name, streams_per_channel, ramp_n, ready, hot_count,
                  failed, tls_dir=None) -> None:
    st = Stats(hot_name)
    st.nondep_streams = sum(1 for d in dependent if not d)
    nch = max(1, -(-len(nodes) // streams_per_channel))
    # a local subchannel pool gives every channel its own HTTP/2 connection
    channels = [
        _channel(port, [
            ("grpc.use_local_subchannel_pool", 1),
            ("grpc.max_receive_message_length", 256 << 20),
            ("grpc.keepalive_time_ms", 60_000),
        ], tls_dir)
        for _ in range(nch)
    ]
    stubs = [ads_pb2_grpc.AggregatedDiscoveryServiceStub(ch) for ch in channels]
    ramp = asyncio.Semaphore(ramp_n)
    tasks = [
        asyncio.create_task(run_stream(stubs[i % nch], node, dep, st, idx, ready, hot_count, failed, ramp))
        for i, (node, dep) in enumerate(zip(nodes, dependent))
    ]
    loop = asyncio.get_running_loop()
    try:
        while True:
            msg = await loop.run_in_executor(None, conn.recv)
            if msg[0] == "mark":
                # the harness must not add pauses of its own: no cyclic GC in the client processes while
                # measuring (Envoy has none); what exists now is frozen out of any later collection
                gc.collect()
                gc.freeze()
                gc.disable()
                st.mark()
                conn.send(("marked",))
            elif msg[0] == "report":
                conn.send(("report", {
                    "hot": list(st.hot), "hot_sizes": list(st.hot_sizes),
                    "dep_bytes": st.dep_bytes, "nondep_bytes": st.nondep_bytes,
                    "dep_responses": st.dep_responses, "nondep_responses": st.nondep_responses,
                    "nondep_streams": st.nondep_streams, "responses": st.responses, "errors": list(st.errors),
                }))
                st.window = False
            elif msg[0] == "stop":
                break
    except (EOFError, OSError):
        pass
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for ch in channels:
            await ch.close()


# ---------------------------------------------------------------- harness floor (bare grpc.aio, no gateway)


def floor_client_main(port: int, idx: int, n: int, counts, last_recv) -> None:
    """``n`` streams that read pushes and ACK each one; count them and note when the last arrived."""
    asyncio.run(_floor_client(port, idx, n, counts, last_recv))


async def _floor_client(port, idx, n, counts, last_recv) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)]) as ch:
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(ch)

        async def one() -> None:
            call = stub.DeltaAggregatedResources()
            await call.write(Request(node=base_pb2.Node(id="floor"), type_url=EDS))
            while True:
                resp = await call.read()
                if resp is grpc.aio.EOF:
                    return
                last_recv[idx] = time.time()
                counts[idx] += 1
                await call.write(Request(type_url=EDS, response_nonce=resp.nonce))

        await asyncio.gather(*(one() for _ in range(n)), return_exceptions=True)
