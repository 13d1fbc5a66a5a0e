"""What mTLS costs a gateway to accept streams: CPU-seconds for N new streams, TLS vs plaintext.

Setup. The gateway is the real ``AdsServicer`` over a ``ViewCache`` holding one
node (``bench-0``, owned by ``bench/b0``: a cluster, its endpoints and a
listener) in its own process, on grpc.aio with the server options of
``xds-gateway run``; with ``--tls`` it has the CLI's mTLS credentials
(``xds_gateway.tls``, client certificates required) and a ``TrustGuard``
(identity from the SPIFFE id, authorization against the node's owner).
Client processes open N streams, each on its *own* channel (one TCP
connection and one TLS handshake per stream, as N Envoys would), send the
delta CDS wildcard request as ``bench-0`` with the owner's certificate, and
wait for the first response. Certificates come from identity/'s PKI (ECDSA
P-256). No session resumption by default (each channel is new; grpc does
not cache sessions unless given a cache). ``--resume`` adds a third run in
which each client process shares one TLS session cache across its channels
(``grpc.experimental.ssl_session_cache_lru``, the ``grpc.ssl_session_cache``
channel option), as an Envoy does by default for its xDS cluster
(``max_session_keys`` 1): a reconnect then resumes with the gateway's session
ticket (TLS 1.3 PSK with ECDHE) instead of a full handshake with two ECDSA
certificate checks; the first connections of each process are full ones.

Figure: the gateway's utime+stime (``/proc/PID/stat``, all threads) from
before the first connection until every stream has its first response,
divided by N; the same run without TLS for comparison. Streams stay open
until measured, then close.

Usage:  .venv/bin/python bench/xds_tls.py [--streams N] [--clients P] [--resume] [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.xds_fanout import GATEWAY_SERVER_OPTIONS, proc_cpu_s  # noqa: E402

CLUSTER = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
DOMAIN = "bench.local"


def make_identities(directory: Path, client_role: str = "sidecar") -> dict[str, Path]:
    """A root and two identities' dirs (cert.pem, key.pem, ca.pem): the gateway's, and the clients'
    (``sidecar/bench/b0``, the owner of ``bench-0``; or ``operator/bench``, allowed every node)."""
    from identity import pki, spiffe

    ca = pki.create_root(DOMAIN)
    out = {}
    client = spiffe.sidecar(DOMAIN, "bench", "b0") if client_role == "sidecar" else spiffe.operator(DOMAIN, "bench")
    for name, ident, names in (("gateway", spiffe.gateway(DOMAIN, "g1"), ["127.0.0.1", "localhost"]),
                               ("client", client, [])):
        key = pki.generate_key()
        cert = pki.issue(ca, ident, key.public_key(), server_names=names)
        files = pki.save_identity(directory / name, cert, key, ca.certificate)
        out[name] = files.cert.parent
    return out


def _cache():
    from envoy.config.cluster.v3 import cluster_pb2
    from envoy.config.endpoint.v3 import endpoint_pb2
    from envoy.config.listener.v3 import listener_pb2

    from projector.publisher import membership_value, resource_key
    from xds_gateway.protocol.resources import ENDPOINT, LISTENER, version_of
    from xds_gateway.view_cache import ViewCache

    bodies = {
        CLUSTER: ("svc", cluster_pb2.Cluster(name="svc", type=cluster_pb2.Cluster.EDS)),
        ENDPOINT: ("svc", endpoint_pb2.ClusterLoadAssignment(cluster_name="svc")),
        LISTENER: ("bench-0~outbound", listener_pb2.Listener(name="bench-0~outbound")),
    }
    cache = ViewCache()
    changed: set[str] = set()
    resources = {}
    for type_url, (name, msg) in bodies.items():
        raw = msg.SerializeToString(deterministic=True)
        cache.apply_resource(resource_key(type_url, name), raw, changed)
        resources[type_url] = {name: version_of(raw)}
    cache.apply_membership(b"bench-0", membership_value("bench-0", resources, ("bench", "b0")), changed)
    cache.ready.set()
    return cache


def gateway_main(conn, tls_dir: str | None) -> None:
    import grpc

    from xds_gateway.admission import GatewayLimits
    from xds_gateway.guard import TrustGuard
    from xds_gateway.server import AdsServicer, add_to_server
    from xds_gateway.tls import TlsFiles, load_material, server_credentials

    async def main():
        server = grpc.aio.server(options=GATEWAY_SERVER_OPTIONS)
        guard = None
        if tls_dir:
            d = Path(tls_dir)
            files = TlsFiles(d / "cert.pem", d / "key.pem", d / "ca.pem")
            material = load_material(files)
            guard = TrustGuard(material.identity.domain)
            port = server.add_secure_port("127.0.0.1:0", server_credentials(files, material))
        else:
            port = server.add_insecure_port("127.0.0.1:0")
        add_to_server(AdsServicer(_cache(), limits=GatewayLimits(max_streams=1_000_000), guard=guard), server)
        await server.start()
        conn.send(port)
        await asyncio.get_running_loop().run_in_executor(None, conn.recv)  # "stop"
        await server.stop(0)

    asyncio.run(main())


def client_main(conn, port: int, n: int, tls_dir: str | None, hold, resume: bool = False) -> None:
    import grpc
    from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

    session_cache = None
    if resume:
        from grpc.experimental.session_cache import ssl_session_cache_lru

        session_cache = ssl_session_cache_lru(16)
    creds = None
    if tls_dir:
        d = Path(tls_dir)
        creds = grpc.ssl_channel_credentials((d / "ca.pem").read_bytes(), (d / "key.pem").read_bytes(),
                                             (d / "cert.pem").read_bytes())

    async def one(i: int, channels: list, errors: list) -> None:
        opts = [("grpc.use_local_subchannel_pool", 1)]
        if session_cache is not None:
            opts.append(("grpc.ssl_session_cache", session_cache))
        ch = (grpc.aio.secure_channel(f"127.0.0.1:{port}", creds, options=opts) if creds
              else grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=opts))
        channels.append(ch)
        try:
            call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(ch).DeltaAggregatedResources()
            req = discovery_pb2.DeltaDiscoveryRequest(type_url=CLUSTER)
            req.node.id = "bench-0"
            await call.write(req)
            got = await asyncio.wait_for(call.read(), 120)
            if got is grpc.aio.EOF or not got.resources:
                errors.append("no data")
        except Exception as exc:  # noqa: BLE001 - counted, reported
            errors.append(type(exc).__name__)

    async def main():
        channels, errors = [], []
        sem = asyncio.Semaphore(200)  # connections being set up at once, per client process

        async def gated(i):
            async with sem:
                await one(i, channels, errors)

        await asyncio.gather(*(gated(i) for i in range(n)))
        conn.send(("done", len(errors), errors[:3]))
        await asyncio.get_running_loop().run_in_executor(None, hold.wait)
        for ch in channels:
            await ch.close()

    asyncio.run(main())


def measure(n: int, clients: int, tls_dir: str | None, resume: bool = False) -> dict:
    ctx = mp.get_context("spawn")
    gw_end, gw_child = ctx.Pipe()
    gateway = ctx.Process(target=gateway_main, args=(gw_child, tls_dir), daemon=True)
    gateway.start()
    port = gw_end.recv()
    time.sleep(0.5)
    hold = ctx.Event()
    cpu0, t0 = proc_cpu_s(gateway.pid), time.perf_counter()
    procs, ends = [], []
    share = [n // clients + (1 if i < n % clients else 0) for i in range(clients)]
    for k in share:
        end, child = ctx.Pipe()
        p = ctx.Process(target=client_main, args=(child, port, k, tls_dir and str(Path(tls_dir).parent / "client"),
                                                  hold, resume), daemon=True)
        p.start()
        procs.append(p)
        ends.append(end)
    errors = 0
    samples = []
    for end in ends:
        _, err, sample = end.recv()
        errors += err
        samples += sample
    wall = time.perf_counter() - t0
    cpu = proc_cpu_s(gateway.pid) - cpu0
    hold.set()
    for p in procs:
        p.join(30)
    gw_end.send("stop")
    gateway.join(30)
    return {"streams": n, "gateway_cpu_s": round(cpu, 2), "gateway_cpu_ms_per_stream": round(cpu / n * 1000, 3),
            "wall_s": round(wall, 1), "errors": errors, "error_samples": samples}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--streams", type=int, default=2000)
    p.add_argument("--clients", type=int, default=2, help="client processes")
    p.add_argument("--resume", action="store_true",
                   help="also measure mTLS with TLS session resumption (a session cache per client process)")
    p.add_argument("--json", help="write the figures here")
    args = p.parse_args(argv)
    resumed = None
    with tempfile.TemporaryDirectory(prefix="xds-tls-bench-") as tmp:
        dirs = make_identities(Path(tmp))
        plain = measure(args.streams, args.clients, None)
        print(f"plaintext: {json.dumps(plain)}", flush=True)
        tls = measure(args.streams, args.clients, str(dirs["gateway"]))
        print(f"mTLS:      {json.dumps(tls)}", flush=True)
        if args.resume:
            resumed = measure(args.streams, args.clients, str(dirs["gateway"]), resume=True)
            print(f"resumed:   {json.dumps(resumed)}", flush=True)
    ratio = tls["gateway_cpu_s"] / plain["gateway_cpu_s"] if plain["gateway_cpu_s"] else float("nan")
    extra = (tls["gateway_cpu_s"] - plain["gateway_cpu_s"]) / args.streams * 1000
    print(f"{args.streams} streams, one connection each: gateway CPU {plain['gateway_cpu_s']} s plaintext, "
          f"{tls['gateway_cpu_s']} s mTLS (x{ratio:.2f}; +{extra:.2f} ms of gateway CPU per mTLS stream)")
    doc = {"plaintext": plain, "mtls": tls, "cpu_ratio": round(ratio, 2), "extra_cpu_ms_per_stream": round(extra, 3)}
    if resumed is not None:
        extra_resumed = (resumed["gateway_cpu_s"] - plain["gateway_cpu_s"]) / args.streams * 1000
        print(f"  with session resumption: {resumed['gateway_cpu_s']} s (+{extra_resumed:.2f} ms per stream)")
        doc.update(resumed=resumed, extra_cpu_ms_per_stream_resumed=round(extra_resumed, 3))
    if args.json:
        Path(args.json).write_text(json.dumps(doc, indent=1))
    return 0 if not (plain["errors"] or tls["errors"] or (resumed or {}).get("errors")) else 1


if __name__ == "__main__":
    sys.exit(main())
