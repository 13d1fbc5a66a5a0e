"""What the proxies accepted, for replay's documents: the sync log read past a window, each step's convergence.

Pure but for ``sync_records_for`` (one read of ``meshlog.sync``); shared by `replay diff`, `replay log`
and the console (``replay ui``), so they say the same thing. The matching itself is ``proxysync``'s.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Sequence

from proxysync.convergence import acceptance, convergences
from proxysync.read import read_sync_records
from replay import report
from replay.timeparse import to_ms

SYNC_GRACE_MS = 60_000  # `replay log` and `replay diff` read ACKs this long past the window for convergence


async def sync_records_for(consumer, to_ms_: int) -> list:
    """meshlog.sync read past the window's end, so late ACKs of its last events still count."""
    until = min(to_ms_ + SYNC_GRACE_MS, to_ms(datetime.now(timezone.utc)))
    return (await read_sync_records(consumer, until))[0]


def nodes_with_proxies(sync_records: list) -> frozenset[str]:
    """Every node a sync record names: only these can count for a convergence (a node no proxy ever
    streamed for cannot converge), so a walk may keep the views it was told for these alone."""
    return frozenset(node for lg in sync_records if isinstance(node := getattr(lg.payload, "node", None), str))


def step_convergences(steps: Sequence, sync_records: list) -> dict:
    """Each view-changing step's convergence, keyed by the source of its last event.

    A step changed views when it changed nodes (``changed_nodes`` and ``views`` name the same nodes, but a
    walk may have kept ``views`` only for ``nodes_with_proxies``)."""
    changes = [((lg.topic, lg.partition, lg.offset), lg.timestamp_ms, step.effect.views)
               for step in steps if step.effect.changed_nodes and step.events for lg in step.events[-1:]]
    return convergences(changes, sync_records)


def diff_sync_docs(steps: Sequence, sync_records: list, node: str | None) -> dict:
    """``replay diff``'s sync part (pure): each step's convergence (whole mesh), or when ``node`` accepted it."""
    converged = step_convergences(steps, sync_records)
    if node is None:
        return {"convergence": {key: c.as_dict() for key, c in converged.items()}, "accepted": {}}
    return {"convergence": {},
            "accepted": {key: report.acceptance_doc(acceptance(converged, key, node)) for key in converged}}
