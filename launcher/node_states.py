"""A node's states in one table: which changes are allowed, and how the four vocabularies
that describe a node map onto each other.

Four parts of corral each see a node their own way:

- the provider: `Node.state` (launcher.providers.base STATE_*), the machine itself;
- the bootstrap: the stage in the node's status tag (launcher.tags STATUS_*), written by
  launcher.bootstrap.stages, `corral up` and the autoscaler's actuator;
- the planner: the node status of a snapshot record (NODE_* below; autoscaler.snapshot
  re-exports them), which says whether a node holds capacity;
- the runtime: whether the control service's load report lists the node, and its
  `alive` and `draining` flags (`RuntimeFlags`).

The transition tables say which changes of the provider state and of the stage may
happen; the code that applies one (the bootstrap's stage writes, the process provider's
record, `up` and the monitor marking a node failed) checks it here, so a change the
table does not allow is refused (NodeStateError) instead of written. The mappings turn
provider state, stage and runtime flags into the planner's status, the one place where
they meet.

Importable by the launcher and the autoscaler; the runtime knows nothing of it.
"""
from __future__ import annotations

import dataclasses
from types import MappingProxyType
from typing import Mapping

from launcher.errors import ClusterError
from launcher.providers.base import (STATE_DAMAGED, STATE_PENDING, STATE_RUNNING,
                                     STATE_STOPPED, STATE_STOPPING, STATE_TERMINATED)
from launcher.tags import (STATUS_SETTING_UP, STATUS_SHIPPING_CORRAL, STATUS_STARTING,
                           STATUS_SYNCING_FILES, STATUS_UNINITIALIZED, STATUS_UP_TO_DATE,
                           STATUS_UPDATE_FAILED, STATUS_WAITING_FOR_SSH)

# -- the planner's node statuses --------------------------------------------------------
NODE_PENDING = "pending"            # asked of the provider, not yet known to run
NODE_LAUNCHING = "launching"        # the provider reports it starting
NODE_BOOTSTRAPPING = "bootstrapping"  # reachable, being set up by the launcher's bootstrap
NODE_RUNNING = "running"            # joined the runtime
NODE_FAILED = "failed"              # bootstrap (or launch) failed; holds no capacity
NODE_STATUSES = (NODE_PENDING, NODE_LAUNCHING, NODE_BOOTSTRAPPING, NODE_RUNNING, NODE_FAILED)
PENDING_STATUSES = (NODE_PENDING, NODE_LAUNCHING, NODE_BOOTSTRAPPING)


class NodeStateError(ClusterError):
    """A change of a node's state (or stage) that the transition table does not allow:
    a bug in the code that tried it, refused before anything was written."""

    def __init__(self, node_id: str, what: str, old: str | None, new: str):
        self.node_id = node_id
        self.what = what
        self.old = old
        self.new = new
        super().__init__(f"node {node_id}: {what} may not change from "
                         f"{old or '(none)'} to {new}")


# -- provider states ---------------------------------------------------------------------
PROVIDER_STATES = (STATE_PENDING, STATE_RUNNING, STATE_STOPPING, STATE_STOPPED,
                   STATE_TERMINATED)
PROVIDER_TRANSITIONS: Mapping[str, frozenset[str]] = MappingProxyType({
    STATE_PENDING: frozenset({STATE_RUNNING, STATE_STOPPING, STATE_TERMINATED}),
    STATE_RUNNING: frozenset({STATE_STOPPING, STATE_TERMINATED}),
    STATE_STOPPING: frozenset({STATE_STOPPED, STATE_TERMINATED}),
    # A stopped node is restarted (aws cache_stopped_nodes) or terminated (the process
    # provider marks it stopping first while it ends what is left of its processes).
    STATE_STOPPED: frozenset({STATE_PENDING, STATE_RUNNING, STATE_STOPPING,
                              STATE_TERMINATED}),
    STATE_TERMINATED: frozenset(),
    # A node whose record cannot be read is only ever removed.
    STATE_DAMAGED: frozenset({STATE_STOPPING, STATE_TERMINATED}),
})


def provider_transition_allowed(old: str | None, new: str) -> bool:
    """None: the node is being created. Writing the state it has is no change."""
    if old is None:
        return new in (STATE_PENDING, STATE_RUNNING)
    return old == new or new in PROVIDER_TRANSITIONS.get(old, frozenset())


def check_provider_transition(node_id: str, old: str | None, new: str) -> None:
    if not provider_transition_allowed(old, new):
        raise NodeStateError(node_id, "provider state", old, new)


