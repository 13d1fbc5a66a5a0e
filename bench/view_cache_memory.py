"""What the gateway's view cache holds after endpoint changes (issue 14 goal 4, the gateway's memory).

Builds a ``xds_gateway.view_cache.ViewCache`` as the gateway fills it from the
view topics: ``--names`` ClusterLoadAssignment bodies of about ``--body-bytes``
each (shared, as the projector publishes endpoints), ``--nodes`` memberships
naming ``--per-node`` of them at ``LATEST`` (as the projector names endpoints),
then applies ``--changes`` rounds in which every body changes once (a health
flip each). Prints the Python heap the cache holds (tracemalloc, traced from
before the cache is built) after the load and after each round, and how many
bodies before it keeps. No broker: the records are the view topics' shape,
applied in process.

Usage: python bench/view_cache_memory.py [--names 10000] [--body-bytes 300] [--nodes 10000] [--per-node 5]
       [--changes 3]
"""

from __future__ import annotations

import argparse
import gc
import random
import sys
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--names", type=int, default=10_000, help="endpoint names (default 10000)")
    ap.add_argument("--body-bytes", type=int, default=300, help="bytes of each endpoint body (default 300)")
    ap.add_argument("--nodes", type=int, default=10_000, help="memberships (default 10000)")
    ap.add_argument("--per-node", type=int, default=5, help="endpoint names each membership holds (default 5)")
    ap.add_argument("--changes", type=int, default=3, help="rounds of one change of every body (default 3)")
    args = ap.parse_args()
    for name in ("names", "body_bytes", "nodes", "per_node", "changes"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')}: at least 1")

    import orjson

    from events import topics
    from projector.publisher import LATEST
    from tests.unit.xds_gateway.helpers import ViewRec as Rec
    from xds_gateway.protocol.resources import ENDPOINT
    from xds_gateway.view_cache import ViewCache

    def body(i: int, gen: int) -> Rec:
        text = f"endpoints of svc-{i}, generation {gen} "
        return Rec(topics.VIEW_RESOURCES, f"{ENDPOINT}|svc-{i}".encode(),
                   (text + "x" * max(0, args.body_bytes - len(text))).encode())

    def held_mb() -> float:
        gc.collect()
        return tracemalloc.get_traced_memory()[0] / 1e6

    rnd = random.Random(1)
    tracemalloc.start()
    cache = ViewCache()
    cache.ready.set()
    cache.apply_records([body(i, 0) for i in range(args.names)])
    cache.apply_records([
        Rec(topics.VIEW_MEMBERSHIP, f"n{k}".encode(), orjson.dumps({"node": f"n{k}", "resources": {
            ENDPOINT: {f"svc-{rnd.randrange(args.names)}": LATEST for _ in range(args.per_node)}}}))
        for k in range(args.nodes)])
    print(f"{args.names:,} endpoint bodies of {args.body_bytes} B, {args.nodes:,} memberships naming "
          f"{args.per_node} each at LATEST: {held_mb():.2f} MB held", flush=True)
    for gen in range(1, args.changes + 1):
        cache.apply_records([body(i, gen) for i in range(args.names)])
        print(f"after change round {gen} (every body once): {held_mb():.2f} MB held, "
              f"{len(cache._previous):,} bodies before kept", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
