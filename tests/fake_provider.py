"""The one fake NodeProvider of the tests (plain classes, no mocks), in the contract suite
like every real provider (tests/contract/provider_fake.py).

FakeProvider keeps nodes in memory, records every create call and tag write in order,
and can be told to fail: a launch of a node type (`fail_types`), one bigger than the
room left (`room`), or every listing (`list_error`). Providers of several clusters may share one `FakeCloud` (as clusters
share a cloud account): each sees, tags and terminates only its own cluster's nodes.
Given a `workdir`, its nodes run commands through FakeRunner: for real with bash in a
per-node directory (so exit codes and output are real); a node can be made unreachable.
"""
from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import time
from typing import Mapping

from launcher.bootstrap.command_runner import CommandResult, CommandRunner, append_log
from launcher.errors import (CapacityError, ClusterError, CommandError, NodeNotFoundError,
                             SSHUnreachableError)
from launcher.providers.base import STATE_RUNNING, Node, NodeProvider, matches
from launcher.tags import (KIND_HEAD, KIND_WORKER, STATUS_UP_TO_DATE, TAG_CLUSTER_NAME,
                           TAG_NODE_KIND, TAG_NODE_STATUS, TAG_NODE_TYPE)


class FakeRunner(CommandRunner):
    """Runs on this machine in `root` (the node's whole filesystem, as it were): remote
    paths are taken relative to root. The node dir is `<root>/tmp/corral`."""

    def __init__(self, host: str, root: str, *, unreachable: bool = False):
        self.host = host
        self.root = root
        self.unreachable = unreachable
        self.commands: list[tuple[str, dict]] = []
        self.puts: list[tuple[str, str]] = []
        os.makedirs(root, exist_ok=True)

    def local_path(self, remote: str) -> str:
        return os.path.join(self.root, remote.lstrip("/"))

    def wait_ready(self, timeout_s: float, cancel=None) -> None:
        if self.unreachable:
            raise SSHUnreachableError(self.host, timeout_s, "connection refused")

    def run(self, cmd, *, timeout_s=None, env=None, check=False, log_path=None,
            on_output=None, cancel=None):
        self.commands.append((cmd, dict(env or {})))
        started = time.monotonic()
        # The node's paths live under root: make /tmp/corral mean <root>/tmp/corral.
        merged = {**os.environ, **(env or {})}
        merged.setdefault("CORRAL_NODE_DIR", "/tmp/corral")
        merged["CORRAL_NODE_DIR"] = self.local_path(merged["CORRAL_NODE_DIR"])
        completed = subprocess.run(["bash", "-c", cmd.replace("/tmp/corral",
                                                               self.local_path("/tmp/corral"))],
                                   cwd=self.root, env=merged, capture_output=True, text=True,
                                   timeout=timeout_s, stdin=subprocess.DEVNULL)
        stdout = completed.stdout.replace(self.local_path("/tmp/corral"), "/tmp/corral")
        result = CommandResult(self.host, cmd, completed.returncode, stdout,
                               completed.stderr, time.monotonic() - started)
        if log_path:
            append_log(log_path, result)
        if check and not result.ok:
            raise CommandError(result)
        return result

    def put(self, local, remote, *, exclude=None):
        self.puts.append((local, remote))
        target = self.local_path(remote)
        if os.path.isdir(local):
            shutil.copytree(local, target, dirs_exist_ok=True)
            return sum(len(files) for _, _, files in os.walk(local))
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.copy2(local, target)
        return 1

    def get(self, remote, local):
        source = self.local_path(remote)
        if os.path.isdir(source):
            shutil.copytree(source, local, dirs_exist_ok=True)
        else:
            shutil.copy2(source, local)
        return 1

    def interactive_shell(self, cmd=None):
        return 0

    def stage_commands(self) -> list[str]:
        """Commands run with the node environment (the bootstrap's stage scripts)."""
        return [cmd for cmd, env in self.commands if "CORRAL_NODE_ID" in env]


class FakeCloud:
    """What the providers of several clusters share: every node, and one id counter."""

    def __init__(self):
        self.nodes: dict[str, Node] = {}
        self.numbers = itertools.count(1)


