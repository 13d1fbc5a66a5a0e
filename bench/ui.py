"""The incident console over a long log: index build, /api/timeline, /api/mesh, and page load in Chromium.

Builds the same log as ``bench/replay.py`` (its ``History``, appender and
snapshot record: a mesh of services x instances, then a seeded mix of
health flaps, re-registrations, deregistrations and rules), starts the real
``replay ui`` CLI on it and measures, over HTTP:

1. index: from ``replay ui`` ready to the first ``/api/info`` answer (one scan
   of the whole log, decoded, into the timeline index);
2. ``/api/timeline`` over the whole log (300 buckets), over one minute, over
   one second (median of 5, wall, client side);
3. ``/api/mesh`` at the end of the log (from the snapshot), cold and cached;
4. page load: headless Chromium (Debian's ``chromium``) opening the console at
   a cursor not asked before, until every panel has its answer.

Usage: python bench/ui.py [--events 1000000] [--services 500] [--instances 4]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import importlib.util  # noqa: E402

# bench/replay.py's log builder (loaded by path: the name ``replay`` is the package)
_spec = importlib.util.spec_from_file_location("bench_replay", Path(__file__).resolve().parent / "replay.py")
bench_replay = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench_replay)
History, append, broker, write_snapshot = (bench_replay.History, bench_replay.append, bench_replay.broker,
                                           bench_replay.write_snapshot)

from tests.support.browser import Chromium, find_chromium  # noqa: E402

BIN = Path(sys.executable).parent


def get(base: str, path: str, **params) -> tuple[float, dict]:
    t0 = time.perf_counter()
    with urllib.request.urlopen(f"{base}{path}?{urllib.parse.urlencode(params)}", timeout=600) as res:
        doc = json.loads(res.read())
    return time.perf_counter() - t0, doc


def median_of(base: str, path: str, n: int = 5, **params) -> tuple[float, dict]:
    times, doc = [], {}
    for _ in range(n):
        secs, doc = get(base, path, **params)
        times.append(secs)
    return statistics.median(times), doc


async def page_load(base: str, query: dict) -> float:
    exe = find_chromium()
    if exe is None:
        return float("nan")
    async with Chromium(exe) as browser:
        page = await browser.page()
        t0 = time.perf_counter()
        await page.open(f"{base}/?{urllib.parse.urlencode(query)}", timeout=1800)
        await page.wait_for("!!document.querySelector('#services') && !!document.querySelector('#timeline svg')", 600)
        return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--services", type=int, default=500)
    ap.add_argument("--instances", type=int, default=4)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    from events.admin import ensure_topics

    run = uuid.uuid4().hex[:6]
    with broker() as bootstrap:
        asyncio.run(ensure_topics(bootstrap))
        print(f"broker {bootstrap}; appending {args.events:,} events", flush=True)
        history = History(args.services, args.instances, f"b{run}", args.seed)
        secs, n = asyncio.run(append(bootstrap, history, args.events, run))
        print(f"append: {n:,} events in {secs:.1f}s", flush=True)
        time.sleep(0.05)
        end_ms = int(time.time() * 1000)
        asyncio.run(write_snapshot(bootstrap, end_ms))
        ready = Path(tempfile.mkdtemp()) / "ready.json"
        proc = subprocess.Popen([str(BIN / "replay"), "ui", "--bootstrap", bootstrap, "--ready-file", str(ready)],
                                stdout=subprocess.DEVNULL)
        try:
            while not (ready.exists() and ready.read_text().strip()):
                time.sleep(0.05)
            base = json.loads(ready.read_text())["url"].rstrip("/")
            index_s, info = get(base, "/api/info")
            first, last = info["first_ms"], info["last_ms"]
            print(f"log: {info['events']:,} events over {(last - first) / 1000:.1f}s; machine load average "
                  f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs", flush=True)
            print(f"index build (one scan of the log, from ready to the first answer): {index_s:.1f}s", flush=True)
            whole_s, whole = median_of(base, "/api/timeline", **{"from": f"@{first}", "to": f"@{last}", "buckets": 300})
            print(f"/api/timeline whole log, 300 buckets: {whole_s * 1000:.0f} ms wall (server-side "
                  f"{whole['compute_ms']} ms; {len(whole['by_kind'])} kind rows, {len(whole['by_service'])} service rows)",
                  flush=True)
            minute_s, _ = median_of(base, "/api/timeline", **{"from": f"@{last - 60_000}", "to": f"@{last}", "buckets": 300})
            second_s, sec = median_of(base, "/api/timeline", **{"from": f"@{last - 1000}", "to": f"@{last}", "buckets": 300})
            print(f"/api/timeline last minute: {minute_s * 1000:.0f} ms; last second: {second_s * 1000:.0f} ms "
                  f"({sec['total']} events, {'each drawn' if sec['points'] is not None else 'bucketed'})", flush=True)
            mesh_cold_s, mesh = get(base, "/api/mesh", at=f"@{end_ms}")
            mesh_warm_s, _ = get(base, "/api/mesh", at=f"@{end_ms}")
            print(f"/api/mesh at the end ({len(mesh['nodes']):,} nodes; snapshot + tail, then render_all): "
                  f"cold {mesh_cold_s:.2f}s, cached {mesh_warm_s * 1000:.0f} ms", flush=True)
            view = {"from": f"@{first}", "to": f"@{last}"}
            warm = asyncio.run(page_load(base, {**view, "at": f"@{end_ms}"}))
            print(f"page load in Chromium, whole-log window, cursor already asked: {warm:.2f}s", flush=True)
            cold = asyncio.run(page_load(base, {**view, "at": f"@{end_ms - 1}"}))
            print(f"page load in Chromium, whole-log window, a new cursor (rebuild + render first): {cold:.2f}s",
                  flush=True)
        finally:
            proc.terminate()
            proc.wait()


if __name__ == "__main__":
    main()
