"""Which checker probes which instance, and when (pure).

Invariants:
- An instance's shard is ``events.shard_group.shard_of("<service>/<instance_id>",
  partitions)`` (crc32: stable across processes, hosts and Python versions), so
  every checker computes the same owner from the same group assignment.
- Shards are the partitions of the (record-less) shard topic; the consumer
  group hands each partition to exactly one live member, so each instance is
  probed by exactly one checker (during a rebalance, briefly by none).
- A probe delay is ``interval * (1 + u)`` with ``u`` uniform in
  ``[-jitter, +jitter]``; the first probe waits a uniform ``[0, interval)``
  so that the probes of many instances spread out instead of arriving in
  bursts.
"""

from __future__ import annotations

import random

from events.shard_group import owned, shard_of

__all__ = ["initial_delay", "next_delay", "owned", "shard_of"]


def next_delay(interval: float, jitter: float, rng: random.Random) -> float:
    return interval * (1.0 + rng.uniform(-jitter, jitter))


def initial_delay(interval: float, rng: random.Random) -> float:
    return rng.uniform(0.0, interval)
