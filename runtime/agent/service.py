"""The node agent: one per node. Registers with the control service and heartbeats,
accounts the node's resources (and which GPU ids each task or actor holds), runs a pool
of worker processes (sized to the node's CPUs), queues tasks until their resources fit
(runtime.agent.scheduler), keeps large objects in the local store and serves them to
drivers and peer agents.

Sockets: `local` ROUTER on ipc (workers, drivers on this node), `remote` ROUTER on TCP
(CurveZMQ; drivers and peer agents elsewhere), a DEALER to the control service and one
DEALER per peer agent it fetches objects from."""
from __future__ import annotations

import collections
import itertools
import logging
import socket
import time
import uuid

import zmq

from runtime import scheduling
from runtime.node import ipc_dirs
from runtime.protocol import codec
from runtime.protocol import frames as protocol
from runtime.protocol.kinds import Kind
from runtime.protocol.objects import ObjectReply, Reclaim
from runtime.protocol.tasks import ACTOR_CALL, ACTOR_CREATE, TASK, Returned, TaskSpec
from runtime.agent.objects import ObjectService
from runtime.agent.task_state import REMOTE, AgentTask
from runtime.agent.scheduler import SchedulerMixin
from runtime.agent.leases import LeasesMixin
from runtime.protocol import leases
from runtime.agent.workers import WorkerProcess, WorkersMixin
from runtime.agent.gpu_ids import GpuIds, default_ids
from runtime.agent.store import ObjectStore
from runtime.protocol import rpc, version
from runtime.protocol.frames import Packer
from runtime.protocol.kinds import Kind

log = logging.getLogger("corral.agent")
HEARTBEAT_INTERVAL_S = 0.5


