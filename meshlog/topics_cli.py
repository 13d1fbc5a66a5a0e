"""``meshlog topics ensure``: create missing topics, report mismatched ones (never change them)."""

from __future__ import annotations

import argparse
import asyncio
import sys

import orjson

from events.admin import BrokerUnavailable, ensure_topics
from meshlog.bootstrap import NoBrokerAddress, resolve_bootstrap


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    topics = subparsers.add_parser("topics", help="manage meshlog's Kafka topics")
    actions = topics.add_subparsers(dest="topics_command", required=True, metavar="ACTION")
    ensure = actions.add_parser(
        "ensure",
        help="create missing topics; set size caps (max.message.bytes); report (never change) other settings that differ",
        epilog="Exit codes: 0 all topics as specified; 1 some topic differs (left unchanged); 3 broker unreachable.",
    )
    ensure.add_argument("--bootstrap", help="Kafka address (default: $MESHLOG_KAFKA_BOOTSTRAP or `meshlog kafka up`'s)")
    ensure.add_argument("--json", action="store_true", help="print the report as JSON")
    ensure.set_defaults(func=run_ensure)
    return topics


def run_ensure(args: argparse.Namespace) -> int:
    try:
        report = asyncio.run(ensure_topics(resolve_bootstrap(args.bootstrap)))
    except (NoBrokerAddress, BrokerUnavailable) as exc:
        print(f"meshlog: {exc}", file=sys.stderr)
        return 3
    if args.json:
        print(orjson.dumps({"created": report.created, "ok": report.ok,
                            "updated": [f"{m.topic}: {m.setting} {m.actual} -> {m.expected}" for m in report.updated],
                            "mismatches": [str(m) for m in report.mismatches]}).decode())
    else:
        for name in report.created:
            print(f"created  {name}")
        for name in report.ok:
            print(f"ok       {name}")
        for m in report.updated:
            print(f"updated  {m.topic}: {m.setting} {m.actual} -> {m.expected}")
        for mismatch in report.mismatches:
            print(f"MISMATCH {mismatch} (left unchanged)")
    return 0 if report.consistent else 1
