"""Stories about the render: given these events, node X receives exactly these resources."""

from __future__ import annotations

from envoy.config.core.v3 import health_check_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2

from events import types as t
from projector import naming
from projector.render import (
    CLUSTER,
    ENDPOINT,
    LISTENER,
    ROUTE,
    TYPE_URLS,
    node_ids,
    node_versions,
    node_view,
    proxyless_closure,
    render,
    render_all,
    render_names,
)
from projector.render_view import Renderer
from tests.unit.projector.helpers import Log, fold_log, route


def names(view) -> dict[str, set[str]]:
    return {type_url: set(named) for type_url, named in view.items()}


def _bookinfo() -> Log:
    log = Log()
    log.register("productpage", "p1", "10.0.0.1", 9080, node_id="productpage-1", sidecar=(15006, 15001),
                 depends_on=("reviews", "details"))
    log.register("details", "d1", "10.0.0.2", 9080, node_id="details-1", sidecar=(15006, 15001))
    log.register("reviews", "r1", "10.0.0.3", 9080, labels={"version": "v1", "zone": "a"}, node_id="reviews-1",
                 sidecar=(15006, 15001), depends_on=("ratings",))
    log.register("reviews", "r2", "10.0.0.4", 9080, labels={"version": "v2", "zone": "b"}, node_id="reviews-2",
                 sidecar=(15006, 15001), depends_on=("ratings",))
    log.register("ratings", "a1", "10.0.0.5", 9080, node_id="ratings-1", sidecar=(15006, 15001))
    return log


# ---------------------------------------------------------------- scoping


def test_node_receives_only_its_dependencies():
    s, _ = fold_log(_bookinfo().events)
    assert names(render(s, "productpage-1")) == {
        CLUSTER: {"reviews", "details", "productpage-1~local"},
        ENDPOINT: {"reviews", "details"},
        LISTENER: {"productpage-1~outbound", "productpage-1~inbound"},
        ROUTE: {"productpage-1~outbound"},
    }
    assert names(render(s, "reviews-1")) == {
        CLUSTER: {"ratings", "reviews-1~local"},
        ENDPOINT: {"ratings"},
        LISTENER: {"reviews-1~outbound", "reviews-1~inbound"},
        ROUTE: {"reviews-1~outbound"},
    }
    # a leaf: only its own listeners and local cluster
    assert names(render(s, "ratings-1")) == {
        CLUSTER: {"ratings-1~local"}, ENDPOINT: set(), LISTENER: {"ratings-1~outbound", "ratings-1~inbound"},
        ROUTE: {"ratings-1~outbound"},
    }


def test_unknown_node_gets_nothing():
    s, _ = fold_log(_bookinfo().events)
    assert render(s, "nobody") == {u: {} for u in TYPE_URLS}
    assert node_view(s, "nobody").names == {u: () for u in TYPE_URLS}


def test_every_node_has_a_membership_entry_and_versions_match_inputs():
    s, _ = fold_log(_bookinfo().events)
    rm = render_all(s)
    assert sorted(rm.membership) == node_ids(s) == [
        "details-1", "productpage-1", "ratings-1", "reviews-1", "reviews-2"
    ]
    for node, per_type in rm.membership.items():
        assert set(per_type) == set(TYPE_URLS)
        single = render(s, node)
        for type_url, named in per_type.items():
            assert set(named) == set(single[type_url])
            for name, version in named.items():
                body = rm.resources[(type_url, name)]
                assert version == rm.versions[(type_url, name)] == node_versions(s, node)[type_url][name]
                r = Renderer(s)
                assert version == r.inputs_version(type_url, name, r.inputs(type_url, name, node))
                assert single[type_url][name].SerializeToString(deterministic=True) == body
    assert rm.problems == ()


def test_shared_resources_are_the_same_bytes_for_every_node():
    s, _ = fold_log(_bookinfo().events)
    rm = render_all(s)
    assert rm.membership["reviews-1"][CLUSTER]["ratings"] == rm.membership["reviews-2"][CLUSTER]["ratings"]
    # per-node resources carry the node id in their name
    for (type_url, name) in rm.resources:
        if naming.is_per_node(name):
            assert any(name.startswith(naming.escape_node(n) + "~") for n in rm.membership)


