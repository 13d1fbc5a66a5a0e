"""Properties over random event histories: determinism, scoping, order independence."""

from __future__ import annotations

from typing import NamedTuple

from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from hypothesis import given, settings
from hypothesis import strategies as st

from events import topics
from events import types as t
from events.envelope import Logged
from events.merge_gate import MergeGate
from events.shard_group import shard_of
from projector import naming
from projector.fold import fold_many
from projector.render import CLUSTER, ENDPOINT, LISTENER, ROUTE, render_all
from projector.state import RowMemo, empty_state, state_from_bytes, state_to_bytes
from tests.unit.projector.helpers import fold_log, logged

SERVICES = ["a", "b", "c", "d"]
SUBSETS = ["v1", "v2"]

services = st.sampled_from(SERVICES)
instance_ids = st.sampled_from(["1", "2", "3"])


@st.composite
def registrations(draw):
    service = draw(services)
    deps = draw(st.lists(st.sampled_from([s for s in SERVICES if s != service]), unique=True, max_size=3))
    # a third element: the sidecar's trust domain (mTLS + RBAC from the graph, projector.mesh_tls)
    sidecar = draw(st.sampled_from([None, (15006, 15001, None), (16006, 16001, None), (15006, 15001, "mesh.local")]))
    return t.InstanceRegistered(
        service=service,
        instance_id=draw(instance_ids),
        address=draw(st.sampled_from(["10.0.0.1", "10.0.0.2", "fd00::1", "10.0.0.3"])),
        port=draw(st.sampled_from([80, 5432, 15001, 9000])),
        protocol=draw(st.sampled_from(["http", "http", "grpc", "tcp"])),
        labels=draw(st.fixed_dictionaries({}, optional={"version": st.sampled_from(SUBSETS),
                                                        "zone": st.sampled_from(["a", "b"])})),
        weight=draw(st.integers(1, 3)),
        node_id=draw(st.sampled_from([None, "n1", "n2", "n3.x"])),
        sidecar=None if sidecar is None else t.SidecarPorts(inbound_port=sidecar[0], outbound_port=sidecar[1],
                                                            trust_domain=sidecar[2]),
        depends_on=tuple(deps),
    )


deregistrations = st.builds(t.InstanceDeregistered, service=services, instance_id=instance_ids)


@st.composite
def subscriptions(draw):
    service = draw(services)
    dependency = draw(st.sampled_from([s for s in [*SERVICES, "ghost"] if s != service]))
    instance_id = draw(instance_ids)
    if draw(st.booleans()):
        return t.DependencySubscribed(service=service, instance_id=instance_id, dependency=dependency,
                                      origin=draw(st.sampled_from(["explicit", "learned"])))
    return t.DependencyUnsubscribed(service=service, instance_id=instance_id, dependency=dependency)


health = st.builds(
    t.InstanceHealthChanged, service=services, instance_id=instance_ids,
    status=st.sampled_from(["healthy", "unhealthy", "draining"]), observer=st.just("checker"),
)


@st.composite
def destinations(draw):
    n = draw(st.integers(1, 3))
    picks = draw(st.lists(st.tuples(st.sampled_from([None, None, None, *SERVICES, "ghost"]),
                                    st.none() | st.sampled_from(SUBSETS)),
                          min_size=n, max_size=n, unique=True))
    cuts = sorted(draw(st.lists(st.integers(0, 100), min_size=n - 1, max_size=n - 1)))
    weights = [hi - lo for lo, hi in zip([0, *cuts], [*cuts, 100])]
    return tuple(t.WeightedDestination(service=s, subset=sub, weight=w) for (s, sub), w in zip(picks, weights))


http_routes = st.builds(
    t.HttpRoute,
    match=st.builds(t.RouteMatch, path_prefix=st.none() | st.just("/api"),
                    headers=st.lists(st.builds(t.HeaderMatch, name=st.just("x-canary"), exact=st.just("1")),
                                     max_size=1).map(tuple)),
    destinations=destinations(),
    timeout_ms=st.none() | st.just(1500),
    retries=st.none() | st.builds(t.RetryPolicy, attempts=st.integers(0, 2)),
)
def _subset(name: str, variant: int) -> t.Subset:
    labels = [{"version": name}, {"version": name, "zone": "a"}, {"zone": "b"}][variant]
    return t.Subset(name=name, labels=labels)


