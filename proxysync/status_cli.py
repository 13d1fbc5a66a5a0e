"""``meshlog status``: per proxy, which gateway replica it streams from and whether it holds what its view says.

Built from the log (``meshlog.sync`` and ``meshlog.views.membership``), not by
asking replicas: it works with any number of gateways, and after one died.
Everything printed that came from the log or from a proxy is escaped and
bounded (``events.printable``).

Exit codes: 0 shown; 2 bad usage (unknown ``--node``); 3 broker unreachable.
"""

from __future__ import annotations

import argparse
import asyncio
import difflib
import sys
import time

import orjson

from events import kafka_security
from meshlog import argtypes
from meshlog.bootstrap import NoBrokerAddress, resolve_bootstrap
from projector.typeurls import TYPE_URLS
from proxysync.compare import NACKED, STALE, TypeStatus, compare_proxy
from proxysync.read import SyncSnapshot, read_snapshot
from proxysync.table import ProxySync, StreamInfo
from events.printable import printable

SHORT = dict(zip(TYPE_URLS, ("CDS", "EDS", "LDS", "RDS")))
_RANK = {u: i for i, u in enumerate(TYPE_URLS)}


def short(type_url: str) -> str:
    return SHORT.get(type_url) or printable(type_url.rsplit(".", 1)[-1], 40)


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "status",
        help="what each proxy ACKed, against what its view says now (from the log)",
        description="One row per proxy: its gateway replica and, per xDS type, SYNCED / STALE (sent, not ACKed, "
                    "for how long) / NACKED (with the reason) / NOT SENT, against the versions of its view.",
        epilog="Exit codes: 0 shown; 2 unknown --node; 3 broker unreachable.",
    )
    p.add_argument("--bootstrap", type=argtypes.bootstrap, metavar="HOST:PORT[,HOST:PORT]", help="Kafka address (default: $MESHLOG_KAFKA_BOOTSTRAP or `meshlog kafka up`'s)")
    kafka_security.add_arguments(p)
    p.add_argument("--node", help="show this proxy's names whose ACKed version differs from its view")
    p.add_argument("--all", action="store_true", help="also proxies whose stream is closed")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=run)
    return p


# ------------------------------------------------------------------ pure: snapshot -> document


def _stream_doc(s: StreamInfo) -> dict:
    return {
        "gateway": s.gateway, "stream_id": s.stream_id, "kind": s.kind, "peer": s.peer, "identity": s.identity,
        "opened_ms": s.opened_ms, "closed_ms": s.closed_ms, "close_reason": s.close_reason,
        "superseded_by": s.superseded_by,
    }


def sorted_statuses(statuses: dict[str, TypeStatus]) -> dict[str, TypeStatus]:
    return dict(sorted(statuses.items(), key=lambda kv: (_RANK.get(kv[0], 99), kv[0])))


def proxy_row(node: str, proxy: ProxySync | None, told: dict[str, dict[str, str]] | None,
              view_changed_ms: int | None) -> dict:
    """One proxy's status document: its stream(s) and, per type, what it ACKed against what it was ``told``."""
    statuses = sorted_statuses(compare_proxy(told or {}, proxy, view_changed_ms))
    return {
        "node": node,
        "connected": proxy is not None and proxy.stream.open,
        "stream": _stream_doc(proxy.stream) if proxy is not None else None,
        "previous": [_stream_doc(s) for s in proxy.previous] if proxy is not None else [],
        "in_view": told is not None,
        "types": {short(u): st.as_dict() for u, st in statuses.items()},
    }


def status_doc(snapshot: SyncSnapshot, *, include_closed: bool, now_ms: int) -> dict:
    rows = []
    for node in sorted(snapshot.table.proxies):
        proxy: ProxySync = snapshot.table.proxies[node]
        if not proxy.stream.open and not include_closed:
            continue
        view = snapshot.views.get(node)
        rows.append(proxy_row(node, proxy, view.resources if view else None, view.changed_ms if view else None))
    return {"as_of_ms": now_ms, "proxies": rows, "undecodable_sync_records": snapshot.undecodable,
            "malformed_view_records": snapshot.bad_views}


# ------------------------------------------------------------------ text


def _ago(ms: int | None, now_ms: int) -> str:
    if ms is None:
        return "?"
    s = max(0, now_ms - ms) / 1000
    return f"{s:.1f}s" if s < 120 else f"{s / 60:.0f}m"