class FakeProvider(NodeProvider):
    """In-memory nodes named fake-<kind>-<n> with address 10.0.0.<n>.

    `nodes` is the (shared) node table, `create_calls` lists (node_type, count, tags),
    `tag_writes` lists (node_id, tags) in the order they were set, `terminated` the ids
    terminated. Without a workdir, command_runner refuses (tests that bootstrap with a
    fake bootstrap)."""

    def __init__(self, config, workdir: str | None = None, *, cloud: FakeCloud | None = None):
        super().__init__(config)
        self.workdir = workdir
        self.cloud = cloud or FakeCloud()
        self.nodes = self.cloud.nodes
        self.create_calls: list[tuple[str, int, dict]] = []
        self.tag_writes: list[tuple[str, dict]] = []
        self.runners: dict[str, FakeRunner] = {}
        self.unreachable_ips: set[str] = set()
        self.terminated: list[str] = []
        self.fail_types: dict[str, ClusterError] = {}
        self.list_error: ClusterError | None = None
        # node type -> how many more fit; a bigger request is refused as the local
        # provider refuses it (CapacityError naming how many are free).
        self.room: dict[str, int] = {}
        self.created_status: dict[str, str | None] = {}  # node id -> status tag at creation

    def _mine(self, node: Node) -> bool:
        return node.tags.get(TAG_CLUSTER_NAME, self.cluster_name) == self.cluster_name

    def non_terminated_nodes(self, tag_filters: Mapping[str, str] | None = None) -> list[Node]:
        if self.list_error is not None:
            raise self.list_error
        return [node for node in list(self.nodes.values())
                if self._mine(node) and matches(node.tags, tag_filters)]

    def _add(self, node_id: str, kind: str, node_type: str, number: int,
             tags: Mapping[str, str]) -> Node:
        node_tags = {**tags, TAG_CLUSTER_NAME: self.cluster_name, TAG_NODE_KIND: kind,
                     TAG_NODE_TYPE: node_type}
        node = Node(node_id, kind, node_type, STATE_RUNNING, f"10.0.0.{number}", None,
                    node_tags)
        self.nodes[node_id] = node
        self.created_status[node_id] = tags.get(TAG_NODE_STATUS)
        return node

    def create_nodes(self, node_type, node_config, tags, count):
        self.create_calls.append((node_type, count, dict(tags)))
        if node_type in self.fail_types:
            raise self.fail_types[node_type]
        if count > self.room.get(node_type, count):
            raise CapacityError(f"only {self.room[node_type]} of {count} {node_type} fit",
                                node_type=node_type, free_count=self.room[node_type],
                                requested_count=count)
        if node_type in self.room:
            self.room[node_type] -= count
        created = []
        for _ in range(count):
            number = next(self.cloud.numbers)
            kind = tags.get(TAG_NODE_KIND, KIND_WORKER)
            created.append(self._add(f"fake-{kind}-{number}", kind, node_type, number,
                                     tags).id)
        return created

    def add_head(self, node_id: str = "head-1") -> Node:
        """An up-to-date head of the config's head type, as `corral up` leaves it."""
        return self._add(node_id, KIND_HEAD, self.config.head_node_type,
                         next(self.cloud.numbers), {TAG_NODE_STATUS: STATUS_UP_TO_DATE})

    def terminate_nodes(self, ids):
        for node_id in ids:
            node = self.nodes.get(node_id)
            if node is not None and self._mine(node):
                del self.nodes[node_id]
                self.terminated.append(node_id)

    def set_node_tags(self, node_id, tags):
        node = self.nodes.get(node_id)
        if node is None or not self._mine(node):
            raise NodeNotFoundError(f"no node {node_id}")
        self.tag_writes.append((node_id, dict(tags)))
        self.nodes[node_id] = Node(node.id, node.kind, node.node_type, node.state,
                                   node.internal_ip, node.external_ip,
                                   {**node.tags, **tags})

    def command_runner(self, node: Node) -> FakeRunner:
        if self.workdir is None:
            raise NotImplementedError("this FakeProvider has no workdir to run commands in")
        if node.id not in self.runners:
            self.runners[node.id] = FakeRunner(
                node.internal_ip, os.path.join(self.workdir, node.id),
                unreachable=node.internal_ip in self.unreachable_ips)
        return self.runners[node.id]

    def created(self) -> int:
        """How many nodes the create calls asked for, failed launches left out."""
        return sum(count for node_type, count, _ in self.create_calls
                   if node_type not in self.fail_types)

    def statuses(self, node_id: str) -> list[str]:
        """The corral-node-status values written for a node, in order."""
        return [tags[TAG_NODE_STATUS] for written_id, tags in self.tag_writes
                if written_id == node_id and TAG_NODE_STATUS in tags]

    def status_history(self, node_id: str) -> list[str | None]:
        """The node's status as created (None: no status tag), then every status
        written, in order: the transitions it went through."""
        return [self.created_status.get(node_id), *self.statuses(node_id)]
