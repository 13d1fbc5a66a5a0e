#!/usr/bin/env python3
"""The README's sizing table for 10,000, 100,000 and 1,000,000 proxies, derived from its unit costs.

    python bench/sizing.py            print the sizing table derived from README.md's unit costs
    python bench/sizing.py --write    and put it into README.md (between the sizing markers)

Every input is a row of the README's "unit costs" table (between ``<!-- unit-costs:begin -->`` and
``<!-- unit-costs:end -->``): ``| name | what | value | where it comes from |``; the value is the first
number in its cell. Update a figure there (a bench re-run, a new worker or gateway design) and run
``--write``: the sizing table follows. tests/unit/test_sizing.py fails while the README's table is not
what its unit costs give. Nothing here measures anything; the formulas are in :func:`size` and the
README says them in words.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
COSTS_BEGIN, COSTS_END = "<!-- unit-costs:begin -->", "<!-- unit-costs:end -->"
SIZING_BEGIN, SIZING_END = "<!-- sizing:begin -->", "<!-- sizing:end -->"
SIZES = (10_000, 100_000, 1_000_000)
NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def between(text: str, begin: str, end: str) -> str:
    try:
        start = text.index(begin) + len(begin)
        return text[start:text.index(end, start)]
    except ValueError:
        raise ValueError(f"README.md has no {begin} ... {end} section") from None


def unit_costs(text: str) -> dict[str, float]:
    """name -> value of every row of the unit-costs table."""
    costs: dict[str, float] = {}
    for line in between(text, COSTS_BEGIN, COSTS_END).splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 3 or not cells[0].startswith("`"):
            continue  # the header, its rule, prose
        name = cells[0].strip("`")
        found = NUMBER.search(cells[2])
        if found is None:
            raise ValueError(f"unit cost {name}: no number in {cells[2]!r}")
        costs[name] = float(found.group(0).replace(",", ""))
    return costs


@dataclass(frozen=True)
class Size:
    proxies: int
    services: int
    events_steady: float  # events/s
    events_peak: float
    brokers: int
    partitions: int  # per event and view topic (the rules topic keeps 1)
    view_mb: float  # the compacted view topics, one copy
    workers: int | None  # None: no count suffices (what each worker spends on every event exceeds its core)
    worker_core_need: float  # cores one worker spends decoding, folding and rendering the shared part at peak
    worker_state_gb: float
    worker_cold_render_s: float
    gateways: int  # gateway processes (one core each)
    gateway_by: str  # what decided it: "streams", "responses" or "the minimum" (2: one may fail)
    gateway_view_gb: float  # each gateway process: the index of every node's records, its streams' nodes decoded
    reconnect_cpu_s: float  # per surviving gateway process, when one is lost
    checkers: int
    checkers_capped: bool
    propagation_ms: float
    failover_stall_s: float


def size(n: int, c: dict[str, float]) -> Size:
    services = n / c["instances_per_service"]
    steady = n / (c["minutes_between_events"] * 60)
    peak = steady * c["peak_factor"]
    headroom = c["cpu_headroom"]
    per_event_nodes = c["nodes_changed_per_event"]
    per_event_memberships = c["memberships_changed_per_event"]
    # every record written: the event, the membership records it moves (not those of the nodes holding changed
    # endpoints: memberships name them at the latest) and the changed body, each stored 3 times
    records = peak * (1 + per_event_memberships + 1) * 3
    brokers = max(3, math.ceil(records / (c["broker_records_per_s"] * headroom)))
    # every worker decodes and folds every event and renders the shared resources it changes; the per-node
    # resources and memberships, the planning and the publishing are divided (projector run --group renders
    # each worker's own nodes: bench/projector_workers.py, bench/mesh_scale.py), so W is the least with
    # peak x (decode + shared render + (split render + publish) / W) <= headroom, and no W suffices once the
    # shared part alone exceeds it
    own_share = peak * (1 / c["decode_events_per_s"] + c["render_shared_ms_per_event"] / 1000)
    divided_s = peak * ((c["render_ms_per_event"] - c["render_shared_ms_per_event"])
                        + c["publish_ms_per_record"] * (per_event_memberships + 1)) / 1000
    workers = max(2, math.ceil(divided_s / (headroom - own_share))) if own_share < headroom else None
    # a new worker renders the shared resources and its share of the nodes (W, or alone when none suffices)
    cold_ms_per_node = c["render_shared_ms_per_node"] + (c["render_ms_per_node"] - c["render_shared_ms_per_node"]) / (
        workers or 1)
    responses = peak * per_event_nodes  # each changed node's stream gets a delta response
    by_streams = math.ceil(n / c["streams_per_gateway"])
    by_responses = math.ceil(responses / (c["responses_per_gateway_cpu_s"] * headroom))
    gateways = max(2, by_streams, by_responses)
    streams_each = n / gateways
    checkers_needed = math.ceil(n / c["probe_interval_s"] / (c["probes_per_checker_cpu_s"] * headroom))
    return Size(
        proxies=n, services=round(services), events_steady=steady, events_peak=peak, brokers=brokers,
        partitions=max(3, brokers), view_mb=n * c["view_bytes_per_node"] / 1e6, workers=workers,
        worker_core_need=own_share, worker_state_gb=n * c["projector_kb_per_node"] / 1e6,
        worker_cold_render_s=n * cold_ms_per_node / 1000,
        gateways=gateways, gateway_by="the minimum" if gateways > max(by_streams, by_responses)
        else "streams" if by_streams >= by_responses else "responses",
        # --views connected (the default): every node's records kept undecoded, its streams' nodes decoded
        gateway_view_gb=(n * c["gateway_index_kb_per_node"] + streams_each * c["gateway_kb_per_stream"]) / 1e6,
        reconnect_cpu_s=streams_each * c["gateway_ms_per_stream_open"] / 1000 / max(1, gateways - 1),
        checkers=min(checkers_needed, int(c["checker_shards"])), checkers_capped=checkers_needed > c["checker_shards"],
        propagation_ms=c["propagation_ms"], failover_stall_s=c["failover_stall_s"],
    )


def _n(x: float) -> str:
    return f"{x:,.0f}"


def table(costs: dict[str, float]) -> str:
    sizes = [size(n, costs) for n in SIZES]
    rows = [
        ("services (N / `instances_per_service`)", [_n(s.services) for s in sizes]),
        ("events/s steady / peak", [f"{s.events_steady:,.0f} / {s.events_peak:,.0f}" for s in sizes]),
        ("Kafka brokers", [str(s.brokers) for s in sizes]),
        ("partitions per event and view topic", [str(s.partitions) for s in sizes]),
        ("view topics, one copy", [f"{s.view_mb:,.0f} MB" for s in sizes]),
        ("projector workers", [str(s.workers) if s.workers is not None else
                               f"none suffices: each needs {s.worker_core_need:,.1f} cores for every event"
                               for s in sizes]),
        ("state each worker holds", [f"{s.worker_state_gb:.1f} GB" for s in sizes]),
        ("a new worker's first render (shared resources + its share of the nodes)",
         [f"{s.worker_cold_render_s:,.0f} s" for s in sizes]),
        ("gateway processes (one core each)", [f"{s.gateways} (by {s.gateway_by})" for s in sizes]),
        ("memory per gateway process (every node's records undecoded + its streams' nodes)", [f"{s.gateway_view_gb:.1f} GB" for s in sizes]),
        ("CPU each survivor spends re-opening a lost process's streams",
         [f"{s.reconnect_cpu_s:,.1f} s" for s in sizes]),
        ("health checkers", [f"{s.checkers}" + (" (shard cap: too few)" if s.checkers_capped else "") for s in sizes]),
        ("propagation p50, a change to its subscribers", [f"~{s.propagation_ms:,.0f} ms" for s in sizes]),
        ("+ while a broker fails over", [f"+{s.failover_stall_s:.1f} s" for s in sizes]),
    ]
    out = ["| | " + " | ".join(f"{n:,} proxies" for n in SIZES) + " |", "|---|" + "---|" * len(SIZES)]
    out += [f"| {label} | " + " | ".join(cells) + " |" for label, cells in rows]
    return "\n".join(out)


def with_table(text: str, rendered: str) -> str:
    between(text, SIZING_BEGIN, SIZING_END)  # both markers present
    head, rest = text.split(SIZING_BEGIN, 1)
    _old, tail = rest.split(SIZING_END, 1)
    return f"{head}{SIZING_BEGIN}\n{rendered}\n{SIZING_END}{tail}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--write", action="store_true", help="replace the README's sizing table")
    args = ap.parse_args()
    text = README.read_text()
    rendered = table(unit_costs(text))
    print(rendered)
    if args.write:
        README.write_text(with_table(text, rendered))
    return 0


if __name__ == "__main__":
    sys.exit(main())
