"""Planner benchmark: planning time and nodes chosen for 10k / 100k / 1M pending tasks,
uniform ({"CPU": 1}) and mixed (CPU, CPU+memory, GPU shapes), over six node types from a
4-CPU node to an 8-GPU node. Prints, per case: planning time, nodes per type, unplaced
tasks, and the gap to a lower bound on the node count (an LP relaxation when scipy is
installed, else per-resource totals).

    python3 bench/planner.py [--sizes 10000,100000,1000000] [--repeat 5]

Not a test: figures only. Targets (issue 4): 10,000 mixed < 50 ms, 1,000,000 < 1 s,
node count within 3% of the lower bound, no GPU task left unplaced while the GPU types'
maxima allow more GPU nodes.
"""
from __future__ import annotations

import argparse
import math
import os
import random
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from autoscaler.planner import plan  # noqa: E402
from autoscaler.policy import NodeTypePolicy, Policy  # noqa: E402
from autoscaler.snapshot import Snapshot, aggregate, make_shape  # noqa: E402

GIB = float(2 ** 30)
NODE_TYPES = {
    "cpu4": {"CPU": 4, "memory": 16 * GIB},
    "cpu16": {"CPU": 16, "memory": 64 * GIB},
    "cpu64": {"CPU": 64, "memory": 256 * GIB},
    "mem32": {"CPU": 32, "memory": 512 * GIB},
    "gpu1": {"CPU": 8, "GPU": 1, "memory": 64 * GIB},
    "gpu8": {"CPU": 64, "GPU": 8, "memory": 512 * GIB},
}
MIXED_SHAPES = [  # (shape, weight)
    ({"CPU": 1}, 0.35),
    ({"CPU": 2}, 0.15),
    ({"CPU": 4, "memory": 8 * GIB}, 0.15),
    ({"CPU": 1, "memory": 16 * GIB}, 0.12),
    ({"CPU": 8, "memory": 32 * GIB}, 0.08),
    ({"CPU": 4, "GPU": 1, "memory": 16 * GIB}, 0.06),
    ({"CPU": 1, "GPU": 1}, 0.05),
    ({"CPU": 8, "GPU": 2, "memory": 64 * GIB}, 0.04),
]


def make_policy(max_per_type: dict[str, int] | None = None, max_workers: int = 1_000_000):
    limits = max_per_type or {}
    return Policy(node_types={name: NodeTypePolicy(name, resources,
                                                   max_workers=limits.get(name, 1_000_000))
                              for name, resources in NODE_TYPES.items()},
                  max_workers=max_workers, upscaling_speed=1e9)


def mixed_demand(total: int, seed: int = 7) -> dict:
    rng = random.Random(seed)
    weights = [weight for _, weight in MIXED_SHAPES]
    counts = [0] * len(MIXED_SHAPES)
    # Multinomial by chunks keeps generation fast for a million tasks.
    for index in rng.choices(range(len(MIXED_SHAPES)), weights=weights, k=min(total, 10_000)):
        counts[index] += 1
    scale = total / max(1, sum(counts))
    demand = {make_shape(shape): int(round(count * scale))
              for (shape, _), count in zip(MIXED_SHAPES, counts)}
    return {shape: count for shape, count in demand.items() if count}


def lower_bound(demand: dict, policy: Policy) -> tuple[float, str]:
    """Fewest nodes any packing could use (fractional), per resource totals, with the
    generic resources of shapes that need a scarce resource counted against the types
    that have it."""
    names = sorted({name for spec in policy.node_types.values() for name in spec.resources})
    types = sorted(policy.node_types)
    totals = {name: 0.0 for name in names}
    scarce_totals: dict[str, dict[str, float]] = {}
    for shape, count in demand.items():
        scarce = [name for name, _ in shape if name not in ("CPU", "memory")]
        for name, amount in shape:
            totals[name] += amount * count
            for scarce_name in scarce:
                scarce_totals.setdefault(scarce_name, {}).setdefault(name, 0.0)
                scarce_totals[scarce_name][name] += amount * count
    rows, bounds = [], []
    for name in names:
        rows.append([-policy.node_types[t].resources.get(name, 0.0) for t in types])
        bounds.append(-totals[name])
    for scarce_name, needs in scarce_totals.items():
        for name, amount in needs.items():
            rows.append([-(policy.node_types[t].resources.get(name, 0.0)
                           if policy.node_types[t].resources.get(scarce_name) else 0.0)
                         for t in types])
            bounds.append(-amount)
    try:
        from scipy.optimize import linprog
    except ImportError:
        best = max(totals[name] / max(policy.node_types[t].resources.get(name, 0.0)
                                      for t in types) for name in names if totals[name])
        return best, "per-resource totals"
    result = linprog([1.0] * len(types), A_ub=rows, b_ub=bounds,
                     bounds=[(0, policy.node_types[t].max_workers) for t in types],
                     method="highs")
    return float(result.fun), "LP relaxation"


