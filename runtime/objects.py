"""A node's local object store: large values (task results and puts) kept where they were
made, as pickle-5 bytes plus zero-copy buffers, until their owner frees them."""
from __future__ import annotations

import threading

from runtime.protocol import Serialized


class ObjectStore:
    def __init__(self):
        self._objects: dict[bytes, tuple[Serialized, str]] = {}
        self.size_bytes = 0

    def __len__(self) -> int:
        return len(self._objects)

    def put(self, object_id: bytes, value: Serialized, owner: str) -> None:
        if object_id in self._objects:
            return
        self._objects[object_id] = (value, owner)
        self.size_bytes += value.size_bytes

    def get(self, object_id: bytes) -> Serialized | None:
        entry = self._objects.get(object_id)
        return entry[0] if entry else None

    def free(self, object_id: bytes) -> None:
        entry = self._objects.pop(object_id, None)
        if entry:
            self.size_bytes -= entry[0].size_bytes

    def free_owner(self, owner: str) -> int:
        gone = [oid for oid, (_, o) in self._objects.items() if o == owner]
        for oid in gone:
            self.free(oid)
        return len(gone)


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