policy_subsets = st.tuples(
    st.sampled_from([(), ("v1",), ("v1", "v2"), ("v1", "v2"), ("v1", "v2"), ("v2",)]),
    st.integers(0, 2),
    st.integers(0, 2),
).map(lambda x: tuple(_subset(n, v) for n, v in zip(x[0], x[1:])))


policy_subsets_all = tuple(t.Subset(name=n, labels={"version": n}) for n in SUBSETS)
canary_split = t.HttpRoute(destinations=(t.WeightedDestination(subset="v1", weight=90),
                                         t.WeightedDestination(subset="v2", weight=10)))


@st.composite
def rule_events(draw, n):
    """Rules with mostly-right revisions (a writer that usually read the latest one)."""
    counters: dict[str, int] = {}
    out = []
    if draw(st.booleans()):  # usually a mesh starts with its policies (and canary rules) in place
        for svc in SERVICES:
            out.append(t.DestinationPolicyUpserted(service=svc, revision=1, subsets=policy_subsets_all))
            counters["policy/" + svc] = 1
            if draw(st.booleans()):
                out.append(t.RouteRuleUpserted(host=svc, revision=1, routes=(canary_split,)))
                counters["route/" + svc] = 1
    for _ in range(draw(st.integers(0, n))):
        kind = draw(st.sampled_from(["route", "route", "policy", "policy", "route_delete", "policy_delete",
                                     "access", "access_delete"]))
        target = draw(services)
        doc = {"route": "route/", "polic": "policy/", "acces": "access/"}[kind[:5]] + target
        if draw(st.integers(0, 9)) < 8:
            revision = counters.get(doc, 0) + 1
            counters[doc] = revision
        else:
            revision = draw(st.integers(1, 5))
        if kind == "route":
            out.append(t.RouteRuleUpserted(host=target, revision=revision,
                                           routes=tuple(draw(st.lists(http_routes, min_size=1, max_size=2)))))
        elif kind == "route_delete":
            out.append(t.RouteRuleDeleted(host=target, revision=revision))
        elif kind == "policy":
            out.append(t.DestinationPolicyUpserted(
                service=target, revision=revision, subsets=draw(policy_subsets),
                lb_policy=draw(st.sampled_from(["round_robin", "least_request", "random", "ring_hash"])),
                circuit_breaker=draw(st.none() | st.builds(t.CircuitBreaker)),
                outlier_detection=draw(st.none() | st.builds(t.OutlierDetection)),
            ))
        elif kind == "policy_delete":
            out.append(t.DestinationPolicyDeleted(service=target, revision=revision))
        elif kind == "access":
            out.append(t.AccessPolicyUpserted(
                service=target, revision=revision, allow=draw(st.sampled_from(["declared", "mesh"])),
                also=tuple(draw(st.lists(st.sampled_from([x for x in SERVICES if x != target]), unique=True,
                                         max_size=2)))))
        else:
            out.append(t.AccessPolicyDeleted(service=target, revision=revision))
    return out


@st.composite
def topic_logs(draw, run_time_subscriptions: bool = True):
    """Three per-topic logs with their own offsets and non-decreasing broker timestamps."""
    out = {}
    on_registrations = [registrations(), registrations(), deregistrations]
    if run_time_subscriptions:
        on_registrations.append(subscriptions())
    for topic, strat, n in (
        (topics.REGISTRATIONS, st.one_of(*on_registrations), 14),
        (topics.HEALTH, health, 8),
        (topics.RULES, None, 14),
    ):
        payloads = draw(rule_events(n) if strat is None else st.lists(strat, max_size=n))
        ts = 1000
        evs = []
        for off, p in enumerate(payloads):
            ts += draw(st.integers(0, 5))
            evs.append(logged(p, ts=ts, offset=off, topic=topic))
        out[topic] = evs
    return out


def by_timestamp(logs):
    merged = [ev for evs in logs.values() for ev in evs]
    return sorted(merged, key=lambda e: (e.timestamp_ms, e.topic, e.offset))


