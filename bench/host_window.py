"""What the host did during a measurement besides running it: its load, and the CPU time the hypervisor stole.

Why: on a virtual machine the same code on the same input takes from 1× to 2× the
wall time from one minute to the next (seen here, in a Firecracker guest: `replay
--at` from a snapshot at 1.02 s wall for 0.91 CPU-s, and at 1.59 s for 1.13 CPU-s
minutes later, with 30 % of the machine's CPU time counted as *steal* over the run).
The load average does not show this: a guest whose vCPUs wait for the host looks idle.
So every bench line that reports a time says how much was stolen while it ran.

Invariants:
- Reads only ``/proc/stat``'s first line (the sum over all CPUs, in clock ticks);
  where there is none (not Linux), the steal share is ``None`` and the text says
  "steal n/a" rather than guessing.
- ``steal_share`` is the stolen ticks over all ticks of the window (every CPU
  state counted once: user, nice, system, idle, iowait, irq, softirq, steal;
  guest time is already inside user and nice, so it is not added again). A window
  shorter than a tick or two says little: the share is then rounded from a
  handful of ticks.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

PROC_STAT = "/proc/stat"
# the fields of /proc/stat's "cpu" line that partition the CPUs' time (guest and guest_nice are part of user/nice)
_STATES = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")


@dataclass(frozen=True)
class CpuTicks:
    total: int
    steal: int


def parse_cpu_line(line: str) -> CpuTicks:
    """The all-CPU ``cpu`` line of /proc/stat as (total, steal) ticks; ValueError if it is not one."""
    fields = line.split()
    if not fields or fields[0] != "cpu" or len(fields) < 1 + len(_STATES):
        raise ValueError(f"not /proc/stat's all-CPU line: {line[:80]!r}")
    ticks = [int(x) for x in fields[1:1 + len(_STATES)]]
    return CpuTicks(total=sum(ticks), steal=ticks[_STATES.index("steal")])


def read_cpu_ticks(path: str = PROC_STAT) -> CpuTicks | None:
    try:
        with open(path) as fh:
            return parse_cpu_line(fh.readline())
    except (OSError, ValueError):
        return None


def steal_share(before: CpuTicks | None, after: CpuTicks | None) -> float | None:
    """The share of all CPU time between two readings that the hypervisor took; None if unknown or no tick passed."""
    if before is None or after is None or after.total <= before.total:
        return None
    return max(0, after.steal - before.steal) / (after.total - before.total)


def steal_text(share: float | None) -> str:
    """How every bench line says a steal share: "steal 12%", or "steal n/a" when it is not known."""
    return "steal n/a" if share is None else f"steal {share:.0%}"


class HostWindow:
    """A measurement window: ``describe()`` says the load now and the steal share since the window opened."""

    def __init__(self) -> None:
        self.start = read_cpu_ticks()

    def steal_share(self) -> float | None:
        return steal_share(self.start, read_cpu_ticks())

    def describe(self) -> str:
        return f"load {os.getloadavg()[0]:.1f}, {steal_text(self.steal_share())}"
