"""Actors waiting for a worker process, on the driver's IO thread (a mixin of DriverIO,
whose __init__ holds the state).

A node agent at its bound of worker processes (runtime.agent.worker_bound) hands an actor
creation back with a notice. The node is then `full` for new actors: placement skips
it until the agent says "worker_room" (a worker process exited) or FULL_MARK_S pass.
A creation that fits some live node's resources but finds every such node full waits
here (`bound_waiting`), which is:

- explained once per episode, as work that fits no node is (runtime.driver.io_thread): how
  many actors wait, on which nodes' bounds and where each bound comes from, and what
  ends the wait;
- counted in the driver's pending demand, with the memory a worker takes added to its
  shape when the full node has a "memory" resource (its agent then reports none
  available), so the autoscaler launches a node for it;
- placed again when a node has room (as many as it has room for, in order; one when its
  mark expires without word from it) or a node joins (all).
"""
from __future__ import annotations

import collections
import logging
import time

from runtime import scheduling

log = logging.getLogger("corral.driver")

FULL_MARK_S = 30.0     # a full node is tried again after this even without "worker_room"
EXPLAIN_EVERY_S = 60.0  # the explanation of a wait that goes on is repeated this often


class DriverBoundMixin:
    def turned_away(self, node_id: str, notice: dict) -> None:
        """A node's agent handed back an actor creation: it is at its bound."""
        self.full_nodes[node_id] = dict(notice, since=time.monotonic())
        since = self.full_nodes[node_id]["since"]
        self.later(FULL_MARK_S, lambda: self._full_mark_expired(node_id, since))

    def node_full(self, node_id: str) -> bool:
        return node_id in self.full_nodes

    def wait_for_worker(self, record) -> bool:
        """Keep an actor creation waiting for a worker process when some live node fits
        its resources but all such nodes are full. False: it fits no node at all (it
        waits as unfit work does)."""
        full = [node_id for node_id, node in self.core.nodes.items()
                if node["alive"] and not node.get("draining") and
                node_id in self.full_nodes and
                scheduling.fits(record.shape, node["resources_total"])]
        if not full:
            return False
        if not self.bound_waiting:
            self.demand_changed = True
        self.bound_waiting.append(record)
        now = time.monotonic()
        if self.bound_explained_s is None or now - self.bound_explained_s >= EXPLAIN_EVERY_S:
            self.bound_explained_s = now
            self.later(0.0, self._explain_bound_wait)   # once this round's are queued
        return True

    def _explain_bound_wait(self) -> None:
        if not self.bound_waiting:
            return
        bounds = "; ".join(f"node {node_id}: {notice.get('worker_bound')} "
                           f"({notice.get('source')})"
                           for node_id, notice in self.full_nodes.items())
        log.warning("%d actor(s) wait for a worker process: every node that fits them "
                    "runs as many worker processes as its bound allows (%s). They start "
                    "when worker processes exit (runtime.kill of actors) or a node with "
                    "room joins (the autoscaler launches one if a node type declares "
                    "memory)", len(self.bound_waiting), bounds)

    def worker_room(self, node_id: str, room: int | None) -> None:
        """The node's agent has room for `room` more worker processes."""
        self.full_nodes.pop(node_id, None)
        if self.bound_waiting:
            self.drain_bound(room if isinstance(room, int) else None)

    def _full_mark_expired(self, node_id: str, since: float) -> None:
        notice = self.full_nodes.get(node_id)
        if notice is not None and notice["since"] == since:
            del self.full_nodes[node_id]
            self.drain_bound(1)        # one probes it; more follow its "worker_room"

    def forget_full(self, node_id: str) -> None:
        """The node died or left."""
        self.full_nodes.pop(node_id, None)

    def drain_bound(self, limit: int | None = None) -> None:
        """Place the first `limit` (default: all) waiting actor creations again, those
        still wanted; the ones that find no room come back to the end of the line."""
        taken = []
        while self.bound_waiting and (limit is None or len(taken) < limit):
            record = self.bound_waiting.popleft()
            actor = self.core.actors.get(record.actor_id)
            if actor is not None and actor.create is record and actor.state == "pending":
                taken.append(record)
        for record in taken:
            self.place(record)
        if not self.bound_waiting:
            self.bound_explained_s = None     # a later wait is explained at once

    def bound_demand(self) -> collections.Counter:
        """The waiting creations as pending demand: their shape, plus a worker's memory
        when the nodes that turned them away have a memory resource."""
        demand = collections.Counter()
        memory = max((notice.get("estimate_bytes", 0)
                      for node_id, notice in self.full_nodes.items()
                      if "memory" in (self.core.nodes.get(node_id) or {}).get(
                          "resources_total", {})), default=0)
        for record in self.bound_waiting:
            shape = dict(record.shape)
            if memory:
                shape["memory"] = shape.get("memory", 0.0) + float(memory)
            demand[scheduling.shape_key(shape)] += 1
        return demand
