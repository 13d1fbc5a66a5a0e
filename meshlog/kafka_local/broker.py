"""``LocalKafka``: one KRaft node (broker and controller) as a JVM child process on loopback."""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import re
import subprocess
import time
from datetime import timedelta
from pathlib import Path
from typing import Mapping, Sequence

from events.kafka_security import KafkaSecurity
from meshlog.procs import tied_to_parent
from meshlog.kafka_local.config import (
    error_lines, free_port, jvm_opts_from_env, random_cluster_id, render_log4j2_config, render_properties,
    secure_properties, server_properties, tail_text,
)
from meshlog.kafka_local.data_dirs import claim_data_dir, load_cluster_layout, remove_data_dir
from meshlog.kafka_local.jars import check_java, ensure_kafka_jars
from meshlog.kafka_local.probes import broker_answers, terminate_pid
from meshlog.kafka_local.settings import (
    BROKER_LOG_NAME, CONSOLE_LOG_NAME, DEFAULT_START_TIMEOUT, DEFAULT_STOP_TIMEOUT, HOST, KAFKA_VERSION,
    KafkaLauncherError, MAIN_CLASS, STORAGE_TOOL_CLASS, TLS_DIR_NAME,
)

log = logging.getLogger("meshlog.kafka")


class LocalKafka:
    """One single-node KRaft broker as a child JVM.

    ``data_dir``: where properties, logs and the log segments go (created if
    needed).  Default: a fresh temp dir, removed on :meth:`stop` unless
    ``keep_data``.  A given ``data_dir`` is kept unless ``keep_data=False``;
    reusing a formatted one restarts the same cluster with its data.

    ``detached=False`` (default): the JVM is tied to this Python process
    (PR_SET_PDEATHSIG + atexit stop).  Linux delivers the death signal when
    the *thread* that called :meth:`start` exits, so start it from a
    long-lived thread (the main thread, a pytest fixture).  ``detached=True``: own session, no
    pdeathsig -- it outlives us (used by ``meshlog kafka up``).
    """

    def __init__(
        self,
        data_dir: str | os.PathLike | None = None,
        *,
        port: int | None = None,
        controller_port: int | None = None,
        version: str = KAFKA_VERSION,
        cache_dir: str | os.PathLike | None = None,
        java: str | None = None,
        jvm_opts: Sequence[str] | None = None,
        extra_properties: Mapping[str, object] | None = None,
        start_timeout: float = DEFAULT_START_TIMEOUT,
        stop_timeout: float = DEFAULT_STOP_TIMEOUT,
        detached: bool = False,
        keep_data: bool | None = None,
        secure: bool = False,
        tls_dir: str | os.PathLike | None = None,
        node_id: int = 1,
        voters: Mapping[int, int] | None = None,
        cluster_id: str | None = None,
        host: str = HOST,
        voter_hosts: Mapping[int, str] | None = None,
        netns: str | None = None,
    ) -> None:
        self.secure = secure
        self.host = host  # the address it listens on and advertises
        self.voter_hosts = dict(voter_hosts or {})
        self.netns = netns  # run the JVM inside this network namespace (`ip netns exec`), e.g. to cut its links
        self.node_id = node_id
        self.voters = dict(voters) if voters else None  # a cluster's node id -> controller port (LocalCluster)
        self._given_cluster_id = cluster_id
        self._given_tls_dir = Path(tls_dir).expanduser().resolve() if tls_dir else None
        self._given_data_dir = Path(data_dir).expanduser().resolve() if data_dir else None
        self.keep_data = keep_data if keep_data is not None else data_dir is not None
        self._fixed_port = port
        self._fixed_controller_port = controller_port
        self.version = version
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.java = java
        self.jvm_opts = tuple(jvm_opts) if jvm_opts is not None else jvm_opts_from_env()
        self.extra_properties = dict(extra_properties or {})
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.detached = detached

        self.data_dir: Path | None = None
        self.port: int | None = None
        self.controller_port: int | None = None
        self.cluster_id: str | None = None
        self.process: subprocess.Popen | None = None
        self.startup_seconds: float | None = None
        self._atexit_registered = False
        self._log_offset = 0
        self._t0 = 0.0

    # -- paths ------------------------------------------------------------
    def _require_data_dir(self) -> Path:
        if self.data_dir is None:
            raise KafkaLauncherError("broker has not been started")
        return self.data_dir

    @property
    def log_path(self) -> Path:
        """The broker's log4j log file."""
        return self._require_data_dir() / BROKER_LOG_NAME

    @property
    def console_log_path(self) -> Path:
        """The JVM's stdout/stderr."""
        return self._require_data_dir() / CONSOLE_LOG_NAME

    @property
    def properties_path(self) -> Path:
        return self._require_data_dir() / "server.properties"

    @property
    def bootstrap(self) -> str:
        """``127.0.0.1:PORT`` once started."""
        if self.port is None:
            raise KafkaLauncherError("broker has not been started")
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def is_running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    # -- lifecycle --------------------------------------------------------
    def start(self, *, wait: bool = True) -> str:
        """Fetch jars if needed, format storage, start the JVM and wait until an admin call succeeds.

        Returns the bootstrap address.  Raises :class:`KafkaLauncherError`
        (with the broker log tail) if the JVM exits or the timeout expires.
        ``wait=False``: return once the JVM is launched (a cluster node answers only once a
        majority of the quorum runs); :meth:`wait_ready` then waits.
        """
        if self.is_running():
            return self.bootstrap
        t0 = time.monotonic()
        self._t0 = t0
        java, _ = check_java(self.java)
        libs = ensure_kafka_jars(self.version, self.cache_dir)
        self._prepare_data_dir()
        attempts = 1 if (self._fixed_port or self._fixed_controller_port) else 3
        try:
            for attempt in range(1, attempts + 1):
                try:
                    self._start_once(java, libs, t0, wait)
                    break
                except _PortInUse as e:
                    if attempt == attempts:
                        raise KafkaLauncherError(str(e)) from None
                    log.info("port clash; retrying with new ports")
        except BaseException:
            self._kill_quietly()
            self._unregister_atexit()
            if not self.keep_data:
                log.warning("start failed; data dir %s kept for inspection", self.data_dir)
            raise
        if wait:
            self._ready(t0)
        return self.bootstrap

    def wait_ready(self) -> None:
        """After ``start(wait=False)``: wait (up to the start timeout from the launch) until it answers."""
        try:
            self._wait_ready(self._t0)
        except BaseException:
            self._kill_quietly()
            raise
        self._ready(self._t0)

    def _ready(self, t0: float) -> None:
        self.startup_seconds = time.monotonic() - t0
        log.info("Kafka %s node %d ready at %s in %.1fs (pid %d, log %s)",
                 self.version, self.node_id, self.bootstrap, self.startup_seconds, self.pid, self.log_path)

    def _prepare_data_dir(self) -> None:
        self.data_dir = claim_data_dir(self._given_data_dir, "broker")
        if load_cluster_layout(self.data_dir) is not None:
            raise KafkaLauncherError(f"{self.data_dir} holds a cluster's data: start it with --brokers")

    def _java_base(self, java: str, libs: Path) -> list[str]:
        return [
            java,
            *self.jvm_opts,
            f"-Dlog4j2.configurationFile={self._require_data_dir() / 'log4j2.xml'}",
            "-cp",
            str(libs / "*"),
        ]

    def _popen_args(self, argv: list[str]) -> tuple[list[str], dict]:
        """The argv and Popen kwargs for a JVM: tied to this thread in its own group, or in its own session."""
        if self.detached:
            return argv, {"start_new_session": True}
        return tied_to_parent(argv, own_group=True)

    def _start_once(self, java: str, libs: Path, t0: float, wait: bool = True) -> None:
        d = self._require_data_dir()
        self.port, self.controller_port = self._choose_ports()
        log_dir = d / "logs"
        props = server_properties(
            port=self.port, controller_port=self.controller_port, log_dir=log_dir, node_id=self.node_id,
            host=self.host, secure=self._prepare_tls() if self.secure else None, extra=self.extra_properties,
            voters=self.voters, voter_hosts=self.voter_hosts,
        )
        self.properties_path.write_text(render_properties(props))
        (d / "log4j2.xml").write_text(render_log4j2_config(self.log_path))
        base = self._java_base(java, libs)

        meta = log_dir / "meta.properties"
        if meta.exists():
            m = re.search(r"^cluster\.id=(\S+)", meta.read_text(), re.M)
            self.cluster_id = m.group(1) if m else None
            log.info("reusing formatted storage in %s (cluster %s)", log_dir, self.cluster_id)
        else:
            self.cluster_id = self._given_cluster_id or random_cluster_id()
            fmt = [*base, STORAGE_TOOL_CLASS, "format", "-t", self.cluster_id, "-c", str(self.properties_path)]
            try:
                fmt, popen_kwargs = self._popen_args(fmt)
                res = subprocess.run(fmt, capture_output=True, text=True, timeout=120,
                                     stdin=subprocess.DEVNULL, **popen_kwargs)
            except subprocess.TimeoutExpired as e:
                raise KafkaLauncherError("kafka StorageTool format timed out") from e
            if res.returncode != 0:
                raise KafkaLauncherError(
                    f"kafka StorageTool format failed (exit {res.returncode}):\n"
                    f"{(res.stdout + res.stderr).strip()[-3000:]}\n--- {self.log_path} ---\n{tail_text(self.log_path)}"
                )

        cmd = [*(["ip", "netns", "exec", self.netns] if self.netns else []), *base, MAIN_CLASS, str(self.properties_path)]
        try:
            self._log_offset = self.log_path.stat().st_size  # the log is appended to across restarts
        except OSError:
            self._log_offset = 0
        cmd, popen_kwargs = self._popen_args(cmd)
        with open(self.console_log_path, "ab") as console:
            self.process = subprocess.Popen(
                cmd, cwd=d, stdin=subprocess.DEVNULL, stdout=console, stderr=subprocess.STDOUT,
                close_fds=True, **popen_kwargs
            )
        if not self.detached and not self._atexit_registered:
            atexit.register(self._atexit_stop)
            self._atexit_registered = True
        if not wait:
            return
        try:
            self._wait_ready(t0)
        except BaseException:
            self._kill_quietly()
            raise

    # -- TLS (secure=True) ----------------------------------------------------
    @property
    def tls_dir(self) -> Path:
        """CA, broker and admin certificates: the given ``tls_dir`` (the demo keeps its mesh CA beside its
        logs), else kept with the data, so a restart keeps its identities."""
        return self._given_tls_dir or self._require_data_dir() / TLS_DIR_NAME

    def _prepare_tls(self) -> dict[str, str]:
        from identity import spiffe
        from meshlog import kafka_tls

        ca = kafka_tls.ensure_ca(self.tls_dir)
        # each node its own certificate (broker/<node id>: principal User:broker), so the nodes of a cluster
        # sharing one tls_dir never rewrite each other's keystore
        broker_id = spiffe.SpiffeId.of(ca.domain, kafka_tls.BROKER_ROLE, str(self.node_id))
        broker_dir = kafka_tls.identity_dir(self.tls_dir, broker_id)
        files = kafka_tls.issue_files(ca, broker_id, broker_dir, server_names=tuple(dict.fromkeys((self.host, HOST, "localhost"))),
                                      lifetime=kafka_tls.LOCAL_LIFETIME)
        self.security_for(f"{kafka_tls.BROKER_ROLE}/{kafka_tls.ADMIN_ID}", lifetime=kafka_tls.LOCAL_LIFETIME)
        return secure_properties(keystore=broker_dir / kafka_tls.KEYSTORE_FILE, truststore=files.bundle,
                                 super_users=(kafka_tls.BROKER_ROLE,))

    @property
    def admin_security(self) -> KafkaSecurity | None:
        """A super user's client settings (secure broker only; what ``meshlog topics ensure`` needs)."""
        if not self.secure:
            return None
        from meshlog import kafka_tls

        return self.security_for(f"{kafka_tls.BROKER_ROLE}/{kafka_tls.ADMIN_ID}")

    def security_for(self, path: str, *, lifetime: timedelta | None = None) -> KafkaSecurity:
        """Client settings for the identity ``spiffe://<domain>/<path>`` (``sidecar/reviews/i1``: principal
        ``User:sidecar``), issued from this broker's CA into ``tls_dir`` unless it is there already."""
        from identity import pki, spiffe
        from meshlog import kafka_tls

        if not self.secure:
            raise KafkaLauncherError("security_for: this broker is not secure")
        ca = kafka_tls.ensure_ca(self.tls_dir)
        ident = spiffe.parse(f"spiffe://{ca.domain}/{path}")
        directory = kafka_tls.identity_dir(self.tls_dir, ident)
        files = pki.IdentityFiles.in_dir(directory)
        if lifetime is not None or not files.cert.exists():
            files = kafka_tls.issue_files(ca, ident, directory, lifetime=lifetime or pki.DEFAULT_LIFETIME)
        return kafka_tls.security_of(files)

    def _choose_ports(self) -> tuple[int, int]:
        taken = [p for p in (self._fixed_port, self._fixed_controller_port) if p]
        port = self._fixed_port or free_port(exclude=taken)
        cport = self._fixed_controller_port or free_port(exclude=[port, *taken])
        if port == cport:
            raise KafkaLauncherError("port and controller_port must differ")
        return port, cport

    def _wait_ready(self, t0: float) -> None:
        assert self.process is not None
        deadline = t0 + self.start_timeout
        while True:
            rc = self.process.poll()
            if rc is not None:
                errors = error_lines(self.log_path, self._log_offset)
                tail = tail_text(self.log_path, 25)
                console = tail_text(self.console_log_path, 20)
                msg = (f"Kafka broker exited with code {rc} during start-up.\n"
                       + (f"--- errors in {self.log_path} ---\n{errors}\n" if errors else "")
                       + f"--- {self.log_path} (tail) ---\n{tail}"
                       + (f"\n--- {self.console_log_path} (tail) ---\n{console}" if console else ""))
                if "Address already in use" in errors + console and not (self._fixed_port or self._fixed_controller_port):
                    raise _PortInUse(msg)
                raise KafkaLauncherError(msg)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise KafkaLauncherError(
                    f"Kafka broker did not answer on {self.bootstrap} within {self.start_timeout:.0f}s.\n"
                    f"--- {self.log_path} (tail) ---\n{tail_text(self.log_path)}"
                )
            if broker_answers(self.bootstrap, timeout=min(3.0, max(0.5, remaining)), security=self.admin_security or KafkaSecurity()):
                return
            time.sleep(0.1)

    def _kill_quietly(self) -> None:
        if self.process and self.process.poll() is None:
            with contextlib.suppress(Exception):
                terminate_pid(self.process.pid, 5.0, self.process)

    def stop(self, timeout: float | None = None) -> None:
        """SIGTERM, wait (bounded), SIGKILL; then remove a temp data dir unless ``keep_data``. Idempotent."""
        self._stop(self.stop_timeout if timeout is None else timeout, quiet=False)

    def _stop(self, timeout: float, quiet: bool) -> None:
        if self.process is not None and self.process.poll() is None:
            terminate_pid(self.process.pid, timeout, self.process)
            self.process.wait()
            if not quiet:
                log.info("Kafka broker pid %d stopped", self.process.pid)
        self._unregister_atexit()
        if self.data_dir is not None and not self.keep_data and self.data_dir.exists():
            remove_data_dir(self.data_dir)

    def _unregister_atexit(self) -> None:
        if self._atexit_registered:
            atexit.unregister(self._atexit_stop)
            self._atexit_registered = False

    def _atexit_stop(self) -> None:
        # Logging may already be shut down at interpreter exit: stay quiet.
        with contextlib.suppress(Exception):
            self._stop(10.0, quiet=True)

    def __enter__(self) -> "LocalKafka":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        where = f"{self.host}:{self.port}" if self.port else "not started"
        return f"<LocalKafka {self.version} {where} pid={self.pid}>"


class _PortInUse(KafkaLauncherError):
    pass
