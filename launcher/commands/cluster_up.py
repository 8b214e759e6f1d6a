"""`corral up`: plan what each node needs, then create and bootstrap them all at once.

    plan = plan_up(config, provider, options)   # reads tags, asks the head; changes nothing
    result = apply_up(config, provider, plan, on_stage=...)

The plan compares every existing node's stored hashes (launcher.bootstrap.hashing) with the
config's: nothing changed -> nothing runs; commands or file contents changed -> sync,
setup, restart; only the head's config changed -> re-upload it; node_config changed ->
replace the node. A head whose hashes match but whose runtime services died beyond what
its supervisor brings back (launcher.commands.head_services) is restarted (sync files, start
commands), so `up` repairs it instead of reporting nothing to do. Existing nodes are
counted by their type tags, so re-running `up` never duplicates nodes. The head and
every node are bootstrapped concurrently, a thread each; workers do not wait for the
head (the runtime retries joining it).
"""
from __future__ import annotations

import dataclasses
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

from launcher import paths
from launcher.commands import head_services
from launcher.bootstrap.stages import (CONFIG_ONLY, FULL, NO_RESTART, RESTART_ONLY,
                                BootstrapOutcome, BootstrapSteps, NodeBootstrap,
                                StageCallback)
from launcher.bootstrap.command_runner import wait_interruptibly
from launcher.commands.cluster import all_nodes
from launcher.bootstrap.node_context import ClusterContext, head_port_of, node_ip
from launcher.errors import BootstrapError, ClusterError
from launcher.bootstrap.hashing import TAG_CONFIG_HASH, TAG_RUNTIME_PARTS, changed_parts, launch_hash
from launcher.providers.base import STATE_DAMAGED, Node, NodeProvider, create_what_fits
from launcher.tags import (KIND_HEAD, KIND_WORKER, STATUS_UNINITIALIZED, STATUS_UP_TO_DATE,
                           STATUS_UPDATE_FAILED, TAG_FAILURE, TAG_LAUNCH_HASH,
                           TAG_NODE_KIND, TAG_NODE_STATUS, TAG_NODE_TYPE, TAG_RUNTIME_HASH)

NODE_IP_TIMEOUT_S = 600.0  # how long a created node may take to show up with an address
MAX_PARALLEL_BOOTSTRAPS = 64

CREATE, REPLACE, UPDATE, KEEP, REMOVE = "create", "replace", "update", "keep", "remove"


@dataclasses.dataclass(frozen=True)
class UpOptions:
    restart_only: bool = False
    no_restart: bool = False
    force_setup: bool = False


@dataclasses.dataclass(frozen=True)
class NodeAction:
    """What `up` does for one node (an existing one, or one to create)."""
    action: str  # CREATE, REPLACE, UPDATE, KEEP or REMOVE (a damaged node, not replaced)
    kind: str
    node_type: str
    node: Node | None
    steps: BootstrapSteps | None
    reason: str

    @property
    def label(self) -> str:
        return self.node.id if self.node else f"(new {self.kind})"


@dataclasses.dataclass
class UpPlan:
    cluster_name: str
    actions: list[NodeAction]
    keys_dir: str | None

    @property
    def replacements(self) -> list[NodeAction]:
        """The existing nodes `up` terminates first (to replace, or damaged to remove)."""
        return [action for action in self.actions if action.action in (REPLACE, REMOVE)]

    @property
    def nothing_to_do(self) -> bool:
        return all(action.action == KEEP for action in self.actions)

    def describe(self) -> list[str]:
        lines = []
        for action in self.actions:
            what = action.action
            if action.action == UPDATE and action.steps is not None:
                what = f"update ({action.steps.describe()})"
            lines.append(f"{what:<34} {action.label:<34} {action.kind:<6} "
                         f"{action.node_type:<14} {action.reason}")
        return lines


@dataclasses.dataclass
class UpResult:
    plan: UpPlan
    outcomes: list[BootstrapOutcome]
    kept: list[Node]
    launch_errors: list[str]
    duration_s: float

    @property
    def failed(self) -> list[BootstrapOutcome]:
        return [outcome for outcome in self.outcomes if not outcome.ok]

    @property
    def ok(self) -> bool:
        return not self.failed and not self.launch_errors


