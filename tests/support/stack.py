"""Run the real meshlog processes for integration tests: projector, gateways, Envoy.

Everything binds 127.0.0.1 on ports picked at run time, logs to files under
the test's tmp dir (shown when a wait fails), and is stopped by the fixture
that started it; PDEATHSIG makes the kernel stop it if pytest dies.
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

BIN = Path(sys.executable).parent
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def wait_until(predicate: Callable[[], object], timeout: float, what: str, interval: float = 0.1, on_fail=None):
    deadline = time.monotonic() + timeout
    last_exc = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # noqa: BLE001 - retried until the deadline, then reported
            last_exc = exc
        time.sleep(interval)
    detail = on_fail() if on_fail else ""
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last error: {last_exc!r})\n{detail}")


@dataclass
class Process:
    name: str
    proc: subprocess.Popen
    log_path: Path
    info: dict = field(default_factory=dict)

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            return ""
        return f"--- {self.name} log ({self.log_path}) ---\n" + "\n".join(text)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 15.0) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode

    def kill9(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


def spawn(name: str, argv: list[str], workdir: Path, env: dict | None = None) -> Process:
    workdir.mkdir(parents=True, exist_ok=True)
    log_path = workdir / f"{name}.log"
    log = open(log_path, "ab")
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent,
                            env={**os.environ, **(env or {})}, cwd=workdir)
    return Process(name, proc, log_path)


def start_projector(bootstrap: str, workdir: Path, name: str = "projector", extra: list[str] | None = None) -> Process:
    return spawn(name, [str(BIN / "projector"), "run", "--bootstrap", bootstrap, "--data-dir",
                        str(workdir / f"{name}-data"), *(extra or [])], workdir)


def start_gateway(bootstrap: str, workdir: Path, name: str, port: int = 0, timeout: float = 60.0) -> Process:
    ready_file = workdir / f"{name}.ready.json"
    ready_file.unlink(missing_ok=True)
    gw = spawn(name, [str(BIN / "xds-gateway"), "run", "--bootstrap", bootstrap, "--port", str(port),
                      "--http-port", "0", "--grace", "1", "--ready-file", str(ready_file)], workdir)
    wait_until(lambda: ready_file.exists() and ready_file.read_text().strip(), timeout, f"{name} ready",
               on_fail=gw.log_tail)
    gw.info = json.loads(ready_file.read_text())
    return gw


def metrics(http_port: int) -> dict[str, float]:
    """Prometheus text -> {'name{labels}': value}."""
    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=5) as response:
        text = response.read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        match = re.match(r"^(\S+)\s+(\S+)$", line)
        if match:
            out[match.group(1)] = float(match.group(2))
    return out


def metric_sum(values: dict[str, float], prefix: str, **labels: str) -> float:
    total = 0.0
    for key, value in values.items():
        if not key.startswith(prefix + "{") and key != prefix:
            continue
        if all(f'{k}="{v}"' in key for k, v in labels.items()):
            total += value
    return total
