"""Conformance stories for the state-of-the-world ADS protocol core."""

from __future__ import annotations

from xds_gateway.protocol import SotwStream
from xds_gateway.protocol.common import content_version

from .helpers import CDS, EDS, LDS, RDS, SECRET, res, sreq, ssummary, view


def ack(s: SotwStream, resp, names, **kw):
    return s.on_request(sreq(resp.type_url, names, nonce=resp.nonce, version=resp.version_info, **kw))


def grpc_view(tag=1, **extra):
    spec = {LDS: {"api": tag}, RDS: {"rc": tag}, CDS: {"c": tag}, EDS: {"c": tag}}
    for t, names in extra.items():
        spec[{"lds": LDS, "rds": RDS, "cds": CDS, "eds": EDS}[t]].update(names)
    return view(spec)


def test_grpc_proxyless_flow_lds_rds_cds_eds():
    s = SotwStream("g1", grpc_view())
    [l1] = s.on_request(sreq(LDS, ["api"], node="grpc-client"))
    assert ssummary([l1]) == [("LDS", ["api"])]
    assert l1.version_info == content_version([("api", res(LDS, "api").version)]) and l1.nonce == "g1-1"
    assert ack(s, l1, ["api"]) == []
    [r1] = s.on_request(sreq(RDS, ["rc"]))
    assert ack(s, r1, ["rc"]) == []
    [c1] = s.on_request(sreq(CDS, ["c"]))
    assert ack(s, c1, ["c"]) == []
    [e1] = s.on_request(sreq(EDS, ["c"]))
    assert ack(s, e1, ["c"]) == []
    assert ssummary([r1, c1, e1]) == [("RDS", ["rc"]), ("CDS", ["c"]), ("EDS", ["c"])]
    assert s.node_id == "grpc-client"
    assert len({l1.nonce, r1.nonce, c1.nonce, e1.nonce}) == 4


def test_legacy_wildcard_for_lds_and_cds():
    s = SotwStream("e1", view({CDS: {"a": 1, "b": 1}}))
    [r1] = s.on_request(sreq(CDS))
    assert ssummary([r1]) == [("CDS", ["a", "b"])]
    assert s.is_wildcard(CDS)
    assert ack(s, r1, []) == []  # still wildcard: every request so far was empty
    [r2] = s.on_view(view({CDS: {"a": 1, "b": 1, "c": 1}}))
    assert ssummary([r2]) == [("CDS", ["a", "b", "c"])]  # full state of the world
    # spec SotW example: a list with "A" only ends the wildcard; "a" is newly
    # requested, so it is resent ("even if it previously sent those resources
    # without having been asked for them")
    [r3] = ack(s, r2, ["a"])
    assert ssummary([r3]) == [("CDS", ["a"])]
    assert not s.is_wildcard(CDS) and s.subscriptions(CDS) == {"a"}
    assert ack(s, r3, ["a"]) == []
    assert s.on_view(view({CDS: {"a": 1, "b": 2, "d": 1}})) == []
    # an empty list now is an unsubscription from everything, not a wildcard
    [r3] = s.on_view(view({CDS: {"a": 2}}))
    assert ssummary([r3]) == [("CDS", ["a"])]
    assert ack(s, r3, []) == []
    assert s.subscriptions(CDS) == frozenset()
    assert s.on_view(view({CDS: {"a": 3, "z": 1}})) == []


def test_explicit_star_plus_names():
    s = SotwStream("e1", view({LDS: {"a": 1, "b": 1}}))
    [r1] = s.on_request(sreq(LDS, ["*", "a"]))
    assert ssummary([r1]) == [("LDS", ["a", "b"])]
    assert s.subscriptions(LDS) == {"*", "a"}


def test_star_is_an_ordinary_name_for_rds_and_eds():
    s = SotwStream("e1", view({RDS: {"r": 1}}))
    assert s.on_request(sreq(RDS, ["*"])) == []
    assert not s.is_wildcard(RDS)


