"""Objects, on the driver's IO thread: uploading large put values, fetching values
that stay on their node, freeing objects no reference is left to, agent stats.

A put value larger than PIECED_PUT_BYTES is uploaded in pieces: a put_begin naming its
size (the agent takes room for it in memory or a spill file, or refuses it at once),
then put_piece messages of at most PIECE_BYTES, so the agent never has to take in the
whole value in one message (ZeroMQ drops a message it cannot allocate, silently, with
the connection). A refused put fails the tasks that need it with ObjectStoreFullError
(runtime.agent.objects); the driver keeps its own copy for get()."""
from __future__ import annotations

from runtime.protocol import frames as protocol
from runtime.driver.records import FAILED, Entry
from runtime.errors import ObjectLostError, ObjectStoreFullError
from runtime.protocol.frames import Packer, unpack_value
from runtime.protocol.kinds import Kind
from runtime.protocol.objects import (FetchRequest, ObjectFull, ObjectReply, PutBegin,
                                      PutPiece, PutValue)
from runtime.protocol.tasks import TaskDone, TaskMessage

PIECED_PUT_BYTES = 64 << 20
PIECE_BYTES = 16 << 20


class ObjectsMixin:
    """Part of DriverIO (runtime.driver.io_thread): object transfer and freeing."""

    def _upload(self, object_id: bytes, entry: Entry) -> None:
        """A large put value leaves the driver the first time a task needs it."""
        home = self.core.home_node_id
        if home not in self.core.agents:
            home = next(iter(self.core.agents))
        sock, value = self.core.agents[home], entry.value
        entry.node_id = home
        if value.size_bytes <= PIECED_PUT_BYTES:
            packer = Packer()
            packed = packer.value(value)
            protocol.send(sock, Kind.PUT,
                          tuple(PutValue(object_id, packed, self.core.driver_id)),
                          packer.frames)
            return
        send_in_pieces(sock, object_id, self.core.driver_id, value)

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
        protocol.send(sock, Kind.FETCH, tuple(FetchRequest(self.fetch_ids, object_id)))

    def _fetched(self, reply: ObjectReply, frames) -> None:
        request_id, payload = reply.request_id, reply.payload
        if request_id in self.rpc_stats:
            self.rpc_stats.pop(request_id).set_result(payload)
            return
        object_id = self.fetches.pop(request_id, None)
        core = self.core
        with core.cv:
            entry = core.objects.get(object_id)
            if entry is not None:
                entry.fetching = False
                if reply.found:
                    entry.value = unpack_value(payload, frames)
                elif isinstance(payload, ObjectFull):
                    entry.state = FAILED
                    entry.error = ObjectStoreFullError(payload.node_id, payload.reason)
                else:
                    entry.state = FAILED
                    entry.error = ObjectLostError(object_id.hex(), "not in the node's store")
            core.cv.notify_all()

    def free_unreferenced(self) -> None:
        core = self.core
        if not core.to_free:   # unlocked peek: a free seen late is freed next round
            return
        with core.ref_lock:
            if not core.to_free:
                return
            gone, core.to_free = core.to_free, []
        for object_id, node_id in gone:
            self.frees[node_id].append(object_id)

    def agent_stats(self, node_id: str, future) -> None:
        self.fetch_ids += 1
        self.rpc_stats[self.fetch_ids] = future
        protocol.send(self.core.agents[node_id], Kind.STATS, self.fetch_ids)


def send_in_pieces(sock, object_id: bytes, owner: str, value) -> None:
    """A large value as put_begin (its size) and put_piece messages (its buffers)."""
    views = [memoryview(buffer).cast("B") for buffer in value.buffers]
    protocol.send(sock, Kind.PUT_BEGIN, tuple(PutBegin(object_id, owner, value.data,
                                                       [view.nbytes for view in views])))
    for index, view in enumerate(views):
        for offset in range(0, view.nbytes, PIECE_BYTES):
            protocol.send(sock, Kind.PUT_PIECE, tuple(PutPiece(object_id, index, offset)),
                          [view[offset:offset + PIECE_BYTES]])


def send_result(sock, task: TaskMessage, ok: bool, result) -> None:
    """A worker's Kind.DONE for a task: a large result first goes in pieces into its
    agent's store (then the done carries None), so the agent is never sent more than
    a piece at once (runtime.agent.objects._result_arrived)."""
    if ok and result.size_bytes > PIECED_PUT_BYTES:
        send_in_pieces(sock, task.task_id, task.driver, result)
        protocol.send(sock, Kind.DONE, tuple(TaskDone(task.task_id, ok, None)))
        return
    packer = Packer()
    payload = packer.value(result)
    protocol.send(sock, Kind.DONE, tuple(TaskDone(task.task_id, ok, payload)),
                  packer.frames)
