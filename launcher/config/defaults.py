"""Everything the loader adds to the user's document before it is validated: Ray's alias
keys mapped to ours, the `local` provider's synthesised node types, and the defaults from
configs/defaults/common.yaml then configs/defaults/<provider type>.yaml.

Merge rules: mappings merge key by key (the user's values win); lists and plain values
are replaced whole; `available_node_types` and `head_node_type` come from a defaults file
only when the user's file has no `available_node_types`.
"""
from __future__ import annotations

import copy
import functools
from typing import Any

import yaml

from launcher import resources

DEFAULTS_DIR = resources.defaults_dir()

# Ray's key -> ours.
ALIASES = {
    "head_start_ray_commands": "head_start_commands",
    "worker_start_ray_commands": "worker_start_commands",
}
# Ray keys corral has no use for, accepted (and dropped, with a notice) only while they
# hold the value that means "off", so Ray's example files load; any other value is an
# unknown-key error that says what to do instead.
RAY_NO_OP_VALUES = {
    "cluster_synced_files": [],
    "file_mounts_sync_continuously": False,
    "rsync_filter": [],
}
NODE_TYPE_KEYS = ("available_node_types", "head_node_type")
LOCAL_HEAD_TYPE = "local.head"
LOCAL_WORKER_TYPE = "local.worker"


@functools.lru_cache(maxsize=None)
def _defaults_file(name: str) -> dict:
    path = DEFAULTS_DIR / f"{name}.yaml"
    if not path.exists():
        return {}
    with open(path, encoding="utf-8") as file:
        data = yaml.safe_load(file)
    return data if isinstance(data, dict) else {}


def defaults_for(provider_type: str | None) -> dict:
    """common.yaml with <provider type>.yaml merged over it (a fresh copy each time)."""
    merged = copy.deepcopy(_defaults_file("common"))
    if provider_type:
        merged = merge_under(merged, copy.deepcopy(_defaults_file(provider_type)))
    return merged


def merge_under(defaults: dict, document: dict) -> dict:
    """`document` with `defaults` filling what it leaves out (see the module docstring)."""
    skipped = NODE_TYPE_KEYS if "available_node_types" in document else ()
    result = {}
    for key, value in document.items():  # the user's order first
        default = defaults.get(key)
        if isinstance(value, dict) and isinstance(default, dict) and key not in skipped:
            result[key] = merge_under(default, value)
        else:
            result[key] = value
    for key, value in defaults.items():
        if key not in result and key not in skipped:
            result[key] = value
    return result


def apply_aliases(document: dict) -> tuple[dict, dict[str, str], list[tuple[str, str]]]:
    """Renames Ray's alias keys. Returns (document, {our key: alias the user wrote},
    conflicts [(alias, our key)] where the user wrote both)."""
    used: dict[str, str] = {}
    conflicts: list[tuple[str, str]] = []
    result = dict(document)
    for alias, ours in ALIASES.items():
        if alias not in result:
            continue
        if ours in result:  # reported by the caller; the alias is not checked again
            conflicts.append((alias, ours))
            del result[alias]
            continue
        result = {(ours if key == alias else key): value for key, value in result.items()}
        used[ours] = alias
    return result, used, conflicts


def drop_ray_no_ops(document: dict) -> tuple[dict, list[str]]:
    """Removes Ray keys that hold their 'off' value; returns (document, keys removed)."""
    dropped = [key for key, off in RAY_NO_OP_VALUES.items()
               if key in document and document[key] == off
               and type(document[key]) is type(off)]
    return {key: value for key, value in document.items() if key not in dropped}, dropped


def synthesise_local(document: dict) -> dict:
    """For `provider.type: local`: without available_node_types, a head type for head_ip
    and a worker type sized to worker_ips (min = max = the number of hosts); without
    max_workers, the number of worker_ips."""
    provider = document.get("provider")
    worker_ips = provider.get("worker_ips", []) if isinstance(provider, dict) else None
    if not isinstance(worker_ips, list):
        return document
    result = dict(document)
    host_count = len(worker_ips)
    if "available_node_types" not in result:
        result["available_node_types"] = {
            LOCAL_HEAD_TYPE: {"node_config": {}, "resources": {},
                              "min_workers": 0, "max_workers": 0},
            LOCAL_WORKER_TYPE: {"node_config": {}, "resources": {},
                                "min_workers": host_count, "max_workers": host_count},
        }
        result.setdefault("head_node_type", LOCAL_HEAD_TYPE)
    result.setdefault("max_workers", host_count)
    return result


def node_type_max_workers(name: str, spec: dict, head_node_type: Any, global_max: Any) -> Any:
    """A node type without max_workers: 0 for the head type, else the cluster's max_workers
    (as in Ray: bounded only by the cluster-wide limit)."""
    if "max_workers" in spec:
        return spec["max_workers"]
    return 0 if name == head_node_type else global_max
