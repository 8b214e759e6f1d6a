"""The node agent's worker processes: spawning them (task workers, one per actor),
their messages (ready, log lines, results), and what follows when one dies (its task
retried or reported, its actor reported dead to the drivers)."""
from __future__ import annotations

import logging
import os
import subprocess
import sys
import uuid

from runtime import scheduling
from runtime.node import gpus
from runtime.protocol import frames as protocol
from runtime.protocol import sync_channel
from runtime.agent.bound import WorkerBoundMixin
from runtime.protocol.frames import INLINE_LIMIT_BYTES, unpack_value
from runtime.protocol.kinds import Kind
from runtime.protocol.tasks import (ACTOR_CREATE, ActorDied, Printed, ResultValue, TaskDone,
                                    WorkerDied)
from runtime.protocol.workers import WorkerLog
from runtime.agent.task_state import AgentTask

log = logging.getLogger("corral.agent")


class WorkerProcess:
    def __init__(self, worker_id: str, proc: subprocess.Popen, actor_id: bytes | None):
        self.worker_id = worker_id
        self.identity = b"W" + worker_id.encode()
        self.proc = proc
        self.actor_id = actor_id
        self.ready = False
        self.task: AgentTask | None = None     # running task (task workers)
        self.next: AgentTask | None = None     # prefetched task, same shape
        self.backlog: list = []                # messages waiting for `ready`
        self.killed_reason: str | None = None
        self.blocked = False    # its task waits in get(): its resources are lent out
        self.lease = None       # runtime.agent.leases.AgentLease: a driver leases it


