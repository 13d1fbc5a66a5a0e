"""Convergence from the event's append to the last affected proxy's ACK, without a broker."""

from __future__ import annotations

from proxysync.convergence import convergences

from .test_table_and_compare import CDS, Log, acked, opened

T0_MS = 1767225600000  # test_table_and_compare.T0


def test_reached_by_every_connected_proxy_slowest_named_superseded_and_unconnected_left_out():
    log = Log()
    records = [
        log(opened("a", "gw1", "1"), 0), log(acked("a", "gw1", "1", {"x": "v1"}), 0.5),
        log(opened("b", "gw2", "2"), 0), log(acked("b", "gw2", "2", {"x": "v1"}), 0.5),
        log(opened("c", "gw2", "3"), 0),
        # event 1 at t=10 s tells a, b and c (and d, which has no proxy) version v2
        log(acked("a", "gw1", "1", {"x": "v2"}), 10.05),
        log(acked("b", "gw2", "2", {"x": "v2"}), 10.3),
        # c never ACKs v2; event 2 at t=20 s tells c v3 and it ACKs that
        log(acked("c", "gw2", "3", {"x": "v3"}), 20.1),
    ]
    told = lambda v: {CDS: {"x": v}}  # noqa: E731
    changes = [("e1", T0_MS + 10_000, {"a": told("v2"), "b": told("v2"), "c": told("v2"), "d": told("v2")}),
               ("e2", T0_MS + 20_000, {"c": told("v3")})]
    got = convergences(changes, records)
    e1, e2 = got["e1"], got["e2"]
    assert (e1.proxies, e1.reached, e1.superseded, e1.last_ms, e1.slowest) == (3, 2, 1, 300, "b")
    assert (e2.proxies, e2.reached, e2.last_ms, e2.slowest) == (1, 1, 100, "c")


def test_an_ack_that_leaves_another_type_behind_does_not_count():
    log = Log()
    other = "type.googleapis.com/envoy.config.listener.v3.Listener"
    records = [log(opened("a", "gw1", "1"), 0),
               log(acked("a", "gw1", "1", {"x": "v2"}), 10.1),  # CDS done, LDS not yet
               log(acked("a", "gw1", "1", {"l": "v2"}, type_url=other), 10.4)]
    got = convergences([("e", T0_MS + 10_000, {"a": {CDS: {"x": "v2"}, other: {"l": "v2"}}})], records)
    assert (got["e"].reached, got["e"].last_ms) == (1, 400)


def test_acceptance_of_one_node_direct_through_a_later_view_not_yet_and_without_a_proxy():
    from proxysync.convergence import ACCEPTED, NO_PROXY, NOT_YET, acceptance

    log = Log()
    records = [
        log(opened("a", "gw1", "1"), 0), log(opened("c", "gw2", "3"), 0), log(opened("e", "gw2", "5"), 0),
        log(acked("a", "gw1", "1", {"x": "v2"}), 10.05),
        log(acked("c", "gw2", "3", {"x": "v3"}), 20.1),  # c skipped v2: its ACK of v3 carries e1 too
    ]
    told = lambda v: {CDS: {"x": v}}  # noqa: E731
    changes = [("e1", T0_MS + 10_000, {"a": told("v2"), "c": told("v2"), "d": told("v2"), "e": told("v2")}),
               ("e2", T0_MS + 20_000, {"c": told("v3")})]
    got = convergences(changes, records)
    a = acceptance(got, "e1", "a")
    assert (a.state, a.acked_ms, a.after_ms, a.via) == (ACCEPTED, T0_MS + 10_050, 50, None)
    c = acceptance(got, "e1", "c")
    assert (c.state, c.acked_ms, c.after_ms, c.via) == (ACCEPTED, T0_MS + 20_100, 10_100, "e2")
    assert acceptance(got, "e2", "c").via is None
    assert acceptance(got, "e1", "d").state == NO_PROXY  # no stream when e1 was appended
    assert acceptance(got, "e1", "e").state == NOT_YET  # connected, never ACKed v2
    assert acceptance(got, "unknown", "a").state == NO_PROXY
