"""A node's local object store: large values (task results and puts) kept where they were
made, as pickle-5 bytes plus zero-copy buffers, until their owner frees them."""
from __future__ import annotations

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
