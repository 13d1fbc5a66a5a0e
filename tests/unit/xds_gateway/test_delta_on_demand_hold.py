"""The delta machine's on-demand hold: a missing cluster asked for by name waits for the view, within bounds."""

from __future__ import annotations

from xds_gateway.protocol import DeltaStream
from xds_gateway.protocol.delta import MAX_HELD

from .helpers import CDS, EDS, dreq, summary, view


def _on_demand_stream(spec=None, hold=lambda name: "~" not in name) -> DeltaStream:
    """A sidecar's stream after its wildcard CDS request was answered and ACKed."""
    s = DeltaStream("s1", view(spec or {CDS: {"a": 1}}), hold_missing=hold)
    for r in s.on_request(dreq(CDS)):
        s.on_request(dreq(CDS, nonce=r.nonce))
    return s


def test_without_hold_a_missing_cluster_is_answered_removed_at_once():
    s = DeltaStream("s1", view({CDS: {"a": 1}}))
    s.on_request(dreq(CDS))
    assert summary(s.on_request(dreq(CDS, sub=["ratings"]))) == [("CDS", [], ["ratings"])]


def test_missing_cluster_is_held_then_sent_when_the_view_gains_it():
    s = _on_demand_stream()
    assert s.on_request(dreq(CDS, sub=["ratings"])) == []  # not "does not exist": Envoy would fail the request
    assert s.take_on_hold() == ["ratings"] and s.take_on_hold() == []
    assert s.on_hold == ("ratings",)
    out = s.on_view(view({CDS: {"a": 1, "ratings": 1}}))
    assert summary(out) == [("CDS", ["ratings"], [])]
    assert s.on_hold == ()
    assert s.release_hold(["ratings"]) == []  # the shell's timer fires later: nothing more to say


def test_hold_ends_with_does_not_exist_when_released():
    s = _on_demand_stream()
    s.on_request(dreq(CDS, sub=["nosuch"]))
    assert s.take_on_hold() == ["nosuch"]
    assert summary(s.release_hold(["nosuch"])) == [("CDS", [], ["nosuch"])]
    assert s.on_hold == ()
    # asked again: held again (the shell bounds each hold)
    assert s.on_request(dreq(CDS, sub=["nosuch"])) == [] and s.take_on_hold() == ["nosuch"]


def test_cluster_in_the_view_or_refused_by_the_predicate_is_answered_at_once():
    s = _on_demand_stream()
    assert summary(s.on_request(dreq(CDS, sub=["a"]))) == [("CDS", ["a"], [])]
    assert summary(s.on_request(dreq(CDS, sub=["x~local"]))) == [("CDS", [], ["x~local"])]
    assert s.take_on_hold() == []


def test_other_types_are_never_held():
    s = _on_demand_stream(hold=lambda name: True)
    s.on_request(dreq(EDS))
    assert summary(s.on_request(dreq(EDS, sub=["nosuch"]))) == [("EDS", [], ["nosuch"])]
    assert s.take_on_hold() == []


def test_unsubscribing_a_held_cluster_ends_its_hold_without_an_answer():
    s = _on_demand_stream()
    s.on_request(dreq(CDS, sub=["ratings"]))
    out = s.on_request(dreq(CDS, unsub=["ratings"]))
    assert s.on_hold == ()
    # still wildcard: the spec's "removed_resources ... if it is not included in the wildcard"
    assert summary(out) == [("CDS", [], ["ratings"])]
    assert s.release_hold(["ratings"]) == []


def test_at_most_max_held_names_wait_and_the_rest_are_answered_at_once():
    s = _on_demand_stream()
    names = [f"svc{i}" for i in range(MAX_HELD + 1)]
    out = s.on_request(dreq(CDS, sub=names))
    assert len(s.on_hold) == MAX_HELD
    answered = sorted(set(names) - set(s.on_hold))
    assert len(answered) == 1 and summary(out) == [("CDS", [], answered)]
    assert len(s.take_on_hold()) == MAX_HELD