def _decide(config, node: Node, context: ClusterContext | None, options: UpOptions,
            head_is_new: bool) -> NodeAction:
    """The action for an existing node. context is None when the head is about to be
    created, so the hashes of workers cannot match anyway."""
    def update(steps, reason):
        if options.no_restart and steps is FULL:
            steps = NO_RESTART
        return NodeAction(UPDATE, node.kind, node.node_type, node, steps, reason)

    tags = node.tags
    stored_launch = tags.get(TAG_LAUNCH_HASH)
    if stored_launch and stored_launch != launch_hash(config, node.node_type):
        return NodeAction(REPLACE, node.kind, node.node_type, node, FULL,
                          "node_config or provider changed")
    if options.restart_only:
        return NodeAction(UPDATE, node.kind, node.node_type, node, RESTART_ONLY,
                          "--restart-only")
    status = tags.get(TAG_NODE_STATUS)
    if status != STATUS_UP_TO_DATE:
        return update(FULL, f"last bootstrap did not finish (status {status or 'none'})")
    if options.force_setup:
        return update(FULL, "--force-setup")
    if head_is_new or context is None:
        return update(FULL, "the head is new")
    hashes = context.hashes(node.kind, node.node_type)
    if tags.get(TAG_RUNTIME_HASH) != hashes.runtime:
        changed = changed_parts(tags.get(TAG_RUNTIME_PARTS),
                                context.runtime_parts(node.kind, node.node_type))
        return update(FULL, (" and ".join(changed) if changed else
                             "commands, file mounts, keys or resources") + " changed")
    if hashes.config and tags.get(TAG_CONFIG_HASH) != hashes.config:
        return NodeAction(UPDATE, node.kind, node.node_type, node, CONFIG_ONLY,
                          "cluster config changed (no command or file changed)")
    return NodeAction(KEEP, node.kind, node.node_type, node, None, "up to date")


def _repair_head(provider: NodeProvider, head: Node, keep: NodeAction) -> NodeAction:
    """An up-to-date head whose runtime services are down (asked on the head: `corral
    health`) gets its start commands run again; one that cannot be asked is kept."""
    reason = head_services.repair_reason(head_services.probe(provider, head).report)
    if reason is None:
        return keep
    return NodeAction(UPDATE, KIND_HEAD, head.node_type, head, RESTART_ONLY, reason)


def plan_up(config, provider: NodeProvider, options: UpOptions = UpOptions(),
            keys_dir: str | None = None) -> UpPlan:
    """What `up` would do. Reads the provider's listing and tags, and asks an up-to-date
    head whether its runtime services run (`corral health`); changes nothing.
    Damaged nodes (launcher.commands.cluster.all_nodes) are repaired, never worked around: a
    damaged head is replaced when there is no readable head (one head per cluster, so
    never a second one beside it), any other damaged node is removed (and min_workers
    creates what is then missing)."""
    everything = all_nodes(provider)
    damaged = [node for node in everything if node.state == STATE_DAMAGED]
    nodes = [node for node in everything if node.state != STATE_DAMAGED]
    heads = [node for node in nodes if node.kind == KIND_HEAD]
    head_type = config.head_node_type
    actions: list[NodeAction] = []
    head = heads[0] if heads else None
    context = None
    damaged_head = next((node for node in damaged if node.kind == KIND_HEAD), None)
    if head is None and damaged_head is not None:
        head_action = NodeAction(REPLACE, KIND_HEAD, head_type, damaged_head, FULL,
                                 f"damaged: {damaged_head.tags.get(TAG_FAILURE)}")
    elif head is not None:
        context = ClusterContext.build(config, node_ip(head) or "",
                                       head_port_of(provider, head), keys_dir)
        if head.node_type != head_type:
            head_action = NodeAction(REPLACE, KIND_HEAD, head_type, head, FULL,
                                     f"head_node_type changed ({head.node_type} -> "
                                     f"{head_type})")
        else:
            head_action = _decide(config, head, context, options, head_is_new=False)
            if head_action.action == KEEP:
                head_action = _repair_head(provider, head, head_action)
    else:
        head_action = NodeAction(CREATE, KIND_HEAD, head_type, None, FULL, "no head yet")
    actions.append(head_action)
    for node in damaged:
        if node is not head_action.node:
            actions.append(NodeAction(REMOVE, node.kind, node.node_type, node, None,
                                      f"damaged: {node.tags.get(TAG_FAILURE)}"))
    for extra in heads[1:]:
        actions.append(NodeAction(KEEP, KIND_HEAD, extra.node_type, extra, None,
                                  f"second head ignored (the head is {head.id})"))
    head_is_new = head_action.action in (CREATE, REPLACE)
    workers = [node for node in nodes if node.kind == KIND_WORKER]
    for node in workers:
        if node.node_type not in config.available_node_types:
            actions.append(NodeAction(KEEP, KIND_WORKER, node.node_type, node, None,
                                      "its type is no longer in the config (left alone)"))
            continue
        actions.append(_decide(config, node, None if head_is_new else context, options, head_is_new))
    for type_name, node_type in config.available_node_types.items():
        existing = sum(1 for node in workers if node.node_type == type_name)
        for _ in range(max(0, node_type.min_workers - existing)):
            actions.append(NodeAction(CREATE, KIND_WORKER, type_name, None, FULL,
                                      f"min_workers of {type_name} is {node_type.min_workers}"))
    return UpPlan(config.cluster_name, actions, keys_dir)


