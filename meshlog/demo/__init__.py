"""``meshlog demo``: the README's first command — the whole mesh, live, from a fresh clone.

It starts a fresh local Kafka broker (``--brokers 3``: a three-node KRaft
cluster, and the ``broker-kill`` scene kills one), the projector, two xds-gateway
replicas, two central health checkers, three ``reviews`` instances in two
versions and a ``web`` client, each behind its own sidecar (real Envoy), and
sends steady traffic from web to reviews. Then it plays the scenes in
``meshlog.demo.scenes`` on a live screen (or as plain lines with
``--headless``) and, at the end, replays the log. Secure by default: a mesh
CA in the work dir, the broker TLS-only with ACLs, and every process its own
identity for Kafka and xDS over mTLS (``--insecure``: plaintext).

Invariants:
- Every process it starts is stopped when it ends — normally, on Ctrl-C, on
  SIGTERM, or on an error — sidecars first so they drain and deregister;
  PDEATHSIG covers a kill -9 of the demo itself.
- Exit code: 0 every check passed; 1 a check failed; 2 bad arguments;
  3 the mesh could not be started; 130 interrupted.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import tempfile
import time
import uuid
from pathlib import Path

from meshlog import argtypes
from meshlog.demo.scenes import SCENE_FUNCS, SCENES, Demo
from meshlog.demo.view import LiveReporter, PlainReporter
from meshlog.kafka_local import MAX_BROKERS


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    demo = subparsers.add_parser(
        "demo", help="the whole mesh live: Kafka, projector, gateways, checkers, Envoy sidecars, traffic, replay",
        description=__doc__.split("\n\n")[1],
        epilog="Scenes: " + ", ".join(SCENES) + ". Exit codes: 0 all checks passed; 1 a check failed; "
        "2 bad arguments; 3 the mesh could not be started; 130 interrupted.")
    demo.add_argument("--scene", action="append", default=[], metavar="NAME",
                      help="play only this scene (repeatable; default all, in order)")
    demo.add_argument("--headless", action="store_true",
                      help="plain lines instead of the live screen, and exit when the scenes are done "
                      "(the default when standard output is not a terminal)")
    demo.add_argument("--pace", type=argtypes.seconds(0.5, 120, low_inclusive=True), default=6.0,
                      help="seconds each measurement runs (default 6)")
    demo.add_argument("--rate", type=argtypes.number(1, 2000), default=40.0, help="client requests per second (default 40)")
    demo.add_argument("--bootstrap", metavar="HOST:PORT", type=argtypes.bootstrap,
                      help="use this Kafka instead of starting a fresh one (service names then get a unique "
                      "suffix so earlier rule revisions do not collide)")
    demo.add_argument("--brokers", type=argtypes.integer(1, MAX_BROKERS), default=1, metavar="N",
                      help="start a local Kafka cluster of N nodes (each broker and controller, as `meshlog kafka up "
                      "--brokers N`) instead of one broker; with 3 or more the broker-kill scene kills one (default 1)")
    demo.add_argument("--insecure", action="store_true",
                      help="plaintext Kafka and xDS, no certificates (loopback development only; default: a mesh "
                      "CA in the work dir, mTLS with an identity per process, Kafka ACLs enforced)")
    demo.add_argument("--workdir", help="where logs and state go (default: a new temp dir, kept for reading)")
    demo.add_argument("--keep-running", action="store_true",
                      help="after the scenes, keep the mesh and traffic running until Ctrl-C "
                      "(default when the live screen is used)")
    demo.set_defaults(func=run)
    return demo


class _Interrupted(Exception):
    pass


def _on_signal(signum, _frame):
    raise _Interrupted(signal.Signals(signum).name)


def traffic_summary(demo: Demo) -> str:
    """Every failed request of the run, attributed to the scene it failed in (none hidden).

    By the time its failure arrived, not the time it was sent: a request sent in a scene's last
    milliseconds and failed by the next scene's fault (an instance that starts failing) belongs to
    the next scene."""
    total, errors = demo.traffic.total()
    scenes = sorted((t, k[len("scene:"):]) for k, t in demo.marks.items() if k.startswith("scene:"))
    by_scene: dict[str, int] = {}
    for sample in list(demo.traffic.records):
        if sample.ok:
            continue
        where = "start-up"
        for started, name in scenes:
            if sample.finished >= started:
                where = name
        by_scene[where] = by_scene.get(where, 0) + 1
    detail = ", ".join(f"{n} during {where}" for where, n in by_scene.items())
    return f"traffic over the whole run: {total} requests, {errors} failed" + (f" ({detail})" if detail else "")


def run(args: argparse.Namespace) -> int:
    unknown = [s for s in args.scene if s not in SCENES]
    problems = [f"--scene: unknown scene {s!r} (choose from {', '.join(SCENES)})" for s in unknown]
    if args.brokers > 1 and args.bootstrap:
        problems.append("--brokers: a cluster is started only without --bootstrap (the broker given is used as it is)")
    if problems:
        print("meshlog demo: " + "\n".join(problems), flush=True)
        return 2
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)  # its retries while the broker warms up are not news
    chosen = [s for s in SCENES if s in args.scene] if args.scene else list(SCENES)
    headless = args.headless or not sys.stdout.isatty()  # a live screen only makes sense on a terminal
    report = PlainReporter() if headless else LiveReporter()
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="meshlog-demo-"))
    workdir.mkdir(parents=True, exist_ok=True)
    bootstrap = args.bootstrap
    suffix = f"-{uuid.uuid4().hex[:4]}" if bootstrap else ""

    from meshlog.demo.events_tail import EventTail
    from meshlog.demo.stack import DemoStack
    from meshlog.demo.traffic import Traffic

    stack = DemoStack(workdir, bootstrap=bootstrap, suffix=suffix, say=report.say, secure=not args.insecure,
                      brokers=args.brokers)
    previous = {s: signal.signal(s, _on_signal) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    traffic = tail = None
    code = 0
    report.say(f"work dir (logs, state): {workdir}")
    try:
        try:
            begin = time.time()
            stack.start_kafka()
            stack.ensure_topics()
            tail = EventTail(stack.bootstrap, since=begin - 1).start()
            stack.start_control_plane()
            stack.start_mesh()
            traffic = Traffic(stack.sidecars["web-1"].outbound_port, stack.reviews, rate=args.rate).start()
            if traffic.wait_for(lambda w: sum(w.by_instance.values()) > 0, 60) is None:
                raise RuntimeError("web's sidecar did not route any request to reviews within 60 s")
        except (RuntimeError, AssertionError, OSError) as exc:
            report.say(f"the mesh could not be started: {exc}")
            report.say(stack.diagnostics()[-4000:])
            return 3
        demo = Demo(stack, traffic, tail, report, pace=args.pace, marks={"begin": begin, "mesh-up": time.time()})
        report.say(f"mesh up in {time.time() - begin:.1f} s; {len(stack.sidecars)} Envoy sidecars, traffic flowing")
        report.start(demo)
        for name in chosen:
            demo.marks[f"scene:{name}"] = time.time()
            try:
                SCENE_FUNCS[name](demo)
            except _Interrupted:
                raise
            except Exception as exc:  # noqa: BLE001 - one broken scene is a failed check, the others still run
                report.check(f"scene {name} ran to its end", False, f"{type(exc).__name__}: {exc}")
        report.say(traffic_summary(demo))
        for problem in tail.errors[-5:]:  # the events panel could not show these records
            report.say(f"event tail: {problem}")
        if args.keep_running or not headless:
            try:
                report.say(f"incident console (replay ui) over this run's log: {stack.start_console()}")
            except (RuntimeError, AssertionError, OSError) as exc:
                report.say(f"the incident console did not start: {exc}")
            report.scene("done", "the mesh keeps running with traffic — press Ctrl-C to stop every process")
            while True:
                time.sleep(1)
        code = 1 if report.failed else 0
    except _Interrupted as why:
        report.stop()
        print(f"\nmeshlog demo: {why} — stopping every process it started…", flush=True)
        code = 130 if not report.failed else 1
    finally:
        report.stop()
        for s, handler in previous.items():
            signal.signal(s, signal.SIG_IGN)  # a second Ctrl-C must not cut the orderly stop short
        if traffic is not None:
            traffic.stop()
        if tail is not None:
            tail.stop()
        stack.stop()
        for s, handler in previous.items():
            signal.signal(s, handler)
    passed = sum(1 for c in report.checks if c[1])
    print(f"meshlog demo: {passed}/{len(report.checks)} checks passed"
          + "".join(f"\n  FAILED {n}: {d}" for n, ok, d in report.checks if not ok)
          + f"\nlogs: {workdir}", flush=True)
    return code