def test_outbound_route_has_a_virtual_host_per_dependency_with_exact_domains():
    s, _ = fold_log(_bookinfo().events)
    rc = render(s, "productpage-1")[ROUTE]["productpage-1~outbound"]
    assert [(vh.name, list(vh.domains)) for vh in rc.virtual_hosts] == [
        ("details", ["details", "details:15001"]),
        ("reviews", ["reviews", "reviews:15001"]),
        ("~on-demand", ["*"]),  # any other host: its cluster is asked for on demand
    ]
    for vh in rc.virtual_hosts[:-1]:
        assert [(r.match.prefix, r.route.cluster) for r in vh.routes] == [("/", vh.name)]


def test_listeners_bind_where_documented_and_use_rds_over_ads():
    s, _ = fold_log(_bookinfo().events)
    out = render(s, "reviews-1")[LISTENER]
    ob, ib = out["reviews-1~outbound"], out["reviews-1~inbound"]
    assert (ob.address.socket_address.address, ob.address.socket_address.port_value) == ("127.0.0.1", 15001)
    assert (ib.address.socket_address.address, ib.address.socket_address.port_value) == ("10.0.0.3", 15006)
    hcm = hcm_pb2.HttpConnectionManager()
    ob.filter_chains[0].filters[0].typed_config.Unpack(hcm)
    assert hcm.rds.route_config_name == "reviews-1~outbound" and hcm.rds.config_source.HasField("ads")
    assert [f.name for f in hcm.http_filters] == ["envoy.filters.http.on_demand", "envoy.filters.http.router"]
    assert hcm.strip_any_host_port  # the on-demand catch-all names the cluster by :authority
    ib.filter_chains[0].filters[0].typed_config.Unpack(hcm)
    assert hcm.route_config.virtual_hosts[0].routes[0].route.cluster == "reviews-1~local"
    local = render(s, "reviews-1")[CLUSTER]["reviews-1~local"]
    sa = local.load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address
    assert (sa.address, sa.port_value) == ("127.0.0.1", 9080)


def test_inbound_listener_binds_any_address_for_a_hostname_instance():
    log = Log()
    log.register("a", "1", "a-1.internal", 80, node_id="a-1", sidecar=(15006, 15001))
    s, _ = fold_log(log.events)
    ib = render(s, "a-1")[LISTENER]["a-1~inbound"]
    assert ib.address.socket_address.address == "0.0.0.0"


# ---------------------------------------------------------------- endpoints: health, weights, zones, subsets


def test_endpoints_carry_health_weight_zone_and_sidecar_port():
    log = Log()
    log.register("web", "w", node_id="w", sidecar=(15006, 15001), depends_on=("api",))
    log.register("api", "a1", "10.0.0.1", 8080, labels={"zone": "b"}, weight=7, sidecar=(15006, 15001))
    log.register("api", "a2", "10.0.0.2", 8080, labels={"zone": "a"})
    log.register("api", "a3", "10.0.0.3", 8080)
    log.register("api", "a4", "10.0.0.4", 8080, labels={"zone": "a"})
    log.health("api", "a2", "unhealthy")
    log.health("api", "a4", "draining")
    s, _ = fold_log(log.events)
    cla = render(s, "w")[ENDPOINT]["api"]
    got = [
        (loc.locality.zone, ep.endpoint.address.socket_address.address, ep.endpoint.address.socket_address.port_value,
         health_check_pb2.HealthStatus.Name(ep.health_status), ep.load_balancing_weight.value)
        for loc in cla.endpoints for ep in loc.lb_endpoints
    ]
    assert got == [
        ("", "10.0.0.3", 8080, "HEALTHY", 1),
        ("a", "10.0.0.2", 8080, "UNHEALTHY", 1),
        ("a", "10.0.0.4", 8080, "DRAINING", 1),
        ("b", "10.0.0.1", 15006, "HEALTHY", 7),
    ]


