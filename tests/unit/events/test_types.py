"""Each event type accepts what it should and refuses bad input naming the field."""

import pytest

from events.codec import validate_payload
from events.errors import EventValidationError
from events import types as t

REG = {"service": "reviews", "instance_id": "reviews-1", "address": "10.0.0.5", "port": 9080}


def problems(payload_type, data):
    with pytest.raises(EventValidationError) as info:
        validate_payload(payload_type, data)
    return {p.field: p.problem for p in info.value.problems}


def test_a_minimal_registration_gets_sane_defaults():
    reg = validate_payload(t.InstanceRegistered, REG)
    assert (reg.protocol, reg.weight, reg.labels, reg.sidecar, reg.depends_on) == ("http", 1, {}, None, ())
    assert reg.key() == "reviews/reviews-1"
    assert reg.TOPIC == "meshlog.registrations"


@pytest.mark.parametrize(
    "field, value, expected_field",
    [
        ("port", 70000, "port"),
        ("port", 0, "port"),
        ("port", "8080", "port"),
        ("service", "Reviews", "service"),
        ("service", "", "service"),
        ("instance_id", "a b", "instance_id"),
        ("address", "not an address!", "address"),
        ("protocol", "udp", "protocol"),
        ("weight", 0, "weight"),
        ("weight", 129, "weight"),
        ("labels", {"version": ""}, "labels.version"),
        ("depends_on", ["ratings", "ratings"], "depends_on"),
        ("sidecar", {"inbound_port": 15001, "outbound_port": 15001}, "sidecar"),
        ("sidecar", {"inbound_port": 99999, "outbound_port": 15001}, "sidecar.inbound_port"),
        ("colour", "blue", "colour"),
    ],
)
def test_bad_registration_fields_are_named(field, value, expected_field):
    found = problems(t.InstanceRegistered, {**REG, field: value})
    assert expected_field in found, found


@pytest.mark.parametrize("address", ["999.1.1.1", "1.2.3", "10.0.0.256", "1", "01.2.3.4", "host.123"])
def test_strings_that_look_like_ipv4_literals_must_be_valid_ones(address):
    assert "address" in problems(t.InstanceRegistered, {**REG, "address": address})


@pytest.mark.parametrize("address", ["10.0.0.5", "255.255.255.255", "fd00::1", "app-3.internal", "host-1", "1a.example",
                                     "123.example", "reviews"])
def test_addresses_and_host_names_still_accepted(address):
    assert validate_payload(t.InstanceRegistered, {**REG, "address": address}).address == address


@pytest.mark.parametrize("node_id", ["x\n\x1b[2J", "[/x]", "a b", "-a", "a" * 129, "x~tcp", "", "\u202ex"])
def test_node_ids_follow_the_instance_id_characters(node_id):
    assert "node_id" in problems(t.InstanceRegistered, {**REG, "node_id": node_id})


@pytest.mark.parametrize("field", ["service", "instance_id", "address", "node_id"])
def test_no_name_may_end_in_a_newline(field):
    # a regex anchored with $ also matches before a trailing newline
    value = {"service": "reviews", "instance_id": "reviews-1", "address": "10.0.0.5", "node_id": "n1"}[field]
    assert field in problems(t.InstanceRegistered, {**REG, field: value + "\n"})


def test_ordinary_node_ids_are_accepted():
    for node_id in ("web-1", "reviews-v1-a", "sidecar.ns_1:a", "A" * 128):
        assert validate_payload(t.InstanceRegistered, {**REG, "node_id": node_id}).node_id == node_id


def test_a_service_cannot_depend_on_itself():
    found = problems(t.InstanceRegistered, {**REG, "depends_on": ["reviews"]})
    assert "depends_on" in found


def test_a_registration_is_frozen():
    reg = validate_payload(t.InstanceRegistered, REG)
    with pytest.raises(Exception):
        reg.port = 1  # type: ignore[misc]


