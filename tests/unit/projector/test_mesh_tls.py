"""Stories about sidecar-to-sidecar mTLS: given these events, this node's inbound side admits exactly these SPIFFE ids.

A sidecar registered with a trust domain gets an inbound listener that
requires a mesh client certificate and an RBAC policy admitting the services
that depend on its service (declared or subscribed), the health checkers, and
whatever its service's access policy opens (HTTP/gRPC: per route, in its
inbound route configuration over RDS; TCP: in the listener); its clusters to
secure services verify their SPIFFE ids. A sidecar without one keeps today's
plaintext config.
"""

from __future__ import annotations

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.rbac.v3 import rbac_pb2 as rbac_config_pb2
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as rbac_http_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.extensions.filters.network.rbac.v3 import rbac_pb2 as rbac_network_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, tls_pb2

from events import types as t
from projector import mesh_tls
from projector.render import CLUSTER, LISTENER, ROUTE, render, render_all
from projector.state import state_from_bytes, state_to_bytes
from tests.unit.projector.helpers import Log, fold_log

D = "mesh.local"
URI = common_pb2.SubjectAltNameMatcher.URI


def _secure(log: Log, service: str, instance: str, address: str, *, node: str, deps=(), protocol="http", at=None):
    sc = t.SidecarPorts(inbound_port=15006, outbound_port=15001, trust_domain=D)
    return log.append(
        t.InstanceRegistered(service=service, instance_id=instance, address=address, port=8080, node_id=node,
                             sidecar=sc, depends_on=tuple(deps), protocol=protocol),
        at,
    )


def _mesh() -> Log:
    log = Log()
    _secure(log, "reviews", "r1", "10.0.1.1", node="reviews-1")
    _secure(log, "web", "w1", "10.0.0.1", node="web-1", deps=("reviews",))
    _secure(log, "ratings", "t1", "10.0.2.1", node="ratings-1")
    _secure(log, "details", "d1", "10.0.3.1", node="details-1", deps=("ratings",))
    return log


def _inbound(state, node: str) -> listener_pb2.Listener:
    return render(state, node)[LISTENER][f"{node}~inbound"]


def _hcm(listener: listener_pb2.Listener) -> hcm_pb2.HttpConnectionManager:
    hcm = hcm_pb2.HttpConnectionManager()
    listener.filter_chains[0].filters[0].typed_config.Unpack(hcm)
    return hcm


def _admitted(state, node: str) -> tuple[str, ...] | None:
    """The URI SAN prefixes ``node``'s inbound RBAC admits; None if its inbound listener has no RBAC filter.

    TCP: the network filter in the listener. HTTP: the per-route policy of the inbound route
    configuration's virtual host (the listener's own RBAC filter admits nobody by itself).
    """
    out = render(state, node)
    chain = out[LISTENER][f"{node}~inbound"].filter_chains[0]
    for f in chain.filters:
        if f.name == mesh_tls.RBAC_NETWORK_FILTER:
            msg = rbac_network_pb2.RBAC()
            f.typed_config.Unpack(msg)
            return _principals(msg.rules)
    hcm = _hcm(out[LISTENER][f"{node}~inbound"])
    if mesh_tls.RBAC_HTTP_FILTER not in [hf.name for hf in hcm.http_filters]:
        return None
    assert hcm.rds.route_config_name == f"{node}~inbound" and not hcm.HasField("route_config")
    [vhost] = out[ROUTE][f"{node}~inbound"].virtual_hosts
    per_route = rbac_http_pb2.RBACPerRoute()
    vhost.typed_per_filter_config[mesh_tls.RBAC_HTTP_FILTER].Unpack(per_route)
    return _principals(per_route.rbac.rules)


def _principals(rules: rbac_config_pb2.RBAC) -> tuple[str, ...]:
    assert rules.action == rbac_config_pb2.RBAC.ALLOW
    assert list(rules.policies) == [mesh_tls.POLICY_NAME]
    policy = rules.policies[mesh_tls.POLICY_NAME]
    return tuple(p.authenticated.principal_name.prefix for p in policy.principals)


def _checker() -> str:
    return f"spiffe://{D}/checker/"


def test_inbound_admits_exactly_the_declared_callers_and_the_checkers():
    state, _ = fold_log(_mesh().events)
    assert _admitted(state, "reviews-1") == (_checker(), f"spiffe://{D}/sidecar/web/")
    assert _admitted(state, "ratings-1") == (_checker(), f"spiffe://{D}/sidecar/details/")
    # nobody declared web: only the checkers may reach it
    assert _admitted(state, "web-1") == (_checker(),)


