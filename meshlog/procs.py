"""Child processes that cannot outlive their parent: spawn, wait, stop.

Used by ``meshlog demo`` and by the integration tests to run the real
meshlog commands (projector, gateways, sidecars, checkers); its
``tied_to_parent`` is also how the local broker and the sidecar's Envoy are
spawned (the one copy), and ``die_with_parent`` is how an already running
child (an xds-gateway worker) ties itself to its parent.

Invariants:
- Every child gets PR_SET_PDEATHSIG=SIGKILL: if the parent dies, even by
  kill -9, the kernel stops the child. Linux sends it when the *thread* that
  spawned the child exits, so spawn from a long-lived thread.
- No ``preexec_fn``, ever: it makes CPython fork() (not vfork) and run Python
  code in the child before exec, and a parent with live gRPC threads (the
  pytest process, a sidecar agent) can then hang the child before exec
  (gRPC's fork handlers, ctypes' dlopen) -- seen once in CI: a gateway that
  never started. Instead the death signal is set by util-linux ``setpriv
  --pdeathsig KILL``, put in front of the command, which then execs it (the
  signal survives exec, though not of a set-user-ID or file-capability
  program, as before; the pid stays the same; ``/proc/<pid>/cmdline`` is the
  real command once it runs, the prefix and then the command before), and ``own_group`` uses Popen's
  ``process_group=0``. Before the command is exec'd a ``/bin/sh`` checks that
  its parent is still the spawner, so a parent that died before the death
  signal was set leaves no orphan (the child exits 1). Without a ``setpriv``
  that knows ``--pdeathsig`` (not Linux, util-linux older than 2.33) children
  get no death signal (one warning is logged): best effort, the parent's own
  stop (``Process.stop``, the broker's atexit) still runs.
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
import errno
import functools
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

BIN = Path(sys.executable).parent
_PR_SET_PDEATHSIG = 1
# Runs between setpriv and the command: $PPID is read after setpriv set the death signal, so if it still names
# the spawner the signal will come; if not, the spawner died first and nothing would ever stop the command.
_PARENT_CHECK = ('if [ "$PPID" = "$0" ]; then exec "$@"; fi; '
                 'echo "parent $0 died before the child started: not running $1" >&2; exit 1')

log = logging.getLogger("meshlog.procs")
_prefix_lock = threading.Lock()


def _death_signal_prefix() -> tuple[str, ...]:
    with _prefix_lock:  # found (and any warning logged) once per process, whichever thread spawns first
        return _find_death_signal_prefix()


@functools.cache
def _find_death_signal_prefix() -> tuple[str, ...]:
    """``setpriv --pdeathsig KILL --`` if this host's setpriv has that option, else () (logged once)."""
    setpriv = shutil.which("setpriv", path=f"{os.environ.get('PATH', os.defpath)}:/usr/bin:/bin")
    if setpriv is None:
        log.warning("no setpriv (util-linux) found: children started now get no death signal and outlive a killed parent")
        return ()
    prefix = (setpriv, "--pdeathsig", "KILL", "--")
    try:
        ok = subprocess.run([*prefix, "true"], stdin=subprocess.DEVNULL, capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        ok = False
    if not ok:
        log.warning("%s has no --pdeathsig (util-linux older than 2.33?): children started now get no death signal "
                    "and outlive a killed parent", setpriv)
        return ()
    return prefix


def _check_program(program: str, env: Mapping[str, str] | None, cwd: str | os.PathLike | None) -> None:
    """Raise FileNotFoundError as Popen would for a missing program (setpriv would only exit 127 with a message)."""
    if "/" in program:
        found = os.path.exists(os.path.join(cwd or ".", program))
    else:
        path = os.pathsep.join(os.get_exec_path(dict(env) if env is not None else None))
        found = shutil.which(program, path=path) is not None
    if not found:
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), program)


def _tied(argv: Sequence[str], own_group: bool, parent_pid: int) -> tuple[list[str], dict]:
    argv = [os.fspath(a) for a in argv]
    prefix = _death_signal_prefix()
    if prefix and os.access("/bin/sh", os.X_OK):
        argv = [*prefix, "/bin/sh", "-c", _PARENT_CHECK, str(parent_pid), *argv]
    elif prefix:
        argv = [*prefix, *argv]
    return argv, ({"process_group": 0} if own_group else {})


def tied_to_parent(argv: Sequence[str], *, own_group: bool = False, env: Mapping[str, str] | None = None,
                   cwd: str | os.PathLike | None = None) -> tuple[list[str], dict]:
    """``(argv, popen_kwargs)`` for a child that gets SIGKILL when the thread spawning it dies (Linux).

    Pass both on to ``subprocess.Popen``/``run`` (with your own stdout, cwd,
    env...): ``argv`` starts with ``setpriv --pdeathsig KILL --`` and a parent
    check, then the command, which they exec (same pid); ``popen_kwargs`` has
    ``process_group=0`` when ``own_group`` (the child leads its own process
    group) and never a ``preexec_fn``. Call it in the spawning process, right
    before Popen. ``env``/``cwd`` (as given to Popen) only serve to raise
    FileNotFoundError for a missing program, as Popen does without the prefix.
    Without a usable setpriv the command is returned as is (see the module doc).
    """
    _check_program(os.fspath(argv[0]), env, cwd)
    return _tied(argv, own_group, os.getpid())


def die_with_parent(*, parent_pid: int) -> Callable[[], None]:
    """For a process already running, not a ``preexec_fn``: the result, called, makes it get SIGKILL when its parent dies.

    An xds-gateway worker (a multiprocessing child) calls it first thing with
    its replica's pid as ``parent_pid``: should that parent already be gone
    when the death signal is set, the process exits at once. Where ``prctl``
    is missing (not Linux) it is best effort. Spawners use ``tied_to_parent``
    instead: no Python code may run between fork and exec (see the module doc).
    """

    def arm() -> None:
        try:
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except Exception:  # noqa: BLE001 - best effort
            return
        if os.getppid() != parent_pid:  # the parent died before prctl took effect
            os._exit(1)

    return arm


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
    env = {**os.environ, **(env or {})}
    argv, popen_kwargs = tied_to_parent(argv, own_group=own_group, env=env, cwd=workdir)
    with open(log_path, "ab") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=workdir, **popen_kwargs)
    return Process(name, proc, log_path)
