"""Story: the real stack over mTLS. A Kafka broker, the projector, an `xds-gateway run` serving only
TLS, and two `meshlog-sidecar run` Envoys with workload certificates from identity/'s PKI.

- Envoy gets its config from the TLS gateway and traffic flows through the mesh.
- The sidecar's certificate is renewed during traffic: the agent rewrites the SDS file (atomic
  rename), Envoy loads the new certificate without a restart (`/certs` on its admin shows the new
  serial) and no request fails.
- The owner of each node comes from the projector's membership record: through the real gateway,
  another instance's certificate asking for the client's node gets PERMISSION_DENIED, counted in
  /metrics.
- A revocation appended to meshlog.identities closes the revoked certificate's open stream.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid

import grpc
import pytest
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

from events.admin import ensure_topics
from events.envelope import new_event
from events.producer import EventProducer
from identity import pki, records, spiffe
from identity.pki import IdentityFiles
from tests.integration.test_sidecar_e2e import Traffic, send, start_sidecar
from tests.support.apps import App
from tests.support.stack import metric_sum, metrics, start_gateway, start_projector, wait_until
from tests.support.trust import MeshCA

pytestmark = [pytest.mark.integration, pytest.mark.envoy]

D = "mesh.it"
LISTENER = "type.googleapis.com/envoy.config.listener.v3.Listener"


def files(ident) -> IdentityFiles:
    return IdentityFiles(cert=ident.cert, key=ident.key, bundle=ident.ca)


def presented_serials(sidecar) -> set[int]:
    """Serials of the certificates Envoy's TLS contexts hold now (its admin /certs)."""
    doc = json.loads(sidecar.admin("/certs"))
    return {int(c["serial_number"], 16) for ctx in doc.get("certificates", ()) for c in ctx.get("cert_chain", ())}


async def first_answer(port: int, ident, node_id: str):
    creds = grpc.ssl_channel_credentials(ident.ca_pem, ident.key_pem, ident.cert_pem)
    async with grpc.aio.secure_channel(f"127.0.0.1:{port}", creds) as ch:
        call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(ch).DeltaAggregatedResources()
        req = discovery_pb2.DeltaDiscoveryRequest(type_url=LISTENER)
        req.node.id = node_id
        await call.write(req)
        return await asyncio.wait_for(call.read(), 15)


