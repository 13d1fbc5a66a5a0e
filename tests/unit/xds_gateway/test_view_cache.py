"""Story: the view cache turns view-topic records into per-node views and says who changed."""

import orjson

from events import topics
from projector.publisher import LATEST, SOURCE_MS_HEADER, VERSION_HEADER
from xds_gateway.protocol.resources import CLUSTER, ENDPOINT, version_of
from xds_gateway.view_cache import ViewCache
from tests.unit.xds_gateway.helpers import ViewRec as Rec


def body(type_url, name, payload=b""):
    return Rec(topics.VIEW_RESOURCES, f"{type_url}|{name}".encode(), payload or name.encode())


def member(node, resources):
    return Rec(topics.VIEW_MEMBERSHIP, node.encode(), orjson.dumps({"node": node, "resources": resources}))


def ready_cache():
    cache = ViewCache()
    cache.ready.set()
    seen = []
    cache.subscribe(lambda nodes: seen.append(set(nodes)))
    return cache, seen


def test_a_node_sees_exactly_the_bodies_its_membership_names():
    cache, _ = ready_cache()
    cache.apply_records([
        body(CLUSTER, "reviews"), body(CLUSTER, "ratings"), body(ENDPOINT, "reviews"),
        member("web-1", {CLUSTER: {"reviews": version_of(b"reviews")}, ENDPOINT: {"reviews": version_of(b"reviews")}}),
    ])
    view = cache.node_view("web-1")
    assert set(view[CLUSTER]) == {"reviews"} and set(view[ENDPOINT]) == {"reviews"}
    assert view[CLUSTER]["reviews"].version == version_of(b"reviews")
    assert cache.node_view("stranger") == {}


def test_a_body_change_notifies_only_the_nodes_that_reference_it():
    cache, seen = ready_cache()
    cache.apply_records([body(CLUSTER, "reviews"), body(CLUSTER, "ratings"),
                         member("web-1", {CLUSTER: {"reviews": "x"}}), member("api-1", {CLUSTER: {"ratings": "y"}})])
    seen.clear()
    cache.apply_records([body(CLUSTER, "ratings", b"new ratings body")])
    assert seen == [{"api-1"}]


def test_republishing_identical_bytes_notifies_nobody():
    cache, seen = ready_cache()
    cache.apply_records([body(CLUSTER, "reviews"), member("web-1", {CLUSTER: {"reviews": "x"}})])
    seen.clear()
    assert cache.apply_records([body(CLUSTER, "reviews")]) == set()
    assert seen == []


def test_tombstones_remove_bodies_and_nodes():
    cache, seen = ready_cache()
    cache.apply_records([body(CLUSTER, "reviews"), member("web-1", {CLUSTER: {"reviews": "x"}})])
    cache.apply_records([Rec(topics.VIEW_RESOURCES, f"{CLUSTER}|reviews".encode(), None)])
    assert cache.node_view("web-1") == {CLUSTER: {}}
    cache.apply_records([Rec(topics.VIEW_MEMBERSHIP, b"web-1", None)])
    assert not cache.knows_node("web-1")
    assert seen[-1] == {"web-1"}


def test_membership_naming_a_body_not_yet_arrived_fills_in_when_it_arrives():
    cache, seen = ready_cache()
    cache.apply_records([member("web-1", {CLUSTER: {"reviews": "x"}})])
    assert cache.node_view("web-1") == {CLUSTER: {}}
    seen.clear()
    cache.apply_records([body(CLUSTER, "reviews")])
    assert set(cache.node_view("web-1")[CLUSTER]) == {"reviews"}
    assert seen == [{"web-1"}]


def test_no_notifications_before_ready():
    cache = ViewCache()
    seen = []
    cache.subscribe(lambda nodes: seen.append(nodes))
    cache.apply_records([body(CLUSTER, "greeter"), member("web-1", {CLUSTER: {"greeter": "v"}})])
    assert seen == []
    assert cache.nodes() == ["web-1"]


def test_an_unknown_node_may_name_shared_resources_but_never_another_nodes_own():
    cache, _ = ready_cache()
    cache.apply_records([body(CLUSTER, "greeter"), body(CLUSTER, "web-1~local"),
                         member("web-1", {CLUSTER: {"greeter": "v", "web-1~local": "w"}})])
    assert set(cache.shared_view()[CLUSTER]) == {"greeter"}
    assert cache.proxyless_allowed(CLUSTER, "greeter")
    assert not cache.proxyless_allowed(CLUSTER, "web-1~local")


