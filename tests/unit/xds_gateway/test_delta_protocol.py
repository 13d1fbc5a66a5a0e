"""Conformance stories for the delta (incremental) ADS protocol core."""

from __future__ import annotations

from xds_gateway.protocol import DeltaStream, WILDCARD
from xds_gateway.protocol.common import content_version

from .helpers import CDS, EDS, LDS, RDS, SECRET, dreq, names, res, summary, view


def ack(stream: DeltaStream, resp, **kw):
    return stream.on_request(dreq(resp.type_url, nonce=resp.nonce, **kw))


def ack_all(stream: DeltaStream, resps) -> list:
    """ACK responses in order; return whatever the ACKs flushed."""
    out = []
    for r in resps:
        out += ack(stream, r)
    return out


# ---------------------------------------------------------------- 1. wildcard


def test_legacy_wildcard_first_empty_request_gets_everything_of_the_type():
    s = DeltaStream("s1", view({CDS: {"a": 1, "b": 1}, LDS: {"l": 1}}))
    out = s.on_request(dreq(CDS))
    assert summary(out) == [("CDS", ["a", "b"], [])]
    assert s.subscriptions(CDS) == {WILDCARD}
    assert s.is_wildcard(CDS)


def test_legacy_wildcard_continues_after_explicit_subscribe_and_ends_on_unsubscribe_star():
    # spec, incremental example: "A" after the legacy wildcard continues "*"
    s = DeltaStream("s1", view({CDS: {"a": 1, "b": 1}}))
    ack_all(s, s.on_request(dreq(CDS)))
    out = s.on_request(dreq(CDS, sub=["a"]))
    assert summary(out) == [("CDS", ["a"], [])]  # resent: it was subscribed
    assert s.subscriptions(CDS) == {WILDCARD, "a"}
    ack_all(s, out)
    out = s.on_view(view({CDS: {"a": 1, "b": 1, "c": 1}}))
    assert summary(out) == [("CDS", ["c"], [])]  # wildcard still on
    ack_all(s, out)

    assert s.on_request(dreq(CDS, unsub=["*"])) == []  # nothing to send
    assert s.subscriptions(CDS) == {"a"}
    assert s.known_versions(CDS).keys() == {"a"}
    assert s.on_view(view({CDS: {"a": 1, "b": 2, "c": 2, "d": 1}})) == []  # no wildcard any more
    out = s.on_view(view({CDS: {"a": 2}}))
    assert summary(out) == [("CDS", ["a"], [])]
    ack_all(s, out)

    assert s.on_request(dreq(CDS, unsub=["a"])) == []
    assert s.subscriptions(CDS) == frozenset()
    # an empty request is not a wildcard again: the type was subscribed before
    assert s.on_request(dreq(CDS)) == []
    assert s.on_view(view({CDS: {"a": 3, "z": 1}})) == []
    assert not s.is_wildcard(CDS)


def test_first_request_with_names_is_not_wildcard():
    s = DeltaStream("s1", view({CDS: {"a": 1, "b": 1}}))
    assert summary(s.on_request(dreq(CDS, sub=["a"]))) == [("CDS", ["a"], [])]
    assert not s.is_wildcard(CDS)


def test_first_request_with_only_unsubscribes_is_not_wildcard():
    # "the request must have no resources in both resource_names_subscribe and
    # resource_names_unsubscribe" for the legacy wildcard
    s = DeltaStream("s1", view({CDS: {"a": 1}}))
    assert s.on_request(dreq(CDS, unsub=["x"])) == []
    assert not s.is_wildcard(CDS)


def test_explicit_star_with_names_on_first_request():
    s = DeltaStream("s1", view({CDS: {"a": 1, "b": 1}, EDS: {}}))
    out = s.on_request(dreq(CDS, sub=["*", "odcds"]))
    assert summary(out) == [("CDS", ["a", "b"], ["odcds"])]
    assert s.subscriptions(CDS) == {"*", "odcds"}


def test_resubscribing_star_resends_the_wildcard_set():
    s = DeltaStream("s1", view({CDS: {"a": 1, "b": 1}}))
    ack_all(s, s.on_request(dreq(CDS)))
    out = s.on_request(dreq(CDS, sub=["*"]))
    assert summary(out) == [("CDS", ["a", "b"], [])]


