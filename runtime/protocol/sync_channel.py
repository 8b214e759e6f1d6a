"""The sync channel between a driver and an actor worker on the same host: a Unix
SOCK_SEQPACKET socket in the node's private (0700) ipc directory.

Why: a ZeroMQ ipc message passes through a ZeroMQ I/O thread on each side, so a sync
call (send, run, answer) costs four extra thread wake-ups. A seqpacket socket carries
one whole message per send/recv straight between the two processes. The driver uses it
only when the call is the actor's only one in flight and its message is small (so the
socket buffers never fill and calls keep their order); everything else goes over the
ZeroMQ direct socket, where the worker also sends answers too large for this one.

Message: the pickle (protocol 5) of the same header the ZeroMQ path would carry, with
no out-of-band buffers. Both ends check that the socket's directory is this user's alone
(mode 700, runtime.node.private_paths) before listening or connecting, so only processes of
this user (or root) can reach a socket whose messages get unpickled."""
from __future__ import annotations

import os
import pickle
import socket

from runtime.node import private_paths

MAX_MESSAGE_BYTES = 64 * 1024


def endpoint_path(directory: str, worker_id: str, role: str = "actor") -> str:
    """role: "actor" (an actor's worker) or "task" (a task worker drivers may lease)."""
    return os.path.join(directory, f"{role}-{worker_id}.sync")


def listen(path: str) -> socket.socket:
    private_paths.check_dir(os.path.dirname(path) or ".", private=True)
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    sock.bind(path)
    sock.listen(64)
    return sock


def connect(path: str) -> socket.socket:
    private_paths.check_dir(os.path.dirname(path) or ".", private=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    sock.connect(path)
    return sock


def encode(header) -> bytes | None:
    """The message for `header`, or None when it is too large for this channel."""
    data = pickle.dumps(header, protocol=5)
    return data if len(data) <= MAX_MESSAGE_BYTES else None


def receive(sock: socket.socket):
    """-> the header, or None when the peer closed the channel."""
    data = sock.recv(MAX_MESSAGE_BYTES + 1)
    if not data:
        return None
    return pickle.loads(data)


def receive_waiting(sock: socket.socket) -> list:
    """The headers already waiting on the channel, without blocking."""
    headers = []
    while True:
        try:
            data = sock.recv(MAX_MESSAGE_BYTES + 1, socket.MSG_DONTWAIT)
        except OSError:     # nothing waiting (BlockingIOError), or the peer is gone
            return headers
        if not data:
            return headers
        headers.append(pickle.loads(data))
