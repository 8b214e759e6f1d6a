"""Bin-packing by shape with count arithmetic.

Demand arrives as {shape: count}; capacity as groups of identical bins (`BinGroup`: a
node type, the free resources of one node, and how many such nodes). Placing `count`
tasks of one shape on a group of `k` identical nodes that each hold `f` of them is
arithmetic: `count // f` nodes fill up, one takes the rest, the others stay as they
were. So a million identical tasks cost one step, not a million.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Iterable, Mapping

from autoscaler.policy import GENERIC_RESOURCES
from autoscaler.snapshot import Shape
# How many tasks of a shape fit in `free` (min over resources of floor(free/need)): the
# runtime's, so the control service's `infeasible` is judged as the planner judges.
from runtime.scheduling import fit_count  # noqa: F401 - planner and simulate import it here

EPS = 1e-9
Vector = tuple[float, ...]
Need = tuple[tuple[int, float], ...]  # (resource position, amount) for amounts > 0

# Bin ranks: the order in which existing capacity is used (lowest first).
RANK_BUSY = 0       # running nodes already doing work
RANK_PENDING = 1    # nodes on their way up
RANK_NEW = 2        # nodes this plan launches
RANK_IDLE = 3       # nodes idle past their timeout: used last, so they can go


class ResourceSpace:
    """Positions of resource names in the vectors used while packing."""

    def __init__(self, names: Iterable[str]):
        self.names = tuple(sorted(set(names)))
        self.position = {name: index for index, name in enumerate(self.names)}

    def vector(self, resources: Mapping[str, float]) -> Vector:
        values = [0.0] * len(self.names)
        for name, amount in resources.items():
            values[self.position[name]] = float(amount)
        return tuple(values)

    def need(self, shape: Shape) -> Need:
        return tuple((self.position[name], amount) for name, amount in shape if amount > 0)

    def as_dict(self, vector: Vector) -> dict[str, float]:
        return {name: vector[index] for index, name in enumerate(self.names) if vector[index]}


def subtract(free: Vector, need: Need, times: int) -> Vector:
    values = list(free)
    for index, amount in need:
        values[index] = max(0.0, values[index] - amount * times)
    return tuple(values)


def scarce_of(names: Iterable[str]) -> frozenset[str]:
    return frozenset(name for name in names if name not in GENERIC_RESOURCES)


@dataclasses.dataclass(slots=True)
class BinGroup:
    """`count` nodes of `node_type`, each with `free` resources left.
    `node_ids` names them for existing nodes (None for nodes this plan launches)."""
    node_type: str
    free: Vector
    count: int
    rank: int
    scarce: frozenset[str]
    node_ids: list[str] | None = None
    order: int = 0  # insertion order, for a deterministic tie-break

    def split(self, count: int, free: Vector) -> "BinGroup":
        """Take `count` of these nodes out as a new group with `free` left."""
        ids = None
        if self.node_ids is not None:
            ids, self.node_ids = self.node_ids[:count], self.node_ids[count:]
        self.count -= count
        return BinGroup(self.node_type, free, count, self.rank, self.scarce, ids, self.order)


class Bins:
    """Capacity to place demand on, as groups of identical nodes."""

    def __init__(self):
        self.groups: list[BinGroup] = []
        self._next_order = 0

    def add(self, node_type: str, free: Vector, count: int, rank: int,
            scarce: frozenset[str], node_ids: list[str] | None = None) -> None:
        if count <= 0:
            return
        self.groups.append(BinGroup(node_type, free, count, rank, scarce,
                                    list(node_ids) if node_ids is not None else None,
                                    self._next_order))
        self._next_order += 1

    def place(self, need: Need, count: int, shape_scarce: frozenset[str],
              touched: set[str] | None = None) -> int:
        """Place up to `count` tasks; returns how many are left unplaced. Nodes without
        scarce resources the shape does not ask for are used first, then in rank order.
        The ids of existing nodes that receive work are added to `touched`."""
        remaining = count
        order = sorted(self.groups, key=lambda group: (
            not group.scarce <= shape_scarce, group.rank, group.order))
        replaced: dict[int, list[BinGroup]] = {}
        for group in order:
            if remaining <= 0:
                break
            per_node = fit_count(need, group.free)
            if per_node <= 0:
                continue
            full_nodes, rest = divmod(remaining, per_node)
            parts: list[BinGroup] = []
            if full_nodes >= group.count:
                placed_group = group.split(group.count, subtract(group.free, need, per_node))
                parts.append(placed_group)
                remaining -= per_node * placed_group.count
            else:
                if full_nodes:
                    parts.append(group.split(full_nodes,
                                             subtract(group.free, need, per_node)))
                if rest:
                    parts.append(group.split(1, subtract(group.free, need, rest)))
                remaining = 0
            if touched is not None:
                for part in parts:
                    touched.update(part.node_ids or ())
            if group.count:
                parts.append(group)
            replaced[id(group)] = parts
        if replaced:
            groups: list[BinGroup] = []
            for group in self.groups:
                groups.extend(replaced.get(id(group), (group,)))
            self.groups = groups
            self._merge()
        return remaining

    def prune(self, smallest: Vector) -> None:
        """Forget groups that can hold none of the shapes still to come: `smallest` has,
        per resource, the least any of them asks (0 where some ask none). Keeps long
        placements fast when nodes fill up."""
        needed = [(index, amount) for index, amount in enumerate(smallest) if amount > 0]
        if needed:
            self.groups = [group for group in self.groups
                           if all(group.free[index] + EPS >= amount
                                  for index, amount in needed)]

    def _merge(self) -> None:
        """Join groups of the same type, rank and free resources; drop empty ones."""
        merged: dict[tuple, BinGroup] = {}
        for group in self.groups:
            if group.count <= 0 or not any(value > EPS for value in group.free):
                continue
            key = (group.node_type, group.rank, group.node_ids is None,
                   tuple(round(value, 9) for value in group.free))
            kept = merged.get(key)
            if kept is None:
                merged[key] = group
            else:
                kept.count += group.count
                if kept.node_ids is not None:
                    kept.node_ids.extend(group.node_ids or ())
        self.groups = list(merged.values())


@dataclasses.dataclass(frozen=True)
class NodeOption:
    """A node type that could be launched for a shape."""
    node_type: str
    capacity: Vector
    per_node: int  # tasks of the shape one node holds
    slots: int  # how many more nodes of this type may be launched


def best_option(options: list[NodeOption], need: Need, count: int,
                outlook: list[float] | None = None) -> NodeOption:
    """The type that would hold all the work still coming (`outlook`: total resources of
    the shapes still to place, this one included) in the fewest nodes; then the one that
    holds these `count` tasks in the fewest nodes; then the one leaving the least unused
    capacity (as a fraction of each node's resources); then by name."""
    def score(option: NodeOption):
        nodes = -(-count // option.per_node)
        coming = nodes
        if outlook is not None:
            coming = max([math.ceil(total / option.capacity[index] - EPS)
                          for index, total in enumerate(outlook)
                          if total > 0 and option.capacity[index] > 0] or [nodes])
        waste = 0.0
        for index, capacity in enumerate(option.capacity):
            if capacity > 0:
                used = sum(amount for position, amount in need if position == index) * count
                waste += max(0.0, nodes * capacity - used) / capacity
        return (coming, nodes, round(waste, 9), option.node_type)
    return min(options, key=score)
