"""Run the real meshlog processes for integration tests: projector, gateways, Envoy.

Everything binds 127.0.0.1 on ports picked at run time, logs to files under
the test's tmp dir (shown when a wait fails), and is stopped by the fixture
that started it; PDEATHSIG makes the kernel stop it if pytest dies.
"""

from __future__ import annotations

import json
import re
import urllib.request
from pathlib import Path

from meshlog.procs import BIN, Process, spawn, wait_until  # noqa: F401 - the tests' process helpers


def start_projector(bootstrap: str, workdir: Path, name: str = "projector", extra: list[str] | None = None) -> Process:
    return spawn(name, [str(BIN / "projector"), "run", "--bootstrap", bootstrap, "--data-dir",
                        str(workdir / f"{name}-data"), *(extra or [])], workdir)


def start_gateway(bootstrap: str, workdir: Path, name: str, port: int = 0, timeout: float = 60.0,
                  extra: list[str] | None = None) -> Process:
    ready_file = workdir / f"{name}.ready.json"
    ready_file.unlink(missing_ok=True)
    gw = spawn(name, [str(BIN / "xds-gateway"), "run", "--bootstrap", bootstrap, "--port", str(port),
                      "--http-port", "0", "--grace", "1", "--ready-file", str(ready_file), *(extra or [])],
                workdir)
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
