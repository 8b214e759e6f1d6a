"""The node agent's queue (a mixin of NodeAgent, runtime.agent.service): tasks wait
until their arguments are here and their resources fit, then start on an idle task
worker (or a new actor's worker); a task of the same shape as a busy worker's may be
queued at that worker to start the moment it is free. Actor calls go straight to their
actor's worker, or wait for it while it is being created."""
from __future__ import annotations

import collections

from runtime import scheduling
from runtime.protocol.frames import Packer
from runtime.protocol.kinds import Kind
from runtime.protocol.tasks import (ACTOR_CREATE, TASK, ActorDied, Lost, StoreFull,
                                    message_wire)
from runtime.agent.gpu_ids import ids_of
from runtime.agent.task_state import FULL, LOST, AgentTask


class SchedulerMixin:
    def _schedule(self) -> None:
        if not self.queue:
            return
        waiting = collections.deque()
        while self.queue:
            task = self.queue.popleft()
            if task.missing or not (self._start(task) or self._prefetch(task)):
                waiting.append(task)
        self.queue = waiting

    def _prefetch(self, task: AgentTask) -> bool:
        """Queue a task at a busy worker whose running task has the same shape, so
        the worker starts it the moment the running one ends. It takes its resources
        only then (exactly the ones the finished task gives back). Not GPU tasks: they
        run long, and one bound to a busy worker's GPU would wait there even when
        another GPU frees first; they wait here and take the first GPU free."""
        if task.kind != TASK or task.shape.get("GPU"):
            return False
        for worker in self.workers.values():
            if worker.task is not None and worker.next is None and not worker.blocked and \
                    worker.task.shape == task.shape:
                worker.next = task
                self._send_to_worker(worker, task)
                return True
        return False

    def _start(self, task: AgentTask) -> bool:
        if self._fail_lost(task):
            return True
        if not scheduling.fits(task.shape, self.available):
            return False
        if task.kind == ACTOR_CREATE:      # the node's worker bound (agent_bound)
            slot = self._actor_slot(task)
            if slot is not True:
                return slot is None             # handed back, or wait for room here
        allocation = self.gpus.take(task.shape.get("GPU", 0.0))
        if allocation is None:    # enough GPU in total, but split over ids in use
            return False
        if task.kind == ACTOR_CREATE:
            worker = self._spawn_worker(task.actor_id, ids_of(allocation))
            self.actor_info[task.actor_id] = task
        else:
            worker = next((w for w in self.workers.values() if w.ready and
                           w.actor_id is None and w.task is None and w.lease is None), None)
            if worker is None:
                self.gpus.give_back(allocation)
                self._start_task_worker_if_room()
                return False
        scheduling.acquire(self.available, task.shape)
        task.gpus = allocation
        worker.task = task if task.kind == TASK else None
        self._send_to_worker(worker, task)
        for call in self.unplaced_calls.pop(task.actor_id, ()) if worker.actor_id else ():
            self._send_to_actor(call)
        return True

    def _start_task_worker_if_room(self) -> None:
        """No task worker is idle: start one, unless one is starting or the node is at
        its bound of task workers (runtime.agent.bound)."""
        count = sum(1 for w in self.workers.values()
                    if w.actor_id is None and not w.blocked)
        starting = any(not w.ready and w.actor_id is None for w in self.workers.values())
        if count < self.max_task_workers and not starting and \
                self._task_worker_room(count):
            self._spawn_worker(None)

    def _fail_lost(self, task: AgentTask) -> bool:
        for arg in task.all_args():
            if arg.state == LOST:
                self._to_driver(task.driver, Lost.of(task.task_id, arg.object_id,
                                                          arg.node_id))
                return True
            if arg.state == FULL:
                self._to_driver(task.driver, StoreFull.of(task.task_id, arg.node_id,
                                                               arg.reason))
                return True
        return False

    def _send_to_actor(self, task: AgentTask) -> None:
        if task.missing:
            return
        worker = self.actors.get(task.actor_id)
        if worker is None and task.actor_id in self.unplaced_calls:
            self.unplaced_calls[task.actor_id].append(task)
        elif worker is None and self._return_call(task):
            return                  # its creation went back to its driver (agent_bound)
        elif worker is None:
            self._to_driver(task.driver, ActorDied.of(
                task.task_id, task.actor_id, "no such actor on this node"))
        elif not self._fail_lost(task):
            self._send_to_worker(worker, task)

    def _send_to_worker(self, worker, task: AgentTask) -> None:
        values = self._arg_values(worker, task)   # (agent_objects) None: failed, told
        if values is None:
            return
        packer = Packer()
        message = message_wire(     # (an actor's worker got its GPU ids at its start)
            task.spec, [packer.value(value) for value in values[0]],
            {k: packer.value(value) for k, value in values[1].items()},
            ids_of(task.gpus) if task.kind == TASK else ())
        if worker.ready:
            self._send(self.local, worker.identity, Kind.TASK, message, packer.frames)
        else:
            worker.backlog.append((message, packer.frames))
        if worker.actor_id is not None:
            worker.pending = getattr(worker, "pending", {})
            worker.pending[task.task_id] = task