def test_wildcard_on_empty_type_still_answers_the_first_request():
    s = DeltaStream("s1", view({}))
    out = s.on_request(dreq(CDS))
    assert summary(out) == [("CDS", [], [])]
    assert out[0].nonce and out[0].type_url == CDS


def test_wildcard_not_allowed_yields_nothing_but_explicit_names_work():
    v = view({CDS: {"a": 1, "b": 1}, LDS: {"api": 1, "other": 1}})
    s = DeltaStream("s1", v, wildcard_allowed=False, allowed=lambda t, n: n == "api")
    out = s.on_request(dreq(CDS))
    assert summary(out) == [("CDS", [], [])]
    ack_all(s, out)
    assert s.on_view(view({CDS: {"a": 2, "c": 1}, LDS: {"api": 1, "other": 1}})) == []
    out = s.on_request(dreq(LDS, sub=["api", "other"]))
    assert summary(out) == [("LDS", ["api"], ["other"])]  # refused name reported as absent


# ------------------------------------------------------- 2. subscribe/unsub


def test_subscribe_then_unsubscribe_stops_updates_without_removal():
    s = DeltaStream("s1", view({EDS: {"a": 1, "b": 1}}))
    out = s.on_request(dreq(EDS, sub=["a", "b"]))
    assert summary(out) == [("EDS", ["a", "b"], [])]
    ack_all(s, out)
    assert s.on_request(dreq(EDS, unsub=["b"])) == []  # no response needed
    assert s.subscriptions(EDS) == {"a"}
    assert s.on_view(view({EDS: {"a": 1, "b": 2}})) == []  # b no longer tracked
    out = s.on_view(view({EDS: {"a": 2, "b": 3}}))
    assert summary(out) == [("EDS", ["a"], [])]
    ack_all(s, out)
    assert s.on_view(view({EDS: {"a": 2}})) == []  # b deleted: not the client's business now


def test_unsubscribe_name_covered_by_wildcard_is_resent():
    # spec: with "*" and a specific name, unsubscribing the name must be
    # answered with the resource (covered by the wildcard) ...
    s = DeltaStream("s1", view({CDS: {"a": 1, "b": 1}}))
    ack_all(s, s.on_request(dreq(CDS)))
    ack_all(s, s.on_request(dreq(CDS, sub=["a"])))
    out = s.on_request(dreq(CDS, unsub=["a"]))
    assert summary(out) == [("CDS", ["a"], [])]
    assert s.subscriptions(CDS) == {"*"}
    ack_all(s, out)
    out = s.on_view(view({CDS: {"a": 2, "b": 1}}))
    assert summary(out) == [("CDS", ["a"], [])]  # still delivered through "*"


def test_unsubscribe_name_not_covered_by_wildcard_is_reported_removed():
    # ... or with removed_resources when the wildcard does not cover it
    s = DeltaStream("s1", view({CDS: {"a": 1}}))
    ack_all(s, s.on_request(dreq(CDS)))
    ack_all(s, s.on_request(dreq(CDS, sub=["ondemand"])))
    out = s.on_request(dreq(CDS, unsub=["ondemand"]))
    assert summary(out) == [("CDS", [], ["ondemand"])]
    # and with a node whose wildcard covers nothing
    s = DeltaStream("s2", view({CDS: {"a": 1}}), wildcard_allowed=False)
    ack_all(s, s.on_request(dreq(CDS)))
    out = s.on_request(dreq(CDS, sub=["a"]))
    assert summary(out) == [("CDS", ["a"], [])]
    ack_all(s, out)
    assert summary(s.on_request(dreq(CDS, unsub=["a"]))) == [("CDS", [], ["a"])]


def test_resubscribing_a_held_name_resends_it():
    # proto: "the server must respond with all resources listed in
    # resource_names_subscribe, even if it believes the client has the most
    # recent version of them"
    s = DeltaStream("s1", view({RDS: {"r": 1}}))
    ack_all(s, s.on_request(dreq(RDS, sub=["r"])))
    assert summary(s.on_request(dreq(RDS, sub=["r"]))) == [("RDS", ["r"], [])]


