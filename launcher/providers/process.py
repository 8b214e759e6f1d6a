"""The `process` provider: each node is a group of processes on this machine.

A node is a directory `~/.corral/clusters/<name>/nodes/<node_id>/` holding `node.json`
(kind, type, tags, state, creation time). Files are replaced atomically (temp + rename)
under a per-cluster file lock, and a new node's directory appears with its record in it,
so every corral process on this machine (the laptop's `corral up`, the head's
autoscaler) reads the same truth. Listing reads files only.

A record that cannot be read (truncated, wrong shape, missing: see process_records) is
never skipped: `non_terminated_nodes` raises StateFileError naming it, and
`nodes_including_damaged` (for `down` and `up`) lists it as a damaged node, together
with nodes that left processes but no directory, so that they are removed or replaced
rather than forgotten while their processes run. A cluster has one head: creating a
second one while a head (even a damaged one) is there is refused.

Commands run through a LocalRunner with cwd = the node directory and
CORRAL_NODE_DIR = the node directory; terminating a node stops every process whose
environment carries that CORRAL_NODE_DIR (daemons included) or whose PID the runtime
recorded under `session/`, then removes the directory.

The head node gets a free TCP port on 127.0.0.1 for the cluster's runtime (or
`provider.head_port` when set to non-zero), recorded in its tags as `corral-head-port`
(see `head_port()`), so clusters on one machine never collide on the runtime's port.
"""
from __future__ import annotations

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
from launcher.bootstrap.command_runner import LocalRunner
from launcher.errors import (NodeNotFoundError, PartialTerminateError, ProviderError,
                             StateFileError, UsageError)
from launcher.node_states import check_provider_transition
from launcher.providers.base import (STATE_DAMAGED, STATE_RUNNING, STATE_STOPPING,
                                     STATE_TERMINATED, Capability, Node, NodeId,
                                     NodeProvider, matches)
from launcher.providers.node_processes import stop_processes_of
from launcher.providers.process_records import NODE_FILE, kind_from_id, read_record
from runtime.node.processes import ENV_NODE_DIR, caller_and_ancestors, pids_with_env_in

log = logging.getLogger(__name__)