def test_health_status_must_be_known():
    found = problems(t.InstanceHealthChanged, {"service": "a", "instance_id": "a1", "status": "sick", "observer": "x"})
    assert "status" in found


def test_health_needs_an_observer():
    found = problems(t.InstanceHealthChanged, {"service": "a", "instance_id": "a1", "status": "healthy"})
    assert "observer" in found


RULE = {
    "host": "reviews",
    "revision": 1,
    "routes": [
        {
            "match": {"path_prefix": "/api", "headers": [{"name": "x-canary", "exact": "1"}]},
            "destinations": [{"subset": "v1", "weight": 90}, {"subset": "v2", "weight": 10}],
            "timeout_ms": 2000,
            "retries": {"attempts": 2, "per_try_timeout_ms": 500},
        }
    ],
}


def test_a_canary_route_rule_is_accepted():
    rule = validate_payload(t.RouteRuleUpserted, RULE)
    assert [d.weight for d in rule.routes[0].destinations] == [90, 10]
    assert rule.key() == "route/reviews"


def test_route_weights_must_sum_to_100():
    bad = {**RULE, "routes": [{"destinations": [{"subset": "v1", "weight": 90}, {"subset": "v2", "weight": 5}]}]}
    found = problems(t.RouteRuleUpserted, bad)
    assert found == {"routes.0.destinations": "weights must sum to 100, got 95"}


def test_a_destination_may_not_appear_twice():
    bad = {**RULE, "routes": [{"destinations": [{"subset": "v1", "weight": 50}, {"subset": "v1", "weight": 50}]}]}
    assert "routes.0.destinations" in problems(t.RouteRuleUpserted, bad)


def test_a_header_match_needs_exactly_one_kind():
    bad = {**RULE, "routes": [{"match": {"headers": [{"name": "x", "exact": "a", "prefix": "b"}]}, "destinations": [{}]}]}
    assert "routes.0.match.headers.0" in problems(t.RouteRuleUpserted, bad)


def test_paths_must_be_absolute():
    bad = {**RULE, "routes": [{"match": {"path_prefix": "api"}, "destinations": [{}]}]}
    assert "routes.0.match.path_prefix" in problems(t.RouteRuleUpserted, bad)


def test_revision_must_be_positive():
    assert "revision" in problems(t.RouteRuleUpserted, {**RULE, "revision": 0})


def test_a_rule_needs_routes():
    assert "routes" in problems(t.RouteRuleUpserted, {**RULE, "routes": []})


def test_destination_policy_defaults_and_validation():
    policy = validate_payload(
        t.DestinationPolicyUpserted,
        {"service": "reviews", "revision": 1, "subsets": [{"name": "v1", "labels": {"version": "v1"}}]},
    )
    assert policy.lb_policy == "round_robin"
    assert policy.key() == "policy/reviews"
    found = problems(
        t.DestinationPolicyUpserted,
        {
            "service": "reviews",
            "revision": 1,
            "lb_policy": "fastest",
            "subsets": [{"name": "v1", "labels": {"version": "v1"}}, {"name": "v1", "labels": {"version": "v2"}}],
            "outlier_detection": {"max_ejection_percent": 150},
        },
    )
    assert {"lb_policy", "subsets", "outlier_detection.max_ejection_percent"} <= set(found)


def test_a_subset_needs_labels():
    found = problems(t.DestinationPolicyUpserted, {"service": "r", "revision": 1, "subsets": [{"name": "v1", "labels": {}}]})
    assert "subsets.0.labels" in found


def test_every_type_has_a_distinct_wire_name_and_a_topic():
    assert len(t.PAYLOAD_TYPES) == 21
    for name, cls in t.PAYLOAD_TYPES.items():
        assert cls.TYPE == name and cls.TOPIC.startswith("meshlog.") and cls.SCHEMA_VERSION >= 1
