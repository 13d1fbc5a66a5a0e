"""``replay``: time travel over meshlog's event log, for incident forensics.

Forms (``replay --at T ...`` is short for ``replay at --at T ...``)::

    replay --at TIME [--service S] [--json]          the mesh as of TIME: services, instances, health, rules, nodes
    replay --at TIME --node N [--full] [--json]      what node N was served (names, versions; bodies with --full)
    replay --at TIME --node N --xds                  node N's resources as an Envoy /config_dump
    replay diff --from T1 --to T2 [--node N]         what was added, removed, changed, and which events did it
    replay log --from T1 --to T2 [--service S | --node N]   the audit trail of the window
    replay serve --at TIME [--port P]                a frozen, read-only xDS server for a debug Envoy
    replay identities --at TIME [--service S]        the mesh identities (certificates) held at TIME
    replay ui [--port P]                             the incident console: the log's history in the browser

Replay folds the event topics up to TIME with the projector's own fold and
render (no mesh logic here), starting from the latest usable snapshot.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import time
from datetime import datetime, timezone
from typing import Sequence

import orjson
from aiokafka.errors import KafkaError

from meshlog.xds_tls_args import add_tls_arguments, files_from_args
from events import kafka_security
from meshlog import argtypes
from meshlog.bootstrap import NoBrokerAddress, resolve_bootstrap
from events.printable import printable
from replay.engine import (
    Dropped,
    NotFound,
    OutOfRange,
    ReplayError,
    check_instant,
    if_changes_something,
    iso,
    node_versions,
    open_log,
    rebuild,
    walk,
)
from replay.source import ReadStalled, read_window
from replay.timeparse import BadTime, parse_instant, to_ms
from replay.ui import cli as ui_cli

# Start-up time is part of every `replay at` (a snapshot and a short tail take less time than the
# interpreter's imports did): what only some commands or outputs need -- rich for the text tables and
# the progress bar, the sync and identity readers, the report's dead-letter lookup, aiohttp for
# `replay ui` -- is imported where it is used (`python -X importtime -m replay.cli` shows the rest).

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_BROKER = 3
EXIT_OUT_OF_RANGE = 4
EXIT_NOT_FOUND = 5

EXIT_CODES = """\
exit codes:
  0  success
  1  unexpected failure (message on stderr)
  2  bad usage: unknown option, unparseable TIME, --from after --to, --xds without --node
  3  no broker address, or the broker did not answer
  4  TIME outside the log: before its first event, in the future, or nothing logged yet
  5  the --node or --service named does not exist at that instant
"""

TIME_HELP = (
    "an instant: ISO-8601 (2024-05-01T10:00, 2024-05-01T10:00:00.250+02:00; naive means UTC), "
    "relative to now (-15m, -2h, -1d, -30s), 'now', or epoch milliseconds (@1714557600000)"
)

SUBCOMMANDS = ("at", "diff", "log", "serve", "identities", "ui")
PROGRESS_MIN_RECORDS = 50_000

log = logging.getLogger("replay")


# ---------------------------------------------------------------- parser


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bootstrap", metavar="HOST:PORT", type=argtypes.bootstrap,
                   help="Kafka address (default: $MESHLOG_KAFKA_BOOTSTRAP, else the broker of `meshlog kafka up`)")
    kafka_security.add_arguments(p)
    p.add_argument("--timeout", type=argtypes.seconds(0, 3600), default=15.0, metavar="S",
                   help="seconds to wait for the broker to answer (default 15)")
    prog = p.add_mutually_exclusive_group()
    prog.add_argument("--progress", dest="progress", action="store_true", default=None,
                      help="always show a progress bar on stderr (default: only on a terminal, for long replays)")
    prog.add_argument("--no-progress", dest="progress", action="store_false", help="never show a progress bar")
    p.add_argument("--no-snapshot", action="store_true",
                   help="fold from the beginning of the log instead of the latest snapshot (slower; for checking)")
    p.add_argument("--log-level", default="WARNING", help="log level on stderr (default WARNING)")
    p.add_argument("--insecure-events", action="store_true", default=_insecure_default(),
                   help="fold events without verifying who signed them, as a projector run with --insecure-events "
                   "does (logs written before signing); by default replay refuses what the projector refuses "
                   "(also: $MESHLOG_INSECURE_EVENTS=1)")


def _insecure_default() -> bool:
    return os.environ.get("MESHLOG_INSECURE_EVENTS", "") == "1"


async def _verifier(args: argparse.Namespace, consumer, *, for_display: bool = False):
    """The verifier of the log's identities (identity.verifier), or None in insecure mode (unless only shown)."""
    if args.insecure_events and not for_display:
        return None
    from replay import identities

    return await identities.load_verifier(consumer, args.now_ms)


