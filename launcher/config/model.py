"""The frozen, normalised cluster config that `launcher.config.load.load_config` produces.

Everything downstream (providers, bootstrap, autoscaler) reads these records, never raw
YAML. Defaults are already filled in; Ray's alias keys are already mapped to ours.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from launcher.config.frozen import freeze, thaw


@dataclasses.dataclass(frozen=True)
class AuthConfig:
    ssh_user: str | None = None
    ssh_private_key: str | None = None  # path, ~ expanded
    ssh_proxy_command: str | None = None  # %h and %p are replaced
    ssh_timeout_s: float = 120.0


@dataclasses.dataclass(frozen=True)
class NodeTypeConfig:
    name: str
    node_config: Mapping[str, Any]
    resources: Mapping[str, float]  # {"CPU": 4, "GPU": 1, "memory": ...}; may be empty
    min_workers: int = 0
    max_workers: int = 0
    idle_timeout_s: float | None = None  # overrides the cluster's idle_timeout_minutes

    def __post_init__(self):
        object.__setattr__(self, "node_config", freeze(dict(self.node_config)))
        object.__setattr__(self, "resources", freeze(dict(self.resources)))


@dataclasses.dataclass(frozen=True)
class ClusterConfig:
    cluster_name: str
    provider: Mapping[str, Any]  # always has "type"
    auth: AuthConfig
    available_node_types: Mapping[str, NodeTypeConfig]
    head_node_type: str
    max_workers: int = 2
    upscaling_speed: float = 1.0
    idle_timeout_minutes: float = 5.0
    file_mounts: Mapping[str, str] = dataclasses.field(default_factory=dict)  # remote: local
    rsync_exclude: tuple[str, ...] = ()
    initialization_commands: tuple[str, ...] = ()
    setup_commands: tuple[str, ...] = ()
    head_setup_commands: tuple[str, ...] = ()
    worker_setup_commands: tuple[str, ...] = ()
    head_start_commands: tuple[str, ...] = ()
    worker_start_commands: tuple[str, ...] = ()
    source_path: str | None = None  # the YAML file it came from, if any

    def __post_init__(self):
        object.__setattr__(self, "provider", freeze(dict(self.provider)))
        object.__setattr__(self, "available_node_types",
                           freeze(dict(self.available_node_types)))
        object.__setattr__(self, "file_mounts", freeze(dict(self.file_mounts)))
        for name in ("rsync_exclude", "initialization_commands", "setup_commands",
                     "head_setup_commands", "worker_setup_commands", "head_start_commands",
                     "worker_start_commands"):
            object.__setattr__(self, name, tuple(getattr(self, name)))

    @property
    def provider_type(self) -> str:
        return self.provider["type"]

    def worker_node_types(self) -> dict[str, NodeTypeConfig]:
        return {name: node_type for name, node_type in self.available_node_types.items()
                if name != self.head_node_type or node_type.max_workers > 0}

    def replace(self, **changes) -> "ClusterConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """The normalised config as plain data (same keys as the YAML), for hashing,
        for `--autoscaling-config` on the head, and for `ClusterConfig.from_dict`."""
        return {
            "cluster_name": self.cluster_name,
            "max_workers": self.max_workers,
            "upscaling_speed": self.upscaling_speed,
            "idle_timeout_minutes": self.idle_timeout_minutes,
            "provider": thaw(self.provider),
            "auth": dataclasses.asdict(self.auth),
            "available_node_types": {
                name: {"node_config": thaw(node_type.node_config),
                       "resources": thaw(node_type.resources),
                       "min_workers": node_type.min_workers,
                       "max_workers": node_type.max_workers,
                       **({"idle_timeout_s": node_type.idle_timeout_s}
                          if node_type.idle_timeout_s is not None else {})}
                for name, node_type in self.available_node_types.items()},
            "head_node_type": self.head_node_type,
            "file_mounts": thaw(self.file_mounts),
            "rsync_exclude": list(self.rsync_exclude),
            "initialization_commands": list(self.initialization_commands),
            "setup_commands": list(self.setup_commands),
            "head_setup_commands": list(self.head_setup_commands),
            "worker_setup_commands": list(self.worker_setup_commands),
            "head_start_commands": list(self.head_start_commands),
            "worker_start_commands": list(self.worker_start_commands),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source_path: str | None = None) -> "ClusterConfig":
        """Rebuild from `to_dict()` output (already validated and normalised)."""
        node_types = {
            name: NodeTypeConfig(name=name, node_config=spec.get("node_config", {}),
                                 resources=spec.get("resources", {}),
                                 min_workers=spec.get("min_workers", 0),
                                 max_workers=spec.get("max_workers", 0),
                                 idle_timeout_s=spec.get("idle_timeout_s"))
            for name, spec in data["available_node_types"].items()}
        return cls(
            cluster_name=data["cluster_name"], provider=data["provider"],
            auth=AuthConfig(**data.get("auth", {})), available_node_types=node_types,
            head_node_type=data["head_node_type"],
            max_workers=data.get("max_workers", 2),
            upscaling_speed=data.get("upscaling_speed", 1.0),
            idle_timeout_minutes=data.get("idle_timeout_minutes", 5.0),
            file_mounts=data.get("file_mounts", {}),
            rsync_exclude=tuple(data.get("rsync_exclude", ())),
            initialization_commands=tuple(data.get("initialization_commands", ())),
            setup_commands=tuple(data.get("setup_commands", ())),
            head_setup_commands=tuple(data.get("head_setup_commands", ())),
            worker_setup_commands=tuple(data.get("worker_setup_commands", ())),
            head_start_commands=tuple(data.get("head_start_commands", ())),
            worker_start_commands=tuple(data.get("worker_start_commands", ())),
            source_path=source_path)