def test_a_malformed_membership_record_is_ignored_not_fatal():
    cache, _ = ready_cache()
    cache.apply_records([Rec(topics.VIEW_MEMBERSHIP, b"web-1", b"not json")])
    assert not cache.knows_node("web-1")


ROUTE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"


def test_a_changed_body_waits_for_the_membership_that_names_it():
    # The projector publishes a batch's bodies before its memberships: web-1's route now points at
    # the new subset cluster reviews|v1, whose name web-1's membership does not list yet
    cache, seen = ready_cache()
    old_route, new_route = b"route to reviews", b"route to reviews|v1"
    cache.apply_records([body(CLUSTER, "reviews"), body(ROUTE, "web-1~outbound", old_route),
                         member("web-1", {CLUSTER: {"reviews": version_of(b"reviews")},
                                          ROUTE: {"web-1~outbound": version_of(old_route)}})])
    seen.clear()
    cache.apply_records([body(CLUSTER, "reviews|v1"), body(ROUTE, "web-1~outbound", new_route)])
    assert not any("web-1" in nodes for nodes in seen)  # nothing web-1 may see has changed yet
    assert cache.node_view("web-1")[ROUTE]["web-1~outbound"].version == version_of(old_route)
    cache.apply_records([member("web-1", {CLUSTER: {"reviews": version_of(b"reviews"),
                                                    "reviews|v1": version_of(b"reviews|v1")},
                                          ROUTE: {"web-1~outbound": version_of(new_route)}})])
    assert seen[-1] == {"web-1"}  # the new cluster and the route to it, in one change
    view = cache.node_view("web-1")
    assert view[ROUTE]["web-1~outbound"].version == version_of(new_route) and "reviews|v1" in view[CLUSTER]


def test_a_version_only_membership_move_notifies_the_node_once_it_names_the_new_body():
    cache, seen = ready_cache()
    cache.apply_records([body(ENDPOINT, "reviews", b"one endpoint"),
                         member("web-1", {ENDPOINT: {"reviews": version_of(b"one endpoint")}})])
    seen.clear()
    cache.apply_records([body(ENDPOINT, "reviews", b"two endpoints")])
    assert not any("web-1" in nodes for nodes in seen)
    assert cache.node_view("web-1")[ENDPOINT]["reviews"].version == version_of(b"one endpoint")
    cache.apply_records([member("web-1", {ENDPOINT: {"reviews": version_of(b"two endpoints")}})])
    assert seen[-1] == {"web-1"}
    assert cache.node_view("web-1")[ENDPOINT]["reviews"].version == version_of(b"two endpoints")


def test_a_body_is_served_at_the_version_published_with_it():
    # a shared body's version is the hash of its render inputs (projector.versioning), named in the
    # record's meshlog-version header: the membership names that, and the previous body is kept for it
    def versioned(payload, version):
        return Rec(topics.VIEW_RESOURCES, f"{ENDPOINT}|reviews".encode(), payload,
                   headers=((VERSION_HEADER, version.encode()),))

    V1, V2 = "a1" * 8, "b2" * 8  # versions as the projector writes them: 16 hex digits
    cache, seen = ready_cache()
    cache.apply_records([versioned(b"one endpoint", V1), member("web-1", {ENDPOINT: {"reviews": V1}})])
    got = cache.node_view("web-1")[ENDPOINT]["reviews"]
    assert (got.version, got.body) == (V1, b"one endpoint")
    seen.clear()
    cache.apply_records([versioned(b"two endpoints", V2)])
    assert not any("web-1" in nodes for nodes in seen)  # its membership still names V1, which is held
    assert cache.node_view("web-1")[ENDPOINT]["reviews"].body == b"one endpoint"
    cache.apply_records([member("web-1", {ENDPOINT: {"reviews": V2}})])
    got = cache.node_view("web-1")[ENDPOINT]["reviews"]
    assert seen[-1] == {"web-1"} and (got.version, got.body) == (V2, b"two endpoints")
    # the same version again (another worker taking the shard over republishes it): nothing changes
    seen.clear()
    cache.apply_records([versioned(b"two endpoints", V2)])
    assert not any("web-1" in nodes for nodes in seen)


