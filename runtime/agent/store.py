"""A node's local object store: large values (task results and puts) kept where they were
made, as pickle-5 bytes plus zero-copy buffers, until their owner frees them.

With a capacity (bytes), at most that much is kept in memory: a value that does not fit
makes room by spilling the least recently used ones to the node's disk
(runtime.agent.spill), never one that is being read or sent right now; a value larger than
the capacity (or arriving while everything in memory is in use) goes to disk itself.
A spilled value is read back (memory-mapped) whenever it is asked for. When neither
memory nor disk can hold a value, ObjectStoreFullError: the value is not kept, and a
put that failed is remembered (`failure`) so the tasks that need it get the error.

Large puts arrive in pieces (begin/piece): their room (memory or a spill file) is
taken when the first message names their size, so the node never has to receive more
than a piece at once to learn that it cannot hold them."""
from __future__ import annotations

import collections
import sys
import threading
import time

from runtime.errors import ObjectStoreFullError
from runtime.protocol.frames import Serialized

_STORE_REFS = 2     # sys.getrefcount of a value (or buffer) only the store holds


class StoredObject:
    __slots__ = ("value", "owner", "size_bytes", "spilled")

    def __init__(self, value: Serialized | None, owner: str, size_bytes: int):
        self.value = value          # None once spilled
        self.owner = owner
        self.size_bytes = size_bytes
        self.spilled = None         # runtime.agent.spill.SpilledObject


class Arrival:
    """A put arriving in pieces: into bytearrays (memory) or a spill file (writer)."""

    __slots__ = ("owner", "data", "buffers", "writer", "size_bytes", "missing_bytes",
                 "last_s")

    def __init__(self, owner: str, data: bytes, sizes: list[int]):
        self.owner = owner
        self.data = data
        self.buffers: list | None = None
        self.writer = None
        self.size_bytes = len(data) + sum(sizes)
        self.missing_bytes = sum(sizes)
        self.last_s = time.monotonic()


