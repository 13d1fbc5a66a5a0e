"""Human output (rich tables) drawn from the documents in ``replay.report``.

Invariant: this is the one place replay renders text, and every string in a
document (names, keys, producers, reasons: all of it came from the log) is
shown as plain text — control characters escaped, each string bounded
(``meshlog.terminal.plain_strings``), never read as Rich markup or emoji
codes (print through ``console()``). ``--json`` output is orjson's, which
escapes control characters itself.
"""

from __future__ import annotations

import json
import os
import sys

from rich.console import Console
from rich.table import Table
from rich.text import Text

from meshlog.terminal import plain_console, plain_strings
from proxysync.convergence import summary_text
from events.printable import printable
from replay.report import KIND_OF_TYPE

_HEALTH_STYLE = {"healthy": "green", "unhealthy": "red", "draining": "yellow"}


WIDTH_VAR = "MESHLOG_REPLAY_WIDTH"


def console(file=None) -> Console:
    """Where the print functions below print (stdout by default), with no markup. Output that is not a
    terminal is 200 columns wide, not 80 (a $COLUMNS exported by a shell does not narrow it), or
    $MESHLOG_REPLAY_WIDTH: how the demo fits replay's tables into its panels."""
    if file is None and sys.stdout.isatty():
        return plain_console(soft_wrap=False)
    columns = os.environ.get(WIDTH_VAR, "")
    width = int(columns) if columns.isdigit() and 20 <= int(columns) <= 1000 else 200
    return plain_console(file=file, width=width, soft_wrap=False)


def _kind(type_url: str) -> str:
    return KIND_OF_TYPE.get(type_url, type_url.rsplit(".", 1)[-1])


def _source_line(doc: dict) -> str:
    src = doc.get("source") or {}
    snap = src.get("snapshot")
    parts = []
    if snap:
        parts.append(f"snapshot @{snap['offset']} ({snap['events']} events)")
    parts.append(f"{src.get('events_folded', 0)} events folded" + (" after it" if snap else ""))
    if src.get("events_refused"):
        # a state that left events out says so: an unsigned log replayed verifying is an empty mesh otherwise
        by_problem = ", ".join(f"{problem} {n}" for problem, n in (src.get("refused_by_problem") or {}).items())
        parts.append(f"{src['events_refused']} of them refused ({by_problem})")
    if src.get("undecodable"):
        # "dead-lettered live" only for what the dead-letter topic records (replay.deadletters)
        live = src.get("undecodable_dead_lettered", 0)
        parts.append(f"{src['undecodable']} undecodable records skipped ({live} of them dead-lettered live)")
    return "; ".join(parts)


def _limited(console: Console, table: Table, rows: list, limit: int, what: str, add) -> None:
    """The first ``limit`` rows (0: all) into ``table``, each made plain first (``plain_strings``), then printed."""
    shown = rows if limit <= 0 else rows[:limit]
    for row in shown:
        add(plain_strings(row))
    console.print(table)
    if len(rows) > len(shown):
        console.print(Text(f"… {len(rows) - len(shown)} more {what} (narrow with --service S; --limit 0 shows all; "
                           f"--json has everything)", style="dim"))