def _canary() -> Log:
    log = Log()
    log.register("web", "w", node_id="w", sidecar=(15006, 15001), depends_on=("reviews",))
    log.register("reviews", "r1", "10.0.0.1", labels={"version": "v1"})
    log.register("reviews", "r2", "10.0.0.2", labels={"version": "v2"})
    log.register("reviews", "r3", "10.0.0.3", labels={"version": "v2", "track": "beta"})
    log.policy("reviews", 1, {"v1": {"version": "v1"}, "v2": {"version": "v2"}, "beta": {"version": "v2", "track": "beta"}},
               lb_policy="least_request")
    log.rule("reviews", 1, route(("v2", 100), headers=[t.HeaderMatch(name="x-canary", exact="1")]),
             route(("v1", 99), ("v2", 1), timeout_ms=1500, retries=t.RetryPolicy(attempts=3)))
    return log


def test_subsets_and_weights():
    s, decisions = fold_log(_canary().events)
    assert decisions == []
    out = render(s, "w")
    # only the subset clusters the rule sends traffic to ("beta" is defined but unused)
    assert set(out[CLUSTER]) == {"reviews", "reviews|v1", "reviews|v2", "w~local"}
    assert set(out[ENDPOINT]) == {"reviews", "reviews|v1", "reviews|v2"}
    addrs = lambda cla: [ep.endpoint.address.socket_address.address for loc in cla.endpoints for ep in loc.lb_endpoints]  # noqa: E731
    assert addrs(out[ENDPOINT]["reviews|v1"]) == ["10.0.0.1"]
    assert addrs(out[ENDPOINT]["reviews|v2"]) == ["10.0.0.2", "10.0.0.3"]
    assert addrs(out[ENDPOINT]["reviews"]) == ["10.0.0.1", "10.0.0.2", "10.0.0.3"]
    assert out[CLUSTER]["reviews|v1"].lb_policy == out[CLUSTER]["reviews"].lb_policy != 0
    vh = out[ROUTE]["w~outbound"].virtual_hosts[0]
    canary, split, default = vh.routes
    assert canary.match.headers[0].name == "x-canary" and canary.route.cluster == "reviews|v2"
    assert [(c.name, c.weight.value) for c in split.route.weighted_clusters.clusters] == [
        ("reviews|v1", 99), ("reviews|v2", 1)
    ]
    assert split.route.timeout.ToMilliseconds() == 1500 and split.route.retry_policy.num_retries.value == 3
    assert (default.match.prefix, default.route.cluster) == ("/", "reviews")


def test_zero_weight_destinations_are_left_out():
    log = _canary()
    log.rule("reviews", 2, route(("v1", 100), ("v2", 0)))
    s, decisions = fold_log(log.events)
    assert decisions == []
    out = render(s, "w")
    assert set(out[CLUSTER]) == {"reviews", "reviews|v1", "w~local"}
    assert out[ROUTE]["w~outbound"].virtual_hosts[0].routes[0].route.cluster == "reviews|v1"


def test_last_valid_rule_keeps_serving_after_a_rejected_one():
    log = _canary()
    before, _ = fold_log(log.events)
    log.rule("reviews", 2, route(("v9", 100)))  # unknown subset
    log.rule("reviews", 4, route(("v1", 100)))  # revision gap
    after, decisions = fold_log(log.events)
    assert [d.revision for d in decisions] == [2, 4]
    assert render_all(after).resources == render_all(before).resources


def test_deleting_the_rule_falls_back_to_the_default_route():
    log = _canary()
    log.delete_rule("reviews", 2)
    s, decisions = fold_log(log.events)
    assert decisions == []
    out = render(s, "w")
    assert set(out[CLUSTER]) == {"reviews", "w~local"}
    assert [r.name for r in out[ROUTE]["w~outbound"].virtual_hosts[0].routes] == ["default"]


