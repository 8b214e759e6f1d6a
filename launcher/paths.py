"""Per-cluster local state: ~/.corral/clusters/<name>/ (keys, known_hosts, logs), 0700."""
from __future__ import annotations

import os
from pathlib import Path


def corral_home() -> Path:
    """~/.corral, or $CORRAL_HOME (tests point it at a temporary directory)."""
    return Path(os.environ.get("CORRAL_HOME") or Path.home() / ".corral")


def cluster_dir(cluster_name: str, create: bool = True) -> Path:
    path = corral_home() / "clusters" / cluster_name
    if create:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(path, 0o700)
    return path


def known_hosts_path(cluster_name: str) -> Path:
    return cluster_dir(cluster_name) / "known_hosts"


def logs_dir(cluster_name: str) -> Path:
    path = cluster_dir(cluster_name) / "logs"
    path.mkdir(exist_ok=True, mode=0o700)
    return path


def node_log_path(cluster_name: str, node_id: str) -> Path:
    return logs_dir(cluster_name) / f"{node_id}.log"


def keys_dir(cluster_name: str) -> Path:
    """Where the cluster's runtime (CurveZMQ) keys live on this machine."""
    path = cluster_dir(cluster_name) / "keys"
    path.mkdir(exist_ok=True, mode=0o700)
    return path


def write_private(path: Path | str, data: bytes | str) -> None:
    """Write a file that only its owner can read (created 0600, never world-readable)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = data.encode() if isinstance(data, str) else data
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(payload)
    os.chmod(path, 0o600)
