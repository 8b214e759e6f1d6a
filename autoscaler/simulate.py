"""Replay a demand trace through the planner, with simulated launch delays, a simple
scheduler and idle timers, to see what a config would do before paying for it.

Event-driven: time jumps to the next arrival, task end, node ready or idle expiry; at each
event the pending tasks are scheduled (first fit, nodes without unneeded scarce resources
first), a Snapshot is built, `plan()` runs and its launches and terminations apply.
"""
from __future__ import annotations

import dataclasses
import heapq
import math

from autoscaler.binpack import ResourceSpace, fit_count, scarce_of
from autoscaler.inputs import TraceEntry
from autoscaler.planner import plan
from autoscaler.policy import Policy
from autoscaler.snapshot import NODE_PENDING, NODE_RUNNING, NodeRecord, Shape, Snapshot

EPS = 1e-9


@dataclasses.dataclass
class _Node:
    id: str
    node_type: str
    kind: str
    resources: dict[str, float]
    created_s: float
    ready_s: float
    used: dict[str, float] = dataclasses.field(default_factory=dict)
    running: int = 0  # tasks running on it
    idle_since_s: float | None = None
    terminated_s: float | None = None


@dataclasses.dataclass
class _Waiting:
    shape: Shape
    count: int
    duration_s: float
    arrived_s: float


@dataclasses.dataclass(frozen=True)
class TimelineRow:
    at_s: float
    running: dict[str, int]
    pending: dict[str, int]
    queued_tasks: int
    running_tasks: int


@dataclasses.dataclass(frozen=True)
class SimulationResult:
    timeline: tuple[TimelineRow, ...]
    waits: tuple[tuple[float, int], ...]  # (seconds waited, tasks)
    node_seconds: dict[str, float]  # per node type, workers and head
    never_ran: dict[Shape, int]
    end_s: float
    launched: dict[str, int]
    reasons_seen: tuple[str, ...]

    def wait_percentile(self, fraction: float) -> float | None:
        total = sum(count for _, count in self.waits)
        if not total:
            return None
        rank = max(1, math.ceil(fraction * total))
        seen = 0
        for waited, count in sorted(self.waits):
            seen += count
            if seen >= rank:
                return waited
        return self.waits[-1][0]

    @property
    def tasks_run(self) -> int:
        return sum(count for _, count in self.waits)