# -- bootstrap stages (the status tag) ---------------------------------------------------
# A bootstrap run moves forward through the stages it runs (each may be skipped: the
# steps decide) and ends up-to-date or update-failed; a new run (`up` again, a retry,
# the autoscaler adopting a stalled bootstrap) starts over at waiting-for-ssh from any
# stage; marking a node failed (an unexpected error, an interrupted `up`) is allowed
# from any stage. None is a node without a status tag yet.
_FAIL = STATUS_UPDATE_FAILED
_RESTART = STATUS_WAITING_FOR_SSH
STAGE_TRANSITIONS: Mapping[str | None, frozenset[str]] = MappingProxyType({
    None: frozenset({STATUS_UNINITIALIZED, _RESTART, _FAIL}),
    STATUS_UNINITIALIZED: frozenset({_RESTART, _FAIL}),
    STATUS_WAITING_FOR_SSH: frozenset({_RESTART, STATUS_SHIPPING_CORRAL, STATUS_SYNCING_FILES,
                                       STATUS_SETTING_UP, STATUS_STARTING,
                                       STATUS_UP_TO_DATE, _FAIL}),
    STATUS_SHIPPING_CORRAL: frozenset({_RESTART, STATUS_SYNCING_FILES, STATUS_SETTING_UP,
                                       STATUS_STARTING, STATUS_UP_TO_DATE, _FAIL}),
    STATUS_SYNCING_FILES: frozenset({_RESTART, STATUS_SETTING_UP, STATUS_STARTING,
                                     STATUS_UP_TO_DATE, _FAIL}),
    STATUS_SETTING_UP: frozenset({_RESTART, STATUS_STARTING, STATUS_UP_TO_DATE, _FAIL}),
    STATUS_STARTING: frozenset({_RESTART, STATUS_UP_TO_DATE, _FAIL}),
    STATUS_UP_TO_DATE: frozenset({_RESTART, _FAIL}),
    STATUS_UPDATE_FAILED: frozenset({_RESTART, _FAIL}),  # failed again: a newer reason
    # Not a stage anyone writes: the process provider's tag for an unreadable record.
    # Such a node is removed or replaced, never bootstrapped.
    STATE_DAMAGED: frozenset(),
})
# The stages a bootstrap run ends in: nothing runs on the node until a new run.
FINAL_STAGES = frozenset({STATUS_UP_TO_DATE, STATUS_UPDATE_FAILED})


def stage_transition_allowed(old: str | None, new: str) -> bool:
    """A stage this table does not know (written by another corral version, or by
    hand) counts as no stage: the node can still be bootstrapped or marked failed."""
    allowed = STAGE_TRANSITIONS.get(old if old in STAGE_TRANSITIONS else None)
    return new in allowed


def check_stage_transition(node_id: str, old: str | None, new: str) -> None:
    if not stage_transition_allowed(old, new):
        raise NodeStateError(node_id, "bootstrap stage", old, new)


def bootstrap_finished(stage: str | None) -> bool:
    """The node's last bootstrap run ended (up to date or failed)."""
    return stage in FINAL_STAGES


# -- runtime flags ------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class RuntimeFlags:
    """What the runtime's load report says of one node: `joined` (it is listed), `alive`
    (it heartbeats), `draining` (asked to take no more work before it is terminated)."""
    joined: bool = False
    alive: bool = False
    draining: bool = False

    @classmethod
    def from_report(cls, item) -> "RuntimeFlags":
        """From one node of the load report (a runtime.protocol.load.NodeLoad, or its
        wire mapping; None: not listed)."""
        if item is None:
            return cls()
        if isinstance(item, Mapping):
            return cls(joined=True, alive=bool(item.get("alive")),
                       draining=bool(item.get("draining")))
        return cls(joined=True, alive=bool(item.alive), draining=bool(item.draining))


# -- the mappings to the planner's status ---------------------------------------------------
# A node whose bootstrap has not ended: the provider's state says how far it got.
PROVIDER_STATE_TO_PLANNER: Mapping[str, str] = MappingProxyType({
    STATE_PENDING: NODE_LAUNCHING,
    STATE_RUNNING: NODE_BOOTSTRAPPING,
    STATE_STOPPING: NODE_BOOTSTRAPPING,
    STATE_STOPPED: NODE_BOOTSTRAPPING,
    STATE_DAMAGED: NODE_BOOTSTRAPPING,
})
# An up-to-date node: the runtime flags say whether it holds capacity (alive: running;
# listed but not alive: failed; not listed: bootstrapping until the join timeout, then
# failed). Draining does not change it: a draining node runs its work until the monitor
# terminates it.


def planner_status(stage: str | None, provider_state: str, runtime: RuntimeFlags, *,
                   waited_to_join_s: float = 0.0, join_timeout_s: float = float("inf"),
                   failure: str | None = None) -> tuple[str, str | None]:
    """The planner's status of a (worker) node, and why it failed when it did.

    update-failed -> failed (`failure`, the node's failure tag); up-to-date -> by the
    runtime flags (`waited_to_join_s`: how long it has been up to date without joining);
    any other stage -> by the provider state (pending: launching, else bootstrapping)."""
    if stage == STATUS_UPDATE_FAILED:
        return NODE_FAILED, failure or "bootstrap failed"
    if stage == STATUS_UP_TO_DATE:
        if runtime.alive:
            return NODE_RUNNING, None
        if runtime.joined:
            return NODE_FAILED, "its runtime stopped sending heartbeats"
        if waited_to_join_s >= join_timeout_s:
            return NODE_FAILED, f"up to date but did not join the runtime within " \
                                f"{join_timeout_s:.0f} s"
        return NODE_BOOTSTRAPPING, None
    return PROVIDER_STATE_TO_PLANNER.get(provider_state, NODE_BOOTSTRAPPING), None
