"""``projector``: run the live projector (event topics -> RocksDB state -> view topics).

``projector run --bootstrap HOST:PORT --data-dir DIR`` folds the event topics
into the mesh state, renders every node's xDS view, and publishes the changes
to the compacted view topics; ``projector inspect --data-dir DIR`` prints what
a data dir holds (offsets, counts) without touching Kafka.

Exit codes: 0 stopped cleanly (SIGTERM/SIGINT); 1 a condition it cannot run
under (message on stderr: stale data dir, data dir in use, ...); 3 the broker
did not answer at start.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Sequence

import orjson

from events.admin import BrokerUnavailable
from events.merge_gate import DEFAULT_HOLD_S
from events import kafka_security
from identity import renewal_cli as renewal
from meshlog import argtypes
from meshlog.bootstrap import NoBrokerAddress, resolve_bootstrap

INSECURE_EVENTS_ENV = "MESHLOG_INSECURE_EVENTS"

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BROKER = 3

log = logging.getLogger("projector")


def insecure_events_default() -> bool:
    """``$MESHLOG_INSECURE_EVENTS=1``: the explicit insecure mode for a whole environment (the test suite's
    plaintext broker); the flag ``--insecure-events`` says the same for one process."""
    return os.environ.get(INSECURE_EVENTS_ENV, "") == "1"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="projector",
        description="Fold meshlog's event topics into per-node xDS views and publish them to the view topics.",
        epilog="Exit codes: 0 stopped cleanly; 1 cannot run (see message); 3 broker unreachable at start.",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="-v: per-batch DEBUG logs of the projector")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    run = sub.add_parser(
        "run",
        help="run the projector until SIGTERM/SIGINT",
        description=(
            "Consume the registrations, health and rules topics (read_committed), fold them into RocksDB state "
            "under --data-dir, publish changed views (resource bodies, then memberships, then removals), "
            "dead-letter undecodable records, record rule rejections, and append periodic state snapshots. "
            "A restart resumes from the data dir and republishes nothing unchanged."
        ),
    )
    run.add_argument(
        "--bootstrap", type=argtypes.bootstrap, metavar="HOST:PORT[,HOST:PORT]",
        help="Kafka bootstrap address host:port (default: $MESHLOG_KAFKA_BOOTSTRAP, else the broker started by "
        "`meshlog kafka up`)",
    )
    kafka_security.add_arguments(run)
    renewal.add_arguments(run)
    run.add_argument("--data-dir", required=True, type=Path, help="directory for the RocksDB state (created if missing)")
    run.add_argument("--max-batch", type=argtypes.integer(1, 10_000_000), default=20_000, help="most records folded per batch (default 20000)")
    run.add_argument(
        "--poll-ms", type=argtypes.integer(1, 600_000), default=200, help="how long to wait for new records before an idle poll (default 200)"
    )
    run.add_argument(
        "--merge-hold-ms", type=argtypes.integer(0, 600_000), default=round(DEFAULT_HOLD_S * 1000),
        help="how long (of fetching) a partition that is behind and not moving (leader unreachable, a "
        "transaction left open) may hold back the records that sort after it, before the fold goes past it "
        f"with a warning (default {round(DEFAULT_HOLD_S * 1000)}; see events.merge_gate)",
    )
    run.add_argument(
        "--linger-ms", type=argtypes.integer(0, 60_000), default=0,
        help="how long the view producer waits to fill a batch, per publish phase; it adds to every change's "
        "time to the proxies (default 0)",
    )
    run.add_argument(
        "--full-gc-interval", type=argtypes.seconds(0, 7 * 86_400, low_inclusive=True), default=3600.0,
        help="seconds between full garbage collections (when idle); each one holds the projector for as long as "
        "it takes (0.5 s or more on 10,000 nodes); 0 never (default 3600)",
    )
    run.add_argument(
        "--snapshot-events", type=argtypes.integer(1, 2**31), default=10_000, help="append a state snapshot every N events (default 10000)"
    )
    run.add_argument(
        "--snapshot-interval", type=argtypes.seconds(0, 86_400), default=60.0,
        help="... or every T seconds if anything was folded since the last one (default 60)",
    )
    run.add_argument(
        "--checkpoint-events", type=argtypes.integer(1, 2**31), default=20_000,
        help="write the whole state to RocksDB every N events (default 20000; bounds refolding after a crash)",
    )
    run.add_argument(
        "--checkpoint-interval", type=argtypes.seconds(0, 86_400), default=60.0,
        help="... or every T seconds (default 60); writing one holds the projector while it serializes the state "
        "(about 0.2 CPU-s on 10,000 instances)"
    )
    run.add_argument(
        "--shutdown-timeout", type=argtypes.seconds(0, 3600), default=15.0,
        help="seconds allowed for a graceful stop after SIGTERM/SIGINT before exiting anyway (default 15)",
    )
    run.add_argument(
        "--group", type=argtypes.name(249), default=None, metavar="GROUP",
        help="share the work with the other workers started with the same GROUP (on this or other machines): each "
        "folds every event but publishes only the view records of the shards the consumer group assigns it on "
        "meshlog.projector.shards; each worker needs its own --data-dir (default: one worker publishes everything)",
    )
    run.add_argument(
        "--session-timeout", type=argtypes.seconds(6, 1800, low_inclusive=True), default=6.0, metavar="SECONDS",
        help="with --group: how long the group waits for a silent worker before its shards move to the others "
        "(default 6, the broker's minimum; longer rides out stalls of a loaded host, and slows the takeover after a "
        "crash by as much)",
    )
    run.add_argument(
        "--worker-id", type=argtypes.name(200), default=None,
        help="this worker's name in logs and its Kafka client id (default: <hostname>-<pid>)",
    )
    run.add_argument("--no-ensure-topics", action="store_true", help="do not create missing topics at start")
    run.add_argument(
        "--insecure-events", action="store_true", default=insecure_events_default(),
        help="fold events without verifying who signed them (local development, logs written before signing); "
        "by default an unsigned, unknown-signer, expired, revoked or badly signed event, or one its author may "
        "not state, is refused and recorded on meshlog.rejections (also: $MESHLOG_INSECURE_EVENTS=1)",
    )
    run.add_argument(
        "--verify-workers", "--verify-threads", dest="verify_workers", type=argtypes.integer(0, 16), default=1,
        help="worker processes checking each batch's signatures ahead of its fold (default 1: a second core; the "
        "answers are the same, only computed in parallel); 0 checks them in the fold",
    )
    run.add_argument(
        "--reset", action="store_true",
        help="discard the data dir's state first (rebuilds from the log; adopts the view topics' content)",
    )
    run.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS, help="per-batch DEBUG logs")
    run.add_argument("--log-level", default=None, help="root log level (default INFO; -v makes the projector DEBUG)")

    inspect = sub.add_parser("inspect", help="print what a data dir holds (offsets, counts) as JSON")
    inspect.add_argument("--data-dir", required=True, type=Path)
    return parser


def _setup_logging(args: argparse.Namespace) -> None:
    level = getattr(logging, (args.log_level or "INFO").upper(), logging.INFO)
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if args.verbose:
        logging.getLogger("projector").setLevel(logging.DEBUG)
    # aiokafka is chatty at INFO about routine group/metadata events
    logging.getLogger("aiokafka").setLevel(max(level, logging.WARNING))


def config_from_args(args: argparse.Namespace, bootstrap: str):
    """The ``ProjectorConfig`` of a parsed ``projector run``."""
    from projector.service import ProjectorConfig

    return ProjectorConfig(
        bootstrap=bootstrap,
        data_dir=args.data_dir,
        max_batch=args.max_batch,
        poll_timeout_s=args.poll_ms / 1000.0,
        merge_hold_s=args.merge_hold_ms / 1000.0,
        linger_ms=args.linger_ms,
        full_gc_interval_s=args.full_gc_interval,
        snapshot_events=args.snapshot_events,
        snapshot_interval_s=args.snapshot_interval,
        checkpoint_events=args.checkpoint_events,
        checkpoint_interval_s=args.checkpoint_interval,
        ensure_topics=not args.no_ensure_topics,
        reset=args.reset,
        insecure_events=args.insecure_events,
        verify_workers=args.verify_workers,
        group=args.group,
        session_timeout_s=args.session_timeout,
        worker_id=args.worker_id or f"{socket.gethostname()}-{os.getpid()}",
    )


async def _run(args: argparse.Namespace, bootstrap: str) -> int:
    from projector.service import ProjectorService

    service = ProjectorService(config_from_args(args, bootstrap))
    loop = asyncio.get_running_loop()
    task = asyncio.ensure_future(service.run())
    signals_seen = 0

    def on_signal(signum: int) -> None:
        nonlocal signals_seen
        signals_seen += 1
        if signals_seen == 1:
            log.info("%s received: finishing the current batch and stopping (bound %.0fs)",
                     signal.Signals(signum).name, args.shutdown_timeout)
            service.request_stop()
            loop.call_later(args.shutdown_timeout, _force, "graceful stop took longer than --shutdown-timeout")
        else:
            _force(f"second {signal.Signals(signum).name}")

    def _force(why: str) -> None:
        if not task.done():
            log.error("%s: exiting now (state is safe: RocksDB writes are atomic; the last batch is redone)", why)
            logging.shutdown()
            os._exit(EXIT_FAILED)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    try:
        await task
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    return EXIT_OK


def _inspect(data_dir: Path) -> int:
    from projector.service import DB_NAME, ProjectorError, Store

    path = data_dir / DB_NAME
    if not path.exists():
        print(f"projector: no projector state in {data_dir}", file=sys.stderr)
        return EXIT_FAILED
    try:
        store = Store(path, sync=False)
    except ProjectorError as exc:
        print(f"projector: {exc}", file=sys.stderr)
        return EXIT_FAILED
    try:
        st = store.load()
    finally:
        store.close()
    doc = {
        "data_dir": str(data_dir),
        "cluster_id": st.cluster_id,
        "checkpoint": {"next_offsets": st.state_offsets, **st.counters},
        "state": {
            "instances": len(st.state.instances),
            "services": len(st.state.services),
            "route_rules": len(st.state.route_rules),
            "policies": len(st.state.policies),
            "nodes": len(st.state.nodes),
        },
        "emitted_next_offsets": st.emitted,
        "last_snapshot": st.snapshot_marks,
        "published": {"resources": len(st.published.resources), "nodes": len(st.published.membership)},
    }
    sys.stdout.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode() + "\n")
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    kafka_security.configure_from_args_or_exit(args, "projector")
    if args.command == "inspect":
        return _inspect(args.data_dir)
    _setup_logging(args)
    renewers = renewal.renewers_or_exit(args, "projector", "projector")
    from projector.service import ProjectorError

    try:
        bootstrap = resolve_bootstrap(args.bootstrap)
    except NoBrokerAddress as exc:
        print(f"projector: {exc}", file=sys.stderr)
        return EXIT_FAILED
    try:
        return asyncio.run(renewal.running(renewers, _run(args, bootstrap)))
    except BrokerUnavailable as exc:
        log.error("%s", exc)
        return EXIT_BROKER
    except ProjectorError as exc:
        log.error("%s", exc)
        return EXIT_FAILED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