def test_inbound_requires_a_mesh_client_certificate_from_file_sds():
    state, _ = fold_log(_mesh().events)
    chain = _inbound(state, "reviews-1").filter_chains[0]
    assert chain.transport_socket.name == "envoy.transport_sockets.tls"
    ctx = tls_pb2.DownstreamTlsContext()
    chain.transport_socket.typed_config.Unpack(ctx)
    assert ctx.require_client_certificate.value is True
    common = ctx.common_tls_context
    sds = common.tls_certificate_sds_secret_configs[0]
    assert (sds.name, sds.sds_config.path_config_source.path) == ("meshlog_workload", "sds/workload.json")
    assert sds.sds_config.path_config_source.watched_directory.path == "sds"
    trust = common.combined_validation_context.validation_context_sds_secret_config
    assert (trust.name, trust.sds_config.path_config_source.path) == ("meshlog_trust", "sds/trust.json")
    # the RBAC filter runs before the router; by itself (a route without a policy) it admits nobody
    hcm = _hcm(_inbound(state, "reviews-1"))
    assert [f.name for f in hcm.http_filters] == ["envoy.filters.http.rbac", "envoy.filters.http.router"]
    base = rbac_http_pb2.RBAC()
    hcm.http_filters[0].typed_config.Unpack(base)
    assert base.rules.action == rbac_config_pb2.RBAC.ALLOW and not base.rules.policies


def test_a_cluster_to_a_secure_service_verifies_its_spiffe_id_and_presents_ours():
    state, _ = fold_log(_mesh().events)
    cluster = render(state, "web-1")[CLUSTER]["reviews"]
    ctx = tls_pb2.UpstreamTlsContext()
    cluster.transport_socket.typed_config.Unpack(ctx)
    common = ctx.common_tls_context
    assert common.tls_certificate_sds_secret_configs[0].name == "meshlog_workload"
    sans = common.combined_validation_context.default_validation_context.match_typed_subject_alt_names
    assert [(m.san_type, m.matcher.prefix) for m in sans] == [(URI, f"spiffe://{D}/sidecar/reviews/")]


def test_both_ends_speak_tls_1_3_only_so_the_callers_certificate_is_never_sent_in_clear():
    state, _ = fold_log(_mesh().events)
    upstream = tls_pb2.UpstreamTlsContext()
    render(state, "web-1")[CLUSTER]["reviews"].transport_socket.typed_config.Unpack(upstream)
    downstream = tls_pb2.DownstreamTlsContext()
    _inbound(state, "reviews-1").filter_chains[0].transport_socket.typed_config.Unpack(downstream)
    tls13 = common_pb2.TlsParameters.TLSv1_3
    for ctx in (upstream, downstream):
        params = ctx.common_tls_context.tls_params
        # Envoy's client default is at most TLS 1.2, where the client certificate crosses in clear text
        assert (params.tls_minimum_protocol_version, params.tls_maximum_protocol_version) == (tls13, tls13)


def test_a_subscription_counts_as_a_declaration_and_unsubscribing_closes_it_again():
    log = _mesh()
    log.subscribe("details", "d1", "reviews")
    state, decisions = fold_log(log.events)
    assert decisions == []
    assert _admitted(state, "reviews-1") == (
        _checker(), f"spiffe://{D}/sidecar/details/", f"spiffe://{D}/sidecar/web/")
    log.unsubscribe("details", "d1", "reviews")
    state, _ = fold_log(log.events)
    assert _admitted(state, "reviews-1") == (_checker(), f"spiffe://{D}/sidecar/web/")


def test_the_last_caller_leaving_closes_the_door():
    log = _mesh()
    log.deregister("web", "w1")
    state, _ = fold_log(log.events)
    assert _admitted(state, "reviews-1") == (_checker(),)


def test_an_access_policy_opens_a_service_to_the_whole_mesh_or_to_named_services():
    log = _mesh()
    log.append(t.AccessPolicyUpserted(service="reviews", revision=1, allow="mesh"))
    state, decisions = fold_log(log.events)
    assert decisions == []
    assert _admitted(state, "reviews-1") == (_checker(), f"spiffe://{D}/sidecar/")
    log.append(t.AccessPolicyUpserted(service="reviews", revision=2, also=("ratings",)))
    state, _ = fold_log(log.events)
    assert _admitted(state, "reviews-1") == (
        _checker(), f"spiffe://{D}/sidecar/ratings/", f"spiffe://{D}/sidecar/web/")
    log.append(t.AccessPolicyDeleted(service="reviews", revision=3))
    state, _ = fold_log(log.events)
    assert _admitted(state, "reviews-1") == (_checker(), f"spiffe://{D}/sidecar/web/")


