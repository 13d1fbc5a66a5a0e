"""``meshlog topics ensure``: create missing topics, report (never change) mismatched ones; on a secure
broker also apply the ACL table (``events.kafka_acls``), adding what is missing."""

from __future__ import annotations

import argparse
import asyncio
import sys

import orjson

from events import kafka_security
from events.admin import BrokerUnavailable, NotAuthorized, ensure_topics
from meshlog import argtypes
from meshlog.bootstrap import NoBrokerAddress, resolve_bootstrap

EXIT_NOT_AUTHORIZED = 4


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    topics = subparsers.add_parser("topics", help="manage meshlog's Kafka topics")
    actions = topics.add_subparsers(dest="topics_command", required=True, metavar="ACTION")
    ensure = actions.add_parser(
        "ensure",
        help="create missing topics; set size caps (max.message.bytes); report (never change) other settings that "
             "differ; apply ACLs (secure broker)",
        epilog="Exit codes: 0 all topics as specified; 1 some topic differs (left unchanged); 2 bad security "
               f"settings; 3 broker unreachable; {EXIT_NOT_AUTHORIZED} this identity may not create the topics or "
               "apply the ACLs (or applying them failed). With a security protocol "
               "other than PLAINTEXT the ACL table is applied too (needs a super user's identity).",
    )
    ensure.add_argument("--bootstrap", type=argtypes.bootstrap, metavar="HOST:PORT[,HOST:PORT]", help="Kafka address (default: $MESHLOG_KAFKA_BOOTSTRAP or `meshlog kafka up`'s)")
    ensure.add_argument("--json", action="store_true", help="print the report as JSON")
    ensure.add_argument(
        "--add-partitions", action="store_true",
        help="raise a topic with fewer partitions than meshlog's spec to the spec's count (an upgrade: new "
             "records of a key may then go to another partition than its old ones; see README, Scaling out). "
             "Without it such a topic is reported and left unchanged",
    )
    kafka_security.add_arguments(ensure)
    ensure.set_defaults(func=run_ensure)
    return topics


def run_ensure(args: argparse.Namespace) -> int:
    try:
        security = kafka_security.configure_from_args(args)
    except kafka_security.KafkaSecurityError as exc:
        print(f"meshlog: {exc}", file=sys.stderr)
        return 2
    try:
        bootstrap = resolve_bootstrap(args.bootstrap)
        report = asyncio.run(ensure_topics(bootstrap, add_partitions=args.add_partitions))
    except (NoBrokerAddress, BrokerUnavailable) as exc:
        print(f"meshlog: {exc}", file=sys.stderr)
        return 3
    except NotAuthorized as exc:
        print(f"meshlog: {exc}", file=sys.stderr)
        return EXIT_NOT_AUTHORIZED
    acls = None
    if security.secure:
        from meshlog.kafka_acl_apply import AclApplyFailed, apply_acls

        try:
            acls = apply_acls(bootstrap, security)
        except AclApplyFailed as exc:
            print(f"meshlog: {exc}", file=sys.stderr)
            return EXIT_NOT_AUTHORIZED
    if args.json:
        out = {"created": report.created, "ok": report.ok,
               "updated": [f"{m.topic}: {m.setting} {m.actual} -> {m.expected}" for m in report.updated],
               "mismatches": [str(m) for m in report.mismatches]}
        if acls is not None:
            out["acls"] = {"created": acls.created, "present": acls.present, "extra": acls.extra}
        print(orjson.dumps(out).decode())
    else:
        for name in report.created:
            print(f"created  {name}")
        for name in report.ok:
            print(f"ok       {name}")
        for m in report.updated:
            print(f"updated  {m.topic}: {m.setting} {m.actual} -> {m.expected}")
        for mismatch in report.mismatches:
            print(f"MISMATCH {mismatch} (left unchanged)")
        if acls is not None:
            print(f"acls     {acls.created} created, {acls.present} already present, "
                  f"{acls.extra} not in meshlog's table (left in place)")
    return 0 if report.consistent else 1
