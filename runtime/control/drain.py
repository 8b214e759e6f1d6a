"""Draining and removing nodes, on the control service (for the autoscaler monitor).

`drain_nodes(node_ids) -> [ids drained and idle]`: the given nodes are marked draining
(drivers place no new task or actor there; the node table and the load report say
`"draining": true`; the node's agent, told in its heartbeat reply, hands back any task or
actor creation that still reaches it so its driver places it elsewhere). The call is
declarative: a node drained earlier but not named again is no longer draining, and a
drain mark lapses DRAIN_LEASE_S after the last call that named it, so a node the monitor
decided to keep after all gets work again.

The reply lists the nodes that are drained AND idle: the agent's last heartbeat (sent
after it learned it is draining) says it has no running or queued task, no actor and no
leased worker. Those nodes are the monitor's to terminate, so the reply also REMOVES them
from the node table at once (drivers see them dead and drop their connections, the load
report leaves them out, their queued demand no longer counts). A removed node that keeps
heartbeating is not let back in: the monitor terminates it (a node it failed to terminate
shows as not joined in its next snapshots and is replaced).

`remove_nodes(node_ids) -> [ids removed]`: the same removal without the drain check, for
a caller that terminated nodes by other means (e.g. a node that never became idle but was
shut down anyway); its running work is retried elsewhere by the drivers.
"""
from __future__ import annotations

import logging
import time

from runtime.control.records import NodeEntry

log = logging.getLogger("corral.control")
DRAIN_LEASE_S = 30.0


class DrainMixin:
    """Part of ControlService (runtime.control.service)."""

    nodes: dict[str, NodeEntry]
    removed_nodes: set
    dirty: bool                  # the state to save (runtime.control.persist) changed
    drain_lease_s: float = DRAIN_LEASE_S

    def rpc_drain_nodes(self, identity, node_ids):
        now = time.monotonic()
        wanted = set(node_ids)
        changed = False
        for node_id, node in self.nodes.items():
            draining = node_id in wanted
            if draining and not node.draining:
                node.drain_since = now
            if draining != node.draining:
                node.draining, changed = draining, True
                if not draining:
                    node.drained_idle = False
            if draining:
                node.drain_until = now + self.drain_lease_s
        confirmed = [node_id for node_id in node_ids
                     if node_id in self.nodes and self._drained_and_idle(self.nodes[node_id])]
        if confirmed:
            self._remove(confirmed, "drained and idle")
        elif changed:
            self._broadcast_nodes()
        return confirmed

    def rpc_remove_nodes(self, identity, node_ids):
        known = [node_id for node_id in node_ids if node_id in self.nodes]
        if known:
            self._remove(known, "removed by request")
        self.removed_nodes.update(node_ids)
        return known

    def _drained_and_idle(self, node: NodeEntry) -> bool:
        """The agent knew it was draining when it reported itself idle."""
        return node.alive and node.draining and node.drained_idle and \
            node.last_heartbeat > node.drain_since

    def _remove(self, node_ids: list[str], why: str) -> None:
        for node_id in node_ids:
            node = self.nodes[node_id]
            node.alive, node.removed = False, True
            self.removed_nodes.add(node_id)
            log.info("node %s removed from the node table: %s", node_id, why)
        self._broadcast_nodes()

    def _expire_drains(self, now: float) -> None:
        changed = False
        for node in self.nodes.values():
            if node.draining and not node.removed and now > node.drain_until:
                node.draining, node.drained_idle, changed = False, False, True
                self.dirty = True
                log.info("node %s: drain lapsed, it takes work again", node.node_id)
        if changed:
            self._broadcast_nodes()
