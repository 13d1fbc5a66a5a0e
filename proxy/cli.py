"""``meshlog-sidecar``: run the sidecar agent (``run``), show a running one's status (``status``), or
change what it depends on at run time (``subscribe``/``unsubscribe``/``subscriptions``, through its local
API: ``proxy.subscriptions``).

Exit codes: 0 drained and stopped (or status shown, or the subscription done); 1 the agent failed (or a
subscription was refused or timed out);
2 invalid arguments (every problem is listed, naming its flag; nothing is
started).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import sys
from pathlib import Path
from typing import Sequence

from events import kafka_security
from proxy.options import BadArguments, build_parser, default_cache_dir, options_from_args

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_ARGS = 2


def _resolve(explicit: str | None) -> str:
    from meshlog.bootstrap import resolve_bootstrap

    return resolve_bootstrap(explicit)


def _free_port() -> int:
    from meshlog.kafka_local import free_port

    return free_port()


def _host_address() -> str:
    """``--address auto``: the IPv4 address this host's name resolves to (a container's own address)."""
    name = socket.gethostname()
    try:
        return socket.gethostbyname(name)
    except OSError as exc:
        raise OSError(f"cannot resolve this host's name {name!r}: {exc}") from None


def _status_path(args) -> Path | None:
    if args.status_file:
        return Path(args.status_file)
    if args.cache_dir:
        return Path(args.cache_dir) / "status.json"
    if args.node_id:
        return default_cache_dir(args.node_id) / "status.json"
    print("meshlog-sidecar: give --status-file, --cache-dir or --node-id"
          + (" (or --api-port)" if args.command != "status" else ""), file=sys.stderr)
    return None


def _subscriptions_command(args) -> int:
    """``subscribe`` / ``unsubscribe`` / ``subscriptions``: one request to the running sidecar's local API."""
    from proxy import subscriptions

    if args.api_port is not None and not 1 <= args.api_port <= 65535:
        print(f"meshlog-sidecar: invalid argument: --api-port: {args.api_port} is not a port (1-65535)",
              file=sys.stderr)
        return EXIT_BAD_ARGS
    if not 0 < args.timeout <= 600:
        print("meshlog-sidecar: invalid argument: --timeout: must be between 0 and 600 seconds", file=sys.stderr)
        return EXIT_BAD_ARGS
    port = args.api_port
    if port is None:
        path = _status_path(args)
        if path is None:
            return EXIT_BAD_ARGS
        try:
            port = json.loads(path.read_text())["ports"]["api"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            print(f"meshlog-sidecar: cannot read the API port from {path}: {type(exc).__name__}: {exc}",
                  file=sys.stderr)
            return EXIT_FAILED
        if not isinstance(port, int):
            print(f"meshlog-sidecar: the sidecar of {path} serves no subscription API (start it with --api-port)",
                  file=sys.stderr)
            return EXIT_FAILED
    method = {"subscribe": "PUT", "unsubscribe": "DELETE", "subscriptions": "GET"}[args.command]
    try:
        status, body = subscriptions.call(port, method, getattr(args, "dependency", None), args.timeout)
    except OSError as exc:
        print(f"meshlog-sidecar: no answer from the sidecar's API at 127.0.0.1:{port}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if status == 200:
        print(json.dumps(body, indent=1))
        return EXIT_OK
    # the sidecar's JSON encoder escaped it; still cut what reaches the terminal
    print(f"meshlog-sidecar: {args.command} refused ({status}): {str(body.get('error', body))[:2048]}",
          file=sys.stderr)
    return EXIT_BAD_ARGS if status == 400 else EXIT_FAILED


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    kafka_security.configure_from_args_or_exit(args, "meshlog-sidecar")
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    for noisy in ("aiokafka", "kafka"):
        logging.getLogger(noisy).setLevel(logging.CRITICAL if not args.verbose else logging.DEBUG)

    if args.command == "status":
        path = _status_path(args)
        if path is None:
            return EXIT_BAD_ARGS
        try:
            print(json.dumps(json.loads(path.read_text()), indent=1))
        except (OSError, ValueError) as exc:
            print(f"meshlog-sidecar: cannot read {path}: {exc}", file=sys.stderr)
            return EXIT_FAILED
        return EXIT_OK
    if args.command in ("subscribe", "unsubscribe", "subscriptions"):
        return _subscriptions_command(args)

    try:
        opts = options_from_args(args, resolve_bootstrap=_resolve, free_port=_free_port,
                                 resolve_address=_host_address)
    except BadArguments as exc:
        for problem in exc.problems:
            print(f"meshlog-sidecar: invalid argument: {problem}", file=sys.stderr)
        print("meshlog-sidecar: nothing was started", file=sys.stderr)
        return EXIT_BAD_ARGS

    # Envoy is started with fork+exec while grpc (the gateway probes) may be active: the child execs at
    # once, so grpc's fork handlers are not needed (and would only log that they were skipped)
    os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
    from proxy.agent import SidecarAgent

    return asyncio.run(SidecarAgent(opts).run())


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