def _cell(status: dict, now_ms: int) -> str:
    state = status["state"]
    if state == STALE:
        return f"STALE {_ago(status['since_ms'], now_ms)}"
    if state == NACKED:
        return f"NACKED: {printable(status['reason'] or '', 60)}"
    return state


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def render_text(doc: dict) -> str:
    now = doc["as_of_ms"]
    if not doc["proxies"]:
        return "no proxies connected (per meshlog.sync)"
    types = [u for u in ("CDS", "EDS", "LDS", "RDS")]
    extra = sorted({t for r in doc["proxies"] for t in r["types"]} - set(types))
    header = ["NODE", "GATEWAY", "STREAM", *types, *extra]
    rows = [header]
    for r in doc["proxies"]:
        s = r["stream"]
        stream = "open" if r["connected"] else f"closed ({s['close_reason']})"
        moved = [p for p in r["previous"] if p["gateway"] != s["gateway"]]
        if moved:
            stream += f", was on {printable(moved[-1]['gateway'], 60)} ({moved[-1]['close_reason']})"
        cells = [_cell(r["types"][t], now) if t in r["types"] else "-" for t in (*types, *extra)]
        rows.append([printable(r["node"], 80), printable(s["gateway"], 60), stream, *cells])
    out = _table(rows)
    if doc["undecodable_sync_records"]:
        out += f"\n({doc['undecodable_sync_records']} sync records did not decode and were skipped)"
    return out


def render_node_text(node_doc: dict, told_header: str = "TOLD (view)") -> str:
    now = node_doc["as_of_ms"]
    s = node_doc["stream"]
    if s is None:
        lines = [f"{printable(node_doc['node'], 80)}: no stream on record"]
    else:
        lines = [f"{printable(node_doc['node'], 80)}: {'open' if node_doc['connected'] else 'closed'} stream "
                 f"{printable(s['stream_id'], 40)} on {printable(s['gateway'], 60)} "
                 f"(peer {printable(s['peer'], 80)})"]
    rows = [["TYPE", "STATE", "NAME", told_header, "ACKED", "REJECTED"]]
    for t, st in node_doc["types"].items():
        lines.append(f"  {t}: {_cell(st, now)}" + (f" — {printable(st['reason'], 400)}" if st["reason"] else ""))
        for d in st["differences"]:
            rows.append([t, st["state"], printable(d["name"], 120), d["told"] or "-", d["acked"] or "-",
                         d["rejected"] or ""])
    if len(rows) > 1:
        lines.append(_table(rows))
    else:
        lines.append("  every ACKed version is the one its view names")
    return "\n".join(lines)


# ------------------------------------------------------------------ the command


async def _load(bootstrap: str) -> SyncSnapshot:
    from replay.engine import open_log

    async with open_log(bootstrap) as consumer:
        return await read_snapshot(consumer)


def run(args: argparse.Namespace) -> int:
    from replay.engine import BrokerDown

    try:
        snapshot = asyncio.run(_load(resolve_bootstrap(args.bootstrap)))
    except (NoBrokerAddress, BrokerDown) as exc:
        print(f"meshlog status: {exc}", file=sys.stderr)
        return 3
    now_ms = int(time.time() * 1000)
    if args.node is not None:
        proxy = snapshot.table.proxies.get(args.node)
        if proxy is None:
            known = sorted(snapshot.table.proxies)
            near = difflib.get_close_matches(args.node, known, n=5)
            hint = f"; did you mean {', '.join(printable(n, 80) for n in near)}?" if near else ""
            print(f"meshlog status: --node: no proxy {printable(args.node, 80)!s} in meshlog.sync{hint}",
                  file=sys.stderr)
            return 2
        view = snapshot.views.get(args.node)
        node_doc = proxy_row(args.node, proxy, view.resources if view else None, view.changed_ms if view else None)
        node_doc["as_of_ms"] = now_ms
        if args.json:
            print(orjson.dumps(node_doc).decode())
        else:
            print(render_node_text(node_doc))
        return 0
    doc = status_doc(snapshot, include_closed=args.all, now_ms=now_ms)
    print(orjson.dumps(doc).decode() if args.json else render_text(doc))
    return 0


__all__ = ["add_parser", "run", "status_doc", "proxy_row", "render_node_text"]