LOCAL_IP = "127.0.0.1"
LOCK_TIMEOUT_S = 30.0
STOP_GRACE_S = 5.0
_NODE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def free_tcp_port(host: str = LOCAL_IP) -> int:
    """A TCP port that nothing listens on right now (the kernel's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


class ProcessProvider(NodeProvider):
    """Nodes are process groups on this machine, one directory each."""

    capabilities = frozenset({Capability.DAMAGED_NODES, Capability.HEAD_PORT})

    def __init__(self, config):
        super().__init__(config)
        # Made on the first write only: listing a cluster that never existed (status,
        # up --dry-run, down) leaves no trace.
        self.nodes_dir = paths.cluster_dir(self.cluster_name, create=False) / "nodes"
        self._file_lock: FileLock | None = None
        self._making_lock = threading.Lock()
        # Damaged nodes found by the last nodes_including_damaged: {node id: problem}.
        self.damaged: dict[str, StateFileError] = {}
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

    # -- paths and records ---------------------------------------------------------------
    def node_dir(self, node_id: NodeId) -> Path:
        """The node's directory (its CORRAL_NODE_DIR). Raises UsageError for an id that
        could escape the nodes directory."""
        if not _NODE_ID.match(node_id or ""):
            raise UsageError(f"not a valid process node id: {node_id!r}")
        return Path(os.path.abspath(self.nodes_dir / node_id))

    def _record(self, node_id: NodeId) -> dict | None:
        """The node's record; None when there is no such node directory. Raises
        StateFileError when the directory is there but its record is damaged."""
        if not _NODE_ID.match(node_id or ""):
            return None
        try:
            return read_record(self.node_dir(node_id), self.cluster_name)
        except FileNotFoundError:
            return None

    @staticmethod
    def _node(record: dict) -> Node:
        return Node(id=record["id"], kind=record["kind"], node_type=record["node_type"],
                    state=record["state"], internal_ip=LOCAL_IP, external_ip=LOCAL_IP,
                    tags=record["tags"])

    def _damaged_node(self, node_id: NodeId, problem: str) -> Node:
        kind = kind_from_id(node_id, self.cluster_name)
        return Node(id=node_id, kind=kind, node_type="unknown", state=STATE_DAMAGED,
                    internal_ip=LOCAL_IP, external_ip=LOCAL_IP,
                    tags={T.TAG_CLUSTER_NAME: self.cluster_name, T.TAG_NODE_KIND: kind,
                          T.TAG_NODE_STATUS: STATE_DAMAGED, T.TAG_FAILURE: problem})

    def _scan(self) -> tuple[list[Node], dict[str, StateFileError]]:
        """(nodes with a readable record, not terminated; {node id: error} of the node
        directories whose record is damaged)."""
        nodes, damaged = [], {}
        try:
            entries = sorted(os.scandir(self.nodes_dir), key=lambda e: e.name)
        except FileNotFoundError:  # no node was ever created
            return [], {}
        for entry in entries:
            if not _NODE_ID.match(entry.name) or not entry.is_dir():
                continue
            try:
                record = read_record(Path(entry.path), self.cluster_name)
            except FileNotFoundError:  # removed since the scan
                continue
            except StateFileError as error:
                damaged[entry.name] = error
                continue
            if record["state"] != STATE_TERMINATED:
                nodes.append(self._node(record))
        return nodes, damaged

    @staticmethod
    def _sorted(nodes: list[Node], tag_filters) -> list[Node]:
        nodes = [node for node in nodes if matches(node.tags, tag_filters)]
        return sorted(nodes, key=lambda node: (node.kind != T.KIND_HEAD, node.id))

    # -- NodeProvider ----------------------------------------------------------------------
    def non_terminated_nodes(self, tag_filters: Mapping[str, str] | None = None) -> list[Node]:
        """The nodes, from their records. A damaged record raises StateFileError (named
        file): acting on a listing that silently lacks a node is how a second head is
        born. `down` and `up` use nodes_including_damaged instead."""
        nodes, damaged = self._scan()
        if damaged:
            first = next(iter(damaged.values()))
            more = len(damaged) - 1
            raise StateFileError(first.path, first.problem + (
                f" (and {more} more damaged record{'s' if more > 1 else ''})" if more
                else ""), first.fix)
        return self._sorted(nodes, tag_filters)

    def nodes_including_damaged(self, tag_filters: Mapping[str, str] | None = None
                                ) -> list[Node]:
        """Every node, for the commands that must act on all of them (`down`, `up`):
        readable ones as usual, and as damaged nodes (state STATE_DAMAGED, problem in
        the failure tag, type "unknown") those whose record is damaged and those whose
        directory is gone while processes tagged with it still run. `damaged` holds the
        problems found, by node id."""
        nodes, damaged = self._scan()
        present = {node.id for node in nodes} | set(damaged)
        protected = caller_and_ancestors()
        for node_dir, pids in sorted(pids_with_env_in(ENV_NODE_DIR, str(self.nodes_dir))
                                     .items()):
            node_id = os.path.basename(node_dir)
            pids = sorted(pids - protected)
            if pids and node_id not in present and _NODE_ID.match(node_id):
                damaged[node_id] = StateFileError(
                    os.path.join(node_dir, NODE_FILE),
                    f"missing with its directory, while processes of the node still run "
                    f"(pids {', '.join(map(str, pids))})",
                    "`corral down` stops them; `corral up` replaces the node")
        self.damaged = damaged
        nodes += [self._damaged_node(node_id, f"{NODE_FILE} {error.problem}")
                  for node_id, error in damaged.items()]
        return self._sorted(nodes, tag_filters)

    def create_nodes(self, node_type: str, node_config: Mapping, tags: Mapping[str, str],
                     count: int) -> list[NodeId]:
        """Create nodes, each directory appearing with its record already in it. A head
        is refused while the cluster has one (even with a damaged record, or only its
        processes left). A disk that refuses the record is a ProviderError."""
        kind = tags.get(T.TAG_NODE_KIND, T.KIND_WORKER)
        if kind not in (T.KIND_HEAD, T.KIND_WORKER):
            raise UsageError(f"unknown node kind {kind!r} in tags")
        if kind == T.KIND_HEAD and count != 1:
            raise UsageError(f"a cluster has one head; asked to create {count}")
        created = []
        with self._lock:
            for leftover in self.nodes_dir.glob(".creating-*"):  # a creator that died
                shutil.rmtree(leftover, ignore_errors=True)
            if kind == T.KIND_HEAD:
                self._refuse_second_head(node_type)
            for _ in range(count):
                node_id = f"{self.cluster_name}-{kind}-{secrets.token_hex(3)}"
                node_tags = {**tags, T.TAG_CLUSTER_NAME: self.cluster_name,
                             T.TAG_NODE_KIND: kind, T.TAG_NODE_TYPE: node_type}
                node_tags.setdefault(T.TAG_NODE_NAME, node_id)
                if kind == T.KIND_HEAD:
                    port = int(self.config.provider.get("head_port") or 0)
                    node_tags[T.TAG_HEAD_PORT] = str(port or free_tcp_port())
                self._make_node_dir(node_id, {
                    "id": node_id, "kind": kind, "node_type": node_type,
                    "state": STATE_RUNNING, "created_s": time.time(),
                    "node_config": _plain(node_config), "tags": node_tags}, node_type)
                created.append(node_id)
        return created

    def _refuse_second_head(self, node_type: str) -> None:
        heads = [node.id for node in self.nodes_including_damaged()
                 if node.kind == T.KIND_HEAD]
        if heads:
            raise ProviderError(
                f"cluster {self.cluster_name!r} already has a head ({', '.join(heads)}); "
                f"a cluster has one head: `corral up` replaces a damaged one, "
                f"`corral down` removes it", node_type=node_type)

    def _make_node_dir(self, node_id: NodeId, record: dict, node_type: str) -> None:
        """Write the record into a hidden staging directory, then rename it into place:
        no one ever sees the node without its record."""
        staging = self.nodes_dir / f".creating-{node_id}"
        try:
            staging.mkdir(mode=0o700)
            paths.write_json_atomic(staging / NODE_FILE, record, indent=1)
            os.rename(staging, self.node_dir(node_id))
        except OSError as error:
            shutil.rmtree(staging, ignore_errors=True)
            raise ProviderError(f"cannot create process node {node_id} in "
                                f"{self.nodes_dir}: {error.strerror or error}",
                                node_type=node_type) from error

    def terminate_nodes(self, ids: list[NodeId]) -> None:
        """Stop the nodes' processes (all nodes in one pass), then remove their directories.
        Damaged nodes (a record that cannot be read, or processes left without a
        directory) are stopped and removed too. A node with a process that even SIGKILL
        did not end keeps its directory (state `stopping` when its record is readable)
        so that a retry finds it again, and ProviderError names it."""
        mine = []
        for node_id in dict.fromkeys(ids):
            if not _NODE_ID.match(node_id or ""):
                continue
            try:
                if self._set_state(node_id, STATE_STOPPING) is False:
                    continue  # terminated already
            except StateFileError:
                pass  # damaged: its processes are found by its directory all the same
            except ProviderError as error:  # e.g. a full disk: stop it all the same
                log.warning("%s", error)
            mine.append(node_id)
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

    def _remove(self, node_id: NodeId) -> None:
        """Take the node out of every listing at once (rename to a hidden name, which
        listings skip), then delete its files."""
        if not self.node_dir(node_id).exists():  # only processes were left (or nothing)
            return
        trash = self.nodes_dir / f".terminated-{node_id}-{secrets.token_hex(4)}"
        with self._lock:
            try:
                os.rename(self.node_dir(node_id), trash)
            except FileNotFoundError:
                return
        shutil.rmtree(trash, ignore_errors=True)

    def _set_state(self, node_id: NodeId, state: str) -> bool | None:
        """True when set; False when the record says terminated; None when there is no
        node directory. Raises StateFileError for a damaged record."""
        if not self.node_dir(node_id).is_dir():
            return None  # (without taking the lock, which would make the nodes directory)
        with self._lock:
            record = self._record(node_id)
            if record is None:
                return None
            if record.get("state") == STATE_TERMINATED:
                return False
            check_provider_transition(node_id, record.get("state"), state)
            record["state"] = state
            self._write_record(node_id, record)
            return True

    def set_node_tags(self, node_id: NodeId, tags: Mapping[str, str]) -> None:
        with self._lock:
            record = self._record(node_id)
            if record is None or record.get("state") == STATE_TERMINATED:
                raise NodeNotFoundError(f"no process node {node_id!r} in cluster "
                                        f"{self.cluster_name!r}")
            record["tags"].update({key: str(value) for key, value in tags.items()})
            self._write_record(node_id, record)

    def _write_record(self, node_id: NodeId, record: dict) -> None:
        """Replace the node's record atomically; a disk that refuses it (full, read-only)
        is a ProviderError naming the file, and the old record stays whole."""
        path = self.node_dir(node_id) / NODE_FILE
        try:
            paths.write_json_atomic(path, record, indent=1)
        except OSError as error:
            raise ProviderError(f"cannot write {path}: {error.strerror or error}",
                                node_type=record.get("node_type")) from error

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
        """The runtime port chosen for this cluster's head (None before a head exists,
        or while its record is damaged)."""
        for node in self._scan()[0]:
            port = node.tags.get(T.TAG_HEAD_PORT)
            if node.kind == T.KIND_HEAD and port:
                return int(port)
        return None


def _plain(value):
    """JSON-ready copy of a (possibly frozen) node_config."""
    from launcher.config.frozen import thaw
    return thaw(value)
