"""Placement and sending, on the driver's IO thread: where a task or actor runs (its
resources must fit; tasks that fit nowhere wait and count as pending demand), when its
dependencies are ready, and how its spec leaves (batched per node agent, or straight
to a same-host actor's worker)."""
from __future__ import annotations

import collections
import logging
import os
import pickle

import zmq

from runtime import scheduling
from runtime.protocol import codec
from runtime.protocol import frames as protocol
from runtime.protocol import sync_channel
from runtime.driver.records import FAILED, PENDING, TaskRecord
from runtime.errors import ActorDiedError, DriverIOError
from runtime.protocol.frames import INLINE_LIMIT_BYTES, Packer, Serialized
from runtime.protocol.kinds import Kind
from runtime.protocol.objects import Reclaim
from runtime.protocol.tasks import ArgRef, ArgValue, TaskMessage, TaskSpec, spec_wire

log = logging.getLogger("corral.driver")


class PlacementMixin:
    """Part of DriverIO (runtime.driver.io_thread): placing and sending work."""

    def place(self, record: TaskRecord) -> None:
        core = self.core
        if record.kind == "actor_call":
            actor = core.actors.get(record.actor_id)
            if actor is None:
                self._fail(record, ActorDiedError(record.actor_id.hex(),
                                                  "this process does not know the actor"))
                return
            if actor.state in ("dead", "killed"):
                self._fail(record, actor.error or ActorDiedError(record.actor_id.hex(), "dead"))
                return
            if actor.node_id is None:
                actor.waiting_calls.append(record)
                return
        if record.kind == "actor_create" and record.actor_id not in core.actors:
            return
        if not self._deps_ready(record):
            return
        if record.kind == "actor_call":
            actor = core.actors[record.actor_id]
            if actor.direct is not None and actor.via_agent == 0 and self._all_local(record):
                record.direct, record.node_id = True, actor.node_id
                actor.direct_inflight += 1
                core.tasks[record.task_id] = record
                core.outgoing[("actor", actor.actor_id)].append(record)
            else:
                actor.via_agent += 1
                self._send(record, actor.node_id)
            return
        node_id = self._choose(record.shape, limit=record.kind == "task",
                               new_worker=record.kind == "actor_create")
        if node_id is None:
            if record.kind == "actor_create" and self.wait_for_worker(record):
                return        # nodes fit it but are at their worker bound
            queue = self.waiting.setdefault(scheduling.shape_key(record.shape),
                                            collections.deque())
            if not queue:   # a shape newly waiting: tell the control (and autoscaler) now
                self.demand_changed = True
            queue.append(record)
            return
        self._send(record, node_id)
        if record.kind == "actor_create":
            actor = core.actors[record.actor_id]
            actor.node_id, actor.state = node_id, "creating"
            if actor.owned:
                self.publish_actor(actor, "creating")
            if actor.name and actor.owned:
                self.send_rpc("register_actor", {
                    "name": actor.name, "info": {
                        "actor_id": actor.actor_id, "node_id": node_id,
                        "owner": core.driver_id, "detached": record.detached,
                        "class_name": actor.class_name, "epoch": actor.epoch}})
            calls, actor.waiting_calls = actor.waiting_calls, []
            for call in calls:
                self.place(call)

    def _all_local(self, record: TaskRecord) -> bool:
        if not (record.args or record.kwargs):
            return True
        for ref in record.refs():
            entry = self.core.objects.get(ref.id)
            if entry is None or entry.value is None:
                return False
        return True

    def _connect_direct(self, actor, value: Serialized) -> None:
        """An actor on this host accepts calls straight from this driver."""
        try:
            info = value.value()
        except (pickle.UnpicklingError, AttributeError, ImportError, EOFError,
                TypeError, ValueError) as error:
            log.warning("actor %s: unreadable creation reply (%r); its calls go "
                        "through the node agent", actor.actor_id.hex(), error)
            return
        if not isinstance(info, dict) or info.get("hostname") != self.core.hostname:
            return
        if not os.path.exists(protocol.ipc_path(info["direct"])):
            return
        sock = protocol.connect_dealer(self.core.ctx, info["direct"], None,
                                       self.core.identity)
        self.core.poller.register(sock, zmq.POLLIN)
        actor.direct = sock
        if info.get("sync"):
            try:
                actor.sync = sync_channel.connect(info["sync"])
            except OSError as error:
                log.warning("actor %s: no sync channel (%s); calls use ZeroMQ",
                            actor.actor_id.hex(), error)
            else:
                self.core.poller.register(actor.sync.fileno(), zmq.POLLIN)
                self.core.sync_actors[actor.sync.fileno()] = actor

    def close_sync(self, actor) -> None:
        if actor.sync is not None:
            self.core.poller.unregister(actor.sync.fileno())
            self.core.sync_actors.pop(actor.sync.fileno(), None)
            actor.sync.close()
            actor.sync = None

    def sync_readable(self, fd: int) -> None:
        if self.leases.sync_readable(fd):
            return
        actor = self.core.sync_actors.get(fd)
        if actor is None:
            return
        try:
            entries = sync_channel.receive(actor.sync)
        except OSError:
            entries = None
        if entries is None:      # the worker is gone; the agent reports the actor
            self.close_sync(actor)
            return
        self.handle(actor.sync, Kind.RESULTS, codec.decode(None, Kind.RESULTS, entries), [])

    def _close_direct(self, actor, error: BaseException | None = None) -> None:
        """Close the actor's direct channels; calls in flight fail with `error` (by
        default: its worker died)."""
        self.close_sync(actor)
        actor.direct_inflight, actor.sync_task, actor.held = 0, None, []
        if actor.direct is not None:
            self.core.poller.unregister(actor.direct)
            actor.direct.close(0)
            actor.direct = None
        actor.via_agent = 0
        error = error or ActorDiedError(actor.actor_id.hex(), "the actor's worker died")
        for record in [r for r in self.core.tasks.values()
                       if r.kind == "actor_call" and r.actor_id == actor.actor_id]:
            del self.core.tasks[record.task_id]
            self._fail(record, error)

    def _deps_ready(self, record: TaskRecord) -> bool:
        core = self.core
        if not (record.args or record.kwargs):   # nothing to wait for: no lock needed
            return True
        record.deps.clear()
        with core.cv:
            for ref in record.refs():
                entry = core.objects.get(ref.id)
                if entry is not None and entry.state == PENDING:
                    record.deps.add(ref.id)
                elif entry is not None and entry.state == FAILED:
                    self._fail(record, entry.error, lock=False)
                    return False
        for oid in record.deps:
            core.dep_waiters[oid].append(record)
        return not record.deps

    def _choose(self, shape: dict, limit: bool, new_worker: bool = False) -> str | None:
        """The least loaded node whose resources fit the shape. limit: not one with 8
        tasks in flight per CPU. new_worker (an actor): not one at its bound of worker
        processes (runtime.driver.bound)."""
        best, best_load = None, None
        for node_id, node in self.core.nodes.items():
            if not node["alive"] or node.get("draining") or node_id not in self.core.agents:
                continue
            if new_worker and self.node_full(node_id):
                continue
            total = node["resources_total"]
            if not scheduling.fits(shape, total):
                continue
            cpus = max(1.0, total.get("CPU", 1.0))
            inflight = self.core.inflight[node_id]
            if limit and inflight >= 8 * cpus:
                continue
            load = inflight / cpus - (0.01 if node_id == self.core.home_node_id else 0)
            if best_load is None or load < best_load:
                best, best_load = node_id, load
        return best

    def rebalance(self, joined: list[str]) -> None:
        """Nodes joined: take back the tasks queued behind busy workers elsewhere (more
        in flight than the node has CPUs) so that they start on the new nodes now."""
        core = self.core
        if not any(scheduling.fits({"CPU": 1.0}, core.nodes[n]["resources_total"])
                   for n in joined):
            return
        for node_id, sock in core.agents.items():
            if node_id in joined:
                continue
            cpus = max(1.0, core.nodes[node_id]["resources_total"].get("CPU", 1.0))
            surplus = core.inflight[node_id] - int(cpus)
            for record in self.leases.take_back(node_id, max(0, surplus)):
                core.tasks.pop(record.task_id, None)
                core.inflight[node_id] -= 1
                surplus -= 1
                record.node_id = None
                self.place(record)
            if surplus > 0:
                protocol.send(sock, Kind.RECLAIM, tuple(Reclaim(core.driver_id, surplus)))

    def _drain(self) -> None:
        for key, queue in list(self.waiting.items()):
            while queue:
                record = queue[0]
                node_id = self._choose(record.shape, limit=record.kind == "task",
                                       new_worker=record.kind == "actor_create")
                if node_id is None:
                    break
                queue.popleft()
                self.place(record)

    def _send(self, record: TaskRecord, node_id: str) -> None:
        record.node_id = node_id
        self.core.tasks[record.task_id] = record
        if record.kind == "task":
            self.core.inflight[node_id] += 1
            if self.leases.offer(record, node_id):   # straight to a leased worker
                return
        self.core.outgoing[node_id].append(record)

    def flush(self) -> None:
        """Send what was placed this round: a batch per node agent, calls straight to
        same-host actors, frees. A batch that cannot be built or sent fails its own
        records (DriverIOError), not the IO thread nor the other batches."""
        core = self.core
        self.leases.pump()     # (before the batches: tasks it cannot lease go in them)
        outgoing, core.outgoing = core.outgoing, collections.defaultdict(list)
        for node_id, records in outgoing.items():
            if not records:
                continue
            try:
                if isinstance(node_id, tuple):   # ("actor", id): straight to its worker
                    actor = core.actors.get(node_id[1])
                    if actor is not None and actor.direct is not None:
                        self._send_direct(actor, records)
                    continue
                sock = core.agents.get(node_id)
                if sock is None:
                    continue
                packer = Packer()
                specs = [spec_wire(self._spec(r, packer, node_id)) for r in records]
                protocol.send(sock, Kind.SUBMIT, specs, packer.frames)
            except Exception as error:
                self._batch_failed(node_id, records, error)
        frees, self.frees = self.frees, collections.defaultdict(list)
        for node_id, oids in frees.items():
            sock = core.agents.get(node_id)
            if sock is not None and oids:
                try:
                    protocol.send(sock, Kind.FREE, oids)
                except zmq.ZMQError as error:   # the objects stay until the node goes
                    log.warning("cannot free %d object(s) on node %s: %s", len(oids),
                                node_id, error)

    def _batch_failed(self, node_id, records: list, error: Exception) -> None:
        what = f"sending {len(records)} task(s) to {node_id}"
        log.error("the driver's IO thread failed on %s (it goes on)", what,
                  exc_info=error)
        failure = DriverIOError(what, f"{type(error).__name__}: {error}")
        for record in records:
            if self.core.tasks.pop(record.task_id, None) is None:
                continue    # already answered (sent before the failure)
            if record.kind == "task" and record.node_id is not None:
                self.core.inflight[record.node_id] -= 1
            elif record.kind == "actor_call" and record.direct:
                actor = self.core.actors.get(record.actor_id)
                if actor is not None and actor.direct_inflight > 0:
                    actor.direct_inflight -= 1
            self._fail(record, failure)

    def _spec(self, record: TaskRecord, packer: Packer, node_id: str) -> TaskSpec:
        return TaskSpec(record.task_id, self.core.driver_id, record.kind, record.fn,
                        record.fn_id, record.method, record.shape, record.actor_id,
                        record.detached,
                        [self._arg(a, packer, node_id) for a in record.args],
                        {k: self._arg(v, packer, node_id) for k, v in record.kwargs.items()})

    def _send_direct(self, actor, records: list) -> None:
        """Calls straight to a same-host actor's worker: over the sync channel when the
        call is the only one in flight (order kept, buffers never full) and small,
        else over ZeroMQ. While a sync-channel call is in flight, later calls wait
        for its answer: sent over the other socket they could overtake it."""
        if actor.sync_task is not None:
            actor.held.extend(records)
            return
        if actor.sync is not None and len(records) == 1 and actor.direct_inflight == 1:
            packer = Packer()
            spec = self._direct_spec(records[0], packer, reply_to=self.core.identity)
            message = None if packer.frames else sync_channel.encode(tuple(spec))
            if message is not None:
                try:
                    actor.sync.send(message)
                    actor.sync_task = records[0].task_id
                    return
                except OSError as error:
                    log.warning("actor %s: sync channel failed (%s); calls use ZeroMQ",
                                actor.actor_id.hex(), error)
                    self.close_sync(actor)
        for record in records:
            packer = Packer()
            protocol.send(actor.direct, Kind.TASK,
                          tuple(self._direct_spec(record, packer)), packer.frames)

    def _direct_spec(self, record: TaskRecord, packer: Packer,
                     reply_to: bytes | None = None) -> TaskMessage:
        def value(arg):
            kind, item = arg
            return packer.value(item if kind == "v" else self.core.objects[item.id].value)
        return TaskMessage(record.task_id, self.core.driver_id, record.kind, record.method,
                           [value(a) for a in record.args],
                           {k: value(v) for k, v in record.kwargs.items()},
                           reply_to=reply_to)

    def _arg(self, arg, packer: Packer, node_id: str) -> ArgValue | ArgRef:
        kind, item = arg
        if kind == "v":
            return ArgValue.of(packer.value(item))
        entry = self.core.objects.get(item.id)
        if entry is None:
            return ArgRef.of(item.id, "")
        if entry.value is not None and (entry.node_id is None and
                                        entry.value.size_bytes > INLINE_LIMIT_BYTES):
            self._upload(item.id, entry)
        if entry.node_id is not None:
            return ArgRef.of(item.id, entry.node_id)
        return ArgValue.of(packer.value(entry.value))