def test_phantom_unsubscribe_is_ignored():
    s = DeltaStream("s1", view({RDS: {"r": 1}}))
    ack_all(s, s.on_request(dreq(RDS, sub=["r"])))
    assert s.on_request(dreq(RDS, unsub=["never"])) == []
    ack_all(s, s.on_request(dreq(CDS)))
    assert s.on_request(dreq(CDS, unsub=["never"])) == []  # even under "*"


def test_name_in_both_lists_stays_subscribed():
    s = DeltaStream("s1", view({RDS: {"r": 1}}))
    ack_all(s, s.on_request(dreq(RDS, sub=["r"])))
    assert summary(s.on_request(dreq(RDS, sub=["r"], unsub=["r"]))) == [("RDS", ["r"], [])]
    assert s.subscriptions(RDS) == {"r"}


# ----------------------------------------------------- 3. missing resources


def test_missing_subscribed_name_is_reported_removed_then_sent_when_it_appears():
    s = DeltaStream("s1", view({EDS: {"a": 1}}))
    out = s.on_request(dreq(EDS, sub=["a", "ghost"]))
    assert summary(out) == [("EDS", ["a"], ["ghost"])]
    ack_all(s, out)
    assert s.on_view(view({EDS: {"a": 1}, LDS: {"x": 1}})) == []  # not reported twice
    out = s.on_view(view({EDS: {"a": 1, "ghost": 1}}))
    assert summary(out) == [("EDS", ["ghost"], [])]
    ack_all(s, out)
    out = s.on_view(view({EDS: {"a": 1}}))
    assert summary(out) == [("EDS", [], ["ghost"])]  # deleted again


def test_refused_name_is_reported_removed():
    s = DeltaStream("s1", view({LDS: {"secret": 1}}), allowed=lambda t, n: False)
    assert summary(s.on_request(dreq(LDS, sub=["secret"]))) == [("LDS", [], ["secret"])]


# ---------------------------------------------- 4. initial_resource_versions


def test_reconnect_with_initial_resource_versions_sends_only_the_difference():
    v = view({CDS: {"same": 1, "changed": 2, "new": 1}})
    s = DeltaStream("s2", v)
    irv = {"same": res(CDS, "same", 1).version, "changed": res(CDS, "changed", 1).version, "gone": "x"}
    out = s.on_request(dreq(CDS, irv=irv))  # legacy wildcard + versions
    assert summary(out) == [("CDS", ["changed", "new"], ["gone"])]
    assert s.known_versions(CDS) == {n: r.version for n, r in v[CDS].items()}


def test_reconnect_with_explicit_names_and_versions():
    v = view({EDS: {"a": 1, "b": 2}})
    s = DeltaStream("s2", v)
    irv = {"a": res(EDS, "a", 1).version, "b": res(EDS, "b", 1).version, "gone": "x"}
    out = s.on_request(dreq(EDS, sub=["a", "b", "gone", "c"], irv=irv))
    assert summary(out) == [("EDS", ["b"], ["c", "gone"])]


def test_reconnect_with_everything_current_sends_nothing_for_explicit_names():
    v = view({EDS: {"a": 1}})
    s = DeltaStream("s2", v)
    assert s.on_request(dreq(EDS, sub=["a"], irv={"a": v[EDS]["a"].version})) == []


def test_initial_versions_outside_the_subscription_are_removed():
    v = view({CDS: {"a": 1}})
    s = DeltaStream("s2", v, wildcard_allowed=False)
    out = s.on_request(dreq(CDS, irv={"a": v[CDS]["a"].version}))
    assert summary(out) == [("CDS", [], ["a"])]


def test_initial_resource_versions_are_read_only_on_the_first_request():
    v = view({CDS: {"a": 1}})
    s = DeltaStream("s2", v)
    ack_all(s, s.on_request(dreq(CDS)))
    assert s.on_request(dreq(CDS, irv={"a": "old", "zz": "x"})) == []
    assert s.known_versions(CDS) == {"a": v[CDS]["a"].version}


# --------------------------------------------- 5. nonces and version info


