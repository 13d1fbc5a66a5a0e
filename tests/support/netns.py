"""Network namespaces joined by one bridge, so a test can cut a Kafka node's links and restore them.

Node i lives in namespace ``<prefix>n<i>`` at ``10.215.<net>.<i>``; the bridge (in our namespace, at
``.254``) joins them all, so clients here reach every node. :meth:`Netns.cut` partitions a node from the
other nodes only — blackhole routes on both sides (``ip route``, nothing else is needed) — while this
namespace's clients still reach it: the node believes it is alive, which is the split-brain case.
Everything is removed by :meth:`Netns.close`. Needs root and ``ip``.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess


def available() -> str | None:
    """Why namespaces cannot be used here, or None."""
    if os.geteuid() != 0:
        return "not root"
    if shutil.which("ip") is None:
        return "no `ip` command"
    return None


def _ip(*args: str, netns: str | None = None) -> None:
    argv = ["ip", *(["netns", "exec", netns, "ip"] if netns else []), *args]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {done.stderr.strip()[:500]}")


class Netns:
    def __init__(self, count: int) -> None:
        self.tag = f"{os.getpid() % 10000}{random.randrange(100)}"  # interface names stay under 15 characters
        self.net = random.randrange(1, 250)
        self.bridge = f"mlbr{self.tag}"
        self.names = [f"ml{self.tag}n{i}" for i in range(1, count + 1)]
        self.hosts = [f"10.215.{self.net}.{i}" for i in range(1, count + 1)]
        self.cut_off: set[int] = set()
        try:
            _ip("link", "add", self.bridge, "type", "bridge")
            _ip("addr", "add", f"10.215.{self.net}.254/24", "dev", self.bridge)
            _ip("link", "set", self.bridge, "up")
            for i, (ns, host) in enumerate(zip(self.names, self.hosts), 1):
                outside, inside = f"mlh{self.tag}{i}", f"mln{self.tag}{i}"
                _ip("netns", "add", ns)
                _ip("link", "add", outside, "type", "veth", "peer", "name", inside)
                _ip("link", "set", inside, "netns", ns)
                _ip("link", "set", outside, "master", self.bridge, "up")
                _ip("addr", "add", f"{host}/24", "dev", inside, netns=ns)
                _ip("link", "set", inside, "up", netns=ns)
                _ip("link", "set", "lo", "up", netns=ns)
        except BaseException:
            self.close()
            raise

    def _routes(self, node: int, action: str) -> None:
        me = node - 1
        for other in range(len(self.names)):
            if other != me:
                _ip("route", action, "blackhole", f"{self.hosts[other]}/32", netns=self.names[me])
                _ip("route", action, "blackhole", f"{self.hosts[me]}/32", netns=self.names[other])

    def cut(self, node: int) -> None:
        """Node ``node`` (1-based) and the other nodes no longer reach each other; clients here reach all."""
        self._routes(node, "add")
        self.cut_off.add(node)

    def restore(self, node: int) -> None:
        self._routes(node, "del")
        self.cut_off.discard(node)

    def close(self) -> None:
        for ns in self.names:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True, timeout=30)
