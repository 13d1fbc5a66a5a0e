"""A Kafka cluster as a developer runs it: `meshlog kafka up --brokers N` in a home of its own.

The nodes are detached JVMs (they would outlive pytest), so the fixture using this class must call
:meth:`CliCluster.down` in a ``finally``; it SIGKILLs whatever `down` left.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from meshlog import kafka_local as kl
from meshlog.procs import wait_until


class CliCluster:
    def __init__(self, home: Path, brokers: int = 3, timeout: float = 300.0) -> None:
        self.home, self.brokers, self.timeout = home, brokers, timeout
        self.env = dict(os.environ, MESHLOG_HOME=str(home))
        self.env.pop(kl.ENV_BOOTSTRAP, None)
        self._pids: set[int] = set()

    def kafka(self, *args: str) -> subprocess.CompletedProcess:
        """``meshlog kafka ARGS`` (exit code not checked)."""
        return subprocess.run([sys.executable, "-m", "meshlog.cli", "kafka", *args], env=self.env,
                              capture_output=True, text=True, timeout=self.timeout + 60)

    def up(self, *args: str) -> str:
        """``meshlog kafka up ARGS``; the bootstrap list it printed."""
        done = self.kafka("up", "--timeout", str(self.timeout), *args)
        assert done.returncode == 0, f"meshlog kafka up failed ({done.returncode}):\n{done.stderr[-4000:]}"
        self._pids |= {n["pid"] for n in self.state()["nodes"]}
        return done.stdout.strip().splitlines()[-1]

    def state(self) -> dict:
        return json.loads((self.home / "kafka" / "state.json").read_text())

    def pid_of(self, node_id: int) -> int:
        return next(n["pid"] for n in self.state()["nodes"] if n["node_id"] == node_id)

    def kill(self, node_id: int) -> None:
        """SIGKILL one node's JVM and wait until it is gone."""
        pid = self.pid_of(node_id)
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: not kl.pid_alive(pid), 10, f"node {node_id} (pid {pid}) to die")

    def down(self, *args: str) -> subprocess.CompletedProcess:
        done = self.kafka("down", *args)
        assert done.returncode == 0, f"meshlog kafka down failed ({done.returncode}):\n{done.stderr[-4000:]}"
        return done

    def cleanup(self) -> None:
        """Stop and remove everything, whatever the test did."""
        try:
            self.kafka("down")
        finally:
            for pid in self._pids:
                if kl.pid_alive(pid):
                    os.kill(pid, signal.SIGKILL)