def test_nonces_are_unique_and_responses_carry_type_and_system_version():
    seen = []
    for sid in ("s1", "s2"):
        s = DeltaStream(sid, view({CDS: {"a": 1}, EDS: {"a": 1}}))
        steps = [lambda: s.on_request(dreq(CDS)), lambda: s.on_request(dreq(EDS, sub=["a"]))]
        steps += [lambda t=t: s.on_view(view({CDS: {"a": t}, EDS: {"a": t}})) for t in (2, 3)]
        for step in steps:
            out = step()
            for r in out:
                assert r.nonce.startswith(sid + "-")
                assert r.type_url in (CDS, EDS)
            # system_version_info: digest of what the client holds afterwards
            last = {}
            for r in out:
                last[r.type_url] = r.system_version_info
            for t, svi in last.items():
                assert svi == content_version(s.known_versions(t).items())
            ack_all(s, out)
            seen += out
    nonces = [r.nonce for r in seen]
    assert len(nonces) == len(set(nonces)) == 12


def test_system_version_info_is_the_same_for_the_same_client_state():
    v = view({CDS: {"a": 1, "b": 2}})
    a = DeltaStream("a", v).on_request(dreq(CDS))[0]
    b = DeltaStream("b", v).on_request(dreq(CDS))[0]
    assert a.system_version_info == b.system_version_info != ""
    assert a.nonce != b.nonce


# ------------------------------------------------------------ 6. ACK/NACK


def test_nack_is_recorded_and_not_resent_until_the_view_changes():
    s = DeltaStream("s1", view({CDS: {"a": 1, "b": 1}}))
    [r1] = s.on_request(dreq(CDS, node="envoy-7"))
    assert ack(s, r1, error="bad cluster a") == []  # no resend loop
    [nack] = s.nacks
    assert (nack.node_id, nack.type_url, nack.nonce, nack.message, nack.stale) == (
        "envoy-7",
        CDS,
        r1.nonce,
        "bad cluster a",
        False,
    )
    assert dict(nack.resources) == {"a": res(CDS, "a", 1).version, "b": res(CDS, "b", 1).version}
    assert s.pending_nonces() == {}
    assert s.on_view(view({CDS: {"a": 1, "b": 1}})) == []  # same content: still nothing
    out = s.on_view(view({CDS: {"a": 2, "b": 1}}))
    assert summary(out) == [("CDS", ["a"], [])]  # only the changed one


def test_stale_nonce_still_changes_subscriptions():
    # "the server must honor changes to the subscription state even if the nonce is stale"
    s = DeltaStream("s1", view({EDS: {"a": 1, "b": 1}}))
    [r1] = s.on_request(dreq(EDS, sub=["a"]))
    ack(s, r1)
    out = s.on_request(dreq(EDS, sub=["b"], nonce=r1.nonce))  # nonce already answered
    assert summary(out) == [("EDS", ["b"], [])]
    assert s.stale_nonce_count == 1
    assert s.subscriptions(EDS) == {"a", "b"}


def test_ack_of_an_older_nonce_does_not_clear_a_newer_pending_one():
    s = DeltaStream("s1", view({EDS: {"a": 1, "b": 1}}))
    [r1] = s.on_request(dreq(EDS, sub=["a"]))
    [r2] = s.on_request(dreq(EDS, sub=["b"]))  # subscription answers are not held back
    assert s.pending_nonces() == {EDS: (r1.nonce, r2.nonce)}
    ack(s, r1)
    assert s.pending_nonces() == {EDS: (r2.nonce,)}
    ack(s, r1)  # a repeat of the old ACK: stale, changes nothing
    assert s.pending_nonces() == {EDS: (r2.nonce,)}
    assert s.stale_nonce_count == 1
    ack(s, r2)
    assert s.pending_nonces() == {}


def test_ack_of_the_newest_nonce_answers_older_ones_too():
    s = DeltaStream("s1", view({EDS: {"a": 1, "b": 1}}))
    [r1] = s.on_request(dreq(EDS, sub=["a"]))
    [r2] = s.on_request(dreq(EDS, sub=["b"]))
    ack(s, r2)
    assert s.pending_nonces() == {}


