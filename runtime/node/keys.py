"""The cluster's CurveZMQ key pair. Every runtime process of a cluster holds the same pair:
servers use it as their server key, clients as their client key, and the ZAP handler
(runtime.protocol.frames) admits only clients presenting the cluster's public key.

Files in the keys directory (0700): `cluster.public` and `cluster.secret` (0600, Z85 text).
A keys directory or key file that another user owns or may write is refused
(runtime.node.private_paths.UnsafePathError), never used nor written into: keys someone else
planted would let them into the cluster. Every runtime connection needs the keys; without
them, MissingKeysError.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import zmq

from runtime.node import private_paths
from runtime.errors import RuntimeSystemError

PUBLIC_FILE = "cluster.public"
SECRET_FILE = "cluster.secret"


class KeyFileError(RuntimeSystemError):
    def __init__(self, path: Path, reason: str):
        super().__init__(f"cluster key file {path}: {reason}")
        self.path = path
        self.reason = reason


class MissingKeysError(RuntimeSystemError):
    """No cluster key pair where one is needed: every runtime socket is authenticated
    (CurveZMQ), so nothing connects or serves without it."""

    def __init__(self, keys_dir):
        where = f"in {keys_dir}" if keys_dir else "given"
        super().__init__(f"no cluster keys {where} ({PUBLIC_FILE}, {SECRET_FILE}): every "
                         "runtime connection is authenticated with the cluster's CurveZMQ "
                         "keys; use the keys `corral up` put on the node (the head's "
                         "$CORRAL_NODE_DIR/keys), or pass keys_dir=")
        self.keys_dir = None if keys_dir is None else str(keys_dir)

    def __reduce__(self):
        return (MissingKeysError, (self.keys_dir,))


@dataclass(frozen=True)
class ClusterKeys:
    public: bytes  # Z85, 40 bytes
    secret: bytes

    def __repr__(self) -> str:  # never show the secret
        return f"ClusterKeys(public={self.public.decode()!r})"


def _write_private(path: Path, data: bytes) -> None:
    """Write a secret: the file is 0600 before its first byte is written, even when a
    file with wider permissions already stood at `path` (O_CREAT's mode applies only
    to new files, hence the fchmod before truncating and writing)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.ftruncate(fd, 0)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)


def create_cluster_keys(directory: str | os.PathLike) -> ClusterKeys:
    """Generate a new key pair and write it to `directory` (created 0700, files 0600).
    A directory another user owns or may write is refused, not written into."""
    path = private_paths.ensure_dir(directory)
    os.chmod(path, 0o700)
    public, secret = zmq.curve_keypair()
    _write_private(path / PUBLIC_FILE, public)
    _write_private(path / SECRET_FILE, secret)
    return ClusterKeys(public, secret)


def has_cluster_keys(directory: str | os.PathLike | None) -> bool:
    """The directory holds a key pair. One that exists but is not this user's alone
    raises UnsafePathError (answering False would have the head write new keys there)."""
    if directory is None:
        return False
    path = Path(directory)
    if not os.path.lexists(path):
        return False
    private_paths.check_dir(path)
    return (path / PUBLIC_FILE).is_file() and (path / SECRET_FILE).is_file()


def load_cluster_keys(directory: str | os.PathLike | None) -> ClusterKeys:
    """Read the key pair written by create_cluster_keys. MissingKeysError if there is
    none, UnsafePathError if the directory or a file is not this user's alone,
    KeyFileError if a file is unreadable or not a key."""
    if directory is None or not has_cluster_keys(directory):
        raise MissingKeysError(directory)
    path = Path(directory)
    values = []
    for name in (PUBLIC_FILE, SECRET_FILE):
        file = path / name
        try:
            data = private_paths.read_file(file, max_bytes=1024).strip()
        except OSError as error:
            raise KeyFileError(file, error.strerror or str(error)) from error
        if len(data) != 40:
            raise KeyFileError(file, "not a Z85 CurveZMQ key (expected 40 characters)")
        values.append(data)
    return ClusterKeys(values[0], values[1])
