"""A small mesh that uses every feature the render knows, for golden and Envoy tests.

  web (http, sidecar, node "web-1") depends on reviews (http), ratings (grpc), db (tcp)
  reviews: subsets v1/v2/v3, least_request, circuit breaker, outlier detection;
           rule: canary header -> v2, exact path -> v3, 90/10 v1/v2 with timeout
           and retries, plus 5% to another service (reviews-legacy)
  ratings: grpc, ring_hash, one instance behind a sidecar (node "ratings-1")
  db:      tcp, random, behind a sidecar (node "db-1")
  client:  proxyless gRPC client (node "grpc-client") depending on ratings
  health:  one unhealthy, one draining; zones a/b; weights; an IPv6 endpoint;
           one instance with a hostname address (left out of EDS, reported)
"""

from __future__ import annotations

from dataclasses import dataclass

from events import types as t
from projector.state import MeshState
from tests.unit.projector.helpers import Log, fold_log, route


@dataclass(frozen=True)
class Ports:
    web_in: int = 15006
    web_out: int = 15001
    ratings_in: int = 15106
    ratings_out: int = 15101
    db_in: int = 15206
    db_out: int = 15201
    db_app: int = 5432


def feature_mesh(p: Ports = Ports(), local_address: str = "10.0.1.1") -> MeshState:
    state, decisions = fold_log(feature_mesh_log(p, local_address).events)
    assert decisions == [], decisions
    return state


def feature_mesh_log(p: Ports = Ports(), local_address: str = "10.0.1.1") -> Log:
    """The events of ``feature_mesh``, for a test that goes on appending to them."""
    log = Log()
    log.register(
        "web", "web-1", local_address, 8080, node_id="web-1", sidecar=(p.web_in, p.web_out),
        depends_on=("reviews", "ratings", "db"), labels={"zone": "a"},
    )
    log.register("reviews", "reviews-1", "10.0.2.1", 9080, labels={"version": "v1", "zone": "a"}, weight=10)
    log.register("reviews", "reviews-2", "10.0.2.2", 9080, labels={"version": "v2", "zone": "b"}, weight=5)
    log.register("reviews", "reviews-3", "fd00::3", 9080, labels={"version": "v3", "zone": "b"})
    log.register("reviews", "reviews-4", "reviews-4.internal", 9080, labels={"version": "v1"})
    log.register("reviews-legacy", "legacy-1", "10.0.3.1", 9080)
    log.register(
        "ratings", "ratings-1", local_address, 9090, protocol="grpc", node_id="ratings-1",
        sidecar=(p.ratings_in, p.ratings_out), labels={"version": "v1", "zone": "a"},
    )
    log.register("ratings", "ratings-2", "10.0.4.2", 9090, protocol="grpc", labels={"version": "v2", "zone": "a"})
    log.register(
        "db", "db-1", local_address, p.db_app, protocol="tcp", node_id="db-1", sidecar=(p.db_in, p.db_out)
    )
    log.register("client", "client-1", "10.0.5.1", 7000, protocol="grpc", node_id="grpc-client", depends_on=("ratings",))
    log.health("reviews", "reviews-2", "unhealthy")
    log.health("ratings", "ratings-2", "draining")
    log.policy(
        "reviews", 1, {"v1": {"version": "v1"}, "v2": {"version": "v2"}, "v3": {"version": "v3"}},
        lb_policy="least_request", connect_timeout_ms=250,
        circuit_breaker=t.CircuitBreaker(max_connections=100, max_pending_requests=10, max_requests=200, max_retries=2),
        outlier_detection=t.OutlierDetection(consecutive_5xx=3, interval_ms=5000, base_ejection_time_ms=15000,
                                             max_ejection_percent=50),
    )
    log.policy("ratings", 1, {"v1": {"version": "v1"}, "v2": {"version": "v2"}}, lb_policy="ring_hash")
    log.policy("db", 1, lb_policy="random")
    log.rule(
        "reviews", 1,
        route(("v2", 100), prefix="/api", headers=[t.HeaderMatch(name="x-canary", exact="1"),
                                                   t.HeaderMatch(name="x-debug", present=True)]),
        route(("v3", 100), exact="/reviews/special", headers=[t.HeaderMatch(name="x-user", prefix="test-")]),
        route(("v1", 85), ("v2", 10), (None, 5, "reviews-legacy"), timeout_ms=2500,
              retries=t.RetryPolicy(attempts=2, per_try_timeout_ms=500, retry_on=("5xx", "reset"))),
    )
    log.rule("ratings", 1, route(("v1", 50), ("v2", 50), prefix="/"))
    return log