class NodeAgent(ObjectService, WorkersMixin, SchedulerMixin, LeasesMixin):
    def __init__(self, node_id: str, node_type: str | None, control_address: str,
                 keys, resources: dict, advertise_ip: str, bind_ip: str, ipc_dir: str,
                 gpu_ids: list[str] | None = None, store: ObjectStore | None = None):
        self.node_id = node_id
        self.node_type = node_type
        self.keys = keys
        self.ctx = zmq.Context()
        self.ipc_dir = ipc_dir
        self.local_endpoint = protocol.ipc_endpoint(ipc_dir, "agent")
        self.local = protocol.bind_router(self.ctx, self.local_endpoint, None)
        self.remote = protocol.bind_router(self.ctx, f"tcp://{bind_ip}:0", keys)
        port = int(self.remote.last_endpoint.decode().rsplit(":", 1)[1])
        self.address = f"{advertise_ip}:{port}"
        self.control_address = control_address
        self.control = protocol.connect_dealer(self.ctx, f"tcp://{control_address}", keys,
                                               b"A" + node_id.encode() + uuid.uuid4().bytes[:4])
        self.total = dict(resources)
        self.available = dict(resources)
        self.gpus = GpuIds(gpu_ids if gpu_ids is not None else
                           default_ids(self.total.get("GPU", 0.0)))
        self.store = store if store is not None else ObjectStore()  # runtime.agent.main's
        self.workers: dict[bytes, WorkerProcess] = {}
        self.actors: dict[bytes, WorkerProcess] = {}
        self.actor_info: dict[bytes, AgentTask] = {}      # actor id -> its creation
        self.unplaced_calls: dict[bytes, list] = {}       # actor id -> calls before spawn
        self.queue: collections.deque = collections.deque()
        self.routes: dict[str, zmq.Socket] = {}          # driver id -> socket it uses
        self.outbox: dict[str, list] = {}                 # driver id -> [(entry, frames)]
        self.peers: dict[str, zmq.Socket] = {}
        self.peer_addresses: dict[str, str] = {}
        self.fetches: dict[int, tuple] = {}
        self.deferred_fetches: dict[bytes, list] = {}
        self.fetch_ids = itertools.count()
        self.max_task_workers = max(2, int(2 * self.total.get("CPU", 1)))
        self.idle_since_s: float | None = time.time()
        self.registered = False
        self.on_registered = None
        self.draining = False      # told by the control service: hand back new work
        self.leasable = leases.enabled()   # drivers here may lease task workers
        self.returned_actors: set[bytes] = set()   # creations handed back while draining
        self.next_heartbeat = 0.0
        self.running = True
        self.refused = None        # the ProtocolVersionError registering ended with
        self.poller = zmq.Poller()
        for sock in (self.local, self.remote, self.control):
            self.poller.register(sock, zmq.POLLIN)
        # what drivers (and peer agents: fetch) may ask of this agent, by kind
        self.handlers = {Kind.SUBMIT: self._on_submit, Kind.RECLAIM: self._on_reclaim,
                         Kind.STATS: self._on_stats, Kind.KILL_ACTOR: self._on_kill_actor,
                         Kind.FETCH: self._on_fetch, Kind.PUT: self._on_put,
                         Kind.PUT_BEGIN: self._on_put_begin,
                         Kind.PUT_PIECE: self._on_put_piece, Kind.FREE: self._on_free,
                         Kind.LEASE: self._on_lease, Kind.LEASE_RETURN: self._on_lease_return}
        for _ in range(int(self.total.get("CPU", 1))):
            self._spawn_worker(None)

    # ------------------------------------------------------------------ loop
    def serve_forever(self) -> None:
        while self.running:
            events = dict(self.poller.poll(100))
            for sock in events:
                for _ in range(1000):
                    try:
                        identity, kind, header, frames = codec.receive(
                            sock, sock in (self.local, self.remote), zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    except protocol.MalformedMessageError as error:
                        log.warning("dropped: %s", error)
                        continue
                    try:
                        self._dispatch(sock, identity, kind, header, frames)
                    except Exception:  # one bad message must not end the node's agent
                        log.exception("message %r from %r failed", kind, identity)
            self._reap_workers()
            self._schedule()
            self._flush()
            if time.monotonic() >= self.next_heartbeat:
                self._heartbeat()
                self._expire_fetches()
        self._shutdown()

    def _dispatch(self, sock, identity, kind, header, frames) -> None:
        if identity is not None and identity[:1] == b"W":
            self._from_worker(self.workers.get(identity), kind, header, frames)
        elif sock is self.control:
            self._from_control(kind, header)
        elif sock in (self.local, self.remote):
            handler = self.handlers.get(kind)
            if handler is None:
                log.warning("unknown message %r", kind)
                return
            if identity[:1] == b"D":
                self.routes[identity[1:].decode()] = sock
            handler(sock, identity, header, frames)
        else:  # a peer agent answering a fetch
            self._fetched(header, frames)

    def _send(self, sock, identity, kind, header, frames=()) -> None:
        try:
            protocol.send(sock, kind, header, frames, identity=identity)
        except zmq.ZMQError as error:
            log.info("cannot send %s to %r: %s", kind, identity, error)

    def _to_driver(self, driver: str, entry: tuple, frames=()) -> None:
        """Queue a result entry (a runtime.protocol.tasks record) for `driver`; `frames`:
        the buffers of a ResultValue, placed at its `base` when the batch is sent."""
        self.outbox.setdefault(driver, []).append((entry, frames))

    def _flush(self) -> None:
        for driver, items in self.outbox.items():
            sock = self.routes.get(driver)
            if sock is None:
                continue
            packer = Packer()
            entries = []
            for entry, frames in items:
                if frames:
                    entry = entry._replace(base=len(packer.frames))
                    packer.frames.extend(frames)
                entries.append(tuple(entry))
            self._send(sock, b"D" + driver.encode(), Kind.RESULTS, entries, packer.frames)
        self.outbox.clear()

    # ------------------------------------------------------------------ control
    def _heartbeat(self) -> None:
        self.next_heartbeat = time.monotonic() + HEARTBEAT_INTERVAL_S
        if not self.registered:
            kwargs = dict(node_id=self.node_id, node_type=self.node_type,
                          address=self.address, ipc=self.local_endpoint,
                          hostname=socket.gethostname(), resources_total=self.total,
                          protocol_version=version.PROTOCOL_VERSION)
            rpc.send_request(self.control, "register", "register_node", kwargs)
            return
        busy = any(w.task or w.lease for w in self.workers.values()) or self.actors
        if busy:
            self.idle_since_s = None
        elif self.idle_since_s is None:
            self.idle_since_s = time.time()
        demand = collections.Counter(scheduling.shape_key(t.shape) for t in self.queue)
        drained_idle = self.draining and not busy and not self.queue and \
            not any(w.next for w in self.workers.values())
        kwargs = dict(node_id=self.node_id, resources_available=self._reported_available(),
                      idle_since_s=self.idle_since_s, queued_demand=dict(demand),
                      drained_idle=drained_idle)
        rpc.send_request(self.control, "heartbeat", "heartbeat", kwargs)

    def _from_control(self, kind, header) -> None:
        if kind == Kind.DRIVER_DEAD:
            self._driver_dead(header)
            return
        reply = rpc.reply_of(header)
        request_id = reply.request_id
        try:
            result = rpc.outcome(reply, self.control_address, str(request_id))
        except version.ProtocolVersionError as error:   # not this corral: stop here
            log.error("the control service refused this node: %s; the agent exits",
                      error)
            self.refused, self.running = error, False
            return
        except rpc.RemoteCallError as error:
            log.error("control rejected %s: %s", request_id, error)
            return
        if request_id == "register":
            if result.get("removed"):   # the autoscaler took this node out: stay out
                self.draining = True
                self.next_heartbeat = time.monotonic() + 5.0
                return
            self.registered = True
            log.info("registered with control at %s", self.control_address)
            if self.on_registered is not None:
                self.on_registered()
            self._learn_nodes(result["nodes"])
        elif request_id == "heartbeat":
            was_draining, self.draining = self.draining, bool(result.get("draining"))
            if self.draining and not was_draining:
                self._revoke_leases(f"node {self.node_id} drains")
            if not result["known"]:
                self.registered = False
                self.next_heartbeat = 0.0
                return
            self._learn_nodes(result["nodes"])
            for driver in result["dead_drivers"]:
                if driver in self.routes:
                    self._driver_dead(driver)

    def _learn_nodes(self, nodes) -> None:
        for node in nodes:
            node_id, address = node["node_id"], node["address"]
            if self.peer_addresses.get(node_id, address) != address and node_id in self.peers:
                sock = self.peers.pop(node_id)   # that node restarted elsewhere
                self.poller.unregister(sock)
                sock.close(0)
            self.peer_addresses[node_id] = address

    def _driver_dead(self, driver: str) -> None:
        log.info("driver %s is gone: dropping its work", driver)
        self.routes.pop(driver, None)
        self.outbox.pop(driver, None)
        self.queue = collections.deque(t for t in self.queue if t.driver != driver)
        self._kill_leased_of(driver)
        for worker in list(self.workers.values()):
            info = self.actor_info.get(worker.actor_id) if worker.actor_id else None
            owned = (info and info.driver == driver and not info.spec.detached) or \
                (worker.task and worker.task.driver == driver) or \
                (worker.next and worker.next.driver == driver)
            if owned:
                worker.killed_reason = "driver exited"
                worker.proc.kill()
        self.store.free_owner(driver)

    # ------------------------------------------------------------------ drivers
    def _on_submit(self, sock, identity, specs: list[TaskSpec], frames) -> None:
        for spec in specs:
            if self._hand_back(spec):
                continue
            task = AgentTask(spec, frames)
            for arg in task.all_args():
                if arg.state == REMOTE:
                    self._fetch_arg(task, arg)
            if task.kind == ACTOR_CALL:
                self._send_to_actor(task)
            else:
                if task.kind == ACTOR_CREATE:
                    self.unplaced_calls[task.actor_id] = []
                self.queue.append(task)

    def _hand_back(self, spec: TaskSpec) -> bool:
        """While draining, new tasks and actor creations (and calls to an actor whose
        creation went back) return to their driver, which places them elsewhere."""
        if not self.draining:
            if spec.kind == ACTOR_CREATE:
                self.returned_actors.discard(spec.actor_id)
            return False
        if spec.kind == ACTOR_CALL and spec.actor_id not in self.returned_actors:
            return False
        if spec.kind == ACTOR_CREATE:
            self.returned_actors.add(spec.actor_id)
        self._to_driver(spec.driver, Returned.of(spec.task_id, self.node_id, True))
        return True

    def _on_reclaim(self, sock, identity, request: Reclaim, frames) -> None:
        """A driver takes back up to `count` of its tasks still queued here (not started,
        not waiting for arguments), to place them on a node that joined since."""
        driver, count = request.driver, request.count
        kept, taken = collections.deque(), []
        for task in reversed(self.queue):
            if len(taken) < count and task.kind == TASK and task.driver == driver \
                    and not task.missing:
                taken.append(task)
            else:
                kept.appendleft(task)
        self.queue = kept
        for task in reversed(taken):
            self._to_driver(driver, Returned.of(task.task_id, self.node_id, False))

    def _on_stats(self, sock, identity, request_id: int, frames) -> None:
        stats = {"objects": len(self.store), "object_bytes": self.store.size_bytes,
                 "workers": len(self.workers), "queued": len(self.queue),
                 **self.store.stats()}
        self._send(sock, identity, Kind.OBJECT, tuple(ObjectReply(request_id, True, stats)))

    def _on_kill_actor(self, sock, identity, actor_id, frames) -> None:
        worker = self.actors.get(actor_id)
        if worker is not None:
            worker.killed_reason = "killed by kill()"
            worker.proc.kill()

    def _shutdown(self) -> None:
        for worker in self.workers.values():
            worker.proc.kill()
        for worker in self.workers.values():
            worker.proc.wait()
        # its ipc dir (its sockets, its workers'), before anything that could abort
        ipc_dirs.remove_dir(self.ipc_dir)
        self.store.close()      # spilled objects go with the node
        protocol.destroy_context(self.ctx)