def test_a_membership_naming_a_version_no_longer_held_gets_the_latest_body():
    cache, _ = ready_cache()
    cache.apply_records([body(ENDPOINT, "reviews", b"v1"), member("web-1", {ENDPOINT: {"reviews": version_of(b"v1")}})])
    cache.apply_records([body(ENDPOINT, "reviews", b"v2"), body(ENDPOINT, "reviews", b"v3")])  # v1 dropped
    assert cache.node_view("web-1")[ENDPOINT]["reviews"].version == version_of(b"v3")


def test_endpoints_named_at_the_latest_reach_their_holders_with_the_body_alone():
    # the projector names a ClusterLoadAssignment without a version (LATEST): an endpoint change is one
    # body record, which every node holding it sees at once, with the body's source time
    def endpoints(payload, version, source_ms):
        return Rec(topics.VIEW_RESOURCES, f"{ENDPOINT}|reviews".encode(), payload,
                   headers=((VERSION_HEADER, version.encode()), (SOURCE_MS_HEADER, str(source_ms).encode())))

    V1, V2 = "a1" * 8, "b2" * 8
    cache, seen = ready_cache()
    holds = {CLUSTER: {"reviews": version_of(b"reviews")}, ENDPOINT: {"reviews": LATEST}}
    cache.apply_records([body(CLUSTER, "reviews"), endpoints(b"one endpoint", V1, 1000),
                         member("web-1", holds), member("web-2", holds), member("api-1", {CLUSTER: {}})])
    assert cache.node_view("web-1")[ENDPOINT]["reviews"].body == b"one endpoint"
    assert cache.told_versions("web-1", ENDPOINT) == {"reviews": V1}
    assert cache.told_versions("web-1", CLUSTER) == {"reviews": version_of(b"reviews")}
    clusters_before = cache.node_view("web-1")[CLUSTER]
    seen.clear()
    cache.apply_records([endpoints(b"two endpoints", V2, 2000)])
    assert seen == [{"web-1", "web-2"}]  # its holders, and only them
    got = cache.node_view("web-2")[ENDPOINT]["reviews"]
    assert (got.version, got.body) == (V2, b"two endpoints")
    assert cache.node_view("web-1")[CLUSTER] is clusters_before  # only the endpoints' type was rebuilt
    assert cache.told_versions("web-1", ENDPOINT) == {"reviews": V2}
    assert cache.source_ms("web-1") == 2000 and cache.source_ms("api-1") is None
    cache.apply_records([Rec(topics.VIEW_RESOURCES, f"{ENDPOINT}|reviews".encode(), None)])
    assert "reviews" not in cache.node_view("web-1")[ENDPOINT]  # no body: nothing to hold
    assert cache.told_versions("web-1", ENDPOINT) == {"reviews": LATEST}


def test_an_endpoint_body_named_at_the_latest_leaves_no_body_before_it_in_memory():
    # a body before is kept only for memberships that name it; endpoints are named at LATEST, so every health
    # flip used to leave a second body per endpoint name that nothing could ask for
    cache, _ = ready_cache()
    cache.apply_records([body(ENDPOINT, "reviews", b"one endpoint"), body(ENDPOINT, "ratings", b"r1"),
                         member("web-1", {ENDPOINT: {"reviews": LATEST, "ratings": LATEST}})])
    cache.apply_records([body(ENDPOINT, "reviews", b"two endpoints"), body(ENDPOINT, "ratings", b"r2")])
    assert cache._previous == {}
    assert cache.node_view("web-1")[ENDPOINT]["reviews"].body == b"two endpoints"
    # one membership naming it by version (a projector from before LATEST): kept while it does
    cache.apply_records([member("api-1", {ENDPOINT: {"reviews": version_of(b"two endpoints")}})])
    cache.apply_records([body(ENDPOINT, "reviews", b"three endpoints")])
    assert cache.node_view("api-1")[ENDPOINT]["reviews"].body == b"two endpoints"
    assert cache.node_view("web-1")[ENDPOINT]["reviews"].body == b"three endpoints"
    cache.apply_records([member("api-1", {ENDPOINT: {"reviews": LATEST}}), body(ENDPOINT, "reviews", b"four")])
    assert cache._previous == {}


def test_a_route_body_before_is_kept_for_its_membership_as_before():
    cache, _ = ready_cache()
    cache.apply_records([body(ROUTE, "web-1~outbound", b"old"), member("web-1", {ROUTE: {"web-1~outbound": "x"}})])
    cache.apply_records([body(ROUTE, "web-1~outbound", b"new")])  # nobody names "old"'s version: kept anyway
    assert (ROUTE, "web-1~outbound") in cache._previous


