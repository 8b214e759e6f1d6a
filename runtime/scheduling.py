"""Resource shapes: normalising, fitting, and demand aggregation. A shape is a dict
{"CPU": 1.0, "GPU": 0.0, "custom": 2.0}; as a dict key it is a sorted tuple of its
non-zero items."""
from __future__ import annotations

import math

EPSILON = 1e-9


def make_shape(num_cpus: float | None, num_gpus: float | None, resources: dict | None,
               default_cpus: float) -> dict:
    shape = {"CPU": float(default_cpus if num_cpus is None else num_cpus)}
    if num_gpus:
        shape["GPU"] = float(num_gpus)
    for name, amount in (resources or {}).items():
        shape[name] = float(amount)
    return {k: v for k, v in shape.items() if v > 0}


def shape_key(shape: dict) -> tuple:
    return tuple(sorted((k, float(v)) for k, v in shape.items() if v > 0))


def fits(shape: dict, available: dict) -> bool:
    return all(available.get(k, 0.0) + EPSILON >= v for k, v in shape.items() if v > 0)


def fit_count(need, free) -> int:
    """How many units of a shape fit in `free`: the least, over the resources it asks
    for, of floor(free / need). `need` is (key, amount > 0) pairs; `free` is indexed by
    those keys (the planner's resource vectors by position, autoscaler.binpack; a
    resource table by name, `capacity_for`). The one judgement of "fits" shared by the
    planner and the control service's `infeasible`, so they never disagree about a
    shape."""
    best = -1
    for index, amount in need:
        fits = math.floor(free[index] / amount + EPSILON)
        if fits <= 0:
            return 0
        if best < 0 or fits < best:
            best = fits
    return max(best, 0)


def need_of(shape: dict) -> tuple:
    """A shape as fit_count's `need`: (name, amount) pairs of what it asks for."""
    return tuple((name, float(amount)) for name, amount in shape.items() if amount > 0)


def capacity_for(need: tuple, resources: dict) -> dict:
    """A resource table as fit_count's `free` for `need`: every name it asks for."""
    return {name: float(resources.get(name, 0.0)) for name, _ in need}


def acquire(available: dict, shape: dict) -> None:
    for k, v in shape.items():
        available[k] = available.get(k, 0.0) - v


def release(available: dict, shape: dict) -> None:
    for k, v in shape.items():
        available[k] = available.get(k, 0.0) + v


def add_demand(total: dict, demand: dict) -> None:
    """Merge a {shape_key: count} demand (keys may arrive as lists) into total."""
    for key, count in demand.items():
        key = tuple(tuple(item) for item in key)
        total[key] = total.get(key, 0) + count


def lendable(shape: dict) -> dict:
    """What a task blocked in get() lends to other work meanwhile: all but its GPUs,
    which stay with it (its CUDA_VISIBLE_DEVICES cannot change under it)."""
    return {k: v for k, v in shape.items() if k != "GPU"}


def kept_while_blocked(shape: dict) -> dict:
    """The part of a shape a blocked task keeps: its GPUs."""
    return {"GPU": shape["GPU"]} if shape.get("GPU") else {}


def configured(name: str, amount: float | None, resources: dict | None,
               env_resources: dict | None) -> float | None:
    """How much of `name` the flags or CORRAL_NODE_RESOURCES give a node, in
    node_resources' order (--resources, then the flag, then the variable); None when
    none of them says (detection decides)."""
    if resources and name in resources:
        return float(resources[name])
    if amount is not None:
        return float(amount)
    if env_resources and name in env_resources:
        return float(env_resources[name])
    return None


def node_resources(num_cpus: float | None, num_gpus: float | None,
                   resources: dict | None, env_resources: dict | None,
                   cpu_count: int, detected: dict | None = None) -> dict:
    """A node's total resources: explicit flags win, then CORRAL_NODE_RESOURCES, then
    what was found on the machine (its CPU count; `detected`: GPUs and their
    accelerator_type, runtime.node.gpus)."""
    total = {k: float(v) for k, v in (env_resources or {}).items()}
    if num_cpus is not None:
        total["CPU"] = float(num_cpus)
    total.setdefault("CPU", float(cpu_count))
    if num_gpus is not None:
        total["GPU"] = float(num_gpus)
    for name, amount in (resources or {}).items():
        total[name] = float(amount)
    for name, amount in (detected or {}).items():
        total.setdefault(name, float(amount))
    return {k: v for k, v in total.items() if v > 0}
