"""The orders in which the planner takes shapes: pure helpers over resource vectors.

`need_of(shape)` gives a shape's (position, amount) pairs (binpack.Need)."""
from __future__ import annotations

import math
from typing import Callable, Iterable, Mapping

from autoscaler.binpack import BinGroup, Need, Vector, scarce_of
from autoscaler.snapshot import Shape

NeedOf = Callable[[Shape], Need]


def by_size(shapes: Iterable[Shape], need_of: NeedOf, capacities: list[Vector]) -> list[Shape]:
    """Shapes asking for scarce resources first, then larger before smaller: the size is
    the largest share of any resource, relative to the biggest amount of it any node or
    node type has (first-fit decreasing)."""
    largest: dict[int, float] = {}
    for vector in capacities:
        for index, amount in enumerate(vector):
            largest[index] = max(largest.get(index, 0.0), amount)

    def key(shape: Shape):
        share = 0.0
        for index, amount in need_of(shape):
            share = max(share, amount / largest[index] if largest.get(index) else math.inf)
        return (0 if scarce_of(name for name, _ in shape) else 1, -share, shape)
    return sorted(shapes, key=key)


def by_leftover_fit(shapes: list[Shape], counts: Mapping[Shape, int], need_of: NeedOf,
                    width: int, groups: list[BinGroup]) -> list[Shape]:
    """Shapes that use mostly the resources the free capacity has plenty of (relative to
    the demand for them) first: memory left free on GPU nodes then goes to memory-heavy
    work instead of being stranded. Ties keep the given order."""
    free = [0.0] * width
    for group in groups:
        for index, amount in enumerate(group.free):
            free[index] += amount * group.count
    demand = [0.0] * width
    for shape in shapes:
        for index, amount in need_of(shape):
            demand[index] += amount * counts[shape]
    plenty = [free[index] / demand[index] if demand[index] else 0.0 for index in range(width)]

    def score(shape: Shape) -> float:
        weights = [(amount / demand[index], plenty[index]) for index, amount in need_of(shape)]
        total = sum(weight for weight, _ in weights)
        return sum(weight * value for weight, value in weights) / total if total else 0.0
    position = {shape: rank for rank, shape in enumerate(shapes)}
    return sorted(shapes, key=lambda shape: (-round(score(shape), 9), position[shape]))


def smallest_needs(shapes: list[Shape], need_of: NeedOf, width: int) -> Vector:
    """Per resource, the least any of these shapes asks (0 where one asks none)."""
    smallest: list[float] | None = None
    for shape in shapes:
        vector = [0.0] * width
        for index, amount in need_of(shape):
            vector[index] = amount
        smallest = vector if smallest is None else [min(a, b) for a, b in zip(smallest, vector)]
    return tuple(smallest) if smallest is not None else tuple(0.0 for _ in range(width))
