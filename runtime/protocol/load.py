"""The load report: what the control service tells the autoscaler (rpc `get_load`) about
the cluster's nodes, the work waiting for resources, and the node types it may launch.

The control service builds a LoadReport (runtime.control.service); the autoscaler
(autoscaler.observe) and tools (runtime.state.load_report) read one. On the wire it is
plain data, `LoadReport.to_wire()`:

    {"now_s": float,                               # wall clock (time.time())
     "nodes": [{"node_id": str, "node_type": str|None, "address": "ip:port",
                "alive": bool,
                "draining": bool,                  # drain_nodes: no new work goes there
                "resources_total": {"CPU": 2.0, ...},
                "resources_available": {"CPU": 1.0, ...},
                "idle_since_s": float|None,        # time.time() when the node last
                                                   # became idle; None while busy
                "idle_for_s": float}],             # 0.0 while busy
     "pending_demand": [{"shape": {"CPU": 1.0}, "count": 3}, ...],  # waiting work
     "infeasible": [{"GPU": 8.0}, ...],            # shapes no live node nor node type fits
     "request_resources": [{"CPU": 1.0}, ...],     # bundles from request_resources()
     "node_types": {"type": {"CPU": 2.0}, ...},    # pushed by the monitor (set_node_types)
     "node_type_max_workers": {"type": 2, ...}}    # (idem, when it said)

so a peer that knows no LoadReport (an older autoscaler, a script) reads it as before;
`LoadReport.from_wire` takes any such dict back, missing keys as empty (an older control
service sends no `node_type_max_workers`).

Records are frozen; their resource tables are read-only mappings.
"""
from __future__ import annotations

import dataclasses
from types import MappingProxyType
from typing import Any, Mapping

Resources = Mapping[str, float]


def frozen_resources(value) -> Resources:
    """A read-only copy of a resource table (None and {} alike: empty)."""
    return MappingProxyType({str(name): float(amount) for name, amount in
                             dict(value or {}).items()})


@dataclasses.dataclass(frozen=True, slots=True)
class NodeLoad:
    """One node of the runtime's node table (nodes removed by the autoscaler are left
    out of a report)."""
    node_id: str
    node_type: str | None
    address: str
    alive: bool
    draining: bool
    resources_total: Resources
    resources_available: Resources
    idle_since_s: float | None      # wall clock when it became idle; None while busy
    idle_for_s: float               # 0.0 while busy

    def to_wire(self) -> dict:
        return {"node_id": self.node_id, "node_type": self.node_type,
                "address": self.address, "alive": self.alive, "draining": self.draining,
                "resources_total": dict(self.resources_total),
                "resources_available": dict(self.resources_available),
                "idle_since_s": self.idle_since_s, "idle_for_s": self.idle_for_s}

    @classmethod
    def from_wire(cls, data: Mapping[str, Any]) -> "NodeLoad":
        idle_since = data.get("idle_since_s")
        return cls(node_id=str(data.get("node_id")), node_type=data.get("node_type"),
                   address=str(data.get("address") or ""),
                   alive=bool(data.get("alive")), draining=bool(data.get("draining")),
                   resources_total=frozen_resources(data.get("resources_total")),
                   resources_available=frozen_resources(data.get("resources_available")),
                   idle_since_s=None if idle_since is None else float(idle_since),
                   idle_for_s=float(data.get("idle_for_s") or 0.0))


@dataclasses.dataclass(frozen=True, slots=True)
class DemandEntry:
    """`count` units of work (tasks, actors, leased workers) waiting for `shape`."""
    shape: Resources
    count: int

    def to_wire(self) -> dict:
        return {"shape": dict(self.shape), "count": self.count}

    @classmethod
    def from_wire(cls, data: Mapping[str, Any]) -> "DemandEntry":
        return cls(frozen_resources(data.get("shape")), int(data.get("count", 1)))


@dataclasses.dataclass(frozen=True, slots=True)
class NodeType:
    """A node type the autoscaler may launch, as the monitor pushed it."""
    resources: Resources
    max_workers: int | None = None   # None: not said (an older monitor, set_node_types)


@dataclasses.dataclass(frozen=True, slots=True)
class LoadReport:
    now_s: float
    nodes: tuple[NodeLoad, ...] = ()
    pending_demand: tuple[DemandEntry, ...] = ()
    infeasible: tuple[Resources, ...] = ()
    request_resources: tuple[Resources, ...] = ()
    node_types: Mapping[str, NodeType] = dataclasses.field(
        default_factory=lambda: MappingProxyType({}))

    def to_wire(self) -> dict:
        return {"now_s": self.now_s, "nodes": [node.to_wire() for node in self.nodes],
                "pending_demand": [entry.to_wire() for entry in self.pending_demand],
                "infeasible": [dict(shape) for shape in self.infeasible],
                "request_resources": [dict(bundle) for bundle in self.request_resources],
                "node_types": {name: dict(kind.resources)
                               for name, kind in self.node_types.items()},
                "node_type_max_workers": {name: kind.max_workers
                                          for name, kind in self.node_types.items()
                                          if kind.max_workers is not None}}

    @classmethod
    def from_wire(cls, data: Mapping[str, Any]) -> "LoadReport":
        types = node_types_from_wire(data.get("node_types") or {},
                                     data.get("node_type_max_workers"))
        return cls(now_s=float(data.get("now_s") or 0.0),
                   nodes=tuple(NodeLoad.from_wire(node) for node in data.get("nodes") or ()),
                   pending_demand=tuple(DemandEntry.from_wire(entry)
                                        for entry in data.get("pending_demand") or ()),
                   infeasible=tuple(frozen_resources(shape)
                                    for shape in data.get("infeasible") or ()),
                   request_resources=tuple(frozen_resources(bundle) for bundle
                                           in data.get("request_resources") or ()),
                   node_types=MappingProxyType(types))

    @classmethod
    def of(cls, value: "LoadReport | Mapping[str, Any]") -> "LoadReport":
        """A LoadReport as is; its wire form (a dict) read back."""
        return value if isinstance(value, LoadReport) else cls.from_wire(value)

    def node(self, node_id: str) -> NodeLoad | None:
        for node in self.nodes:
            if node.node_id == node_id:
                return node
        return None


def node_types_to_wire(node_types: Mapping[str, NodeType]) -> tuple[dict, dict]:
    """The kwargs of rpc set_node_types: ({type: resources}, {type: max_workers})."""
    return ({name: dict(kind.resources) for name, kind in node_types.items()},
            {name: kind.max_workers for name, kind in node_types.items()
             if kind.max_workers is not None})


def node_types_from_wire(resources: Mapping[str, Any],
                         max_workers: Mapping[str, Any] | None = None
                         ) -> dict[str, NodeType]:
    limits = max_workers or {}
    return {str(name): NodeType(frozen_resources(table), None if limits.get(name) is None
                                else int(limits[name]))
            for name, table in (resources or {}).items()}