def test_rule_destination_in_another_service_joins_the_closure():
    log = Log()
    log.register("web", "w", node_id="w", sidecar=(15006, 15001), depends_on=("reviews",))
    log.register("reviews", "r1", "10.0.0.1")
    log.register("legacy", "l1", "10.0.0.9")
    log.register("other", "o1", "10.0.0.8")
    log.rule("reviews", 1, route((None, 90), (None, 10, "legacy")))
    log.rule("legacy", 1, route((None, 100, "other")))  # not followed: web never calls legacy by name
    s, decisions = fold_log(log.events)
    assert decisions == []
    assert set(render(s, "w")[CLUSTER]) == {"reviews", "legacy", "w~local"}


# ---------------------------------------------------------------- render-time cross-topic check


def test_rule_to_an_unregistered_service_is_not_served_and_reported():
    log = Log()
    log.register("web", "w", node_id="w", sidecar=(15006, 15001), depends_on=("reviews",))
    log.register("reviews", "r1", "10.0.0.1")
    log.rule("reviews", 1, route((None, 50), (None, 50, "ghost")))
    s, decisions = fold_log(log.events)
    assert decisions == []  # cross-topic: not the fold's call
    rm = render_all(s)
    assert set(rm.membership["w"][CLUSTER]) == {"reviews", "w~local"}
    vh = render(s, "w")[ROUTE]["w~outbound"].virtual_hosts[0]
    assert [r.name for r in vh.routes] == ["default"]
    assert len(rm.problems) == 1 and "'ghost'" in rm.problems[0] and "'reviews'" in rm.problems[0]
    # once ghost registers, the rule is served
    log.register("ghost", "g1", "10.0.0.2")
    s, _ = fold_log(log.events)
    rm = render_all(s)
    assert rm.problems == ()
    assert set(rm.membership["w"][CLUSTER]) == {"reviews", "ghost", "w~local"}


def test_dependency_never_registered_gets_an_empty_cluster():
    log = Log()
    log.register("web", "w", node_id="w", sidecar=(15006, 15001), depends_on=("later",))
    s, _ = fold_log(log.events)
    out = render(s, "w")
    assert set(out[CLUSTER]) == {"later", "w~local"}
    assert len(out[ENDPOINT]["later"].endpoints) == 0


def test_hostname_instances_are_left_out_of_eds_and_reported():
    log = Log()
    log.register("web", "w", node_id="w", sidecar=(15006, 15001), depends_on=("api",))
    log.register("api", "a1", "api-1.internal", 80)
    log.register("api", "a2", "10.0.0.2", 80)
    s, _ = fold_log(log.events)
    rm = render_all(s)
    cla = render(s, "w")[ENDPOINT]["api"]
    assert [ep.endpoint.address.socket_address.address for ep in cla.endpoints[0].lb_endpoints] == ["10.0.0.2"]
    assert any("api-1.internal" in p for p in rm.problems)


# ---------------------------------------------------------------- protocols


def test_grpc_dependency_cluster_speaks_http2_and_streams_have_no_timeout():
    log = Log()
    log.register("web", "w", node_id="w", sidecar=(15006, 15001), depends_on=("ratings", "details"))
    log.register("ratings", "a", "10.0.0.1", 50051, protocol="grpc")
    log.register("details", "d", "10.0.0.2", 80)
    s, _ = fold_log(log.events)
    out = render(s, "w")
    assert "envoy.extensions.upstreams.http.v3.HttpProtocolOptions" in out[CLUSTER]["ratings"].typed_extension_protocol_options
    assert not out[CLUSTER]["details"].typed_extension_protocol_options
    vhs = {vh.name: vh for vh in out[ROUTE]["w~outbound"].virtual_hosts}
    assert vhs["ratings"].routes[0].route.HasField("timeout")
    assert vhs["ratings"].routes[0].route.timeout.ToMilliseconds() == 0
    assert not vhs["details"].routes[0].route.HasField("timeout")


