"""Worker leases, on the driver's IO thread: tasks straight to task workers leased
from the node agent on this host (runtime.agent.leases), pipelined, their results
straight back; the agent sees nothing per task. One lease's channels and sending:
runtime.driver.leased.

A task goes this way when it is placed on a node whose agent this driver reaches over
ipc (same host) and: it is a plain task (not an actor creation or call), its shape has
no GPU (GPU ids are given per task by the agent), and every argument that is a ref has
its value here, small (a ref whose value is on a node, or large, needs the agent to
fetch or keep it). Other work keeps the agent path, as does everything unless
CORRAL_LEASES=1 (runtime.protocol.leases.enabled).

Such a task waits in a queue per (node, shape) until a leased worker of that shape is
idle, or, while the agent has no more workers to lease for it ("full", as when its own
queue would hold the task at a busy worker), has fewer than PIPELINE_DEPTH in flight; it stays counted in the node's in-flight tasks
(placement), and while queued as pending demand (the driver's heartbeat). The queue
asks the agent for more leases while it is not empty; "not now" with no usable lease
of that shape sends the queue through the agent instead, as does an agent that does
not answer within LEASE_REPLY_TIMEOUT_S (it predates leases, or has them off).

Life of a lease: returned after LEASE_IDLE_S with nothing in flight or queued, and
when the driver exits; revoked by the agent when its node drains (returned once its
tasks are answered); ended by its worker's death (the tasks in flight there are
retried or failed as when a worker dies under the agent). A leased worker whose task
blocks in get() sends back the tasks queued at it (Returned entries): they are placed
again, and the lease takes no more until it answers a task."""
from __future__ import annotations

import collections
import logging
import socket
import time

from runtime import scheduling
from runtime.protocol import codec
from runtime.protocol import frames as protocol
from runtime.protocol import sync_channel
from runtime.driver.leased import DriverLease
from runtime.protocol.frames import INLINE_LIMIT_BYTES
from runtime.protocol.kinds import Kind
from runtime.protocol.leases import (LeaseGrant, LeaseReply, LeaseRequest, LeaseReturn,
                                     LeaseRevoked, enabled)
from runtime.protocol.tasks import RETURNED

log = logging.getLogger("corral.driver")

# Tasks in flight per leased worker once the node has no more to lease: the running one
# and the next, as the agent queues one early at a busy worker (a deeper pipeline would
# keep tasks at a busy worker that a node joining since could run: take_back).
PIPELINE_DEPTH = 2
LEASE_IDLE_S = 0.075          # a lease with nothing to do this long goes back
LEASE_RETRY_S = 0.02          # after "not now", ask again for that shape this much later
LEASE_REPLY_TIMEOUT_S = 10.0  # an agent that never answers: its node has no leases


