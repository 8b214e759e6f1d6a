"""Host keys pinned on first contact, per cluster, in ~/.corral/clusters/<name>/known_hosts.

The first time we reach a host its key is written down (file 0600, lines in OpenSSH's
known_hosts format: `host keytype base64`); from then on only that key is accepted, and a
different one raises HostKeyMismatchError naming the host and the file. Updates take a
file lock, so many threads and processes (the laptop's `up` and the head's monitor) can
pin hosts at once without losing lines.
"""
from __future__ import annotations

import base64
import os
from pathlib import Path

import filelock
import paramiko

from launcher import paths
from launcher.errors import HostKeyMismatchError


def fingerprint(key: paramiko.PKey) -> str:
    """SHA256 fingerprint as OpenSSH prints it, e.g. `SHA256:abc...`."""
    import hashlib
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def host_entry_name(host: str, port: int) -> str:
    """The known_hosts name of a host: `host`, or `[host]:port` off port 22."""
    return host if port == 22 else f"[{host}]:{port}"


class HostKeyStore:
    """The pinned keys of one cluster."""

    def __init__(self, path: Path | str):
        self.path = Path(path)
        self._lock = filelock.FileLock(str(self.path) + ".lock", timeout=30)

    @classmethod
    def for_cluster(cls, cluster_name: str) -> "HostKeyStore":
        return cls(paths.known_hosts_path(cluster_name))

    def _read(self) -> dict[tuple[str, str], str]:
        """{(host name, key type): base64 key} from the file."""
        entries: dict[tuple[str, str], str] = {}
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return entries
        for line in text.splitlines():
            fields = line.split()
            if len(fields) >= 3 and not line.startswith("#"):
                for name in fields[0].split(","):
                    entries[(name, fields[1])] = fields[2]
        return entries

    def pinned(self, name: str) -> dict[str, str]:
        """{key type: base64} pinned for a host name."""
        return {key_type: blob for (host, key_type), blob in self._read().items()
                if host == name}

    def check_or_pin(self, name: str, key: paramiko.PKey) -> bool:
        """Accept `key` for `name` if it is the pinned one, or pin it if the host has no
        key yet. Returns True when the key was newly pinned. Raises HostKeyMismatchError
        when the host has a different pinned key."""
        key_type, blob = key.get_name(), key.get_base64()
        known = self.pinned(name)
        if known.get(key_type) == blob:
            return False
        with self._lock:
            known = self.pinned(name)  # re-read under the lock: another pinner may have won
            if known.get(key_type) == blob:
                return False
            if known:
                expected_type, expected_blob = next(iter(known.items()))
                expected = fingerprint(paramiko.PKey.from_type_string(
                    expected_type, base64.b64decode(expected_blob)))
                raise HostKeyMismatchError(name, str(self.path),
                                           f"{expected_type} {expected}",
                                           f"{key_type} {fingerprint(key)}")
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            with os.fdopen(fd, "a") as handle:
                handle.write(f"{name} {key_type} {blob}\n")
            os.chmod(self.path, 0o600)
            return True

    def forget(self, name: str) -> None:
        """Drop a host's pinned keys (after a host was legitimately re-created)."""
        with self._lock:
            if not self.path.exists():
                return
            kept = [line for line in self.path.read_text().splitlines()
                    if not line.split() or name not in line.split()[0].split(",")]
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write("".join(line + "\n" for line in kept))


class PinningPolicy(paramiko.MissingHostKeyPolicy):
    """paramiko policy: the client holds no keys of its own, so every connection comes
    here; the key is checked against (or pinned into) the cluster's known_hosts.

    With an `alias` (a cloud node's id) the key is pinned under that name instead of the
    address: clouds hand a released private IP to the next machine, whose key would
    otherwise be refused as a "changed" key, while a node id names one machine for good."""

    def __init__(self, store: HostKeyStore, alias: str | None = None):
        self.store = store
        self.alias = alias

    def missing_host_key(self, client, hostname, key):
        self.store.check_or_pin(self.alias or hostname, key)
