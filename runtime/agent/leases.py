"""Worker leases at the node agent (a mixin of NodeAgent, runtime.agent.service): a
driver on this host takes idle task workers for a resource shape and sends them tasks
itself (runtime.driver.leases); the agent sees nothing per task.

The agent takes the shape's resources for the lease's life, as for a running task, so
leased resources count as used in the node's load. It lends them while the leased
worker's task blocks in get() (Kind.BLOCKED/UNBLOCKED, runtime.agent.workers), keeps a
leased task's large result in its store (Kind.DONE, as for its own tasks), revokes
every lease when the node drains, kills a dead driver's leased workers (what they run
is that driver's), and tells the driver when a leased worker dies (LeaseRevoked with
worker_died) so that it retries the tasks it had in flight there. GPU shapes are never
leased: a GPU task takes its ids per task from the agent (runtime.agent.gpu_ids)."""
from __future__ import annotations

import logging
import uuid

from runtime import scheduling
from runtime.protocol import sync_channel
from runtime.protocol import frames as protocol
from runtime.protocol.frames import INLINE_LIMIT_BYTES, unpack_value
from runtime.protocol.kinds import Kind
from runtime.protocol.leases import (LeaseGrant, LeaseReply, LeaseRequest, LeaseReturn,
                                     LeaseRevoked)
from runtime.protocol.tasks import ResultValue, TaskDone

log = logging.getLogger("corral.agent")


class AgentLease:
    """A lease this agent granted: which driver holds which worker for what shape."""

    __slots__ = ("lease_id", "driver", "shape")

    def __init__(self, lease_id: bytes, driver: str, shape: dict):
        self.lease_id, self.driver, self.shape = lease_id, driver, shape


class LeasesMixin:
    def _leased_workers(self) -> list:
        return [w for w in self.workers.values() if w.lease is not None]

    def _on_lease(self, sock, identity, request: LeaseRequest, frames) -> None:
        """Grant up to `count` idle task workers for the shape, each holding its
        resources; none ("not now") while draining, for a GPU shape, when the
        resources do not fit or no task worker is idle (one is started then, as for a
        queued task, so that a later request may be granted)."""
        grants = []
        shape = request.shape
        if self.leasable and not self.draining and not shape.get("GPU"):
            for _ in range(max(0, min(request.count, len(self.workers)))):
                if not scheduling.fits(shape, self.available):
                    break
                worker = next((w for w in self.workers.values()
                               if w.ready and w.actor_id is None and w.task is None
                               and w.next is None and w.lease is None), None)
                if worker is None:
                    self._start_task_worker_if_room()
                    break
                scheduling.acquire(self.available, shape)
                worker.lease = AgentLease(uuid.uuid4().bytes, request.driver, shape)
                grants.append(tuple(LeaseGrant(
                    worker.lease.lease_id, worker.worker_id,
                    protocol.ipc_endpoint(self.ipc_dir, f"task-{worker.worker_id}"),
                    sync_channel.endpoint_path(self.ipc_dir, worker.worker_id, "task"))))
        self.routes[request.driver] = sock
        self._send(sock, identity, Kind.LEASED,
                   tuple(LeaseReply(request.request_id, shape, grants)))

    def _on_lease_return(self, sock, identity, returned: LeaseReturn, frames) -> None:
        for worker in self.workers.values():
            if worker.lease is not None and worker.lease.lease_id == returned.lease_id:
                self._end_lease(worker)
                return

    def _end_lease(self, worker) -> None:
        """Its resources go back (of a blocked task only what it kept: the rest is
        already out on loan) and the worker takes the agent's tasks again."""
        shape = worker.lease.shape
        scheduling.release(self.available, scheduling.kept_while_blocked(shape)
                           if worker.blocked else shape)
        worker.lease, worker.blocked = None, False

    def _revoke_leases(self, cause: str) -> None:
        """The node drains: drivers send their leased workers no more tasks and return
        the leases once the tasks in flight are answered."""
        for worker in self._leased_workers():
            self._tell_revoked(worker.lease, cause, worker_died=False)

    def _tell_revoked(self, lease: AgentLease, cause: str, worker_died: bool) -> None:
        sock = self.routes.get(lease.driver)
        if sock is not None:
            self._send(sock, b"D" + lease.driver.encode(), Kind.LEASE_REVOKED,
                       tuple(LeaseRevoked(lease.lease_id, cause, worker_died)))

    def _leased_worker_died(self, worker, cause: str) -> None:
        """Its lease ends; its driver retries what it had sent there. The results
        queued for that driver go first, so a task whose large result was stored
        just before is not retried."""
        lease = worker.lease
        self._end_lease(worker)
        self._flush()
        self._tell_revoked(lease, cause, worker_died=True)

    def _kill_leased_of(self, driver: str) -> None:
        """A driver is gone: what its leased workers run is its own."""
        for worker in self._leased_workers():
            if worker.lease.driver == driver:
                worker.killed_reason = "driver exited"
                worker.proc.kill()

    def _leased_done(self, worker, done: TaskDone, frames) -> None:
        """A leased task's result too large to answer inline: it stays in the store and
        the lease's driver hears where it is."""
        driver = worker.lease.driver
        if done.packed is None:
            self._result_arrived(done.task_id, driver)
            return
        value = unpack_value(done.packed, frames)
        if done.ok and value.size_bytes > INLINE_LIMIT_BYTES:
            self._keep_result(done.task_id, driver, value)
        else:
            self._to_driver(driver, ResultValue.of(
                done.task_id, done.ok, (value.data, 0, len(value.buffers))), value.buffers)
