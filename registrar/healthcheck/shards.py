"""Which checker probes which instance, and when (pure).

Invariants:
- An instance's shard is ``crc32("<service>/<instance_id>") % partitions``:
  stable across processes, hosts and Python versions (never ``hash()``, which
  is salted per process), so every checker computes the same owner from the
  same group assignment.
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
import zlib
from typing import Iterable


def shard_of(key: str, partitions: int) -> int:
    if partitions < 1:
        raise ValueError("partitions must be at least 1")
    return zlib.crc32(key.encode("utf-8")) % partitions


def owned(keys: Iterable[str], shards: Iterable[int], partitions: int) -> set[str]:
    mine = set(shards)
    return {k for k in keys if shard_of(k, partitions) in mine}


def next_delay(interval: float, jitter: float, rng: random.Random) -> float:
    return interval * (1.0 + rng.uniform(-jitter, jitter))


def initial_delay(interval: float, rng: random.Random) -> float:
    return rng.uniform(0.0, interval)
