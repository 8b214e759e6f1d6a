"""What the control service (runtime.control.service) knows of each node and driver: one
slotted record each, so a field is named once, a misspelt one fails at once, and what a
node's entry holds is read here rather than guessed from the places that fill it."""
from __future__ import annotations

import dataclasses
import time

from runtime.protocol.load import NodeLoad, frozen_resources


@dataclasses.dataclass(slots=True, eq=False)
class NodeEntry:
    """A node agent that registered. Its identity is the agent's socket identity (where
    `driver_dead` goes); resources_available, idle_since_s and queued_demand come with
    each heartbeat (not saved across a restart: rebuilt by the next one)."""
    node_id: str
    node_type: str | None
    address: str                     # "ip:port" other agents and drivers connect to
    ipc: str | None                  # the agent's endpoint for processes on its host
    hostname: str | None
    identity: bytes | None
    resources_total: dict
    alive: bool = True
    resources_available: dict = dataclasses.field(default_factory=dict)
    idle_since_s: float | None = None     # wall clock; None while busy
    queued_demand: dict = dataclasses.field(default_factory=dict)  # {shape key: count}
    last_heartbeat: float = dataclasses.field(default_factory=time.monotonic)
    draining: bool = False           # runtime.control.drain: no new work goes there
    drained_idle: bool = False       # its last heartbeat (while draining) said idle
    drain_since: float = 0.0         # monotonic: when the drain began
    drain_until: float = 0.0         # monotonic: when the drain mark lapses
    removed: bool = False            # dropped by drain_nodes/remove_nodes: stays out

    def table_row(self) -> dict:
        """The node as the node table pushed to drivers and agents lists it."""
        return {"node_id": self.node_id, "node_type": self.node_type,
                "address": self.address, "ipc": self.ipc, "hostname": self.hostname,
                "alive": self.alive, "draining": self.draining,
                "resources_total": self.resources_total}

    def load(self, now_s: float) -> NodeLoad:
        idle = self.idle_since_s
        return NodeLoad(
            node_id=self.node_id, node_type=self.node_type, address=self.address,
            alive=self.alive, draining=self.draining,
            resources_total=frozen_resources(self.resources_total),
            resources_available=frozen_resources(self.resources_available),
            idle_since_s=idle, idle_for_s=max(0.0, now_s - idle) if idle else 0.0)


@dataclasses.dataclass(slots=True, eq=False)
class DriverEntry:
    """A connected driver: where to push the node table, and the demand it waits with."""
    identity: bytes
    pending_demand: dict = dataclasses.field(default_factory=dict)  # {shape key: count}
    last_heartbeat: float = dataclasses.field(default_factory=time.monotonic)
