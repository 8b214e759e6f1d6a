"""The `process` provider: each node is a group of processes on this machine.

A node is a directory `~/.corral/clusters/<name>/nodes/<node_id>/` holding `node.json`
(kind, type, tags, state, creation time). Files are replaced atomically (temp + rename)
under a per-cluster file lock, so every corral process on this machine (the laptop's
`corral up`, the head's autoscaler) reads the same truth. Listing reads files only.

Commands run through a LocalRunner with cwd = the node directory and
CORRAL_NODE_DIR = the node directory; terminating a node stops every process whose
environment carries that CORRAL_NODE_DIR (daemons included) or whose PID the runtime
recorded under `session/`, then removes the directory.

The head node gets a free TCP port on 127.0.0.1 for the cluster's runtime (or
`provider.head_port` when set to non-zero), recorded in its tags as `corral-head-port`
(see `head_port()`), so clusters on one machine never collide on the runtime's port.
"""
from __future__ import annotations

import json
import logging
import os
import re
import secrets
import shutil
import socket
import threading
import time
from pathlib import Path
from typing import Mapping

from filelock import FileLock

from launcher import paths
from launcher import tags as T
from launcher.command_runner import LocalRunner
from launcher.errors import NodeNotFoundError, PartialTerminateError, UsageError
from launcher.providers.base import (STATE_RUNNING, STATE_STOPPING, STATE_TERMINATED, Node,
                                     NodeId, NodeProvider, matches)
from launcher.providers.node_processes import stop_processes_of

log = logging.getLogger(__name__)

