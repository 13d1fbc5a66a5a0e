"""The go-control-plane peer in ``bench/xds_fanout.py`` (``--peer go`` / ``--peer both``).

``GoPeer`` stands where ``Gateways`` stands in the fan-out bench and answers the same
commands (load, apply, churn, counters, gc, stop) with the same reply shapes, so the
bench's phases, clients and measurement points are the ones it uses for the meshlog
gateway: a change's latency is the client's receive time minus the time the server took
just before handing the change to its cache (here: just before
``LinearCache.UpdateResources``, taken in the Go process).

Invariants:
- The peer gets the same view records as the meshlog gateway, decoded here into what a
  Go control plane would keep (``peer_feed``): every resource body, and per node the
  names its membership gives for the types other than endpoints (the per-node snapshot).
  Endpoints are not per node: the LinearCache holds them all and each stream subscribes
  to the names its clusters name, as with meshlog.
- A change carries only what moved: changed bodies (endpoints go to the LinearCache),
  and the nodes whose snapshot types changed (their new names), so applying it in Go is
  the cache update alone.
- The binary is built from ``bench/go_peer`` with ``go build`` into the meshlog cache
  directory, keyed by the hash of its sources and the Go version; modules come from the
  Go module proxy on the first build. Go missing is a clear error, not a skip.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import orjson

from events.topics import VIEW_MEMBERSHIP, VIEW_RESOURCES
from projector.typeurls import ENDPOINT as EDS

SOURCE = Path(__file__).resolve().parent / "go_peer"


class GoMissing(RuntimeError):
    """No Go toolchain to build the peer with."""


# ---------------------------------------------------------------- building


def go_tool() -> str:
    """The ``go`` command: on PATH, else the default install location."""
    found = shutil.which("go") or ("/usr/local/go/bin/go" if os.access("/usr/local/go/bin/go", os.X_OK) else None)
    if found is None:
        raise GoMissing("the Go peer needs Go on PATH (go build fetches go-control-plane from the Go module proxy "
                        "on the first build)")
    return found


def build_peer(cache_dir: Path | None = None) -> Path:
    """The peer's binary, built once per source and Go version."""
    from meshlog.kafka_local import cache_root

    go = go_tool()
    version = subprocess.run([go, "version"], capture_output=True, text=True, check=True).stdout.strip()
    digest = hashlib.sha256(version.encode())
    for path in sorted(SOURCE.iterdir()):
        if path.suffix == ".go" or path.name in ("go.mod", "go.sum"):
            digest.update(path.name.encode() + b"\0" + path.read_bytes())
    out = Path(cache_dir or cache_root()) / "go_peer" / digest.hexdigest()[:16] / "go_peer"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    print(f"building the Go peer with {version} into {out} ...", flush=True)
    tmp = out.with_name(f"go_peer.{os.getpid()}.tmp")
    built = subprocess.run([go, "build", "-trimpath", "-o", str(tmp), "."], cwd=SOURCE, capture_output=True,
                           text=True)
    if built.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise RuntimeError(f"go build of {SOURCE} failed:\n{built.stderr[-4000:]}")
    os.replace(tmp, out)
    return out


# ---------------------------------------------------------------- the feed


def _b64(value: bytes) -> str:
    return base64.b64encode(value).decode()


class FeedBuilder:
    """Folds view records (topic, key, value) into what the Go peer keeps, and the changes into deltas of it."""

    def __init__(self) -> None:
        self.bodies: dict[tuple[str, str], bytes] = {}
        self.names: dict[str, dict[str, list[str]]] = {}  # node -> type -> names, endpoints left out
        self.eds_names: dict[str, set[str]] = {}  # node -> the endpoint names its membership gives
        self.referenced_by: dict[tuple[str, str], set[str]] = {}

    def _index(self, node: str, names: dict[str, list[str]] | None, sign: int) -> None:
        for type_url, ns in (names or {}).items():
            for name in ns:
                refs = self.referenced_by.setdefault((type_url, name), set())
                (refs.add if sign > 0 else refs.discard)(node)

    def batch(self, records) -> dict:
        """Apply one batch of records; return the change as the peer applies it."""
        bodies: list[dict] = []
        nodes: dict[str, dict | None] = {}
        eds_changed: set[str] = set()
        for topic, key, value, *_headers in records:
            if topic == VIEW_RESOURCES:
                type_url, _, name = key.decode().partition("|")
                ident = (type_url, name)
                if value is None:
                    if self.bodies.pop(ident, None) is None:
                        continue
                    bodies.append({"type": type_url, "name": name, "deleted": True})
                elif self.bodies.get(ident) != value:
                    self.bodies[ident] = value
                    bodies.append({"type": type_url, "name": name, "body": _b64(value)})
                else:
                    continue
                if type_url == EDS:
                    eds_changed.add(name)
                else:  # a snapshot type: every node naming it gets a new snapshot
                    for node in self.referenced_by.get(ident, ()):
                        nodes[node] = self.names[node]
            elif topic == VIEW_MEMBERSHIP:
                node = key.decode()
                old = self.names.get(node)
                if value is None:
                    new = None
                    self.eds_names.pop(node, None)
                else:
                    doc = orjson.loads(value)["resources"]
                    new = {t: sorted(ns) for t, ns in doc.items() if t != EDS}
                    self.eds_names[node] = set(doc.get(EDS, ()))
                if new != old:
                    self._index(node, old, -1)
                    self._index(node, new, +1)
                    if new is None:
                        del self.names[node]
                    else:
                        self.names[node] = new
                    nodes[node] = new
        # the nodes whose view the change touches, as the gateway counts them (for the report only)
        notified = set(nodes) | {n for n, names in self.eds_names.items() if names & eds_changed}
        return {"bodies": bodies, "nodes": nodes, "notified": len(notified)}


