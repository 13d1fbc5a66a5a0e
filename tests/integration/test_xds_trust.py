"""Story: the gateway's gRPC shell over real TLS refuses everyone who is not the node's owner, and
every client that goes over an admission limit loses that one stream.

The real ``AdsServicer`` with the real ``TrustGuard`` behind grpc.aio's mTLS server credentials (the
same ``xds_gateway.tls`` the CLI uses), over a ``ViewCache`` filled with projector-format records
(no broker needed for this shell: the view topics' part is covered by test_xds_tls_stack.py).
Certificates come from identity/'s PKI.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

from identity import spiffe
from projector.publisher import membership_value, resource_key
from tests.support.trust import MeshCA
from xds_gateway import metrics
from xds_gateway.admission import GatewayLimits
from xds_gateway.guard import TrustGuard
from xds_gateway.protocol.limits import StreamLimits
from xds_gateway.protocol.resources import CLUSTER, LISTENER
from xds_gateway.server import AdsServicer, add_to_server
from xds_gateway.tls import TlsFiles, load_material, server_credentials
from xds_gateway.view_cache import ViewCache

D = "mesh.test"
LIMITS = GatewayLimits(max_streams_per_connection=3, max_streams=6, max_request_bytes=64 * 1024,
                       stream=StreamLimits(max_names_per_type=50, max_initial_versions=20, max_pending_nonces=4))


def _body(type_url: str, name: str) -> bytes:
    from envoy.config.cluster.v3 import cluster_pb2
    from envoy.config.listener.v3 import listener_pb2

    msg = cluster_pb2.Cluster(name=name) if type_url == CLUSTER else listener_pb2.Listener(name=name)
    return msg.SerializeToString(deterministic=True)


def make_cache() -> ViewCache:
    from xds_gateway.protocol.resources import version_of

    cache = ViewCache()
    changed: set[str] = set()
    per_node = {("web-1", "web", "web-1"), ("reviews-1", "reviews", "reviews-1")}
    cache.apply_resource(resource_key(CLUSTER, "reviews"), _body(CLUSTER, "reviews"), changed)
    for node, service, instance in sorted(per_node):
        name = f"{node}~outbound"
        cache.apply_resource(resource_key(LISTENER, name), _body(LISTENER, name), changed)
        resources = {CLUSTER: {"reviews": version_of(_body(CLUSTER, "reviews"))},
                     LISTENER: {name: version_of(_body(LISTENER, name))}}
        cache.apply_membership(node.encode(), membership_value(node, resources, (service, instance)), changed)
    cache.ready.set()
    return cache


class Gateway:
    def __init__(self, tmp: Path):
        self.ca = MeshCA(D, tmp / "ca")
        self.me = self.ca.issue(spiffe.gateway(D, "g1"), "gateway", server_names=["localhost"])
        self.cache = make_cache()
        self.guard = TrustGuard(D)
        self.files = TlsFiles(self.me.cert, self.me.key, self.me.ca)
        self.server = None
        self.port = 0

    async def start(self) -> None:
        self.server = grpc.aio.server(options=[("grpc.max_receive_message_length", LIMITS.max_request_bytes)])
        add_to_server(AdsServicer(self.cache, limits=LIMITS, guard=self.guard), self.server)
        self.port = self.server.add_secure_port("127.0.0.1:0", server_credentials(self.files, load_material(self.files)))
        await self.server.start()

    def channel(self, ident=None, *, root: bytes | None = None) -> grpc.aio.Channel:
        return channel_to(self.port, root or self.ca.bundle.read_bytes(), ident)


def channel_to(port: int, root: bytes, ident=None) -> grpc.aio.Channel:
    """A channel to an xDS server on localhost: mTLS as ``ident`` (tests.support.trust.Identity), else plaintext."""
    target = f"localhost:{port}"
    if ident is None:
        return grpc.aio.insecure_channel(target)
    creds = grpc.ssl_channel_credentials(root, ident.key_pem, ident.cert_pem)
    return grpc.aio.secure_channel(target, creds, options=[("grpc.use_local_subchannel_pool", 1)])


@pytest.fixture
async def gw(tmp_path):
    g = Gateway(tmp_path)
    await g.start()
    yield g
    await g.server.stop(0)


def dreq(node: str, type_url: str = CLUSTER, sub=(), *, nonce: str = "", irv=None):
    r = discovery_pb2.DeltaDiscoveryRequest(type_url=type_url, resource_names_subscribe=list(sub),
                                            response_nonce=nonce, initial_resource_versions=dict(irv or {}))
    r.node.id = node
    return r


def stream(channel):
    return ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).DeltaAggregatedResources()


async def first_response(channel, node: str, type_url: str = CLUSTER):
    call = stream(channel)
    await call.write(dreq(node, type_url))
    return await asyncio.wait_for(call.read(), 10)


async def refused_at_start(channel) -> tuple[grpc.StatusCode, str]:
    """Open a stream and send nothing: the gateway refuses a peer (its certificate, or a stream over an admission
    limit) at the stream's start, before it reads a request. (A request written meanwhile can race the refusal:
    grpc.aio then reports its own failed send as INTERNAL instead of the gateway's status.) Returns the status
    the stream ended with and its details."""
    call = stream(channel)
    code = await asyncio.wait_for(call.code(), 10)  # an admitted stream never ends by itself: this times out
    return code, await call.details()


async def refused_without_data(channel, node: str, type_url: str) -> grpc.aio.AioRpcError:
    """Ask for ``node``; the stream must end with an error before any resource arrives. Returns the error."""
    call = stream(channel)
    await call.write(dreq(node, type_url))
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        while True:
            msg = await asyncio.wait_for(call.read(), 10)
            assert msg is grpc.aio.EOF or not msg.resources, f"data of {node} reached a client refused it"
            if msg is grpc.aio.EOF:
                break
    return exc.value


def refused(reason: str) -> float:
    return metrics.REFUSED.labels(reason)._value.get()


async def test_the_owner_gets_its_node_and_another_instance_gets_permission_denied_and_no_data(gw):
    web1 = gw.ca.issue(spiffe.sidecar(D, "web", "web-1"), "web-1")
    async with gw.channel(web1) as ch:
        got = await first_response(ch, "web-1", LISTENER)
        assert [r.name for r in got.resources] == ["web-1~outbound"]

    impostor = gw.ca.issue(spiffe.sidecar(D, "web", "web-2"), "web-2")
    before = refused("not_owner")
    async with gw.channel(impostor) as ch:
        error = await refused_without_data(ch, "web-1", LISTENER)
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "spiffe://mesh.test/sidecar/web/web-2" in error.details() and "web/web-1" in error.details()
    assert refused("not_owner") == before + 1


async def test_roles_without_a_node_are_denied_and_an_operator_may_watch_any_node(gw):
    projector = gw.ca.issue(spiffe.projector(D), "projector")
    async with gw.channel(projector) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as exc:
            await first_response(ch, "web-1", LISTENER)
    assert exc.value.code() == grpc.StatusCode.PERMISSION_DENIED
    operator = gw.ca.issue(spiffe.operator(D, "alice"), "alice")
    async with gw.channel(operator) as ch:
        got = await first_response(ch, "web-1", LISTENER)
    assert [r.name for r in got.resources] == ["web-1~outbound"]


async def test_a_plaintext_client_is_refused(gw):
    async with gw.channel(None) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as exc:
            await first_response(ch, "web-1")
    assert exc.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_a_client_without_a_certificate_is_refused(gw):
    creds = grpc.ssl_channel_credentials(gw.ca.bundle.read_bytes())
    async with grpc.aio.secure_channel(f"localhost:{gw.port}", creds) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as exc:
            await first_response(ch, "web-1")
    assert exc.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_a_certificate_from_another_ca_is_refused(gw, tmp_path):
    other = MeshCA(D, tmp_path / "other-ca")  # same domain name, another root: still not ours
    stranger = other.issue(spiffe.sidecar(D, "web", "web-1"), "web-1")
    async with gw.channel(stranger, root=gw.ca.bundle.read_bytes()) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as exc:
            await first_response(ch, "web-1")
    assert exc.value.code() == grpc.StatusCode.UNAVAILABLE


@pytest.mark.parametrize("uri, reason", [
    (None, "no_spiffe_id"),
    ("spiffe://elsewhere.test/sidecar/web/web-1", "other_trust_domain"),
    ("spiffe://mesh.test/sidecar/web", "bad_spiffe_id"),
])
async def test_a_certificate_of_our_ca_without_a_usable_spiffe_id_is_refused(gw, uri, reason):
    odd = gw.ca.odd_cert("odd", uri)
    before = refused(reason)
    async with gw.channel(odd) as ch:
        code, _details = await refused_at_start(ch)
    assert code == grpc.StatusCode.UNAUTHENTICATED
    assert refused(reason) == before + 1


async def test_a_revoked_certificate_loses_its_open_stream_and_cannot_open_another(gw):
    web1 = gw.ca.issue(spiffe.sidecar(D, "web", "web-1"), "web-1")
    async with gw.channel(web1) as ch:
        call = stream(ch)
        await call.write(dreq("web-1", LISTENER))
        await asyncio.wait_for(call.read(), 10)
        assert gw.guard.revoke([web1.serial]) == 1
        with pytest.raises(grpc.aio.AioRpcError) as exc:
            await asyncio.wait_for(call.read(), 10)
        assert exc.value.code() == grpc.StatusCode.UNAUTHENTICATED
    async with gw.channel(web1) as ch:
        code, details = await refused_at_start(ch)
    assert code == grpc.StatusCode.UNAUTHENTICATED and "revoked" in details


async def test_a_node_not_in_the_view_gets_shared_resources_until_it_appears_owned_by_someone_else(gw):
    web3 = gw.ca.issue(spiffe.sidecar(D, "web", "web-3"), "web-3")
    async with gw.channel(web3) as ch:
        call = stream(ch)
        await call.write(dreq("web-9", LISTENER))  # wildcard on an unknown node: an empty answer
        got = await asyncio.wait_for(call.read(), 10)
        assert not got.resources
        changed: set[str] = set()
        from xds_gateway.protocol.resources import version_of

        gw.cache.apply_membership(b"web-9", membership_value(
            "web-9", {LISTENER: {"web-1~outbound": version_of(_body(LISTENER, "web-1~outbound"))}},
            ("web", "web-9")), changed)
        for listener in list(gw.cache._listeners):
            listener(changed)
        with pytest.raises(grpc.aio.AioRpcError) as exc:
            msg = await asyncio.wait_for(call.read(), 10)
            assert not msg.resources, "another instance's node reached web-3"
            await asyncio.wait_for(call.read(), 10)
        assert exc.value.code() == grpc.StatusCode.PERMISSION_DENIED


# ------------------------------------------------------------------ admission limits


async def _ends_with_resource_exhausted(call, *requests):
    for r in requests:
        await call.write(r)
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        while True:
            msg = await asyncio.wait_for(call.read(), 10)
            if msg is grpc.aio.EOF:
                break
    return exc.value


async def _still_served(ch):
    got = await first_response(ch, "web-1", LISTENER)
    assert [r.name for r in got.resources] == ["web-1~outbound"]


@pytest.mark.parametrize("limit, requests", [
    ("max_names_per_type", [dreq("web-1", CLUSTER, [f"c{i}" for i in range(51)])]),
    ("max_initial_versions", [dreq("web-1", CLUSTER, irv={f"c{i}": "1" for i in range(21)})]),
    ("max_pending_nonces", [dreq("web-1", CLUSTER)] + [dreq("web-1", CLUSTER, [f"x{i}"]) for i in range(5)]),
])
async def test_each_stream_limit_ends_that_stream_only(gw, limit, requests):
    web1 = gw.ca.issue(spiffe.sidecar(D, "web", "web-1"), "web-1")
    before = refused(limit)
    async with gw.channel(web1) as ch:
        err = await _ends_with_resource_exhausted(stream(ch), *requests)
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert refused(limit) == before + 1
        await _still_served(ch)  # the same connection serves another stream


async def test_a_request_over_the_size_cap_ends_that_stream_only(gw):
    web1 = gw.ca.issue(spiffe.sidecar(D, "web", "web-1"), "web-1")
    async with gw.channel(web1) as ch:
        big = dreq("web-1", CLUSTER, ["x" * 7000 + str(i) for i in range(10)])  # ~70 KB > 64 KiB, 10 names
        err = await _ends_with_resource_exhausted(stream(ch), big)
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        await _still_served(ch)


async def test_streams_per_connection_and_per_process_are_capped(gw):
    web1 = gw.ca.issue(spiffe.sidecar(D, "web", "web-1"), "web-1")
    before = refused("max_streams_per_connection")
    async with gw.channel(web1) as ch:
        held = []
        for _ in range(3):
            call = stream(ch)
            await call.write(dreq("web-1", LISTENER))
            await asyncio.wait_for(call.read(), 10)
            held.append(call)
        code, _details = await refused_at_start(ch)
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert refused("max_streams_per_connection") == before + 1
        # a second connection may open its own three: 6 in the process, the cap
        async with gw.channel(web1) as ch2:
            for _ in range(3):
                call = stream(ch2)
                await call.write(dreq("web-1", LISTENER))
                await asyncio.wait_for(call.read(), 10)
                held.append(call)
            async with gw.channel(web1) as ch3:
                code, details = await refused_at_start(ch3)
                assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
                assert "streams already open on this gateway" in details
            for call in held:
                call.cancel()
            held.clear()
            await asyncio.sleep(0.2)
            await _still_served(ch2)  # released slots are usable again


async def test_a_renewed_gateway_certificate_is_served_without_a_restart(gw):
    web1 = gw.ca.issue(spiffe.sidecar(D, "web", "web-1"), "web-1")
    renewed = gw.ca.issue(spiffe.gateway(D, "g1"), "gateway-renewed", server_names=["localhost"])
    from identity import pki

    pki.write_file_atomic(gw.me.key, renewed.key_pem, 0o600)
    pki.write_file_atomic(gw.me.cert, renewed.cert_pem)
    async with gw.channel(web1) as ch:
        await _still_served(ch)
        # ask the server who it is: the certificate it presented on this connection
    import ssl
    import socket

    ctx = ssl.create_default_context(cafile=str(gw.ca.bundle))
    ctx.load_cert_chain(str(web1.cert), str(web1.key))
    ctx.set_alpn_protocols(["h2"])
    with socket.create_connection(("127.0.0.1", gw.port)) as raw, ctx.wrap_socket(raw, server_hostname="localhost") as s:
        presented = s.getpeercert(binary_form=True)
    from cryptography import x509

    assert pki.serial_hex(x509.load_der_x509_certificate(presented)) == renewed.serial
