"""Small builders for planner tests: policies, nodes and snapshots from plain dicts."""
from __future__ import annotations

from autoscaler.policy import NodeTypePolicy, Policy
from autoscaler.snapshot import NodeRecord, Snapshot, make_shape

CPU4 = {"CPU": 4}
CPU16 = {"CPU": 16}
GPU4 = {"CPU": 16, "GPU": 4}


def policy(types: dict, max_workers: int = 100, upscaling_speed: float = 100.0,
           idle_timeout_s: float = 300.0, max_bootstrap_failures: int = 3) -> Policy:
    """types: {name: (resources, min_workers, max_workers)} or {name: NodeTypePolicy}."""
    specs = {}
    for name, spec in types.items():
        if isinstance(spec, NodeTypePolicy):
            specs[name] = spec
        else:
            resources, low, high = spec
            specs[name] = NodeTypePolicy(name, resources, min_workers=low, max_workers=high)
    return Policy(node_types=specs, max_workers=max_workers, upscaling_speed=upscaling_speed,
                  idle_timeout_s=idle_timeout_s, max_bootstrap_failures=max_bootstrap_failures)


def node(node_id: str, node_type: str, resources: dict, *, status: str = "running",
         used: dict | None = None, idle_since_s: float | None = None, kind: str = "worker",
         launch_hash: str | None = None, failure: str | None = None) -> NodeRecord:
    return NodeRecord(id=node_id, node_type=node_type, status=status, kind=kind,
                      resources_total=resources, resources_used=used or {},
                      idle_since_s=idle_since_s, launch_hash=launch_hash, failure=failure)


def demand(*items) -> dict:
    """demand(({"CPU": 1}, 10), ({"GPU": 1}, 2)) -> {shape: count}"""
    counts: dict = {}
    for resources, count in items:
        shape = make_shape(resources)
        counts[shape] = counts.get(shape, 0) + count
    return counts


def snapshot(now_s: float = 1000.0, nodes=(), pending=(), bundles=(), backoffs=(),
             bootstrap_failures=None) -> Snapshot:
    return Snapshot(now_s=now_s, nodes=tuple(nodes), demand=demand(*pending),
                    requested_bundles=demand(*bundles), backoffs=tuple(backoffs),
                    bootstrap_failures=bootstrap_failures or {})
