"""The gateway process's garbage-collector policy, shared by ``xds-gateway run`` and the benches that measure it.

Invariant: what exists once the view is loaded (and every ``period_s`` after)
is frozen out of the cyclic collector's sight, and young-generation
collections run after 50,000 net allocations rather than CPython's 700, so
opening thousands of streams does not rescan the whole heap again and again;
short-lived garbage is still collected.
"""

from __future__ import annotations

import asyncio
import gc

__all__ = ["keep_long_lived_objects_out_of_gc"]


async def keep_long_lived_objects_out_of_gc(period_s: float = 30.0) -> None:
    """The view and the streams' protocol state live for hours; with 10k streams a full
    collection scanning them stalled every stream for over a second (bench/xds_fanout).
    Freezing moves what exists now out of the collector's sight; short-lived garbage is
    still collected as usual."""
    gc.set_threshold(50_000, 50, 100)
    while True:
        gc.freeze()
        await asyncio.sleep(period_s)
