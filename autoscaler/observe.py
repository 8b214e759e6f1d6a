"""Observe: turn the provider's nodes (and their tags) and the runtime's load report into
the planner's Snapshot.

The runtime's load comes through a `LoadSource` (the real one asks the head's control
service with rpc get_load; tests pass a fake) as a runtime.protocol.load.LoadReport, or
its wire form (a dict), which every function here reads back with `LoadReport.of`.

The real source also keeps the control service's node types up to date: it pushes the
monitor's (from the normalised cluster config) with rpc set_node_types whenever a load
report shows others (the monitor's start, a control service started afresh), so the
report's `infeasible` shapes are judged against the types the planner launches.
"""
from __future__ import annotations

import abc
from types import MappingProxyType
from typing import Mapping

from autoscaler.snapshot import (NODE_FAILED, NODE_RUNNING, NodeRecord, Shape, Snapshot,
                                 make_shape)
from autoscaler.tracker import MonitorState
from launcher.node_states import RuntimeFlags, planner_status
from launcher.providers.base import Node
from launcher.tags import KIND_HEAD, STATUS_UP_TO_DATE, TAG_FAILURE, TAG_LAUNCH_HASH
from runtime.errors import RuntimeSystemError
from runtime.protocol.load import (LoadReport, NodeLoad, NodeType, frozen_resources,
                                   node_types_to_wire)
from runtime.protocol.rpc import RemoteCallError, UnknownMethodError

DEFAULT_JOIN_TIMEOUT_S = 120.0  # an up-to-date node that never joins the runtime has failed


class LoadSource(abc.ABC):
    """Where the runtime's load comes from."""

    @abc.abstractmethod
    def get_load(self) -> LoadReport | dict:
        """The control service's load report (a LoadReport, or its wire form)."""

    def drain(self, node_ids: list[str]) -> list[str] | None:
        """Ask the runtime to place no more work on these nodes. Returns the ids that are
        drained and idle (safe to terminate), or None when the runtime cannot drain (the
        monitor then goes by the idle times it saw)."""
        return None

    def close(self) -> None:
        """Release connections."""


def node_types_of(policy) -> dict[str, NodeType]:
    """The node types the planner launches (autoscaler.policy.Policy), as the control
    service is told them."""
    return {name: NodeType(frozen_resources(spec.resources), spec.max_workers)
            for name, spec in policy.node_types.items()}


class RuntimeLoadSource(LoadSource):
    """The head's control service, over one kept-open client connection (reopened after
    an error). `node_types` (node_types_of the monitor's policy) are pushed to it
    whenever a load report shows other types."""

    def __init__(self, address: str, keys_dir: str | None, timeout_s: float = 5.0,
                 node_types: Mapping[str, NodeType] | None = None):
        self.address = address
        self.keys_dir = keys_dir
        self.timeout_s = timeout_s
        self.node_types = MappingProxyType(dict(node_types or {}))
        self._client = None
        self._can_drain = True
        self._can_say_max_workers = True
        self._can_push = True

    def drain(self, node_ids: list[str]) -> list[str] | None:
        """The control service's `drain_nodes(node_ids) -> [drained and idle ids]`, when
        it has one; a runtime without it answers UnknownMethodError."""
        if not self._can_drain:
            return None
        try:
            self.get_load()  # (re)connects
            return list(self._client.call("drain_nodes", node_ids=list(node_ids)))
        except UnknownMethodError:
            self._can_drain = False
            return None
        except RuntimeSystemError:
            return []  # could not ask: terminate nothing this round

    def get_load(self) -> LoadReport:
        from runtime.control.client import ControlClient
        if self._client is None:
            self._client = ControlClient(self.address, self.keys_dir, timeout_s=self.timeout_s)
        try:
            report = LoadReport.from_wire(self._client.call("get_load"))
            if self._can_push and self._types_differ(report):
                self._push_node_types()
                report = LoadReport.from_wire(self._client.call("get_load"))
            return report
        except RuntimeSystemError:
            self.close()
            raise

    def _types_differ(self, report: LoadReport) -> bool:
        """The report's node types are not the monitor's (their resources: a control
        service that keeps no max_workers is not told them again every poll)."""
        def resources(types):
            return {name: dict(kind.resources) for name, kind in types.items()}
        return resources(report.node_types) != resources(self.node_types)

    def _push_node_types(self) -> None:
        resources, max_workers = node_types_to_wire(self.node_types)
        try:
            if self._can_say_max_workers:
                try:
                    self._client.call("set_node_types", node_types=resources,
                                      max_workers=max_workers)
                    return
                except UnknownMethodError:
                    raise
                except RemoteCallError:   # a service before max_workers: types alone
                    self._can_say_max_workers = False
            self._client.call("set_node_types", node_types=resources)
        except UnknownMethodError:        # a service that takes no node types
            self._can_push = False

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


