"""``xds-gateway run --workers N``: one replica as N worker processes sharing the gRPC port.

A gateway process runs all its Python on one core (one asyncio loop); a
replica uses more cores by running N complete gateways (view tail, view
cache, ADS servicer, sync log) that listen on the same address with
``SO_REUSEPORT`` (grpc sets it on Linux): the kernel hands each new
connection to one of them, so each holds a share of the streams. A stream
lives in one worker for its whole life; a proxy's connection is in one
worker, so nothing is shared between them at run time.

Invariants:
- The port is decided before any worker starts (``--port 0`` picks a free
  one here and holds it, bound with ``SO_REUSEPORT`` and not listening, until
  every worker listens on it), so every worker binds the same port.
- Each worker is the same ``serve`` as a single-process gateway with its own
  HTTP port (``--http-port P``: worker i gets P + i; 0: each picks a free one)
  and its own ``--replica-id`` suffix ``/w<i>`` in ``meshlog.sync``.
- Ready (stdout line, ``--ready-file``) only once every worker is ready; the
  line lists the workers' HTTP ports and pids.
- SIGTERM/SIGINT go to every worker (each closes its streams after
  ``--grace``). If a worker exits on its own the others are stopped too and
  the replica exits non-zero: an orchestrator restarts the whole replica
  rather than run it short of a worker.
- Memory: each worker has its own view cache, so it can serve any node: with
  ``--views connected`` (the default) it decodes only its own streams' nodes
  and indexes the rest; with ``--views all`` each holds the whole view. See
  the README's scaling section for the measured cost.
"""

from __future__ import annotations

import argparse
import copy
import logging
import multiprocessing as mp
import os
import signal
import socket
import sys
import time

import orjson

from events.files import write_file_atomic

log = logging.getLogger("xds_gateway")

__all__ = ["run_workers", "reserve_port"]


def reserve_port(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` with SO_REUSEPORT (not listening): holds a port every worker can bind too."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock


def _worker(args: argparse.Namespace, bootstrap: str, limits, tls_files, conn, supervisor: int) -> None:
    import asyncio

    from events import kafka_security
    from meshlog.procs import die_with_parent
    from xds_gateway import cli

    die_with_parent(parent_pid=supervisor)()  # a worker never outlives its replica

    kafka_security.configure_from_args_or_exit(args, "xds-gateway")  # process-wide settings: not inherited by spawn
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor turns Ctrl-C into one SIGTERM per worker
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    renewers = cli.own_renewers(args, tls_files) if args.replica_id.endswith("/w0") else []
    code = asyncio.run(cli.renewal.running(renewers, cli.serve(args, bootstrap, limits, tls_files, on_ready=conn.send)))
    sys.exit(code)


def run_workers(args: argparse.Namespace, bootstrap: str, limits, tls_files) -> int:
    """Start ``args.workers`` gateways on one port; return when they have all stopped."""
    n = args.workers
    holder = reserve_port(args.listen, args.port)
    port = holder.getsockname()[1]
    ctx = mp.get_context("spawn")  # no inherited asyncio loop, grpc or Kafka state
    procs, conns = [], []
    stopping = False

    def stop_all(*_sig) -> None:
        nonlocal stopping
        stopping = True
        for p in procs:
            if p.is_alive():
                p.terminate()  # SIGTERM: the worker's graceful stop

    signal.signal(signal.SIGTERM, stop_all)
    signal.signal(signal.SIGINT, stop_all)
    base_id = args.replica_id or f"{socket.gethostname()}:{port}"
    for i in range(n):
        wargs = copy.copy(args)
        wargs.workers, wargs.port, wargs.ready_file = 1, port, None
        wargs.http_port = args.http_port + i if args.http_port else 0
        wargs.replica_id = f"{base_id}/w{i}"
        parent, child = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=_worker, args=(wargs, bootstrap, limits, tls_files, child, os.getpid()), name=f"xds-gateway-w{i}")
        proc.start()
        child.close()
        procs.append(proc)
        conns.append(parent)
    ready: dict[int, dict] = {}
    exit_code = 0
    try:
        while not stopping:
            for i, conn in enumerate(conns):
                if i not in ready and conn.poll(0):
                    try:
                        ready[i] = conn.recv()
                    except EOFError:
                        pass
            if len(ready) == n and holder is not None:
                holder.close()  # every worker listens: the port is held by them now
                holder = None
                line = orjson.dumps({"xds_port": port, "http_port": ready[0]["http_port"],
                                     "http_ports": [ready[i]["http_port"] for i in range(n)],
                                     "pids": [p.pid for p in procs], "workers": n, "ready": True}).decode()
                print(line, flush=True)
                if args.ready_file:
                    write_file_atomic(args.ready_file, line.encode())
                log.info("ready: %d workers on port %d", n, port)
            dead = [p for p in procs if not p.is_alive()]
            if dead:
                if not stopping:
                    log.error("worker %s exited with %s: stopping the replica", dead[0].name, dead[0].exitcode)
                    exit_code = 1
                stop_all()
                break
            time.sleep(0.2)
    finally:
        stop_all()
        deadline = time.monotonic() + args.grace + 15
        for p in procs:
            p.join(max(0.1, deadline - time.monotonic()))
            if p.is_alive():
                p.kill()
                p.join(5)
            if p.exitcode not in (0, None, -signal.SIGTERM) and exit_code == 0:
                exit_code = p.exitcode if p.exitcode > 0 else 1
        if holder is not None:
            holder.close()
    return exit_code
