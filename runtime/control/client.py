"""A small synchronous client of the control service for tools that are not drivers
(the autoscaler monitor, `runtime.state`): one DEALER, one request at a time.

Like a driver it needs the cluster's keys (MissingKeysError without them) and reads
nothing from the head before the CurveZMQ handshake proved the head holds the cluster's
key (protocol.connect_authenticated)."""
from __future__ import annotations

import itertools
import uuid

import zmq

from runtime.protocol import frames as protocol
from runtime.protocol import rpc
from runtime.protocol.kinds import Kind
from runtime.node import session
from runtime.errors import RuntimeConnectionError
from runtime.node.keys import load_cluster_keys


def resolve_address(address: str | None) -> tuple[str, str | None]:
    """-> (HOST:PORT, keys dir or None). None/"auto": this node's address.json, used
    only if this user alone controls it (UnsafePathError otherwise)."""
    if address in (None, "auto"):
        found = session.find_address()
        if not found:
            raise RuntimeConnectionError(
                "auto", "no runtime address file in " + ", ".join(
                    str(d / "session") for d in session.discovery_dirs())
                + " (is `corral start` running on this node?)")
        node_session, data = found
        return data["address"], data.get("keys_dir") or \
            str(session.keys_dir(node_session.parent))
    return address, str(session.keys_dir())


class ControlClient:
    def __init__(self, address: str | None = None, keys_dir: str | None = None,
                 timeout_s: float = 10.0):
        resolved, default_keys = resolve_address(address)
        keys = load_cluster_keys(keys_dir or default_keys)
        self.address = resolved
        self.timeout_s = timeout_s
        self.ctx = zmq.Context()
        try:
            self.sock = protocol.connect_authenticated(
                self.ctx, f"tcp://{resolved}", keys, b"C" + uuid.uuid4().bytes, timeout_s)
        except BaseException:
            protocol.destroy_context(self.ctx)
            raise
        self.ids = itertools.count()

    def call(self, method: str, **kwargs):
        """The method's result; RemoteCallError (UnknownMethodError: an older service
        without it) when it failed there, RuntimeConnectionError when no answer came."""
        request_id = next(self.ids)
        rpc.send_request(self.sock, request_id, method, kwargs)
        while True:
            if not self.sock.poll(int(self.timeout_s * 1000)):
                raise RuntimeConnectionError(self.address, f"no answer to {method} within "
                                             f"{self.timeout_s} s")
            try:
                _, kind, header, _ = protocol.recv(self.sock, routed=False)
            except protocol.MalformedMessageError as error:
                raise RuntimeConnectionError(self.address, str(error)) from None
            if kind != Kind.REPLY:
                continue
            try:
                reply = rpc.reply_of(header)
            except ValueError as error:
                raise RuntimeConnectionError(self.address, str(error)) from None
            if reply.request_id == request_id:
                return rpc.outcome(reply, self.address, method)

    def close(self) -> None:
        protocol.destroy_context(self.ctx)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
