"""``LocalCluster``: several KRaft nodes on loopback, each its own JVM, data dir and ports."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Mapping, Sequence

from events.files import write_file_atomic
from events.kafka_security import KafkaSecurity
from meshlog.kafka_local.broker import LocalKafka
from meshlog.kafka_local.config import free_ports, jvm_opts_from_env, random_cluster_id
from meshlog.kafka_local.data_dirs import CLUSTER_FILE_NAME, claim_data_dir, load_cluster_layout, remove_data_dir
from meshlog.kafka_local.probes import describe_cluster, terminate_pids
from meshlog.kafka_local.settings import (
    BROKER_LOG_NAME, DEFAULT_JVM_OPTS, DEFAULT_START_TIMEOUT, DEFAULT_STOP_TIMEOUT, ENV_JVM_OPTS, HOST,
    KafkaLauncherError, TLS_DIR_NAME,
)

log = logging.getLogger("meshlog.kafka")


MAX_BROKERS = 9
# three nodes share two cores and the tests' own broker: a smaller heap each (measured: idle ~150 MB)
CLUSTER_JVM_OPTS: tuple[str, ...] = tuple(o if not o.startswith("-Xmx") else "-Xmx384m" for o in DEFAULT_JVM_OPTS)


class LocalCluster:
    """``brokers`` KRaft nodes on 127.0.0.1, each its own JVM, data dir (``data_dir/node-<id>``) and ports.

    Every node is both broker and controller (combined mode): three JVMs instead of six on a small
    host, and a quorum of three controllers that outlives any one node, which is what the fault tests
    kill. (Production separates the roles so a busy broker cannot starve the controller; nothing here
    depends on the choice.)

    The cluster id and every node's ports are chosen once and kept in ``data_dir/cluster.json``: a
    restart on the same data dir is the same cluster at the same addresses, so clients that kept
    running (projector, gateways) reconnect by themselves. ``secure``: every node its own certificate
    from one CA in ``tls_dir`` (default ``data_dir/tls``; the demo gives its mesh CA's). Other arguments
    as :class:`LocalKafka`.
    """

    def __init__(self, brokers: int = 3, data_dir: str | os.PathLike | None = None, *,
                 start_timeout: float = DEFAULT_START_TIMEOUT, stop_timeout: float = DEFAULT_STOP_TIMEOUT,
                 jvm_opts: Sequence[str] | None = None, detached: bool = False, keep_data: bool | None = None,
                 secure: bool = False, extra_properties: Mapping[str, object] | None = None,
                 hosts: Sequence[str] | None = None, netns: Sequence[str] | None = None,
                 tls_dir: str | os.PathLike | None = None) -> None:
        if not 1 <= brokers <= MAX_BROKERS:
            raise KafkaLauncherError(f"brokers: {brokers} is out of range (1 to {MAX_BROKERS})")
        self.brokers = brokers
        self._given_data_dir = Path(data_dir).expanduser().resolve() if data_dir else None
        self.keep_data = keep_data if keep_data is not None else data_dir is not None
        self.start_timeout, self.stop_timeout = start_timeout, stop_timeout
        self.jvm_opts = tuple(jvm_opts) if jvm_opts is not None else (
            jvm_opts_from_env() if os.environ.get(ENV_JVM_OPTS) else CLUSTER_JVM_OPTS)
        self.detached, self.secure = detached, secure
        self._given_tls_dir = Path(tls_dir).expanduser().resolve() if tls_dir else None
        self.extra_properties = dict(extra_properties or {})
        # node i's address and network namespace (default: 127.0.0.1 in ours); not kept in cluster.json:
        # whoever made the namespaces gives them again at a restart
        self.hosts = list(hosts) if hosts else [HOST] * brokers
        self.netns = list(netns) if netns else [None] * brokers
        if len(self.hosts) != brokers or len(self.netns) != brokers:
            raise KafkaLauncherError(f"hosts and netns must name one per broker ({brokers})")
        self.data_dir: Path | None = None
        self.cluster_id: str | None = None
        self.nodes: list[LocalKafka] = []

    @property
    def bootstrap(self) -> str:
        """Every node's client address, comma separated (clients find the others from any one)."""
        if not self.nodes:
            raise KafkaLauncherError("cluster has not been started")
        return ",".join(self.node_bootstrap(n.node_id) for n in self.nodes)

    def node_bootstrap(self, node_id: int) -> str:
        """A node's client address, whether or not this object started it (the ports are the layout's)."""
        node = self.node(node_id)
        return f"{node.host}:{node._fixed_port}"

    def node_dir(self, node_id: int) -> Path:
        assert self.data_dir is not None
        return self.data_dir / f"node-{node_id}"

    def node(self, node_id: int) -> LocalKafka:
        for n in self.nodes:
            if n.node_id == node_id:
                return n
        raise KeyError(node_id)

    @property
    def admin_security(self) -> KafkaSecurity | None:
        return self.nodes[0].admin_security if self.nodes else None

    def start(self, only: Sequence[int] | None = None) -> str:
        """Start every node that is not running (all at once: none answers before a majority runs), wait
        until each answers and the cluster reports every broker; return the bootstrap list.

        ``only``: start just these node ids (the others run already, e.g. detached by another process)."""
        self._prepare()
        t0 = time.monotonic()
        stopped = [n for n in self.nodes if not n.is_running() and (only is None or n.node_id in only)]
        try:
            for n in stopped:
                n.start(wait=False)
            launched = time.monotonic()
            for n in stopped:
                # no node answers before a majority runs: each one's start timeout counts from the moment
                # the last was launched (formatting a node's storage is a JVM run of its own)
                n._t0 = launched
                n.wait_ready()
            self._wait_all_registered(launched)
        except BaseException:
            if len(stopped) == len(self.nodes):
                self._stop_nodes(5.0)
            raise
        log.info("Kafka cluster %s of %d nodes ready at %s in %.1fs", self.cluster_id, self.brokers,
                 self.bootstrap, time.monotonic() - t0)
        return self.bootstrap

    def _prepare(self) -> None:
        if self.nodes:
            return
        d = self.data_dir = claim_data_dir(self._given_data_dir, "cluster")
        if (d / "logs" / "meta.properties").exists():
            raise KafkaLauncherError(f"{d} holds a single broker's data, not a cluster's: start it without --brokers")
        layout = load_cluster_layout(d)
        if layout is None:
            ports = free_ports(2 * self.brokers)
            layout = {"cluster_id": random_cluster_id(), "brokers": self.brokers,
                      "nodes": [{"node_id": i + 1, "port": ports[2 * i], "controller_port": ports[2 * i + 1]}
                                for i in range(self.brokers)]}
            write_file_atomic(d / CLUSTER_FILE_NAME, json.dumps(layout, indent=1).encode())
        elif layout["brokers"] != self.brokers:
            raise KafkaLauncherError(f"{d} holds a cluster of {layout['brokers']} brokers, not {self.brokers}: "
                                     f"start it with --brokers {layout['brokers']} or use another data dir")
        self.cluster_id = layout["cluster_id"]
        voters = {n["node_id"]: n["controller_port"] for n in layout["nodes"]}
        voter_hosts = {n["node_id"]: self.hosts[i] for i, n in enumerate(layout["nodes"])}
        self.nodes = [
            LocalKafka(d / f"node-{n['node_id']}", port=n["port"], controller_port=n["controller_port"],
                       node_id=n["node_id"], voters=voters, cluster_id=self.cluster_id, jvm_opts=self.jvm_opts,
                       start_timeout=self.start_timeout, stop_timeout=self.stop_timeout, detached=self.detached,
                       keep_data=True, secure=self.secure, tls_dir=self._given_tls_dir or d / TLS_DIR_NAME,
                       extra_properties=self.extra_properties, host=self.hosts[i], voter_hosts=voter_hosts,
                       netns=self.netns[i])
            for i, n in enumerate(layout["nodes"])
        ]

    def _wait_all_registered(self, t0: float) -> None:
        deadline = t0 + self.start_timeout
        while True:
            try:
                seen = len(describe_cluster(self.bootstrap, 3.0, self.admin_security)["brokers"])
            except Exception:  # noqa: BLE001 - retried until the deadline
                seen = 0
            if seen == self.brokers:
                return
            if time.monotonic() > deadline:
                raise KafkaLauncherError(f"only {seen} of {self.brokers} brokers registered at {self.bootstrap} "
                                         f"within {self.start_timeout:.0f}s; see {self.data_dir}/node-*/{BROKER_LOG_NAME}")
            time.sleep(0.2)

    def kill(self, node_id: int) -> int:
        """SIGKILL one node's JVM (no shutdown, no leadership hand-over); returns its pid."""
        n = self.node(node_id)
        pid = n.pid
        if n.process is None or pid is None:
            raise KafkaLauncherError(f"node {node_id} is not running")
        n.process.kill()
        n.process.wait(10)
        return pid

    def stop(self, timeout: float | None = None) -> None:
        """Stop every node (SIGTERM each, then wait: a controlled shutdown hands leadership over), then
        remove the data dir unless ``keep_data``."""
        self._stop_nodes(self.stop_timeout if timeout is None else timeout)
        if self.data_dir is not None and not self.keep_data:
            remove_data_dir(self.data_dir)

    def stop_nodes(self, timeout: float | None = None) -> None:
        """Stop every node and keep the data: :meth:`start` then restarts the same cluster."""
        self._stop_nodes(self.stop_timeout if timeout is None else timeout)

    def _stop_nodes(self, timeout: float) -> None:
        running = [n for n in self.nodes if n.is_running()]
        terminate_pids([n.pid for n in running if n.pid], timeout)
        for n in self.nodes:
            n.stop(timeout)  # reaps the JVMs stopped above; unregisters their atexit hooks

    def __enter__(self) -> "LocalCluster":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