class Simulation:
    def __init__(self, policy: Policy, head_type: str, head_resources: dict[str, float],
                 trace: list[TraceEntry], *, launch_delay_s: float = 30.0,
                 max_time_s: float = 7 * 24 * 3600.0):
        self.policy = policy
        self.trace = sorted(trace, key=lambda entry: entry.at_s)
        self.launch_delay_s = launch_delay_s
        self.max_time_s = max_time_s
        names = {name for spec in policy.node_types.values() for name in spec.resources}
        names |= set(head_resources)
        names |= {name for entry in trace for name, _ in entry.shape}
        self.space = ResourceSpace(names)
        self.now_s = 0.0
        self.nodes: dict[str, _Node] = {}
        self.all_nodes: list[_Node] = []
        self.waiting: list[_Waiting] = []
        self.ends: list[tuple[float, int, str, Shape, int]] = []  # heap of task batch ends
        self._sequence = 0
        self._batches = 0
        self.waits: list[tuple[float, int]] = []
        self.timeline: list[TimelineRow] = []
        self.launched: dict[str, int] = {}
        self.reasons_seen: list[str] = []
        self._add_node("head", head_type, "head", dict(head_resources), ready_s=0.0)
        for name, spec in sorted(policy.node_types.items()):
            for _ in range(spec.min_workers):  # `corral up` brought these up
                self._add_node(self._new_id(), name, "worker", dict(spec.resources), 0.0)

    def _new_id(self) -> str:
        self._sequence += 1
        return f"w{self._sequence:04d}"

    def _add_node(self, node_id, node_type, kind, resources, ready_s) -> None:
        node = _Node(node_id, node_type, kind, resources, self.now_s, ready_s)
        self.nodes[node_id] = node
        self.all_nodes.append(node)

    # -- scheduling ---------------------------------------------------------------------
    def _free(self, node: _Node) -> tuple[float, ...]:
        return tuple(max(0.0, node.resources.get(name, 0.0) - node.used.get(name, 0.0))
                     for name in self.space.names)

    def _schedule(self) -> None:
        ready = [node for node in self.nodes.values() if node.ready_s <= self.now_s + EPS]
        still_waiting = []
        for group in self.waiting:
            need = self.space.need(group.shape)
            wanted = scarce_of(name for name, _ in group.shape)
            order = sorted(ready, key=lambda node: (
                not scarce_of(node.resources) <= wanted, node.id))
            for node in order:
                if group.count <= 0:
                    break
                fits = fit_count(need, self._free(node)) if need else group.count
                started = min(fits, group.count)
                if started <= 0:
                    continue
                for name, amount in group.shape:
                    node.used[name] = node.used.get(name, 0.0) + amount * started
                node.running += started
                node.idle_since_s = None
                group.count -= started
                self.waits.append((self.now_s - group.arrived_s, started))
                self._batches += 1
                heapq.heappush(self.ends, (self.now_s + group.duration_s, self._batches,
                                           node.id, group.shape, started))
            if group.count > 0:
                still_waiting.append(group)
        self.waiting = still_waiting

    def _finish_due(self) -> None:
        while self.ends and self.ends[0][0] <= self.now_s + EPS:
            end_s, _, node_id, shape, count = heapq.heappop(self.ends)
            node = self.nodes.get(node_id)
            if node is None:
                continue
            for name, amount in shape:
                node.used[name] = max(0.0, node.used.get(name, 0.0) - amount * count)
            node.running -= count
            if node.running == 0:
                node.idle_since_s = end_s

    # -- planning -------------------------------------------------------------------------
    def _snapshot(self) -> Snapshot:
        records = []
        for node in self.nodes.values():
            is_ready = node.ready_s <= self.now_s + EPS
            spec = self.policy.node_types.get(node.node_type)
            records.append(NodeRecord(
                id=node.id, node_type=node.node_type, kind=node.kind,
                status=NODE_RUNNING if is_ready else NODE_PENDING,
                resources_total=node.resources, resources_used=node.used,
                idle_since_s=node.idle_since_s if is_ready else None,
                launch_hash=spec.launch_hash if spec else None))
        demand: dict[Shape, int] = {}
        for group in self.waiting:
            demand[group.shape] = demand.get(group.shape, 0) + group.count
        return Snapshot(now_s=self.now_s, nodes=tuple(records), demand=demand)

    def _apply_plan(self) -> None:
        result = plan(self._snapshot(), self.policy)
        for reason in result.reasons:
            if reason.kind in ("cap", "skip", "infeasible", "quarantine", "backoff"):
                if reason.message not in self.reasons_seen:
                    self.reasons_seen.append(reason.message)
        for node_id, _ in result.to_terminate:
            node = self.nodes.pop(node_id, None)
            if node is not None:
                node.terminated_s = self.now_s
        for name, count in sorted(result.to_launch.items()):
            spec = self.policy.node_types[name]
            for _ in range(count):
                self._add_node(self._new_id(), name, "worker", dict(spec.resources),
                               self.now_s + self.launch_delay_s)
            self.launched[name] = self.launched.get(name, 0) + count
        for node in self.nodes.values():
            if node.ready_s <= self.now_s + EPS and node.running == 0 \
                    and node.idle_since_s is None:
                node.idle_since_s = node.ready_s

    def _record(self) -> None:
        running: dict[str, int] = {}
        pending: dict[str, int] = {}
        for node in self.nodes.values():
            if node.kind == "head":
                continue
            bucket = running if node.ready_s <= self.now_s + EPS else pending
            bucket[node.node_type] = bucket.get(node.node_type, 0) + 1
        row = TimelineRow(self.now_s, running, pending,
                          sum(group.count for group in self.waiting),
                          sum(node.running for node in self.nodes.values()))
        last = self.timeline[-1] if self.timeline else None
        if last is None or (last.running, last.pending, last.queued_tasks,
                            last.running_tasks) != (row.running, row.pending,
                                                    row.queued_tasks, row.running_tasks):
            self.timeline.append(row)

    def _next_event(self, next_arrival: int) -> float | None:
        times = []
        if next_arrival < len(self.trace):
            times.append(self.trace[next_arrival].at_s)
        if self.ends:
            times.append(self.ends[0][0])
        for node in self.nodes.values():
            if node.ready_s > self.now_s + EPS:
                times.append(node.ready_s)
            elif node.kind == "worker" and node.idle_since_s is not None:
                expiry = node.idle_since_s + self.policy.idle_timeout_for(node.node_type)
                if expiry > self.now_s + EPS:
                    times.append(expiry)
        return min(times) if times else None

    def run(self) -> SimulationResult:
        next_arrival = 0
        while True:
            while next_arrival < len(self.trace) and \
                    self.trace[next_arrival].at_s <= self.now_s + EPS:
                entry = self.trace[next_arrival]
                if entry.count:
                    self.waiting.append(_Waiting(entry.shape, entry.count, entry.duration_s,
                                                 entry.at_s))
                next_arrival += 1
            self._finish_due()
            self._schedule()
            self._apply_plan()
            self._schedule()
            self._record()
            upcoming = self._next_event(next_arrival)
            if upcoming is None or upcoming > self.max_time_s:
                break
            self.now_s = max(upcoming, self.now_s)
        node_seconds: dict[str, float] = {}
        for node in self.all_nodes:
            until = node.terminated_s if node.terminated_s is not None else self.now_s
            node_seconds[node.node_type] = node_seconds.get(node.node_type, 0.0) + \
                max(0.0, until - node.created_s)
        never: dict[Shape, int] = {}
        for group in self.waiting:
            never[group.shape] = never.get(group.shape, 0) + group.count
        return SimulationResult(tuple(self.timeline), tuple(self.waits), node_seconds, never,
                                self.now_s, dict(self.launched), tuple(self.reasons_seen))
