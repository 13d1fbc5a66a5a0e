"""identity.spiffe: one spelling per identity, strict refusals naming the problem."""

from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from identity import spiffe
from identity.spiffe import SpiffeId, SpiffeIdError


@pytest.mark.parametrize("text,role,segments", [
    ("spiffe://mesh.local/sidecar/reviews/r1", "sidecar", ("reviews", "r1")),
    ("spiffe://mesh.local/gateway/g-0", "gateway", ("g-0",)),
    ("spiffe://mesh.local/projector", "projector", ()),
    ("spiffe://mesh.local/checker/central", "checker", ("central",)),
    ("spiffe://mesh.local/operator/alice_b", "operator", ("alice_b",)),
    ("spiffe://mesh.local/ca", "ca", ()),
])
def test_parse_and_format_round_trip(text, role, segments):
    ident = spiffe.parse(text)
    assert (ident.domain, ident.role, ident.segments) == ("mesh.local", role, segments)
    assert spiffe.format(ident) == text == str(ident)


def test_named_fields_and_helpers():
    ident = spiffe.sidecar("mesh.local", "reviews", "r1")
    assert ident.field("service") == "reviews" and ident.field("instance") == "r1"
    assert spiffe.gateway("d", "g1").field("replica") == "g1"
    assert spiffe.checker("d", "c").field("name") == "c"
    assert spiffe.operator("d", "u").field("user") == "u"
    with pytest.raises(SpiffeIdError, match="has no 'replica'"):
        ident.field("replica")


@pytest.mark.parametrize("text,problem", [
    ("http://mesh.local/projector", "must start with 'spiffe://'"),
    ("spiffe:///projector", "no trust domain"),
    ("spiffe://Mesh.Local/projector", "trust domain"),
    ("spiffe://mesh.local", "no path"),
    ("spiffe://mesh.local/", "no path"),
    ("spiffe://mesh.local/projector/", "empty path segment"),
    ("spiffe://mesh.local//projector", "empty path segment"),
    ("spiffe://mesh.local/projector/extra", "takes 0 path segment"),
    ("spiffe://mesh.local/sidecar/reviews", "takes 2 path segment"),
    ("spiffe://mesh.local/sidecar/Reviews/r1", "lowercase DNS-style service"),
    ("spiffe://mesh.local/sidecar/reviews/..", "not '.' or '..'"),
    ("spiffe://mesh.local/wizard/x", "role 'wizard' is not one of"),
    ("spiffe://mesh.local:8443/projector", "a port"),
    ("spiffe://mesh.local/projector?x=1", "a query"),
    ("spiffe://mesh.local/gateway/g%2F1", "percent-encoding"),
    ("spiffe://mesh.local/gateway/g\x1b[31m", "letters, digits"),
])
def test_parse_refuses_with_reason(text, problem):
    with pytest.raises(SpiffeIdError, match=problem.replace("(", r"\(").replace("?", r"\?")):
        spiffe.parse(text)


def test_error_messages_are_bounded_and_escaped():
    with pytest.raises(SpiffeIdError) as err:
        spiffe.parse("spiffe://mesh.local/gateway/" + "\x1b" * 5000)
    assert "\x1b" not in str(err.value) and len(str(err.value)) < 300


def test_common_name_is_stable_and_fits_x509():
    short = spiffe.sidecar("mesh.local", "reviews", "r1")
    assert short.common_name == "sidecar/reviews/r1"
    assert short.kafka_principal == "User:CN=sidecar/reviews/r1"
    long_a = spiffe.sidecar("mesh.local", "reviews", "i" * 100)
    long_b = spiffe.sidecar("mesh.local", "reviews", "i" * 99 + "j")
    assert len(long_a.common_name) == 64 and long_a.common_name != long_b.common_name
    assert long_a.common_name == spiffe.sidecar("mesh.local", "reviews", "i" * 100).common_name


def test_from_role_cli_input():
    assert spiffe.from_role("d", "sidecar", "reviews/r1") == spiffe.sidecar("d", "reviews", "r1")
    assert spiffe.from_role("d", "projector", None) == spiffe.projector("d")
    with pytest.raises(SpiffeIdError, match="needs a name"):
        spiffe.from_role("d", "gateway", None)
    with pytest.raises(SpiffeIdError, match="takes no name"):
        spiffe.from_role("d", "projector", "x")


_segment = st.from_regex(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,20}", fullmatch=True)
_service = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True)


@given(st.one_of(
    st.builds(lambda s, i: SpiffeId.of("mesh.local", "sidecar", s, i), _service, _segment),
    st.builds(lambda r: SpiffeId.of("mesh.local", "gateway", r), _segment),
    st.builds(lambda n: SpiffeId.of("mesh.local", "checker", n), _segment),
))
def test_round_trip_property(ident):
    assert spiffe.parse(ident.uri) == ident


@given(st.text(max_size=80))
def test_parse_is_total(text):
    try:
        ident = spiffe.parse(text)
    except SpiffeIdError:
        return
    assert ident.uri == text


def test_sidecar_service_reads_a_sidecar_id_and_nothing_else_without_raising():
    assert spiffe.sidecar_service("spiffe://mesh.local/sidecar/web/web-1") == "web"
    assert spiffe.sidecar_service("spiffe://mesh.local/gateway/g1") is None
    assert spiffe.sidecar_service("spiffe://mesh.local/sidecar/web") is None
    assert spiffe.sidecar_service("not an id") is None
