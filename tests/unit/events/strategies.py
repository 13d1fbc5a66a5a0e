"""Hypothesis strategies producing valid payloads of every event type."""

from hypothesis import strategies as st

from events import types as t

names = st.from_regex(r"[a-z][a-z0-9-]{0,10}[a-z0-9]", fullmatch=True)
instance_ids = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,14}[A-Za-z0-9]", fullmatch=True)
ports = st.integers(1, 65535)
label_values = st.from_regex(r"[A-Za-z0-9._-]{1,10}", fullmatch=True)
labels = st.dictionaries(st.sampled_from(["version", "zone", "team", "app.kubernetes.io/name"]), label_values, max_size=3)
addresses = st.one_of(st.ip_addresses(v=4).map(str), st.ip_addresses(v=6).map(str), st.just("host-1.example"))


@st.composite
def registered(draw):
    service = draw(names)
    deps = draw(st.lists(names.filter(lambda n: n != service), unique=True, max_size=4))
    sidecar = draw(st.none() | st.tuples(ports, ports).filter(lambda p: p[0] != p[1]))
    return t.InstanceRegistered(
        service=service,
        instance_id=draw(instance_ids),
        address=draw(st.sampled_from(["10.0.0.7", "fd00::1", "app-3.internal"])),
        port=draw(ports),
        protocol=draw(st.sampled_from(["http", "tcp", "grpc"])),
        labels=draw(labels),
        weight=draw(st.integers(1, 128)),
        node_id=draw(st.none() | names),
        sidecar=None if sidecar is None else t.SidecarPorts(inbound_port=sidecar[0], outbound_port=sidecar[1]),
        depends_on=tuple(deps),
    )


@st.composite
def weighted(draw):
    n = draw(st.integers(1, 4))
    cuts = sorted(draw(st.lists(st.integers(0, 100), min_size=n - 1, max_size=n - 1)))
    weights = [b - a for a, b in zip([0, *cuts], [*cuts, 100])]
    subsets = draw(st.lists(names, min_size=n, max_size=n, unique=True))
    return tuple(t.WeightedDestination(subset=s, weight=w) for s, w in zip(subsets, weights))


header_matches = st.one_of(
    st.builds(t.HeaderMatch, name=st.just("x-user"), exact=st.text(max_size=5)),
    st.builds(t.HeaderMatch, name=st.just("x-canary"), prefix=st.text(min_size=1, max_size=5)),
    st.builds(t.HeaderMatch, name=st.just("x-debug"), present=st.just(True)),
)
route_matches = st.builds(
    t.RouteMatch,
    path_prefix=st.none() | st.just("/api"),
    headers=st.lists(header_matches, max_size=2).map(tuple),
)
routes = st.builds(
    t.HttpRoute,
    match=route_matches,
    destinations=weighted(),
    timeout_ms=st.none() | st.integers(1, 60_000),
    retries=st.none() | st.builds(t.RetryPolicy, attempts=st.integers(0, 5)),
)
route_rules = st.builds(
    t.RouteRuleUpserted, host=names, revision=st.integers(1, 10**6), routes=st.lists(routes, min_size=1, max_size=3).map(tuple)
)
policies = st.builds(
    t.DestinationPolicyUpserted,
    service=names,
    revision=st.integers(1, 1000),
    subsets=st.lists(st.builds(t.Subset, name=names, labels=labels.filter(bool)), max_size=3, unique_by=lambda s: s.name).map(tuple),
    lb_policy=st.sampled_from(["round_robin", "least_request", "random", "ring_hash"]),
    circuit_breaker=st.none() | st.builds(t.CircuitBreaker),
    outlier_detection=st.none() | st.builds(t.OutlierDetection),
)
any_payload = st.one_of(
    registered(),
    st.builds(t.InstanceDeregistered, service=names, instance_id=instance_ids),
    st.builds(
        t.InstanceHealthChanged,
        service=names,
        instance_id=instance_ids,
        status=st.sampled_from(["healthy", "unhealthy", "draining"]),
        observer=st.just("checker-1"),
    ),
    route_rules,
    st.builds(t.RouteRuleDeleted, host=names, revision=st.integers(1, 100)),
    policies,
    st.builds(t.DestinationPolicyDeleted, service=names, revision=st.integers(1, 100)),
)
