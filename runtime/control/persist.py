"""What the control service keeps on disk, so that one restarted after a crash (by the
head's supervisor, runtime.node.supervisor) resumes the cluster instead of starting empty.

Kept (the state nobody else can give back): the node table (ids, addresses, resources,
alive, draining, removed), the drivers and the recently dead ones, the actor directory
(named actors, and where every published actor runs), the KV store, the node types (and
their max_workers), the request_resources bundles and the nodes removed by the
autoscaler (which must stay out).
Not kept (rebuilt within a heartbeat): each node's available resources, idle time and
queued demand, and each driver's pending demand. A restored node counts as alive with a
fresh heartbeat deadline: an agent that is still there heartbeats at once and goes on
(its connection to the old service reconnects by itself, same port, same keys), and one
that is gone is declared dead after the heartbeat timeout, as any node would be.

The file, `<session>/control.state.json` (0600, in the node's private session dir), is
replaced atomically (temp file + rename) after each batch of requests that changed
something, before their replies leave, so an acknowledged change survives a kill -9 of
the service. It is not fsync-ed: it has to survive the process, not the machine (a
rebooted head starts a fresh cluster). It names the cluster key it belongs to; a file of
another cluster (or damaged, or another version) is set aside with a warning, never
half-used.

Values are JSON with bytes (ids, identities) tagged as {"$bytes": base64}; tables are
lists of [key, value] pairs (actor ids are bytes). A KV entry that is none of JSON's
types or bytes is not kept (logged). Saving 100 nodes and 1,000 actors takes ~2 ms
(bench/recovery.py): the cost grows with the cluster, and is paid once per batch of
changing requests, not per request.
"""
from __future__ import annotations

import base64
import json
import logging
import os
import time
from pathlib import Path

from runtime.control.records import DriverEntry, NodeEntry
from runtime.node import private_paths

log = logging.getLogger("corral.control")
STATE_FILE = "control.state.json"
STATE_VERSION = 1
MAX_STATE_BYTES = 512 << 20
DEAD_DRIVERS_KEPT = 1000


class UnencodableError(ValueError):
    """A value the state file cannot hold (not JSON, not bytes)."""


def _json_default(value):
    """json.dumps' hook for what JSON has no type for: bytes are tagged, the rest is
    refused."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"$bytes": base64.b64encode(bytes(value)).decode("ascii")}
    raise UnencodableError(f"a {type(value).__name__} cannot be kept in the state file")


def _object_hook(obj: dict):
    if len(obj) == 1 and "$bytes" in obj:
        return base64.b64decode(obj["$bytes"])
    return obj


def encode(value) -> str:
    """JSON text of `value`, bytes tagged (see the module docstring). Tables whose keys
    are not strings go in as [key, value] pairs (snapshot does that)."""
    return json.dumps(value, separators=(",", ":"), default=_json_default)


def decode(text):
    return json.loads(text, object_hook=_object_hook)


# Written whole or not at all; not fsync-ed (see the module docstring).
write_private_atomic = private_paths.write_private_atomic


def state_path(session_dir: Path) -> Path:
    return Path(session_dir) / STATE_FILE


# ------------------------------------------------------------------------ snapshot

_NODE_KEPT = ("node_id", "node_type", "address", "ipc", "hostname", "alive", "identity",
              "resources_total", "draining")


def snapshot(service, cluster_key: str) -> dict:
    """The state of a ControlService (runtime.control.service) worth keeping: plain data, keyed
    tables as [key, value] pairs (actor ids are bytes)."""
    now = time.monotonic()
    nodes = []
    for node in service.nodes.values():
        kept = {key: getattr(node, key) for key in _NODE_KEPT}
        kept["removed"] = node.removed
        kept["drain_left_s"] = max(0.0, node.drain_until - now) if node.draining else 0.0
        nodes.append(kept)
    kv = []
    for key, value in service.kv.items():
        try:
            encode([key, value])
        except (UnencodableError, TypeError, ValueError) as error:
            log.warning("KV key %.100r is not kept across restarts: %s", key, error)
            continue
        kv.append([key, value])
    return {
        "version": STATE_VERSION, "cluster_key": cluster_key, "saved_at_s": time.time(),
        "nodes": nodes,
        "drivers": [[driver_id, driver.identity]
                    for driver_id, driver in service.drivers.items()],
        "dead_drivers": service.dead_drivers[-DEAD_DRIVERS_KEPT:],
        "actors": list(service.actors.items()),
        "actor_nodes": list(service.actor_nodes.items()),
        "kv": kv, "node_types": list(service.node_types.items()),
        "node_type_max_workers": list(service.node_type_max_workers.items()),
        "request_bundles": service.request_bundles,
        "removed_nodes": sorted(service.removed_nodes)}


def save(service, path: Path, cluster_key: str) -> None:
    """Write the service's state to `path` (OSError when the disk refuses it)."""
    write_private_atomic(path, encode(snapshot(service, cluster_key)).encode("utf-8"))


class StateFileUnusable(ValueError):
    """The state file is damaged, of another cluster, or of another version."""