def test_nack_of_an_unknown_nonce_is_recorded_as_stale():
    s = DeltaStream("s1", view({EDS: {"a": 1}}))
    ack_all(s, s.on_request(dreq(EDS, sub=["a"])))
    assert s.on_request(dreq(EDS, nonce="s1-99", error="late")) == []
    assert s.nacks[-1].stale and s.nacks[-1].resources == ()


def test_pending_bytes_track_unacked_responses():
    s = DeltaStream("s1", view({CDS: {"a": 1}}))
    [r1] = s.on_request(dreq(CDS))
    assert s.pending_bytes() >= len(r1.resources[0].body)
    ack(s, r1)
    assert s.pending_bytes() == 0


# ------------------------------------------------------ 7. no duplicates


def test_a_name_never_appears_twice_in_a_response():
    s = DeltaStream("s1", view({CDS: {"a": 1, "b": 1}}))
    ack_all(s, s.on_request(dreq(CDS)))
    [r1] = s.on_view(view({CDS: {"a": 2, "b": 1}}))
    assert s.on_view(view({CDS: {"a": 3}})) == []  # deferred: a@3, b deleted
    # the ACK flushes the deferred diff, and the same request forces a (twice) and b
    out = s.on_request(dreq(CDS, sub=["a", "a", "b"], unsub=["b"], nonce=r1.nonce))
    for r in out:
        both = names(r) + list(r.removed_resources)
        assert len(both) == len(set(both))
    assert summary(out) == [("CDS", ["a"], ["b"])]


# --------------------------------------------------- 8. nothing changed


def test_no_response_when_nothing_changed():
    v = view({CDS: {"a": 1}, EDS: {"a": 1}})
    s = DeltaStream("s1", v)
    out = s.on_request(dreq(CDS)) + s.on_request(dreq(EDS, sub=["a"]))
    assert ack_all(s, out) == []  # ACKs produce nothing
    assert s.on_view(view({CDS: {"a": 1}, EDS: {"a": 1}})) == []  # equal content, new objects
    assert s.on_view(view({CDS: {"a": 1}, EDS: {"a": 1, "b": 5}})) == []  # unsubscribed name
    assert s.on_view(view({CDS: {"a": 1}, EDS: {"a": 1}, RDS: {"r": 1}})) == []  # type never asked


# ---------------------------------------------------------- 9. ordering


def test_a_change_touching_all_types_is_sent_cds_eds_lds_rds():
    v = view({CDS: {"c": 1}, EDS: {"c": 1}, LDS: {"l": 1}, RDS: {"r": 1}})
    s = DeltaStream("s1", v)
    ack_all(s, s.on_request(dreq(CDS)))
    ack_all(s, s.on_request(dreq(EDS, sub=["c"])))
    ack_all(s, s.on_request(dreq(LDS)))
    ack_all(s, s.on_request(dreq(RDS, sub=["r"])))
    out = s.on_view(view({RDS: {"r": 2}, LDS: {"l": 2}, EDS: {"c": 2}, CDS: {"c": 2}}))
    assert summary(out) == [("CDS", ["c"], []), ("EDS", ["c"], []), ("LDS", ["l"], []), ("RDS", ["r"], [])]


def test_cluster_replacement_is_make_before_break():
    v = view({CDS: {"A": 1}, EDS: {"A": 1}, LDS: {"l": 1}, RDS: {"r": "to-A"}})
    s = DeltaStream("s1", v)
    ack_all(s, s.on_request(dreq(CDS)))
    ack_all(s, s.on_request(dreq(EDS, sub=["A"])))
    ack_all(s, s.on_request(dreq(LDS)))
    ack_all(s, s.on_request(dreq(RDS, sub=["r"])))
    ack_all(s, s.on_request(dreq(EDS, sub=["B"])))  # Envoy asks EDS for B when it sees B...
    # ... but here B comes in one change: cluster A replaced by B, routes repointed
    out = s.on_view(view({CDS: {"B": 1}, EDS: {"B": 1}, LDS: {"l": 1}, RDS: {"r": "to-B"}}))
    assert summary(out) == [
        ("CDS", ["B"], []),
        ("EDS", ["B"], []),
        ("RDS", ["r"], []),
        ("EDS", [], ["A"]),
        ("CDS", [], ["A"]),
    ]