def peer_feed(initial, hot_rows, churn_rows) -> dict:
    """The feed file's content: the initial view, then each hot change and churn batch as a delta."""
    fb = FeedBuilder()
    fb.batch(initial)
    start = {"bodies": [{"type": t, "name": n, "body": _b64(v)} for (t, n), v in fb.bodies.items()],
             "nodes": dict(fb.names)}
    return {**start, "hot": [fb.batch(rows) for rows in hot_rows], "churn": [fb.batch(rows) for rows in churn_rows]}


# ---------------------------------------------------------------- the process


class GoPeer:
    """The Go peer process, driven like ``xds_fanout.Gateways`` (one process, its commands over stdin)."""

    def __init__(self, hot_name: str, binary: Path | None = None) -> None:
        self.hot_name = hot_name
        self.binary = binary or build_peer()
        self.procs: list = []  # nothing for the bench to join: stop() ends the process
        self.hot_versions: list[str] = []
        self._proc: subprocess.Popen | None = None
        self._lines: queue.Queue = queue.Queue()
        self._feed: Path | None = None

    def start(self) -> int:
        self._proc = subprocess.Popen([str(self.binary)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      text=True, bufsize=1)
        threading.Thread(target=self._read, daemon=True, name="go-peer-stdout").start()
        return self._call(None, 60)["port"]

    def _read(self) -> None:
        for line in self._proc.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def _call(self, cmd: dict | None, timeout: float) -> dict:
        if cmd is not None:
            self._proc.stdin.write(json.dumps(cmd) + "\n")
            self._proc.stdin.flush()
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"the Go peer did not answer {cmd} within {timeout:.0f}s") from None
        if line is None:
            raise RuntimeError(f"the Go peer exited (code {self._proc.wait()})")
        reply = json.loads(line)
        if "error" in reply:
            raise RuntimeError(f"the Go peer refused {cmd}: {reply['error'][:500]}")
        return reply

    @property
    def pids(self) -> list[int]:
        return [self._proc.pid]

    def ask(self, msg, timeout: float, expect: str):
        """The bench's command tuples, answered with the replies ``Gateways.ask`` gives."""
        cmd = msg[0]
        if cmd == "load":
            _, initial, hot_rows, churn_rows = msg
            fd, path = tempfile.mkstemp(prefix="go-peer-feed-", suffix=".json")
            with os.fdopen(fd, "wb") as fh:
                fh.write(orjson.dumps(peer_feed(initial, hot_rows, churn_rows)))
            self._feed = Path(path)
            r = self._call({"cmd": "load", "path": path}, timeout)
            self.hot_versions = [versions.get(self.hot_name) for versions in r["hot_versions"]]
            return ("loaded", r["loaded"], r["nodes"])
        if cmd == "apply":
            r = self._call({"cmd": "apply", "index": msg[1]}, timeout)
            return ("applied", r["t_applied"], r["apply_s"], r["changed"])
        if cmd == "churn":
            r = self._call({"cmd": "churn", "seconds": msg[1], "interval": msg[2]}, timeout)
            return ("churned", r["applied"], r["apply_s"], r["took"])
        if cmd == "counters":
            r = self._call({"cmd": "counters"}, timeout)
            return ("counters", {"responses": r["responses"], "bytes": r["bytes"], "view_changes": 0,
                                 "streams": r["streams"], "slow_closed": 0, "sync_records": {}, "sync_dropped": 0,
                                 "sync_coalesced": 0, "sync_bytes": 0})
        if cmd == "gc":
            r = self._call({"cmd": "gc"}, timeout)
            gen2 = {"count": r["count"], "cpu_s": round(r["cpu_s"], 3), "max_ms": round(r["max_ms"], 2),
                    "collected": 0}
            none = {"count": 0, "cpu_s": 0.0, "max_ms": 0.0, "collected": 0}
            # Go's collector is concurrent and has no generations: its cycles stand in gen2's place
            return ("gc", {"gen0": none, "gen1": none, "gen2": gen2, "go_heap_mb": round(r["heap_mb"], 1)}, 0)
        raise ValueError(f"the Go peer has no {cmd!r} (profiling is for the meshlog gateway)")

    def cpu_s(self) -> float:
        from xds_fanout import proc_cpu_s

        return proc_cpu_s(self._proc.pid)

    def main_thread_cpu_s(self) -> float:
        """Go spreads its goroutines over every thread: the process's CPU stands here."""
        return self.cpu_s()

    def rss_kb(self) -> dict[str, int]:
        from xds_fanout import proc_rss_kb

        each = proc_rss_kb(self._proc.pid)
        return {**each, "each_mb": [round(each["VmRSS"] / 1024, 1)]}

    def stop(self) -> None:
        if self._proc is None:
            return
        try:
            self._call({"cmd": "stop"}, 15)
        except (RuntimeError, TimeoutError, BrokenPipeError, OSError) as exc:
            print(f"  Go peer stop: {exc}", file=sys.stderr, flush=True)
        try:
            self._proc.wait(10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait(5)
        if self._feed is not None:
            self._feed.unlink(missing_ok=True)