NODE_FILE = "node.json"
LOCAL_IP = "127.0.0.1"
LOCK_TIMEOUT_S = 30.0
STOP_GRACE_S = 5.0
_NODE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def free_tcp_port(host: str = LOCAL_IP) -> int:
    """A TCP port that nothing listens on right now (the kernel's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def _read_json(path: Path) -> dict | None:
    try:
        with open(path) as handle:
            return json.load(handle)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        log.warning("ignoring unreadable node file %s: %s", path, error)
        return None


class ProcessProvider(NodeProvider):
    """Nodes are process groups on this machine, one directory each."""

    def __init__(self, config):
        super().__init__(config)
        # Made on the first write only: listing a cluster that never existed (status,
        # up --dry-run, down) leaves no trace.
        self.nodes_dir = paths.cluster_dir(self.cluster_name, create=False) / "nodes"
        self._file_lock: FileLock | None = None
        self._making_lock = threading.Lock()
        if self.nodes_dir.is_dir():
            for leftover in self.nodes_dir.glob(".terminated-*"):  # an interrupted terminate
                shutil.rmtree(leftover, ignore_errors=True)

    @property
    def _lock(self) -> FileLock:
        """The per-cluster lock for writes (creates the nodes directory, 0700)."""
        with self._making_lock:
            if self._file_lock is None:
                paths.private_dir(self.nodes_dir, levels=4)
                self._file_lock = FileLock(str(self.nodes_dir / ".lock"),
                                           timeout=LOCK_TIMEOUT_S)
            return self._file_lock

    # -- paths ---------------------------------------------------------------------------
    def node_dir(self, node_id: NodeId) -> Path:
        """The node's directory (its CORRAL_NODE_DIR). Raises UsageError for an id that
        could escape the nodes directory."""
        if not _NODE_ID.match(node_id or ""):
            raise UsageError(f"not a valid process node id: {node_id!r}")
        return Path(os.path.abspath(self.nodes_dir / node_id))

    def _record(self, node_id: NodeId) -> dict | None:
        if not _NODE_ID.match(node_id or ""):
            return None
        return _read_json(self.node_dir(node_id) / NODE_FILE)

    @staticmethod
    def _node(record: dict) -> Node:
        return Node(id=record["id"], kind=record["kind"], node_type=record["node_type"],
                    state=record["state"], internal_ip=LOCAL_IP, external_ip=LOCAL_IP,
                    tags=record["tags"])

    # -- NodeProvider ----------------------------------------------------------------------
    def non_terminated_nodes(self, tag_filters: Mapping[str, str] | None = None) -> list[Node]:
        nodes = []
        try:
            entries = sorted(os.scandir(self.nodes_dir), key=lambda e: e.name)
        except FileNotFoundError:  # no node was ever created
            return []
        for entry in entries:
            if not entry.is_dir() or not _NODE_ID.match(entry.name):
                continue
            record = _read_json(Path(entry.path) / NODE_FILE)
            if not record or record.get("state") == STATE_TERMINATED:
                continue
            if record.get("tags", {}).get(T.TAG_CLUSTER_NAME) != self.cluster_name:
                continue
            if matches(record["tags"], tag_filters):
                nodes.append(self._node(record))
        nodes.sort(key=lambda node: (node.kind != T.KIND_HEAD, node.id))
        return nodes

    def create_nodes(self, node_type: str, node_config: Mapping, tags: Mapping[str, str],
                     count: int) -> list[NodeId]:
        kind = tags.get(T.TAG_NODE_KIND, T.KIND_WORKER)
        if kind not in (T.KIND_HEAD, T.KIND_WORKER):
            raise UsageError(f"unknown node kind {kind!r} in tags")
        created = []
        with self._lock:
            for _ in range(count):
                node_id = f"{self.cluster_name}-{kind}-{secrets.token_hex(3)}"
                node_dir = self.node_dir(node_id)
                node_dir.mkdir(mode=0o700)
                node_tags = {**tags, T.TAG_CLUSTER_NAME: self.cluster_name,
                             T.TAG_NODE_KIND: kind, T.TAG_NODE_TYPE: node_type}
                node_tags.setdefault(T.TAG_NODE_NAME, node_id)
                if kind == T.KIND_HEAD:
                    port = int(self.config.provider.get("head_port") or 0)
                    node_tags[T.TAG_HEAD_PORT] = str(port or free_tcp_port())
                paths.write_json_atomic(node_dir / NODE_FILE, {
                    "id": node_id, "kind": kind, "node_type": node_type,
                    "state": STATE_RUNNING, "created_s": time.time(),
                    "node_config": _plain(node_config), "tags": node_tags}, indent=1)
                created.append(node_id)
        return created

    def terminate_nodes(self, ids: list[NodeId]) -> None:
        """Stop the nodes' processes (all nodes in one pass), then remove their directories.
        A node with a process that even SIGKILL did not end keeps its directory (state
        `stopping`) so that a retry finds it again, and ProviderError names it."""
        mine = [node_id for node_id in dict.fromkeys(ids) if self._is_mine(node_id)]
        mine = [node_id for node_id in mine if self._set_state(node_id, STATE_STOPPING)]
        if not mine:
            return
        dirs = {node_id: str(self.node_dir(node_id)) for node_id in mine}
        outcome = stop_processes_of(list(dirs.values()), STOP_GRACE_S)
        survivors = {}
        for node_id, node_dir in dirs.items():
            left = outcome[node_dir]["left"]
            if left:
                log.warning("node %s: processes %s survived SIGKILL", node_id, left)
                survivors[node_id] = left
                continue
            self._remove(node_id)
        if survivors:
            raise PartialTerminateError("processes survived SIGKILL", {
                node_id: f"pids {left}" for node_id, left in survivors.items()})

    def _is_mine(self, node_id: NodeId) -> bool:
        record = self._record(node_id)
        return bool(record) and record.get("tags", {}).get(T.TAG_CLUSTER_NAME) \
            == self.cluster_name

    def _remove(self, node_id: NodeId) -> None:
        """Take the node out of every listing at once (rename to a hidden name, which
        listings skip), then delete its files."""
        trash = self.nodes_dir / f".terminated-{node_id}-{secrets.token_hex(4)}"
        with self._lock:
            try:
                os.rename(self.node_dir(node_id), trash)
            except FileNotFoundError:
                return
        shutil.rmtree(trash, ignore_errors=True)

    def _set_state(self, node_id: NodeId, state: str) -> bool:
        with self._lock:
            record = self._record(node_id)
            if record is None or record.get("state") == STATE_TERMINATED:
                return False
            record["state"] = state
            paths.write_json_atomic(self.node_dir(node_id) / NODE_FILE, record, indent=1)
            return True

    def set_node_tags(self, node_id: NodeId, tags: Mapping[str, str]) -> None:
        with self._lock:
            record = self._record(node_id)
            if record is None or record.get("state") == STATE_TERMINATED:
                raise NodeNotFoundError(f"no process node {node_id!r} in cluster "
                                        f"{self.cluster_name!r}")
            record["tags"].update({key: str(value) for key, value in tags.items()})
            paths.write_json_atomic(self.node_dir(node_id) / NODE_FILE, record, indent=1)

    def command_runner(self, node: Node) -> LocalRunner:
        node_dir = str(self.node_dir(node.id))
        env = {"CORRAL_NODE_DIR": node_dir, "CORRAL_CLUSTER_NAME": self.cluster_name,
               "CORRAL_NODE_ID": node.id, "CORRAL_NODE_KIND": node.kind,
               "CORRAL_NODE_TYPE": node.node_type, "CORRAL_HEAD_IP": LOCAL_IP}
        port = self.head_port()
        if port is not None:
            env["CORRAL_HEAD_PORT"] = str(port)
        return LocalRunner(workdir=node_dir, env=env, host=node.id)

    # -- process-provider specifics --------------------------------------------------------
    def head_port(self) -> int | None:
        """The runtime port chosen for this cluster's head (None before a head exists)."""
        for node in self.non_terminated_nodes({T.TAG_NODE_KIND: T.KIND_HEAD}):
            port = node.tags.get(T.TAG_HEAD_PORT)
            if port:
                return int(port)
        return None


def _plain(value):
    """JSON-ready copy of a (possibly frozen) node_config."""
    from launcher.frozen import thaw
    return thaw(value)
