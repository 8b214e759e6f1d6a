"""Per-cluster local state: ~/.corral/clusters/<name>/ (keys, known_hosts, logs), 0700."""
from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import Any, Callable


def corral_home() -> Path:
    """~/.corral, or $CORRAL_HOME (tests point it at a temporary directory)."""
    return Path(os.environ.get("CORRAL_HOME") or Path.home() / ".corral")


def cluster_dir(cluster_name: str, create: bool = True) -> Path:
    """The cluster's directory; with create, made (with ~/.corral and clusters/) 0700.
    A directory that cannot be made raises ClusterError naming it."""
    path = corral_home() / "clusters" / cluster_name
    if create:
        private_dir(path, levels=3)
    return path


def private_dir(path: Path, levels: int = 1) -> Path:
    """Make `path` and its `levels - 1` parents (those this call creates) mode 0700;
    anything above them is made with the default mode. Returns path."""
    chain = [path]
    for _ in range(levels - 1):
        chain.insert(0, chain[0].parent)
    try:
        chain[0].parent.mkdir(parents=True, exist_ok=True)
        for directory in chain:
            try:
                directory.mkdir(mode=0o700)
            except FileExistsError:
                if not directory.is_dir():
                    raise NotADirectoryError(20, "Not a directory", str(directory)) \
                        from None
                continue
            os.chmod(directory, 0o700)  # the umask may have taken bits off mkdir's mode
    except OSError as error:
        from launcher.errors import ClusterError
        raise ClusterError(f"cannot create the directory {path}: "
                           f"{error.strerror or error}"
                           + (f" ({error.filename})" if error.filename
                              and str(error.filename) != str(path) else "")) from error
    return path


def known_hosts_path(cluster_name: str) -> Path:
    return cluster_dir(cluster_name) / "known_hosts"


def logs_dir(cluster_name: str) -> Path:
    return private_dir(cluster_dir(cluster_name) / "logs")


def node_log_path(cluster_name: str, node_id: str) -> Path:
    return logs_dir(cluster_name) / f"{node_id}.log"


def keys_dir(cluster_name: str) -> Path:
    """Where the cluster's runtime (CurveZMQ) keys live on this machine."""
    return private_dir(cluster_dir(cluster_name) / "keys")


def write_private(path: Path | str, data: bytes | str) -> None:
    """Write a file that only its owner can read (0600), atomically: see
    write_json_atomic. A full disk leaves the old file (or none), never a torn one."""
    payload = data.encode() if isinstance(data, str) else data
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _replace(path, lambda handle: handle.write(payload))


def write_json_atomic(path: Path | str, data: Any, indent: int | None = None) -> None:
    """Replace `path` with `data` as JSON, owner-only (0600), atomically: a unique temp
    file in the same directory (two writers never share one), fsync, then rename. A
    reader sees the old content or the new, never a torn file."""
    text = json.dumps(data, indent=indent, sort_keys=True)
    _replace(Path(path), lambda handle: handle.write(text.encode("utf-8")))


def _replace(path: Path, write: Callable[[Any], Any]) -> None:
    """Write a unique 0600 temp file beside `path` with `write(handle)`, fsync it, rename
    it over `path`; on any failure the temp file is removed and the error raised."""
    temp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
