"""The data directories a local node or cluster keeps: which are ours to use or remove, and a cluster's
layout file (``cluster.json``) in them."""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

from meshlog.kafka_local.config import is_valid_cluster_id
from meshlog.kafka_local.settings import DATA_MARKER_NAME, KafkaLauncherError

log = logging.getLogger("meshlog.kafka")

CLUSTER_FILE_NAME = "cluster.json"


def load_cluster_layout(data_dir: str | os.PathLike) -> dict | None:
    """``data_dir/cluster.json`` (cluster id, broker count, each node's id and ports), or None if absent."""
    path = Path(data_dir) / CLUSTER_FILE_NAME
    try:
        layout = json.loads(path.read_text())
        nodes = layout["nodes"]
        if (not is_valid_cluster_id(layout["cluster_id"]) or layout["brokers"] != len(nodes)
                or not all(isinstance(n[k], int) for n in nodes for k in ("node_id", "port", "controller_port"))):
            raise ValueError("inconsistent")
        return layout
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise KafkaLauncherError(f"{path} is unreadable ({e}); remove the data dir to start a new cluster") from None


def claim_data_dir(given: Path | None, what: str) -> Path:
    """``given`` (created if needed; refused if it holds anything not made by meshlog), else a new temp
    dir; marked as meshlog's, so that :func:`remove_data_dir` may delete it."""
    if given is not None:
        if given.exists() and any(given.iterdir()) and not (given / DATA_MARKER_NAME).exists():
            raise KafkaLauncherError(f"{given} is not empty and was not created by meshlog; refusing to use it")
        given.mkdir(parents=True, exist_ok=True)
        d = given
    else:
        d = Path(tempfile.mkdtemp(prefix="meshlog-kafka-" if what == "broker" else f"meshlog-kafka-{what}-"))
    (d / DATA_MARKER_NAME).write_text(f"data directory of a meshlog local Kafka {what}\n")
    return d


def remove_data_dir(path: str | os.PathLike) -> bool:
    """Delete a broker data dir, but only one carrying meshlog's marker file."""
    p = Path(path)
    if not (p / DATA_MARKER_NAME).exists():
        if p.exists():
            log.warning("not removing %s: no %s marker", p, DATA_MARKER_NAME)
        return False
    shutil.rmtree(p, ignore_errors=True)
    return True