def test_mtls_mesh_renews_the_workload_certificate_during_traffic_and_refuses_impostors(kafka_bootstrap, tmp_path):
    asyncio.run(ensure_topics(kafka_bootstrap))
    ca = MeshCA(D, tmp_path / "ca")
    sfx = uuid.uuid4().hex[:6]
    srv, cli = f"srv{sfx}", f"cli{sfx}"
    gw_ident = ca.issue(spiffe.gateway(D, "g1"), "gateway", server_names=["127.0.0.1", "localhost"])
    s1_ident = ca.issue(spiffe.sidecar(D, srv, "s1"), "s1")
    c1_ident = ca.issue(spiffe.sidecar(D, cli, "c1"), "c1")
    apps = {"s1": App("s1", "v1", srv).start(), "c1": App("c1", "v1", cli).start()}
    started = []
    try:
        started.append(start_projector(kafka_bootstrap, tmp_path))
        gateway = start_gateway(kafka_bootstrap, tmp_path, "gateway-tls", identity=files(gw_ident))
        started.append(gateway)
        address = f"127.0.0.1:{gateway.info['xds_port']}"
        s1 = start_sidecar("s1", tmp_path, kafka_bootstrap, [address], service=srv, instance="s1",
                           app_port=apps["s1"].port, identity=files(s1_ident))
        started.append(s1)
        c1 = start_sidecar("c1", tmp_path, kafka_bootstrap, [address], service=cli, instance="c1",
                           app_port=apps["c1"].port, depends_on=(srv,), identity=files(c1_ident))
        started.append(c1)

        def reachable():
            try:
                return send(c1.outbound_port, srv, 2)["s1"] == 2
            except OSError:
                return False

        wait_until(reachable, 90, "the client's Envoy to get its config over mTLS and reach s1", interval=0.3,
                   on_fail=lambda: c1.log_tail() + gateway.log_tail())
        assert int(c1_ident.serial, 16) in presented_serials(c1)

        # renewal during traffic: a new key and certificate for the same identity, replaced in place
        renewed = ca.issue(spiffe.sidecar(D, cli, "c1"), "c1-renewed")
        with Traffic(c1.outbound_port, srv) as traffic:
            time.sleep(1.0)
            pki.write_file_atomic(c1_ident.key, renewed.key_pem, 0o600)
            pki.write_file_atomic(c1_ident.cert, renewed.cert_pem)
            wait_until(lambda: int(renewed.serial, 16) in presented_serials(c1), 30,
                       "Envoy to load the renewed certificate over SDS", on_fail=c1.log_tail)
            envoy_pid = c1.status()["envoy"]["pid"]
            time.sleep(1.5)
        assert c1.status()["envoy"]["pid"] == envoy_pid  # no restart
        assert int(c1_ident.serial, 16) not in presented_serials(c1)
        assert len(traffic.records) > 20
        assert traffic.failures() == [], traffic.failures()[:5]

        # the impostor: s1's valid certificate asking for c1's node, through the real gateway
        before = metric_sum(metrics(gateway.info["http_port"]), "meshlog_xds_refused_total", reason="not_owner")
        with pytest.raises(grpc.aio.AioRpcError) as exc:
            asyncio.run(first_answer(gateway.info["xds_port"], s1_ident, f"{cli}-c1"))
        assert exc.value.code() == grpc.StatusCode.PERMISSION_DENIED
        after = metric_sum(metrics(gateway.info["http_port"]), "meshlog_xds_refused_total", reason="not_owner")
        assert after == before + 1
        assert asyncio.run(first_answer(gateway.info["xds_port"], s1_ident, f"{srv}-s1")).resources

        # revocation from the log closes the revoked certificate's open stream (and refuses it from then on)
        probe = ca.issue(spiffe.sidecar(D, srv, "s1"), "s1-probe")

        async def revoked_while_streaming():
            creds = grpc.ssl_channel_credentials(probe.ca_pem, probe.key_pem, probe.cert_pem)
            async with grpc.aio.secure_channel(f"127.0.0.1:{gateway.info['xds_port']}", creds) as ch:
                call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(ch).DeltaAggregatedResources()
                req = discovery_pb2.DeltaDiscoveryRequest(type_url=LISTENER)
                req.node.id = f"{srv}-s1"
                await call.write(req)
                assert (await asyncio.wait_for(call.read(), 15)).resources
                async with EventProducer(kafka_bootstrap) as producer:
                    await producer.append(new_event(records.revoked(probe.spiffe_id.uri, probe.serial,
                                                                    reason="test", revoked_by="test")))
                return await asyncio.wait_for(call.read(), 30)

        with pytest.raises(grpc.aio.AioRpcError) as exc:
            asyncio.run(revoked_while_streaming())
        assert exc.value.code() == grpc.StatusCode.UNAUTHENTICATED and "revoked" in exc.value.details()
    finally:
        for process in reversed(started):
            process.stop()
        for app in apps.values():
            app.stop()


GRPC_XDS_CLIENT = """
import sys, grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
channel = grpc.insecure_channel("xds:///" + sys.argv[1])
reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=float(sys.argv[2]),
                                                   wait_for_ready=True)
print(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))
"""


