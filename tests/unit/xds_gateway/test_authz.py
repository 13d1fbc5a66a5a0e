"""Who may stream which node: the pure decisions of xds_gateway.authz."""

from __future__ import annotations

import pytest

from identity import spiffe
from xds_gateway.authz import ALLOW, DENY, PENDING, authenticate, authorize

D = "mesh.local"
WEB_1 = spiffe.sidecar(D, "web", "web-1")


def test_a_sidecar_may_stream_the_node_its_instance_registered():
    d = authorize(WEB_1, "web-1", ("web", "web-1"))
    assert d.outcome == ALLOW and d.reason == "owner"


def test_another_instance_of_the_same_service_is_denied_naming_both_identities():
    d = authorize(spiffe.sidecar(D, "web", "web-2"), "web-1", ("web", "web-1"))
    assert d.outcome == DENY and d.reason == "not_owner"
    assert "spiffe://mesh.local/sidecar/web/web-2" in d.detail and "web/web-1" in d.detail


def test_an_instance_of_another_service_with_the_same_instance_id_is_denied():
    assert authorize(spiffe.sidecar(D, "reviews", "web-1"), "web-1", ("web", "web-1")).outcome == DENY


def test_a_node_not_in_the_view_is_pending_for_a_sidecar():
    d = authorize(WEB_1, "web-1", None)
    assert d.outcome == PENDING and d.reason == "not_in_view"


@pytest.mark.parametrize("ident", [spiffe.gateway(D, "g1"), spiffe.projector(D), spiffe.checker(D, "c1")])
def test_roles_without_a_node_are_denied(ident):
    for owner in (("web", "web-1"), None):
        d = authorize(ident, "web-1", owner)
        assert d.outcome == DENY and d.reason == "role_has_no_node"


def test_an_operator_may_watch_any_node():
    d = authorize(spiffe.operator(D, "alice"), "web-1", ("web", "web-1"))
    assert d.outcome == ALLOW and d.reason == "operator"


def test_insecure_mode_allows_everything():
    assert authorize(None, "web-1", ("web", "web-1")).outcome == ALLOW


def test_a_node_id_in_a_message_is_escaped_and_bounded():
    d = authorize(spiffe.sidecar(D, "web", "web-2"), "x\x1b[31m" + "y" * 500, ("web", "web-1"))
    assert "\x1b" not in d.detail and len(d.detail) < 400


def test_authenticate_takes_the_one_spiffe_id_of_the_trust_domain():
    got = authenticate([WEB_1.uri], D, "ab12")
    assert got.identity == WEB_1 and got.refusal is None


@pytest.mark.parametrize("ids, reason", [
    ([], "no_spiffe_id"),
    (["spiffe://mesh.local/sidecar/web/a", "spiffe://mesh.local/sidecar/web/b"], "bad_spiffe_id"),
    (["spiffe://mesh.local/nosuchrole/x"], "bad_spiffe_id"),
    (["spiffe://other.domain/sidecar/web/web-1"], "other_trust_domain"),
])
def test_authenticate_refuses(ids, reason):
    got = authenticate(ids, D, "ab12")
    assert got.identity is None and got.refusal.reason == reason and got.refusal.outcome == DENY


def test_authenticate_refuses_a_revoked_serial():
    got = authenticate([WEB_1.uri], D, "ab12", revoked={"ab12"})
    assert got.identity is None and got.refusal.reason == "revoked"
