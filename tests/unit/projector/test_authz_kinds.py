"""The authorization rules' per-type table gives the answers of ``isinstance``, for every payload type and a subclass.

``projector.authz`` classifies a payload by its exact type once (``_kind``)
instead of testing ``isinstance`` per event; a type it has not seen (a
subclass) is classified by ``isinstance`` on first sight, so no rule can be
skipped by a subclass.
"""

from __future__ import annotations

import pytest

from events import types as t
from identity import spiffe
from projector import authz

DOMAIN = "mesh.local"


def expected_kind(payload_type: type) -> int:
    return ((authz._INSTANCE if issubclass(payload_type, authz._INSTANCE_FACTS) else 0)
            | (authz._RULE if issubclass(payload_type, authz._RULE_FACTS) else 0)
            | (authz._HEALTH if issubclass(payload_type, t.InstanceHealthChanged) else 0)
            | (authz._SUBSCRIBED if issubclass(payload_type, t.DependencySubscribed) else 0)
            | (authz._REGISTERED if issubclass(payload_type, t.InstanceRegistered) else 0))


@pytest.mark.parametrize("payload_type", sorted(t.PAYLOAD_TYPES.values(), key=lambda c: c.TYPE), ids=lambda c: c.TYPE)
def test_each_payload_type_is_classified_as_isinstance_would(payload_type):
    payload = payload_type.model_construct()  # the kind depends on the type only
    assert authz._kind(payload) == expected_kind(payload_type)


class _SubclassedRegistration(t.InstanceRegistered):
    pass


def test_a_subclass_of_a_registration_still_gets_the_registration_rules():
    sidecar = spiffe.sidecar(DOMAIN, "reviews", "r1")
    heavy = _SubclassedRegistration(service="reviews", instance_id="r1", address="10.0.0.9", port=9080,
                                    weight=authz.MAX_INSTANCE_WEIGHT + 1)
    empty = {"nodes": {}, "services": {}, "by_service": {}, "instances": {}}
    refused = authz.refusal(sidecar, heavy, empty.__getitem__)
    assert refused is not None and refused.problem == "weight_too_high"
    other = spiffe.sidecar(DOMAIN, "reviews", "r2")
    assert authz.refusal(other, heavy, empty.__getitem__).problem == "not_permitted"
