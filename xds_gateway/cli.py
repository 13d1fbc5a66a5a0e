"""``xds-gateway``: one stateless ADS server replica.

Starts tailing the view topics, serves gRPC (ADS delta + SotW, and the gRPC
health service) and HTTP (``/ready``, ``/healthz``, ``/metrics``). Ready only
after the view cache caught up.

gRPC is mTLS: client certificates are required and must chain to the mesh
root (``--tls-*`` or ``$MESHLOG_XDS_TLS_*``); each stream gets only the nodes
its certificate's identity owns (``xds_gateway.authz``), and streams of
revoked certificates are closed (the identities topic is tailed). Plaintext
only with ``--insecure`` (loopback development; a warning is logged).
Admission limits (``--max-*``) end one stream with ``RESOURCE_EXHAUSTED``.
Bad flags or unusable TLS files: a message naming them, exit 2. SIGTERM/SIGINT: report NOT_SERVING, stop
accepting, give open streams ``--grace`` seconds, then close them so their
clients reconnect to another replica; the process exits within the bound.
``--views connected`` (default) decodes only the views of nodes with an open stream
(``xds_gateway.lazy_view``); ``--views all`` every node's.
``--workers N`` runs N such gateways in processes sharing the gRPC port
(``xds_gateway.workers``). Unless ``--no-sync-log``, what the streams learn (opened, ACKed, NACKed,
closed) is appended to ``meshlog.sync`` under ``--replica-id``; a graceful stop
records every open stream as closed by the gateway.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import logging
import signal
import socket
import sys
import time
from typing import Callable, Sequence

import grpc
import orjson
from aiohttp import web
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from meshlog import argtypes
from events import kafka_security
from identity import renewal_cli as renewal
from events.admin import BrokerUnavailable
from events.files import write_file_atomic
from events.producer import EventProducer
from meshlog.bootstrap import NoBrokerAddress, resolve_bootstrap
from xds_gateway import metrics
from xds_gateway.admission import DEFAULT_LIMITS, GatewayLimits
from xds_gateway.gc_policy import keep_long_lived_objects_out_of_gc
from xds_gateway.guard import TrustGuard, tail_revocations
from xds_gateway.protocol.limits import StreamLimits
from xds_gateway.server import ADS_SERVICE, AdsServicer, add_to_server
from xds_gateway.on_demand import DEFAULT_HOLD_S, LearnedSubscriptions
from xds_gateway.sync_log import SyncLog
from meshlog.xds_tls_args import add_tls_arguments, files_from_args
from xds_gateway.tls import TlsConfigError, TlsFiles, load_material, server_credentials
from xds_gateway.lazy_view import LazyViewCache, OffsetFetcher
from xds_gateway.view_cache import ViewCache, ViewTail
from xds_gateway.workers import run_workers

log = logging.getLogger("xds_gateway")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="xds-gateway", description="Stateless delta/SotW xDS server over meshlog's views.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = sub.add_parser("run", help="serve ADS until SIGTERM")
    run.add_argument("--bootstrap", type=argtypes.bootstrap, metavar="HOST:PORT[,HOST:PORT]", help="Kafka address (default: $MESHLOG_KAFKA_BOOTSTRAP or `meshlog kafka up`'s)")
    kafka_security.add_arguments(run)
    renewal.add_arguments(run)
    run.add_argument("--listen", default="127.0.0.1", help="address gRPC binds (default 127.0.0.1)")
    run.add_argument("--port", type=argtypes.port_or_free, default=18000, help="gRPC port; 0 picks a free one (default 18000)")
    run.add_argument("--http-listen", help="address HTTP (/ready, /metrics) binds (default: --listen's)")
    run.add_argument("--http-port", type=argtypes.port_or_free, default=0, help="HTTP port for /ready and /metrics; 0 picks one")
    add_tls_arguments(run, "the gateway's")
    lim = run.add_argument_group("admission limits (over one: that stream ends with RESOURCE_EXHAUSTED)")
    d, ds = DEFAULT_LIMITS, DEFAULT_LIMITS.stream
    lim.add_argument("--max-streams-per-connection", type=argtypes.integer(1, 1 << 30), default=d.max_streams_per_connection,
                     help=f"ADS streams open at once on one connection (default {d.max_streams_per_connection})")
    lim.add_argument("--max-streams", type=argtypes.integer(1, 1 << 30), default=d.max_streams,
                     help=f"ADS streams open at once in this process (default {d.max_streams})")
    lim.add_argument("--max-request-bytes", type=argtypes.integer(1, 1 << 30), default=d.max_request_bytes,
                     help=f"largest request message (default {d.max_request_bytes})")
    lim.add_argument("--max-names-per-subscription", type=argtypes.integer(1, 1 << 30), default=ds.max_names_per_type,
                     help=f"names one stream subscribes to per type (default {ds.max_names_per_type})")
    lim.add_argument("--max-initial-versions", type=argtypes.integer(1, 1 << 30), default=ds.max_initial_versions,
                     help=f"initial_resource_versions entries per request (default {ds.max_initial_versions})")
    lim.add_argument("--max-pending-nonces", type=argtypes.integer(1, 1 << 30), default=ds.max_pending_nonces,
                     help=f"un-ACKed responses per stream (default {ds.max_pending_nonces})")
    run.add_argument("--grace", type=argtypes.seconds(0, 600, low_inclusive=True), default=2.0, help="seconds open streams get on shutdown (default 2)")
    run.add_argument("--write-timeout", type=argtypes.seconds(0, 3600), default=30.0,
                     help="close a stream whose client has not read a response for this long (default 30)")
    run.add_argument("--replica-id", help="this replica's name in meshlog.sync (default: HOSTNAME:PORT)")
    run.add_argument("--no-sync-log", dest="sync_log", action="store_false",
                     help="do not append what the proxies ACK and NACK to meshlog.sync")
    run.add_argument("--sync-window", type=argtypes.seconds(0, 60), default=1.0,
                     help="seconds over which one stream's ACKs of one type coalesce into one record (default 1)")
    run.add_argument("--on-demand-hold", type=argtypes.seconds(0, 4.5, low_inclusive=True), default=DEFAULT_HOLD_S,
                     help="seconds a sidecar's on-demand request for a service it does not depend on waits for its "
                          "learned subscription to be rendered, before Envoy is told the cluster does not exist "
                          f"(default {DEFAULT_HOLD_S:g}; under Envoy's own 5 s on-demand timeout); 0: no on-demand "
                          "subscriptions, such a request is answered 'does not exist' at once and nothing is recorded")
    run.add_argument("--ready-file", help="write the bound ports as JSON to this file once ready")
    run.add_argument("--workers", type=argtypes.integer(1, 64), default=1,
                     help="gateway processes sharing the gRPC port (SO_REUSEPORT), each holding its share of the "
                          "streams and its own view cache; HTTP ports are --http-port + i (default 1)")
    run.add_argument("--views", choices=("connected", "all"), default="connected",
                     help="which nodes' views the replica holds decoded in memory: 'connected' (default) only those "
                          "of nodes with an open stream, loaded when they connect (see --view-index) and dropped "
                          "--view-grace seconds after their last stream closes; 'all' every node's, as read from "
                          "the view topics")
    run.add_argument("--view-index", choices=("bytes", "offsets"), default="bytes",
                     help="with --views connected, what the replica keeps of a node no stream holds: 'bytes' "
                          "(default) its records' undecoded values, decoded when it connects (no broker round "
                          "trip); 'offsets' only where its records are, fetched from the broker when it connects "
                          "(least memory, slower connects)")
    run.add_argument("--view-grace", type=argtypes.seconds(0, 3600, low_inclusive=True), default=30.0,
                     help="with --views connected: seconds a node's view stays in memory after its last stream "
                          "closes, so a reconnect is served without a fetch (default 30)")
    run.add_argument("--log-level", default="INFO")
    return parser


async def _http_app(cache: ViewCache) -> web.Application:
    async def ready(_request):
        return web.Response(status=200 if cache.ready.is_set() else 503, text="ready\n" if cache.ready.is_set() else "catching up\n")

    async def healthz(_request):
        return web.Response(text="ok\n")

    async def metrics_page(_request):
        if cache.last_record_timestamp_ms:
            metrics.VIEW_LAG.set(max(0.0, time.time() - cache.last_record_timestamp_ms / 1000))
        return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/ready", ready)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics_page)
    return app


class UsageError(ValueError):
    """A flag combination or file that cannot be served; the message names it (exit 2)."""


def limits_from(args: argparse.Namespace) -> GatewayLimits:
    try:
        return GatewayLimits(
            max_streams_per_connection=args.max_streams_per_connection,
            max_streams=args.max_streams,
            max_request_bytes=args.max_request_bytes,
            stream=StreamLimits(max_names_per_type=args.max_names_per_subscription,
                                max_initial_versions=args.max_initial_versions,
                                max_pending_nonces=args.max_pending_nonces),
        )
    except ValueError as exc:
        flag = str(exc).split(" ", 1)[0].replace("max_names_per_type", "max_names_per_subscription")
        raise UsageError(f"--{flag.replace('_', '-')}: {str(exc).split(' ', 1)[1]}") from None


tls_files_from = files_from_args  # (meshlog.xds_tls_args: `replay serve` takes the same flags)


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


async def serve(args: argparse.Namespace, bootstrap: str, limits: GatewayLimits, tls_files: TlsFiles | None,
                on_ready: Callable[[dict], None] | None = None) -> int:
    """Serve until SIGTERM/SIGINT; once ready, print the ports (or hand them to ``on_ready``, as a worker does)."""
    material = load_material(tls_files) if tls_files is not None else None
    fetcher = None
    if args.views == "connected":
        fetcher = OffsetFetcher(bootstrap) if args.view_index == "offsets" else None
        cache = LazyViewCache(fetcher, grace_s=args.view_grace, keep_bytes=fetcher is None)
    else:
        cache = ViewCache()
    tail = ViewTail(cache, bootstrap)
    tail_task = asyncio.create_task(tail.run(), name="view-tail")

    server = grpc.aio.server(
        options=[
            ("grpc.keepalive_time_ms", 30_000),
            ("grpc.http2.max_pings_without_data", 0),
            ("grpc.max_concurrent_streams", 100_000),
            ("grpc.max_receive_message_length", limits.max_request_bytes),
        ]
    )
    sync_log: SyncLog | None = None
    on_demand: LearnedSubscriptions | None = None
    producer: EventProducer | None = None
    if args.sync_log or args.on_demand_hold:
        producer = EventProducer(bootstrap)
        try:
            await producer.__aenter__()
        except BrokerUnavailable as exc:
            log.error("event producer (sync log, on-demand subscriptions): %s", exc)
            tail.stop()
            tail_task.cancel()
            await asyncio.gather(tail_task, return_exceptions=True)
            return 1
        if args.sync_log:
            sync_log = SyncLog(producer.append_batch, "", window_s=args.sync_window)
        if args.on_demand_hold:
            on_demand = LearnedSubscriptions(producer.append_batch, "")
    guard = TrustGuard(material.identity.domain) if material is not None else None
    servicer = AdsServicer(cache, write_timeout_s=args.write_timeout, sync_log=sync_log, limits=limits, guard=guard,
                            on_demand=on_demand, hold_s=args.on_demand_hold)
    add_to_server(servicer, server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for service in ("", ADS_SERVICE):
        await health_servicer.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)
    address = f"{args.listen}:{args.port}"
    if material is None:
        log.warning("--insecure: plaintext xDS on %s; any client can read any node's config. Loopback development "
                    "only%s", address, "" if _is_loopback(args.listen) else " -- and this address is NOT loopback")
        port = server.add_insecure_port(address)
        revocations = None
    else:
        port = server.add_secure_port(address, server_credentials(tls_files, material))
        log.info("mTLS xDS as %s (trust domain %s); client certificates required", material.identity.uri,
                 material.identity.domain)
        revocations = asyncio.create_task(tail_revocations(guard, bootstrap), name="revocations")
    replica = args.replica_id or f"{socket.gethostname()}:{port}"
    if sync_log is not None:
        sync_log.gateway = replica
        sync_log.start()
    if on_demand is not None:
        on_demand.gateway = replica
        on_demand.start()
    await server.start()

    http_listen = args.http_listen or args.listen
    runner = web.AppRunner(await _http_app(cache), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, http_listen, args.http_port)
    await site.start()
    http_port = site._server.sockets[0].getsockname()[1]  # the bound port when 0 was asked
    log.info("gRPC on %s:%d, HTTP on %s:%d; catching up on views from %s", args.listen, port, http_listen, http_port,
             bootstrap)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    ready_wait = asyncio.ensure_future(cache.ready.wait())
    stop_wait = asyncio.ensure_future(stop.wait())
    await asyncio.wait({ready_wait, stop_wait, tail_task}, return_when=asyncio.FIRST_COMPLETED)
    exit_code = 0
    if tail_task.done():
        log.error("view tail ended: %r", tail_task.exception())
        exit_code = 1
    elif cache.ready.is_set() and not stop.is_set():
        for service in ("", ADS_SERVICE):
            await health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
        info = {"xds_port": port, "http_port": http_port, "ready": True}
        if on_ready is not None:
            on_ready(info)
        else:
            line = orjson.dumps(info).decode()
            print(line, flush=True)
            if args.ready_file:
                write_file_atomic(args.ready_file, line.encode())
        log.info("ready: %d nodes in view", len(cache.nodes()))
        freezer = asyncio.create_task(keep_long_lived_objects_out_of_gc())
        await asyncio.wait({stop_wait, tail_task}, return_when=asyncio.FIRST_COMPLETED)
        if tail_task.done() and not stop.is_set():
            log.error("view tail ended: %r", tail_task.exception())
            exit_code = 1

    if "freezer" in locals():
        freezer.cancel()
    if revocations is not None:
        revocations.cancel()
    log.info("shutting down: NOT_SERVING, closing streams after %.1fs grace", args.grace)
    for service in ("", ADS_SERVICE):
        await health_servicer.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)
    servicer.begin_shutdown()
    await server.stop(args.grace)
    if sync_log is not None:
        await sync_log.close()
    if on_demand is not None:
        await on_demand.close()
    if producer is not None:
        await producer.__aexit__(None, None, None)
    tail.stop()
    tail_task.cancel()
    await asyncio.gather(tail_task, return_exceptions=True)
    if isinstance(cache, LazyViewCache):
        await cache.close()
    if fetcher is not None:
        await fetcher.stop()
    await runner.cleanup()
    log.info("stopped")
    return exit_code


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    kafka_security.configure_from_args_or_exit(args, "xds-gateway")
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    try:
        limits = limits_from(args)
        tls_files = tls_files_from(args)
        if tls_files is not None:
            load_material(tls_files)  # refuse unusable files before touching Kafka
    except (UsageError, TlsConfigError) as exc:
        print(f"xds-gateway: {exc}", file=sys.stderr)
        return 2
    try:
        bootstrap = resolve_bootstrap(args.bootstrap)
    except NoBrokerAddress as exc:
        print(f"xds-gateway: {exc}", file=sys.stderr)
        return 3
    if args.workers > 1:
        return run_workers(args, bootstrap, limits, tls_files)
    return asyncio.run(renewal.running(own_renewers(args, tls_files), serve(args, bootstrap, limits, tls_files)))


def own_renewers(args: argparse.Namespace, tls_files) -> list:
    """The renewal loops of this replica's certificates (``--ca-url``); with ``--workers`` only worker 0 runs them
    (the others' TLS credentials reload the renewed files by themselves)."""
    from identity.pki import IdentityFiles

    own = None if tls_files is None else IdentityFiles(cert=tls_files.cert, key=tls_files.key, bundle=tls_files.ca)
    return renewal.renewers_or_exit(args, "gateway", "xds-gateway", own)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