def ensure_cluster_keys(cluster_name: str) -> tuple[str | None, str | None]:
    """The cluster's runtime keys dir, creating the keys once. Returns (dir, notice)."""
    directory = paths.keys_dir(cluster_name)
    try:
        from runtime.node.keys import create_cluster_keys, has_cluster_keys
    except ImportError as error:
        if any(directory.iterdir()):
            return str(directory), None
        return None, f"runtime keys are not available ({error}); nodes get no cluster keys"
    if not has_cluster_keys(directory):
        create_cluster_keys(directory)
    return str(directory), None


def apply_up(config, provider: NodeProvider, plan: UpPlan, *,
             on_stage: StageCallback | None = None,
             on_nodes: Callable[[list[Node]], None] | None = None,
             cancel: threading.Event | None = None) -> UpResult:
    """Carry out a plan: replace, create, then bootstrap every node that needs it
    concurrently. A failing node never stops the others. A KeyboardInterrupt (Ctrl-C)
    during the bootstraps sets `cancel`: running commands are stopped, every unfinished
    node is marked update-failed ("interrupted"), and the KeyboardInterrupt goes on."""
    started = time.monotonic()
    launch_errors: list[str] = []
    replaced = [action.node.id for action in plan.replacements]
    if replaced:
        provider.terminate_nodes(replaced)
    to_create: dict[tuple[str, str], int] = {}
    for action in plan.actions:
        if action.action in (CREATE, REPLACE):
            key = (action.kind, action.node_type)
            to_create[key] = to_create.get(key, 0) + 1
    created_ids: list[str] = []
    # The head first: without it (and its address) workers have nothing to join.
    for (kind, type_name), count in sorted(to_create.items(), key=lambda item:
                                           item[0][0] != KIND_HEAD):
        ids, error = _create(config, provider, kind, type_name, count)
        if error:
            launch_errors.append(error)
            if kind == KIND_HEAD:
                return UpResult(plan, [], [], launch_errors, time.monotonic() - started)
        created_ids += ids
    # The plan's listing is fresh enough for the nodes it had (ids, kinds, addresses);
    # created nodes come from the provider when it knows them whole (local: the claim it
    # just wrote), else from listing again until each has an address.
    nodes_now = {action.node.id: action.node for action in plan.actions
                 if action.node is not None}
    if created_ids:
        known = [provider.known_node(node_id) for node_id in created_ids]
        if all(node is not None and node_ip(node) for node in known):
            nodes_now.update((node.id, node) for node in known)
        else:
            nodes_now = _wait_for_addresses(provider, created_ids)
    created = [nodes_now[node_id] for node_id in created_ids]
    head = next((node for node in nodes_now.values() if node.kind == KIND_HEAD
                 and node.id not in replaced), None)
    if head is None:
        return UpResult(plan, [], [], launch_errors + ["the head node disappeared"],
                        time.monotonic() - started)
    context = ClusterContext.build(config, node_ip(head) or "", head_port_of(provider, head),
                                   plan.keys_dir)
    jobs: list[tuple[Node, BootstrapSteps]] = [(node, FULL) for node in created]
    kept: list[Node] = []
    for action in plan.actions:
        if action.action == UPDATE and action.node.id in nodes_now:
            jobs.append((nodes_now[action.node.id], action.steps))
        elif action.action == KEEP and action.node is not None:
            kept.append(action.node)
    if on_nodes is not None:
        on_nodes([node for node, _ in jobs])
    outcomes = _bootstrap_all(provider, context, jobs, on_stage,
                              cancel if cancel is not None else threading.Event())
    return UpResult(plan, outcomes, kept, launch_errors, time.monotonic() - started)


