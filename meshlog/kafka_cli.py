"""``meshlog kafka up|down|status``: a detached local Kafka broker (or a cluster, ``--brokers N``) for development."""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
from typing import Sequence

from meshlog import kafka_local as kl
from meshlog import argtypes

log = logging.getLogger("meshlog.kafka")

# Exit codes (also shown in --help).
EXIT_OK = 0
EXIT_FAILED = 1  # up/down failed; status: not running
EXIT_NOT_ANSWERING = 3  # status: the JVM is alive but does not answer admin requests
EXIT_DEGRADED = 4  # status: the cluster answers but some of its nodes are not running

_EPILOG = f"""\
exit codes:
  up       {EXIT_OK} broker running (started now, or already running and answering), topics created
           {EXIT_FAILED} could not start (java/mvn missing, Java < 17, start-up failed or timed out),
             or could not create the topics
  down     {EXIT_OK} stopped, or nothing was running
           {EXIT_FAILED} could not stop the broker
  status   {EXIT_OK} running and answering
           {EXIT_FAILED} not running
           {EXIT_NOT_ANSWERING} process alive but not answering
           {EXIT_DEGRADED} a cluster that answers with some node not running
  2 is a usage error for every command.

files and environment:
  state file   $MESHLOG_HOME/kafka/state.json (default ~/.meshlog/kafka/state.json)
  jar cache    $MESHLOG_CACHE_DIR/kafka/{kl.KAFKA_VERSION}/libs (default ~/.cache/meshlog); filled once with mvn
  JVM options  $MESHLOG_KAFKA_JVM_OPTS (default: {' '.join(kl.DEFAULT_JVM_OPTS)})

'up' prints the bootstrap address as the last line of stdout (e.g. 127.0.0.1:41235),
so `BOOTSTRAP=$(meshlog kafka up)` works; progress goes to stderr.
"""


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``kafka`` (with ``up``, ``down``, ``status``) on an argparse sub-parser collection."""
    kafka = subparsers.add_parser(
        "kafka",
        help="run a local Kafka broker or cluster (no Docker)",
        description=f"Run Apache Kafka {kl.KAFKA_VERSION} (KRaft) as detached JVMs on 127.0.0.1, on free ports "
        "chosen at the first start: one node, or --brokers N nodes, each broker and controller with its own data "
        "dir and ports.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = kafka.add_subparsers(dest="kafka_command", metavar="ACTION", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--json", action="store_true", help="print a JSON object on stdout instead of plain text")
        p.add_argument("-v", "--verbose", action="store_true", help="debug logging on stderr")
        p.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors on stderr")

    up = actions.add_parser(
        "up",
        help="start the broker in the background (no-op if already running) and create meshlog's topics",
        description="Start a detached broker and return once it answers admin requests. If the broker "
        "recorded in the state file is already running and answering, just print its address. Either way, "
        "create meshlog's topics that are missing (as `meshlog topics ensure` does).",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    up.add_argument("--data-dir", metavar="DIR",
                    help="broker data directory (default: a new temp dir); an existing meshlog data dir is reused")
    up.add_argument("--port", type=argtypes.port, metavar="PORT", help="client port of a single broker (default: a free port)")
    up.add_argument("--brokers", type=argtypes.integer(1, kl.MAX_BROKERS), metavar="N",
                    help="run a cluster of N nodes (each broker and controller; topics replicated min(3, N) times, "
                    "min.insync.replicas 2 from 3 nodes); default: what the data dir holds, else 1")
    up.add_argument("--secure", action="store_true",
                    help="TLS listeners that require a client certificate from the broker's CA (DATA_DIR/tls/ca), "
                    "principals from the certificate's role, ACLs enforced; prints the admin identity's "
                    "MESHLOG_KAFKA_* variables (apply the ACL table with `meshlog topics ensure`)")
    up.add_argument("--timeout", type=argtypes.seconds(0, 3600), default=kl.DEFAULT_START_TIMEOUT, metavar="SECONDS",
                    help="start-up timeout, not counting the one-time jar download (default: %(default)s)")
    common(up)
    up.set_defaults(kafka_func=_cmd_up)

    down = actions.add_parser(
        "down",
        help="stop the broker (every node of a cluster) and delete its data dir",
        description="SIGTERM the broker (each node of a cluster in turn), wait, SIGKILL if needed; delete its "
        "data dir unless --keep-data (then a plain `up` restarts the same broker or cluster on the same ports).",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    down.add_argument("--keep-data", action="store_true", help="keep the data directory")
    down.add_argument("--timeout", type=argtypes.seconds(0, 3600, low_inclusive=True), default=kl.DEFAULT_STOP_TIMEOUT, metavar="SECONDS",
                      help="wait this long after SIGTERM before SIGKILL (default: %(default)s)")
    common(down)
    down.set_defaults(kafka_func=_cmd_down)

    status = actions.add_parser(
        "status",
        help="is the broker running? (exit 0 if running and answering)",
        description="Report whether the broker in the state file is running and answering.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    common(status)
    status.set_defaults(kafka_func=_cmd_status)

    fetch = actions.add_parser(
        "fetch",
        help="download the broker jars into the cache (once; no-op when cached)",
        description="Resolve Apache Kafka's broker jars and a log4j2 SLF4J binding from Maven Central into "
        "the cache, so a later start needs no network.",
    )
    common(fetch)
    fetch.set_defaults(kafka_func=_cmd_fetch)

    kafka.set_defaults(func=run)
    return kafka


def _cmd_fetch(args: argparse.Namespace) -> int:
    libs = kl.ensure_kafka_jars()
    _emit(args, str(libs), {"libs": str(libs), "version": kl.KAFKA_VERSION})
    return EXIT_OK


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at emit time (safe under pytest's capture)."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(logging.Formatter("meshlog kafka: %(message)s"))

    @property  # type: ignore[override]
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def _setup_logging(args: argparse.Namespace) -> None:
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    log.setLevel(level)
    if not any(isinstance(h, _StderrHandler) for h in log.handlers):
        log.addHandler(_StderrHandler())


def run(args: argparse.Namespace) -> int:
    """Dispatch a parsed ``meshlog kafka ...`` command; returns the exit code."""
    _setup_logging(args)
    try:
        return args.kafka_func(args)
    except kl.KafkaLauncherError as e:
        log.error("%s", e)
        return EXIT_FAILED


def _emit(args: argparse.Namespace, text: str, payload: dict) -> None:
    print(json.dumps(payload, sort_keys=True) if args.json else text, flush=True)


def _cmd_up(args: argparse.Namespace) -> int:
    st = kl.up(data_dir=args.data_dir, port=args.port, start_timeout=args.timeout, secure=args.secure,
               brokers=args.brokers)
    assert st.state is not None
    if not st.already_running:
        log.info("started Kafka %s at %s (pid %d); data %s; log %s",
                 st.state.version, st.state.bootstrap, st.state.pid, st.state.data_dir, st.state.log_path)
    if st.state.security_env:
        log.info("secure broker; CA in %s/tls/ca. The admin identity (a super user):\n%s", st.state.data_dir,
                 "\n".join(f"  export {k}={shlex.quote(v)}" for k, v in sorted(st.state.security_env.items())))
    if not _ensure_topics(st.state.bootstrap, st.state.security_env):
        return EXIT_FAILED
    _emit(args, st.state.bootstrap, st.as_dict())
    return EXIT_OK


def _ensure_topics(bootstrap: str, security_env: dict[str, str] | None) -> bool:
    """meshlog's topics (and, on a secure broker, its ACL table) on the broker ``up`` started or found,
    so the commands after it work as they are."""
    import asyncio

    from events.admin import BrokerUnavailable, ensure_topics
    from events.kafka_security import KafkaSecurity

    security = KafkaSecurity.from_env(security_env) if security_env else None
    logging.getLogger("events.admin").setLevel(logging.ERROR)  # its warnings are reported below, once
    try:
        report = asyncio.run(ensure_topics(bootstrap, security=security))
    except (BrokerUnavailable, RuntimeError) as exc:
        log.error("the broker at %s is up but meshlog's topics could not be created (%s); "
                  "try `meshlog topics ensure`", bootstrap, exc)
        return False
    if report.created:
        log.info("created topics %s", ", ".join(report.created))
    for mismatch in report.mismatches:
        log.warning("topic differs from meshlog's spec (left unchanged): %s", mismatch)
    if security is not None and security.secure:
        from meshlog.kafka_acl_apply import AclApplyFailed, apply_acls

        try:
            apply_acls(bootstrap, security)
        except AclApplyFailed as exc:
            log.error("the ACL table could not be applied (%s); try `meshlog topics ensure` as the admin", exc)
            return False
        log.info("applied meshlog's ACL table")
    return True


def _cmd_down(args: argparse.Namespace) -> int:
    before = kl.down(keep_data=args.keep_data, timeout=args.timeout)
    if before.state is None:
        log.info("no Kafka broker recorded in %s; nothing to stop", kl.state_file_path())
    payload = {"stopped": before.running, **({"pid": before.state.pid} if before.state else {})}
    _emit(args, "stopped" if before.running else "not running", payload)
    return EXIT_OK


def _cmd_status(args: argparse.Namespace) -> int:
    st = kl.status()
    if st.running and st.answering and st.state is not None and st.state.nodes:
        nodes = st.state.nodes
        lines = [f"running {st.state.bootstrap} nodes={len(st.nodes_running)}/{len(nodes)} data={st.state.data_dir}"]
        lines += [f"  node {n['node_id']} {'running' if n['node_id'] in st.nodes_running else 'STOPPED'} "
                  f"{n['bootstrap']} pid={n['pid']} log={n['log_path']}" for n in nodes]
        text = "\n".join(lines)
        code = EXIT_OK if st.complete else EXIT_DEGRADED
    elif st.running and st.answering:
        assert st.state is not None
        text = f"running {st.state.bootstrap} pid={st.state.pid} data={st.state.data_dir} log={st.state.log_path}"
        code = EXIT_OK
    elif st.running:
        assert st.state is not None
        text = f"not answering {st.state.bootstrap} pid={st.state.pid} log={st.state.log_path}"
        code = EXIT_NOT_ANSWERING
    else:
        text = "not running"
        code = EXIT_FAILED
    _emit(args, text, st.as_dict() if st.running else {"running": False, "answering": False})
    return code


def main(argv: Sequence[str] | None = None) -> int:
    """Stand-alone entry point: ``python -m meshlog.kafka_cli up|down|status``."""
    parser = argparse.ArgumentParser(prog="meshlog")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["kafka", *(sys.argv[1:] if argv is None else argv)])
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
