"""A command's own wall time, CPU time and peak RSS, measured from a small process instead of the bench.

Why: Linux carries a process's peak RSS across ``fork`` and ``exec``. A child
forked from a bench that holds a 1,000,000-event log reports, in ``os.wait4``'s
``ru_maxrss``, at least the bench's own peak at the fork, however little the
command itself used (seen: ``replay --at`` from a snapshot "peaking" at 266 MB,
exactly the bench's size, as every other figure of that run). So the command is
started by a stub: a fresh ``python -S`` whose own peak is a few megabytes,
which spawns the command, reaps it with ``os.wait4`` and writes the figures to
a file. The command's peak then starts from the stub's, not the bench's.

Invariants:
- The figures are the command's alone: its CPU time (user + system) and peak RSS
  come from the stub's ``wait4`` of it; its wall time is taken in the stub around
  the spawn and the reap (the stub's own start-up is not in it).
- The command's stdin, stdout and stderr are the stub's, which are the caller's:
  output is passed through untouched.
- The stub exits with the command's exit status (a signal as 128 + its number).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass

_STUB = r"""
import json, os, subprocess, sys, time
out, argv = sys.argv[1], sys.argv[2:]
t0 = time.perf_counter()
proc = subprocess.Popen(argv)
_pid, status, usage = os.wait4(proc.pid, 0)
wall = time.perf_counter() - t0
with open(out, "w") as f:
    json.dump({"wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime, "peak_rss_kb": usage.ru_maxrss}, f)
code = os.waitstatus_to_exitcode(status)
sys.exit(code if code >= 0 else 128 - code)
"""


@dataclass(frozen=True)
class ChildUsage:
    returncode: int
    wall_s: float
    cpu_s: float
    peak_rss_mb: float


def run_measured(argv: list[str], **popen_kwargs) -> ChildUsage:
    """Run ``argv`` to completion through the stub; ``popen_kwargs`` as for ``subprocess.run`` (stdout, stderr,
    env, cwd). Raises RuntimeError if the stub wrote no figures (it could not start the command)."""
    fd, path = tempfile.mkstemp(prefix="child-usage-", suffix=".json")
    os.close(fd)
    try:
        done = subprocess.run([sys.executable, "-S", "-c", _STUB, path, *argv], check=False, **popen_kwargs)
        try:
            with open(path) as f:
                figures = json.load(f)
        except (OSError, ValueError) as exc:
            raise RuntimeError(f"no usage figures for {argv[0]} (exit {done.returncode}): {exc}") from None
    finally:
        os.unlink(path)
    return ChildUsage(done.returncode, figures["wall_s"], figures["cpu_s"], figures["peak_rss_kb"] / 1024)
