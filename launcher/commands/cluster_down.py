"""`corral down`: stop the runtime on every node, terminate the nodes, then list again to
prove nothing is left (Ray's `ray down` leaves workers running: ray-project/ray#43232).

Damaged nodes count (launcher.commands.cluster.all_nodes): a node whose record cannot be read,
or whose processes run without a record, is terminated like any other (its processes
found by their node-directory tag and pid files), and the final listing includes them,
so `down` never says nothing is left while a node's processes run."""
from __future__ import annotations

import dataclasses
import posixpath
import time
from typing import Callable

from launcher.commands.cluster import all_nodes, command_env
from launcher.bootstrap.command_runner import run_on_many
from launcher.errors import ClusterError
from launcher.providers.base import STATE_DAMAGED, Capability, Node, NodeProvider
from launcher.tags import KIND_HEAD, KIND_WORKER, TAG_NODE_KIND

RUNTIME_STOP_COMMAND = "corral stop"
RUNTIME_STOP_TIMEOUT_S = 30.0
MAX_PARALLEL = 32


@dataclasses.dataclass
class DownResult:
    targeted: list[Node]
    stop_failures: dict[str, str]  # node id -> why `corral stop` did not succeed
    terminate_error: str | None
    left: list[Node]  # nodes still listed afterwards
    duration_s: float

    @property
    def ok(self) -> bool:
        return not self.left and self.terminate_error is None


def nodes_to_take_down(provider: NodeProvider, workers_only: bool) -> list[Node]:
    """The nodes `down` acts on, damaged ones included."""
    return all_nodes(provider, {TAG_NODE_KIND: KIND_WORKER} if workers_only else None)


def stop_runtime(provider: NodeProvider, config, nodes: list[Node], head: Node | None,
                 on_event: Callable[[str], None] | None = None) -> dict[str, str]:
    """Run `corral stop` on every node at once, best effort. Returns {node id: problem}
    for the nodes where it did not work (they are terminated anyway)."""
    runners, envs, failures = {}, {}, {}
    for node in nodes:
        try:
            runner = provider.command_runner(node)
            envs[node.id] = command_env(provider, config, node, head or node, runner)
            runners[node.id] = runner
        except (ClusterError, OSError) as error:
            failures[node.id] = str(error)
    results = run_on_many(runners, RUNTIME_STOP_COMMAND, timeout_s=RUNTIME_STOP_TIMEOUT_S,
                          envs=envs, max_parallel=MAX_PARALLEL)
    for node_id, result in results.items():
        if not result.ok:
            failures[node_id] = (f"`{RUNTIME_STOP_COMMAND}` exited {result.exit_code}: "
                                 f"{result.tail(2)}")
    if on_event is not None:
        for node_id, problem in failures.items():
            on_event(f"{node_id}: runtime stop skipped ({problem.splitlines()[0]})")
    return failures


def take_down(provider: NodeProvider, config, *, workers_only: bool = False,
              on_event: Callable[[str], None] | None = None) -> DownResult:
    started = time.monotonic()
    nodes = nodes_to_take_down(provider, workers_only)
    heads = [node for node in all_nodes(provider, {TAG_NODE_KIND: KIND_HEAD})
             if node.state != STATE_DAMAGED]
    head = heads[0] if heads else None
    # The head first: its runtime takes the autoscaler's monitor with it, so nothing can
    # launch a worker behind our back; then list again and stop the workers at once.
    # Damaged nodes get no `corral stop` (their record, and so their runtime's address,
    # is unknown); terminating stops their processes. A monitor beside a damaged head
    # record cannot list the cluster, so it launches nothing meanwhile.
    head_nodes = [node for node in nodes if node.kind == KIND_HEAD
                  and node.state != STATE_DAMAGED]
    stop_failures = stop_runtime(provider, config, head_nodes, head, on_event)
    if head_nodes:
        nodes = nodes_to_take_down(provider, workers_only)
    stop_failures.update(stop_runtime(
        provider, config, [node for node in nodes if node.kind != KIND_HEAD
                           and node.state != STATE_DAMAGED], head, on_event))
    terminate_error = None
    if nodes:
        # Workers first, so the head's autoscaler (if still alive) cannot replace them
        # from a listing that still shows a head; then the head.
        workers = [node.id for node in nodes if node.kind != KIND_HEAD]
        head_ids = [node.id for node in nodes if node.kind == KIND_HEAD]
        for batch in (workers, head_ids):
            if not batch:
                continue
            try:
                provider.terminate_nodes(batch)
            except ClusterError as error:
                terminate_error = f"{terminate_error}; {error}" if terminate_error else str(error)
    left = nodes_to_take_down(provider, workers_only)
    return DownResult(nodes, stop_failures, terminate_error, left,
                      time.monotonic() - started)


def mount_targets_left(config, nodes: list[Node]) -> list[str]:
    """Where `down` leaves the cluster's file_mounts targets, one line per place: corral
    merges a mount into its target (nothing there is deleted on sync) and keeps no list
    of what it wrote, so removing a target could delete files that were there before;
    `down` names them instead. Process provider: only absolute targets (relative ones
    live in the node's directory and go with it); local (SSH) hosts: every target, on
    every host taken down; clouds: none, as the VM and its disk go (unless
    cache_stopped_nodes keeps stopped VMs)."""
    from launcher.config.checks import mount_target_place
    targets = sorted(config.file_mounts)
    if not targets or not nodes:
        return []
    provider_type = config.provider_type
    if provider_type == "process":
        outside = [target for target in targets
                   if posixpath.isabs(mount_target_place(target))]
        return [f"on this machine: {', '.join(outside)}"] if outside else []
    if provider_type == "local":
        hosts = ", ".join(sorted(node.id for node in nodes))
        return [f"on {hosts}: {', '.join(targets)}"]
    if config.provider.get("cache_stopped_nodes"):
        return [f"on the stopped nodes' disks: {', '.join(targets)}"]
    return []


# What `down --purge` removes, per provider type (for the confirmation prompt).
PURGED_RESOURCES = {
    "aws": "security group, key pair, instance profile",
    "gcp": "firewall rules",
}


def can_purge(config) -> bool:
    from launcher.providers import provider_class
    return provider_class(config.provider_type).supports(Capability.PURGE)


def purge(config) -> list[str] | None:
    """Remove the cloud resources corral made for the cluster (provider's `purge`, which
    also terminates any node still there); one line per removed thing. None when the
    provider has nothing to purge (no Capability.PURGE)."""
    from launcher.providers import provider_class
    cls = provider_class(config.provider_type)
    if not cls.supports(Capability.PURGE):
        return None
    return list(cls.purge(config))