class ObjectStore:
    """capacity_bytes None: everything stays in memory (no spill directory needed).
    receive_limit: a runtime.agent.store_memory.ReceiveLimit, consulted before a large put
    is given memory (too little left: it goes straight to disk)."""

    def __init__(self, capacity_bytes: int | None = None, spill=None,
                 node_id: str = "", receive_limit=None):
        if capacity_bytes is not None and spill is None:
            raise ValueError("an object store with a capacity needs a spill directory")
        self.capacity_bytes = capacity_bytes
        self.spill = spill
        self.node_id = node_id
        self.receive_limit = receive_limit
        self._objects: dict[bytes, StoredObject] = {}
        self._memory: collections.OrderedDict = collections.OrderedDict()  # LRU first
        self._arriving: dict[bytes, Arrival] = {}
        self._failed: dict[bytes, tuple[str, str]] = {}      # id -> (reason, owner)
        self.memory_bytes = 0          # in memory, arriving pieces included
        self.spilled_bytes = 0
        self.spilled_objects = 0
        self.restored_bytes = 0

    def __len__(self) -> int:
        return len(self._objects)

    @property
    def size_bytes(self) -> int:
        return self.memory_bytes + self.spilled_bytes

    # ------------------------------------------------------------------ put / get
    def put(self, object_id: bytes, value: Serialized, owner: str) -> None:
        """Keep a value (in memory if it fits, else on disk); ObjectStoreFullError
        when neither can hold it (then nothing of it is kept)."""
        if object_id in self._objects or object_id in self._arriving:
            return
        self._failed.pop(object_id, None)
        value = Serialized(value.data, [memoryview(b) for b in value.buffers])
        record = StoredObject(value, owner, value.size_bytes)
        if self._make_room(record.size_bytes):
            self._memory[object_id] = record
            self.memory_bytes += record.size_bytes
        else:
            record.spilled = self.spill.write(value)
            record.value = None
            self._count_spilled(record)
        self._objects[object_id] = record

    def get(self, object_id: bytes) -> Serialized | None:
        """The value, or None if it is not here (or still arriving). A spilled one is
        mapped from its file (ObjectStoreFullError if that fails)."""
        record = self._objects.get(object_id)
        if record is None:
            return None
        if record.value is not None:
            self._memory.move_to_end(object_id)
            return record.value
        value = self.spill.read(record.spilled)
        self.restored_bytes += record.size_bytes
        return value

    def contains(self, object_id: bytes) -> bool:
        return object_id in self._objects

    def size_of(self, object_id: bytes) -> int:
        return self._objects[object_id].size_bytes

    def failure(self, object_id: bytes) -> str | None:
        """Why a put of this object could not be kept, if it could not."""
        failed = self._failed.get(object_id)
        return failed[0] if failed else None

    def fail(self, object_id: bytes, owner: str, reason: str) -> None:
        self._failed[object_id] = (reason, owner)

    # ------------------------------------------------------------------ pieces
    def begin(self, object_id: bytes, owner: str, data: bytes, sizes: list[int]) -> bool:
        """A put of buffers `sizes` starts arriving: room is taken now, in memory if
        it fits (and can be allocated), else in a spill file. -> True when it is
        complete already (no buffer bytes). ObjectStoreFullError: no room (recorded
        as its failure; its pieces are then ignored)."""
        if object_id in self._objects or object_id in self._arriving:
            return False
        self._failed.pop(object_id, None)
        arrival = Arrival(owner, data, sizes)
        if self._make_room(arrival.size_bytes, arriving=True):
            try:
                arrival.buffers = [bytearray(size) for size in sizes]
                self.memory_bytes += arrival.size_bytes
            except MemoryError:
                arrival.buffers = None
        if arrival.buffers is None:
            try:
                if self.spill is None:
                    raise ObjectStoreFullError(self.node_id, "no memory for it, and no "
                                               "spill directory", arrival.size_bytes)
                arrival.writer = self.spill.create(data, sizes)
            except ObjectStoreFullError as error:
                self.fail(object_id, owner, error.reason)
                raise
        self._arriving[object_id] = arrival
        return self._complete(object_id) if arrival.missing_bytes == 0 else False

    def piece(self, object_id: bytes, index: int, offset: int, piece) -> bool:
        """Bytes of buffer `index` of an arriving put. -> True when that completed it.
        Pieces of a put that failed (or is unknown) are dropped. ObjectStoreFullError
        when writing it failed (the put is then failed)."""
        arrival = self._arriving.get(object_id)
        if arrival is None:
            return False
        view = memoryview(piece).cast("B")
        try:
            if arrival.writer is not None:
                arrival.writer.write(index, offset, view)
            else:
                target = memoryview(arrival.buffers[index])
                if offset < 0 or offset + view.nbytes > target.nbytes:
                    raise ValueError(f"piece [{offset}, {offset + view.nbytes}) is "
                                     f"outside buffer {index} of {target.nbytes} bytes")
                target[offset:offset + view.nbytes] = view
        except (ObjectStoreFullError, ValueError, IndexError) as error:
            self._abort(object_id)
            self.fail(object_id, arrival.owner, getattr(error, "reason", str(error)))
            if isinstance(error, ObjectStoreFullError):
                raise
            return False
        arrival.missing_bytes -= view.nbytes
        arrival.last_s = time.monotonic()
        return self._complete(object_id) if arrival.missing_bytes <= 0 else False

    def arriving(self, object_id: bytes) -> bool:
        return object_id in self._arriving

    def abort_stalled(self, stall_s: float) -> list[bytes]:
        """Puts that got no piece for stall_s (their sender's connection dropped) are
        failed. -> their ids."""
        now = time.monotonic()
        stalled = [oid for oid, a in self._arriving.items() if now - a.last_s > stall_s]
        for object_id in stalled:
            arrival = self._arriving[object_id]
            self._abort(object_id)
            self.fail(object_id, arrival.owner,
                      f"the put of {arrival.size_bytes} bytes stopped arriving with "
                      f"{arrival.missing_bytes} bytes missing (a piece this node could "
                      "not receive?)")
        return stalled

    def _complete(self, object_id: bytes) -> bool:
        arrival = self._arriving.pop(object_id)
        if arrival.writer is not None:
            record = StoredObject(None, arrival.owner, arrival.size_bytes)
            record.spilled = arrival.writer.finish()
            self._count_spilled(record)
        else:
            value = Serialized(arrival.data, [memoryview(b) for b in arrival.buffers])
            record = StoredObject(value, arrival.owner, arrival.size_bytes)
            self._memory[object_id] = record     # its bytes were counted at begin
        self._objects[object_id] = record
        return True

    def _abort(self, object_id: bytes) -> None:
        arrival = self._arriving.pop(object_id, None)
        if arrival is None:
            return
        if arrival.writer is not None:
            arrival.writer.abort()
        else:
            self.memory_bytes -= arrival.size_bytes

    # ------------------------------------------------------------------ room
    def _make_room(self, size_bytes: int, arriving: bool = False) -> bool:
        """Spill least recently used values (not in use) until size_bytes more fit
        under the capacity. -> False when they cannot (the caller spills the new
        value itself: too large, everything else in use, or the disk refused)."""
        if self.capacity_bytes is None:
            return True
        if size_bytes > self.capacity_bytes:
            return False
        if arriving and self.receive_limit is not None and \
                size_bytes > self.receive_limit.bytes():
            return False
        victims = iter(list(self._memory.items()))
        while self.memory_bytes + size_bytes > self.capacity_bytes:
            for object_id, record in victims:
                if not _in_use(record):
                    break
            else:
                return False
            try:
                record.spilled = self.spill.write(record.value)
            except ObjectStoreFullError:
                return False
            del self._memory[object_id]
            self.memory_bytes -= record.size_bytes
            record.value = None
            self._count_spilled(record)
        return True

    def _count_spilled(self, record: StoredObject) -> None:
        self.spilled_bytes += record.size_bytes
        self.spilled_objects += 1

    # ------------------------------------------------------------------ free
    def free(self, object_id: bytes) -> None:
        self._failed.pop(object_id, None)
        self._abort(object_id)
        record = self._objects.pop(object_id, None)
        if record is None:
            return
        if record.spilled is not None:
            self.spill.remove(record.spilled)
            self.spilled_bytes -= record.size_bytes
            self.spilled_objects -= 1
        else:
            del self._memory[object_id]
            self.memory_bytes -= record.size_bytes

    def free_owner(self, owner: str) -> int:
        gone = [oid for oid, record in self._objects.items() if record.owner == owner]
        gone += [oid for oid, arrival in self._arriving.items() if arrival.owner == owner]
        gone += [oid for oid, (_, o) in self._failed.items() if o == owner]
        for oid in gone:
            self.free(oid)
        return len(gone)

    def stats(self) -> dict:
        spill = self.spill
        return {"capacity_bytes": self.capacity_bytes, "memory_bytes": self.memory_bytes,
                "spilled_bytes": self.spilled_bytes,
                "spilled_objects": self.spilled_objects,
                "spill_limit_bytes": spill.limit_bytes if spill else None,
                "spill_written_bytes": spill.written_bytes if spill else 0,
                "spill_write_s": spill.write_s if spill else 0.0,
                "restored_bytes": self.restored_bytes,
                "arriving": len(self._arriving), "failed_puts": len(self._failed)}

    def close(self) -> None:
        """The node stops: spilled files and the spill directory go."""
        for object_id in list(self._arriving):
            self._abort(object_id)
        if self.spill is not None:
            self.spill.close()


