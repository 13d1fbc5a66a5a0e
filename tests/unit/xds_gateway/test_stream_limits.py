"""Per-stream admission limits of the protocol machines: over a cap -> ``Refused``, nothing half-applied."""

from __future__ import annotations

import pytest

from xds_gateway.protocol import DeltaStream, Refused, SotwStream, StreamLimits

from .helpers import CDS, EDS, dreq, sreq, view

LIMITS = StreamLimits(max_names_per_type=3, max_initial_versions=2, max_pending_nonces=4)
VIEW = view({CDS: {"a": 1, "b": 1}, EDS: {"a": 1, "b": 1}})


def test_limits_must_be_positive():
    with pytest.raises(ValueError, match="max_pending_nonces must be at least 1"):
        StreamLimits(max_pending_nonces=0)


def test_delta_names_in_one_request_over_the_cap_are_refused_before_any_state_changes():
    s = DeltaStream("s", VIEW, limits=LIMITS)
    with pytest.raises(Refused) as exc:
        s.on_request(dreq(EDS, ["a", "b", "c", "d"]))
    assert exc.value.limit == "max_names_per_type"
    assert s.subscriptions(EDS) == frozenset() and s.types() == ()


def test_delta_names_accumulated_over_requests_are_capped():
    s = DeltaStream("s", VIEW, limits=LIMITS)
    first = s.on_request(dreq(EDS, ["a", "b"]))
    s.on_request(dreq(EDS, ["b"], nonce=first[0].nonce))  # already held: not counted twice
    with pytest.raises(Refused) as exc:
        s.on_request(dreq(EDS, ["c", "d"]))
    assert exc.value.limit == "max_names_per_type"
    assert "4 names subscribed" in exc.value.detail
    assert s.subscriptions(EDS) == {"a", "b"}


def test_delta_at_the_cap_is_served():
    s = DeltaStream("s", VIEW, limits=LIMITS)
    out = s.on_request(dreq(EDS, ["a", "b", "c"]))
    assert [r.name for r in out[0].resources] == ["a", "b"] and list(out[0].removed_resources) == ["c"]


def test_delta_initial_resource_versions_over_the_cap_are_refused():
    s = DeltaStream("s", VIEW, limits=LIMITS)
    with pytest.raises(Refused) as exc:
        s.on_request(dreq(CDS, irv={"a": "1", "b": "2", "c": "3"}))
    assert exc.value.limit == "max_initial_versions"
    assert s.known_versions(CDS) == {}


def test_delta_never_acked_requests_hit_the_pending_cap():
    s = DeltaStream("s", VIEW, limits=LIMITS)
    s.on_request(dreq(CDS))  # wildcard: 1 pending
    for name in ("x", "y", "z"):  # each subscription change is answered at once: 2, 3, 4 pending
        s.on_request(dreq(EDS, [name]))
    with pytest.raises(Refused) as exc:
        s.on_request(dreq(CDS, ["q"]))  # a 5th un-ACKed response
    assert exc.value.limit == "max_pending_nonces"


def test_delta_a_client_that_acks_stays_under_the_pending_cap():
    s = DeltaStream("s", VIEW, limits=LIMITS)
    nonce = s.on_request(dreq(CDS))[0].nonce
    for i in range(20):
        out = s.on_request(dreq(CDS, [f"n{i % 2}"], nonce=nonce))
        nonce = out[-1].nonce if out else nonce
    assert len(s.pending_nonces().get(CDS, ())) <= 1


def test_sotw_list_over_the_cap_is_refused_before_any_state_changes():
    s = SotwStream("s", VIEW, limits=LIMITS)
    with pytest.raises(Refused) as exc:
        s.on_request(sreq(EDS, ["a", "b", "c", "d"]))
    assert exc.value.limit == "max_names_per_type"
    assert s.types() == ()


def test_sotw_at_the_cap_is_served():
    s = SotwStream("s", VIEW, limits=LIMITS)
    assert s.on_request(sreq(EDS, ["a", "b", "c"]))
