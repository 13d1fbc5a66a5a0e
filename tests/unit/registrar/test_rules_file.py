"""A rules file is accepted whole or refused whole, naming document and field."""

import pytest

from events.errors import EventValidationError
from events.types import DestinationPolicyUpserted, RouteRuleUpserted
from registrar.rules_file import parse_rules

CANARY = """
kind: DestinationPolicy
service: reviews
revision: 1
subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
---
kind: RouteRule
host: reviews
revision: 1
routes:
  - destinations:
      - {subset: v1, weight: 90}
      - {subset: v2, weight: 10}
"""


def test_a_yaml_file_with_two_documents_gives_two_payloads_in_order():
    payloads = parse_rules(CANARY)
    assert [type(p) for p in payloads] == [DestinationPolicyUpserted, RouteRuleUpserted]
    assert payloads[1].routes[0].destinations[1].weight == 10


def test_json_is_accepted_too():
    payloads = parse_rules('[{"kind": "RouteRule", "host": "a", "revision": 2, "routes": [{"destinations": [{}]}]}]')
    assert payloads[0].host == "a" and payloads[0].revision == 2


def test_one_bad_document_refuses_the_whole_file_and_names_it():
    bad = CANARY.replace("weight: 10", "weight: 5")
    with pytest.raises(EventValidationError) as info:
        parse_rules(bad)
    assert info.value.fields == ("document 2 (RouteRule reviews).routes.0.destinations",)


def test_unknown_kind_is_named():
    with pytest.raises(EventValidationError) as info:
        parse_rules("kind: VirtualService\nhost: a\n")
    assert info.value.fields == ("document 1.kind",)


def test_broken_yaml_says_where():
    with pytest.raises(EventValidationError, match="line"):
        parse_rules("kind: RouteRule\n  host: [a\n")


def test_an_empty_file_is_refused():
    with pytest.raises(EventValidationError, match="no documents"):
        parse_rules("")


def test_the_same_rule_twice_in_one_file_is_refused():
    doc = "kind: RouteRule\nhost: a\nrevision: 1\nroutes: [{destinations: [{}]}]\n"
    with pytest.raises(EventValidationError, match="twice"):
        parse_rules(doc + "---\n" + doc)
