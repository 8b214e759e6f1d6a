"""Observe: turn the provider's nodes (and their tags) and the runtime's load report into
the planner's Snapshot.

The runtime's load comes through a `LoadSource` (the real one asks the head's control
service with runtime.state's get_load; tests pass a fake). Its structure is documented in
runtime/control/service.py.
"""
from __future__ import annotations

import abc

from autoscaler.snapshot import (NODE_BOOTSTRAPPING, NODE_FAILED, NODE_LAUNCHING,
                                 NODE_RUNNING, NodeRecord, Shape, Snapshot, make_shape)
from autoscaler.tracker import MonitorState
from launcher.providers.base import STATE_PENDING, Node
from launcher.tags import (KIND_HEAD, STATUS_UP_TO_DATE, STATUS_UPDATE_FAILED, TAG_FAILURE,
                           TAG_LAUNCH_HASH)

DEFAULT_JOIN_TIMEOUT_S = 120.0  # an up-to-date node that never joins the runtime has failed


class LoadSource(abc.ABC):
    """Where the runtime's load comes from."""

    @abc.abstractmethod
    def get_load(self) -> dict:
        """The control service's load report (runtime.control.service: get_load)."""

    def drain(self, node_ids: list[str]) -> list[str] | None:
        """Ask the runtime to place no more work on these nodes. Returns the ids that are
        drained and idle (safe to terminate), or None when the runtime cannot drain (the
        monitor then goes by the idle times it saw)."""
        return None

    def close(self) -> None:
        """Release connections."""


class RuntimeLoadSource(LoadSource):
    """The head's control service, over one kept-open client connection (reopened after
    an error)."""

    def __init__(self, address: str, keys_dir: str | None, timeout_s: float = 5.0):
        self.address = address
        self.keys_dir = keys_dir
        self.timeout_s = timeout_s
        self._client = None
        self._can_drain = True

    def drain(self, node_ids: list[str]) -> list[str] | None:
        """The control service's `drain_nodes(node_ids) -> [drained and idle ids]`, when
        it has one; a runtime without it answers 'unknown control method'."""
        from runtime.errors import RuntimeSystemError
        if not self._can_drain:
            return None
        try:
            self.get_load()  # (re)connects
            return list(self._client.call("drain_nodes", node_ids=list(node_ids)))
        except RuntimeSystemError as error:
            if "unknown control method" in str(error):
                self._can_drain = False
                return None
            return []  # could not ask: terminate nothing this round

    def get_load(self) -> dict:
        from runtime.control.client import ControlClient
        from runtime.errors import RuntimeSystemError
        if self._client is None:
            self._client = ControlClient(self.address, self.keys_dir, timeout_s=self.timeout_s)
        try:
            return self._client.call("get_load")
        except RuntimeSystemError:
            self.close()
            raise

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


def _shape_counts(items) -> dict[Shape, int]:
    counts: dict[Shape, int] = {}
    for item in items or ():
        shape = make_shape(item.get("shape", {}))
        counts[shape] = counts.get(shape, 0) + int(item.get("count", 1))
    return counts


def demand_of(load: dict) -> dict[Shape, int]:
    return _shape_counts(load.get("pending_demand"))


def bundles_of(load: dict) -> dict[Shape, int]:
    return _shape_counts({"shape": bundle, "count": 1}
                         for bundle in load.get("request_resources") or ())


def demand_version(load: dict) -> tuple:
    """What, in a load report, is worth planning again for: the demand and bundles, and
    which nodes are alive. Idle times tick every report, so they are left out."""
    return (tuple(sorted(demand_of(load).items())), tuple(sorted(bundles_of(load).items())),
            tuple(sorted((node.get("node_id"), bool(node.get("alive")))
                         for node in load.get("nodes") or ())))


def node_records(now_s: float, nodes: list[Node], load: dict, state: MonitorState,
                 join_timeout_s: float = DEFAULT_JOIN_TIMEOUT_S) -> list[NodeRecord]:
    """Provider nodes as planner records. Status: update-failed -> failed; up-to-date and
    alive in the runtime -> running (with the runtime's resources and idle time);
    up-to-date but not (yet) in the runtime -> bootstrapping until join_timeout_s, then
    failed; a runtime node that stopped heartbeating -> failed; the rest -> launching or
    bootstrapping by the provider's state."""
    runtime_nodes = {item.get("node_id"): item for item in load.get("nodes") or ()}
    records = []
    seen = set()
    for node in nodes:
        seen.add(node.id)
        live = runtime_nodes.get(node.id)
        status, failure = _status_of(now_s, node, live, state, join_timeout_s)
        total, used, idle_since = {}, {}, None
        if live is not None and live.get("alive"):
            total = dict(live.get("resources_total") or {})
            available = live.get("resources_available") or {}
            used = {name: max(0.0, amount - float(available.get(name, 0.0)))
                    for name, amount in total.items()}
            idle_since = live.get("idle_since_s")
        if node.kind == KIND_HEAD:
            status, failure = NODE_RUNNING, None
        records.append(NodeRecord(
            id=node.id, node_type=node.node_type, kind=node.kind, status=status,
            resources_total=total, resources_used=used,
            idle_since_s=idle_since if status == NODE_RUNNING else None,
            launch_hash=node.tags.get(TAG_LAUNCH_HASH), failure=failure))
    for node_id in list(state.waiting_to_join_since):
        if node_id not in seen:
            del state.waiting_to_join_since[node_id]
    return records


def _status_of(now_s, node: Node, live: dict | None, state: MonitorState,
               join_timeout_s: float) -> tuple[str, str | None]:
    stage = node.status
    if stage == STATUS_UPDATE_FAILED:
        return NODE_FAILED, node.tags.get(TAG_FAILURE) or "bootstrap failed"
    if stage == STATUS_UP_TO_DATE:
        if live is not None and live.get("alive"):
            state.waiting_to_join_since.pop(node.id, None)
            return NODE_RUNNING, None
        if live is not None:
            return NODE_FAILED, "its runtime stopped sending heartbeats"
        since = state.waiting_to_join_since.setdefault(node.id, now_s)
        if now_s - since >= join_timeout_s:
            return NODE_FAILED, f"up to date but did not join the runtime within " \
                                f"{join_timeout_s:.0f} s"
        return NODE_BOOTSTRAPPING, None
    if node.state == STATE_PENDING:
        return NODE_LAUNCHING, None
    return NODE_BOOTSTRAPPING, None


def build_snapshot(now_s: float, nodes: list[Node], load: dict,
                   state: MonitorState, join_timeout_s: float = DEFAULT_JOIN_TIMEOUT_S
                   ) -> Snapshot:
    records = node_records(now_s, nodes, load, state, join_timeout_s)
    for record in records:
        if record.status == NODE_FAILED and not record.is_head:
            state.node_failed(record.node_type, record.id)
    return Snapshot(now_s=now_s, nodes=tuple(records), demand=demand_of(load),
                    requested_bundles=bundles_of(load),
                    backoffs=state.active_backoffs(now_s),
                    bootstrap_failures=state.bootstrap_failures())