def test_tcp_dependency_gets_a_tcp_listener_on_its_service_port():
    log = Log()
    log.register("web", "w", node_id="w", port=8080, sidecar=(15006, 15001), depends_on=("db", "cache", "api"))
    log.register("db", "d1", "10.0.0.1", 5432, protocol="tcp", sidecar=(15006, 15001))
    log.register("cache", "c1", "10.0.0.2", 15001, protocol="tcp")  # collides with web's outbound port
    log.register("api", "a1", "10.0.0.3", 80)
    s, _ = fold_log(log.events)
    out = render(s, "w")
    assert set(out[LISTENER]) == {"w~outbound", "w~inbound", "w~tcp~db"}
    assert set(out[CLUSTER]) == {"db", "cache", "api", "w~local"}
    lst = out[LISTENER]["w~tcp~db"]
    assert (lst.address.socket_address.address, lst.address.socket_address.port_value) == ("127.0.0.1", 5432)
    tp = tcp_proxy_pb2.TcpProxy()
    lst.filter_chains[0].filters[0].typed_config.Unpack(tp)
    assert tp.cluster == "db"
    assert [vh.name for vh in out[ROUTE]["w~outbound"].virtual_hosts] == ["api", "~on-demand"]
    problems = render_all(s).problems
    assert any("'cache'" in p and "outbound port" in p for p in problems)
    # the TCP service's own inbound listener proxies TCP
    log.register("db", "d1", "10.0.0.1", 5432, protocol="tcp", sidecar=(15006, 15001), node_id="db-1")
    s, _ = fold_log(log.events)
    ib = render(s, "db-1")[LISTENER]["db-1~inbound"]
    assert ib.filter_chains[0].filters[0].name == "envoy.filters.network.tcp_proxy"


# ---------------------------------------------------------------- proxyless gRPC


def _proxyless() -> Log:
    log = Log()
    log.register("ratings", "a", "10.0.0.1", 50051, protocol="grpc", labels={"version": "v1"})
    log.register("ratings", "b", "10.0.0.2", 50051, protocol="grpc", labels={"version": "v2"})
    log.register("client", "c", "10.0.0.3", 7000, node_id="client-1", depends_on=("ratings", "details"))
    log.register("details", "d", "10.0.0.4", 80)
    log.policy("ratings", 1, {"v1": {"version": "v1"}, "v2": {"version": "v2"}})
    log.rule("ratings", 1, route(("v1", 80), ("v2", 20)))
    return log


def test_proxyless_node_gets_api_listeners_for_its_grpc_dependencies():
    s, _ = fold_log(_proxyless().events)
    out = render(s, "client-1")
    assert names(out) == {
        CLUSTER: {"ratings", "ratings|v1", "ratings|v2"},
        ENDPOINT: {"ratings", "ratings|v1", "ratings|v2"},
        LISTENER: {"ratings"},
        ROUTE: {"ratings"},
    }
    hcm = hcm_pb2.HttpConnectionManager()
    out[LISTENER]["ratings"].api_listener.api_listener.Unpack(hcm)
    assert hcm.rds.route_config_name == "ratings" and hcm.http_filters[-1].name == "envoy.filters.http.router"
    vh = out[ROUTE]["ratings"].virtual_hosts[0]
    assert list(vh.domains) == ["ratings"]
    assert [c.name for c in vh.routes[0].route.weighted_clusters.clusters] == ["ratings|v1", "ratings|v2"]
    assert vh.routes[-1].route.cluster == "ratings"


def test_proxyless_closure_for_a_node_we_do_not_know():
    s, _ = fold_log(_proxyless().events)
    closure = proxyless_closure(s, "ratings")
    assert names(closure) == names(render(s, "client-1"))
    for type_url, named in closure.items():
        for name, msg in named.items():
            assert msg == render(s, "client-1")[type_url][name]
    assert proxyless_closure(s, "nope") == {u: {} for u in TYPE_URLS}


def test_sidecar_nodes_are_not_sent_api_listeners():
    log = _proxyless()
    log.register("web", "w", node_id="w", sidecar=(15006, 15001), depends_on=("ratings",))
    s, _ = fold_log(log.events)
    assert "ratings" not in render(s, "w")[LISTENER]


def test_render_names_serves_explicit_names():
    s, _ = fold_log(_proxyless().events)
    got = render_names(s, LISTENER, ["ratings", "unknown-service"])
    assert set(got) == {"ratings"}
    got = render_names(s, CLUSTER, ["ratings|v1"])
    assert got["ratings|v1"].name == "ratings|v1"
    assert render_names(s, LISTENER, ["client-1~outbound"], node_id="client-1") == {}  # no sidecar