def print_mesh(console: Console, doc: dict, limit: int = 50) -> None:
    # the document holds the whole mesh and each table shows ``limit`` rows: only what is shown is made plain
    # (``_limited``, row by row; the header here), not every string of every node (a tenth of the command's time)
    head = plain_strings({k: v for k, v in doc.items() if k in ("at", "filter", "source")})
    title = f"mesh as of {head['at']}"
    if head["filter"].get("service"):
        title += f" — service {head['filter']['service']}"
    console.print(Text(title, style="bold"))
    console.print(Text(_source_line(head), style="dim"))

    services = Table(title="services", title_justify="left")
    for col in ("service", "protocol", "port", "instances", "healthy", "unhealthy", "draining"):
        services.add_column(col, justify="right" if col not in ("service", "protocol") else "left")
    def service_row(s: dict) -> None:
        h = s["health"]
        services.add_row(s["name"], s["protocol"], str(s["port"]), str(len(s["instances"])), str(h["healthy"]),
                         str(h["unhealthy"]), str(h["draining"]))

    _limited(console, services, doc["services"], limit, "services", service_row)

    instances = Table(title="instances", title_justify="left")
    for col in ("service", "instance", "address", "health", "weight", "labels", "node", "sidecar in/out", "depends on"):
        instances.add_column(col)
    def instance_row(i: dict) -> None:
        health = Text(i["health"], style=_HEALTH_STYLE.get(i["health"], ""))
        if i["health_since"]:
            health.append(f" since {i['health_since']}", style="dim")
        sc = i["sidecar"]
        instances.add_row(
            i["service"], i["instance_id"], f"{i['address']}:{i['port']}", health, str(i["weight"]),
            ",".join(f"{k}={v}" for k, v in i["labels"].items()), i["node_id"] or "",
            f"{sc['inbound_port']}/{sc['outbound_port']}" if sc else "", ",".join(i["depends_on"]),
        )

    _limited(console, instances, [i for s in doc["services"] for i in s["instances"]], limit, "instances",
             instance_row)

    rules = Table(title="rules", title_justify="left")
    for col in ("kind", "name", "revision", "status", "summary"):
        rules.add_column(col)
    rule_rows = [("route", r) for r in doc["route_rules"]] + [("policy", p) for p in doc["destination_policies"]]

    def rule_row(item: tuple) -> None:
        kind, r = item
        if kind == "policy":
            pol = r["policy"]
            subsets = ", ".join(f"{s['name']}({','.join(f'{k}={v}' for k, v in s['labels'].items())})"
                                for s in pol.get("subsets", []))
            rules.add_row("policy", r["service"], str(r["revision"]), Text("active", style="green"),
                          f"lb={pol.get('lb_policy')} subsets: {subsets or '-'}")
            return
        dests = []
        for route in r["routes"]:
            match = route.get("match") or {}
            where = match.get("path_prefix") or match.get("path_exact") or "/"
            if match.get("headers"):
                where += " +" + ",".join(h["name"] for h in match["headers"])
            split = " ".join(
                f"{(d.get('service') or r['host'])}{'|' + d['subset'] if d.get('subset') else ''}:{d['weight']}"
                for d in route["destinations"]
            )
            dests.append(f"{where} → {split}")
        status = Text("served", style="green") if r["served"] else Text(f"NOT served: {r['problem']}", style="red")
        rules.add_row("route", r["host"], str(r["revision"]), status, "\n".join(dests))

    _limited(console, rules, rule_rows, limit, "rules", rule_row)

    nodes = Table(title="nodes", title_justify="left")
    for col in ("node", "instance", "clusters", "endpoints", "listeners", "routes"):
        nodes.add_column(col)
    def node_row(n: dict) -> None:
        counts = [str(len(n["resources"].get(u, {}))) for u in sorted(n["resources"], key=_type_order)]
        nodes.add_row(n["node"], n["instance"], *counts)

    _limited(console, nodes, doc["nodes"], limit, "nodes", node_row)
    for p in doc["problems"]:
        console.print(Text(f"problem: {plain_strings(p)}", style="yellow"))


def _type_order(type_url: str) -> int:
    order = list(KIND_OF_TYPE)
    return order.index(type_url) if type_url in order else 99