def test_first_lds_request_for_missing_name_gets_an_empty_answer():
    # absence from an LDS/CDS response is how a SotW client learns it does not exist
    s = SotwStream("g1", view({LDS: {}}))
    [r1] = s.on_request(sreq(LDS, ["ghost"]))
    assert ssummary([r1]) == [("LDS", [])]
    assert ack(s, r1, ["ghost"]) == []
    [r2] = s.on_view(view({LDS: {"ghost": 1}}))
    assert ssummary([r2]) == [("LDS", ["ghost"])]


def test_missing_rds_or_eds_name_gets_nothing_until_it_appears():
    s = SotwStream("g1", view({RDS: {}}))
    assert s.on_request(sreq(RDS, ["rc"])) == []
    [r1] = s.on_view(view({RDS: {"rc": 1}}))
    assert ssummary([r1]) == [("RDS", ["rc"])]


def test_new_names_are_answered_with_the_whole_requested_set():
    s = SotwStream("g1", view({EDS: {"a": 1, "b": 1, "c": 1}}))
    [r1] = s.on_request(sreq(EDS, ["a"]))
    [r2] = ack(s, r1, ["a", "b"])
    assert ssummary([r2]) == [("EDS", ["a", "b"])]  # only requested names, c never
    # dropping a name sends nothing; the client forgets it
    assert ack(s, r2, ["b"]) == []
    assert s.known_versions(EDS) == {"b": res(EDS, "b").version}
    # re-requesting a name the client had must resend it
    [r3] = s.on_request(sreq(EDS, ["a", "b"], nonce=r2.nonce))
    assert ssummary([r3]) == [("EDS", ["a", "b"])]


def test_cds_change_resends_the_complete_set():
    s = SotwStream("e1", view({CDS: {"a": 1, "b": 1}}))
    [r1] = s.on_request(sreq(CDS))
    ack(s, r1, [])
    [r2] = s.on_view(view({CDS: {"a": 2, "b": 1}}))
    assert ssummary([r2]) == [("CDS", ["a", "b"])]
    assert r2.version_info != r1.version_info
    assert [a.value for a in r2.resources][1] == res(CDS, "b").body


def test_stale_nonce_gets_no_response_but_its_list_is_remembered():
    s = SotwStream("g1", view({EDS: {"a": 1, "b": 1, "c": 1}}))
    [r1] = s.on_request(sreq(EDS, ["a"]))
    assert s.on_request(sreq(EDS, ["a", "b"])) == []  # empty nonce after a response: stale
    assert s.on_request(sreq(EDS, ["a", "b", "c"], nonce="g1-0")) == []
    assert s.stale_nonce_count == 2
    assert s.subscriptions(EDS) == {"a", "b", "c"}
    assert s.pending_nonces() == {EDS: (r1.nonce,)}
    # the ACK of the latest response answers what the stale requests asked for,
    # even though its list is no longer "new" by then
    [r2] = ack(s, r1, ["a", "b"])
    assert ssummary([r2]) == [("EDS", ["a", "b"])]


def test_name_dropped_by_a_stale_request_and_asked_again_is_resent():
    s = SotwStream("g1", view({LDS: {"a": 1}}))
    [r1] = s.on_request(sreq(LDS, ["a"]))
    assert s.on_request(sreq(LDS, [])) == []  # stale: the client dropped "a"...
    [r2] = ack(s, r1, ["a"])  # ...so it ignored "a" in r1, and now wants it again
    assert ssummary([r2]) == [("LDS", ["a"])]


def test_dropping_a_name_under_a_wildcard_the_node_may_not_use_deletes_it():
    # A node outside the view may fetch shared listeners by explicit name only.
    # Its client cannot know that: under "*" it keeps every listener it is
    # sent ("the set of resources being subscribed to is determined by the
    # server instead of the client"). So when it drops "a" but keeps "*", the
    # server must send the complete state without "a" (absence deletes it).
    s = SotwStream("g1", view({LDS: {"a": 1}}), wildcard_allowed=False)
    [r1] = s.on_request(sreq(LDS, ["a", "b", "*"]))
    assert ssummary([r1]) == [("LDS", ["a"])]
    assert ack(s, r1, ["a", "b", "*"]) == []
    [r2] = s.on_request(sreq(LDS, ["*"], nonce=r1.nonce))
    assert ssummary([r2]) == [("LDS", [])]
    assert ack(s, r2, ["*"]) == []
    assert s.known_versions(LDS) == {} and s.pending_nonces() == {}