def load(path: Path, cluster_key: str) -> dict | None:
    """The decoded state in `path`; None when there is none. StateFileUnusable when it
    cannot be used; UnsafePathError when another user could have written it."""
    try:
        raw = private_paths.read_file(path, MAX_STATE_BYTES)
    except FileNotFoundError:
        return None
    try:
        data = decode(raw)
    except (ValueError, TypeError) as error:
        raise StateFileUnusable(f"not a state file ({error})") from None
    if not isinstance(data, dict) or data.get("version") != STATE_VERSION:
        raise StateFileUnusable(f"not a version {STATE_VERSION} state file")
    if data.get("cluster_key") != cluster_key:
        raise StateFileUnusable("written by another cluster (another key)")
    return data


def restore(service, data: dict) -> None:
    """Put a loaded state into a fresh ControlService (see the module docstring for what
    is rebuilt from heartbeats instead). All or nothing: StateFileUnusable leaves the
    service as it was."""
    now = time.monotonic()
    try:
        nodes = {}
        for kept in data.get("nodes") or ():
            identity = kept.get("identity")
            node = NodeEntry(
                node_id=str(kept["node_id"]), node_type=kept.get("node_type"),
                address=kept.get("address"), ipc=kept.get("ipc"),
                hostname=kept.get("hostname"),
                identity=None if identity is None else bytes(identity),
                resources_total=dict(kept.get("resources_total") or {}),
                alive=bool(kept.get("alive")), idle_since_s=None, last_heartbeat=now,
                draining=bool(kept.get("draining")), drain_since=now,
                drain_until=now + float(kept.get("drain_left_s", 0.0) or 0.0),
                removed=bool(kept.get("removed")))
            nodes[node.node_id] = node
        tables = {
            "nodes": nodes,
            "drivers": {str(driver_id): DriverEntry(bytes(identity), last_heartbeat=now)
                        for driver_id, identity in data.get("drivers") or ()},
            "dead_drivers": [str(driver) for driver in data.get("dead_drivers") or ()],
            "actors": {str(name): dict(info) for name, info in data.get("actors") or ()},
            "actor_nodes": {bytes(actor_id): dict(info)
                            for actor_id, info in data.get("actor_nodes") or ()},
            "kv": {key: value for key, value in data.get("kv") or ()},
            "node_types": {str(name): dict(resources) for name, resources
                           in data.get("node_types") or ()},
            "node_type_max_workers": {str(name): int(limit) for name, limit
                                      in data.get("node_type_max_workers") or ()},
            "request_bundles": [dict(bundle) for bundle in data.get("request_bundles") or ()],
            "removed_nodes": {str(node_id) for node_id in data.get("removed_nodes") or ()}}
    except (TypeError, ValueError, KeyError, AttributeError) as error:
        raise StateFileUnusable(f"a damaged entry ({type(error).__name__}: {error})") \
            from None
    for name, table in tables.items():
        setattr(service, name, table)


def set_aside(path: Path, why: str) -> Path | None:
    """Move an unusable state file out of the way (kept for a post-mortem) and log it."""
    target = Path(path).with_name(f"{Path(path).name}.unusable")
    try:
        os.replace(path, target)
    except OSError as error:
        log.warning("the control state %s is unusable (%s) and could not be moved "
                    "aside: %s", path, why, error)
        return None
    log.warning("the control state %s is unusable (%s): moved to %s; starting empty "
                "(agents register again by themselves)", path, why, target)
    return target


class PersistMixin:
    """Part of ControlService (runtime.control.service): saving and resuming its state."""

    state_file: Path | None
    cluster_key: str
    dirty: bool
    save_failure: str | None

    def save_state(self) -> None:
        """Write the state file if something changed. A disk that refuses it is logged
        once per cause; the service goes on, and tries again after the next change or
        liveness check."""
        if not self.dirty or self.state_file is None:
            return
        try:
            save(self, self.state_file, self.cluster_key)
        except OSError as error:
            text = error.strerror or str(error)
            if text != self.save_failure:
                log.warning("cannot save the control state to %s: %s (kept in memory; "
                            "a restarted service would miss what changed since)",
                            self.state_file, text)
            self.save_failure = text
            return
        if self.save_failure is not None:
            log.info("the control state %s is saved again", self.state_file)
        self.dirty, self.save_failure = False, None

    def resume(self) -> bool:
        """Take back the saved state (True); none, or an unusable file (set aside,
        logged): start empty (False)."""
        try:
            data = load(self.state_file, self.cluster_key)
            if data is None:
                log.warning("no saved state at %s: resuming empty (agents register "
                            "again by themselves)", self.state_file)
                return False
            restore(self, data)
        except StateFileUnusable as error:
            set_aside(self.state_file, str(error))
            return False
        log.info("resumed from %s: %d nodes, %d drivers, %d named actors, %d actors "
                 "placed, %d node types", self.state_file, len(self.nodes),
                 len(self.drivers), len(self.actors), len(self.actor_nodes),
                 len(self.node_types))
        return True