def print_node(console: Console, doc: dict) -> None:
    doc = plain_strings(doc)
    console.print(Text(f"node {doc['node']} as of {doc['at']}", style="bold"))
    console.print(Text(_source_line(doc), style="dim"))
    inst = doc["instance"]
    if inst:
        console.print(Text(f"instance {inst['service']}/{inst['instance_id']} at {inst['address']}:{inst['port']} "
                           f"({inst['health']}), depends on {', '.join(inst['depends_on']) or 'nothing'}"))
        for sub in inst.get("subscriptions", ()):
            console.print(Text(f"  subscribed to {sub['dependency']} ({sub['origin']}) since {sub['since']}"))
    table = Table(title="served resources", title_justify="left")
    for col in ("type", "name", "version"):
        table.add_column(col)
    for type_url in sorted(doc["resources"], key=_type_order):
        for name, version in doc["resources"][type_url].items():
            table.add_row(_kind(type_url), name, version or "")
    console.print(table)
    if "bodies" in doc:
        for type_url in sorted(doc["bodies"], key=_type_order):
            for name, body in doc["bodies"][type_url].items():
                console.print(Text(f"{_kind(type_url)} {name} ({doc['resources'][type_url].get(name)})", style="bold"))
                console.print_json(json.dumps(body))


def _causes(refs: list[dict]) -> str:
    seen = []
    for r in refs:
        line = f"{r['time']} {r['type']} {r['key']} ({r['producer']})"
        if r.get("convergence"):  # the whole mesh: how far the event reached
            line += "\n  " + printable(summary_text(r["convergence"]), 300)
        if line not in seen:
            seen.append(line)
    if len(seen) > 6:
        seen = seen[:5] + [f"… and {len(seen) - 5} more"]
    return "\n".join(seen)


def _accepted(a: dict | None) -> Text:
    """The ACCEPTED cell of a node diff: when the proxy ACKed the view carrying the change."""
    if a is None:  # no view after the change (the node left): nothing to accept
        return Text("—", style="dim")
    if a["state"] == "NO_PROXY":
        return Text("no proxy connected", style="dim")
    if a["state"] == "NOT_YET":
        return Text("not ACKed (by the window's end + grace)", style="red")
    via = a["via"]
    line = f"{a['acked_at']} (+{a['after_ms']:,} ms)"
    if via is not None:
        line += f"\nwith a later view ({via['topic']}/{via['partition']}/{via['offset']})"
    return Text(line, style="green")


def print_diff(console: Console, doc: dict) -> None:
    doc = plain_strings(doc)
    scope = f"node {doc['node']}" if doc["node"] else "whole mesh"
    console.print(Text(f"diff {doc['from']} → {doc['to']} ({scope}): {doc['events']} events", style="bold"))
    if not doc["exact"]:
        console.print(Text("long window over a large mesh: changes are attributed to groups of events", style="dim"))
    table = Table(title_justify="left")
    one_node = doc["node"] is not None
    for col in ("change", "type", "name", "version", "caused by", *(("accepted by the proxy",) if one_node else ())):
        table.add_column(col)

    def row(change: Text, e: dict, version: str) -> None:
        cells = [change, _kind(e["type_url"]), e["name"], version, _causes(e["caused_by"])]
        table.add_row(*cells, *((_accepted(e.get("accepted")),) if one_node else ()))

    for e in doc["added"]:
        row(Text("added", style="green"), e, e["version"])
    for e in doc["changed"]:
        row(Text("changed", style="yellow"), e, f"{e['from_version']} → {e['to_version']}")
    for e in doc["removed"]:
        row(Text("removed", style="red"), e, e["version"])
    if table.row_count:
        console.print(table)
    else:
        console.print("no served resource differs")
    nodes = doc["nodes"]
    for what in ("added", "removed", "changed"):
        if nodes[what]:
            console.print(Text(f"nodes {what}: {', '.join(nodes[what])}"))
    for j in doc["rejections"]:
        console.print(Text(f"rejected {_rejected_what(j)} at {j['time']}: {j['reason']}", style="red"))
    for d in doc["undecodable"]:
        what = "dead-lettered" if d["recorded"] else "undecodable (not on the dead-letter topic)"
        console.print(Text(f"{what} {d['source']['topic']}/{d['source']['partition']}/{d['source']['offset']} "
                           f"at {d['time']}: {d['reason']}", style="red"))


