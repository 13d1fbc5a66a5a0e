"""`meshlog ca serve`: certificates issued per second (joins with a token; renewals over mTLS).

Starts a broker (kafka_for_tests: $MESHLOG_KAFKA_BOOTSTRAP, a container, or a
local JVM), a CA (`meshlog ca init`) and `--replicas` `meshlog ca serve`
processes, then sends `--count` joins (each with its own join token and a
pre-made CSR, so client-side key generation is not charged to the server),
`--concurrency` at a time spread over the replicas, and then renews
`--renewals` of the certificates over mTLS. Each join costs the CA two acked
appends (the token's redemption, then the issuance) and a read of the log up to
its claim; a renewal costs a read to the end of the log and one append.

Prints certificates/s (wall), latency p50/p99, and certificates per CPU-second
of the serve processes (user+system from /proc).

Usage: python bench/ca.py [--count 500] [--concurrency 16] [--replicas 1] [--renewals 200]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import aiohttp
from cryptography.hazmat.primitives import serialization

from events.admin import ensure_topics
from identity import client, pki, tokens

MESHLOG = str(Path(sys.executable).with_name("meshlog"))


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_replica(bootstrap: str, ca_dir: Path, name: str, work: Path) -> tuple[subprocess.Popen, str]:
    ready = work / f"{name}.port"
    proc = subprocess.Popen([MESHLOG, "ca", "serve", "--dir", str(ca_dir), "--bootstrap", bootstrap, "--port", "0",
                             "--replica", name, "--ready-file", str(ready), "--log-level", "WARNING"])
    deadline = time.monotonic() + 60
    while not ready.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"ca serve {name} did not start")
        time.sleep(0.1)
    return proc, f"https://127.0.0.1:{int(ready.read_text())}"


async def run_joins(urls: list[str], ca: pki.CertificateAuthority, count: int, concurrency: int):
    now = datetime.now(timezone.utc)
    work = [(tokens.mint(ca, "bench", now=now), pki.generate_key()) for _ in range(count)]
    csrs = [pki.make_csr(key).public_bytes(serialization.Encoding.PEM).decode() for _t, key in work]
    ctx = client.client_ssl_context(ca.certificate)
    latencies: list[float] = []
    granted: list[tuple[str, pki.x509.Certificate]] = []
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(count):
        queue.put_nowait(i)

    async def worker(session: aiohttp.ClientSession) -> None:
        while not queue.empty():
            i = queue.get_nowait()
            url = urls[i % len(urls)]
            t0 = time.perf_counter()
            async with session.post(url + "/v1/join", ssl=ctx, json={
                    "token": work[i][0], "csr": csrs[i], "service": "bench", "instance": f"b{i}"}) as resp:
                body = await resp.json()
                if resp.status != 200:
                    raise SystemExit(f"join {i} refused: {body}")
            latencies.append((time.perf_counter() - t0) * 1000)
            granted.append((pki.cert_from_pem(body["certificate"]), work[i][1]))

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    return wall, latencies, granted


async def run_renewals(urls: list[str], root, granted, concurrency: int, tmp: Path):
    dirs = []
    for i, (cert, key) in enumerate(granted):
        dirs.append(pki.save_identity(tmp / f"id{i}", cert, key, root))
    latencies: list[float] = []
    sem = asyncio.Semaphore(concurrency)

    async def one(i: int, files) -> None:
        async with sem:
            t0 = time.perf_counter()
            await client.renew(urls[i % len(urls)], files)
            latencies.append((time.perf_counter() - t0) * 1000)

    t0 = time.perf_counter()
    await asyncio.gather(*(one(i, f) for i, f in enumerate(dirs)))
    return time.perf_counter() - t0, latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--replicas", type=int, default=1)
    parser.add_argument("--renewals", type=int, default=200)
    args = parser.parse_args()
    from meshlog.kafka_local import kafka_for_tests

    with kafka_for_tests() as bootstrap, tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        asyncio.run(ensure_topics(bootstrap))
        subprocess.run([MESHLOG, "ca", "init", "--domain", "bench.mesh", "--dir", str(tmp / "ca")], check=True,
                       capture_output=True)
        ca = pki.load_ca(tmp / "ca")
        procs = [start_replica(bootstrap, tmp / "ca", f"ca-{i}", tmp) for i in range(args.replicas)]
        urls = [u for _p, u in procs]
        try:
            cpu0 = sum(cpu_seconds(p.pid) for p, _u in procs)
            wall, lat, granted = asyncio.run(run_joins(urls, ca, args.count, args.concurrency))
            cpu1 = sum(cpu_seconds(p.pid) for p, _u in procs)
            print(f"ca serve joins: {args.count} certificates in {wall:.2f} s = {args.count / wall:.0f} certs/s "
                  f"({args.replicas} replica(s), concurrency {args.concurrency}); latency p50 {pct(lat, 50):.1f} ms "
                  f"p99 {pct(lat, 99):.1f} ms; {args.count / max(cpu1 - cpu0, 1e-9):.0f} certs per serve CPU-second "
                  f"({cpu1 - cpu0:.2f} CPU-s)")
            n = min(args.renewals, len(granted))
            if n:
                wall, lat = asyncio.run(run_renewals(urls, ca.certificate, granted[:n], args.concurrency, tmp))
                cpu2 = sum(cpu_seconds(p.pid) for p, _u in procs)
                print(f"ca serve renewals (mTLS, new client session each): {n} in {wall:.2f} s = {n / wall:.0f} "
                      f"certs/s; latency p50 {pct(lat, 50):.1f} ms p99 {pct(lat, 99):.1f} ms; "
                      f"{n / max(cpu2 - cpu1, 1e-9):.0f} certs per serve CPU-second")
        finally:
            for p, _u in procs:
                p.terminate()
                p.wait(10)


if __name__ == "__main__":
    main()