def test_access_policies_are_revision_checked_and_refused_with_their_reason():
    log = _mesh()
    log.append(t.AccessPolicyUpserted(service="reviews", revision=2, allow="mesh"))
    log.append(t.AccessPolicyDeleted(service="ratings", revision=1))
    log.append(t.AccessPolicyUpserted(service="reviews", revision=1, also=("reviews",)))
    state, decisions = fold_log(log.events)
    assert [(d.kind, d.name, d.revision) for d in decisions] == [
        ("access_policy", "reviews", 2), ("access_policy", "ratings", 1), ("access_policy", "reviews", 1)]
    assert "the first revision must be 1" in decisions[0].reason
    assert "no access policy for 'ratings'" in decisions[1].reason
    assert "the service itself" in decisions[2].reason
    # refused: the door stays as the graph says
    assert _admitted(state, "reviews-1") == (_checker(), f"spiffe://{D}/sidecar/web/")


def test_a_tcp_service_gets_the_network_rbac_filter_and_tls():
    log = Log()
    _secure(log, "db", "db1", "10.0.5.1", node="db-1", protocol="tcp")
    _secure(log, "web", "w1", "10.0.0.1", node="web-1", deps=("db",))
    state, _ = fold_log(log.events)
    lis = _inbound(state, "db-1")
    assert [f.name for f in lis.filter_chains[0].filters] == [
        "envoy.filters.network.rbac", "envoy.filters.network.tcp_proxy"]
    assert "db-1~inbound" not in render(state, "db-1")[ROUTE]  # per connection: no routes to carry it
    assert _admitted(state, "db-1") == (_checker(), f"spiffe://{D}/sidecar/web/")
    assert lis.filter_chains[0].transport_socket.name == "envoy.transport_sockets.tls"


def test_a_sidecar_without_a_mesh_identity_keeps_the_plaintext_config():
    log = Log()
    log.register("reviews", "r1", "10.0.1.1", node_id="reviews-1", sidecar=(15006, 15001))
    log.register("web", "w1", "10.0.0.1", node_id="web-1", sidecar=(15006, 15001), depends_on=("reviews",))
    state, _ = fold_log(log.events)
    lis = _inbound(state, "reviews-1")
    assert not lis.filter_chains[0].HasField("transport_socket")
    assert _admitted(state, "reviews-1") is None
    assert _hcm(lis).HasField("route_config") and set(render(state, "reviews-1")[ROUTE]) == {"reviews-1~outbound"}
    cluster: cluster_pb2.Cluster = render(state, "web-1")[CLUSTER]["reviews"]
    assert not cluster.HasField("transport_socket")


def test_incremental_render_follows_the_graph_and_the_policy():
    log = _mesh()
    before, _ = fold_log(log.events)
    prev = render_all(before)
    steps = [
        lambda lg: lg.subscribe("details", "d1", "reviews"),
        lambda lg: _secure(lg, "web", "w2", "10.0.0.2", node="web-2", deps=("reviews",)),  # same caller service
        lambda lg: lg.append(t.AccessPolicyUpserted(service="ratings", revision=1, allow="mesh")),
        lambda lg: lg.deregister("web", "w1"),
        lambda lg: lg.deregister("web", "w2"),
        lambda lg: _secure(lg, "details", "d1", "10.0.3.2", node="details-1"),  # keeps its subscription
        lambda lg: lg.unsubscribe("details", "d1", "reviews"),
    ]
    touched, relistened = [], []
    for change in steps:
        change(log)
        after, _ = fold_log(log.events)
        inc = render_all(after, previous=prev)
        full = render_all(after)
        assert (inc.resources, inc.membership, inc.problems) == (full.resources, full.membership, full.problems)
        touched.append((ROUTE, "reviews-1~inbound") in inc.changed)
        relistened.append((LISTENER, "reviews-1~inbound") in inc.changed)
        prev = inc
    # a second instance of a service that already called reviews changes nothing on reviews' door
    assert touched == [True, False, False, False, True, False, True]
    # the door is the route: reviews' listener never changes, so Envoy never drains its open connections, and
    # a caller admitted by a new declaration is admitted from its next request on a connection already open
    assert relistened == [False] * len(steps)


