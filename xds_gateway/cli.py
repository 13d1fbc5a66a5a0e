"""``xds-gateway``: one stateless ADS server replica.

Starts tailing the view topics, serves gRPC (ADS delta + SotW, and the gRPC
health service) and HTTP (``/ready``, ``/healthz``, ``/metrics``). Ready only
after the view cache caught up. SIGTERM/SIGINT: report NOT_SERVING, stop
accepting, give open streams ``--grace`` seconds, then close them so their
clients reconnect to another replica; the process exits within the bound.
Unless ``--no-sync-log``, what the streams learn (opened, ACKed, NACKed,
closed) is appended to ``meshlog.sync`` under ``--replica-id``; a graceful stop
records every open stream as closed by the gateway.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import signal
import socket
import sys
import time
from typing import Sequence

import grpc
import orjson
from aiohttp import web
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from meshlog import argtypes
from events import kafka_security
from events.admin import BrokerUnavailable
from events.producer import EventProducer
from meshlog.bootstrap import NoBrokerAddress, resolve_bootstrap
from xds_gateway import metrics
from xds_gateway.server import AdsServicer, add_to_server
from xds_gateway.sync_log import SyncLog
from xds_gateway.view_cache import ViewCache, ViewTail

log = logging.getLogger("xds_gateway")
ADS_SERVICE = "envoy.service.discovery.v3.AggregatedDiscoveryService"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="xds-gateway", description="Stateless delta/SotW xDS server over meshlog's views.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = sub.add_parser("run", help="serve ADS until SIGTERM")
    run.add_argument("--bootstrap", type=argtypes.bootstrap, metavar="HOST:PORT[,HOST:PORT]", help="Kafka address (default: $MESHLOG_KAFKA_BOOTSTRAP or `meshlog kafka up`'s)")
    kafka_security.add_arguments(run)
    run.add_argument("--listen", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    run.add_argument("--port", type=argtypes.port_or_free, default=18000, help="gRPC port; 0 picks a free one (default 18000)")
    run.add_argument("--http-port", type=argtypes.port_or_free, default=0, help="HTTP port for /ready and /metrics; 0 picks one")
    run.add_argument("--grace", type=argtypes.seconds(0, 600, low_inclusive=True), default=2.0, help="seconds open streams get on shutdown (default 2)")
    run.add_argument("--write-timeout", type=argtypes.seconds(0, 3600), default=30.0,
                     help="close a stream whose client has not read a response for this long (default 30)")
    run.add_argument("--replica-id", help="this replica's name in meshlog.sync (default: HOSTNAME:PORT)")
    run.add_argument("--no-sync-log", dest="sync_log", action="store_false",
                     help="do not append what the proxies ACK and NACK to meshlog.sync")
    run.add_argument("--sync-window", type=float, default=1.0,
                     help="seconds over which one stream's ACKs of one type coalesce into one record (default 1)")
    run.add_argument("--ready-file", help="write the bound ports as JSON to this file once ready")
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


async def _keep_long_lived_objects_out_of_gc(period_s: float = 30.0) -> None:
    """The view and the streams' protocol state live for hours; with 10k streams a full
    collection scanning them stalled every stream for over a second (bench/xds_fanout).
    Freezing moves what exists now out of the collector's sight; short-lived garbage is
    still collected as usual."""
    gc.set_threshold(50_000, 50, 100)
    while True:
        gc.freeze()
        await asyncio.sleep(period_s)


async def serve(args: argparse.Namespace, bootstrap: str) -> int:
    cache = ViewCache()
    tail = ViewTail(cache, bootstrap)
    tail_task = asyncio.create_task(tail.run(), name="view-tail")

    server = grpc.aio.server(
        options=[
            ("grpc.keepalive_time_ms", 30_000),
            ("grpc.http2.max_pings_without_data", 0),
            ("grpc.max_concurrent_streams", 100_000),
        ]
    )
    sync_log: SyncLog | None = None
    producer: EventProducer | None = None
    if args.sync_log:
        producer = EventProducer(bootstrap)
        try:
            await producer.__aenter__()
        except BrokerUnavailable as exc:
            log.error("sync log: %s", exc)
            tail.stop()
            tail_task.cancel()
            await asyncio.gather(tail_task, return_exceptions=True)
            return 1
        sync_log = SyncLog(producer.append_batch, "", window_s=args.sync_window)
    servicer = AdsServicer(cache, write_timeout_s=args.write_timeout, sync_log=sync_log)
    add_to_server(servicer, server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for service in ("", ADS_SERVICE):
        await health_servicer.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)
    port = server.add_insecure_port(f"{args.listen}:{args.port}")
    if sync_log is not None:
        sync_log.gateway = args.replica_id or f"{socket.gethostname()}:{port}"
        sync_log.start()
    await server.start()

    runner = web.AppRunner(await _http_app(cache), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, args.listen, args.http_port)
    await site.start()
    http_port = site._server.sockets[0].getsockname()[1]  # the bound port when 0 was asked
    log.info("gRPC on %s:%d, HTTP on %s:%d; catching up on views from %s", args.listen, port, args.listen, http_port, bootstrap)

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
        line = orjson.dumps({"xds_port": port, "http_port": http_port, "ready": True}).decode()
        print(line, flush=True)
        if args.ready_file:
            with open(args.ready_file, "w") as fh:
                fh.write(line)
        log.info("ready: %d nodes in view", len(cache.nodes()))
        freezer = asyncio.create_task(_keep_long_lived_objects_out_of_gc())
        await asyncio.wait({stop_wait, tail_task}, return_when=asyncio.FIRST_COMPLETED)
        if tail_task.done() and not stop.is_set():
            log.error("view tail ended: %r", tail_task.exception())
            exit_code = 1

    if "freezer" in locals():
        freezer.cancel()
    log.info("shutting down: NOT_SERVING, closing streams after %.1fs grace", args.grace)
    for service in ("", ADS_SERVICE):
        await health_servicer.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)
    servicer.begin_shutdown()
    await server.stop(args.grace)
    if sync_log is not None:
        await sync_log.close()
    if producer is not None:
        await producer.__aexit__(None, None, None)
    tail.stop()
    tail_task.cancel()
    await asyncio.gather(tail_task, return_exceptions=True)
    await runner.cleanup()
    log.info("stopped")
    return exit_code


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    kafka_security.configure_from_args_or_exit(args, "xds-gateway")
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    try:
        bootstrap = resolve_bootstrap(args.bootstrap)
    except NoBrokerAddress as exc:
        print(f"xds-gateway: {exc}", file=sys.stderr)
        return 3
    return asyncio.run(serve(args, bootstrap))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