def _at_options(p: argparse.ArgumentParser, *, required: bool) -> None:
    p.add_argument("--at", required=required, metavar="TIME", help=TIME_HELP)
    p.add_argument("--node", metavar="N", help="show what node N was served: resource names and versions")
    p.add_argument("--service", metavar="S", help="only service S: its instances, rules, and the nodes calling it")
    p.add_argument("--full", action="store_true", help="with --node: also the resource bodies (protobuf JSON)")
    p.add_argument("--xds", action="store_true",
                   help="with --node: print an Envoy-style /config_dump (JSON) of the node's resources")
    p.add_argument("--accepted", action="store_true",
                   help="with --node: also what the proxy had ACKed by TIME (meshlog.sync), next to what it was "
                        "told; NACKed and not-yet-ACKed resources are listed")
    p.add_argument("--json", action="store_true",
                   help="machine-readable output (shapes documented in replay.report; 'format': 1)")
    p.add_argument("--limit", type=argtypes.integer(0, 10_000_000), default=50, metavar="N",
                   help="rows per table in the text output (default 50; 0 = all)")
    _common(p)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="replay",
        description=(
            "Time travel over meshlog's event log: rebuild the mesh and every node's xDS view as of any "
            "instant, diff two instants, read the audit trail, or serve a past instant to a debug Envoy. "
            "State at TIME = every event whose broker timestamp is <= TIME, folded and rendered by the "
            "projector's own code. `replay --at TIME ...` is short for `replay at --at TIME ...`."
        ),
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    at = sub.add_parser(
        "at", help="the mesh (or one node's view) as of TIME",
        description="Rebuild the mesh as of TIME and show services, instances with health, rules and nodes; "
                    "or, with --node, what that node was served.",
        epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _at_options(at, required=True)

    diff = sub.add_parser(
        "diff", help="what changed between two instants, and which events caused it",
        description="Resources added, removed and changed (by version) between --from and --to, for the whole "
                    "mesh or one node, each with the events (logged in (T1, T2]) that changed it and, from "
                    "meshlog.sync, when the proxies accepted it: with --node, the proxy's ACK of each changed "
                    "resource; for the whole mesh, how far each causing event reached (as `replay log` says).",
        epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    diff.add_argument("--from", dest="from_", required=True, metavar="T1", help=TIME_HELP)
    diff.add_argument("--to", required=True, metavar="T2", help="the later instant (same forms as --from)")
    diff.add_argument("--node", metavar="N", help="only what node N is served")
    diff.add_argument("--json", action="store_true", help="machine-readable output (replay.report, kind 'diff')")
    _common(diff)

    lg = sub.add_parser(
        "log", help="the audit trail of a window: events, their effect, rejections, dead letters",
        description="Every event logged in (T1, T2] with broker time, producer, type and key, and its effect "
                    "(which resources and nodes changed); rule rejections (recomputed, and as recorded on the "
                    "rejections topic) and dead-lettered records of the window.",
        epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    lg.add_argument("--from", dest="from_", required=True, metavar="T1", help=TIME_HELP)
    lg.add_argument("--to", required=True, metavar="T2", help="the later instant (same forms as --from)")
    scope = lg.add_mutually_exclusive_group()
    scope.add_argument("--service", metavar="S", help="only events about S or changing S's resources")
    scope.add_argument("--node", metavar="N", help="only events changing what node N is served")
    lg.add_argument("--json", action="store_true", help="machine-readable output (replay.report, kind 'log')")
    _common(lg)

    serve = sub.add_parser(
        "serve", help="a read-only xDS server frozen at TIME, for a debug Envoy",
        description="Serve the mesh as of TIME over ADS (delta and state-of-the-world), read-only: it never "
                    "tails Kafka. Prints one JSON line with the bound port when ready; SIGTERM/SIGINT stop it.",
        epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve.add_argument("--at", required=True, metavar="TIME", help=TIME_HELP)
    serve.add_argument("--listen", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=argtypes.port_or_free, default=0, help="gRPC port; 0 picks a free one (default 0)")
    serve.add_argument("--grace", type=argtypes.seconds(0, 600, low_inclusive=True), default=1.0, help="seconds open streams get on shutdown (default 1)")
    serve.add_argument("--ready-file", help="also write the ready JSON line to this file")
    add_tls_arguments(serve, "this server's")
    _common(serve)

    ids = sub.add_parser(
        "identities", help="the mesh identities held at TIME (issued, valid, not revoked)",
        description="Fold the identities topic up to TIME (identity.registry, as `meshlog ca serve` does) and "
                    "show every certificate held then, and those revoked before their expiry.",
        epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ids.add_argument("--at", required=True, metavar="TIME", help=TIME_HELP)
    ids.add_argument("--service", metavar="S", help="only sidecar identities of service S")
    ids.add_argument("--json", action="store_true", help="machine-readable output (replay.identities, kind 'identities')")
    ids.add_argument("--limit", type=argtypes.integer(0, 1_000_000), default=50, metavar="N", help="rows in the text output (default 50; 0 = all)")
    _common(ids)
    ui_cli.add_parser(sub, _common, EXIT_CODES)
    return parser


_TIME_FLAGS = ("--at", "--from", "--to")


def _glue_relative_times(argv: list[str]) -> list[str]:
    """``--from -15m`` -> ``--from=-15m``: argparse would take ``-15m`` for an option."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        if argv[i] in _TIME_FLAGS and i + 1 < len(argv) and argv[i + 1].startswith("-") and argv[i + 1][1:2].isdigit():
            out.append(f"{argv[i]}={argv[i + 1]}")
            i += 2
        else:
            out.append(argv[i])
            i += 1
    return out


def normalize_argv(argv: Sequence[str]) -> list[str]:
    """``replay --at T ...`` -> ``replay at --at T ...`` (a subcommand may also follow --bootstrap X)."""
    argv = _glue_relative_times(list(argv))
    i = 0
    lead: list[str] = []
    while i < len(argv) and argv[i] in ("--bootstrap",) and i + 1 < len(argv):
        lead += argv[i : i + 2]
        i += 2
    while i < len(argv) and argv[i].startswith("--bootstrap="):
        lead.append(argv[i])
        i += 1
    rest = argv[i:]
    if rest and rest[0] in SUBCOMMANDS:
        return [rest[0], *lead, *rest[1:]]
    if rest and rest[0] in ("-h", "--help") and not lead:
        return rest
    if not argv:
        return []
    return ["at", *lead, *rest]


def command_of(argv: Sequence[str]) -> str | None:
    """The subcommand ``argv`` runs (as ``normalize_argv`` reads it); None for help or an empty command line."""
    normalized = normalize_argv(argv)
    return normalized[0] if normalized and normalized[0] in SUBCOMMANDS else None


# ---------------------------------------------------------------- output helpers


class RichProgress:
    """A rich progress bar on stderr, shown only for long replays (or when asked)."""

    def __init__(self, enabled: bool | None) -> None:
        self.enabled = enabled
        self._bar = None  # a rich Progress while shown
        self._task = None

    def start(self, description: str, total: int) -> None:
        show = self.enabled if self.enabled is not None else (sys.stderr.isatty() and total >= PROGRESS_MIN_RECORDS)
        if not show or total <= 0:
            return
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self._bar = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TimeRemainingColumn(), console=Console(stderr=True), transient=False,
        )
        self._bar.start()
        self._task = self._bar.add_task(description, total=total)

    def advance(self, n: int) -> None:
        if self._bar is not None:
            self._bar.advance(self._task, n)

    def finish(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


def _emit_json(doc: dict) -> None:
    sys.stdout.buffer.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n")
    sys.stdout.flush()


def _parse(text_value: str, now: datetime, flag: str) -> int:
    try:
        return to_ms(parse_instant(text_value, now))
    except BadTime as exc:
        raise UsageError(f"{flag}: {exc}") from None


class UsageError(ReplayError):
    exit_code = EXIT_USAGE


def _nearby(names: Sequence[str], wanted: str, limit: int = 5) -> str:
    import difflib

    close = difflib.get_close_matches(wanted, list(names), n=limit, cutoff=0.5)
    return f" (similar: {', '.join(close)})" if close else ""


# ---------------------------------------------------------------- commands


def check_usage(args: argparse.Namespace, now: datetime) -> None:
    """Every check that needs no broker, done before connecting (pure but for setting the parsed times on args).

    Sets ``now_ms`` and, per subcommand, ``at_ms`` or ``from_ms``/``to_ms``; raises UsageError (exit 2).
    """
    args.now_ms = to_ms(now)
    if args.command in ("at", "serve"):
        args.at_ms = _parse(args.at, now, "--at")
    if args.command == "serve":
        from meshlog.xds_trust import TlsFilesError, load_tls_files

        try:
            args.tls_files = files_from_args(args)
            if args.tls_files is not None:
                load_tls_files(args.tls_files)  # unusable files: exit 2 before reading the log
        except TlsFilesError as exc:
            raise UsageError(str(exc)) from None
    if args.command == "at" and (args.xds or args.full or args.accepted) and not args.node:
        raise UsageError("--xds, --full and --accepted need --node N")
    if args.command in ("diff", "log"):
        args.from_ms = _parse(args.from_, now, "--from")
        args.to_ms = _parse(args.to, now, "--to")
        if args.from_ms > args.to_ms:
            raise UsageError(f"--from {iso(args.from_ms)} is after --to {iso(args.to_ms)}")


async def cmd_at(args: argparse.Namespace, bootstrap: str) -> int:
    from projector.render import render
    from replay import report

    at_ms = args.at_ms
    async with open_log(bootstrap, args.timeout) as consumer:
        first = await check_instant(consumer, at_ms, args.now_ms, what="--at")
        rebuilt = await rebuild(consumer, at_ms, use_snapshot=not args.no_snapshot, progress=RichProgress(args.progress),
                                verifier=await _verifier(args, consumer), bootstrap=bootstrap)
        rebuilt.first_ms = first
        _say_refused(rebuilt.refused)
        source = rebuilt.source()
        if rebuilt.undecodable:
            from replay.deadletters import dead_lettered_among

            source["undecodable_dead_lettered"] = len(await dead_lettered_among(consumer, rebuilt.undecodable))
        sync_table = None
        if args.accepted:
            from proxysync.read import read_sync

            sync_table = (await read_sync(consumer, until_ms=at_ms))[0]
    state = rebuilt.state
    if args.node:
        node = args.node
        if state.node_instance(node) is None:
            raise NotFound(f"node {node!r} has no registered instance at {iso(at_ms)}"
                           f"{_nearby(list(state.nodes.keys()), node)}")
        versions = node_versions(state, node)
        if args.xds:
            _emit_json(report.config_dump(node, versions, render(state, node), at_ms=at_ms))
            return EXIT_OK
        doc = report.node_document(state, node, versions, at_ms=at_ms, source=source,
                                   bodies=render(state, node) if args.full else None)
        accepted = None
        if sync_table is not None:
            # the same matching `meshlog status` does, against what replay says the node was told at TIME
            from proxysync.status_cli import proxy_row

            accepted = proxy_row(node, sync_table.proxies.get(node), versions, None)
            accepted["as_of_ms"] = at_ms
            doc["accepted"] = accepted
        if args.json:
            _emit_json(doc)
        else:
            from replay import text

            text.print_node(text.console(), doc)
            if accepted is not None:
                from proxysync.status_cli import render_node_text

                print(f"\nwhat the proxy had ACKed by {iso(at_ms)} (meshlog.sync):")
                print(render_node_text(accepted, told_header="TOLD (at TIME)"))
        return EXIT_OK
    if args.service and args.service not in report.services_known(state):
        raise NotFound(f"service {args.service!r} is unknown at {iso(at_ms)}"
                       f"{_nearby(sorted(report.services_known(state)), args.service)}")
    # the table shows names only (cheap); --json carries every node's resource versions (a full render)
    rendered = rebuilt.rendered(bodies=False) if args.json else None
    doc = report.mesh_document(state, rendered, at_ms=at_ms, source=source, service=args.service)
    if args.json:
        _emit_json(doc)
    else:
        from replay import text

        text.print_mesh(text.console(), doc, limit=args.limit)
    return EXIT_OK


def _say_refused(refused: dict[str, int]) -> None:
    """Say on stderr what a rebuild's fold refused (by reason), and how to read a log whose events are unsigned."""
    if refused:
        log.warning("the state left out %d refused events (%s)", sum(refused.values()),
                    ", ".join(f"{problem} {n}" for problem, n in sorted(refused.items())))
    unsigned = refused.get("unsigned", 0)
    if unsigned:
        log.warning("%d unsigned events were refused, as a projector refuses them unless it runs with "
                    "--insecure-events; a log written without mesh identities (a plaintext broker, or before "
                    "identities existed) is replayed with --insecure-events, as its projector ran", unsigned)


async def _window(args: argparse.Namespace, consumer) -> tuple[int, int]:
    # a window may start before the first event (the state there is empty); it must end by now
    await check_instant(consumer, args.to_ms, args.now_ms, what="--to")
    return args.from_ms, args.to_ms


async def cmd_diff(args: argparse.Namespace, bootstrap: str) -> int:
    from replay import report
    from replay.acceptance import diff_sync_docs, sync_records_for
    from replay.deadletters import dead_lettered_among

    undecodable: list = []
    async with open_log(bootstrap, args.timeout) as consumer:
        from_ms, to_ms_ = await _window(args, consumer)
        progress = RichProgress(args.progress)
        verifier = await _verifier(args, consumer)
        base = await rebuild(consumer, from_ms, use_snapshot=not args.no_snapshot, progress=progress,
                             verifier=verifier, bootstrap=bootstrap)
        _say_refused(base.refused)
        dropped = Dropped()
        walker, steps, _cut = await walk(consumer, base, to_ms_, node=args.node, progress=progress,
                                         on_undecodable=undecodable.append, keep=if_changes_something,
                                         dropped=dropped, verifier=verifier, bootstrap=bootstrap)
        recorded = await dead_lettered_among(consumer, undecodable)
        sync_records = await sync_records_for(consumer, to_ms_)
    if args.node and not walker.start_membership and not walker.membership():
        raise NotFound(f"node {args.node!r} has no registered instance at {iso(from_ms)} nor at {iso(to_ms_)}"
                       f"{_nearby(list(walker.state.nodes.keys()) + list(base.state.nodes.keys()), args.node)}")
    doc = report.diff_document(
        from_ms=from_ms, to_ms=to_ms_, node=args.node,
        start_versions=walker.start_versions, end_versions=walker.versions(),
        start_membership=walker.start_membership, end_membership=walker.membership(),
        steps=steps, undecodable=[report.dead_letter_doc(u, recorded.get((u.topic, u.partition, u.offset))) for u in undecodable],
        **diff_sync_docs(steps, sync_records, args.node), dropped=dropped,
    )
    if args.json:
        _emit_json(doc)
    else:
        from replay import text

        text.print_diff(text.console(), doc)
    return EXIT_OK


async def cmd_log(args: argparse.Namespace, bootstrap: str) -> int:
    from events import topics
    from events.undecodable import UndecodableLog, decode_or_skip
    from replay import identities, report
    from replay.acceptance import nodes_with_proxies, step_convergences, sync_records_for
    from replay.deadletters import recorded_dead_letters

    undecodable: list = []
    async with open_log(bootstrap, args.timeout) as consumer:
        from_ms, to_ms_ = await _window(args, consumer)
        progress = RichProgress(args.progress)
        # the author column is verified even in insecure mode: there it marks facts unverified, refusing none
        shown = await _verifier(args, consumer, for_display=True)
        verifier = None if args.insecure_events else shown
        base = await rebuild(consumer, from_ms, use_snapshot=not args.no_snapshot, progress=progress,
                             verifier=verifier, bootstrap=bootstrap)
        _say_refused(base.refused)
        # read first: the walk then keeps the views it was told only for nodes a proxy streamed for
        sync_records = await sync_records_for(consumer, to_ms_)
        keep = report.for_service_log(args.service, nodes_with_proxies(sync_records)) if args.service else None
        dropped = Dropped()
        walker, steps, cut = await walk(consumer, base, to_ms_, node=args.node, progress=progress,
                                        on_undecodable=undecodable.append, dropped=dropped, keep=keep,
                                        verifier=verifier, bootstrap=bootstrap)
        window = {(tp.topic, tp.partition): (base.cut.stop[tp], cut.stop[tp]) for tp in cut.stop}

        def in_window(topic: str, partition: int, offset: int) -> bool:
            lo_hi = window.get((topic, partition))
            return lo_hi is not None and lo_hi[0] <= offset < lo_hi[1]

        have = set(await consumer.topics())
        recorded_rejections = {}
        if topics.REJECTIONS in have:
            unreadable = UndecodableLog(log, reader="replay log (rejections topic)")
            for record in await read_window(consumer, topics.REJECTIONS, from_ms):
                logged = decode_or_skip(record, unreadable)
                if logged is None:
                    continue
                j = logged.payload
                src = (j.source_topic, j.source_partition, j.source_offset)
                if in_window(*src):
                    recorded_rejections.setdefault(src, (record.timestamp, j))
        recorded_dead = await recorded_dead_letters(consumer, from_ms, in_window)
        identity_events, _bad = await identities.read_identity_events(consumer, from_ms + 1, to_ms_)
    converged = {key: c.as_dict() for key, c in step_convergences(steps, sync_records).items()}
    sync_entries = [report.sync_entry(lg) for lg in sync_records
                    if from_ms < lg.timestamp_ms <= to_ms_ and (args.node is None or lg.payload.node == args.node)
                    and args.service is None and lg.envelope.type in ("sync.acked", "sync.nacked")]
    dead_docs = []
    seen = set()
    for u in undecodable:
        src = (u[0], u[1], u[2])
        seen.add(src)
        rec = recorded_dead.get(src)
        if not _dead_matches(args, rec, walker, base):
            continue
        dead_docs.append(report.dead_letter_doc(u, rec))
    for src, rec in sorted(recorded_dead.items()):
        if src in seen or not _dead_matches(args, rec, walker, base):
            continue  # e.g. a fold-stage dead letter: the record decodes, the live fold raised
        dead_docs.append(report.dead_letter_doc((*src, rec["timestamp_ms"], rec["reason"]), rec))
    node_keys: set[str] = set()
    if args.node:
        for s in (base.state, walker.state):
            node_keys |= set(s.nodes.get(args.node, ()))
    doc = report.log_document(
        from_ms=from_ms, to_ms=to_ms_, service=args.service, node=args.node, steps=steps, node_keys=node_keys,
        recorded_rejections=recorded_rejections, dead_letters=dead_docs, convergence=converged,
        sync_entries=sync_entries, author_of=lambda lg: identities.author_doc(shown, lg), dropped=dropped,
    )
    # identities are not bound to node ids yet (part 2 of the trust work): --node shows none
    doc["identities"] = [] if args.node else identities.log_entries(identity_events, service=args.service)
    if args.json:
        _emit_json(doc)
    else:
        from replay import text

        console = text.console()
        text.print_log(console, doc)
        identities.print_log_section(console, doc["identities"])
    return EXIT_OK


def _dead_matches(args: argparse.Namespace, rec: dict | None, walker, base) -> bool:
    if not args.service and not args.node:
        return True
    service = rec.get("service") if rec else None
    if service is None:
        return False
    if args.service:
        return service == args.service
    for s in (base.state, walker.state):
        inst = s.node_instance(args.node)
        if inst is not None and inst.reg.service == service:
            return True
    return False


async def cmd_serve(args: argparse.Namespace, bootstrap: str) -> int:
    from replay.serve import serve_frozen

    at_ms = args.at_ms
    async with open_log(bootstrap, args.timeout) as consumer:
        first = await check_instant(consumer, at_ms, args.now_ms, what="--at")
        rebuilt = await rebuild(consumer, at_ms, use_snapshot=not args.no_snapshot, progress=RichProgress(args.progress),
                                verifier=await _verifier(args, consumer), bootstrap=bootstrap)
        rebuilt.first_ms = first
    rendered = rebuilt.rendered()
    del rebuilt  # a long-lived server keeps the rendered mesh only, not the rebuild's decoder and its memo
    return await serve_frozen(rendered, listen=args.listen, port=args.port, grace=args.grace, tls_files=args.tls_files,
                              info={"at": iso(at_ms), "at_ms": at_ms, "read_only": True},
                              ready_file=args.ready_file)


async def cmd_identities(args: argparse.Namespace, bootstrap: str) -> int:
    from replay import identities

    now = datetime.now(timezone.utc)
    at_ms = _parse(args.at, now, "--at")
    async with open_log(bootstrap, args.timeout) as consumer:
        if at_ms > to_ms(now):
            raise OutOfRange(f"--at {iso(at_ms)} is in the future")
        registry, bad, refused = await identities.registry_at(consumer, at_ms, verify=not args.insecure_events)
    doc = identities.held_document(registry, at_ms, service=args.service, undecodable=bad, refused=refused)
    if args.json:
        _emit_json(doc)
    else:
        from replay import text

        identities.print_held(text.console(), doc, limit=args.limit)
    return EXIT_OK


COMMANDS = {"at": cmd_at, "diff": cmd_diff, "log": cmd_log, "serve": cmd_serve, "identities": cmd_identities,
            "ui": ui_cli.cmd_ui}


def main(argv: Sequence[str] | None = None) -> int:
    raw = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if not raw:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    args = parser.parse_args(normalize_argv(raw))
    kafka_security.configure_from_args_or_exit(args, "replay")
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    logging.basicConfig(level=getattr(logging, str(args.log_level).upper(), logging.WARNING),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("aiokafka").setLevel(logging.ERROR)
    try:
        check_usage(args, datetime.now(timezone.utc))
    except UsageError as exc:
        print(f"replay: {exc}", file=sys.stderr)
        return exc.exit_code
    try:
        bootstrap = resolve_bootstrap(args.bootstrap)
    except NoBrokerAddress as exc:
        print(f"replay: {exc}", file=sys.stderr)
        return EXIT_BROKER
    started = time.perf_counter()
    try:
        code = asyncio.run(COMMANDS[args.command](args, bootstrap))
    except ReplayError as exc:  # (may quote names from the log)
        print(f"replay: {printable(str(exc))}", file=sys.stderr)
        return exc.exit_code
    except ReadStalled as exc:
        print(f"replay: {exc}", file=sys.stderr)
        return EXIT_BROKER
    except KafkaError as exc:
        print(f"replay: Kafka at {bootstrap} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_BROKER
    except KeyboardInterrupt:
        return 130
    log.info("done in %.3fs", time.perf_counter() - started)
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
