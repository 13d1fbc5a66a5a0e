#!/usr/bin/env python3
"""Fold and render a simulated mesh of N sidecar nodes in one process: time, memory, bytes per view.

    python bench/mesh_scale.py [--nodes 10000 100000] [--flips 1000] [--json]

The mesh is bench/projector.py's (N/5 services x 5 instances, every instance a sidecar node depending
on 3 other services). For each size, in a fresh child process (so peak memory is that size's alone):

* fold: ``fold_many`` of the N registrations (CPU s);
* render: ``render_all`` from scratch (CPU s): what a projector worker does for its nodes on a cold start;
* peak RSS of the process after the render, and its growth over the interpreter's start;
* view bytes: the resources' serialized bodies and every node's membership record
  (``projector.publisher.membership_value``) as the view topics carry them, in total and per node;
* a health batch: ``--flips`` health transitions of random instances folded and rendered incrementally
  (``render_all(state, previous=...)``), as the live projector does a batch, its heap frozen first as the
  projector freezes it after each batch (``gc.freeze``): CPU s, events per CPU-s, how many nodes' views
  changed, and the view records the projector publishes for it (``plan_changes``: changed bodies, and the
  memberships whose record moved; a node holding changed endpoints names them at the latest, so not one);
* the same two renders scoped to one shard of 12 (``render_all(..., scope=Ownership({0}, 12))``: a worker
  of ``projector run --group`` owning a twelfth of the nodes), which splits each into what every worker
  spends whatever its share (``shared``: the fold of the batch, shared resources, the indexes) and what
  is divided among the workers (per-node resources and memberships): whole = shared + split,
  scoped = shared + split / 12.

CPU seconds (time.process_time) are reported beside wall time: the host is shared.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.host_window import HostWindow, steal_text  # noqa: E402


def _bench_projector():
    """bench/projector.py's mesh generator (loaded by path: ``projector`` is also the package's name)."""
    spec = importlib.util.spec_from_file_location("bench_projector", ROOT / "bench" / "projector.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _split(whole: float, scoped: float, shards: int) -> tuple[float, float]:
    """(shared, split) CPU-s from a whole render and one scoped to 1 of ``shards``: whole = shared + split,
    scoped = shared + split / shards (clamped at 0: the host's noise can exceed a small part)."""
    split = max(0.0, (whole - scoped) * shards / (shards - 1))
    return max(0.0, whole - split), split


def one_size(nodes: int, flips: int) -> dict:
    from events import topics
    from events.envelope import Logged
    from projector.fold import fold_many
    from projector.publisher import PublishedViews, membership_value, plan_changes
    from projector.render import render_all
    from projector.sharding import Ownership
    from projector.state import empty_state

    bp = _bench_projector()
    services, instances = max(1, nodes // 5), 5
    start_rss = rss_mb()
    regs = [Logged(bp.envelope(p, i), topics.REGISTRATIONS, 0, i, 1_000_000 + i)
            for i, p in enumerate(bp.registrations(services, instances, "m"))]
    window = HostWindow()
    c0, w0 = time.process_time(), time.monotonic()
    state, _ = fold_many(empty_state(), regs)
    c1, w1 = time.process_time(), time.monotonic()
    rendered = render_all(state, endpoint_versions=False)  # as the projector renders: endpoints at the latest
    c2, w2 = time.process_time(), time.monotonic()
    peak_rss = rss_mb()
    resource_bytes = sum(len(body) for body in rendered.resources.values())
    membership_bytes = sum(len(membership_value(node, names, rendered.owners.get(node)))
                           for node, names in rendered.membership.items())
    held = [sum(len(names) for names in m.values()) for m in rendered.membership.values()]
    hs = [Logged(bp.envelope(p, i), topics.HEALTH, 0, i, 2_000_000 + i)
          for i, p in enumerate(bp.flaps(services, instances, "m", flips, 1))]
    # as the projector does after every batch (``projector.service``, ``_manage_gc``): what is alive is frozen,
    # so no collection walks the whole mesh's state inside the batch; without it, whether a full collection
    # (about 1 s at 100,000 nodes) lands in this window decided the figure, not the render
    # what the projector would publish for the batch (below): its memberships are records whose content moved (a
    # node holding changed endpoints names them at the latest: not one of them), its bodies the changed ones
    published = PublishedViews(dict(rendered.versions), {n: dict(m) for n, m in rendered.membership.items()},
                               dict(rendered.owners))
    node_count, resource_count = len(rendered.membership), len(rendered.resources)
    gc.freeze()
    c3, w3 = time.process_time(), time.monotonic()
    state2, _ = fold_many(state, hs)
    # as the projector renders a batch: it gives its previous render up (``consume_previous``: no copy of the
    # mesh's maps), so ``rendered`` is not read after this
    again = render_all(state2, previous=rendered, consume_previous=True)
    c4, w4 = time.process_time(), time.monotonic()
    flip_plan = plan_changes(again, published)
    # the nodes whose view changed: those holding a changed resource (their records did not move: they name the
    # endpoints at the latest) or whose membership moved
    told = {node for node, m in again.membership.items()
            if any((u, n) in again.changed for u, names in m.items() for n in names)} | set(again.changed_nodes)
    one_shard = Ownership(frozenset({0}), 12)
    c5 = time.process_time()
    scoped = render_all(state, scope=one_shard, endpoint_versions=False)
    gc.freeze()
    c6 = time.process_time()
    state3, _ = fold_many(state, hs)
    render_all(state3, previous=scoped, scope=one_shard, consume_previous=True)
    c7 = time.process_time()
    cold = _split(c2 - c1, c6 - c5, 12)
    batch = _split(c4 - c3, c7 - c6, 12)
    return {
        "nodes": node_count, "services": services, "resources": resource_count,
        "fold_cpu_s": round(c1 - c0, 2), "fold_wall_s": round(w1 - w0, 2),
        "render_all_cpu_s": round(c2 - c1, 2), "render_all_wall_s": round(w2 - w1, 2),
        "peak_rss_mb": round(peak_rss), "rss_growth_mb": round(peak_rss - start_rss),
        "resource_bytes": resource_bytes, "membership_bytes": membership_bytes,
        "view_bytes_per_node": round((resource_bytes + membership_bytes) / max(1, node_count)),
        "resources_held_per_node": round(sum(held) / max(1, len(held)), 1),
        "flips": flips, "flip_batch_cpu_s": round(c4 - c3, 2), "flip_batch_wall_s": round(w4 - w3, 2),
        "flip_events_per_cpu_s": round(flips / max(1e-9, c4 - c3)),
        "flip_changed_nodes": len(told), "flip_changed_resources": len(again.changed),
        "flip_membership_records": len(flip_plan.membership), "flip_body_records": len(flip_plan.bodies),
        "scoped_render_all_cpu_s": round(c6 - c5, 2), "scoped_flip_batch_cpu_s": round(c7 - c6, 2),
        "render_shared_ms_per_node": round(cold[0] * 1000 / nodes, 3),
        "render_split_ms_per_node": round(cold[1] * 1000 / nodes, 3),
        "flip_shared_ms_per_event": round(batch[0] * 1000 / flips, 3),
        "flip_split_ms_per_event": round(batch[1] * 1000 / flips, 3),
        "loadavg_1m": round(os.getloadavg()[0], 1),
        "steal": window.steal_share(),  # of the machine's CPU time, over the run (bench/host_window.py)
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--flips", type=int, default=1_000, help="health transitions in the incremental batch")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)  # internal: measure one size in this process
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one_size(args.one, args.flips)))
        return 0
    results = []
    for n in args.nodes:
        done = subprocess.run([sys.executable, __file__, "--one", str(n), "--flips", str(args.flips)],
                              capture_output=True, text=True, check=True)
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    for r in results:
        print(f"{r['nodes']:,} nodes ({r['services']:,} services, {r['resources']:,} resources): fold "
              f"{r['fold_cpu_s']} CPU-s, render_all {r['render_all_cpu_s']} CPU-s ({r['render_all_wall_s']} s wall); "
              f"peak RSS {r['peak_rss_mb']:,} MB (+{r['rss_growth_mb']:,}); views {r['resource_bytes'] / 1e6:.1f} MB "
              f"bodies + {r['membership_bytes'] / 1e6:.1f} MB memberships = {r['view_bytes_per_node']:,} B per node "
              f"({r['resources_held_per_node']} resources held each); {r['flips']:,} health flips folded+rendered "
              f"in {r['flip_batch_cpu_s']} CPU-s = {r['flip_events_per_cpu_s']:,} events/CPU-s, "
              f"{r['flip_changed_nodes']:,} nodes changed, published as {r['flip_body_records']:,} bodies and "
              f"{r['flip_membership_records']:,} memberships; load avg {r['loadavg_1m']}, {steal_text(r['steal'])}")
        print(f"  scoped to 1 shard of 12 (a worker of projector run --group): render_all "
              f"{r['scoped_render_all_cpu_s']} CPU-s, the flips {r['scoped_flip_batch_cpu_s']} CPU-s; so every worker "
              f"spends {r['render_shared_ms_per_node']} ms per node of the mesh on a cold render and "
              f"{r['flip_shared_ms_per_event']} ms per event (fold + shared resources + indexes), and the workers "
              f"divide {r['render_split_ms_per_node']} ms per node and {r['flip_split_ms_per_event']} ms per event")
    return 0


if __name__ == "__main__":
    sys.exit(main())