def test_stale_request_dropping_a_name_under_a_disallowed_wildcard():
    # Found by test_sotw_property: the client drops "a" while r1 (holding
    # "a") is in flight, so its request is stale and gets nothing ("The
    # management server should not send a DiscoveryResponse for any
    # DiscoveryRequest that has a stale nonce"). Still under "*", it then
    # keeps "a" from r1; its ACK must be answered with the state without "a".
    s = SotwStream("g1", view({LDS: {"a": 1}}), wildcard_allowed=False)
    [r1] = s.on_request(sreq(LDS, ["a", "b", "*"]))
    assert s.on_request(sreq(LDS, ["*"])) == []  # empty nonce after r1: stale
    assert s.stale_nonce_count == 1
    [r2] = ack(s, r1, ["*"])
    assert ssummary([r2]) == [("LDS", [])]
    assert ack(s, r2, ["*"]) == []
    assert s.known_versions(LDS) == {} and s.pending_nonces() == {}


def test_nack_recorded_and_not_resent():
    s = SotwStream("g1", view({LDS: {"api": 1}}))
    [r1] = s.on_request(sreq(LDS, ["api"], node="grpc-9"))
    assert s.on_request(sreq(LDS, ["api"], nonce=r1.nonce, error="bad listener")) == []
    [n] = s.nacks
    assert (n.node_id, n.type_url, n.nonce, n.message, n.resources) == (
        "grpc-9",
        LDS,
        r1.nonce,
        "bad listener",
        (("api", res(LDS, "api").version),),
    )
    # a later request with the same nonce is not a second NACK, and resends nothing
    assert s.on_request(sreq(LDS, ["api"], nonce=r1.nonce, error="bad listener")) == []
    assert s.nack_count == 1
    [r2] = s.on_view(view({LDS: {"api": 2}}))
    assert ssummary([r2]) == [("LDS", ["api"])]


def test_no_response_when_nothing_changed():
    s = SotwStream("g1", view({LDS: {"api": 1}, RDS: {"rc": 1}}))
    [r1] = s.on_request(sreq(LDS, ["api"]))
    assert ack(s, r1, ["api"]) == []
    [r2] = s.on_request(sreq(RDS, ["rc"]))
    assert ack(s, r2, ["rc"]) == []
    assert s.on_view(view({LDS: {"api": 1}, RDS: {"rc": 1}})) == []
    assert s.on_view(view({LDS: {"api": 1, "x": 1}, RDS: {"rc": 1, "y": 1}})) == []
    assert ack(s, r2, ["rc"]) == []  # repeated request, same list


def test_coalescing_and_stream_wide_gate():
    s = SotwStream("e1", view({CDS: {"A": 1}, RDS: {"r": "A"}}))
    [c1] = s.on_request(sreq(CDS))
    ack(s, c1, [])
    [r1] = s.on_request(sreq(RDS, ["r"]))
    ack(s, r1, ["r"])
    [c2] = s.on_view(view({CDS: {"A": 2}, RDS: {"r": "A"}}))
    assert s.on_view(view({CDS: {"A": 3}, RDS: {"r": "A"}})) == []
    assert s.on_view(view({CDS: {"A": 3, "B": 1}, RDS: {"r": "B"}})) == []  # RDS waits too
    out = ack(s, c2, [])
    assert ssummary(out) == [("CDS", ["A", "B"]), ("RDS", ["r"])]
    assert out[0].resources[0].value == res(CDS, "A", 3).body


