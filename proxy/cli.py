"""``meshlog-sidecar``: run the sidecar agent (``run``) or show a running one's status (``status``).

Exit codes: 0 drained and stopped (or status shown); 1 the agent failed;
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


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    kafka_security.configure_from_args_or_exit(args, "meshlog-sidecar")
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    for noisy in ("aiokafka", "kafka"):
        logging.getLogger(noisy).setLevel(logging.CRITICAL if not args.verbose else logging.DEBUG)

    if args.command == "status":
        if args.status_file:
            path = Path(args.status_file)
        elif args.cache_dir:
            path = Path(args.cache_dir) / "status.json"
        elif args.node_id:
            path = default_cache_dir(args.node_id) / "status.json"
        else:
            print("meshlog-sidecar: give --status-file, --cache-dir or --node-id", file=sys.stderr)
            return EXIT_BAD_ARGS
        try:
            print(json.dumps(json.loads(path.read_text()), indent=1))
        except (OSError, ValueError) as exc:
            print(f"meshlog-sidecar: cannot read {path}: {exc}", file=sys.stderr)
            return EXIT_FAILED
        return EXIT_OK

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
