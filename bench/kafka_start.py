#!/usr/bin/env python3
"""Measure the local Kafka launcher: cold start (jar fetch + start) and warm start (cached jars).

    python bench/kafka_start.py [--runs 3] [--no-network] [--json]

* cold, ~/.m2 as is: a fresh, empty jar cache; mvn copies from ~/.m2 and downloads
  only what ~/.m2 lacks (the byte count of what it added to ~/.m2 is reported).
* cold, empty ~/.m2: also a fresh Maven local repository (-Dmaven.repo.local), so
  every artifact and Maven plugin is downloaded from Maven Central (skip: --no-network).
* warm: the jars are cached; no mvn call. Each run formats a fresh data dir.

"ready" means an aiokafka admin describe_cluster succeeded.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from meshlog import kafka_local as kl  # noqa: E402


def _tree_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


def _start_stop(cache_dir: Path) -> tuple[float, float]:
    kafka = kl.LocalKafka(cache_dir=cache_dir)
    t0 = time.monotonic()
    kafka.start()
    started = time.monotonic() - t0
    t1 = time.monotonic()
    kafka.stop()
    return started, time.monotonic() - t1


def cold(repo_local: Path | None) -> dict:
    with tempfile.TemporaryDirectory(prefix="meshlog-bench-cache-") as tmp:
        cache = Path(tmp)
        m2 = repo_local or Path.home() / ".m2" / "repository"
        before = _tree_bytes(m2)
        t0 = time.monotonic()
        kl.ensure_kafka_jars(cache_dir=cache, maven_repo_local=repo_local)
        fetch = time.monotonic() - t0
        downloaded = _tree_bytes(m2) - before
        libs = kl.kafka_libs_dir(cache_dir=cache)
        start, stop = _start_stop(cache)
        return {
            "fetch_s": round(fetch, 2),
            "start_s": round(start, 2),
            "total_s": round(fetch + start, 2),
            "stop_s": round(stop, 2),
            "maven_downloaded_bytes": downloaded,
            "jars": len(list(libs.glob("*.jar"))),
            "jar_bytes": _tree_bytes(libs),
        }


def warm(runs: int) -> dict:
    kl.ensure_kafka_jars()  # make sure the real cache is filled; not timed
    starts, stops = [], []
    for _ in range(runs):
        s, t = _start_stop(kl.cache_root())
        starts.append(round(s, 2))
        stops.append(round(t, 2))
    return {"start_s": starts, "median_start_s": statistics.median(starts), "stop_s": stops}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3, help="warm start runs (default 3)")
    ap.add_argument("--no-network", action="store_true", help="skip the empty-~/.m2 cold run")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args()

    out: dict = {"kafka": kl.KAFKA_VERSION, "cpus": os.cpu_count(), "jvm_opts": " ".join(kl.jvm_opts_from_env())}
    out["cold_m2_as_is"] = cold(None)
    if not args.no_network:
        repo = Path(tempfile.mkdtemp(prefix="meshlog-bench-m2-"))
        try:
            out["cold_empty_m2"] = cold(repo)
        finally:
            shutil.rmtree(repo, ignore_errors=True)
    out["warm"] = warm(args.runs)

    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    print(f"Kafka {out['kafka']} on {out['cpus']} CPUs, JVM opts: {out['jvm_opts']}")
    for key, label in (("cold_m2_as_is", "cold (empty jar cache, ~/.m2 as is)"),
                       ("cold_empty_m2", "cold (empty jar cache, empty Maven repo)")):
        if key in out:
            c = out[key]
            print(f"{label:42s} total {c['total_s']:6.2f}s = fetch {c['fetch_s']:.2f}s + start {c['start_s']:.2f}s;"
                  f" mvn downloaded {c['maven_downloaded_bytes'] / 1e6:.1f} MB;"
                  f" {c['jars']} jars, {c['jar_bytes'] / 1e6:.1f} MB; stop {c['stop_s']:.2f}s")
    w = out["warm"]
    print(f"{'warm (cached jars)':42s} median {w['median_start_s']:.2f}s; runs {w['start_s']}; stop {w['stop_s']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
