"""``replay ui``: the subcommand (parser and runner); ``replay.cli`` registers it."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

import orjson

from events.files import write_file_atomic
from meshlog import argtypes
from replay.engine import ReplayError, open_log


def add_parser(sub, common, epilog: str) -> None:
    ui = sub.add_parser(
        "ui", help="the incident console: the log's history in the browser (read-only)",
        description="Serve a local web page over the event log: a timeline of events you can zoom and scrub, the "
                    "mesh and any node at the cursor, and a diff between two cursors (the same engine as "
                    "`replay at` and `replay diff`). Prints one JSON line with the URL when ready; "
                    "SIGTERM/SIGINT stop it. The URL of a view (window, cursors, node) can be shared.",
        epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ui.add_argument("--listen", default="127.0.0.1",
                    help="address to bind (default 127.0.0.1; anything else exposes the log's history)")
    ui.add_argument("--port", type=argtypes.port_or_free, default=0, help="HTTP port; 0 picks a free one (default 0)")
    ui.add_argument("--ready-file", help="also write the ready JSON line to this file")
    common(ui)


async def cmd_ui(args: argparse.Namespace, bootstrap: str) -> int:
    from aiohttp import web  # only `replay ui` serves HTTP: not imported by every `replay` command

    from replay.ui.console import Console
    from replay.ui.server import HostGuard, build_app, hosts_for

    async with open_log(bootstrap, args.timeout) as consumer:
        console = Console(consumer, use_snapshot=not args.no_snapshot, verify_events=not args.insecure_events)
        guard = HostGuard(frozenset())  # nothing answered until the bound port is known
        runner = web.AppRunner(build_app(console, guard), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, args.listen, args.port)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise ReplayError(f"cannot listen on {args.listen}:{args.port}: {exc.strerror or exc}") from None
        port = site._server.sockets[0].getsockname()[1]  # the port picked when --port 0
        guard.allowed = hosts_for(args.listen, port)
        host = f"[{args.listen}]" if ":" in args.listen else args.listen
        ready = orjson.dumps({"url": f"http://{host}:{port}/", "port": port, "read_only": True}).decode()
        print(ready, flush=True)
        if args.ready_file:
            write_file_atomic(args.ready_file, f"{ready}\n".encode())
        indexing = asyncio.create_task(console.refresh(force=True))
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        try:
            await stop.wait()
        finally:
            indexing.cancel()
            await runner.cleanup()
    print("replay ui: stopped", file=sys.stderr)
    return 0