class WorkersMixin(WorkerBoundMixin):
    """Part of NodeAgent (runtime.agent.service): its worker processes, at most as many as the
    node's bound allows (runtime.agent.bound)."""

    def _spawn_worker(self, actor_id: bytes | None, gpu_ids: list | None = None
                      ) -> WorkerProcess:
        """A task worker (actor_id None) or an actor's worker, which runs with the
        actor's GPU ids for its whole life. Task workers start without the node's
        CUDA_VISIBLE_DEVICES: each task they run gets its own (runtime.node.gpus.assign)."""
        worker_id = uuid.uuid4().hex[:12]
        argv = [sys.executable, "-m", "runtime.worker.main", "--endpoint", self.local_endpoint,
                "--worker-id", worker_id, "--parent-pid", str(os.getpid())]
        env = dict(os.environ, CORRAL_NODE_ID=self.node_id)
        env.pop(gpus.CUDA_VISIBLE_DEVICES, None)
        if actor_id is None and self.leasable:
            argv += ["--leasable"]
        if actor_id is not None:
            argv += ["--direct"]
            if gpu_ids:
                argv += ["--gpu-ids", ",".join(gpu_ids)]
                env[gpus.CUDA_VISIBLE_DEVICES] = ",".join(gpu_ids)
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, env=env)
        worker = WorkerProcess(worker_id, proc, actor_id)
        self.workers[worker.identity] = worker
        if actor_id is not None:
            self.actors[actor_id] = worker
        return worker

    def _from_worker(self, worker, kind, header, frames) -> None:
        if worker is None:
            return
        handler = _WORKER_HANDLERS.get(kind)
        if handler is None:
            log.warning("unknown message %r from worker %s", kind, worker.worker_id)
            return
        handler(self, worker, header, frames)

    def _worker_ready(self, worker, pid: int, frames) -> None:
        worker.ready = True
        for message, message_frames in worker.backlog:
            self._send(self.local, worker.identity, Kind.TASK, message, message_frames)
        worker.backlog.clear()

    def _worker_log(self, worker, line: WorkerLog, frames) -> None:
        if line.origin_node_id is not None:   # a nested task's output, passed on
            node_id, pid = line.origin_node_id, line.origin_pid
        else:
            node_id, pid = self.node_id, worker.proc.pid
        self._to_driver(line.driver, Printed.of(node_id, pid, line.text, line.stream))

    def _worker_blocked(self, worker, header, frames) -> None:
        """Lent: all but its GPUs (scheduling.lendable); of a leased worker, its lease's."""
        held = worker.task or worker.lease
        if held is not None and not worker.blocked:
            worker.blocked = True
            lent = scheduling.lendable(held.shape)
            scheduling.release(self.available, lent)

    def _worker_unblocked(self, worker, header, frames) -> None:
        held = worker.task or worker.lease
        if worker.blocked and held is not None:   # taken back even if that
            worker.blocked = False                 # oversubscribes for a while
            lent = scheduling.lendable(held.shape)
            scheduling.acquire(self.available, lent)

    def _worker_returned(self, worker, task_id: bytes, frames) -> None:
        """A task queued early at a worker that then blocked comes back to the queue."""
        if worker.next is not None and worker.next.task_id == task_id:
            self.queue.appendleft(worker.next)
            worker.next = None

    def _worker_put_begin(self, worker, header, frames) -> None:
        """A large result goes into the store in pieces before its Kind.DONE."""
        self._on_put_begin(None, worker.identity, header, frames)

    def _worker_put_piece(self, worker, header, frames) -> None:
        self._on_put_piece(None, worker.identity, header, frames)

    def _worker_done(self, worker, done: TaskDone, frames) -> None:
        task_id, ok = done.task_id, done.ok
        if worker.lease is not None and worker.task is None:   # (runtime.agent.leases)
            self._leased_done(worker, done, frames)
            return
        if worker.actor_id is not None:
            task = worker.pending.pop(task_id, None)
            if task is not None and task.kind == ACTOR_CREATE and not ok:
                # its __init__ raised: no actor to serve. The worker goes, and its
                # reaping gives the actor's resources back (its driver has the error)
                worker.killed_reason = "the actor's __init__ raised an exception"
                worker.proc.kill()
        else:
            task, worker.task, worker.next = worker.task, worker.next, None
            if task:
                self._release_task(worker, task)
            worker.blocked = False   # (a thread of the task may still be waiting)
            if worker.task:   # the prefetched task starts now (never a GPU task)
                scheduling.acquire(self.available, worker.task.shape)
        if done.packed is None:     # the result came in pieces, into the store
            self._result_arrived(task_id, task.driver if task else None)
            return
        if task is None:
            return
        value = unpack_value(done.packed, frames)
        if ok and value.size_bytes > INLINE_LIMIT_BYTES:
            self._keep_result(task_id, task.driver, value)   # (agent_objects)
        else:
            self._to_driver(task.driver, ResultValue.of(
                task_id, ok, (value.data, 0, len(value.buffers))), value.buffers)

    def _release_task(self, worker: WorkerProcess, task: AgentTask) -> None:
        """A task ended (or its worker died): its resources and GPU ids are free. Of a
        blocked task only its GPUs are still held; the rest is out on loan."""
        scheduling.release(self.available, scheduling.kept_while_blocked(task.shape)
                           if worker.blocked else task.shape)
        self.gpus.give_back(task.gpus)

    def _reap_workers(self) -> None:
        before = len(self.workers)
        for identity, worker in list(self.workers.items()):
            code = worker.proc.poll()
            if code is None:
                continue
            del self.workers[identity]
            cause = worker.killed_reason or (
                f"worker process {worker.proc.pid} died "
                + (f"(signal {-code})" if code < 0 else f"(exit code {code})"))
            if worker.actor_id is not None or self.leasable:
                role = "actor" if worker.actor_id is not None else "task"
                for path in (protocol.ipc_path(protocol.ipc_endpoint(    # left behind
                        self.ipc_dir, f"{role}-{worker.worker_id}")),
                        sync_channel.endpoint_path(self.ipc_dir, worker.worker_id, role)):
                    try:
                        os.unlink(path)
                    except OSError:
                        pass
            if worker.lease is not None:
                self._leased_worker_died(worker, cause)
            if worker.actor_id is not None:
                self.actors.pop(worker.actor_id, None)
                info = self.actor_info.pop(worker.actor_id, None)
                if info:
                    scheduling.release(self.available, info.shape)
                    self.gpus.give_back(info.gpus)
                    self._to_driver(info.driver, ActorDied.of(info.task_id,
                                                              worker.actor_id, cause))
                for task in getattr(worker, "pending", {}).values():
                    self._to_driver(task.driver, ActorDied.of(task.task_id,
                                                              worker.actor_id, cause))
            elif worker.task is not None:
                self._release_task(worker, worker.task)
                self._to_driver(worker.task.driver, WorkerDied.of(worker.task.task_id,
                                                                  cause))
                if worker.next is not None and worker.next.driver in self.routes:
                    # never started: run it on another worker
                    self.queue.appendleft(worker.next)
        if len(self.workers) < before:
            self._announce_room()     # to drivers whose actors the bound turned away


# what a worker may send its agent, by kind
_WORKER_HANDLERS = {
    Kind.READY: WorkersMixin._worker_ready,
    Kind.LOG: WorkersMixin._worker_log,
    Kind.BLOCKED: WorkersMixin._worker_blocked,
    Kind.UNBLOCKED: WorkersMixin._worker_unblocked,
    Kind.RETURNED: WorkersMixin._worker_returned,
    Kind.PUT_BEGIN: WorkersMixin._worker_put_begin,
    Kind.PUT_PIECE: WorkersMixin._worker_put_piece,
    Kind.DONE: WorkersMixin._worker_done,
}
