"""Faults on a real three-node KRaft cluster (issue 15, item 2): nothing acknowledged is lost.

One cluster for the module, started and restarted as a developer does (`meshlog kafka up --brokers 3`:
three detached JVMs, each broker and controller), with a `projector run` and an `xds-gateway run` on it
that are never restarted. The scenarios run in order and build on each other:

1. Broker loss under churn: the registrar's producer (idempotent, acks=all) appends registrations at
   a steady, bounded rate while the leader of ``meshlog.registrations`` is killed with SIGKILL. Every
   acknowledged append is in the log afterwards (counted), the projector and the gateway carry on by
   themselves, the gateway serves every logged instance, and the views equal ``replay --at now``. A
   real Envoy (the client's sidecar, fed by the gateway) carries requests to a real app all along: not
   one fails.
   The stall (the longest time without an acknowledgement across the kill) is printed, not asserted.
2. Broker back: `meshlog kafka status` names the dead node, `meshlog kafka up` restarts it, it
   rejoins the in-sync replicas, and the fold holds each instance once (no duplicate event in the
   log: idempotence).
3. Whole cluster restart: `meshlog kafka down --keep-data` then `up`: the same cluster at the same
   addresses; nothing is lost and the components pick up new events without a restart.

Assertions are about this module's uniquely named services and nodes; waits are bounded polls.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid

import grpc
import pytest
from aiokafka.admin import AIOKafkaAdminClient
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

from events import topics
from events import types as t
from events.admin import ensure_topics
from events.envelope import new_event
from events.kafka_security import connection_kwargs
from events.producer import EventProducer
from meshlog import failover, kafka_local
from projector.typeurls import ENDPOINT
from tests.integration.test_replay import read_views, replay_json
from meshlog.kafka_local import free_port
from proxy.bootstrap import envoy_bootstrap
from proxy.envoy_process import EnvoyProcess, endpoint_count
from tests.integration.test_sidecar_e2e import Traffic
from tests.support.apps import App
from tests.support.cluster import CliCluster
from tests.support.stack import start_gateway, start_projector, wait_until

# a cluster start (about a minute on a loaded host) is charged to the first test; a whole restart to the last
pytestmark = [pytest.mark.integration, pytest.mark.envoy, pytest.mark.timeout(600)]

RUN = uuid.uuid4().hex[:8]
P = f"cf{RUN}"
SERVICE = f"{P}-svc"  # the churned service
CLIENT = f"{P}-client"  # depends on SERVICE: its node's view holds SERVICE's endpoints
BACKEND = f"{P}-backend"  # one real app the client's Envoy sends traffic to, through every fault
CLIENT_NODE = f"{P}-client-node"
RATE_PER_S = 100  # at most; the appender never bursts to catch up
BEFORE_KILL_S, AFTER_KILL_S = 3.0, 10.0
WAIT_S = 120.0
FIGURES: dict[str, float] = {}


def registration(n: int) -> t.InstanceRegistered:
    return t.InstanceRegistered(service=SERVICE, instance_id=f"i{n}", address=f"127.1.{n // 250}.{n % 250 + 1}",
                                port=8080)


async def leader_of(bootstrap: str, topic: str, wait_s: float = 30.0) -> tuple[int, list[int]]:
    """The leader and in-sync replicas of ``topic``'s partition 0 (a topic just created may take a moment to
    show its partitions in the metadata: asked again, bounded)."""
    deadline = time.monotonic() + wait_s
    while True:
        leaders = await failover.partition_leaders(bootstrap, topic)
        if 0 in leaders or time.monotonic() > deadline:
            return leaders[0]
        await asyncio.sleep(0.5)


async def logged_registrations(bootstrap: str) -> list[tuple[str, str]]:
    """(event_id, key) of every committed registration of SERVICE in the log, in log order."""
    return [(event_id, key) for event_id, key, _where in await logged_with_offsets(bootstrap)]


async def logged_with_offsets(bootstrap: str) -> list[tuple[str, str, tuple[int, int]]]:
    """(event_id, key, (partition, offset)) of every committed registration of SERVICE in the log, in log order."""
    logged = await failover.logged_events(bootstrap, topics.REGISTRATIONS, keys=lambda key: key.startswith(SERVICE + "/"))
    return [(event_id, key, (partition, offset)) for event_id, key, partition, offset in logged]


def churn_appends(bootstrap: str) -> failover.SteadyAppends:
    """Registrations of SERVICE on a fixed clock, RATE_PER_S per second (meshlog.failover.SteadyAppends)."""
    return failover.SteadyAppends(bootstrap, lambda n: new_event(registration(n), producer=f"cluster-faults-{RUN}"),
                                  rate=RATE_PER_S)


async def served_endpoints(gateway_port: int) -> int:
    """How many endpoints of SERVICE the gateway serves CLIENT_NODE (delta xDS, as Envoy asks)."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway_port}") as channel:
        call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).DeltaAggregatedResources()
        request = discovery_pb2.DeltaDiscoveryRequest(type_url=ENDPOINT, resource_names_subscribe=[SERVICE])
        request.node.id = CLIENT_NODE
        await call.write(request)
        response = await asyncio.wait_for(call.read(), 10)
        call.cancel()
    for resource in response.resources:
        if resource.name == SERVICE:
            cla = endpoint_pb2.ClusterLoadAssignment()
            resource.resource.Unpack(cla)
            return sum(len(locality.lb_endpoints) for locality in cla.endpoints)
    return 0