def _create(config, provider, kind, type_name, count) -> tuple[list[str], str | None]:
    """Create `count` nodes; on a capacity shortfall, create what fits and report the
    rest (naming unreachable hosts where the provider knows them)."""
    node_type = config.available_node_types[type_name]
    tags = {TAG_NODE_KIND: kind, TAG_NODE_TYPE: type_name,
            TAG_NODE_STATUS: STATUS_UNINITIALIZED,
            TAG_LAUNCH_HASH: launch_hash(config, type_name)}
    outcome = create_what_fits(provider, type_name, node_type.node_config, tags, count)
    if outcome.error is None:
        return outcome.ids, None
    message = f"could not create {count} {kind} node(s) of type {type_name}: {outcome.error}"
    if outcome.retry_error is not None:
        return [], f"{message}; retry with {outcome.retried_count} failed: " \
                   f"{outcome.retry_error}"
    if outcome.retried_count:
        return outcome.ids, f"{message} (created {len(outcome.ids)})"
    return [], message


def _wait_for_addresses(provider: NodeProvider, ids: list[str]) -> dict[str, Node]:
    """Every node of the cluster, once each created node has an address (clouds take a
    moment to assign one; the process and local providers have it at once)."""
    deadline = time.monotonic() + NODE_IP_TIMEOUT_S
    delay_s = 0.2
    while True:
        listing = {node.id: node for node in provider.non_terminated_nodes()}
        missing = [node_id for node_id in ids
                   if node_id not in listing or not node_ip(listing[node_id])]
        if not missing:
            return listing
        if time.monotonic() > deadline:
            raise ClusterError(f"nodes {', '.join(missing)} got no address within "
                               f"{NODE_IP_TIMEOUT_S:g} s")
        time.sleep(delay_s)
        delay_s = min(delay_s * 1.5, 5.0)


def _bootstrap_guarded(provider, node, context, steps, on_stage,
                       cancel=None) -> BootstrapOutcome:
    """bootstrap_node, with an unexpected error (a bug, an untranslated library error)
    turned into this node's failure instead of tearing down the other nodes' threads:
    the failure names the stage the node had reached, and goes to its log and tags."""
    started = time.monotonic()
    machine = None
    try:
        machine = NodeBootstrap(provider, node, context, steps, on_stage=on_stage,
                                cancel=cancel)
        return machine.run()
    except Exception as error:  # noqa: BLE001 - thread boundary: becomes the node's failure
        stage = machine.stage if machine is not None else "bootstrap"
        log_path = str(paths.node_log_path(context.config.cluster_name, node.id))
        failure = BootstrapError(node.id, stage,
                                 f"unexpected {type(error).__name__}: {error}", log_path)
        _record_unexpected(provider, node.id, stage, failure, log_path)
        if on_stage is not None:
            on_stage(node.id, STATUS_UPDATE_FAILED, str(failure))
        return BootstrapOutcome(node.id, node.kind, node.node_type, node_ip(node),
                                STATUS_UPDATE_FAILED, time.monotonic() - started,
                                steps.describe(), failure, failure.log_path)


def _record_unexpected(provider, node_id: str, stage: str, failure: BootstrapError,
                       log_path: str) -> None:
    """Write an unexpected bootstrap error to the node's log and its tags (best effort:
    the outcome carries the error either way)."""
    import traceback
    try:
        fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        with os.fdopen(fd, "a") as log:
            log.write(f"[bootstrap failed in {stage}] {failure}\n")
            log.write(traceback.format_exc())
    except OSError:
        pass  # no log possible (disk full, ...): the error is still reported
    _mark_failed(provider, node_id, f"{stage}: {failure}")


def _mark_failed(provider, node_id: str, text: str) -> None:
    try:
        provider.set_node_tags(node_id, {TAG_NODE_STATUS: STATUS_UPDATE_FAILED,
                                         TAG_FAILURE: " ".join(text.split())[:200]})
    except (ClusterError, OSError):
        pass  # the node is gone or unreachable; the outcome carries the failure


def _bootstrap_all(provider, context, jobs, on_stage, cancel) -> list[BootstrapOutcome]:
    if not jobs:
        return []
    pool = ThreadPoolExecutor(max_workers=min(MAX_PARALLEL_BOOTSTRAPS, len(jobs)),
                              thread_name_prefix="bootstrap")
    futures = [pool.submit(_bootstrap_guarded, provider, node, context, steps, on_stage,
                           cancel) for node, steps in jobs]
    try:
        return wait_interruptibly(pool, futures, cancel)
    except KeyboardInterrupt:
        # Nodes whose bootstrap never started, or did not end in time, are marked too.
        for (node, _), future in zip(jobs, futures):
            if future.cancelled() or not future.done():
                _mark_failed(provider, node.id, "interrupted")
                if on_stage is not None:
                    on_stage(node.id, STATUS_UPDATE_FAILED, "interrupted")
        raise
