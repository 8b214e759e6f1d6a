"""The process provider's node records (`nodes/<node_id>/node.json`): reading them with
their shape checked, and describing the ones that cannot be read.

A record is written only whole (launcher.paths.write_json_atomic, and a new node's
directory appears with its record already inside), so a record that is missing,
truncated or of the wrong shape was damaged from outside (a disk, a person, an old
corral). Such a record is never skipped silently: reading it raises StateFileError
naming the file, and the provider lists the node as damaged where it must act on it
(`down` removes it and its processes, `up` replaces it).
"""
from __future__ import annotations

import json
from pathlib import Path

from launcher import tags as T
from launcher.errors import StateFileError
from launcher.node_states import PROVIDER_STATES

NODE_FILE = "node.json"
MAX_RECORD_BYTES = 1 << 20
KNOWN_STATES = PROVIDER_STATES
FIX = "`corral down` removes the node and its processes; `corral up` replaces it"


def read_record(node_dir: Path, cluster_name: str) -> dict:
    """The node's record, checked. Raises StateFileError (named path) when it is
    missing, unreadable, not JSON or of the wrong shape; FileNotFoundError only when
    the node's directory itself is gone (removed meanwhile: no node)."""
    path = node_dir / NODE_FILE
    try:
        with open(path, "rb") as handle:
            raw = handle.read(MAX_RECORD_BYTES + 1)
    except FileNotFoundError:
        if not node_dir.is_dir():
            raise
        raise StateFileError(str(path), "missing (the node's directory has no record)",
                             FIX) from None
    except OSError as error:
        raise StateFileError(str(path), f"cannot be read: {error.strerror or error}",
                             FIX) from None
    if len(raw) > MAX_RECORD_BYTES:
        raise StateFileError(str(path), f"larger than {MAX_RECORD_BYTES} bytes", FIX)
    try:
        record = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as error:
        what = "empty" if not raw.strip() else f"not valid JSON (truncated?): {error}"
        raise StateFileError(str(path), what, FIX) from None
    problem = shape_problem(record, node_dir.name, cluster_name)
    if problem:
        raise StateFileError(str(path), problem, FIX)
    return record


def shape_problem(record, node_id: str, cluster_name: str) -> str | None:
    """What is wrong with a decoded record, or None."""
    if not isinstance(record, dict):
        return f"expected a JSON object, found {type(record).__name__}"
    expected = {"id": str, "kind": str, "node_type": str, "state": str, "tags": dict}
    for key, kind in expected.items():
        if key not in record:
            return f"no {key!r}"
        if not isinstance(record[key], kind):
            return f"{key!r} is a {type(record[key]).__name__}, not a {kind.__name__}"
    if record["id"] != node_id:
        return f"'id' is {record['id']!r} in the directory of node {node_id!r}"
    if record["kind"] not in (T.KIND_HEAD, T.KIND_WORKER):
        return f"'kind' is {record['kind']!r}"
    if record["state"] not in KNOWN_STATES:
        return f"'state' is {record['state']!r}"
    tags = record["tags"]
    if not all(isinstance(key, str) and isinstance(value, str) for key, value in tags.items()):
        return "'tags' holds something other than text"
    if tags.get(T.TAG_CLUSTER_NAME) != cluster_name:
        return (f"its cluster tag is {tags.get(T.TAG_CLUSTER_NAME)!r}, not {cluster_name!r} "
                f"(the cluster whose directory it is in)")
    if tags.get(T.TAG_NODE_KIND) != record["kind"]:
        return f"its kind tag {tags.get(T.TAG_NODE_KIND)!r} differs from 'kind'"
    if record["kind"] == T.KIND_HEAD and not tags.get(T.TAG_HEAD_PORT, "").isdigit():
        return f"the head's {T.TAG_HEAD_PORT} tag is {tags.get(T.TAG_HEAD_PORT)!r}"
    return None


def kind_from_id(node_id: str, cluster_name: str) -> str:
    """A node's kind from its id (`<cluster>-<kind>-<hex>`, as create_nodes names it),
    for a node whose record cannot say."""
    return T.KIND_HEAD if node_id.startswith(f"{cluster_name}-{T.KIND_HEAD}-") \
        else T.KIND_WORKER
