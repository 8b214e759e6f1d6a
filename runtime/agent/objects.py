"""The node agent's object side (a mixin of NodeAgent): task arguments fetched from
peer agents, and the local store served to drivers and peers (fetch, put, free). A fetch
of an object that has not arrived yet (a put still on its way) waits up to FETCH_WAIT_S,
as does one from a node this agent has not heard of yet (it joined since the last
heartbeat); one whose put is still arriving in pieces waits as long as pieces come.

The store has a capacity and spills to disk (runtime.agent.store, runtime.agent.spill). When it
cannot hold an object (ObjectStoreFullError), the request that brought the object fails,
not the agent: a put that failed is remembered, and every task needing that object is
answered "store_full" (its driver raises ObjectStoreFullError); a task result that
cannot be kept is reported the same way. A fetch says how large a value the fetching
agent can take in now, and a larger one is refused instead of sent (ZeroMQ would drop a
message it cannot allocate, with the connection it came on)."""
from __future__ import annotations

import logging
import time
import uuid

import zmq

from runtime.protocol import frames as protocol
from runtime.errors import ObjectStoreFullError
from runtime.protocol.frames import Packer, unpack_value
from runtime.protocol.kinds import Kind
from runtime.protocol.objects import (FetchRequest, ObjectFull, ObjectReply, ObjectTooLarge,
                                      PutBegin, PutPiece, PutValue)
from runtime.protocol.tasks import ACTOR_CALL, ACTOR_CREATE, Stored, StoreFull
from runtime.agent.task_state import FULL, LOCAL, LOST, AgentTask, ArgState

log = logging.getLogger("corral.agent")
FETCH_WAIT_S = 10.0
PUT_STALL_S = 30.0     # a put arriving in pieces with none for this long has failed


