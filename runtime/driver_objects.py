"""Objects, on the driver's IO thread: uploading large put values, fetching values
that stay on their node, freeing objects no reference is left to, agent stats."""
from __future__ import annotations

from runtime import protocol
from runtime.driver_state import FAILED, Entry
from runtime.errors import ObjectLostError
from runtime.protocol import Packer, unpack_value


class ObjectsMixin:
    """Part of DriverIO (runtime.driver_io): object transfer and freeing."""

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
        protocol.send(self.core.agents[node_id], b"stats", self.fetch_ids)
