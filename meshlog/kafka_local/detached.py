"""A broker or cluster that outlives the command that started it, tracked by a state file
(``meshlog kafka up|down|status``)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

from events.files import write_file_atomic
from events.kafka_security import KafkaSecurity, to_env
from meshlog.kafka_local.broker import LocalKafka
from meshlog.kafka_local.cluster import LocalCluster
from meshlog.kafka_local.data_dirs import load_cluster_layout, remove_data_dir
from meshlog.kafka_local.jars import file_lock
from meshlog.kafka_local.probes import broker_answers, pid_is_broker, terminate_pids, wait_until_answers
from meshlog.kafka_local.settings import (
    BROKER_LOG_NAME, DEFAULT_START_TIMEOUT, DEFAULT_STOP_TIMEOUT, KAFKA_VERSION, KafkaLauncherError, state_file_path,
)

log = logging.getLogger("meshlog.kafka")


@dataclass
class KafkaState:
    pid: int
    bootstrap: str
    data_dir: str
    log_path: str
    properties_path: str
    version: str = KAFKA_VERSION
    started_at: float = field(default_factory=time.time)
    security_env: dict | None = None  # --secure: the admin identity's MESHLOG_KAFKA_* variables
    # a cluster (--brokers N > 1): every node's node_id, pid, bootstrap, properties_path, log_path, data_dir;
    # pid/log_path/properties_path above are node 1's and bootstrap lists every node
    nodes: list | None = None

    @property
    def admin_security(self) -> KafkaSecurity | None:
        return KafkaSecurity.from_env(self.security_env) if self.security_env else None

    @property
    def node_list(self) -> list[dict]:
        """Every node, a single broker as one node."""
        return self.nodes or [{"node_id": 1, "pid": self.pid, "bootstrap": self.bootstrap, "data_dir": self.data_dir,
                               "properties_path": self.properties_path, "log_path": self.log_path}]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)


def load_state(home: Path | None = None) -> KafkaState | None:
    path = state_file_path(home)
    try:
        data = json.loads(path.read_text())
        return KafkaState(**data)
    except FileNotFoundError:
        return None
    except (ValueError, TypeError) as e:
        log.warning("ignoring unreadable state file %s: %s", path, e)
        return None


def _save_state(state: KafkaState, home: Path | None = None) -> None:
    path = state_file_path(home)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_file_atomic(path, state.to_json().encode())


def _clear_state(home: Path | None = None) -> None:
    with contextlib.suppress(FileNotFoundError):
        state_file_path(home).unlink()


def _kept_path(home: Path | None = None) -> Path:
    """What ``down --keep-data`` kept (data dir, client port), so a plain ``up`` restarts the same broker(s)."""
    return state_file_path(home).with_name("kept.json")


def _load_kept(home: Path | None = None) -> dict | None:
    try:
        kept = json.loads(_kept_path(home).read_text())
        return kept if Path(kept["data_dir"]).is_dir() else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _clear_kept(home: Path | None = None) -> None:
    with contextlib.suppress(FileNotFoundError):
        _kept_path(home).unlink()


@dataclass
class KafkaStatus:
    running: bool  # some node's JVM alive
    answering: bool  # admin describe_cluster succeeded
    state: KafkaState | None
    already_running: bool = False
    nodes_running: list[int] = field(default_factory=list)  # node ids whose JVM is alive

    @property
    def complete(self) -> bool:
        """Every node of the recorded broker or cluster is alive."""
        return self.state is not None and len(self.nodes_running) == len(self.state.node_list)

    def as_dict(self) -> dict:
        d = {"running": self.running, "answering": self.answering}
        if self.state is not None:
            d.update(asdict(self.state))
            if self.state.nodes:
                d["nodes_running"] = self.nodes_running
        if self.already_running:
            d["already_running"] = True
        return d


def status(home: Path | None = None, probe_timeout: float = 3.0) -> KafkaStatus:
    """What the state file says, checked against the process table and an admin call."""
    st = load_state(home)
    if st is None:
        return KafkaStatus(False, False, None)
    alive = [n["node_id"] for n in st.node_list if pid_is_broker(n["pid"], n["properties_path"])]
    if not alive:
        return KafkaStatus(False, False, st)
    answering = broker_answers(st.bootstrap, probe_timeout, st.admin_security or KafkaSecurity())
    return KafkaStatus(True, answering, st, nodes_running=alive)


def up(
    home: Path | None = None,
    *,
    data_dir: str | os.PathLike | None = None,
    port: int | None = None,
    start_timeout: float = DEFAULT_START_TIMEOUT,
    jvm_opts: Sequence[str] | None = None,
    secure: bool = False,
    brokers: int | None = None,
) -> KafkaStatus:
    """Ensure a detached broker (``brokers`` > 1: a :class:`LocalCluster`) is running; return its status
    (``already_running`` if it was).

    Without ``data_dir``, what the last ``down --keep-data`` kept is restarted (same data, same ports),
    else a new temp dir is used. ``brokers`` defaults to what the data dir holds, else 1.
    ``secure``: TLS listeners requiring client certificates and ACLs (see :func:`secure_properties`)."""
    sf = state_file_path(home)
    with file_lock(sf.with_name("lock")):
        current = status(home)
        if current.running:
            st = current.state
            assert st is not None
            if bool(st.security_env) != secure:
                raise KafkaLauncherError(
                    f"a {'secure' if st.security_env else 'plaintext'} broker is already running at "
                    f"{st.bootstrap}; run 'meshlog kafka down' first"
                )
            if brokers is not None and brokers != len(st.node_list):
                raise KafkaLauncherError(f"a Kafka of {len(st.node_list)} broker(s) is already running at "
                                         f"{st.bootstrap}; run 'meshlog kafka down' first")
            if data_dir is not None and Path(data_dir).resolve() != Path(st.data_dir).resolve():
                # answering with the running broker would put this caller's data into another data dir
                raise KafkaLauncherError(
                    f"a broker is already running at {st.bootstrap} on data dir {st.data_dir}, not {data_dir}; "
                    "run 'meshlog kafka down' first, or give the second broker its own MESHLOG_HOME")
            if not current.complete:  # a node of the cluster died: start it again on its data
                gone = sorted({n["node_id"] for n in st.node_list} - set(current.nodes_running))
                log.info("restarting node(s) %s of the cluster at %s", ", ".join(map(str, gone)), st.bootstrap)
                cluster = LocalCluster(len(st.node_list), st.data_dir, start_timeout=start_timeout, jvm_opts=jvm_opts,
                                       detached=True, keep_data=True, secure=secure)
                cluster.start(only=gone)
                st.nodes = _node_records(cluster, previous=st.nodes)
                st.pid = st.nodes[0]["pid"]
                _save_state(st, home)
                return KafkaStatus(True, True, st, nodes_running=[n["node_id"] for n in st.node_list])
            if current.answering or wait_until_answers(st.bootstrap, start_timeout, st.pid,
                                                       st.admin_security or KafkaSecurity()):
                log.info("Kafka already running at %s (pid %d)", st.bootstrap, st.pid)
                current.already_running = True
                current.answering = True
                return current
            raise KafkaLauncherError(
                f"broker pid {st.pid} is running but not answering on {st.bootstrap}; "
                f"see {st.log_path} or run 'meshlog kafka down'"
            )
        if current.state is not None:
            log.info("removing stale state (pid %d is gone)", current.state.pid)
            _clear_state(home)
        kept = _load_kept(home) if data_dir is None else None
        if kept is not None:
            data_dir = kept["data_dir"]
            port = port or kept.get("port")
            log.info("restarting the Kafka kept by 'down --keep-data' in %s", data_dir)
        layout = load_cluster_layout(data_dir) if data_dir is not None else None
        if brokers is None:
            brokers = layout["brokers"] if layout else 1
        if brokers > 1 or layout is not None:
            if port is not None and kept is None:
                raise KafkaLauncherError("--port applies to a single broker; a cluster chooses its nodes' ports")
            st = _up_cluster(brokers, data_dir, start_timeout, jvm_opts, secure)
        else:
            st = _up_single(data_dir, port, start_timeout, jvm_opts, secure)
        _save_state(st, home)
        _clear_kept(home)
        return KafkaStatus(True, True, st, nodes_running=[n["node_id"] for n in st.node_list])


def _up_single(data_dir, port, start_timeout, jvm_opts, secure) -> KafkaState:
    kafka = LocalKafka(data_dir, port=port, start_timeout=start_timeout, jvm_opts=jvm_opts,
                       detached=True, keep_data=True, secure=secure)
    kafka.start()
    return _state_of(kafka, kafka.bootstrap, kafka.data_dir, kafka.admin_security)


def _up_cluster(brokers, data_dir, start_timeout, jvm_opts, secure) -> KafkaState:
    cluster = LocalCluster(brokers, data_dir, start_timeout=start_timeout, jvm_opts=jvm_opts, detached=True,
                           keep_data=True, secure=secure)
    cluster.start()
    return _state_of(cluster.nodes[0], cluster.bootstrap, cluster.data_dir, cluster.admin_security,
                     _node_records(cluster))


def _state_of(first: LocalKafka, bootstrap: str, data_dir, admin: KafkaSecurity | None,
              nodes: list | None = None) -> KafkaState:
    """The state file's record: ``first`` (the only node, or a cluster's node 1) gives pid, log and properties."""
    return KafkaState(
        pid=first.pid or 0,
        bootstrap=bootstrap,
        data_dir=str(data_dir),
        log_path=str(first.log_path),
        properties_path=str(first.properties_path),
        version=first.version,
        security_env=to_env(admin) if admin else None,
        nodes=nodes,
    )


def _node_records(cluster: LocalCluster, previous: list | None = None) -> list[dict]:
    """The state file's record of every node; a node this ``cluster`` object did not start keeps ``previous``'s pid."""
    pids = {n["node_id"]: n["pid"] for n in previous or ()}
    return [{"node_id": n.node_id, "pid": n.pid or pids.get(n.node_id, 0),
             "bootstrap": cluster.node_bootstrap(n.node_id), "data_dir": str(cluster.node_dir(n.node_id)),
             "properties_path": str(cluster.node_dir(n.node_id) / "server.properties"),
             "log_path": str(cluster.node_dir(n.node_id) / BROKER_LOG_NAME)}
            for n in cluster.nodes]


def down(home: Path | None = None, *, keep_data: bool = False, timeout: float = DEFAULT_STOP_TIMEOUT) -> KafkaStatus:
    """Stop the detached broker or every node of the cluster (if any), remove the data dir unless
    ``keep_data`` (then a plain ``up`` restarts it), clear the state file.

    Returns the status *before* stopping (``running`` False if nothing was running).
    """
    sf = state_file_path(home)
    with file_lock(sf.with_name("lock")):
        before = status(home, probe_timeout=1.0)
        st = before.state
        if st is None:
            return before
        alive = [n for n in st.node_list if n["node_id"] in before.nodes_running]
        for n in alive:
            log.info("stopping Kafka node %d pid %d at %s", n["node_id"], n["pid"], n["bootstrap"])
        terminate_pids([n["pid"] for n in alive], timeout)
        if not alive:
            log.info("Kafka pid %d was not running; cleaning up", st.pid)
        if not keep_data:
            if remove_data_dir(st.data_dir):
                log.info("removed data dir %s", st.data_dir)
            _clear_kept(home)
        else:
            log.info("kept data dir %s", st.data_dir)
            port = None if st.nodes else int(st.bootstrap.rpartition(":")[2])
            write_file_atomic(_kept_path(home), json.dumps({"data_dir": st.data_dir, "port": port}).encode())
        _clear_state(home)
        return before
