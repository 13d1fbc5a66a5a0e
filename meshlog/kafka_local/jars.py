"""The tools (java, mvn) and the one-time fetch of Kafka's jars from Maven Central into the cache."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Iterator

from meshlog.kafka_local.config import jars_ready, missing_jars, parse_java_major, render_pom, write_marker
from meshlog.kafka_local.settings import KAFKA_VERSION, KafkaLauncherError, MIN_JAVA, kafka_libs_dir, kafka_version_dir

log = logging.getLogger("meshlog.kafka")


def find_java(java: str | None = None) -> str:
    """Path of the ``java`` to use: argument, else ``$JAVA_HOME/bin/java``, else ``java`` on PATH."""
    if java:
        found = shutil.which(java)
        if not found:
            raise KafkaLauncherError(f"java executable {java!r} not found")
        return found
    jh = os.environ.get("JAVA_HOME")
    if jh and os.access(Path(jh) / "bin" / "java", os.X_OK):
        return str(Path(jh) / "bin" / "java")
    found = shutil.which("java")
    if not found:
        raise KafkaLauncherError(
            f"'java' not found: Kafka {KAFKA_VERSION} needs Java {MIN_JAVA}+ "
            "(install e.g. openjdk-17-jre-headless, or set JAVA_HOME)"
        )
    return found


def check_java(java: str | None = None) -> tuple[str, int]:
    """Return ``(java_path, major_version)``; raise if missing or older than Java 17."""
    path = find_java(java)
    try:
        out = subprocess.run([path, "-version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise KafkaLauncherError(f"could not run {path} -version: {e}") from e
    try:
        major = parse_java_major(out.stderr + out.stdout)
    except ValueError as e:
        raise KafkaLauncherError(str(e)) from e
    if major < MIN_JAVA:
        raise KafkaLauncherError(f"{path} is Java {major}; Kafka {KAFKA_VERSION} needs Java {MIN_JAVA} or newer")
    return path, major


def find_mvn(mvn: str | None = None) -> str:
    found = shutil.which(mvn or "mvn")
    if not found:
        raise KafkaLauncherError(
            "'mvn' (Apache Maven) not found: it is needed once to fetch the Kafka jars "
            f"into {kafka_libs_dir()} (install maven, or pre-populate that cache)"
        )
    return found


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path`` (created if need be) for the block: one jar fetch, or one state-file change,
    at a time across processes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def ensure_kafka_jars(
    version: str = KAFKA_VERSION,
    cache_dir: str | os.PathLike | None = None,
    *,
    mvn: str | None = None,
    maven_repo_local: str | os.PathLike | None = None,
    timeout: float = 900.0,
) -> Path:
    """Return the directory holding a complete Kafka broker classpath, fetching it first if needed.

    A cached, complete fetch (marker present) is returned without running
    ``mvn`` or touching the network.  Otherwise the jars are resolved into a
    temporary directory next to the cache and renamed into place together
    with the marker, so an interrupted fetch is never used and is redone.
    ``maven_repo_local`` passes ``-Dmaven.repo.local`` (e.g. an empty dir to
    force downloads).
    """
    vdir = kafka_version_dir(version, Path(cache_dir) if cache_dir else None)
    libs = vdir / "libs"
    if jars_ready(libs):
        return libs
    with file_lock(vdir / ".fetch.lock"):
        if jars_ready(libs):  # another process finished while we waited
            return libs
        mvn_path = find_mvn(mvn)
        log.info("fetching Kafka %s jars with Maven into %s", version, libs)
        started = time.monotonic()
        tmp = Path(tempfile.mkdtemp(prefix=".fetch-", dir=vdir))
        try:
            (tmp / "pom.xml").write_text(render_pom(version))
            out_dir = tmp / "libs"
            cmd = [
                mvn_path, "-q", "-B", "-Dstyle.color=never",
                "-f", str(tmp / "pom.xml"),
                "dependency:copy-dependencies",
                "-DincludeScope=runtime",
                f"-DoutputDirectory={out_dir}",
            ]
            if maven_repo_local:
                cmd.append(f"-Dmaven.repo.local={maven_repo_local}")
            try:
                res = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True, timeout=timeout)
            except subprocess.TimeoutExpired as e:
                raise KafkaLauncherError(f"mvn did not finish within {timeout:.0f}s fetching Kafka jars") from e
            if res.returncode != 0:
                output = "\n".join((res.stdout + "\n" + res.stderr).strip().splitlines()[-30:])
                raise KafkaLauncherError(f"mvn failed (exit {res.returncode}) fetching Kafka {version} jars:\n{output}")
            names = [p.name for p in out_dir.glob("*.jar")] if out_dir.is_dir() else []
            missing = missing_jars(names, version)
            if missing:
                raise KafkaLauncherError(f"mvn finished but the Kafka classpath is incomplete; missing {missing}")
            write_marker(out_dir)
            if libs.exists():  # a stale/incomplete earlier attempt
                shutil.rmtree(libs)
            os.replace(out_dir, libs)
            os.replace(tmp / "pom.xml", vdir / "pom.xml")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        log.info("fetched %d jars in %.1fs", len(list(libs.glob("*.jar"))), time.monotonic() - started)
        return libs