@st.composite
def interleaving(draw, logs):
    """Any merge of the per-topic logs that keeps each topic in offset order."""
    queues = {k: list(v) for k, v in logs.items() if v}
    out = []
    while queues:
        topic = draw(st.sampled_from(sorted(queues)))
        out.append(queues[topic].pop(0))
        if not queues[topic]:
            del queues[topic]
    return out


def partitioned(logs, partitions: int):
    """The same history on topics with ``partitions`` partitions: registrations and health keyed per instance
    (``events.shard_group.shard_of`` stands in for the producer's partitioner: any stable key -> partition
    map), each partition with its own offsets; rules keep their one partition. Timestamps are the broker's
    (LogAppendTime), so each partition is in timestamp order."""
    out = {}
    for topic, evs in logs.items():
        if topic == topics.RULES:
            out[(topic, 0)] = evs
            continue
        for ev in evs:
            p = shard_of(ev.envelope.key, partitions)
            queue = out.setdefault((topic, p), [])
            queue.append(Logged(ev.envelope, topic, p, len(queue), ev.timestamp_ms))
    return out


def by_timestamp_across_partitions(logs):
    merged = [ev for evs in logs.values() for ev in evs]
    return sorted(merged, key=lambda e: (e.timestamp_ms, e.topic, e.partition, e.offset))


def _fingerprint(rm):
    return rm.resources, rm.membership, rm.problems, rm.owners


@settings(max_examples=150, deadline=None)
@given(topic_logs())
def test_render_is_deterministic_and_survives_snapshots(logs):
    events = by_timestamp(logs)
    s, _ = fold_log(events)
    first = render_all(s)
    assert _fingerprint(render_all(s)) == _fingerprint(first)
    back = state_from_bytes(state_to_bytes(s))
    assert back == s
    again = render_all(back)
    assert _fingerprint(again) == _fingerprint(first)
    assert again.versions == first.versions
    batched, _ = fold_many(empty_state(), events)
    assert state_to_bytes(batched) == state_to_bytes(s)


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_topic_interleaving_does_not_change_what_is_served(data):
    logs = data.draw(topic_logs())
    reference = render_all(fold_log(by_timestamp(logs))[0])
    other = data.draw(interleaving(logs))
    got = render_all(fold_log(other)[0])
    assert _fingerprint(got) == _fingerprint(reference)


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_partition_interleaving_does_not_change_what_is_served(data):
    """Registrations and health on several partitions: any merge that keeps each partition in offset order
    (what a consumer of every partition may fetch, batch by batch) folds to what the single-partition log
    serves, and batching it does not matter either. Run-time subscriptions are left out: whether one names a
    service some instance has registered reads another instance's key, which may sit on another partition
    (the next test)."""
    logs = data.draw(topic_logs(run_time_subscriptions=False))
    reference = render_all(fold_log(by_timestamp(logs))[0])
    parts = partitioned(logs, data.draw(st.sampled_from([2, 3, 6])))
    assert _fingerprint(render_all(fold_log(by_timestamp_across_partitions(parts))[0])) == _fingerprint(reference)
    other = data.draw(interleaving(parts))
    assert _fingerprint(render_all(fold_log(other)[0])) == _fingerprint(reference)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(other)), max_size=4)))
    s, start = empty_state(), 0
    for cut in [*cuts, len(other)]:
        batch = sorted(other[start:cut], key=lambda e: e.timestamp_ms)  # the projector sorts each batch by time
        s, _ = fold_many(s, batch)
        start = cut
    assert _fingerprint(render_all(s)) == _fingerprint(reference)


def test_a_subscription_is_decided_in_the_merge_order_the_projector_and_replay_share():
    """The one fold decision that reads another instance's key: a subscription to a service whose first
    registration sits on another partition in the same millisecond. Both readers fold in
    ``topics.merge_order`` (through ``events.merge_gate``), so they decide it alike; a consumer order that
    put the subscription first would refuse it (``unknown_service``): the next test."""
    web = logged(t.InstanceRegistered(service="web", instance_id="1", address="10.0.0.1", port=80),
                 ts=1000, partition=1, offset=0)
    ratings = logged(t.InstanceRegistered(service="ratings", instance_id="1", address="10.0.0.2", port=80),
                     ts=1001, partition=0, offset=0)
    subscribed = logged(t.DependencySubscribed(service="web", instance_id="1", dependency="ratings"),
                        ts=1001, partition=1, offset=1)
    merged = sorted([subscribed, ratings, web],
                    key=lambda e: topics.merge_order(e.timestamp_ms, e.topic, e.partition, e.offset))
    assert merged == [web, ratings, subscribed]  # same millisecond: partition 0 before partition 1
    state, decisions = fold_log(merged)
    assert decisions == [] and state.instances["web/1"].subscription("ratings") is not None
    _, decisions = fold_log([web, subscribed, ratings])  # a fetch order that differs from the merge order
    assert [d.problem for d in decisions] == ["unknown_service"]