def _holding_a(route_tag="to-A"):
    """A client as Envoy leaves it after start-up: cluster A with endpoints, listener l, route r."""
    s = DeltaStream("s1", view({CDS: {"A": 1}, EDS: {"A": 1}, LDS: {"l": 1}, RDS: {"r": route_tag}}))
    ack_all(s, s.on_request(dreq(CDS)))
    ack_all(s, s.on_request(dreq(EDS, sub=["A"])))
    ack_all(s, s.on_request(dreq(LDS)))
    ack_all(s, s.on_request(dreq(RDS, sub=["r"])))
    return s


def test_a_route_to_a_new_cluster_waits_until_envoy_has_its_endpoints():
    # What Envoy does: sees cluster B, subscribes to B's endpoints, then ACKs CDS;
    # the route to B must arrive after B's endpoints, or B is still warming when
    # requests are routed to it (503 until it warms)
    s = _holding_a()
    [cds] = s.on_view(view({CDS: {"A": 1, "B": 1}, EDS: {"A": 1, "B": 1}, LDS: {"l": 1}, RDS: {"r": "to-B"}}))
    assert summary([cds]) == [("CDS", ["B"], [])]
    assert s.warming == {"B"}
    [eds] = s.on_request(dreq(EDS, sub=["B"]))  # subscription answers are never held
    assert summary([eds]) == [("EDS", ["B"], [])]
    assert ack(s, cds) == []  # the endpoints are not ACKed yet
    assert summary(ack(s, eds)) == [("RDS", ["r"], [])]
    assert s.warming == frozenset()


def test_a_client_that_acks_a_new_cluster_without_asking_its_endpoints_does_not_stall_routes():
    s = _holding_a()
    [cds] = s.on_view(view({CDS: {"A": 1, "B": 1}, EDS: {"A": 1, "B": 1}, LDS: {"l": 1}, RDS: {"r": "to-B"}}))
    assert summary(ack(s, cds)) == [("RDS", ["r"], [])]


def test_a_nacked_assignment_also_releases_the_routes():
    s = _holding_a()
    [cds] = s.on_view(view({CDS: {"A": 1, "B": 1}, EDS: {"A": 1, "B": 1}, LDS: {"l": 1}, RDS: {"r": "to-B"}}))
    [eds] = s.on_request(dreq(EDS, sub=["B"]))
    ack(s, cds)
    assert summary(ack(s, eds, error="bad endpoints")) == [("RDS", ["r"], [])]


def test_a_new_cluster_dropped_again_while_warming_ends_in_order():
    s2 = _holding_a()
    [cds] = s2.on_view(view({CDS: {"A": 1, "B": 1}, EDS: {"A": 1, "B": 1}, LDS: {"l": 1}, RDS: {"r": "to-B"}}))
    [eds] = s2.on_request(dreq(EDS, sub=["B"]))
    assert s2.on_view(view({CDS: {"A": 1}, EDS: {"A": 1}, LDS: {"l": 2}, RDS: {"r": "to-A2"}})) == []  # un-ACKed
    out = ack_all(s2, [cds, eds])
    assert summary(out) == [("LDS", ["l"], []), ("RDS", ["r"], []), ("EDS", [], ["B"]), ("CDS", [], ["B"])]
    assert s2.warming == frozenset()


def test_updated_clusters_and_listeners_still_go_in_one_batch():
    s = _holding_a()
    out = s.on_view(view({CDS: {"A": 2}, EDS: {"A": 1}, LDS: {"l": 2}, RDS: {"r": "to-A2"}}))
    assert summary(out) == [("CDS", ["A"], []), ("EDS", ["A"], []), ("LDS", ["l"], []), ("RDS", ["r"], [])]
    assert s.warming == frozenset()


def test_removals_of_one_type_alone_merge_into_one_response():
    s = DeltaStream("s1", view({CDS: {"A": 1}}))
    ack_all(s, s.on_request(dreq(CDS)))
    out = s.on_view(view({CDS: {"B": 1}}))
    assert summary(out) == [("CDS", ["B"], ["A"])]


