"""The hashes that decide what a repeated `corral up` does to an existing node.

- launch hash: what the node *is* (its type's node_config and the provider essentials).
  A change means the node must be replaced.
- runtime hash: what runs *on* it (every command, the contents of the file mounts, the
  cluster keys, the node's resources, where the head is, and on SSH providers the code
  of the corral shipped there). A change means: ship corral if it is new, sync files
  again, re-run setup, restart.
- config hash (head only): the normalised config the head's autoscaler reads. A change
  alone only re-uploads `cluster.yaml`; nothing is re-run.

All three are stored in the node's tags, so any machine can compare them.
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Iterable, Mapping

from launcher.config.frozen import thaw
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


def tree_digest(local_path: str, exclude: Iterable[str] = ()) -> str:
    """Checksum of a file or directory tree as a sync would copy it (same walk and
    rsync_exclude semantics as launcher.ssh.file_sync): relative names, modes, contents.
    A missing path has a digest of its own (so creating it later is a change)."""
    from launcher.ssh.file_sync import plan_local_source, sha256_file
    digest = hashlib.sha256()
    path = os.path.expanduser(local_path)
    if not os.path.exists(path):
        digest.update(b"missing")
        return digest.hexdigest()[:_HASH_LENGTH]
    plan = plan_local_source(path, "/", list(exclude))
    for directory in plan.dirs:
        digest.update(b"d\0" + directory.encode() + b"\0")
    for entry in plan.files:
        digest.update(f"f\0{entry.rel}\0{entry.mode:o}\0{sha256_file(entry.source)}\0"
                      .encode())
    return digest.hexdigest()[:_HASH_LENGTH]


def file_mounts_digest(config) -> dict[str, str]:
    """{remote path: checksum of the local contents} for every file mount."""
    return {remote: tree_digest(local, config.rsync_exclude)
            for remote, local in sorted(config.file_mounts.items())}


# The parts of the runtime hash, stored too (TAG_RUNTIME_PARTS) so `up` can say which
# part changed: {part: what it means to a user}.
TAG_RUNTIME_PARTS = "corral-runtime-parts"
RUNTIME_PARTS = {"setup": "setup commands", "start": "start commands",
                 "files": "file mount contents", "keys": "cluster keys",
                 "resources": "node resources", "head": "head address",
                 "corral": "corral's code"}
_PART_LENGTH = 8


def runtime_parts(config, node_kind: str, node_type: str, *, head_ip: str | None,
                  head_port: int | str | None, mounts_digest: Mapping[str, str] | None = None,
                  keys_digest: str | None = None,
                  corral_digest: str | None = None) -> dict[str, str]:
    """A short checksum per part of what runs on a node (see runtime_hash). The
    `corral` part (launcher.ship.stage.corral_digest) only for nodes corral ships to."""
    is_head = node_kind == KIND_HEAD
    parts = {
        "setup": [config.cluster_name, node_kind, config.initialization_commands,
                  config.setup_commands,
                  config.head_setup_commands if is_head else config.worker_setup_commands],
        "start": config.head_start_commands if is_head else config.worker_start_commands,
        "files": [dict(mounts_digest if mounts_digest is not None
                       else file_mounts_digest(config)), config.rsync_exclude],
        "keys": keys_digest,
        "resources": config.available_node_types[node_type].resources,
        "head": [head_ip, str(head_port)],
    }
    if corral_digest is not None:
        parts["corral"] = corral_digest
    return {name: _digest(value)[:_PART_LENGTH] for name, value in parts.items()}


def runtime_hash(config, node_kind: str, node_type: str, *, head_ip: str | None,
                 head_port: int | str | None, mounts_digest: Mapping[str, str] | None = None,
                 keys_digest: str | None = None, corral_digest: str | None = None) -> str:
    """What runs on a node: a change means re-sync, re-run setup and restart.

    Includes where the head is (CORRAL_HEAD_IP/PORT are part of every command's
    environment), so a replaced head restarts its workers."""
    return hash_of_parts(runtime_parts(config, node_kind, node_type, head_ip=head_ip,
                                       head_port=head_port, mounts_digest=mounts_digest,
                                       keys_digest=keys_digest,
                                       corral_digest=corral_digest))


def hash_of_parts(parts: Mapping[str, str]) -> str:
    """The runtime hash from its parts (runtime_parts)."""
    return _digest(parts)


def encode_parts(parts: Mapping[str, str]) -> str:
    return ",".join(f"{name}={value}" for name, value in parts.items())


def changed_parts(stored: str | None, parts: Mapping[str, str]) -> list[str]:
    """What changed, in words, between a stored TAG_RUNTIME_PARTS value and `parts`
    (empty when nothing was stored, e.g. a node bootstrapped by an older corral)."""
    if not stored:
        return []
    old = dict(item.split("=", 1) for item in stored.split(",") if "=" in item)
    return [RUNTIME_PARTS.get(name, name) for name, value in parts.items()
            if old.get(name) != value]


def config_hash(config_document: Mapping[str, Any]) -> str:
    """Checksum of the normalised config as uploaded to the head (`cluster.yaml`)."""
    return _digest(config_document)
