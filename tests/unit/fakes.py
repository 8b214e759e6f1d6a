"""Fakes of OUR interfaces for unit tests: plain classes, no mocks.

FakeProvider keeps nodes in memory and records every tag write, in order.
FakeRunner runs commands for real with bash in a per-node directory (so exit codes and
output are real), records them, and can be told to be unreachable.
"""
from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import time
from typing import Mapping

from launcher.bootstrap.command_runner import CommandResult, CommandRunner, append_log
from launcher.errors import CommandError, NodeNotFoundError, SSHUnreachableError
from launcher.providers.base import STATE_RUNNING, Node, NodeProvider, matches
from launcher.tags import KIND_WORKER, TAG_CLUSTER_NAME, TAG_NODE_KIND, TAG_NODE_TYPE


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


class FakeProvider(NodeProvider):
    """In-memory nodes. `tag_writes` lists (node_id, tags) in the order they were set."""

    def __init__(self, config, workdir: str):
        super().__init__(config)
        self.workdir = workdir
        self.nodes: dict[str, Node] = {}
        self.tag_writes: list[tuple[str, dict]] = []
        self.runners: dict[str, FakeRunner] = {}
        self.unreachable_ips: set[str] = set()
        self.terminated: list[str] = []
        self._ids = itertools.count(1)

    def non_terminated_nodes(self, tag_filters: Mapping[str, str] | None = None) -> list[Node]:
        return [node for node in self.nodes.values() if matches(node.tags, tag_filters)]

    def create_nodes(self, node_type, node_config, tags, count):
        created = []
        for _ in range(count):
            number = next(self._ids)
            kind = tags.get(TAG_NODE_KIND, KIND_WORKER)
            node_id = f"fake-{kind}-{number}"
            node_tags = {**tags, TAG_CLUSTER_NAME: self.cluster_name, TAG_NODE_KIND: kind,
                         TAG_NODE_TYPE: node_type}
            self.nodes[node_id] = Node(node_id, kind, node_type, STATE_RUNNING,
                                       f"10.0.0.{number}", None, node_tags)
            created.append(node_id)
        return created

    def terminate_nodes(self, ids):
        for node_id in ids:
            if self.nodes.pop(node_id, None) is not None:
                self.terminated.append(node_id)

    def set_node_tags(self, node_id, tags):
        node = self.nodes.get(node_id)
        if node is None:
            raise NodeNotFoundError(f"no node {node_id}")
        self.tag_writes.append((node_id, dict(tags)))
        self.nodes[node_id] = Node(node.id, node.kind, node.node_type, node.state,
                                   node.internal_ip, node.external_ip,
                                   {**node.tags, **tags})

    def command_runner(self, node: Node) -> FakeRunner:
        if node.id not in self.runners:
            self.runners[node.id] = FakeRunner(
                node.internal_ip, os.path.join(self.workdir, node.id),
                unreachable=node.internal_ip in self.unreachable_ips)
        return self.runners[node.id]

    def statuses(self, node_id: str) -> list[str]:
        """The corral-node-status values written for a node, in order."""
        from launcher.tags import TAG_NODE_STATUS
        return [tags[TAG_NODE_STATUS] for written_id, tags in self.tag_writes
                if written_id == node_id and TAG_NODE_STATUS in tags]
