"""``registrar``: the write side of meshlog.

Invariants:
- Input is validated completely before anything is sent; a bad flag or rules
  document exits 2 naming the field and appends nothing.
- A multi-document ``rules apply`` is one Kafka transaction: all or nothing.
- An unreachable broker exits 3 within ``--timeout`` seconds with the address
  in the message.
- On success every appended record is printed (topic, partition, offset,
  broker timestamp); ``--json`` prints one JSON object per record instead.
- ``healthcheck`` is the long-running central checker (``registrar.healthcheck``):
  same exit codes for bad flags (2) and an unreachable broker at start (3);
  0 after SIGTERM/SIGINT once it has left its consumer group.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

import orjson

from events.admin import AppendFailed, BrokerUnavailable
from events.codec import validate_payload
from events.envelope import Envelope, new_event
from events.errors import EventValidationError
from events.producer import Appended, EventProducer, encoded_event
from events.types import (
    AccessPolicyDeleted,
    DestinationPolicyDeleted,
    InstanceDeregistered,
    InstanceHealthChanged,
    InstanceRegistered,
    Payload,
    RouteRuleDeleted,
)
from meshlog import argtypes
from events import kafka_security
from identity import renewal_cli as renewal
from meshlog.bootstrap import NoBrokerAddress, resolve_bootstrap
from projector.cli import insecure_events_default  # one switch for every folding reader
from registrar.rules_file import parse_rules

EXIT_OK = 0
EXIT_BAD_INPUT = 2
EXIT_BROKER = 3

log = logging.getLogger("registrar")

# payload field -> the flag a user typed, so errors name what they can fix
FLAG_OF_FIELD = {
    "instance_id": "--instance-id",
    "node_id": "--node-id",
    "depends_on": "--depends-on",
    "sidecar.inbound_port": "--inbound-port",
    "sidecar.outbound_port": "--outbound-port",
    "sidecar": "--inbound-port/--outbound-port",
    "labels": "--label",
}


class BadInput(Exception):
    pass


def _labels(pairs: Sequence[str]) -> dict[str, str]:
    labels: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise EventValidationError.single("labels", f"{pair!r} is not KEY=VALUE")
        if key in labels:
            raise EventValidationError.single("labels", f"{key!r} given twice")
        labels[key] = value
    return labels


def payload_from_args(args: argparse.Namespace) -> list[Payload]:
    """Turn parsed flags into validated payloads (pure; no I/O)."""
    if args.command == "publish":
        sidecar = None
        if args.inbound_port is not None or args.outbound_port is not None:
            if args.inbound_port is None or args.outbound_port is None:
                raise EventValidationError.single("sidecar", "give both --inbound-port and --outbound-port")
            sidecar = {"inbound_port": args.inbound_port, "outbound_port": args.outbound_port}
        data = {
            "service": args.service,
            "instance_id": args.instance_id,
            "address": args.address,
            "port": args.port,
            "protocol": args.protocol,
            "labels": _labels(args.label),
            "weight": args.weight,
            "node_id": args.node_id,
            "sidecar": sidecar,
            "depends_on": tuple(args.depends_on),
        }
        return [validate_payload(InstanceRegistered, data)]
    if args.command == "deregister":
        return [
            validate_payload(
                InstanceDeregistered,
                {"service": args.service, "instance_id": args.instance_id, "reason": args.reason},
            )
        ]
    if args.command == "health":
        return [
            validate_payload(
                InstanceHealthChanged,
                {
                    "service": args.service,
                    "instance_id": args.instance_id,
                    "status": args.status,
                    "reason": args.reason,
                    "observer": args.observer,
                },
            )
        ]
    if args.command == "rules" and args.rules_command == "apply":
        path = Path(args.file)
        try:
            text = sys.stdin.read() if args.file == "-" else path.read_text()
        except OSError as exc:
            raise EventValidationError.single("-f", f"cannot read {args.file}: {exc.strerror}") from None
        return parse_rules(text, source=args.file)
    if args.command == "rules" and args.rules_command == "delete":
        if args.route:
            return [validate_payload(RouteRuleDeleted, {"host": args.route, "revision": args.revision})]
        if args.access:
            return [validate_payload(AccessPolicyDeleted, {"service": args.access, "revision": args.revision})]
        return [validate_payload(DestinationPolicyDeleted, {"service": args.policy, "revision": args.revision})]
    raise AssertionError(f"unhandled command {args.command}")


def _describe(appended: Appended) -> str:
    when = datetime.fromtimestamp(appended.timestamp_ms / 1000, timezone.utc).isoformat(timespec="milliseconds")
    return (
        f"appended {appended.type} {appended.key} -> {appended.topic}"
        f" partition {appended.partition} offset {appended.offset} at {when}"
    )


UNSIGNED_WARNING = ("registrar: warning: appending unsigned events: this process has no mesh identity (no Kafka "
                    "client certificate); a projector refuses unsigned events unless it runs with --insecure-events "
                    "(or $MESHLOG_INSECURE_EVENTS=1, which also silences this warning)")


async def _append(bootstrap: str, envelopes: list[Envelope], timeout_s: float) -> list[Appended]:
    transactional = len(envelopes) > 1
    async with EventProducer(bootstrap, timeout_s=timeout_s, transactional=transactional) as producer:
        if not producer.signs and not insecure_events_default():
            # appended all the same (plaintext development writes unsigned events), but never silently: a
            # projector in its default mode will refuse every one of them
            print(UNSIGNED_WARNING, file=sys.stderr)
        if transactional:
            return await producer.append_many(envelopes)
        return [await producer.append(envelopes[0])]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="registrar",
        description="Append registrations, health transitions and routing rules to the meshlog event log.",
        epilog="Exit codes: 0 appended (or validated with --dry-run); 2 invalid input, nothing appended; "
        "3 broker unreachable (nothing appended) or the append was not acknowledged.",
    )
    parser.add_argument(
        "--bootstrap", type=argtypes.bootstrap, metavar="HOST:PORT[,HOST:PORT]",
        help="Kafka bootstrap address host:port (default: $MESHLOG_KAFKA_BOOTSTRAP, else the broker "
        "started by `meshlog kafka up`)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object per appended record")
    parser.add_argument("--timeout", type=argtypes.seconds(0, 3600), default=10.0, help="seconds to wait for the broker (default 10)")
    kafka_security.add_arguments(parser)
    parser.add_argument("--producer", help="producer identity recorded in each event (default user@host/pid)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what happens to stderr")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def instance_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--service", required=True, help="service name, e.g. reviews")
        p.add_argument("--instance-id", required=True, help="unique id of this instance within the service")

    pub = sub.add_parser("publish", help="register an instance (usually run by its sidecar)")
    instance_args(pub)
    pub.add_argument("--address", required=True, help="IP address or hostname the instance is reached at")
    pub.add_argument("--port", required=True, type=argtypes.port, help="the app's port (1-65535)")
    pub.add_argument("--protocol", default="http", help="http, tcp or grpc (default http)")
    pub.add_argument("--label", action="append", default=[], metavar="KEY=VALUE", help="label such as version=v2 or zone=a (repeatable)")
    pub.add_argument("--weight", type=int, default=1, help="load-balancing weight 1-128 (default 1)")
    pub.add_argument("--node-id", help="xDS node id of the sidecar fronting this instance")
    pub.add_argument("--inbound-port", type=argtypes.port, help="the sidecar's inbound port (traffic to this instance)")
    pub.add_argument("--outbound-port", type=argtypes.port, help="the sidecar's outbound port (the app's calls out)")
    pub.add_argument("--depends-on", action="append", default=[], metavar="SERVICE", help="a service this instance calls (repeatable)")

    dereg = sub.add_parser("deregister", help="remove an instance from the mesh")
    instance_args(dereg)
    dereg.add_argument("--reason", default="deregistered", help="why (recorded in the event)")

    health = sub.add_parser("health", help="record a health transition of an instance")
    instance_args(health)
    health.add_argument("--status", required=True, help="healthy, unhealthy or draining")
    health.add_argument("--reason", default="unspecified", help="why the status changed")
    health.add_argument("--observer", default="registrar-cli", help="who observed it (default registrar-cli)")

    rules = sub.add_parser("rules", help="apply or delete routing rules and destination policies")
    rules_sub = rules.add_subparsers(dest="rules_command", required=True, metavar="RULES_COMMAND")
    apply = rules_sub.add_parser("apply", help="upsert rules from a YAML or JSON file (one or many documents)")
    apply.add_argument("-f", "--file", required=True, help="rules file, or - for standard input")
    apply.add_argument("--dry-run", action="store_true", help="validate only; append nothing")
    delete = rules_sub.add_parser("delete", help="delete a route rule or a destination policy")
    which = delete.add_mutually_exclusive_group(required=True)
    which.add_argument("--route", metavar="HOST", help="delete the route rule for calls to HOST")
    which.add_argument("--policy", metavar="SERVICE", help="delete the destination policy of SERVICE")
    which.add_argument("--access", metavar="SERVICE",
                       help="delete the access policy of SERVICE (back to its declared callers only)")
    delete.add_argument("--revision", required=True, type=argtypes.integer(1, 2**63 - 1), help="the new revision (current + 1)")

    add_healthcheck_parser(sub)
    return parser


HEALTHCHECK_DESCRIPTION = """\
Central ("master-mode") health checking: probe registered instances and append
only health *transitions* to the log (InstanceHealthChanged, observer
healthcheck/<checker id>).