class DriverLeases:
    """One per DriverIO (runtime.driver.io_thread)."""

    def __init__(self, io):
        self.io = io
        self.core = io.core
        self.on = enabled()
        self.local_nodes: set[str] = set()      # agents reached over ipc
        self.refused_nodes: set[str] = set()    # agents that never answered a request
        self.leases: dict[bytes, DriverLease] = {}
        self.by_key: dict[tuple, list] = collections.defaultdict(list)
        self.by_fd: dict[int, DriverLease] = {}
        self.queues: dict[tuple, collections.deque] = {}
        self.requests: dict[int, tuple] = {}    # request id -> (key, node id, sent at)
        self.asking: dict[tuple, int] = {}      # key -> its request in flight
        self.expired: dict[int, str] = {}       # request id -> node, given up on
        self.closing: list = []                 # sockets of ended leases (leased.py)
        self.retry_at: dict[tuple, float] = {}
        self.full_until: dict[tuple, float] = {}   # key -> the agent leases no more
        self.request_ids = 0
        self.granted_total = 0       # leases granted so far (what tests and logs read)
        self.worker_deaths = 0       # leased workers that died

    # ------------------------------------------------------------ placing
    def offer(self, record, node_id: str) -> bool:
        """Take a task placed on node_id if it may go by lease (see the module doc)."""
        if not self.on or node_id not in self.local_nodes or \
                node_id in self.refused_nodes or record.shape.get("GPU"):
            return False
        for kind, item in record.args:
            if kind != "v" and not self._local(item):
                return False
        for kind, item in record.kwargs.values():
            if kind != "v" and not self._local(item):
                return False
        key = (node_id, scheduling.shape_key(record.shape))
        queue = self.queues.get(key)
        if queue is None:
            queue = self.queues[key] = collections.deque()
        queue.append(record)
        return True

    def _local(self, ref) -> bool:
        entry = self.core.objects.get(ref.id)
        return entry is not None and entry.value is not None and \
            entry.value.size_bytes <= INLINE_LIMIT_BYTES

    def pump(self) -> None:
        """Send what the queues hold to leases with room; ask for leases, give back
        idle ones; fall back to the agent where none come."""
        while self.closing:
            sock = self.closing.pop()
            if isinstance(sock, socket.socket):
                sock.close()          # a sync channel
            else:
                sock.close(0)         # a ZeroMQ socket: linger 0
        now = time.monotonic()
        if self.requests:
            self._expire_requests(now)
        for key, queue in self.queues.items():
            if queue:
                self._send_queued(key, queue, now)
        for lease in list(self.leases.values()):
            if lease.inflight == 0 and now - lease.idle_since_s >= LEASE_IDLE_S and \
                    not self.queues.get(lease.key):
                self._give_back(lease)

    def _send_queued(self, key: tuple, queue: collections.deque, now: float) -> None:
        leases = self.by_key.get(key, ())
        depth = PIPELINE_DEPTH if now < self.full_until.get(key, 0.0) else 1
        while queue:
            best = None
            for lease in leases:
                if lease.usable and lease.inflight < depth and \
                        (best is None or lease.inflight < best.inflight):
                    best = lease
            if best is None:
                break
            self._send(best, queue.popleft())
        if queue and key not in self.asking and now >= self.retry_at.get(key, 0.0):
            self._ask(key, queue, now)

    def _ask(self, key: tuple, queue: collections.deque, now: float) -> None:
        node_id, shape_key = key
        sock = self.core.agents.get(node_id)
        if sock is None:
            self._to_agent(key)
            return
        self.request_ids += 1
        count = min(len(queue), 64)
        self.requests[self.request_ids] = (key, node_id, now, count)
        self.asking[key] = self.request_ids
        protocol.send(sock, Kind.LEASE, tuple(LeaseRequest(
            self.request_ids, self.core.driver_id, dict(shape_key), count)))

    def _send(self, lease: DriverLease, record) -> None:
        if not lease.send(self.core, record, self.closing):    # its sync channel closed
            self.by_fd = {fd: other for fd, other in self.by_fd.items()
                          if other is not lease}

    def _to_agent(self, key: tuple) -> None:
        """The queued tasks of a shape go through their node's agent, as without leases."""
        queue = self.queues.get(key)
        while queue:
            record = queue.popleft()
            self.core.outgoing[record.node_id].append(record)

    # ------------------------------------------------------------ from the agent
    def granted(self, reply: LeaseReply) -> None:
        request = self.requests.pop(reply.request_id, None)
        if request is None:      # answered after it expired: give the leases back
            node_id = self.expired.pop(reply.request_id, None)
            for grant in reply.grants:
                self._return_id(grant.lease_id, self.core.agents.get(node_id))
            return
        key, node_id, _, count = request
        self.asking.pop(key, None)
        for grant in reply.grants:
            self._open(grant, node_id, key)
        if len(reply.grants) < count:     # the node has no more for this shape now
            self.retry_at[key] = self.full_until[key] = time.monotonic() + LEASE_RETRY_S
        if not reply.grants:
            if not any(lease.usable for lease in self.by_key.get(key, ())):
                self._to_agent(key)

    def _open(self, grant: LeaseGrant, node_id: str, key: tuple) -> None:
        lease = DriverLease.open(self.core, grant, node_id, key)
        if lease.sync is not None:
            self.by_fd[lease.sync.fileno()] = lease
        self.leases[lease.lease_id] = lease
        self.by_key[key].append(lease)
        self.granted_total += 1

    def revoked(self, revoked: LeaseRevoked) -> None:
        lease = self.leases.get(revoked.lease_id)
        if lease is None:
            return
        if revoked.worker_died:
            self._worker_died(lease, revoked.cause)
            return
        lease.revoked = True
        if lease.inflight == 0:
            self._give_back(lease)

    def _worker_died(self, lease: DriverLease, cause: str) -> None:
        core = self.core
        self.worker_deaths += 1
        self._close(lease)
        for record in [r for r in core.tasks.values() if r.lease is lease]:
            del core.tasks[record.task_id]
            core.inflight[record.node_id] -= 1
            record.lease = None
            self.io._retry(record, cause, None)

    def answered(self, record, status: str) -> None:
        """A result (or a task sent back) from a lease's worker, or from its agent."""
        lease, record.lease = record.lease, None
        lease.inflight -= 1
        lease.blocked = status == RETURNED
        if lease.inflight == 0:
            lease.idle_since_s = time.monotonic()
            if lease.revoked:
                self._give_back(lease)

    def sync_readable(self, fd: int) -> bool:
        """Results on a lease's sync channel; False when fd is not one of them."""
        lease = self.by_fd.get(fd)
        if lease is None:
            return False
        try:
            entries = sync_channel.receive(lease.sync)
        except OSError:
            entries = None
        if entries is None:      # its worker is gone: the agent revokes the lease
            self._close_sync(lease)
            return True
        self.io.handle(lease.sync, Kind.RESULTS,
                       codec.decode(None, Kind.RESULTS, entries), [])
        return True

    # ------------------------------------------------------------ ending leases
    def _give_back(self, lease: DriverLease) -> None:
        self._close(lease)
        self._return_id(lease.lease_id, self.core.agents.get(lease.node_id))

    def _return_id(self, lease_id: bytes, sock) -> None:
        if sock is not None:
            protocol.send(sock, Kind.LEASE_RETURN, tuple(LeaseReturn(lease_id)))

    def _close(self, lease: DriverLease) -> None:
        self.leases.pop(lease.lease_id, None)
        leases = self.by_key.get(lease.key)
        if leases and lease in leases:
            leases.remove(lease)
        self._close_sync(lease)
        lease.close(self.core, self.closing)

    def _close_sync(self, lease: DriverLease) -> None:
        if lease.sync is not None:
            self.by_fd.pop(lease.sync.fileno(), None)
            lease.close_sync(self.core, self.closing)

    def _expire_requests(self, now: float) -> None:
        for request_id, (key, node_id, sent_s, _) in list(self.requests.items()):
            if now - sent_s >= LEASE_REPLY_TIMEOUT_S:
                log.warning("node %s did not answer a lease request within %.0f s: its "
                            "tasks go through its agent", node_id, LEASE_REPLY_TIMEOUT_S)
                del self.requests[request_id]
                self.expired[request_id] = node_id
                self.asking.pop(key, None)
                self.refused_nodes.add(node_id)
                self._to_agent(key)

    def return_all(self) -> None:
        """The driver exits: every lease with nothing in flight goes back (the others
        end with the driver: its agent kills their workers)."""
        for lease in list(self.leases.values()):
            if lease.inflight == 0:
                self._give_back(lease)

    def node_died(self, node_id: str) -> None:
        """Its leases end with it; its tasks (queued or sent) are retried by the caller."""
        for lease in [lease for lease in self.leases.values() if lease.node_id == node_id]:
            self._close(lease)
        for record in self.core.tasks.values():
            if record.lease is not None and record.lease.node_id == node_id:
                record.lease = None
        for queue in self.queues.values():
            kept = [r for r in queue if r.node_id != node_id]
            queue.clear()
            queue.extend(kept)

    def take_back(self, node_id: str, count: int) -> list:
        """Up to count tasks still queued here for node_id (a node joined: they are
        placed again, maybe there)."""
        taken = []
        for queue in self.queues.values():
            while queue and len(taken) < count and queue[-1].node_id == node_id:
                taken.append(queue.pop())
        return taken

    def queued_demand(self) -> collections.Counter:
        demand = collections.Counter()
        for (_, shape_key), queue in self.queues.items():
            if queue:
                demand[shape_key] += len(queue)
        return demand