def wait_served(stack, expected: int) -> None:
    seen = []

    def check() -> bool:
        seen.append(asyncio.run(served_endpoints(stack["gateway"].info["xds_port"])))
        return seen[-1] == expected

    wait_until(check, WAIT_S, f"the gateway to serve {expected} endpoints of {SERVICE} (last: {seen[-1:]})",
               interval=1.0, on_fail=stack["projector"].log_tail)


def assert_views_equal_replay(bootstrap: str) -> None:
    _resources, membership = asyncio.run(read_views(bootstrap))
    doc = replay_json(bootstrap, "--at", "now")
    replayed = {n["node"]: n["resources"] for n in doc["nodes"] if n["node"].startswith(P)}
    assert replayed == {n: m for n, m in membership.items() if n.startswith(P) and m is not None}
    assert CLIENT_NODE in replayed


@pytest.fixture(scope="module")
def kafka_cluster(tmp_path_factory):
    cluster = CliCluster(tmp_path_factory.mktemp("cluster-home"))
    try:
        cluster.bootstrap = cluster.up("--brokers", "3")
        yield cluster
    finally:
        cluster.cleanup()


@pytest.fixture(scope="module")
def stack(kafka_cluster, tmp_path_factory):
    bootstrap = kafka_cluster.bootstrap
    assert len(bootstrap.split(",")) == 3
    assert asyncio.run(ensure_topics(bootstrap)).consistent  # `up` created them: three replicas each
    app = App("b1", service=BACKEND).start()
    outbound = free_port()
    backend = t.InstanceRegistered(service=BACKEND, instance_id="b1", address="127.0.0.1", port=app.port)
    client = t.InstanceRegistered(service=CLIENT, instance_id="c1", address="127.0.0.1", port=free_port(),
                                  node_id=CLIENT_NODE,
                                  sidecar=t.SidecarPorts(inbound_port=free_port(), outbound_port=outbound),
                                  depends_on=(SERVICE, BACKEND))

    async def register() -> None:
        async with EventProducer(bootstrap) as producer:
            for payload in (backend, client):
                await producer.append(new_event(payload, producer=f"cluster-faults-{RUN}"))

    asyncio.run(register())
    workdir = tmp_path_factory.mktemp("cluster-faults")
    projector = start_projector(bootstrap, workdir, extra=["--poll-ms", "100"])
    gateway = envoy = None
    try:
        gateway = start_gateway(bootstrap, workdir, "gateway", timeout=WAIT_S)
        admin = free_port()
        envoy = EnvoyProcess(envoy_bootstrap(node_id=CLIENT_NODE, node_cluster=CLIENT, admin_port=admin,
                                             gateways=[f"127.0.0.1:{gateway.info['xds_port']}"]),
                             admin_port=admin, base_id=random.randint(1000, 60000), workdir=str(workdir / "envoy")).start()
        wait_until(lambda: endpoint_count(envoy.config_dump(), BACKEND) == 1, WAIT_S, "Envoy to hold the backend",
                   on_fail=envoy.log_tail)
        yield {"bootstrap": bootstrap, "projector": projector, "gateway": gateway, "churn": churn_appends(bootstrap),
               "envoy": envoy, "outbound": outbound}
    finally:
        if envoy is not None:
            envoy.stop()
        for proc in (gateway, projector):
            if proc is not None:
                proc.stop()
        app.stop()
        if FIGURES:
            print("\ncluster fault figures: " + ", ".join(f"{k}={v:.2f}" for k, v in FIGURES.items()))


def test_broker_loss_under_churn_loses_no_acknowledged_append(kafka_cluster, stack):
    bootstrap, churn = stack["bootstrap"], stack["churn"]
    leader, isr = asyncio.run(leader_of(bootstrap, topics.REGISTRATIONS))
    assert isr == [1, 2, 3]
    with Traffic(stack["outbound"], BACKEND) as traffic:  # through the client's Envoy to the real app
        killed_at = asyncio.run(failover.run_through(churn, BEFORE_KILL_S + AFTER_KILL_S, BEFORE_KILL_S,
                                                     lambda: kafka_cluster.kill(leader)))
    assert killed_at is not None, "the churn ended before the kill"
    assert traffic.records and not traffic.failures(), f"failed requests: {traffic.failures()[:5]}"
    FIGURES["requests_through_kill"] = len(traffic.records)
    new_leader, new_isr = asyncio.run(leader_of(bootstrap, topics.REGISTRATIONS))
    assert new_leader != leader and leader not in new_isr

    logged_at = asyncio.run(logged_with_offsets(bootstrap))
    logged = [(event_id, key) for event_id, key, _offset in logged_at]
    logged_ids = [event_id for event_id, _key in logged]
    missing = set(churn.acked) - set(logged_ids)
    assert not missing, f"{len(missing)} of {len(churn.acked)} acknowledged appends are not in the log"
    assert len(logged_ids) == len(set(logged_ids)), "an event is in the log twice"
    at = {event_id: where for event_id, _key, where in logged_at}
    assert all(at[e] == where for e, where in churn.where.items()), "an append is not where its ack said"
    figures = failover.figures(churn.ack_times(), churn.started_at, killed_at, time.monotonic())
    assert figures.first_ack_after_kill_s is not None, "nothing was acknowledged after the kill"
    FIGURES["acked"] = figures.acked
    FIGURES["unacknowledged"] = churn.failed
    FIGURES["first_ack_after_kill_s"] = figures.first_ack_after_kill_s
    FIGURES["stall_s"] = figures.stall_s
    FIGURES["events_per_s_through_kill"] = figures.acked / (BEFORE_KILL_S + AFTER_KILL_S)

    # the projector and the gateway carried on without a restart: the gateway serves every logged instance
    assert stack["projector"].alive() and stack["gateway"].alive()
    wait_served(stack, len({key for _event_id, key in logged}))
    assert_views_equal_replay(bootstrap)


