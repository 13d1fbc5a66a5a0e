"""`meshlog status` documents and text from a sync snapshot (no broker)."""

from __future__ import annotations

from proxysync.read import SyncSnapshot, ViewEntry
from proxysync.status_cli import render_node_text, render_text, status_doc
from proxysync.table import SyncTable

from .test_table_and_compare import CDS, Log, acked, nacked, opened

NOW_MS = 1767225600000 + 60_000


def snapshot() -> SyncSnapshot:
    log = Log()
    table = SyncTable().apply_all([
        log(opened("web", "gw-1", "1"), 0),
        log(acked("web", "gw-1", "1", {"a": "v1"}), 1),
        log(opened("web", "gw-2", "9"), 5),  # moved after gw-1 died
        log(nacked("web", "gw-2", "9", {"a": "v2"}, "bad\\x0acluster \x1b[31m"), 6),
        log(opened("api", "gw-2", "3"), 0),
        log(acked("api", "gw-2", "3", {"b": "v1"}), 1),
    ])
    views = {"web": ViewEntry({CDS: {"a": "v2"}}, 1767225600000 + 5000),
             "api": ViewEntry({CDS: {"b": "v2"}}, 1767225600000 + 30_000)}
    return SyncSnapshot(table, views)


def test_rows_say_where_each_proxy_streams_from_and_how_each_type_stands():
    doc = status_doc(snapshot(), include_closed=False, now_ms=NOW_MS)
    rows = {r["node"]: r for r in doc["proxies"]}
    assert rows["web"]["stream"]["gateway"] == "gw-2"
    assert rows["web"]["previous"][0]["close_reason"] == "superseded"
    assert rows["web"]["types"]["CDS"]["state"] == "NACKED"
    assert rows["api"]["types"]["CDS"]["state"] == "STALE"
    text = render_text(doc)
    assert "was on gw-1 (superseded)" in text
    assert "STALE 30.0s" in text
    assert "\x1b" not in text  # a proxy's words never reach the terminal raw


def test_node_view_lists_the_names_that_differ():
    doc = status_doc(snapshot(), include_closed=False, now_ms=NOW_MS)
    [web] = [r for r in doc["proxies"] if r["node"] == "web"]
    web["as_of_ms"] = NOW_MS
    text = render_node_text(web)
    assert "NACKED" in text and "v2" in text and "v1" in text and "\x1b" not in text
