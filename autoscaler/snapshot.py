"""The planner's input: what the cluster looks like at one instant (`Snapshot`).

Plain frozen records, built by the monitor from the provider's nodes and the runtime's
load report, or by tests and `corral simulate` directly. Time is data (`now_s`); nothing
here reads a clock.

A *shape* is one task's (or bundle's) resource request, frozen as a sorted tuple of
(resource, amount) pairs with zero amounts dropped, so equal requests compare and hash
equal and demand can be aggregated as {shape: count}.
"""
from __future__ import annotations

import dataclasses
from types import MappingProxyType
from typing import Iterable, Mapping

# Node statuses the planner distinguishes. They are defined with the node state table
# (launcher.node_states), which maps provider state, stage tag and runtime flags to them.
from launcher.node_states import (NODE_BOOTSTRAPPING, NODE_FAILED,  # noqa: F401
                                  NODE_LAUNCHING, NODE_PENDING, NODE_RUNNING, NODE_STATUSES,
                                  PENDING_STATUSES)

Shape = tuple[tuple[str, float], ...]


def make_shape(resources: Mapping[str, float] | Iterable[tuple[str, float]]) -> Shape:
    """Freeze a resource request: sorted (name, amount) pairs, zero amounts dropped.
    Raises ValueError for a negative or non-numeric amount."""
    items = resources.items() if isinstance(resources, Mapping) else resources
    pairs = []
    for name, amount in items:
        if isinstance(amount, bool) or not isinstance(amount, (int, float)):
            raise ValueError(f"resource {name!r}: amount must be a number, got {amount!r}")
        if amount < 0:
            raise ValueError(f"resource {name!r}: amount must not be negative, got {amount}")
        if amount:
            pairs.append((str(name), float(amount)))
    return tuple(sorted(pairs))


def shape_dict(shape: Shape) -> dict[str, float]:
    """A shape as a plain dict, with whole numbers shown as ints (for JSON and tables)."""
    return {name: int(amount) if float(amount).is_integer() else amount
            for name, amount in shape}


def shape_text(shape: Shape) -> str:
    return "{" + ", ".join(f"{name}: {amount:g}" for name, amount in shape) + "}"


def aggregate(shapes: Iterable[Shape]) -> dict[Shape, int]:
    """Count identical shapes: {shape: count}."""
    counts: dict[Shape, int] = {}
    for shape in shapes:
        counts[shape] = counts.get(shape, 0) + 1
    return counts


def _frozen_counts(counts: Mapping[Shape, int]) -> Mapping[Shape, int]:
    merged: dict[Shape, int] = {}
    for shape, count in counts.items():
        if count < 0:
            raise ValueError(f"demand count for {shape_text(shape)} is negative: {count}")
        if count:
            key = make_shape(shape)
            merged[key] = merged.get(key, 0) + int(count)
    return MappingProxyType(merged)


@dataclasses.dataclass(frozen=True)
class NodeRecord:
    """One node as the planner sees it.

    `resources_total` may be empty for nodes not yet running; the planner then uses the
    node type's resources. `idle_since_s` is None while the node runs work (or is not
    running yet); otherwise the time it became idle."""
    id: str
    node_type: str
    status: str = NODE_RUNNING
    kind: str = "worker"  # "head" or "worker"
    resources_total: Mapping[str, float] = dataclasses.field(default_factory=dict)
    resources_used: Mapping[str, float] = dataclasses.field(default_factory=dict)
    idle_since_s: float | None = None
    launch_hash: str | None = None
    failure: str | None = None  # why a failed node failed (stage: message)

    def __post_init__(self):
        if self.status not in NODE_STATUSES:
            raise ValueError(f"node {self.id}: unknown status {self.status!r}")
        object.__setattr__(self, "resources_total", MappingProxyType(dict(self.resources_total)))
        object.__setattr__(self, "resources_used", MappingProxyType(dict(self.resources_used)))

    @property
    def is_head(self) -> bool:
        return self.kind == "head"

    @property
    def is_pending(self) -> bool:
        return self.status in PENDING_STATUSES


@dataclasses.dataclass(frozen=True)
class LaunchBackoff:
    """A node type that may not be launched before `until_s` (after a failed launch)."""
    node_type: str
    until_s: float
    reason: str  # e.g. "CapacityError: no capacity for gpu8 in zone-a"


@dataclasses.dataclass(frozen=True)
class Snapshot:
    now_s: float
    nodes: tuple[NodeRecord, ...] = ()
    demand: Mapping[Shape, int] = dataclasses.field(default_factory=dict)
    # request_resources bundles: the cluster must be able to hold all of them at once.
    requested_bundles: Mapping[Shape, int] = dataclasses.field(default_factory=dict)
    backoffs: tuple[LaunchBackoff, ...] = ()
    bootstrap_failures: Mapping[str, int] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        object.__setattr__(self, "nodes", tuple(sorted(self.nodes, key=lambda node: node.id)))
        object.__setattr__(self, "demand", _frozen_counts(self.demand))
        object.__setattr__(self, "requested_bundles", _frozen_counts(self.requested_bundles))
        object.__setattr__(self, "backoffs", tuple(self.backoffs))
        object.__setattr__(self, "bootstrap_failures",
                           MappingProxyType(dict(self.bootstrap_failures)))

    def active_backoff(self, node_type: str) -> LaunchBackoff | None:
        """The backoff of this type that lasts longest past now, if any."""
        active = [backoff for backoff in self.backoffs
                  if backoff.node_type == node_type and backoff.until_s > self.now_s]
        return max(active, key=lambda backoff: backoff.until_s) if active else None
