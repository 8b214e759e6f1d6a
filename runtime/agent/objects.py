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

log = logging.getLogger("corral.agent")
FETCH_WAIT_S = 10.0
PUT_STALL_S = 30.0     # a put arriving in pieces with none for this long has failed


class ObjectService:
    def _arg(self, arg, frames):
        if arg[0] == "v":
            return ["v", unpack_value(arg[1], frames)]
        return ["r", arg[1], arg[2]]

    def _fetch_arg(self, task, arg) -> None:
        object_id, node_id = arg[1], arg[2]
        if self.store.contains(object_id):   # read when the task is sent (_arg_values)
            arg[:] = ["local", object_id, node_id]
            return
        failure = self.store.failure(object_id)
        if failure is not None:
            arg[:] = ["full", object_id, self.node_id, failure]
            return
        peer = self._peer(node_id)
        if peer is None:    # a node that joined since this agent last heard the table
            self._address_waits.append((time.monotonic() + FETCH_WAIT_S, task, arg))
            task["missing"] += 1
            return
        fetch_id = next(self.fetch_ids)
        limit_bytes = self.store_receive_limit()
        self.fetches[fetch_id] = (task, arg, limit_bytes)
        task["missing"] += 1
        self._send(peer, None, b"fetch", (fetch_id, object_id, limit_bytes))

    @property
    def _address_waits(self) -> list:
        """[(deadline, task, arg)] of fetches from nodes not in the table yet."""
        return self.__dict__.setdefault("address_waits", [])

    def _arg_values(self, worker, task: dict):
        """The values of a task's arguments as it goes to its worker: objects in this
        node's store are read now (not while the task waits in a queue, where a
        spilled one would hold its mapping). -> (args, kwargs), or None when one
        cannot be read: the task is then failed with store_full (_fail_started)."""
        try:
            return ([self._arg_value(arg) for arg in task["args"]],
                    {key: self._arg_value(arg) for key, arg in task["kwargs"].items()})
        except ObjectStoreFullError as error:
            self._fail_started(worker, task, error.node_id, error.reason)
            return None

    def _arg_value(self, arg):
        if arg[0] != "local":
            return arg[1]
        value = self.store.get(arg[1])
        if value is None:    # (its driver holds the object until the task ends)
            raise ObjectStoreFullError(self.node_id, f"object {arg[1].hex()} is no "
                                       "longer in the store")
        return value

    def _fail_started(self, worker, task: dict, node_id: str, reason: str) -> None:
        """Undo the start of a task whose arguments cannot be read, and tell its
        driver: a task gives its resources back; an actor's creation ends its
        worker (its driver hears the actor died, with the reason)."""
        log.warning("task %s: an argument cannot be read: %s", task["task_id"].hex(),
                    reason)
        if task["kind"] == "actor_create":
            worker.killed_reason = f"an argument of its creation cannot be read ({reason})"
            worker.proc.kill()
            return
        if worker.task is task:
            worker.task = None
            self._release_task(worker, task)
        elif worker.next is task:
            worker.next = None
        self._to_driver(task["driver"], (task["task_id"], "store_full", node_id, reason))

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

    def _fetched(self, header, frames) -> None:
        fetch_id, found, packed = header
        task, arg, limit_bytes = self.fetches.pop(fetch_id)
        if found:
            arg[:] = ["v", unpack_value(packed, frames)]
        elif packed and packed[0] == "full":
            arg[:] = ["full", arg[1], packed[1], packed[2]]
        elif packed and packed[0] == "too_large":
            arg[:] = ["full", arg[1], self.node_id,
                      f"the object ({packed[1]} bytes, on node {arg[2]}) is larger than "
                      f"this node can receive now ({limit_bytes} bytes)"]
        else:
            arg[:] = ["lost", arg[1], arg[2]]
        task["missing"] -= 1
        if task["kind"] == "actor_call" and task["missing"] == 0:
            self._send_to_actor(task)

    def _on_fetch(self, sock, identity, header, frames) -> None:
        self._answer_fetch(sock, identity, header, defer=True)

    def _answer_fetch(self, sock, identity, header, defer: bool) -> None:
        """header: (request id, object id[, bytes the asker can receive])."""
        request_id, object_id = header[0], header[1]
        limit_bytes = header[2] if len(header) > 2 else None
        try:
            value = self.store.get(object_id)
        except ObjectStoreFullError as error:
            self._send(sock, identity, b"object",
                       (request_id, False, ("full", error.node_id, error.reason)))
            return
        if value is None:
            failure = self.store.failure(object_id)
            if failure is not None:
                self._send(sock, identity, b"object",
                           (request_id, False, ("full", self.node_id, failure)))
                return
            if defer:   # a put may still be on its way from its driver: answer when it lands
                self.deferred_fetches.setdefault(object_id, []).append(
                    (time.monotonic() + FETCH_WAIT_S, sock, identity, header))
                return
            self._send(sock, identity, b"object", (request_id, False, None))
            return
        if limit_bytes is not None and value.size_bytes > limit_bytes:
            self._send(sock, identity, b"object",
                       (request_id, False, ("too_large", value.size_bytes)))
            return
        packer = Packer()
        packed = packer.value(value)
        self._send(sock, identity, b"object", (request_id, True, packed), packer.frames)

    # ------------------------------------------------------------------ puts
    def _on_put(self, sock, identity, header, frames) -> None:
        object_id, packed, owner = header
        try:
            self.store.put(object_id, unpack_value(packed, frames), owner)
        except ObjectStoreFullError as error:
            self._put_failed(object_id, owner, error.reason)
        except MemoryError:
            self._put_failed(object_id, owner, "out of memory while keeping it")
        self._answer_deferred(object_id)

    def _on_put_begin(self, sock, identity, header, frames) -> None:
        """A large put, announced with its size; its buffers follow in put_piece
        messages (runtime.driver.objects)."""
        object_id, owner, data, sizes = header
        try:
            done = self.store.begin(object_id, owner, data, sizes)
        except ObjectStoreFullError as error:
            log.warning("put %s (%d bytes) refused: %s", object_id.hex(),
                        len(data) + sum(sizes), error.reason)
            done = True
        if done:
            self._answer_deferred(object_id)

    def _on_put_piece(self, sock, identity, header, frames) -> None:
        object_id, index, offset = header
        try:
            done = self.store.piece(object_id, index, offset, frames[0])
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
            if arg[2] not in self.peer_addresses and deadline_s > now:
                self._address_waits.append((deadline_s, task, arg))
                continue
            task["missing"] -= 1
            if arg[2] in self.peer_addresses:
                self._fetch_arg(task, arg)
            else:
                arg[:] = ["lost", arg[1], arg[2]]
            if task["kind"] == "actor_call" and task["missing"] == 0:
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
            self._to_driver(driver, (task_id, "store_full", error.node_id, error.reason))
            return
        except MemoryError:
            self._to_driver(driver, (task_id, "store_full", self.node_id,
                                     "out of memory while keeping the result"))
            return
        self._to_driver(driver, (task_id, "stored", self.node_id, value.size_bytes))

    def _result_arrived(self, task_id: bytes, driver: str | None) -> None:
        """A result sent in pieces (runtime.driver.objects.send_result) is complete:
        its driver hears "stored", or "store_full" if the pieces were refused."""
        if driver is None:           # its task is gone: nobody will free it
            self.store.free(task_id)
            return
        if self.store.contains(task_id):
            self._to_driver(driver, (task_id, "stored", self.node_id,
                                     self.store.size_of(task_id)))
            return
        reason = self.store.failure(task_id) or "its pieces did not all arrive"
        self.store.free(task_id)      # the driver is told: nothing to remember
        self._to_driver(driver, (task_id, "store_full", self.node_id, reason))

    def _on_free(self, sock, identity, object_ids, frames) -> None:
        for object_id in object_ids:
            self.store.free(object_id)