def run_case(label: str, demand: dict, policy: Policy, repeat: int) -> None:
    tasks = sum(demand.values())
    snapshot = Snapshot(now_s=0.0, demand=demand)
    timings = []
    result = None
    for _ in range(repeat):
        started = time.perf_counter()
        result = plan(snapshot, policy)
        timings.append(time.perf_counter() - started)
    nodes = sum(result.target_launch.values())
    unplaced = sum(item.count for item in result.unplaced)
    bound, method = lower_bound(demand, policy)
    gap = (nodes - math.ceil(bound)) / math.ceil(bound) * 100 if bound else 0.0
    chosen = ", ".join(f"{name} {count}" for name, count in sorted(result.target_launch.items()))
    print(f"{label:<22} tasks {tasks:>9,}  shapes {len(demand):>3}  "
          f"plan {min(timings) * 1000:8.2f} ms (median {sorted(timings)[len(timings)//2]*1000:.2f})  "
          f"nodes {nodes:>7,}  bound {math.ceil(bound):>7,} ({method})  gap {gap:5.2f}%  "
          f"unplaced {unplaced}")
    print(f"{'':<22} chosen: {chosen}")
    gpu_unplaced = sum(item.count for item in result.unplaced
                       if any(name == "GPU" for name, _ in item.shape))
    if gpu_unplaced:
        print(f"{'':<22} GPU tasks unplaced: {gpu_unplaced} ({result.unplaced})")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    sizes = [int(size) for size in args.sizes.split(",")]
    policy = make_policy()
    print("node types:", ", ".join(f"{name} {spec}" for name, spec in NODE_TYPES.items()))
    for size in sizes:
        run_case(f"uniform {size:,}", {make_shape({"CPU": 1}): size}, policy, args.repeat)
        run_case(f"mixed {size:,}", mixed_demand(size), policy, args.repeat)
    # Many distinct shapes (memory asked in MiB steps): the cost grows with shapes, not tasks.
    rng = random.Random(3)
    distinct: dict = {}
    for _ in range(10_000):
        shape = make_shape({"CPU": rng.choice([1, 2, 4]),
                            "memory": rng.randrange(1, 2048) * 2 ** 20})
        distinct[shape] = distinct.get(shape, 0) + 1
    run_case("10,000 distinct-ish", distinct, policy, max(1, args.repeat // 2))
    # Aggregation cost, for honesty: the runtime reports {shape: count}, but if tasks
    # arrived one by one this is what counting them would take.
    shapes = [make_shape(shape) for shape, _ in MIXED_SHAPES]
    per_task = [shapes[index % len(shapes)] for index in range(max(sizes))]
    started = time.perf_counter()
    aggregate(per_task)
    print(f"aggregating {len(per_task):,} per-task shapes: "
          f"{(time.perf_counter() - started) * 1000:.1f} ms")
    # GPU maxima binding: every GPU the maxima allow is launched and used for GPU work.
    capped = make_policy({"gpu1": 50, "gpu8": 20})
    demand = mixed_demand(10_000)
    result = plan(Snapshot(now_s=0.0, demand=demand), capped)
    gpus = sum(count * NODE_TYPES[name].get("GPU", 0) for name, count in
               result.target_launch.items())
    gpu_demand = sum(count * dict(shape).get("GPU", 0) for shape, count in demand.items())
    gpu_unplaced = sum(item.count * dict(item.shape).get("GPU", 0) for item in result.unplaced)
    print(f"GPU maxima binding (gpu1 <= 50, gpu8 <= 20, 210 GPUs): GPUs launched {gpus:g}, "
          f"GPUs asked {gpu_demand:g}, GPUs' worth of GPU tasks unplaced {gpu_unplaced:g}, "
          f"CPU-only tasks unplaced "
          f"{sum(i.count for i in result.unplaced if 'GPU' not in dict(i.shape))}")


if __name__ == "__main__":
    main()