class ObjectService:
    def _fetch_arg(self, task: AgentTask, arg: ArgState) -> None:
        """Find an argument that is an object: in this store (read when the task is
        sent, _arg_values), failed here, or fetched from the node that has it."""
        object_id, node_id = arg.object_id, arg.node_id
        if self.store.contains(object_id):
            arg.state = LOCAL
            return
        failure = self.store.failure(object_id)
        if failure is not None:
            arg.failed(FULL, self.node_id, failure)
            return
        peer = self._peer(node_id)
        if peer is None:    # a node that joined since this agent last heard the table
            self._address_waits.append((time.monotonic() + FETCH_WAIT_S, task, arg))
            task.missing += 1
            return
        fetch_id = next(self.fetch_ids)
        limit_bytes = self.store_receive_limit()
        self.fetches[fetch_id] = (task, arg, limit_bytes)
        task.missing += 1
        self._send(peer, None, Kind.FETCH, tuple(FetchRequest(fetch_id, object_id,
                                                              limit_bytes)))

    @property
    def _address_waits(self) -> list:
        """[(deadline, task, arg)] of fetches from nodes not in the table yet."""
        return self.__dict__.setdefault("address_waits", [])

    def _arg_values(self, worker, task: AgentTask):
        """The values of a task's arguments as it goes to its worker: objects in this
        node's store are read now (not while the task waits in a queue, where a
        spilled one would hold its mapping). -> (args, kwargs), or None when one
        cannot be read: the task is then failed with store_full (_fail_started)."""
        try:
            return ([self._arg_value(arg) for arg in task.args],
                    {key: self._arg_value(arg) for key, arg in task.kwargs.items()})
        except ObjectStoreFullError as error:
            self._fail_started(worker, task, error.node_id, error.reason)
            return None

    def _arg_value(self, arg: ArgState):
        if arg.state != LOCAL:
            return arg.value
        value = self.store.get(arg.object_id)
        if value is None:    # (its driver holds the object until the task ends)
            raise ObjectStoreFullError(self.node_id, f"object {arg.object_id.hex()} is "
                                       "no longer in the store")
        return value

    def _fail_started(self, worker, task: AgentTask, node_id: str, reason: str) -> None:
        """Undo the start of a task whose arguments cannot be read, and tell its
        driver: a task gives its resources back; an actor's creation ends its
        worker (its driver hears the actor died, with the reason)."""
        log.warning("task %s: an argument cannot be read: %s", task.task_id.hex(),
                    reason)
        if task.kind == ACTOR_CREATE:
            worker.killed_reason = f"an argument of its creation cannot be read ({reason})"
            worker.proc.kill()
            return
        if worker.task is task:
            worker.task = None
            self._release_task(worker, task)
        elif worker.next is task:
            worker.next = None
        self._to_driver(task.driver, StoreFull.of(task.task_id, node_id, reason))

    def store_receive_limit(self) -> int | None:
        limit = self.store.receive_limit
        return None if limit is None else limit.bytes()

    def _peer(self, node_id: str):
        if node_id in self.peers:
            return self.peers[node_id]
        address = self.peer_addresses.get(node_id)
        if address is None:
            return None
        sock = protocol.connect_dealer(self.ctx, f"tcp://{address}", self.keys,
                                       b"A" + self.node_id.encode() + uuid.uuid4().bytes[:4])
        self.poller.register(sock, zmq.POLLIN)
        self.peers[node_id] = sock
        return sock

    def _fetched(self, reply: ObjectReply, frames) -> None:
        task, arg, limit_bytes = self.fetches.pop(reply.request_id)
        payload = reply.payload
        if reply.found:
            arg.arrived(unpack_value(payload, frames))
        elif isinstance(payload, ObjectFull):
            arg.failed(FULL, payload.node_id, payload.reason)
        elif isinstance(payload, ObjectTooLarge):
            arg.failed(FULL, self.node_id,
                       f"the object ({payload.size_bytes} bytes, on node {arg.node_id}) "
                       f"is larger than this node can receive now ({limit_bytes} bytes)")
        else:
            arg.failed(LOST, arg.node_id)
        task.missing -= 1
        if task.kind == ACTOR_CALL and task.missing == 0:
            self._send_to_actor(task)

    def _on_fetch(self, sock, identity, request: FetchRequest, frames) -> None:
        self._answer_fetch(sock, identity, request, defer=True)

    def _answer_fetch(self, sock, identity, request: FetchRequest, defer: bool) -> None:
        request_id, object_id = request.request_id, request.object_id
        try:
            value = self.store.get(object_id)
        except ObjectStoreFullError as error:
            self._not_found(sock, identity, request_id,
                            ObjectFull.of(error.node_id, error.reason))
            return
        if value is None:
            failure = self.store.failure(object_id)
            if failure is not None:
                self._not_found(sock, identity, request_id,
                                ObjectFull.of(self.node_id, failure))
                return
            if defer:   # a put may still be on its way from its driver: answer when it lands
                self.deferred_fetches.setdefault(object_id, []).append(
                    (time.monotonic() + FETCH_WAIT_S, sock, identity, request))
                return
            self._not_found(sock, identity, request_id, None)
            return
        if request.limit_bytes is not None and value.size_bytes > request.limit_bytes:
            self._not_found(sock, identity, request_id, ObjectTooLarge.of(value.size_bytes))
            return
        packer = Packer()
        packed = packer.value(value)
        self._send(sock, identity, Kind.OBJECT,
                   tuple(ObjectReply(request_id, True, packed)), packer.frames)

    def _not_found(self, sock, identity, request_id: int, failure) -> None:
        """Answer a fetch without a value: `failure` ObjectFull, ObjectTooLarge or
        None (not in this store)."""
        payload = None if failure is None else tuple(failure)
        self._send(sock, identity, Kind.OBJECT,
                   tuple(ObjectReply(request_id, False, payload)))

    # ------------------------------------------------------------------ puts
    def _on_put(self, sock, identity, put: PutValue, frames) -> None:
        object_id, owner = put.object_id, put.owner
        try:
            self.store.put(object_id, unpack_value(put.packed, frames), owner)
        except ObjectStoreFullError as error:
            self._put_failed(object_id, owner, error.reason)
        except MemoryError:
            self._put_failed(object_id, owner, "out of memory while keeping it")
        self._answer_deferred(object_id)

    def _on_put_begin(self, sock, identity, begin: PutBegin, frames) -> None:
        """A large put, announced with its size; its buffers follow in put_piece
        messages (runtime.driver.objects)."""
        object_id = begin.object_id
        try:
            done = self.store.begin(object_id, begin.owner, begin.data, begin.sizes)
        except ObjectStoreFullError as error:
            log.warning("put %s (%d bytes) refused: %s", object_id.hex(),
                        len(begin.data) + sum(begin.sizes), error.reason)
            done = True
        if done:
            self._answer_deferred(object_id)

    def _on_put_piece(self, sock, identity, piece: PutPiece, frames) -> None:
        object_id = piece.object_id
        try:
            done = self.store.piece(object_id, piece.index, piece.offset, frames[0])
        except ObjectStoreFullError as error:
            log.warning("put %s failed while arriving: %s", object_id.hex(), error.reason)
            done = True
        if done or self.store.failure(object_id) is not None:
            self._answer_deferred(object_id)

    def _put_failed(self, object_id: bytes, owner: str, reason: str) -> None:
        log.warning("put %s not kept: %s", object_id.hex(), reason)
        self.store.fail(object_id, owner, reason)

    def _answer_deferred(self, object_id: bytes) -> None:
        for _, fetch_sock, fetch_identity, fetch in self.deferred_fetches.pop(object_id, ()):
            self._answer_fetch(fetch_sock, fetch_identity, fetch, defer=False)

    def _retry_address_waits(self) -> None:
        """Fetches from nodes whose address was not known yet: sent once the node
        table names them, lost after FETCH_WAIT_S."""
        waits = self._address_waits
        if not waits:
            return
        self.__dict__["address_waits"] = []
        now = time.monotonic()
        for deadline_s, task, arg in waits:
            if arg.node_id not in self.peer_addresses and deadline_s > now:
                self._address_waits.append((deadline_s, task, arg))
                continue
            task.missing -= 1
            if arg.node_id in self.peer_addresses:
                self._fetch_arg(task, arg)
            else:
                arg.failed(LOST, arg.node_id)
            if task.kind == ACTOR_CALL and task.missing == 0:
                self._send_to_actor(task)

    def _expire_fetches(self) -> None:
        self._retry_address_waits()
        for object_id in self.store.abort_stalled(PUT_STALL_S):
            log.warning("put %s stalled: %s", object_id.hex(),
                        self.store.failure(object_id))
            self._answer_deferred(object_id)
        now = time.monotonic()
        for object_id, waiting in list(self.deferred_fetches.items()):
            if waiting[0][0] <= now and not self.store.arriving(object_id):
                del self.deferred_fetches[object_id]
                for _, fetch_sock, fetch_identity, fetch in waiting:
                    self._answer_fetch(fetch_sock, fetch_identity, fetch, defer=False)

    # ------------------------------------------------------------------ results, frees
    def _keep_result(self, task_id: bytes, driver: str, value) -> None:
        """A task's large result stays here; its driver hears "stored", or
        "store_full" when the store cannot hold it."""
        try:
            self.store.put(task_id, value, driver)
        except ObjectStoreFullError as error:
            self._to_driver(driver, StoreFull.of(task_id, error.node_id, error.reason))
            return
        except MemoryError:
            self._to_driver(driver, StoreFull.of(task_id, self.node_id,
                                                 "out of memory while keeping the result"))
            return
        self._to_driver(driver, Stored.of(task_id, self.node_id, value.size_bytes))

    def _result_arrived(self, task_id: bytes, driver: str | None) -> None:
        """A result sent in pieces (runtime.driver.objects.send_result) is complete:
        its driver hears "stored", or "store_full" if the pieces were refused."""
        if driver is None:           # its task is gone: nobody will free it
            self.store.free(task_id)
            return
        if self.store.contains(task_id):
            self._to_driver(driver, Stored.of(task_id, self.node_id,
                                              self.store.size_of(task_id)))
            return
        reason = self.store.failure(task_id) or "its pieces did not all arrive"
        self.store.free(task_id)      # the driver is told: nothing to remember
        self._to_driver(driver, StoreFull.of(task_id, self.node_id, reason))

    def _on_free(self, sock, identity, object_ids: list, frames) -> None:
        for object_id in object_ids:
            self.store.free(object_id)
