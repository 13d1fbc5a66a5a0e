"""The sidecar's local subscription API, its pure parts: requests, what Envoy holds, replies, flags."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from events import types as t
from proxy import cli
from proxy.subscriptions import Reply, Request, held_dependencies, holds, parse_request, rejection_reply
from tests.unit.proxy.test_options import parse, problems

DUMP = json.loads((Path(__file__).parent / "fixtures" / "config_dump_ads.json").read_text())
NODE = "cli-c1"


@pytest.mark.parametrize(
    ("method", "path", "expected"),
    [
        ("PUT", "/v1/subscriptions/ratings", Request("subscribe", "ratings")),
        ("POST", "/v1/subscriptions/ratings", Request("subscribe", "ratings")),
        ("DELETE", "/v1/subscriptions/ratings", Request("unsubscribe", "ratings")),
        ("GET", "/v1/subscriptions", Request("list")),
        ("GET", "/v1/subscriptions/?x=1", Request("list")),
    ],
)
def test_requests_are_parsed(method, path, expected):
    assert parse_request(method, path) == expected


@pytest.mark.parametrize(
    ("method", "path", "status", "says"),
    [
        ("PUT", "/v1/subscriptions/Ratings", 400, "service 'Ratings': must be a lowercase DNS-style name"),
        ("PUT", "/v1/subscriptions/" + "a" * 300, 400, "…"),
        ("PUT", "/v1/subscriptions/%0a%1b", 400, "service '\\n\\x1b'"),
        ("GET", "/v1/subscriptions/ratings", 405, "use PUT to subscribe"),
        ("PUT", "/v1/subscriptions", 405, "use GET to list"),
        ("GET", "/other", 400, "unknown path '/other'"),
    ],
)
def test_bad_requests_get_a_clear_bounded_error(method, path, status, says):
    reply = parse_request(method, path)
    assert isinstance(reply, Reply) and reply.status == status
    assert says in reply.body["error"] and len(reply.body["error"]) < 300


def test_what_envoy_holds_is_read_from_the_outbound_route_and_tcp_listeners():
    assert held_dependencies(DUMP, NODE) == {"srv"}
    assert holds(DUMP, NODE, "srv")
    assert not holds(DUMP, NODE, "ratings")
    assert held_dependencies(DUMP, "another-node") == set()


def test_a_cluster_without_its_endpoints_or_route_is_not_held_yet():
    dump = copy.deepcopy(DUMP)
    for config in dump["configs"]:
        if config["@type"].endswith("EndpointsConfigDump"):
            config["dynamic_endpoint_configs"] = [
                e for e in config["dynamic_endpoint_configs"] if e["endpoint_config"]["cluster_name"] != "srv"]
    assert not holds(dump, NODE, "srv")
    assert held_dependencies(dump, NODE) == {"srv"}  # the route still names it: not "unsubscribed" yet


def test_a_tcp_listener_counts_as_serving_its_service():
    dump = copy.deepcopy(DUMP)
    for config in dump["configs"]:
        if config["@type"].endswith("ListenersConfigDump"):
            config["dynamic_listeners"].append({"name": f"{NODE}~tcp~db", "active_state": {"version_info": "1"}})
    assert held_dependencies(dump, NODE) == {"srv", "db"}


@pytest.mark.parametrize(("problem", "status"), [("unknown_service", 404), ("declared", 409),
                                                  ("not_subscribed", 409), ("unknown_instance", 409),
                                                  ("restricted", 409)])
def test_a_recorded_refusal_becomes_a_reply_naming_the_event(problem, status):
    j = t.SubscriptionRejected(action="subscribe", problem=problem, service="web", instance_id="w1",
                               dependency="ratings", reason="why", source_topic="meshlog.registrations",
                               source_partition=0, source_offset=7)
    reply = rejection_reply(j)
    assert reply.status == status
    assert reply.body["error"] == "why" and reply.body["event"]["offset"] == 7


def test_a_subscription_refused_for_its_author_is_a_403_naming_the_event():
    j = t.EventRefused(event_type="dependency.subscribed", event_key="instance/web/w1", event_id="e1",
                       problem="not_permitted", reason="spiffe://mesh.local/sidecar/web/w2 may not state it",
                       author="spiffe://mesh.local/sidecar/web/w2", producer="sidecar", source_topic="meshlog.registrations",
                       source_partition=0, source_offset=9)
    reply = rejection_reply(j)
    assert reply.status == 403 and reply.body["problem"] == "not_permitted"
    assert reply.body["error"].endswith("may not state it") and reply.body["event"]["offset"] == 9


def test_the_api_port_flag_is_validated_and_must_not_collide():
    assert parse("--api-port", "0").api_port == 0
    assert parse().api_port is None
    with pytest.raises(SystemExit) as exc:  # the shared argparse port type (meshlog.argtypes)
        parse("--api-port", "70000")
    assert exc.value.code == 2
    assert "--api-port: port 15001 is also --inbound-port" in problems("--api-port", "15001")
    with pytest.raises(SystemExit):
        parse("--subscribe-timeout", "0")


def test_the_cli_refuses_a_bad_port_with_exit_2_and_finds_the_port_in_the_status_file(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["subscribe", "ratings", "--api-port", "0"])
    assert exc.value.code == 2
    assert "--api-port: 0 is not a port" in capsys.readouterr().err
    assert cli.main(["subscribe", "ratings"]) == 2
    status = tmp_path / "status.json"
    status.write_text(json.dumps({"ports": {"api": None}}))
    assert cli.main(["subscriptions", "--status-file", str(status)]) == 1
    assert "serves no subscription API" in capsys.readouterr().err


class _DumpOnly:
    """Stands in for the running Envoy: answers /config_dump from the fixture."""

    def config_dump(self) -> dict:
        return DUMP


async def test_the_api_answers_on_loopback_with_the_listing_and_refuses_before_registration():
    import asyncio

    from proxy import subscriptions

    reg = t.InstanceRegistered(service="cli", instance_id="c1", address="127.0.0.1", port=8080, node_id=NODE,
                               depends_on=("srv", "late"))
    service = subscriptions.SubscriptionService(registration=reg, bootstrap="127.0.0.1:1", envoy=_DumpOnly,
                                                registered=lambda: False)
    server = await subscriptions.serve(service, 0)
    host, port = server.sockets[0].getsockname()[:2]
    try:
        assert host == "127.0.0.1"
        status, body = await asyncio.to_thread(subscriptions.call, port, "GET", None, 5)
        assert (status, body) == (200, {"node_id": NODE, "declared": ["late", "srv"], "subscribed": [],
                                        "declared_not_yet_served": ["late"]})
        status, body = await asyncio.to_thread(subscriptions.call, port, "PUT", "ratings", 5)
        assert status == 503 and "not registered yet" in body["error"]
        status, body = await asyncio.to_thread(subscriptions.call, port, "PUT", "Bad Name", 5)
        assert status == 400 and "'Bad Name'" in body["error"]
    finally:
        server.close()
        await server.wait_closed()


def test_the_on_demand_catch_all_is_not_a_held_dependency():
    dump = copy.deepcopy(DUMP)
    for config in dump["configs"]:
        for r in config.get("dynamic_route_configs", []):
            if r.get("route_config", {}).get("name") == f"{NODE}~outbound":
                r["route_config"]["virtual_hosts"].append({"name": "~on-demand", "domains": ["*"]})
    assert held_dependencies(dump, NODE) == {"srv"}