def author_text(e: dict) -> Text:
    """Who stated an event: its verified SPIFFE id; else the name it claimed, marked unverified and why."""
    author = e.get("author")
    if author is None:  # a document without verification (older format)
        return Text(printable(e["producer"], 120))
    if author["verified"]:
        return Text(printable(author["spiffe_id"], 160))
    return Text(f"unverified ({printable(author['problem'], 40)}): claims {printable(e['producer'], 100)}",
                style="yellow")


def _rejected_what(j: dict) -> str:
    if j["kind_of_rule"] == "authorship":
        return f"{j['event_type']} of {j['name']} ({j['problem']})"
    if j["kind_of_rule"] == "subscription":
        return f"{j['action']} of {j['subscriber']} to {j['name']}"
    return f"{j['kind_of_rule']} {j['name']} r{j['revision']}"


def _effect(e: dict, groups: list[dict]) -> str:
    eff = e["effect"]
    lines = []
    if eff is None:
        g = groups[e["group"]]
        lines.append(f"(folded with {g['events'] - 1} other events; the group's effect:)")
        eff = g["effect"]
    for type_url, name, version in eff["changed"][:8]:
        lines.append(f"~ {_kind(type_url)} {name} {version}")
    for type_url, name in eff["removed"][:8]:
        lines.append(f"- {_kind(type_url)} {name}")
    more = len(eff["changed"]) + len(eff["removed"]) - len(lines)
    if more > 0:
        lines.append(f"… {more} more")
    if eff["nodes"] or eff["nodes_removed"]:
        nodes = eff["nodes"] + [f"-{n}" for n in eff["nodes_removed"]]
        lines.append("nodes: " + ", ".join(nodes[:6]) + (f" (+{len(nodes) - 6})" if len(nodes) > 6 else ""))
    conv = e.get("convergence") if e.get("effect") is not None else groups[e["group"]].get("convergence")
    if conv and conv["proxies"]:
        lines.append(printable(summary_text(conv), 300))
    if e.get("rejection"):
        r = e["rejection"]
        lines.append(f"REJECTED: {r['reason']}" + ("" if r["recorded"] else " (not on the rejections topic)"))
    return "\n".join(lines) or "no change to what is served"


def print_log(console: Console, doc: dict) -> None:
    doc = plain_strings(doc)
    scope = ", ".join(f"{k} {v}" for k, v in doc["filter"].items()) or "everything"
    console.print(Text(f"log {doc['from']} → {doc['to']} ({scope}): {len(doc['entries'])} entries", style="bold"))
    if not doc["exact"]:
        console.print(Text("long window over a large mesh: effects are per group of events", style="dim"))
    table = Table(title_justify="left")
    for col in ("broker time", "author", "type", "key", "effect"):
        table.add_column(col)
    for e in doc["entries"]:
        if e["kind"] == "event":
            style = "red" if e.get("rejection") else ""
            table.add_row(e["time"], author_text(e), Text(e["type"], style=style), e["key"],
                          _effect(e, doc.get("groups", [])))
        elif e["kind"] == "rejection":
            table.add_row(e["time"], "projector", Text("rejected", style="red"), _rejected_what(e), e["reason"])
        elif e["kind"] in ("ack", "nack"):
            short = printable(e["type_url"].rsplit(".", 1)[-1], 40)
            names = ", ".join(f"{printable(n, 80)}@{v}" for n, v in sorted(e["resources"].items())[:4])
            more = len(e["resources"]) - 4
            what = names + (f" (+{more})" if more > 0 else "")
            if e["kind"] == "nack":
                what = f"rejected {what}: {printable(e['reason'] or '', 300)}"
            table.add_row(e["time"], Text(printable(e["gateway"], 60)),
                          Text(f"{short} {e['kind'].upper()}", style="red" if e["kind"] == "nack" else "dim"),
                          Text(printable(e["node"], 80)), Text(what))
        else:
            src = e["source"]
            table.add_row(e["time"], "-", Text("dead-lettered" if e["recorded"] else "undecodable", style="red"),
                          f"{src['topic']}/{src['partition']}/{src['offset']}", f"[{e['stage']}] {e['reason']}")
    console.print(table)