class _Fetched(NamedTuple):
    """A consumer record as the merge gate reads it, carrying the event it decodes to."""

    timestamp: int
    topic: str
    partition: int
    offset: int
    event: Logged


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_any_fetch_order_through_the_merge_gate_folds_as_replay_does(data):
    """Run-time subscriptions included, on several partitions: whichever partition a consumer hands over next
    and however much of it (one the gate names as starving when it names some, as the projector fetches),
    the batches the merge gate releases fold to replay's state and decisions (replay folds the merge order).
    A gate that let records through in fetch order refuses some of those subscriptions (checked)."""
    parts = partitioned(data.draw(topic_logs()), data.draw(st.sampled_from([2, 3, 6])))
    merged = sorted((e for evs in parts.values() for e in evs),
                    key=lambda e: topics.merge_order(e.timestamp_ms, e.topic, e.partition, e.offset))
    want_state, want_decisions = fold_many(empty_state(), merged)
    log = {f"{topic}/{partition}": evs for (topic, partition), evs in parts.items()}
    ends = {k: len(evs) for k, evs in log.items()}
    delivered = dict.fromkeys(log, 0)
    gate = MergeGate()
    state, decisions = empty_state(), []
    while any(delivered[k] < ends[k] for k in log) or gate.held:
        left = sorted(k for k in log if delivered[k] < ends[k])
        if left:
            k = data.draw(st.sampled_from(sorted(gate.starving(delivered, ends)) or left))
            chunk = log[k][delivered[k]:delivered[k] + data.draw(st.integers(1, 5))]
            gate.offer(k, [_Fetched(e.timestamp_ms, e.topic, e.partition, e.offset, e) for e in chunk])
            delivered[k] += len(chunk)
        released = gate.take(dict(delivered), ends, now=0.0, limit=data.draw(st.integers(1, 50)))
        state, refused = fold_many(state, [f.event for f in released])
        decisions += list(refused)
    assert decisions == list(want_decisions)
    assert state_to_bytes(state) == state_to_bytes(want_state)


def _unpack(any_msg, cls):
    m = cls()
    assert any_msg.Unpack(m)
    return m


@settings(max_examples=150, deadline=None)
@given(topic_logs())
def test_nodes_see_only_their_closure_and_hold_all_they_reference(logs):
    s, _ = fold_log(by_timestamp(logs))
    rm = render_all(s)
    for node, per_type in rm.membership.items():
        inst = s.node_instance(node)
        deps = set(inst.dependencies())  # declared and subscribed: the closure roots
        allowed = set(deps)
        for dep in deps:
            rule = s.route_rules.get(dep)
            if rule is not None:
                allowed |= {d.service or dep for r in rule.routes for d in r.destinations}
        held_clusters = set(per_type[CLUSTER])
        for name in held_clusters | set(per_type[ENDPOINT]):
            parsed = naming.parse_cluster(name)
            if parsed is None:
                assert name == naming.local_cluster(node)
            else:
                assert parsed[0] in allowed, (node, name, allowed)
        # every EDS cluster held has its endpoints held too, and vice versa
        assert {n for n in held_clusters if naming.parse_cluster(n)} == set(per_type[ENDPOINT])
        # everything a listener or route refers to is held by the node
        referenced_clusters, referenced_routes = set(), set()
        for name in per_type[LISTENER]:
            lst = listener_pb2.Listener.FromString(rm.resources[(LISTENER, name)])
            if lst.HasField("api_listener"):
                hcm = _unpack(lst.api_listener.api_listener, hcm_pb2.HttpConnectionManager)
                referenced_routes.add(hcm.rds.route_config_name)
                continue
            f = lst.filter_chains[0].filters[-1]  # the terminal filter (a secure TCP listener has RBAC before it)
            if f.name == "envoy.filters.network.tcp_proxy":
                referenced_clusters.add(_unpack(f.typed_config, tcp_proxy_pb2.TcpProxy).cluster)
            else:
                hcm = _unpack(f.typed_config, hcm_pb2.HttpConnectionManager)
                if hcm.HasField("rds"):
                    referenced_routes.add(hcm.rds.route_config_name)
                else:
                    for vh in hcm.route_config.virtual_hosts:
                        referenced_clusters |= {r.route.cluster for r in vh.routes}
        assert referenced_routes == set(per_type[ROUTE])
        for name in per_type[ROUTE]:
            rc = route_pb2.RouteConfiguration.FromString(rm.resources[(ROUTE, name)])
            domains = [d for vh in rc.virtual_hosts for d in vh.domains]
            assert len(domains) == len(set(domains))
            for vh in rc.virtual_hosts:
                for r in vh.routes:
                    if r.route.cluster:
                        referenced_clusters.add(r.route.cluster)
                    for c in r.route.weighted_clusters.clusters:
                        referenced_clusters.add(c.name)
                        assert c.weight.value > 0
        assert referenced_clusters <= held_clusters, (node, referenced_clusters - held_clusters)