def test_cluster_update_resends_its_endpoints_even_if_unchanged():
    # Envoy: "Warming of Cluster is completed only when a new
    # ClusterLoadAssignment response is supplied ... even though there is no
    # change in endpoints"
    s = DeltaStream("s1", view({CDS: {"c": 1, "d": 1}, EDS: {"c": 1, "d": 1}}))
    ack_all(s, s.on_request(dreq(CDS)))
    ack_all(s, s.on_request(dreq(EDS, sub=["c", "d"])))
    out = s.on_view(view({CDS: {"c": 2, "d": 1}, EDS: {"c": 1, "d": 1}}))
    assert summary(out) == [("CDS", ["c"], []), ("EDS", ["c"], [])]


def test_cluster_resubscribe_also_resends_endpoints():
    s = DeltaStream("s1", view({CDS: {"c": 1}, EDS: {"c": 1}}))
    ack_all(s, s.on_request(dreq(CDS, sub=["c"])))
    ack_all(s, s.on_request(dreq(EDS, sub=["c"])))
    out = s.on_request(dreq(CDS, sub=["c"]))
    assert summary(out) == [("CDS", ["c"], []), ("EDS", ["c"], [])]


def test_endpoints_not_resent_for_unsubscribed_or_non_eds_clusters():
    from envoy.config.cluster.v3 import cluster_pb2

    from xds_gateway.protocol import make_resource

    static = make_resource(CDS, "s", cluster_pb2.Cluster(name="s", type=cluster_pb2.Cluster.STATIC).SerializeToString())
    static2 = make_resource(
        CDS, "s", cluster_pb2.Cluster(name="s", type=cluster_pb2.Cluster.STATIC, alt_stat_name="x").SerializeToString()
    )
    v = view({CDS: {"c": 1}, EDS: {"c": 1, "s": 1}})
    v[CDS]["s"] = static
    s = DeltaStream("s1", v)
    ack_all(s, s.on_request(dreq(CDS)))
    ack_all(s, s.on_request(dreq(EDS, sub=["s"])))
    v2 = view({CDS: {"c": 2}, EDS: {"c": 1, "s": 1}})
    v2[CDS]["s"] = static2
    out = s.on_view(v2)
    assert summary(out) == [("CDS", ["c", "s"], [])]  # no EDS: c unsubscribed, s is STATIC


def test_eds_service_name_is_followed():
    from envoy.config.cluster.v3 import cluster_pb2

    from xds_gateway.protocol import make_resource

    def cl(tag):
        c = cluster_pb2.Cluster(name="c", type=cluster_pb2.Cluster.EDS, alt_stat_name=tag)
        c.eds_cluster_config.service_name = "svc"
        return make_resource(CDS, "c", c.SerializeToString(deterministic=True))

    v = view({EDS: {"svc": 1}})
    v[CDS] = {"c": cl("1")}
    s = DeltaStream("s1", v)
    ack_all(s, s.on_request(dreq(CDS)))
    ack_all(s, s.on_request(dreq(EDS, sub=["svc"])))
    v2 = dict(v)
    v2[CDS] = {"c": cl("2")}
    assert summary(s.on_view(v2)) == [("CDS", ["c"], []), ("EDS", ["svc"], [])]


# -------------------------------------------------------- 10. coalescing


def test_view_changes_while_unacked_are_merged_and_flushed_by_the_ack():
    s = DeltaStream("s1", view({CDS: {"a": 1, "b": 1}}))
    ack_all(s, s.on_request(dreq(CDS)))
    [r1] = s.on_view(view({CDS: {"a": 2, "b": 1}}))
    assert s.on_view(view({CDS: {"a": 3, "b": 1}})) == []
    assert s.on_view(view({CDS: {"a": 4, "c": 1}})) == []
    assert s.has_deferred
    out = ack(s, r1)
    assert summary(out) == [("CDS", ["a", "c"], ["b"])]
    assert out[0].resources[0].version == res(CDS, "a", 4).version
    assert not s.has_deferred


def test_nack_also_flushes_deferred_work():
    s = DeltaStream("s1", view({CDS: {"a": 1}}))
    ack_all(s, s.on_request(dreq(CDS)))
    [r1] = s.on_view(view({CDS: {"a": 2}}))
    assert s.on_view(view({CDS: {"a": 2, "b": 1}})) == []
    assert summary(ack(s, r1, error="no")) == [("CDS", ["b"], [])]  # a@2 not resent


