"""The stream machines report what their client holds after each ACK, and each NACK, as plain data."""

from __future__ import annotations

from xds_gateway.protocol import DeltaStream
from xds_gateway.protocol.common import Acked, Nack
from xds_gateway.protocol.sotw import SotwStream

from .helpers import CDS, EDS, dreq, res, sreq, view


def v(type_url, name, tag=1):
    return res(type_url, name, tag).version


def test_delta_ack_reports_every_name_held_and_the_nonce_answered():
    s = DeltaStream("s1", view({CDS: {"a": 1, "b": 1}}), report_sync=True)
    [r1] = s.on_request(dreq(CDS))
    assert s.take_learned() == []  # sent, not ACKed: nothing learned yet
    s.on_request(dreq(CDS, nonce=r1.nonce))
    assert s.take_learned() == [Acked(CDS, r1.nonce, {"a": v(CDS, "a"), "b": v(CDS, "b")})]
    assert s.take_learned() == []  # taken once
    # a delta update and a removal: held is the whole state, not the delta
    [r2] = s.on_view(view({CDS: {"a": 2}}))
    r3 = s.on_request(dreq(CDS, nonce=r2.nonce))
    assert r3 == []
    [fact] = s.take_learned()
    assert fact.held == {"a": v(CDS, "a", 2)} and fact.nonce == r2.nonce


def test_delta_nack_reports_rejected_versions_and_reason_and_keeps_what_was_held():
    s = DeltaStream("s1", view({CDS: {"a": 1}}), report_sync=True)
    [r1] = s.on_request(dreq(CDS))
    s.on_request(dreq(CDS, nonce=r1.nonce))
    [r2] = s.on_view(view({CDS: {"a": 2}}))
    s.on_request(dreq(CDS, nonce=r2.nonce, error="bad cluster a\nsecond line"))
    [ack, nack] = s.take_learned()
    assert isinstance(ack, Acked) and isinstance(nack, Nack)
    assert (nack.nonce, nack.message, dict(nack.resources)) == (r2.nonce, "bad cluster a\nsecond line",
                                                                {"a": v(CDS, "a", 2)})
    assert s.acked_versions(CDS) == {"a": v(CDS, "a", 1)}  # the NACKed version is not held
    # the next good version is ACKed and held
    [r3] = s.on_view(view({CDS: {"a": 3}}))
    s.on_request(dreq(CDS, nonce=r3.nonce))
    assert s.take_learned() == [Acked(CDS, r3.nonce, {"a": v(CDS, "a", 3)})]


def test_delta_initial_versions_count_as_held_and_unsubscribed_names_are_dropped():
    s = DeltaStream("s1", view({EDS: {"a": 1, "b": 1}}), report_sync=True)
    [r1] = s.on_request(dreq(EDS, sub=["a", "b"], irv={"a": v(EDS, "a")}))
    assert s.acked_versions(EDS) == {"a": v(EDS, "a")}  # what it kept from before the reconnect
    s.on_request(dreq(EDS, nonce=r1.nonce))
    assert s.take_learned()[-1].held == {"a": v(EDS, "a"), "b": v(EDS, "b")}
    s.on_request(dreq(EDS, unsub=["b"]))
    assert s.acked_versions(EDS) == {"a": v(EDS, "a")}


def test_delta_without_report_sync_keeps_no_facts():
    s = DeltaStream("s1", view({CDS: {"a": 1}}))
    [r1] = s.on_request(dreq(CDS))
    s.on_request(dreq(CDS, nonce=r1.nonce))
    assert s.take_learned() == []
    assert s.acked_versions(CDS) == {"a": v(CDS, "a")}


def test_sotw_ack_reports_the_content_of_the_acked_response_and_nack_the_rejected_one():
    s = SotwStream("s1", view({CDS: {"a": 1, "b": 1}}), report_sync=True)
    [r1] = s.on_request(sreq(CDS))
    s.on_request(sreq(CDS, nonce=r1.nonce, version=r1.version_info))
    assert s.take_learned() == [Acked(CDS, r1.nonce, {"a": v(CDS, "a"), "b": v(CDS, "b")})]
    [r2] = s.on_view(view({CDS: {"a": 2}}))
    s.on_request(sreq(CDS, nonce=r2.nonce, version=r1.version_info, error="no"))
    [nack] = s.take_learned()
    assert isinstance(nack, Nack) and dict(nack.resources) == {"a": v(CDS, "a", 2)} and nack.message == "no"
    assert s.acked_versions(CDS) == {"a": v(CDS, "a"), "b": v(CDS, "b")}
