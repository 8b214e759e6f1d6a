"""The driver's IO-thread logic: node table, placement of tasks and actors, dependency
resolution, results, retries, actor restarts, fetches and frees. Runs only on the
DriverCore's IO thread; touches shared object entries under core.cv."""
from __future__ import annotations

import collections
import os
import sys

import zmq

from runtime import protocol, scheduling
from runtime.driver_state import FAILED, PENDING, READY, Entry, TaskRecord, user_error
from runtime.errors import ActorDiedError, NodeDiedError, ObjectLostError, TaskError
from runtime.protocol import INLINE_LIMIT_BYTES, Packer, Serialized, unpack_value


class DriverIO:
    def __init__(self, core):
        self.core = core
        self.waiting: dict[tuple, collections.deque] = {}     # shape key -> records
        self.fetch_ids = 0
        self.fetches: dict[int, bytes] = {}
        self.frees: dict[str, list] = collections.defaultdict(list)
        self.rpc_stats: dict[int, object] = {}

    # ------------------------------------------------------------ nodes
    def learn_nodes(self, table) -> None:
        core = self.core
        for node in table:
            node_id = node["node_id"]
            old = core.nodes.get(node_id)
            if old is not None and old["alive"] and node["alive"] and \
                    (old["address"], old.get("ipc")) != (node["address"], node.get("ipc")):
                self._node_died(node_id)     # the same node id came back as a new agent
            core.nodes[node_id] = node
            if node["alive"] and node_id not in core.agents:
                core.agents[node_id] = self._connect(node)
            if not node["alive"] and old is not None and old["alive"]:
                self._node_died(node_id)
            elif not node["alive"] and node_id in core.agents:
                self._close_agent(node_id)
        self._drain()

    def _connect(self, node) -> zmq.Socket:
        core = self.core
        ipc = node.get("ipc") or ""
        if node.get("hostname") == core.hostname and os.path.exists(protocol.ipc_path(ipc)):
            endpoint = ipc
        else:
            endpoint = f"tcp://{node['address']}"
        sock = protocol.connect_dealer(core.ctx, endpoint, core.keys, core.identity)
        core.poller.register(sock, zmq.POLLIN)
        if core.home_node_id is None and endpoint == ipc:
            core.home_node_id = node["node_id"]
        return sock

    def _close_agent(self, node_id: str) -> None:
        sock = self.core.agents.pop(node_id, None)
        if sock is not None:
            self.core.poller.unregister(sock)
            sock.close(0)

    def _node_died(self, node_id: str) -> None:
        core = self.core
        self._close_agent(node_id)
        core.inflight.pop(node_id, None)
        cause = f"node {node_id} died"
        for record in [r for r in core.tasks.values() if r.node_id == node_id]:
            del core.tasks[record.task_id]
            if record.kind == "task":
                self._retry(record, cause, NodeDiedError(node_id, record.name))
            elif record.kind == "actor_call":
                self._fail(record, ActorDiedError(record.actor_id.hex(), cause))
        for actor in core.actors.values():
            if actor.node_id == node_id and actor.state in ("creating", "alive"):
                self._actor_failed(actor, cause)
        with core.cv:
            for oid, entry in core.objects.items():
                if entry.node_id == node_id and entry.value is None and entry.state == READY:
                    entry.state = FAILED
                    entry.error = ObjectLostError(oid.hex(), cause)
            core.cv.notify_all()

    def heartbeat(self) -> None:
        demand = collections.Counter()
        for key, queue in self.waiting.items():
            if queue:
                demand[key] += len(queue)
        request_id = self._rpc_id()
        protocol.send(self.core.control, b"rpc", (request_id, "driver_heartbeat", {
            "driver_id": self.core.driver_id, "pending_demand": dict(demand)}))

    def _rpc_id(self) -> int:
        return next(self.core.rpc_ids)

    # ------------------------------------------------------------ placement
    def place(self, record: TaskRecord) -> None:
        core = self.core
        if record.kind == "actor_call":
            actor = core.actors[record.actor_id]
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
                core.tasks[record.task_id] = record
                core.outgoing[("actor", actor.actor_id)].append(record)
            else:
                actor.via_agent += 1
                self._send(record, actor.node_id)
            return
        node_id = self._choose(record.shape, limit=record.kind == "task")
        if node_id is None:
            self.waiting.setdefault(scheduling.shape_key(record.shape),
                                    collections.deque()).append(record)
            return
        self._send(record, node_id)
        if record.kind == "actor_create":
            actor = core.actors[record.actor_id]
            actor.node_id, actor.state = node_id, "creating"
            if actor.name and actor.owned:
                protocol.send(core.control, b"rpc", (self._rpc_id(), "register_actor", {
                    "name": actor.name, "info": {
                        "actor_id": actor.actor_id, "node_id": node_id,
                        "owner": core.driver_id, "detached": record.detached,
                        "class_name": actor.class_name}}))
            calls, actor.waiting_calls = actor.waiting_calls, []
            for call in calls:
                self.place(call)

    def _all_local(self, record: TaskRecord) -> bool:
        for ref in record.refs():
            entry = self.core.objects.get(ref.id)
            if entry is None or entry.value is None:
                return False
        return True

    def _connect_direct(self, actor, value: Serialized) -> None:
        """An actor on this host accepts calls straight from this driver."""
        try:
            info = value.value()
        except Exception:  # an older worker without a direct endpoint
            return
        if not isinstance(info, dict) or info.get("hostname") != self.core.hostname:
            return
        if not os.path.exists(protocol.ipc_path(info["direct"])):
            return
        sock = protocol.connect_dealer(self.core.ctx, info["direct"], None,
                                       self.core.identity)
        self.core.poller.register(sock, zmq.POLLIN)
        actor.direct = sock

    def _close_direct(self, actor) -> None:
        if actor.direct is not None:
            self.core.poller.unregister(actor.direct)
            actor.direct.close(0)
            actor.direct = None
        actor.via_agent = 0
        error = ActorDiedError(actor.actor_id.hex(), "the actor's worker died")
        for record in [r for r in self.core.tasks.values()
                       if r.kind == "actor_call" and r.actor_id == actor.actor_id]:
            del self.core.tasks[record.task_id]
            self._fail(record, error)

    def _deps_ready(self, record: TaskRecord) -> bool:
        core = self.core
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

    def _choose(self, shape: dict, limit: bool) -> str | None:
        best, best_load = None, None
        for node_id, node in self.core.nodes.items():
            if not node["alive"] or node_id not in self.core.agents:
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

    def _drain(self) -> None:
        for key, queue in list(self.waiting.items()):
            while queue:
                record = queue[0]
                node_id = self._choose(record.shape, limit=record.kind == "task")
                if node_id is None:
                    break
                queue.popleft()
                self.place(record)

    def _send(self, record: TaskRecord, node_id: str) -> None:
        record.node_id = node_id
        self.core.tasks[record.task_id] = record
        if record.kind == "task":
            self.core.inflight[node_id] += 1
        self.core.outgoing[node_id].append(record)

    def flush(self) -> None:
        core = self.core
        for node_id, records in core.outgoing.items():
            if isinstance(node_id, tuple):   # ("actor", id): straight to its worker
                actor = core.actors.get(node_id[1])
                if actor is not None and actor.direct is not None and records:
                    packer = Packer()
                    for record in records:
                        protocol.send(actor.direct, b"task",
                                      self._direct_spec(record, packer), packer.frames)
                        packer = Packer()
                continue
            sock = core.agents.get(node_id)
            if sock is None or not records:
                continue
            packer = Packer()
            specs = [self._spec(r, packer, node_id) for r in records]
            protocol.send(sock, b"submit", specs, packer.frames)
        core.outgoing.clear()
        for node_id, oids in self.frees.items():
            sock = core.agents.get(node_id)
            if sock is not None and oids:
                protocol.send(sock, b"free", oids)
        self.frees.clear()

    def _spec(self, record: TaskRecord, packer: Packer, node_id: str) -> dict:
        return {"task_id": record.task_id, "driver": self.core.driver_id,
                "kind": record.kind, "fn": record.fn, "fn_id": record.fn_id,
                "method": record.method, "shape": record.shape,
                "actor_id": record.actor_id, "detached": record.detached,
                "args": [self._arg(a, packer, node_id) for a in record.args],
                "kwargs": {k: self._arg(v, packer, node_id) for k, v in record.kwargs.items()}}

    def _direct_spec(self, record: TaskRecord, packer: Packer) -> dict:
        def value(arg):
            kind, item = arg
            return packer.value(item if kind == "v" else self.core.objects[item.id].value)
        return {"task_id": record.task_id, "driver": self.core.driver_id,
                "kind": record.kind, "fn": None, "fn_id": None, "method": record.method,
                "args": [value(a) for a in record.args],
                "kwargs": {k: value(v) for k, v in record.kwargs.items()}}

    def _arg(self, arg, packer: Packer, node_id: str):
        kind, item = arg
        if kind == "v":
            return ("v", packer.value(item))
        entry = self.core.objects.get(item.id)
        if entry is None:
            return ("r", item.id, "")
        if entry.value is not None and (entry.node_id is None and
                                        entry.value.size_bytes > INLINE_LIMIT_BYTES):
            self._upload(item.id, entry)
        if entry.node_id is not None:
            return ("r", item.id, entry.node_id)
        return ("v", packer.value(entry.value))

    def _upload(self, object_id: bytes, entry: Entry) -> None:
        """A large put value leaves the driver the first time a task needs it."""
        home = self.core.home_node_id
        if home not in self.core.agents:
            home = next(iter(self.core.agents))
        packer = Packer()
        packed = packer.value(entry.value)
        protocol.send(self.core.agents[home], b"put", (object_id, packed,
                                                       self.core.driver_id), packer.frames)
        entry.node_id = home

    # ------------------------------------------------------------ results
    def handle(self, sock, kind: bytes, header, frames) -> None:
        core = self.core
        if sock is core.control:
            if kind == b"reply":
                request_id, ok, result = header
                future = core.rpc_futures.pop(request_id, None)
                if future is not None:
                    future.set_result((ok, result))
                elif ok and isinstance(result, dict) and "nodes" in result:
                    self.learn_nodes(result["nodes"])
            elif kind == b"nodes":
                self.learn_nodes(header)
        elif kind == b"results":
            with core.cv:
                for item in header:
                    self._result(item, frames)
                core.cv.notify_all()
            self._drain()
        elif kind == b"object":
            self._fetched(header, frames)

    def _result(self, item, frames) -> None:
        core = self.core
        task_id, status = item[0], item[1]
        if status == "log":
            self._print(*item[2:])
            return
        record = core.tasks.pop(task_id, None)
        if record is None:
            if status == "stored":
                self.frees[item[2]].append(task_id)
            elif status == "actor_died":   # an actor that had been created died
                actor = core.actors.get(item[2])
                if actor is not None and actor.create is not None and \
                        actor.create.task_id == task_id and actor.state != "dead":
                    self._actor_failed(actor, item[3])
            return
        if record.kind == "task":
            core.inflight[record.node_id] -= 1
        elif record.kind == "actor_call" and not record.direct:
            actor = core.actors.get(record.actor_id)
            if actor is not None and actor.via_agent > 0:
                actor.via_agent -= 1
        if status in ("ok", "error"):
            data, _, count = item[2]
            base = item[3] if len(item) > 3 else 0
            value = Serialized(data, [f.buffer for f in frames[base:base + count]])
            if status == "error":
                self._fail(record, user_error(record.name, value))
            elif record.kind == "actor_create":
                actor = core.actors.get(record.actor_id)
                if actor is not None and actor.create is record:
                    actor.state = "alive"
                    self._connect_direct(actor, value)
            else:
                self._complete(task_id, value=value)
        elif status == "stored":
            self._complete(task_id, node_id=item[2])
        elif status == "worker_died":
            self._retry(record, item[2], None)
        elif status == "actor_died":
            actor = core.actors.get(record.actor_id)
            if record.kind == "actor_create":
                if actor is not None and actor.create is record:
                    self._actor_failed(actor, item[3])
            else:
                self._fail(record, ActorDiedError(record.actor_id.hex(), item[3]))
        elif status == "lost":
            self._fail(record, ObjectLostError(item[2].hex(), f"on node {item[3]}"))

    def _print(self, node_id, pid, text, stream) -> None:
        if not self.core.log_to_driver:
            return
        out = sys.stderr if stream == "stderr" else sys.stdout
        prefix = f"({node_id[:12]} pid={pid}) "
        out.write("".join(prefix + line + "\n" for line in text.rstrip("\n").split("\n")))
        out.flush()

    def _complete(self, object_id: bytes, value=None, node_id=None) -> None:
        core = self.core
        with core.cv:
            entry = core.objects.get(object_id)
            if entry is None:
                if node_id is not None:
                    self.frees[node_id].append(object_id)
                return
            entry.value, entry.node_id, entry.state = value, node_id, READY
            core.unfinished.discard(object_id)
            core.cv.notify_all()
        self._wake_dependents(object_id)

    def _fail(self, record: TaskRecord, error: BaseException, lock: bool = True) -> None:
        core = self.core
        if record.kind == "actor_create":
            actor = core.actors.get(record.actor_id)
            if actor is not None and actor.create is record:
                self._actor_dead(actor, ActorDiedError(record.actor_id.hex(),
                                                       f"creation failed: {error}"))
            return
        if lock:
            core.cv.acquire()
        try:
            entry = core.objects.get(record.task_id)
            if entry is not None:
                entry.state, entry.error = FAILED, error
                core.unfinished.discard(record.task_id)
                core.cv.notify_all()
        finally:
            if lock:
                core.cv.release()
        if lock:
            self._wake_dependents(record.task_id)
        else:
            core._run(lambda: self._wake_dependents(record.task_id))

    def _wake_dependents(self, object_id: bytes) -> None:
        for record in self.core.dep_waiters.pop(object_id, ()):
            record.deps.discard(object_id)
            if not record.deps:
                self.place(record)

    def _retry(self, record: TaskRecord, cause: str, final_error) -> None:
        if record.retries_left > 0:
            record.retries_left -= 1
            record.last_cause = cause
            record.node_id = None
            self.place(record)
        else:
            self._fail(record, final_error or TaskError(record.name, cause))

    # ------------------------------------------------------------ actors
    def _actor_failed(self, actor, cause: str) -> None:
        core = self.core
        self._close_direct(actor)
        if actor.state != "killed" and actor.restarts_left > 0 and actor.create is not None:
            actor.restarts_left -= 1
            old = actor.create
            new = TaskRecord(core.new_id(), "actor_create", old.name, old.fn, old.fn_id,
                             old.args, old.kwargs, old.shape, actor_id=old.actor_id,
                             detached=old.detached)
            actor.create, actor.node_id, actor.state = new, None, "pending"
            self.place(new)
            return
        self._actor_dead(actor, ActorDiedError(actor.actor_id.hex(), cause))

    def _actor_dead(self, actor, error: BaseException) -> None:
        self._close_direct(actor)
        if actor.state != "killed":
            actor.state = "dead"
        actor.error = error
        calls, actor.waiting_calls = actor.waiting_calls, []
        for call in calls:
            self._fail(call, error)
        if actor.name and actor.owned:
            request_id = self._rpc_id()
            protocol.send(self.core.control, b"rpc", (request_id, "remove_actor", {
                "name": actor.name, "actor_id": actor.actor_id}))

    def kill_actor(self, actor_id: bytes) -> None:
        actor = self.core.actors.get(actor_id)
        if actor is None:
            return
        actor.state = "killed"
        sock = self.core.agents.get(actor.node_id) if actor.node_id else None
        if sock is not None:
            protocol.send(sock, b"kill_actor", actor_id)
        else:
            self._actor_dead(actor, ActorDiedError(actor_id.hex(), "killed by kill()"))

    # ------------------------------------------------------------ objects
    def fetch(self, object_id: bytes) -> None:
        core = self.core
        entry = core.objects.get(object_id)
        if entry is None or not entry.needs_fetch:
            return
        sock = core.agents.get(entry.node_id)
        if sock is None:
            with core.cv:
                entry.state = FAILED
                entry.error = ObjectLostError(object_id.hex(), f"node {entry.node_id} is gone")
                core.cv.notify_all()
            return
        entry.fetching = True
        self.fetch_ids += 1
        self.fetches[self.fetch_ids] = object_id
        protocol.send(sock, b"fetch", (self.fetch_ids, object_id))

    def _fetched(self, header, frames) -> None:
        request_id, found, packed = header
        if request_id in self.rpc_stats:
            self.rpc_stats.pop(request_id).set_result(packed)
            return
        object_id = self.fetches.pop(request_id, None)
        core = self.core
        with core.cv:
            entry = core.objects.get(object_id)
            if entry is not None:
                entry.fetching = False
                if found:
                    entry.value = unpack_value(packed, frames)
                else:
                    entry.state = FAILED
                    entry.error = ObjectLostError(object_id.hex(), "not in the node's store")
            core.cv.notify_all()

    def free_unreferenced(self) -> None:
        core = self.core
        with core.ref_lock:
            if not core.to_free:
                return
            gone, core.to_free = core.to_free, []
        for object_id, node_id in gone:
            self.frees[node_id].append(object_id)

    def agent_stats(self, node_id: str, future) -> None:
        self.fetch_ids += 1
        self.rpc_stats[self.fetch_ids] = future
        protocol.send(self.core.agents[node_id], b"stats", self.fetch_ids)