def test_the_cache_carries_each_node_owner_and_a_new_owner_alone_changes_the_node():
    cache, seen = ready_cache()

    def owned(node, resources, service, instance):
        doc = {"node": node, "owner": {"service": service, "instance": instance}, "resources": resources}
        return Rec(topics.VIEW_MEMBERSHIP, node.encode(), orjson.dumps(doc))

    names = {CLUSTER: {"reviews": version_of(b"reviews")}}
    cache.apply_records([body(CLUSTER, "reviews"), owned("web-1", names, "web", "w1")])
    assert cache.owner_of("web-1") == ("web", "w1")
    assert cache.owner_of("stranger") is None
    seen.clear()
    cache.apply_records([owned("web-1", names, "web", "w9")])
    assert cache.owner_of("web-1") == ("web", "w9") and seen == [{"web-1"}]
    cache.apply_records([Rec(topics.VIEW_MEMBERSHIP, b"web-1", None)])
    assert cache.owner_of("web-1") is None


def test_a_malformed_owner_is_ignored_with_the_record():
    cache, _ = ready_cache()
    doc = {"node": "n", "owner": {"service": 7, "instance": "x"}, "resources": {}}
    cache.apply_records([Rec(topics.VIEW_MEMBERSHIP, b"n", orjson.dumps(doc))])
    assert not cache.knows_node("n") and cache.owner_of("n") is None


def test_a_change_of_one_type_gives_a_new_mapping_for_that_type_only_and_views_are_never_mutated():
    # The stream machines diff a type only when its mapping is a new object; every stream of the
    # node shares one view, built once per change.
    def v(b):
        return version_of(b)

    cache, _ = ready_cache()
    cache.apply_records([body(CLUSTER, "reviews"), body(ENDPOINT, "reviews", b"one endpoint"),
                         body(ROUTE, "web-1~outbound", b"route"),
                         member("web-1", {CLUSTER: {"reviews": v(b"reviews")},
                                          ENDPOINT: {"reviews": v(b"one endpoint")},
                                          ROUTE: {"web-1~outbound": v(b"route")}})])
    before = cache.node_view("web-1")
    assert cache.node_view("web-1") is before  # nothing changed: the same view
    snapshot = {t: dict(names) for t, names in before.items()}
    cache.apply_records([body(ENDPOINT, "reviews", b"two endpoints"),
                         member("web-1", {CLUSTER: {"reviews": v(b"reviews")},
                                          ENDPOINT: {"reviews": v(b"two endpoints")},
                                          ROUTE: {"web-1~outbound": v(b"route")}})])
    after = cache.node_view("web-1")
    assert after[ENDPOINT] is not before[ENDPOINT] and after[ENDPOINT]["reviews"].version == v(b"two endpoints")
    assert after[CLUSTER] is before[CLUSTER] and after[ROUTE] is before[ROUTE]
    assert {t: dict(names) for t, names in before.items()} == snapshot  # what a stream holds never moves
    # a membership that drops a type and a name of another
    cache.apply_records([member("web-1", {CLUSTER: {}, ENDPOINT: {"reviews": v(b"two endpoints")}})])
    last = cache.node_view("web-1")
    assert last == {CLUSTER: {}, ENDPOINT: {"reviews": after[ENDPOINT]["reviews"]}}
    assert last[ENDPOINT] is after[ENDPOINT]
    cache.apply_records([Rec(topics.VIEW_MEMBERSHIP, b"web-1", None)])
    assert cache.node_view("web-1") == {}


def test_the_shared_view_is_rebuilt_only_when_a_shared_body_changes():
    cache, _ = ready_cache()
    cache.apply_records([body(CLUSTER, "greeter"), body(CLUSTER, "web-1~local"),
                         member("web-1", {CLUSTER: {"greeter": "v", "web-1~local": "w"}})])
    first = cache.shared_view()
    cache.apply_records([body(CLUSTER, "web-1~local", b"per-node change")])
    assert cache.shared_view() is first
    cache.apply_records([body(CLUSTER, "greeter", b"new greeter")])
    assert cache.shared_view() is not first and cache.shared_view()[CLUSTER]["greeter"].body == b"new greeter"
    assert first[CLUSTER]["greeter"].body == b"greeter"