def _in_use(record: StoredObject) -> bool:
    """Something besides the store holds the value or one of its buffers: a task
    waiting to be sent with it, or a send that ZeroMQ has not finished (a zero-copy
    frame keeps its buffer referenced until then). Spilling it would free nothing."""
    if sys.getrefcount(record.value) > _STORE_REFS:
        return True
    buffers = record.value.buffers
    return any(sys.getrefcount(buffers[i]) > _STORE_REFS for i in range(len(buffers)))


class BufferPool:
    """Reuses large bytearrays of freed put() values, so a put of a large array costs a
    memcpy instead of fresh pages (like a pre-allocated object store). A buffer is
    only taken back when nothing else (a returned numpy array) still uses it."""

    MIN_BYTES = 1 << 20

    def __init__(self, limit_bytes: int = 1 << 30):
        self.limit_bytes = limit_bytes
        self.size_bytes = 0
        self._free: dict[int, list] = {}
        self._lock = threading.Lock()

    def copy(self, view) -> bytearray | bytes:
        view = memoryview(view).cast("B")
        if view.nbytes < self.MIN_BYTES:
            return bytes(view)
        with self._lock:
            buffer = None
            stack = self._free.get(view.nbytes) or []
            for index, candidate in enumerate(stack):
                if _unused(candidate):
                    buffer = stack.pop(index)
                    self.size_bytes -= len(buffer)
                    break
        if buffer is None:
            buffer = bytearray(view.nbytes)
        memoryview(buffer)[:] = view
        return buffer

    def give(self, buffer) -> None:
        """Offer a buffer back; it is reused only once nothing holds a view of it."""
        if not isinstance(buffer, bytearray) or len(buffer) < self.MIN_BYTES:
            return
        with self._lock:
            if self.size_bytes + len(buffer) > self.limit_bytes:
                return
            self._free.setdefault(len(buffer), []).append(buffer)
            self.size_bytes += len(buffer)


BUFFER_POOL = BufferPool()


def _unused(buffer: bytearray) -> bool:
    try:  # resizing fails while anything still holds a view of the buffer
        buffer.append(0)
        buffer.pop()
        return True
    except BufferError:
        return False
