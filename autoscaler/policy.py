"""The planner's rules, derived from the cluster config: node types with their resources
and limits, the global worker limit, pacing and idle timeouts.

`policy_from_config(ClusterConfig)` builds it; tests and `corral simulate` may build a
Policy directly.
"""
from __future__ import annotations

import dataclasses
from types import MappingProxyType
from typing import TYPE_CHECKING, Mapping

if TYPE_CHECKING:  # pragma: no cover
    from launcher.config.model import ClusterConfig

# Resources any task may use. Every other resource (GPU, TPU, custom accelerators) is
# scarce: nodes that have it are kept for work that asks for it.
GENERIC_RESOURCES = frozenset({"CPU", "memory", "object_store_memory"})

DEFAULT_MAX_BOOTSTRAP_FAILURES = 3
MIN_PENDING_NODES = 5  # upscaling_speed never paces below this many nodes pending at once


@dataclasses.dataclass(frozen=True)
class NodeTypePolicy:
    name: str
    resources: Mapping[str, float]
    min_workers: int = 0
    max_workers: int = 0
    idle_timeout_s: float | None = None  # None: the policy's idle_timeout_s
    launch_hash: str | None = None  # None: do not check nodes' launch hashes

    def __post_init__(self):
        object.__setattr__(self, "resources", MappingProxyType(
            {name: float(amount) for name, amount in self.resources.items() if amount}))

    @property
    def scarce_resources(self) -> frozenset[str]:
        return frozenset(name for name in self.resources if name not in GENERIC_RESOURCES)


@dataclasses.dataclass(frozen=True)
class Policy:
    node_types: Mapping[str, NodeTypePolicy]  # the types workers may be launched as
    max_workers: int = 2  # all worker nodes together (the head not counted)
    upscaling_speed: float = 1.0
    idle_timeout_s: float = 300.0
    head_node_type: str | None = None
    max_bootstrap_failures: int = DEFAULT_MAX_BOOTSTRAP_FAILURES

    def __post_init__(self):
        object.__setattr__(self, "node_types", MappingProxyType(dict(self.node_types)))

    def idle_timeout_for(self, node_type: str) -> float:
        spec = self.node_types.get(node_type)
        if spec is not None and spec.idle_timeout_s is not None:
            return spec.idle_timeout_s
        return self.idle_timeout_s


def policy_from_config(config: "ClusterConfig",
                       launch_hashes: Mapping[str, str] | None = None,
                       max_bootstrap_failures: int = DEFAULT_MAX_BOOTSTRAP_FAILURES) -> Policy:
    """The policy of a normalised ClusterConfig. `launch_hashes` ({type: hash}) overrides
    the launcher's (launcher.bootstrap.hashing.launch_hash, which `corral up` tags nodes with);
    pass {} to switch hash checking off."""
    from launcher.bootstrap.hashing import launch_hash  # the same hash `corral up` tags nodes with
    types = {}
    for name, spec in config.worker_node_types().items():
        if launch_hashes is None:
            node_hash = launch_hash(config, name)
        else:
            node_hash = launch_hashes.get(name)
        types[name] = NodeTypePolicy(
            name=name, resources=dict(spec.resources), min_workers=spec.min_workers,
            max_workers=spec.max_workers, idle_timeout_s=spec.idle_timeout_s,
            launch_hash=node_hash)
    return Policy(node_types=types, max_workers=config.max_workers,
                  upscaling_speed=config.upscaling_speed,
                  idle_timeout_s=config.idle_timeout_minutes * 60.0,
                  head_node_type=config.head_node_type,
                  max_bootstrap_failures=max_bootstrap_failures)