def test_cluster_replacement_keeps_the_old_cluster_until_routes_moved():
    v = view({CDS: {"A": 1}, EDS: {"A": 1}, LDS: {"l": 1}, RDS: {"r": "to-A"}})
    s = SotwStream("e1", v)
    for t, names in ((CDS, []), (EDS, ["A", "B"]), (LDS, []), (RDS, ["r"])):
        [r] = s.on_request(sreq(t, names))
        ack(s, r, names)
    out = s.on_view(view({CDS: {"B": 1}, EDS: {"B": 1}, LDS: {"l": 1}, RDS: {"r": "to-B"}}))
    assert ssummary(out) == [
        ("CDS", ["A", "B"]),  # B added, A kept (old body)
        ("EDS", ["B"]),
        ("RDS", ["r"]),
        ("CDS", ["B"]),  # A removed last
    ]
    assert out[0].resources[0].value == res(CDS, "A", 1).body
    # the first CDS nonce was superseded at once: its ACK is stale
    assert ack(s, out[0], []) == []
    for r, names in ((out[1], ["A", "B"]), (out[2], ["r"]), (out[3], [])):
        assert ack(s, r, names) == []
    assert s.pending_nonces() == {}
    assert s.known_versions(CDS) == {"B": res(CDS, "B").version}


def test_cluster_update_resends_endpoints_for_warming():
    s = SotwStream("e1", view({CDS: {"c": 1, "d": 1}, EDS: {"c": 1, "d": 1}}))
    [r1] = s.on_request(sreq(CDS))
    ack(s, r1, [])
    [r2] = s.on_request(sreq(EDS, ["c", "d"]))
    ack(s, r2, ["c", "d"])
    out = s.on_view(view({CDS: {"c": 2, "d": 1}, EDS: {"c": 1, "d": 1}}))
    assert ssummary(out) == [("CDS", ["c", "d"]), ("EDS", ["c", "d"])]


def test_subscription_answer_while_blocked_keeps_held_back_changes():
    s = SotwStream("g1", view({CDS: {"a": 1}, EDS: {"x": 1, "y": 1}}))
    [c1] = s.on_request(sreq(CDS))
    [e1] = s.on_request(sreq(EDS, ["x"]))
    ack(s, e1, ["x"])  # CDS still un-ACKed: stream blocked
    assert s.on_view(view({CDS: {"a": 1}, EDS: {"x": 2, "y": 1}})) == []
    [e2] = s.on_request(sreq(EDS, ["x", "y"], nonce=e1.nonce))
    assert ssummary([e2]) == [("EDS", ["x", "y"])]
    assert e2.resources[0].value == res(EDS, "x", 1).body  # x@2 held back
    ack(s, e2, ["x", "y"])
    [e3] = ack(s, c1, [])  # the last ACK flushes
    assert e3.resources[0].value == res(EDS, "x", 2).body


def test_wildcard_not_allowed_and_refused_names():
    s = SotwStream("u1", view({LDS: {"api": 1, "other": 1}}), wildcard_allowed=False, allowed=lambda t, n: n == "api")
    [r1] = s.on_request(sreq(LDS))
    assert ssummary([r1]) == [("LDS", [])]
    [r2] = ack(s, r1, ["api", "other"])
    assert ssummary([r2]) == [("LDS", ["api"])]


def test_unknown_type_is_recorded_and_not_answered():
    s = SotwStream("g1", view({LDS: {"api": 1}}))
    assert s.on_request(sreq(SECRET, ["cert"], node="g")) == []
    assert [(e.kind, e.type_url) for e in s.errors] == [("unknown_type_url", SECRET)]
    assert ssummary(s.on_request(sreq(LDS, ["api"]))) == [("LDS", ["api"])]


def test_pending_bytes():
    s = SotwStream("g1", view({LDS: {"api": 1}}))
    [r1] = s.on_request(sreq(LDS, ["api"]))
    assert s.pending_bytes() >= len(r1.resources[0].value)
    ack(s, r1, ["api"])
    assert s.pending_bytes() == 0
