"""Is a broker there: readiness probes over the Kafka protocol, and the processes behind it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Sequence

from events.kafka_security import KafkaSecurity, connection_kwargs
from meshlog.kafka_local.settings import DEFAULT_STOP_TIMEOUT, HOST, KafkaLauncherError, MAIN_CLASS

log = logging.getLogger("meshlog.kafka")


async def _describe_cluster(bootstrap: str, request_timeout_ms: int, security: KafkaSecurity | None) -> dict:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(**connection_kwargs(bootstrap, security), request_timeout_ms=request_timeout_ms)
    try:
        await admin.start()
        return await admin.describe_cluster()
    finally:
        await admin.close()


def describe_cluster(bootstrap: str, timeout: float = 5.0, security: KafkaSecurity | None = None) -> dict:
    """Run aiokafka's ``describe_cluster`` against ``bootstrap`` (sync; safe inside a running event loop)."""
    result: dict = {}
    error: list[BaseException] = []

    def runner() -> None:
        try:
            result.update(asyncio.run(asyncio.wait_for(_describe_cluster(bootstrap, int(timeout * 1000), security), timeout)))
        except BaseException as e:  # noqa: BLE001 - reported to the caller
            error.append(e)

    # A separate thread keeps this independent of any event loop of the caller (pytest-asyncio).
    t = threading.Thread(target=runner, name="kafka-probe", daemon=True)
    t.start()
    t.join(timeout + 5)
    if t.is_alive():
        raise TimeoutError(f"describe_cluster on {bootstrap} hung")
    if error:
        raise error[0]
    return result


def port_accepts(bootstrap: str, timeout: float = 1.0) -> bool:
    """True if a TCP connection to ``host:port`` (any address of a comma-separated list) succeeds."""
    for address in bootstrap.split(","):
        host, _, port = address.strip().rpartition(":")
        try:
            with socket.create_connection((host or HOST, int(port)), timeout=timeout):
                return True
        except (OSError, ValueError):
            continue
    return False


def broker_answers(bootstrap: str, timeout: float = 3.0, security: KafkaSecurity | None = None) -> bool:
    """True if an admin ``describe_cluster`` succeeds and reports at least one broker."""
    if not port_accepts(bootstrap):  # cheap pre-check; spares aiokafka's connection-error logging
        return False
    try:
        return bool(describe_cluster(bootstrap, timeout, security).get("brokers"))
    except Exception:  # noqa: BLE001
        return False


def wait_until_answers(bootstrap: str, timeout: float, pid: int | None = None,
                       security: KafkaSecurity | None = None) -> bool:
    """Poll :func:`broker_answers` until it succeeds (True), ``timeout`` passes or ``pid`` dies (False)."""
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or (pid is not None and not pid_alive(pid)):
            return False
        if broker_answers(bootstrap, timeout=min(3.0, max(0.5, remaining)), security=security):
            return True
        time.sleep(0.2)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited, not yet reaped) counts as dead.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def pid_is_broker(pid: int, properties_path: str | os.PathLike) -> bool:
    """True if ``pid`` is alive and is a ``kafka.Kafka`` JVM started with ``properties_path`` (guards pid reuse)."""
    if not pid_alive(pid):
        return False
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return MAIN_CLASS.encode() in argv and str(properties_path).encode() in argv


def _wait_pid_gone(pid: int, timeout: float, proc: subprocess.Popen | None = None) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None:
            if proc.poll() is not None:
                return True
        elif not pid_alive(pid):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)


def terminate_pids(pids: Sequence[int], timeout: float = DEFAULT_STOP_TIMEOUT) -> None:
    """SIGTERM every node of a cluster at once, then wait for each (SIGKILL after ``timeout``).

    At once, not one by one: the last node stopped alone has no quorum left to grant its controlled
    shutdown and waits out the whole timeout (measured: 37 s one by one with a SIGKILL, 9 s at once)."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for pid in pids:
        terminate_pid(pid, max(0.0, deadline - time.monotonic()))


def terminate_pid(pid: int, timeout: float = DEFAULT_STOP_TIMEOUT, proc: subprocess.Popen | None = None) -> None:
    """SIGTERM, wait up to ``timeout``, then SIGKILL (and wait for it to be gone)."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    if _wait_pid_gone(pid, timeout, proc):
        return
    log.warning("broker pid %d ignored SIGTERM for %.0fs; sending SIGKILL", pid, timeout)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    if not _wait_pid_gone(pid, 10.0, proc):
        raise KafkaLauncherError(f"broker pid {pid} survived SIGKILL")
