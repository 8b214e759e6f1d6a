"""Resource shapes: normalising, fitting, and demand aggregation. A shape is a dict
{"CPU": 1.0, "GPU": 0.0, "custom": 2.0}; as a dict key it is a sorted tuple of its
non-zero items."""
from __future__ import annotations

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


def node_resources(num_cpus: float | None, num_gpus: float | None,
                   resources: dict | None, env_resources: dict | None,
                   cpu_count: int) -> dict:
    """A node's total resources: explicit flags win, then CORRAL_NODE_RESOURCES, then
    the machine's CPU count."""
    total = {k: float(v) for k, v in (env_resources or {}).items()}
    if num_cpus is not None:
        total["CPU"] = float(num_cpus)
    total.setdefault("CPU", float(cpu_count))
    if num_gpus is not None:
        total["GPU"] = float(num_gpus)
    for name, amount in (resources or {}).items():
        total[name] = float(amount)
    return {k: v for k, v in total.items() if v > 0}