def _grpc_xds_client(tmp_path, name: str, server_uri: str, node_id: str, cluster: str, channel_creds: list, target: str,
                     timeout: float = 30.0):
    import os
    import subprocess
    import sys

    path = tmp_path / f"{name}-bootstrap.json"
    path.write_text(json.dumps({"xds_servers": [{"server_uri": server_uri, "channel_creds": channel_creds,
                                                 "server_features": ["xds_v3"]}],
                                "node": {"id": node_id, "cluster": cluster, "locality": {}}}))
    env = {**os.environ, "GRPC_XDS_BOOTSTRAP": str(path)}
    if os.environ.get("MESHLOG_DEBUG_XDS"):
        env.update(GRPC_VERBOSITY="debug", GRPC_TRACE="xds_client,xds_resolver")
    return subprocess.run([sys.executable, "-c", GRPC_XDS_CLIENT, target, str(timeout)], capture_output=True, text=True,
                          timeout=90, env=env)


def test_a_proxyless_grpcio_client_gets_its_config_over_mtls(kafka_bootstrap, tmp_path):
    """grpcio's xDS bootstrap with TLS channel credentials from files (gRFC A65): the client presents its
    workload certificate to the TLS-only gateway and resolves xds:///<service> through it."""
    import subprocess
    import sys
    from concurrent import futures

    from grpc_health.v1 import health, health_pb2, health_pb2_grpc

    from meshlog.kafka_local import free_port

    asyncio.run(ensure_topics(kafka_bootstrap))
    ca = MeshCA(D, tmp_path / "ca")
    sfx = uuid.uuid4().hex[:6]
    greeter, client = f"greeter{sfx}", f"gclient{sfx}"
    gw_ident = ca.issue(spiffe.gateway(D, "g1"), "gateway", server_names=["127.0.0.1", "localhost"])
    me = ca.issue(spiffe.sidecar(D, client, "c1"), "client")
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    health_servicer = health.HealthServicer()
    health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    started = []
    try:
        started.append(start_projector(kafka_bootstrap, tmp_path))
        # gRPC and HTTP on separate addresses: /metrics on 127.0.0.2 only
        gateway = start_gateway(kafka_bootstrap, tmp_path, "gateway-grpc-tls", identity=files(gw_ident),
                                extra=("--http-listen", "127.0.0.2"))
        started.append(gateway)
        import urllib.error
        import urllib.request

        http = gateway.info["http_port"]
        with urllib.request.urlopen(f"http://127.0.0.2:{http}/ready", timeout=5) as ready:
            assert ready.status == 200
        with pytest.raises(urllib.error.URLError):
            urllib.request.urlopen(f"http://127.0.0.1:{http}/ready", timeout=5)
        registrar = [str(__import__("pathlib").Path(sys.executable).parent / "registrar"), "--bootstrap",
                     kafka_bootstrap, "publish"]
        for argv in (["--service", greeter, "--instance-id", "g1", "--address", "127.0.0.1", "--port", str(port),
                      "--protocol", "grpc"],
                     ["--service", client, "--instance-id", "c1", "--address", "127.0.0.1", "--port",
                      str(free_port()), "--protocol", "grpc", "--node-id", f"{client}-node", "--depends-on", greeter]):
            done = subprocess.run([*registrar, *argv], capture_output=True, text=True, timeout=60)
            assert done.returncode == 0, done.stderr
        tls_creds = [{"type": "tls", "config": {"ca_certificate_file": str(me.ca), "certificate_file": str(me.cert),
                                                "private_key_file": str(me.key)}}]
        uri = f"127.0.0.1:{gateway.info['xds_port']}"
        result = _grpc_xds_client(tmp_path, "tls", uri, f"{client}-node", client, tls_creds, greeter)
        (tmp_path / "grpc-client.log").write_text(result.stderr)
        assert result.returncode == 0, result.stderr[-3000:] + "\n" + gateway.log_tail()
        assert result.stdout.strip() == "SERVING"
        # and the same client with plaintext channel creds gets nothing from the TLS-only gateway
        plain = _grpc_xds_client(tmp_path, "plain", uri, f"{client}-node", client, [{"type": "insecure"}], greeter,
                                 timeout=8)
        assert plain.returncode != 0 and "SERVING" not in plain.stdout
    finally:
        server.stop(0)
        for process in reversed(started):
            process.stop()
