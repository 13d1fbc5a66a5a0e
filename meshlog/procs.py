"""Child processes that cannot outlive their parent: spawn, wait, stop.

Used by ``meshlog demo`` and by the integration tests to run the real
meshlog commands (projector, gateways, sidecars, checkers); its
``die_with_parent`` is also how the local broker and the sidecar's Envoy are
spawned.

Invariants:
- Every child gets PR_SET_PDEATHSIG=SIGKILL: if the parent dies, even by
  kill -9, the kernel stops the child. Linux sends it when the *thread* that
  spawned the child exits, so spawn from a long-lived thread.
- With ``own_group=True`` the child leads its own process group, so a Ctrl-C
  in the terminal reaches only the parent, which then stops its children in
  the order it chooses (sidecars drain and deregister while Kafka still runs).
- A child's stdout and stderr go to ``<workdir>/<name>.log``; ``log_tail``
  shows the end of it when a wait fails.
- ``wait_until`` is always bounded: it returns the predicate's truthy value or
  raises AssertionError naming what it waited for and the last error.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

BIN = Path(sys.executable).parent
_PR_SET_PDEATHSIG = 1


def die_with_parent(*, own_group: bool = False, parent_pid: int | None = None) -> Callable[[], None]:
    """A ``preexec_fn``: the child gets SIGKILL when the thread that spawned it dies (Linux only).

    With ``own_group`` it also leads its own process group. Should the parent
    die before the death signal is set, the child exits at once; where
    ``prctl`` is missing it is best effort (the caller's own stop still runs).
    The one copy for every spawner (``spawn``, the local broker, Envoy); a
    child already running calls it with its ``parent_pid`` (the caller's own
    process by default).
    """
    parent_pid = os.getpid() if parent_pid is None else parent_pid

    def preexec() -> None:
        if own_group:
            os.setpgid(0, 0)
        try:
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except Exception:  # noqa: BLE001 - best effort
            return
        if os.getppid() != parent_pid:  # the parent died before prctl took effect
            os._exit(1)

    return preexec


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
    terminated: bool = False  # SIGTERM already sent: a second one would cut a sidecar's drain short

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            return ""
        return f"--- {self.name} log ({self.log_path}) ---\n" + "\n".join(text)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def terminate(self) -> None:
        """SIGTERM without waiting (to stop several at once, then ``stop`` each)."""
        if self.proc.poll() is None and not self.terminated:
            self.proc.send_signal(signal.SIGTERM)
            self.terminated = True

    def stop(self, timeout: float = 15.0) -> int | None:
        if self.proc.poll() is None:
            self.terminate()
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


def spawn(name: str, argv: list[str], workdir: Path, env: dict | None = None, *, own_group: bool = False) -> Process:
    workdir.mkdir(parents=True, exist_ok=True)
    log_path = workdir / f"{name}.log"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                preexec_fn=die_with_parent(own_group=own_group),
                                env={**os.environ, **(env or {})}, cwd=workdir)
    return Process(name, proc, log_path)
