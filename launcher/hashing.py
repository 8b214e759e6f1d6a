"""The hashes that decide what a repeated `corral up` does to an existing node.

- launch hash: what the node *is* (its type's node_config and the provider essentials).
  A change means the node must be replaced.
- runtime hash: what runs *on* it (every command, the contents of the file mounts, the
  cluster keys, the node's resources, where the head is). A change means: sync files
  again, re-run setup, restart.
- config hash (head only): the normalised config the head's autoscaler reads. A change
  alone only re-uploads `cluster.yaml`; nothing is re-run.

All three are stored in the node's tags, so any machine can compare them.
"""
from __future__ import annotations

import fnmatch
import hashlib
import json
import os
from typing import Any, Iterable, Mapping

from launcher.frozen import thaw
from launcher.tags import KIND_HEAD

# Stored next to TAG_LAUNCH_HASH / TAG_RUNTIME_HASH (launcher.tags), head node only.
TAG_CONFIG_HASH = "corral-config-hash"

# Provider keys that say where and how a node is made. Keys that only list hosts
# (head_ip, worker_ips) or tune the launcher do not make an existing node different.
PROVIDER_ESSENTIAL_KEYS = ("type", "region", "availability_zone", "zone", "project_id")

_HASH_LENGTH = 16  # hex digits kept: short enough for tags, long enough to never collide


def _digest(data: Any) -> str:
    text = json.dumps(thaw(data), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:_HASH_LENGTH]


def launch_hash(config, node_type: str) -> str:
    """Identity of a node of `node_type`: its node_config and the provider essentials."""
    provider = {key: config.provider[key] for key in PROVIDER_ESSENTIAL_KEYS
                if key in config.provider}
    node_config = config.available_node_types[node_type].node_config
    return _digest({"provider": provider, "node_config": node_config})


def is_excluded(relative_path: str, patterns: Iterable[str]) -> bool:
    """rsync_exclude semantics: a pattern matches a path's name or its relative path, and
    excluding a directory excludes everything below it."""
    parts = relative_path.replace(os.sep, "/").strip("/").split("/")
    for pattern in patterns:
        pattern = pattern.rstrip("/")
        anchored = pattern.startswith("/")
        pattern = pattern.lstrip("/")
        for depth in range(1, len(parts) + 1):
            prefix = "/".join(parts[:depth])
            if fnmatch.fnmatchcase(prefix, pattern):
                return True
            if not anchored and "/" not in pattern and fnmatch.fnmatchcase(parts[depth - 1],
                                                                          pattern):
                return True
    return False


def tree_digest(local_path: str, exclude: Iterable[str] = ()) -> str:
    """Checksum of a file or directory tree: relative names, file modes and contents.
    A missing path has a digest of its own (so creating it later is a change)."""
    exclude = tuple(exclude)
    path = os.path.expanduser(local_path)
    digest = hashlib.sha256()
    if not os.path.exists(path):
        digest.update(b"missing")
        return digest.hexdigest()[:_HASH_LENGTH]
    if os.path.isfile(path):
        _add_file(digest, "", path)
        return digest.hexdigest()[:_HASH_LENGTH]
    for root, dirs, files in os.walk(path):
        relative_root = os.path.relpath(root, path)
        relative_root = "" if relative_root == "." else relative_root
        dirs[:] = sorted(name for name in dirs
                         if not is_excluded(os.path.join(relative_root, name), exclude))
        for name in sorted(files):
            relative = os.path.join(relative_root, name)
            if not is_excluded(relative, exclude):
                _add_file(digest, relative, os.path.join(root, name))
    return digest.hexdigest()[:_HASH_LENGTH]


def _add_file(digest, relative: str, path: str) -> None:
    digest.update(relative.encode() + b"\0")
    digest.update(str(os.stat(path).st_mode & 0o777).encode() + b"\0")
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    digest.update(b"\0")


def file_mounts_digest(config) -> dict[str, str]:
    """{remote path: checksum of the local contents} for every file mount."""
    return {remote: tree_digest(local, config.rsync_exclude)
            for remote, local in sorted(config.file_mounts.items())}


def runtime_hash(config, node_kind: str, node_type: str, *, head_ip: str | None,
                 head_port: int | str | None, mounts_digest: Mapping[str, str] | None = None,
                 keys_digest: str | None = None) -> str:
    """What runs on a node: a change means re-sync, re-run setup and restart.

    Includes where the head is (CORRAL_HEAD_IP/PORT are part of every command's
    environment), so a replaced head restarts its workers."""
    is_head = node_kind == KIND_HEAD
    commands = {
        "initialization": config.initialization_commands,
        "setup": config.setup_commands,
        "kind_setup": config.head_setup_commands if is_head else config.worker_setup_commands,
        "start": config.head_start_commands if is_head else config.worker_start_commands,
    }
    return _digest({
        "cluster": config.cluster_name,
        "kind": node_kind,
        "commands": commands,
        "file_mounts": dict(mounts_digest if mounts_digest is not None
                            else file_mounts_digest(config)),
        "rsync_exclude": config.rsync_exclude,
        "keys": keys_digest,
        "resources": config.available_node_types[node_type].resources,
        "head": [head_ip, str(head_port)],
    })


def config_hash(config_document: Mapping[str, Any]) -> str:
    """Checksum of the normalised config as uploaded to the head (`cluster.yaml`)."""
    return _digest(config_document)
