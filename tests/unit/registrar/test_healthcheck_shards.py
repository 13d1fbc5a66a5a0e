"""Shard hashing is stable and spreads; the probe schedule stays within its jitter bounds."""

import collections
import random
import subprocess
import sys
import zlib

from registrar.healthcheck.shards import initial_delay, next_delay, owned, shard_of


def test_shard_of_is_crc32_of_the_key_modulo_partitions():
    key = "reviews/reviews-v1-b"
    assert shard_of(key, 12) == zlib.crc32(key.encode()) % 12
    assert shard_of(key, 1) == 0


def test_shard_of_is_stable_across_processes():
    # Python's hash() is salted per process; crc32 is not
    keys = [f"svc{i}/inst-{i}" for i in range(50)]
    code = (
        "import sys; from registrar.healthcheck.shards import shard_of; "
        f"print([shard_of(k, 12) for k in {keys!r}])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONHASHSEED": "123", "PATH": ""}, cwd=".").stdout
    assert out.strip() == str([shard_of(k, 12) for k in keys])


def test_shards_spread_evenly():
    counts = collections.Counter(shard_of(f"service-{i % 37}/instance-{i}", 12) for i in range(12_000))
    assert set(counts) == set(range(12))
    assert min(counts.values()) > 800 and max(counts.values()) < 1200  # 1,000 each expected


def test_owned_partitions_the_keys():
    keys = [f"s/{i}" for i in range(500)]
    a = owned(keys, range(0, 6), 12)
    b = owned(keys, range(6, 12), 12)
    assert a.isdisjoint(b) and a | b == set(keys)


def test_jittered_delays_stay_within_bounds_and_vary():
    rng = random.Random(7)
    delays = [next_delay(2.0, 0.2, rng) for _ in range(5_000)]
    assert min(delays) >= 1.6 and max(delays) <= 2.4
    assert max(delays) - min(delays) > 0.7  # really spread, not constant
    assert next_delay(2.0, 0.0, rng) == 2.0
    starts = [initial_delay(2.0, rng) for _ in range(5_000)]
    assert min(starts) >= 0 and max(starts) < 2.0 and max(starts) - min(starts) > 1.8
