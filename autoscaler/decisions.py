"""The planner's output: what to launch and terminate, and a reason for every decision."""
from __future__ import annotations

import dataclasses
from types import MappingProxyType
from typing import Any, Mapping

from autoscaler.snapshot import Shape, shape_dict

# Reason kinds.
LAUNCH = "launch"          # nodes to launch, and for what
TERMINATE = "terminate"    # a node to terminate, and why
KEEP = "keep"              # a node that could have gone but stays, and why
CAP = "cap"                # a limit that cut a launch short (max_workers, upscaling_speed)
SKIP = "skip"              # a node type passed over (backoff, quarantine, scarce resources)
UNPLACED = "unplaced"      # demand left waiting, and why
INFEASIBLE = "infeasible"  # demand no node type can ever run
QUARANTINE = "quarantine"  # a node type no longer launched after repeated bootstrap failures
BACKOFF = "backoff"        # a node type waiting after a failed launch


@dataclasses.dataclass(frozen=True)
class Reason:
    kind: str
    message: str
    node_type: str | None = None
    count: int = 0
    node_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        data = {"kind": self.kind, "message": self.message}
        if self.node_type is not None:
            data["node_type"] = self.node_type
        if self.count:
            data["count"] = self.count
        if self.node_id is not None:
            data["node_id"] = self.node_id
        return data


@dataclasses.dataclass(frozen=True)
class Unplaced:
    shape: Shape
    count: int
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"shape": shape_dict(self.shape), "count": self.count, "reason": self.reason}


@dataclasses.dataclass(frozen=True)
class Plan:
    to_launch: Mapping[str, int]  # paced by upscaling_speed: launch these now
    target_launch: Mapping[str, int]  # what the demand needs, before pacing
    to_terminate: tuple[tuple[str, str], ...]  # (node_id, reason)
    infeasible: tuple[Shape, ...]  # shapes no node type can hold
    unplaced: tuple[Unplaced, ...]  # demand left waiting (infeasible included), with why
    reasons: tuple[Reason, ...]
    quarantined: tuple[str, ...] = ()  # node types not launched any more

    def __post_init__(self):
        object.__setattr__(self, "to_launch", MappingProxyType(
            {name: count for name, count in self.to_launch.items() if count > 0}))
        object.__setattr__(self, "target_launch", MappingProxyType(
            {name: count for name, count in self.target_launch.items() if count > 0}))

    @property
    def is_empty(self) -> bool:
        return not self.to_launch and not self.to_terminate

    def reasons_of(self, kind: str) -> list[Reason]:
        return [reason for reason in self.reasons if reason.kind == kind]

    def to_dict(self) -> dict[str, Any]:
        return {
            "launch": dict(self.to_launch),
            "target_launch": dict(self.target_launch),
            "terminate": [{"node_id": node_id, "reason": reason}
                          for node_id, reason in self.to_terminate],
            "infeasible": [shape_dict(shape) for shape in self.infeasible],
            "unplaced": [item.to_dict() for item in self.unplaced],
            "quarantined": list(self.quarantined),
            "reasons": [reason.to_dict() for reason in self.reasons],
        }