def _shape_counts(items) -> dict[Shape, int]:
    """{shape: total count} of (resources, count) pairs."""
    counts: dict[Shape, int] = {}
    for resources, count in items:
        shape = make_shape(resources)
        counts[shape] = counts.get(shape, 0) + int(count)
    return counts


def demand_of(load: LoadReport | dict) -> dict[Shape, int]:
    return _shape_counts((entry.shape, entry.count)
                         for entry in LoadReport.of(load).pending_demand)


def bundles_of(load: LoadReport | dict) -> dict[Shape, int]:
    return _shape_counts((bundle, 1) for bundle in LoadReport.of(load).request_resources)


def demand_version(load: LoadReport | dict) -> tuple:
    """What, in a load report, is worth planning again for: the demand and bundles, and
    which nodes are alive. Idle times tick every report, so they are left out."""
    report = LoadReport.of(load)
    return (tuple(sorted(demand_of(report).items())),
            tuple(sorted(bundles_of(report).items())),
            tuple(sorted((node.node_id, node.alive) for node in report.nodes)))


def node_records(now_s: float, nodes: list[Node], load: LoadReport | dict,
                 state: MonitorState,
                 join_timeout_s: float = DEFAULT_JOIN_TIMEOUT_S) -> list[NodeRecord]:
    """Provider nodes as planner records. Status: update-failed -> failed; up-to-date and
    alive in the runtime -> running (with the runtime's resources and idle time);
    up-to-date but not (yet) in the runtime -> bootstrapping until join_timeout_s, then
    failed; a runtime node that stopped heartbeating -> failed; the rest -> launching or
    bootstrapping by the provider's state."""
    runtime_nodes = {item.node_id: item for item in LoadReport.of(load).nodes}
    records = []
    seen = set()
    for node in nodes:
        seen.add(node.id)
        live = runtime_nodes.get(node.id)
        status, failure = _status_of(now_s, node, live, state, join_timeout_s)
        total, used, idle_since = {}, {}, None
        if live is not None and live.alive:
            total = dict(live.resources_total)
            available = live.resources_available
            used = {name: max(0.0, amount - float(available.get(name, 0.0)))
                    for name, amount in total.items()}
            idle_since = live.idle_since_s
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


def _status_of(now_s, node: Node, live: NodeLoad | None, state: MonitorState,
               join_timeout_s: float) -> tuple[str, str | None]:
    """The planner's status by the one table of node states (launcher.node_states); what
    is kept here is how long an up-to-date node has waited to join the runtime."""
    flags, waited_s = RuntimeFlags.from_report(live), 0.0
    if node.status == STATUS_UP_TO_DATE:
        if flags.alive:
            state.waiting_to_join_since.pop(node.id, None)
        elif not flags.joined:
            waited_s = now_s - state.waiting_to_join_since.setdefault(node.id, now_s)
    return planner_status(node.status, node.state, flags, waited_to_join_s=waited_s,
                          join_timeout_s=join_timeout_s, failure=node.tags.get(TAG_FAILURE))


def build_snapshot(now_s: float, nodes: list[Node], load: LoadReport | dict,
                   state: MonitorState, join_timeout_s: float = DEFAULT_JOIN_TIMEOUT_S
                   ) -> Snapshot:
    load = LoadReport.of(load)
    records = node_records(now_s, nodes, load, state, join_timeout_s)
    for record in records:
        if record.status == NODE_FAILED and not record.is_head:
            state.node_failed(record.node_type, record.id)
    return Snapshot(now_s=now_s, nodes=tuple(records), demand=demand_of(load),
                    requested_bundles=bundles_of(load),
                    backoffs=state.active_backoffs(now_s),
                    bootstrap_failures=state.bootstrap_failures())
