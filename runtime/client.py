"""A small synchronous client of the control service for tools that are not drivers
(the autoscaler monitor, `runtime.state`): one DEALER, one request at a time."""
from __future__ import annotations

import itertools
import uuid

import zmq

from runtime import protocol, session
from runtime.errors import RuntimeConnectionError
from runtime.keys import has_cluster_keys, load_cluster_keys


def resolve_address(address: str | None) -> tuple[str, str | None]:
    """-> (HOST:PORT, keys dir or None). None/"auto": this node's address.json."""
    keys_dir = str(session.keys_dir())
    if address in (None, "auto"):
        data = session.read_json(session.address_file(session.session_dir(create=False)))
        if not data:
            raise RuntimeConnectionError(
                "auto", f"no runtime address file in {session.session_dir(create=False)} "
                "(is `corral start` running on this node?)")
        return data["address"], data.get("keys_dir") or keys_dir
    return address, keys_dir


class ControlClient:
    def __init__(self, address: str | None = None, keys_dir: str | None = None,
                 timeout_s: float = 10.0):
        resolved, default_keys = resolve_address(address)
        keys_dir = keys_dir or default_keys
        keys = load_cluster_keys(keys_dir) if keys_dir and has_cluster_keys(keys_dir) \
            else None
        self.address = resolved
        self.timeout_s = timeout_s
        self.ctx = zmq.Context()
        self.sock = protocol.connect_dealer(self.ctx, f"tcp://{resolved}", keys,
                                            b"C" + uuid.uuid4().bytes)
        self.ids = itertools.count()

    def call(self, method: str, **kwargs):
        request_id = next(self.ids)
        protocol.send(self.sock, b"rpc", (request_id, method, kwargs))
        while True:
            if not self.sock.poll(int(self.timeout_s * 1000)):
                raise RuntimeConnectionError(self.address, f"no answer to {method} within "
                                             f"{self.timeout_s} s")
            _, kind, header, _ = protocol.recv(self.sock, routed=False)
            if kind == b"reply" and header[0] == request_id:
                _, ok, result = header
                if not ok:
                    raise RuntimeConnectionError(self.address, f"{method}: {result}")
                return result

    def close(self) -> None:
        self.ctx.destroy(linger=0)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
