"""The node agent's object side (a mixin of NodeAgent): task arguments fetched from
peer agents, and the local store served to drivers and peers (fetch, put, free). A fetch
of an object that has not arrived yet (a put still on its way) waits up to FETCH_WAIT_S."""
from __future__ import annotations

import time
import uuid

import zmq

from runtime import protocol
from runtime.protocol import Packer, unpack_value

FETCH_WAIT_S = 10.0


class ObjectService:
    def _arg(self, arg, frames):
        if arg[0] == "v":
            return ["v", unpack_value(arg[1], frames)]
        return ["r", arg[1], arg[2]]

    def _fetch_arg(self, task, arg) -> None:
        object_id, node_id = arg[1], arg[2]
        local = self.store.get(object_id)
        if local is not None:
            arg[:] = ["v", local]
            return
        peer = self._peer(node_id)
        if peer is None:
            arg[:] = ["lost", object_id, node_id]
            return
        fetch_id = next(self.fetch_ids)
        self.fetches[fetch_id] = (task, arg)
        task["missing"] += 1
        self._send(peer, None, b"fetch", (fetch_id, object_id))

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
        task, arg = self.fetches.pop(fetch_id)
        arg[:] = ["v", unpack_value(packed, frames)] if found else ["lost", arg[1], arg[2]]
        task["missing"] -= 1
        if task["kind"] == "actor_call" and task["missing"] == 0:
            self._send_to_actor(task)

    def _on_fetch(self, sock, identity, header, frames) -> None:
        self._answer_fetch(sock, identity, header, defer=True)

    def _answer_fetch(self, sock, identity, header, defer: bool) -> None:
        request_id, object_id = header
        value = self.store.get(object_id)
        if value is None and defer:
            # a put may still be on its way from its driver: answer when it lands
            self.deferred_fetches.setdefault(object_id, []).append(
                (time.monotonic() + FETCH_WAIT_S, sock, identity, header))
            return
        packer = Packer()
        packed = packer.value(value) if value is not None else None
        self._send(sock, identity, b"object", (request_id, value is not None, packed),
                   packer.frames)

    def _on_put(self, sock, identity, header, frames) -> None:
        object_id, packed, owner = header
        self.store.put(object_id, unpack_value(packed, frames), owner)
        for _, fetch_sock, fetch_identity, fetch in self.deferred_fetches.pop(object_id, ()):
            self._answer_fetch(fetch_sock, fetch_identity, fetch, defer=False)

    def _expire_fetches(self) -> None:
        now = time.monotonic()
        for object_id, waiting in list(self.deferred_fetches.items()):
            if waiting[0][0] <= now:
                del self.deferred_fetches[object_id]
                for _, fetch_sock, fetch_identity, fetch in waiting:
                    self._answer_fetch(fetch_sock, fetch_identity, fetch, defer=False)

    def _on_free(self, sock, identity, object_ids, frames) -> None:
        for object_id in object_ids:
            self.store.free(object_id)