# ---------------------------------------------------------------- names


def test_node_ids_with_separators_are_escaped():
    log = Log()
    # node ids are validated to [A-Za-z0-9._:-] now; the escaping still guards names built from any
    # node id (a record that bypassed validation, a future rule), so build one past the validator
    valid = log.register("a", "1", node_id="x-tcp", sidecar=(15006, 15001)).envelope.payload
    log.events.pop()
    log.append(valid.model_copy(update={"node_id": "x~tcp"}))
    log.register("b", "1", node_id="x", sidecar=(15006, 15001), depends_on=("outbound",))
    log.register("outbound", "1", "10.0.0.9", 4000, protocol="tcp")
    s, _ = fold_log(log.events)
    rm = render_all(s)
    assert set(rm.membership["x~tcp"][LISTENER]) == {"x%7Etcp~outbound", "x%7Etcp~inbound"}
    assert set(rm.membership["x"][LISTENER]) == {"x~outbound", "x~inbound", "x~tcp~outbound"}
    assert naming.unescape_node(naming.escape_node("a~b%7E")) == "a~b%7E"


def test_outbound_catch_all_asks_for_the_hosts_cluster_on_demand_over_ads():
    from envoy.extensions.filters.http.on_demand.v3 import on_demand_pb2

    s, _ = fold_log(_bookinfo().events)
    vh = render(s, "productpage-1")[ROUTE]["productpage-1~outbound"].virtual_hosts[-1]
    assert [(r.match.prefix, r.route.cluster_header) for r in vh.routes] == [("/", ":authority")]
    per_route = on_demand_pb2.PerRouteConfig()
    vh.typed_per_filter_config["envoy.filters.http.on_demand"].Unpack(per_route)
    assert per_route.odcds.source.HasField("ads") and per_route.odcds.timeout.seconds == 5


def test_a_nodes_own_resources_are_exactly_the_per_node_names_its_view_holds():
    # ``render_all`` takes a node's own resources from ``Renderer.node_resources`` and the rest of its view as
    # shared names: the two must agree on every kind of node
    secure = t.SidecarPorts(inbound_port=15006, outbound_port=15001, trust_domain="mesh.local")
    log = Log()
    log.append(t.InstanceRegistered(service="reviews", instance_id="r1", address="10.0.1.1", port=8080,
                                    node_id="reviews-1", sidecar=secure))  # secure HTTP: its RBAC in an inbound route
    log.append(t.InstanceRegistered(service="db", instance_id="d1", address="10.0.5.1", port=5432, protocol="tcp",
                                    node_id="db-1", sidecar=secure))  # secure TCP: its RBAC in the listener
    log.register("greeter", "g1", "10.0.6.1", protocol="grpc")
    log.register("web", "w1", "web.internal", port=9090, node_id="web-1", sidecar=(15006, 15001),
                 depends_on=("reviews", "db", "greeter"))  # a host name, and a TCP listener for db
    log.register("cli", "c1", "10.0.7.1", node_id="cli-1", depends_on=("greeter",))  # proxyless: nothing of its own
    state, _ = fold_log(log.events)
    kinds = {}
    for node in ("reviews-1", "db-1", "web-1", "cli-1", "nobody"):
        r = Renderer(state)
        view = r.view(node)
        own = r.node_resources(node)
        assert set(own) == {(u, n) for u, names in view.items() for n in names if naming.is_per_node(n)}, node
        for (type_url, name), inputs in own.items():
            assert Renderer(state).node_inputs(type_url, name, node) == inputs  # alone, as a fresh pass asks
        kinds[node] = sorted((u.rsplit(".", 1)[-1], n) for u, n in own)
    assert ("Listener", "web-1~tcp~db") in kinds["web-1"]
    assert ("RouteConfiguration", "reviews-1~inbound") in kinds["reviews-1"]
    assert ("RouteConfiguration", "db-1~inbound") not in kinds["db-1"]
    assert kinds["cli-1"] == [] and kinds["nobody"] == []