def test_state_round_trips_access_policies_and_trust_domains():
    log = _mesh()
    log.append(t.AccessPolicyUpserted(service="reviews", revision=1, allow="mesh"))
    state, _ = fold_log(log.events)
    back = state_from_bytes(state_to_bytes(state))
    assert back == state
    assert back.services["reviews"].trust_domain == D
    assert back.caller_services("reviews") == {"web"}


def test_a_plaintext_state_serializes_as_before():
    log = Log()
    log.register("reviews", "r1", "10.0.1.1", node_id="reviews-1", sidecar=(15006, 15001))
    state, _ = fold_log(log.events)
    data = state_to_bytes(state)
    assert b'"access"' not in data
    assert b'"services":[["reviews",["http",8080,' in data and b'"reviews/r1"]]' in data


@pytest.mark.envoy
def test_envoy_validate_mode_accepts_the_secure_rendering(tmp_path):
    """Real Envoy builds the secure inbound listeners (HTTP with RBAC per route, TCP) and mTLS clusters, SDS files in its cwd."""
    import json
    import subprocess

    from envoy.config.cluster.v3 import cluster_pb2 as c_pb2

    from identity import spiffe
    from meshlog.xds_trust import load_tls_files
    from proxy.sds import SidecarTls, write_secrets
    from tests.support.trust import MeshCA
    from tests.unit.projector.test_envoy_accepts import _as_json, _envoy, _hcm_of, _set_hcm

    envoy = _envoy()
    log = _mesh()
    _secure(log, "db", "db1", "10.0.5.1", node="db-1", protocol="tcp")
    _secure(log, "api", "a1", "10.0.6.1", node="api-1", deps=("db", "reviews"))
    log.append(t.AccessPolicyUpserted(service="ratings", revision=1, allow="mesh"))
    state, _ = fold_log(log.events)
    ca = MeshCA(D, tmp_path / "ca")
    ident = ca.issue(spiffe.sidecar(D, "api", "a1"), "a1")
    write_secrets(tmp_path / "run" / mesh_tls.SDS_DIR, load_tls_files(SidecarTls(ident.cert, ident.key, ident.ca)))
    clusters, listeners = {}, {}
    for node in ("reviews-1", "db-1", "api-1", "ratings-1"):
        res = render(state, node)
        for name, c in res[CLUSTER].items():
            c = c_pb2.Cluster.FromString(c.SerializeToString())
            if c.type == c_pb2.Cluster.EDS:
                c.type = c_pb2.Cluster.STATIC
                c.ClearField("eds_cluster_config")
            clusters[name] = _as_json(c)
        for name, lis in res[LISTENER].items():
            if name.endswith("~inbound"):  # the outbound listener's RDS is checked by test_envoy_accepts
                lis = listener_pb2.Listener.FromString(lis.SerializeToString())
                lis.address.socket_address.address = "127.0.0.1"
                lis.address.socket_address.port_value = 20000 + len(listeners)  # validate mode binds nothing
                hcm = _hcm_of(lis)
                if hcm is not None:  # its RDS routes inline (the RBAC policy per virtual host)
                    assert hcm.rds.route_config_name == name
                    hcm.route_config.CopyFrom(res[ROUTE][name])
                    hcm.ClearField("rds")
                    _set_hcm(lis, hcm)
                listeners[name] = _as_json(lis)
    assert any("transport_socket" in c for c in clusters.values())
    bootstrap = {"node": {"id": "validate", "cluster": "meshlog"},
                 "static_resources": {"clusters": list(clusters.values()), "listeners": list(listeners.values())}}
    (tmp_path / "run" / "bootstrap.json").write_text(json.dumps(bootstrap))
    proc = subprocess.run([envoy, "--mode", "validate", "-c", "bootstrap.json", "--log-level", "warn"],
                          cwd=tmp_path / "run", capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_replay_shows_who_each_service_admits_and_why():
    from replay.report import mesh_document

    log = _mesh()
    log.append(t.AccessPolicyUpserted(service="ratings", revision=1, allow="mesh"))
    state, _ = fold_log(log.events)
    doc = mesh_document(state, None, at_ms=log.now, source={})
    by_name = {s["name"]: s for s in doc["services"]}
    assert (by_name["reviews"]["trust_domain"], by_name["reviews"]["callers"], by_name["reviews"]["access_policy"]) == (
        D, ["web"], None)
    assert by_name["ratings"]["callers"] == ["details"]
    assert by_name["ratings"]["access_policy"] == {"revision": 1, "allow": "mesh", "also": []}
