"""The demo's ``broker-kill`` scene: a Kafka node dies under load and nothing notices.

Only on a cluster (``meshlog demo --brokers 3``; on one broker the scene says it is skipped). While
web's traffic to reviews flows, an operator appends registrations and deregistrations of a churned
service (``catalog``: a pool of instances that all answer at one real app, so the central checkers
find them healthy) at a steady rate (``meshlog.failover.SteadyAppends``), and the node leading
partition 0 of ``meshlog.registrations`` is killed with SIGKILL on its own clock. Then the node is
restarted on its data and ports and the scene waits until it is back in the in-sync replicas of every
partition of ``meshlog.registrations``.

Checks (each can fail): no request of web fails from the first append to the rejoin; every
acknowledged append is in the log, once (counted from the offsets where the scene began); the
projector, the gateways and the sidecars kept running (none restarted); the killed node is back in
sync. The stall and acknowledgements per second before/during/after the kill are reported, not
checked. At the end the scene deregisters what it left registered.

Invariants: every wait is bounded; the node is restarted from the thread that started the cluster
(its JVM dies with that thread: PDEATHSIG), whatever happened before.
"""

from __future__ import annotations

import asyncio
import time

from events import topics
from events.envelope import new_event
from events.producer import EventProducer
from events.types import InstanceDeregistered, InstanceRegistered
from meshlog import failover
from meshlog.demo_app import DemoApp
from meshlog.procs import wait_until

RATE = 50.0  # appends per second: steady, bounded (the demo runs beside everything else on a laptop)
BEFORE_KILL_S = 2.0
AFTER_KILL_S = 8.0  # at least; the scene's pace if longer
POOL = 8  # churned instances: event n registers or deregisters catalog-(n % POOL)
REJOIN_S = 180.0
PRODUCER = "meshlog-demo"


def broker_kill(demo) -> None:
    stack = demo.stack
    cluster = stack.cluster
    if cluster is None:
        demo.report.scene("broker-kill", "skipped: the demo runs on one Kafka broker (--brokers 3 starts a cluster)")
        return
    service = "catalog" + stack.suffix
    demo.report.scene("broker-kill", f"kill -9 the Kafka node leading {topics.REGISTRATIONS} while web's traffic "
                                     f"flows and registrations of {service} are appended")
    app = DemoApp("catalog", "v1", service).start()
    registered: set[str] = set()

    def churn_event(n: int):
        instance = f"catalog-{n % POOL}"
        if instance in registered:
            registered.discard(instance)
            return new_event(InstanceDeregistered(service=service, instance_id=instance, reason="churn"),
                             producer=PRODUCER)
        registered.add(instance)
        return new_event(InstanceRegistered(service=service, instance_id=instance, address="127.0.0.1",
                                            port=app.port, labels={"version": "v1"}), producer=PRODUCER)

    try:
        _play(demo, cluster, service, churn_event)
    finally:
        try:
            _deregister(stack.bootstrap, service, sorted(registered))
        finally:
            app.stop()


def _play(demo, cluster, service: str, churn_event) -> None:
    stack, report = demo.stack, demo.report
    leaders = asyncio.run(failover.partition_leaders(stack.bootstrap, topics.REGISTRATIONS))
    victim, isr = leaders[0]
    since = asyncio.run(failover.end_offsets(stack.bootstrap, topics.REGISTRATIONS))
    report.step(f"node {victim} leads partition 0 of {topics.REGISTRATIONS} (in sync: {isr}); appending "
                f"{RATE:g} registrations/s of {service}, the kill comes after {BEFORE_KILL_S:g} s")
    appends = failover.SteadyAppends(stack.bootstrap, churn_event, rate=RATE)
    after_s = max(AFTER_KILL_S, demo.pace)
    started_wall = time.time()
    try:
        killed_at = asyncio.run(failover.run_through(appends, BEFORE_KILL_S + after_s, BEFORE_KILL_S,
                                                     lambda: cluster.kill(victim)))
        ended = time.monotonic()
        figures = failover.figures(appends.ack_times(), appends.started_at, killed_at or ended, ended)
        report.step(f"killed node {victim} with SIGKILL {BEFORE_KILL_S:g} s in; {figures.text()}")
    finally:
        restarted = time.monotonic()
        problem = _restart(report, cluster, victim)

    def in_sync() -> bool:
        now = asyncio.run(failover.partition_leaders(stack.bootstrap, topics.REGISTRATIONS))
        return all(victim in replicas for _leader, replicas in now.values())

    if problem is None:
        try:
            wait_until(in_sync, REJOIN_S, f"node {victim} to rejoin the in-sync replicas", interval=0.5)
        except AssertionError:  # wait_until's timeout
            problem = f"node {victim} not in sync within {REJOIN_S:g} s"
    in_sync_s = time.monotonic() - restarted
    window = demo.traffic.window(started_wall, time.time())
    from meshlog.demo.scenes import split_text

    report.check("no request fails while a Kafka node is killed and restarts", window.requests > 0 and window.errors == 0,
                 split_text(window))
    logged = asyncio.run(failover.logged_events(stack.bootstrap, topics.REGISTRATIONS, since,
                                                keys=lambda key: key.startswith(service + "/")))
    ids = [event_id for event_id, _key, _partition, _offset in logged]
    missing = set(appends.acked) - set(ids)
    twice = len(ids) - len(set(ids))
    report.check("every acknowledged append is in the log, once", bool(appends.acked) and not missing and not twice,
                 f"{appends.next_n} appended, {len(appends.acked)} acknowledged, {len(ids)} in the log, "
                 f"{len(missing)} lost, {twice} twice, {appends.failed} not acknowledged in time")
    exited = [f"{name} {state}" for name, _pid, state in stack.processes()
              if not name.startswith("kafka") and state != "running"]
    report.check("the projector, the gateways and the sidecars carried on (none restarted)", not exited,
                 "; ".join(exited) or f"{len(stack.processes())} processes running")
    report.check(f"the killed node is back in the in-sync replicas of {topics.REGISTRATIONS}", problem is None,
                 problem or f"node {victim} restarted; in sync on every partition {in_sync_s:.1f} s after its "
                 "restart began")


def _restart(report, cluster, victim: int) -> str | None:
    """Start the killed node again on its data and ports (from this thread: the cluster's own, see the
    invariants); what went wrong, or None."""
    from meshlog.kafka_local import KafkaLauncherError

    if cluster.node(victim).is_running():
        return None
    report.step(f"restarting node {victim} on its data and ports")
    try:
        cluster.start(only=[victim])
    except KafkaLauncherError as exc:
        return f"node {victim} did not restart: {str(exc).splitlines()[0][:300]}"
    return None


def _deregister(bootstrap: str, service: str, instances: list[str]) -> None:
    """The churned instances the scene left registered leave the mesh (one transaction)."""
    if not instances:
        return

    async def go() -> None:
        async with EventProducer(bootstrap, transactional=True) as producer:
            await producer.append_many([new_event(InstanceDeregistered(service=service, instance_id=i,
                                                                       reason="demo scene over"), producer=PRODUCER)
                                        for i in instances])

    asyncio.run(go())