def _expected_delta(prev, cur):
    # a resource changed when its version did (projector.versioning: a shared one's version follows its
    # render inputs, which may change with equal bytes; a per-node one's follows its bytes)
    changed = {k for k, v in cur.versions.items() if prev.versions.get(k) != v}
    assert {k for k, v in cur.resources.items() if prev.resources.get(k) != v} <= changed
    removed = set(prev.versions) - set(cur.versions)
    changed_nodes = {n for n, m in cur.membership.items()
                     if prev.membership.get(n) != m or prev.owners.get(n) != cur.owners.get(n)}
    removed_nodes = set(prev.membership) - set(cur.membership)
    return changed, removed, changed_nodes, removed_nodes


def states_at(events: list, cuts: list[int]):
    """The state folded up to each cut, then to the end of ``events``, one fold per stretch (as batches)."""
    s = empty_state()
    start = 0
    for cut in [*cuts, len(events)]:
        s, _ = fold_many(s, events[start:cut])
        start = cut
        yield s


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_incremental_render_equals_render_from_scratch(data):
    logs = data.draw(topic_logs())
    events = data.draw(interleaving(logs))
    cuts = sorted(data.draw(st.lists(st.integers(0, len(events)), max_size=6)))
    endpoint_versions = data.draw(st.booleans())  # False: endpoints named at the latest, as the projector renders
    s = empty_state()
    rm = render_all(s, endpoint_versions=endpoint_versions)
    start = 0
    for cut in [*cuts, len(events)]:
        s, _ = fold_many(s, events[start:cut])
        start = cut
        before = (dict(rm.resources), {n: {u: dict(d) for u, d in m.items()} for n, m in rm.membership.items()})
        inc = render_all(s, previous=rm)
        full = render_all(s, endpoint_versions=endpoint_versions)
        assert _fingerprint(inc) == _fingerprint(full)
        assert inc.versions == full.versions
        assert (set(inc.changed), set(inc.removed), set(inc.changed_nodes), set(inc.removed_nodes)) == _expected_delta(rm, full)
        # previous is left as it was
        assert (rm.resources, rm.membership) == before
        rm = inc
    # going back in time (a previous from a later state) is exact too
    first = render_all(fold_log(events[: len(events) // 2])[0], endpoint_versions=endpoint_versions)
    back = render_all(first.state, previous=rm)
    assert _fingerprint(back) == _fingerprint(first)


def _whole(rm):
    """Everything a render holds, its index included, as plain values (sets of the index frozen or not)."""
    idx = rm._index
    index = tuple({k: (frozenset(v) if isinstance(v, (set, frozenset)) else v) for k, v in d.items()}
                  for d in (idx.node_deps, idx.dependents, idx.holders, idx.shared_by_service, idx.held))
    return (_fingerprint(rm), rm.versions, rm.owners, rm.problems, set(rm.changed), set(rm.removed),
            set(rm.changed_nodes), set(rm.removed_nodes), index, idx.served, idx.rule_problems, idx.res_problems,
            idx.node_problems)


def test_consuming_a_render_of_the_empty_state_leaves_the_next_render_from_scratch_empty():
    """``empty_state()`` is one shared object: its render from scratch must not hand out maps of the module's
    empty render, which a consuming render would then change for every later caller (found by the test below)."""
    first = render_all(empty_state())
    s, _ = fold_log([logged(t.InstanceRegistered(service="a", instance_id="1", address="10.0.0.1", port=80,
                                                  node_id="n1", depends_on=("b",)), ts=1)])
    render_all(s, previous=first, consume_previous=True)
    again = render_all(empty_state())
    assert (again.resources, again.versions, again.membership, again.owners, again.problems) == ({}, {}, {}, {}, ())
    assert again._index.node_deps == {} and again._index.holders == {}


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_a_render_that_consumes_its_previous_equals_one_that_copies_it(data):
    """The live projector gives each previous render up (``consume_previous``): the same renders, change sets
    and index, scoped (a worker's shards moving between renders) or not."""
    from projector.sharding import Ownership

    events = data.draw(interleaving(data.draw(topic_logs())))
    cuts = sorted(data.draw(st.lists(st.integers(0, len(events)), max_size=6)))
    shard_sets = st.one_of(st.none(), st.frozensets(st.integers(0, 11)).map(lambda s: Ownership(s, 12)))
    endpoint_versions = data.draw(st.booleans())
    copying = consuming = None
    for s in states_at(events, cuts):
        scope = data.draw(shard_sets)
        copied = render_all(s, previous=copying, scope=scope, endpoint_versions=endpoint_versions)
        consumed = render_all(s, previous=consuming, scope=scope, consume_previous=True,
                              endpoint_versions=endpoint_versions)
        assert _whole(consumed) == _whole(copied)
        copying, consuming = copied, consumed


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_naming_endpoints_at_the_latest_is_the_render_with_versions_as_the_view_topic_carries_it(data):
    """The projector's render (``endpoint_versions=False``) and replay's (with versions) hold the same resources
    and versions, and memberships that are the same records on the wire; incrementally, it reports as changed
    the nodes whose record moved (a moved endpoint version alone moves none)."""
    from projector import publisher as pub

    events = data.draw(interleaving(data.draw(topic_logs())))
    cuts = sorted(data.draw(st.lists(st.integers(0, len(events)), max_size=6)))
    versioned = latest = None
    for s in states_at(events, cuts):
        prev_wire, prev_owners = ({}, {}) if latest is None else (latest.membership, latest.owners)
        versioned = render_all(s, previous=versioned)
        latest = render_all(s, previous=latest, endpoint_versions=False)
        assert (latest.resources, latest.versions, latest.owners, latest.problems) == (
            versioned.resources, versioned.versions, versioned.owners, versioned.problems)
        assert latest.membership == {n: pub.on_the_wire(m) for n, m in versioned.membership.items()}
        assert set(latest.changed_nodes) == {n for n, m in latest.membership.items()
                                             if prev_wire.get(n) != m or prev_owners.get(n) != latest.owners.get(n)}
        assert set(latest.changed) == set(versioned.changed) and set(latest.removed) == set(versioned.removed)


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_checkpoints_through_one_row_memo_are_the_bytes_without_it(data):
    """The live projector serializes each checkpoint through one ``RowMemo`` (rows of instances it already
    serialized are reused): every checkpoint along a log is the same bytes as a fresh serialization, and
    reads back to the same state."""
    events = data.draw(interleaving(data.draw(topic_logs())))
    cuts = sorted(data.draw(st.lists(st.integers(0, len(events)), max_size=6)))
    memo = RowMemo()
    for s in states_at(events, cuts):
        through_memo = state_to_bytes(s, memo)
        assert through_memo == state_to_bytes(s)
        assert state_from_bytes(through_memo) == s
    # a state from earlier in the log (the memo holds the later one's rows): still the same bytes
    earlier = fold_log(events[: len(events) // 2])[0]
    assert state_to_bytes(earlier, memo) == state_to_bytes(earlier)