def test_gate_is_stream_wide_so_batches_keep_their_order():
    v = view({CDS: {"A": 1}, RDS: {"r": "A"}})
    s = DeltaStream("s1", v)
    ack_all(s, s.on_request(dreq(CDS)))
    ack_all(s, s.on_request(dreq(RDS, sub=["r"])))
    [r1] = s.on_view(view({CDS: {"A": 2}, RDS: {"r": "A"}}))
    # RDS now points to B: must not overtake CDS B, which waits behind r1
    assert s.on_view(view({CDS: {"A": 2, "B": 1}, RDS: {"r": "B"}})) == []
    assert summary(ack(s, r1)) == [("CDS", ["B"], []), ("RDS", ["r"], [])]


def test_subscription_answers_are_not_held_back():
    s = DeltaStream("s1", view({CDS: {"a": 1}, EDS: {"a": 1}}))
    [r1] = s.on_request(dreq(CDS))  # un-ACKed, like Envoy subscribing EDS before ACKing CDS
    assert summary(s.on_request(dreq(EDS, sub=["a"]))) == [("EDS", ["a"], [])]
    assert s.on_view(view({CDS: {"a": 1}, EDS: {"a": 2}})) == []
    assert ack(s, r1) == []  # EDS response still pending
    assert s.has_deferred


# ----------------------------------------------------- 11. unknown types


def test_unknown_type_is_recorded_and_not_answered():
    s = DeltaStream("s1", view({CDS: {"a": 1}}))
    assert s.on_request(dreq(SECRET, sub=["cert"], node="envoy-1")) == []
    assert s.on_request(dreq("", sub=["x"])) == []
    assert [(e.kind, e.type_url, e.node_id) for e in s.errors] == [
        ("unknown_type_url", SECRET, "envoy-1"),
        ("unknown_type_url", "", "envoy-1"),
    ]
    assert s.error_count == 2
    assert summary(s.on_request(dreq(CDS))) == [("CDS", ["a"], [])]  # stream still works


def test_served_types_can_be_extended():
    s = DeltaStream("s1", {SECRET: {}}, served_types=[SECRET])
    assert [r.removed_resources[:] for r in s.on_request(dreq(SECRET, sub=["cert"]))] == [["cert"]]


def test_reconnect_resends_endpoints_of_clusters_updated_before_eds_was_asked():
    # Envoy reconnecting asks CDS (with versions) before EDS (with versions):
    # a cluster changed while it was away warms only with a fresh CLA
    v = view({CDS: {"c": 2, "d": 1}, EDS: {"c": 1, "d": 1}})
    s = DeltaStream("s2", v)
    out = s.on_request(dreq(CDS, irv={"c": res(CDS, "c", 1).version, "d": v[CDS]["d"].version}))
    assert summary(out) == [("CDS", ["c"], [])]
    irv = {n: r.version for n, r in v[EDS].items()}
    assert summary(s.on_request(dreq(EDS, sub=["c", "d"], irv=irv))) == [("EDS", ["c"], [])]


def test_an_unknown_node_that_becomes_known_gets_its_wildcard_view_on_the_same_stream():
    from envoy.service.discovery.v3 import discovery_pb2

    from xds_gateway.protocol import CLUSTER, DeltaStream, make_resource

    stream = DeltaStream("s", {}, allowed=lambda t, n: False, wildcard_allowed=False)
    first = stream.on_request(discovery_pb2.DeltaDiscoveryRequest(type_url=CLUSTER))
    assert all(not r.resources for r in first)
    for r in first:
        stream.on_request(discovery_pb2.DeltaDiscoveryRequest(type_url=CLUSTER, response_nonce=r.nonce))
    stream.set_scope(allowed=None, wildcard_allowed=True)
    view = {CLUSTER: {"reviews": make_resource(CLUSTER, "reviews", b"\x0a\x07reviews")}}
    [response] = stream.on_view(view)
    assert [r.name for r in response.resources] == ["reviews"]
