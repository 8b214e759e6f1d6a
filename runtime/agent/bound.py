"""The node agent's bound on worker processes (runtime.agent.worker_bound): part of
NodeAgent, through WorkersMixin.

An actor creation whose resources fit starts a worker only while the node runs fewer
worker processes than its bound. At the bound, an idle task worker beyond the node's
pool is retired to make room (the creation waits here for it to go); otherwise the
creation goes back to its driver ("returned", with the bound as a notice), and calls
that reached this node for that actor follow it. The driver places it on a node with
room or keeps it waiting (runtime.driver.bound). Once a worker process exits, the
drivers that were turned away hear "worker_room" and try again.

While it is at its bound and has turned actors away, the agent's heartbeat reports no memory available (when
the node has a "memory" resource), so the autoscaler does not count on this node for
the actors' demand, which drivers report with the memory a worker needs.
"""
from __future__ import annotations

import logging
import time

from runtime.agent.worker_bound import WorkerBound
from runtime.protocol.tasks import Returned, WorkerRoom

log = logging.getLogger("corral.agent")

LOG_EVERY_S = 60.0
RETIRED = "retired: its slot went to an actor (the node's worker-process bound)"


class WorkerBoundMixin:
    worker_bound: WorkerBound | None = None     # None: no bound (set_worker_bound)
    turned_away: set = frozenset()              # drivers told to place actors elsewhere
    turn_away_logged_s = float("-inf")

    def set_worker_bound(self, bound: WorkerBound) -> None:
        self.worker_bound = bound
        self.turned_away = set()
        log.info("at most %d worker processes on this node (%s)", bound.limit,
                 bound.source)

    def _task_worker_room(self, task_workers: int) -> bool:
        """May another task worker start? Always within the node's pool."""
        bound = self.worker_bound
        return bound is None or task_workers < bound.reserved or \
            len(self.workers) < bound.limit

    def _actor_slot(self, task) -> bool | None:
        """True: the actor's worker may start now. False: a retiring task worker makes
        room soon (keep it queued). None: the creation went back to its driver."""
        bound = self.worker_bound
        if bound is None or len(self.workers) < bound.limit:
            return True
        if any(w.killed_reason == RETIRED for w in self.workers.values()):
            return False
        task_workers = [w for w in self.workers.values() if w.actor_id is None]
        if len(task_workers) > bound.reserved:
            idle = next((w for w in task_workers if w.ready and w.task is None and
                         w.next is None and not w.blocked), None)
            if idle is not None:
                idle.killed_reason = RETIRED
                idle.ready = False          # no task goes to it now
                idle.proc.kill()
                return False
        self._turn_away(task)
        return None

    def _turn_away(self, task) -> None:
        actor_id, driver = task.actor_id, task.driver
        now = time.monotonic()
        if now - self.turn_away_logged_s >= LOG_EVERY_S:
            self.turn_away_logged_s = now
            log.warning("actor creations wait: this node runs %d worker processes, its "
                        "bound (%s); handed back to driver %s to place elsewhere or wait",
                        len(self.workers), self.worker_bound.source, driver)
        self.turned_away.add(driver)
        self.returned_actors.add(actor_id)
        self._to_driver(driver, Returned.of(task.task_id, self.node_id, False,
                                            self.worker_bound.notice()))
        for call in self.unplaced_calls.pop(actor_id, ()):
            self._to_driver(call.driver, Returned.of(call.task_id, self.node_id, False))

    def _return_call(self, task) -> bool:
        """A call to an actor whose creation this node handed back follows it."""
        if task.actor_id not in self.returned_actors:
            return False
        self._to_driver(task.driver, Returned.of(task.task_id, self.node_id, False))
        return True

    def _announce_room(self) -> None:
        """Workers exited: every driver this node turned away (and that is still
        connected) hears how many worker processes it has room for; one with actors
        still waiting sends that many again."""
        bound = self.worker_bound
        if bound is None or not self.turned_away or len(self.workers) >= bound.limit:
            return
        self.turned_away &= set(self.routes)
        room = bound.limit - len(self.workers)
        for driver in self.turned_away:
            self._to_driver(driver, WorkerRoom.of(self.node_id, room))

    def _reported_available(self) -> dict:
        """Resources available, as the heartbeat reports them: no memory while actors
        are turned away (see the module docstring)."""
        bound = self.worker_bound
        if bound is not None and self.turned_away and len(self.workers) >= bound.limit \
                and "memory" in self.available:
            return dict(self.available, memory=0.0)
        return self.available
