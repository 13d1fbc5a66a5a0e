"""The demo's parts that need no broker: its app, its traffic client, its readings and its arguments."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from meshlog.demo.events_tail import SeenEvent, summarize
from meshlog.demo.scenes import _clusters_hold, _health_event, _refused_text, expected_weights, route_weights
from meshlog.demo.traffic import Traffic
from meshlog.demo_app import DemoApp, KeepAliveClient, classify
from events.types import InstanceHealthChanged, RouteRuleUpserted, HttpRoute, WeightedDestination

BIN = Path(sys.executable).parent


def post(port: int, path: str) -> int:
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    conn.request("POST", path, body=b"")
    status = conn.getresponse().status
    conn.close()
    return status


def test_a_demo_app_answers_with_its_version_until_it_is_made_to_fail():
    with DemoApp("reviews-v2-a", "v2", "reviews") as app:
        client = KeepAliveClient(app.port)
        status, body = client.get("reviews", "/")
        assert status == 200 and json.loads(body) == {"service": "reviews", "instance": "reviews-v2-a",
                                                       "version": "v2", "path": "/"}
        assert client.get("reviews", "/healthz") == (200, b"ok\n")
        assert post(app.port, "/admin/fail") == 200
        assert client.get("reviews", "/")[0] == 503
        assert client.get("reviews", "/healthz")[0] == 503
        assert post(app.port, "/admin/recover") == 200
        assert client.get("reviews", "/healthz")[0] == 200
        assert post(app.port, "/admin/other") == 404
        client.close()
        assert app.served == 1 and app.refused == 2


def test_classify_reads_version_and_instance_and_calls_anything_else_an_error():
    assert classify(200, b'{"version": "v1", "instance": "a"}') == (True, "v1", "a")
    assert classify(503, b"no healthy upstream") == (False, "", "HTTP 503: no healthy upstream")
    assert classify(503, b"") == (False, "", "HTTP 503")
    assert classify(200, b"<html>") == (False, "", "not JSON")


def test_traffic_counts_by_instance_and_errors_by_kind_over_a_time_window():
    with DemoApp("a", "v1", "svc") as app:
        traffic = Traffic(app.port, "svc", rate=100, threads=2).start()
        time.sleep(0.6)
        app.failing = True
        failing_since = time.time()
        time.sleep(0.4)
        traffic.stop()
    before = traffic.window(0, failing_since - 0.1)  # a request in flight at the switch may get either answer
    after = traffic.window(failing_since + 0.05)
    assert before.by_instance.get("a", 0) > 20 and before.errors == 0 and before.share("v1") == 1.0
    assert after.errors > 10 and after.by_instance == {} and set(after.error_kinds) == {"HTTP 503: instance is failing"}


def test_route_weights_read_envoy_and_replay_route_configs_alike():
    config = {"name": "web-1~outbound", "virtual_hosts": [
        {"name": "other", "domains": ["details"], "routes": [{"route": {"cluster": "details"}}]},
        {"name": "reviews", "domains": ["reviews", "reviews:*"], "routes": [
            {"match": {"prefix": "/"}, "route": {"weighted_clusters": {"clusters": [
                {"name": "reviews|v1", "weight": 90}, {"name": "reviews|v2", "weight": 10}]}}}]}]}
    assert route_weights([config], "reviews") == {"reviews|v1": 90, "reviews|v2": 10}
    assert route_weights([config], "details") == {"details": 100}
    assert route_weights([config], "ratings") is None


def test_expected_weights_drop_zero_weight_subsets_like_the_renderer():
    assert expected_weights("reviews", 90, 10) == {"reviews|v1": 90, "reviews|v2": 10}
    assert expected_weights("reviews", 100, 0) == {"reviews|v1": 100}


FORGER = "spiffe://demo.mesh/sidecar/ratings/ratings-1"


def _log_entry(rejection, author):
    return {"kind": "event", "type": "instance.registered", "key": "reviews/ratings-1", "rejection": rejection,
            "author": author}


def test_the_forged_scene_passes_a_refusal_only_if_recorded_for_its_reason_and_by_the_verified_forger():
    refused = {"reason": "spiffe://demo.mesh/sidecar/ratings/ratings-1 may not state instance.registered of ...",
               "recorded": True}
    verified = {"verified": True, "spiffe_id": FORGER, "serial": "1f", "problem": None}
    ok, text = _refused_text(_log_entry(refused, verified), FORGER, "may not state instance.registered")
    assert ok and f"by {FORGER}; refused: " in text
    for entry, because in [
        (_log_entry(None, verified), "may not state"),  # folded: the forgery went through
        (_log_entry({**refused, "recorded": False}, verified), "may not state"),  # the live projector did not refuse it
        (_log_entry(refused, verified), "node id 'web-1' is held"),  # refused, but for another reason
        (_log_entry(refused, {"verified": False, "spiffe_id": None, "serial": None, "problem": "unknown_signer"}),
         "may not state"),  # refused as unsigned-ish, not for what its author stated
        (_log_entry(refused, {**verified, "spiffe_id": "spiffe://demo.mesh/sidecar/web/web-1"}), "may not state"),
        (None, "may not state"),
    ]:
        assert _refused_text(entry, FORGER, because)[0] is False, entry
    assert "unverified (unknown_signer)" in _refused_text(
        _log_entry(refused, {"verified": False, "spiffe_id": None, "problem": "unknown_signer"}), FORGER, "x")[1]


def test_clusters_hold_matches_a_host_address_exactly():
    class Envoy:
        def admin(self, path):
            assert path == "/clusters"
            return "reviews::127.0.0.1:41000::cx_active::1\nreviews::127.0.0.1:4100::health_flags::healthy\n"

    assert _clusters_hold(Envoy(), "127.0.0.1:41000") and _clusters_hold(Envoy(), "127.0.0.1:4100")
    assert not _clusters_hold(Envoy(), "127.0.0.1:410")


def test_the_events_panel_summarizes_rules_and_health():
    rule = RouteRuleUpserted(host="reviews", revision=2, routes=(HttpRoute(destinations=(
        WeightedDestination(subset="v1", weight=50), WeightedDestination(subset="v2", weight=50))),))
    assert summarize(rule) == "rev 2: v1=50 v2=50"
    health = InstanceHealthChanged(service="reviews", instance_id="a", status="unhealthy", reason="3 failures",
                                   observer="healthcheck/checker-1")
    assert summarize(health) == "unhealthy (3 failures) by healthcheck/checker-1"


@pytest.mark.parametrize("argv, problem", [
    (["demo", "--scene", "nope"], "--scene: unknown scene 'nope'"),
    (["demo", "--pace", "0"], "argument --pace: '0' is not a duration"),
    (["demo", "--rate", "nan"], "argument --rate: 'nan' is not between 1 and 2000"),
    (["demo", "--brokers", "0"], "argument --brokers: 0 is not between 1 and 9"),
    (["demo", "--brokers", "3", "--bootstrap", "127.0.0.1:9092"], "--brokers: a cluster is started only without --bootstrap"),
    (["demo-client", "--port", "0", "--host", "x"], "--port: 0 is not a port"),
    (["demo-client", "--port", "80", "--host", "x", "--rate", "-1"], "argument --rate:"),
    (["demo-app", "--service", "s", "--instance-id", "i", "--port", "70000"], "--port: 70000 is not a port"),
])
def test_bad_arguments_exit_2_naming_the_flag_and_start_nothing(argv, problem):
    result = subprocess.run([str(BIN / "meshlog"), *argv], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stdout + result.stderr
    assert problem in result.stdout + result.stderr
    assert "Kafka" not in result.stdout  # nothing was started


def test_a_health_event_logged_before_the_scene_began_does_not_count_as_its_verdict():
    from types import SimpleNamespace

    def seen(at: float, status: str) -> SeenEvent:
        return SeenEvent(at, "meshlog.health", "instance.health_changed", "reviews/reviews-v1-b", status, "checker",
                         InstanceHealthChanged(service="reviews", instance_id="reviews-v1-b", status=status,
                                               observer="healthcheck/checker-1"))

    events = [seen(100.0, "unhealthy"), seen(101.0, "healthy"), seen(140.0, "unhealthy")]
    tail = SimpleNamespace(wait_for=lambda predicate, timeout: next((e for e in events if predicate(e)), None))
    demo = SimpleNamespace(stack=SimpleNamespace(reviews="reviews"), tail=tail)
    assert _health_event(demo, "reviews-v1-b", "unhealthy", 1, since=130.0).log_time == 140.0
    assert _health_event(demo, "reviews-v1-b", "healthy", 1, since=130.0) is None