def test_the_killed_broker_comes_back_catches_up_and_nothing_is_folded_twice(kafka_cluster, stack):
    bootstrap = stack["bootstrap"]
    status = kafka_cluster.kafka("status")
    assert status.returncode == 4, status.stdout  # answering, but a node is down
    [killed] = [line.split()[1] for line in status.stdout.splitlines() if "STOPPED" in line]
    started = time.monotonic()
    assert kafka_cluster.up() == bootstrap  # starts the missing node, on its data and its ports
    assert kafka_cluster.kafka("status").returncode == 0
    wait_until(lambda: asyncio.run(leader_of(bootstrap, topics.REGISTRATIONS))[1] == [1, 2, 3], WAIT_S,
               f"node {killed} to rejoin the in-sync replicas", interval=0.5)
    FIGURES["rejoin_isr_s"] = time.monotonic() - started

    asyncio.run(stack["churn"].run(1.0))  # appends with the node back
    logged = asyncio.run(logged_registrations(bootstrap))
    ids = [event_id for event_id, _key in logged]
    assert len(ids) == len(set(ids)) and set(stack["churn"].acked) <= set(ids)
    keys = {key for _event_id, key in logged}
    wait_served(stack, len(keys))
    doc = replay_json(bootstrap, "--at", "now", "--service", SERVICE)
    folded = [i for s in doc["services"] for i in s["instances"] if i["service"] == SERVICE]
    assert len(folded) == len(keys)  # each instance once in the fold
    assert_views_equal_replay(bootstrap)


def test_whole_cluster_restart_keeps_everything_and_components_reconnect(kafka_cluster, stack):
    bootstrap, churn = stack["bootstrap"], stack["churn"]
    before = asyncio.run(logged_registrations(bootstrap))
    cluster_id = kafka_local.describe_cluster(bootstrap)["cluster_id"]
    started = time.monotonic()
    kafka_cluster.down("--keep-data")
    assert kafka_cluster.up() == bootstrap  # the same addresses: clients reconnect to them
    FIGURES["cluster_restart_s"] = time.monotonic() - started
    assert kafka_local.describe_cluster(bootstrap)["cluster_id"] == cluster_id

    after = asyncio.run(logged_registrations(bootstrap))
    assert after[: len(before)] == before
    asyncio.run(churn.run(1.0))
    logged = asyncio.run(logged_registrations(bootstrap))
    assert set(churn.acked) <= {event_id for event_id, _key in logged}
    assert stack["projector"].alive() and stack["gateway"].alive()
    wait_served(stack, len({key for _event_id, key in logged}))
    assert_views_equal_replay(bootstrap)


def test_topics_ensure_reports_a_topic_with_too_few_replicas(kafka_cluster):
    """A topic made by hand with one copy on a three-broker cluster is a mismatch, reported and left as is."""
    from aiokafka.admin import NewTopic

    from events.topics import TopicSpec

    name = f"{P}-one-copy"

    async def make_and_ensure():
        admin = AIOKafkaAdminClient(**connection_kwargs(kafka_cluster.bootstrap))
        await admin.start()
        try:
            await admin.create_topics([NewTopic(name, num_partitions=1, replication_factor=1)])
        finally:
            await admin.close()
        return await ensure_topics(kafka_cluster.bootstrap, [TopicSpec(name, 1), TopicSpec(f"{P}-new", 1)])

    report = asyncio.run(make_and_ensure())
    assert report.created == [f"{P}-new"]
    # the broker's own min.insync.replicas (2 on a cluster) holds for the hand-made topic: only its copies differ
    assert [(m.topic, m.setting, m.expected, m.actual) for m in report.mismatches] == [
        (name, "replication factor", "3", "1")]
    assert str(report.mismatches[0]) == f"{name}: replication factor is '1', expected '3'"
    assert asyncio.run(ensure_topics(kafka_cluster.bootstrap, [TopicSpec(f"{P}-new", 1)])).consistent
