"""The sync fold (one row per proxy) and the told-vs-ACKed comparison, without a broker."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from events import types as t
from events.envelope import Logged, new_event
from proxysync.compare import NACKED, NOT_SENT, STALE, SYNCED, Difference, compare_proxy
from proxysync.table import SyncTable

CDS = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
LDS = "type.googleapis.com/envoy.config.listener.v3.Listener"
T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


class Log:
    def __init__(self) -> None:
        self.offset = 0

    def __call__(self, payload, seconds: float) -> Logged:
        self.offset += 1
        at = T0 + timedelta(seconds=seconds)
        return Logged(new_event(payload, producer="gw", occurred_at=at), "meshlog.sync", 0, self.offset,
                      int(at.timestamp() * 1000))


def opened(node, gw, sid):
    return t.ProxyStreamOpened(node=node, gateway=gw, stream_id=sid, kind="delta", peer="ipv4:127.0.0.1:1")


def acked(node, gw, sid, held, type_url=CDS, nonce="n"):
    return t.ProxyAcked(node=node, gateway=gw, stream_id=sid, type_url=type_url, nonce=nonce, held=held)


def nacked(node, gw, sid, rejected, reason, type_url=CDS):
    return t.ProxyNacked(node=node, gateway=gw, stream_id=sid, type_url=type_url, nonce="n2", rejected=rejected,
                         reason=reason)


def test_statuses_synced_stale_nacked_and_not_sent():
    log = Log()
    table = SyncTable().apply_all([
        log(opened("web", "gw1", "1"), 0),
        log(acked("web", "gw1", "1", {"a": "v1"}), 1),
    ])
    proxy = table.proxies["web"]
    told = {CDS: {"a": "v1"}, LDS: {"l": "x"}}
    s = compare_proxy(told, proxy, view_changed_ms=500)
    assert s[CDS].state == SYNCED and s[LDS].state == NOT_SENT
    s = compare_proxy({CDS: {"a": "v2"}}, proxy, view_changed_ms=5000)
    assert s[CDS].state == STALE and s[CDS].since_ms == 5000
    assert s[CDS].differences == (Difference("a", "v2", "v1"),)

    table.apply(log(nacked("web", "gw1", "1", {"a": "v2"}, "bad cluster"), 6))
    s = compare_proxy({CDS: {"a": "v2"}}, proxy, view_changed_ms=5000)
    assert (s[CDS].state, s[CDS].reason) == (NACKED, "bad cluster")
    assert s[CDS].differences == (Difference("a", "v2", "v1", rejected="v2"),)
    # the next good version clears it
    table.apply(log(acked("web", "gw1", "1", {"a": "v3"}), 7))
    assert compare_proxy({CDS: {"a": "v3"}}, proxy, 6500)[CDS].state == SYNCED


def test_a_reconnect_elsewhere_supersedes_the_old_stream_and_its_late_records_are_ignored():
    log = Log()
    table = SyncTable().apply_all([
        log(opened("web", "gw1", "1"), 0),
        log(acked("web", "gw1", "1", {"a": "v1"}), 1),
        log(opened("web", "gw2", "7"), 5),  # gw1 was killed: no closed record
        log(acked("web", "gw1", "1", {"a": "old"}), 6),  # a late flush of the dead stream
    ])
    proxy = table.proxies["web"]
    assert (proxy.stream.gateway, proxy.stream.open) == ("gw2", True)
    [old] = proxy.previous
    assert (old.gateway, old.close_reason, old.superseded_by) == ("gw1", "superseded", "gw2/7")
    # what the proxy held survives the reconnect until the new stream says otherwise
    assert proxy.types[CDS].held == {"a": "v1"}
    table.apply(log(t.ProxyStreamClosed(node="web", gateway="gw2", stream_id="7", reason="gateway_stopping"), 9))
    assert (proxy.stream.open, proxy.stream.close_reason) == (False, "gateway_stopping")


def test_a_fact_from_a_stream_never_seen_opening_makes_it_current():
    log = Log()
    table = SyncTable().apply_all([log(opened("web", "gw1", "1"), 0), log(acked("web", "gw2", "3", {"a": "v"}), 2)])
    assert table.proxies["web"].stream.ref == "gw2/3"
    assert table.proxies["web"].types[CDS].held == {"a": "v"}