Run as many checkers as you like: they share the work through the Kafka
consumer group --group on the record-less topic meshlog.healthcheck.shards
(12 partitions = 12 shards). An instance belongs to shard
crc32("<service>/<instance_id>") % 12 and is probed only by the checker the
group assigned that shard to. Group session timeout 6 s, heartbeat 2 s: a
checker stopped with SIGTERM/SIGINT leaves the group at once and the others
take over its shards; one killed outright (kill -9) is replaced after the
6 s session timeout.

Every checker reads the whole registrations and health topics (no group,
read_committed) and folds them with the projector's fold, so it knows the
logged status of each instance: it appends "unhealthy" after --fall
consecutive failed probes of an instance logged healthy, "healthy" after
--rise consecutive passes of one logged unhealthy, and nothing otherwise.
Instances logged "draining" are not probed. The probe target is the
instance's sidecar inbound port when it has a sidecar, else its own port:
HTTP GET --http-path (2xx/3xx passes) for protocol http, a TCP connect for
tcp and grpc."""


def add_healthcheck_parser(sub) -> argparse.ArgumentParser:
    from registrar.healthcheck.checker import default_checker_id

    hc = sub.add_parser(
        "healthcheck",
        help="run a central health checker until SIGTERM/SIGINT",
        description=HEALTHCHECK_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Exit codes: 0 stopped by SIGTERM/SIGINT (group left cleanly); 2 invalid flag; "
        "3 broker unreachable at start. The broker address is --bootstrap, given here or before "
        "the subcommand (default: $MESHLOG_KAFKA_BOOTSTRAP, else `meshlog kafka up`'s broker); "
        "registrar's global --timeout bounds broker calls.",
    )
    hc.add_argument("--bootstrap", dest="hc_bootstrap", metavar="HOST:PORT", type=argtypes.bootstrap,
                    help="Kafka bootstrap address (as for the other subcommands)")
    hc.add_argument("--checker-id", default=default_checker_id(),
                    help="this checker's name, recorded as observer healthcheck/<id> (default host-pid)")
    hc.add_argument("--group", default="meshlog-healthcheck",
                    help="consumer group the checkers share shards in (default meshlog-healthcheck)")
    hc.add_argument("--interval", type=argtypes.seconds(0, 3600), default=2.0, metavar="SECONDS", help="seconds between probes of one instance (default 2.0)")
    hc.add_argument("--timeout", dest="probe_timeout", type=argtypes.seconds(0, 600), default=1.0, metavar="SECONDS",
                    help="seconds one probe may take (default 1.0)")
    hc.add_argument("--jitter", type=argtypes.number(0, 0.99), default=0.2,
                    help="probe spacing varies by +/- this fraction of --interval (default 0.2; 0 <= j < 1)")
    hc.add_argument("--fall", type=argtypes.integer(1, 1000), default=3, help="consecutive failures to mark healthy -> unhealthy (default 3)")
    hc.add_argument("--rise", type=argtypes.integer(1, 1000), default=2, help="consecutive successes to mark unhealthy -> healthy (default 2)")
    hc.add_argument("--http-path", default="/healthz", help="path probed on http instances (default /healthz)")
    hc.add_argument("--insecure-events", action="store_true", default=insecure_events_default(),
                    help="fold registrations without verifying who signed them, as a projector run with "
                    "--insecure-events (by default they are verified as the projector verifies them; also "
                    "$MESHLOG_INSECURE_EVENTS=1)")
    hc.add_argument("--status-file", metavar="PATH",
                    help="JSON rewritten on every change: checker id, assigned shards, instances checked with "
                    "their believed status and counters")
    renewal.add_arguments(hc)
    return hc


def healthcheck_main(args: argparse.Namespace) -> int:
    """``registrar healthcheck``: validate flags (exit 2), run until SIGTERM/SIGINT (exit 0), broker down (exit 3)."""
    import signal

    from registrar.healthcheck.checker import Checker, Settings, problems

    logging.getLogger().setLevel(logging.DEBUG if args.verbose else logging.INFO)
    if not args.verbose:
        logging.getLogger("aiokafka").setLevel(logging.WARNING)
    settings = Settings(
        bootstrap="",
        checker_id=args.checker_id,
        group=args.group,
        interval=args.interval,
        timeout=args.probe_timeout,
        jitter=args.jitter,
        fall=args.fall,
        rise=args.rise,
        http_path=args.http_path,
        status_file=Path(args.status_file) if args.status_file else None,
        broker_timeout=args.timeout,
        # a checker's events say which checker appended them, unless --producer says otherwise
        producer=args.producer or f"healthcheck/{args.checker_id}",
        insecure_events=args.insecure_events,
    )
    bad = problems(settings)
    if settings.status_file is not None and not settings.status_file.parent.is_dir():
        bad.append(("--status-file", f"directory {settings.status_file.parent} does not exist"))
    if bad:
        for flag, message in bad:
            print(f"registrar healthcheck: invalid input: {flag}: {message}", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        bootstrap = resolve_bootstrap(args.hc_bootstrap or args.bootstrap)
    except NoBrokerAddress as exc:
        print(f"registrar healthcheck: {exc}", file=sys.stderr)
        return EXIT_BROKER
    from dataclasses import replace

    settings = replace(settings, bootstrap=bootstrap)
    renewers = renewal.renewers_or_exit(args, "checker", "registrar healthcheck")

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await renewal.running(renewers, Checker(settings).run(stop))

    try:
        asyncio.run(run())
    except BrokerUnavailable as exc:
        print(f"registrar healthcheck: {exc}", file=sys.stderr)
        return EXIT_BROKER
    log.info("healthcheck %s stopped", settings.checker_id)
    return EXIT_OK


def _flagged(message: str) -> str:
    for field, flag in FLAG_OF_FIELD.items():
        if message.startswith(field + ":"):
            return f"{message} ({flag})"
    return message


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    kafka_security.configure_from_args_or_exit(args, "registrar")
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if args.command == "healthcheck":
        return healthcheck_main(args)
    try:
        payloads = payload_from_args(args)
    except EventValidationError as exc:
        for problem in exc.problems:
            print(f"registrar: invalid input: {_flagged(str(problem))}", file=sys.stderr)
        print("registrar: nothing was appended", file=sys.stderr)
        return EXIT_BAD_INPUT
    envelopes = [new_event(p, producer=args.producer) for p in payloads]
    try:
        for env in envelopes:
            encoded_event(env)  # refuses an event the log would refuse as too large, before connecting
    except EventValidationError as exc:
        for problem in exc.problems:
            print(f"registrar: invalid input: {problem}", file=sys.stderr)
        print("registrar: nothing was appended", file=sys.stderr)
        return EXIT_BAD_INPUT

    if getattr(args, "dry_run", False):
        for env in envelopes:
            if args.json:
                print(orjson.dumps({"valid": True, "type": env.type, "key": env.key, "topic": env.topic}).decode())
            else:
                print(f"valid {env.type} {env.key} (would append to {env.topic})")
        return EXIT_OK

    try:
        bootstrap = resolve_bootstrap(args.bootstrap)
    except NoBrokerAddress as exc:
        print(f"registrar: {exc}", file=sys.stderr)
        return EXIT_BROKER
    try:
        appended = asyncio.run(_append(bootstrap, envelopes, args.timeout))
    except AppendFailed as exc:
        outcome = "nothing was committed" if len(envelopes) > 1 else "the record may or may not be in the log"
        print(f"registrar: {exc}; {outcome}", file=sys.stderr)
        return EXIT_BROKER
    except BrokerUnavailable as exc:
        print(f"registrar: {exc}; nothing was appended", file=sys.stderr)
        return EXIT_BROKER
    for record in appended:
        log.info("appended %s", record)
        print(orjson.dumps(record.as_dict()).decode() if args.json else _describe(record))
    return EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
