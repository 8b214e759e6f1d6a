"""Wire format, sockets and authentication shared by every runtime process.

Frame layout of every message (a ROUTER socket prepends the peer's identity frame):

    frame 0   kind      a runtime.protocol.kinds.Kind (a bytes Enum: the member is the
                        frame, e.g. Kind.SUBMIT is b"submit")
    frame 1   header    pickle (protocol 5) of the kind's record as a plain tuple (or a
                        list of them): ids, names, resources, and the in-band part of
                        every value it carries. The records are in runtime.protocol
                        .tasks, objects, workers and rpc; runtime.protocol.codec turns a
                        received header back into its record
    frame 2+  buffers   out-of-band pickle-5 buffers of large values (numpy arrays, bytes),
                        sent and received zero-copy; a value in the header points at its
                        buffers by (first frame index, count)

Authentication happens below this layer: every TCP socket runs CurveZMQ with the
cluster's key pair and a ZAP handler that admits only the cluster's public key, so a peer
without the key is refused during the handshake, before any frame reaches our code and
long before anything is unpickled. Clients set the cluster's public key as the server
key, so a server that does not hold the cluster's secret cannot finish the handshake
either: nothing it sends reaches us (connect_authenticated waits for that handshake and
names its failure). There is no unauthenticated TCP: bind_router and connect_dealer
refuse a TCP endpoint without keys (MissingKeysError). Local peers (workers, drivers on
the same node) use ipc sockets only in a directory this user alone can enter (0700,
checked at bind and connect: runtime.node.private_paths).

A message whose frames do not parse raises MalformedMessageError from recv, after all
its frames were taken off the socket; services log it and go on.
"""
from __future__ import annotations

import logging
import os
import pickle
import threading
import time

import cloudpickle
import zmq
from zmq.utils import z85

from runtime.node import private_paths
from runtime.errors import RuntimeConnectionError, RuntimeSystemError
from runtime.node.keys import ClusterKeys, MissingKeysError

log = logging.getLogger("corral.protocol")

INBAND_LIMIT_BYTES = 32 * 1024      # buffers below this stay inside the pickle
INLINE_LIMIT_BYTES = 100 * 1024     # values below this travel inline with results
ZAP_DOMAIN = b"corral"


class Serialized:
    """A value as pickle-5 bytes plus its out-of-band buffers (zero-copy frames)."""

    __slots__ = ("data", "buffers")

    def __init__(self, data: bytes, buffers: list):
        self.data = data
        self.buffers = buffers

    @property
    def size_bytes(self) -> int:
        return len(self.data) + sum(memoryview(b).nbytes for b in self.buffers)

    def value(self):
        return pickle.loads(self.data, buffers=self.buffers)


# values of these types pickle the same with plain pickle as with cloudpickle (nothing
# by reference to __main__ or to a dynamic class), at a fraction of the cost
PLAIN_TYPES = frozenset((bytes, str, int, float, bool, type(None)))


def serialize(value) -> Serialized:
    if type(value) in PLAIN_TYPES:
        return Serialized(pickle.dumps(value, protocol=5), [])
    buffers: list = []

    def keep_out_of_band(buffer: pickle.PickleBuffer):
        view = buffer.raw()
        if view.nbytes < INBAND_LIMIT_BYTES:
            return True
        buffers.append(view)
        return False

    data = cloudpickle.dumps(value, protocol=5, buffer_callback=keep_out_of_band)
    return Serialized(data, buffers)


def dumps_code(obj) -> bytes:
    return cloudpickle.dumps(obj, protocol=5)


class Packer:
    """Builds one message: values put in the header point at frames appended here."""

    def __init__(self):
        self.frames: list = []

    def value(self, item: Serialized) -> tuple:
        first = len(self.frames)
        self.frames.extend(item.buffers)
        return (item.data, first, len(item.buffers))


def unpack_value(packed: tuple, frames: list) -> Serialized:
    data, first, count = packed
    return Serialized(data, [_buffer(f) for f in frames[first:first + count]])


def _buffer(frame):
    return frame.buffer if isinstance(frame, zmq.Frame) else frame


def send(sock: zmq.Socket, kind: bytes, header, frames=(), identity: bytes | None = None):
    """Send one message: `kind` (a Kind), `header` (plain tuples: see the module
    docstring) and its value buffers as zero-copy frames."""
    parts = [identity] if identity is not None else []
    parts.append(kind)
    parts.append(pickle.dumps(header, protocol=5))
    parts.extend(frames)
    sock.send_multipart(parts, copy=False if frames else True)


class MalformedMessageError(RuntimeSystemError):
    """A message (from an authenticated peer) whose frames do not parse: too few, or a
    header that does not unpickle. Its frames are off the socket already."""

    def __init__(self, identity: bytes | None, kind: bytes | None, reason: str):
        super().__init__(f"malformed message {kind!r:.60} from {identity!r:.60}: "
                         f"{reason}")
        self.identity = identity
        self.kind = kind
        self.reason = reason


def recv(sock: zmq.Socket, routed: bool, flags: int = 0):
    """-> (identity or None, kind, header, extra frames); zmq.Again with NOBLOCK when
    no message is waiting; MalformedMessageError (the whole message consumed) when its
    frames do not parse, or when this process has no memory left to take them in (a
    MemoryError here fails that one message, not the service). The small leading
    frames are copied (cheaper than Frame objects); only the value buffers after them
    are received zero-copy."""
    identity = kind = raw = None
    frames = []
    try:
        if routed:   # a ROUTER always has a frame after the identity it prepends
            identity = sock.recv(flags)
            first = sock.recv(copy=False)
        else:
            first = sock.recv(flags, copy=False)
        kind = first.bytes     # (a Frame says if more follow, cheaper than getsockopt)
        raw = sock.recv() if first.more else None
        while sock.getsockopt(zmq.RCVMORE):   # the rest of a multipart message is here
            frames.append(sock.recv(copy=False))
    except MemoryError:
        frames.clear()
        _discard_rest(sock)
        raise MalformedMessageError(identity, kind, "out of memory while receiving "
                                    "it") from None
    if raw is None:
        raise MalformedMessageError(identity, kind, "no header frame")
    try:
        header = pickle.loads(raw)
    except Exception as error:  # any unpickling failure is the message's, not ours
        raise MalformedMessageError(identity, kind, f"header does not unpickle "
                                    f"({type(error).__name__}: {error})") from None
    return identity, kind, header, frames


def _discard_rest(sock: zmq.Socket, tries: int = 100) -> None:
    """Take the remaining frames of a message off the socket (so the next recv starts
    at a message boundary), retrying a few times when even that finds no memory."""
    while tries > 0:
        try:
            while sock.getsockopt(zmq.RCVMORE):
                sock.recv(copy=False)
            return
        except MemoryError:
            tries -= 1


# ---------------------------------------------------------------- sockets and auth

def _tune(sock: zmq.Socket) -> None:
    sock.linger = 0
    sock.sndhwm = 0
    sock.rcvhwm = 0


def bind_router(ctx: zmq.Context, address: str, keys: ClusterKeys | None) -> zmq.Socket:
    """Bind a ROUTER; TCP sockets run CurveZMQ when keys are given. Returns the socket;
    the actual endpoint is `sock.last_endpoint`."""
    sock = ctx.socket(zmq.ROUTER)
    _tune(sock)
    sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
    # a peer that reconnects (new socket, same identity) takes its identity over at
    # once, instead of being refused while the old connection is not yet noticed dead
    sock.setsockopt(zmq.ROUTER_HANDOVER, 1)
    try:
        _authenticate(sock, address, keys, server=True)
        sock.bind(address)
    except BaseException:
        sock.close(0)
        raise
    return sock


def _authenticate(sock: zmq.Socket, address: str, keys: ClusterKeys | None,
                  server: bool) -> None:
    """TCP: CurveZMQ with the cluster's keys (a server also the ZAP handler admitting
    only the cluster's key); none given is MissingKeysError. ipc: the socket's
    directory must be this user's alone (UnsafePathError). inproc: same process."""
    if address.startswith("tcp://"):
        if keys is None:
            raise MissingKeysError(None)
        if server:
            ensure_zap_handler(sock.context, keys)
            sock.curve_server = True
            sock.curve_secretkey = keys.secret
            sock.curve_publickey = keys.public
            sock.zap_domain = ZAP_DOMAIN
            enforce_zap_domain(sock)
        else:
            sock.curve_serverkey = keys.public
            sock.curve_publickey = keys.public
            sock.curve_secretkey = keys.secret
    elif address.startswith("ipc://"):
        private_paths.check_dir(os.path.dirname(ipc_path(address)) or ".", private=True)
    elif not address.startswith("inproc://"):
        raise ValueError(f"unsupported runtime endpoint {address!r}")


ZAP_ENFORCE_MIN_LIBZMQ = (4, 3, 0)
_warned_no_enforce = threading.Event()


class ZapSetupError(RuntimeSystemError):
    """A server socket could not be made to refuse peers when authentication is
    unavailable; serving anyway could admit peers without the cluster key."""


def enforce_zap_domain(sock: zmq.Socket) -> None:
    """Make the socket refuse (never admit) peers if no ZAP handler answers. libzmq
    before 4.3 lacks the option: then log a warning once and rely on the ZAP handler,
    which ensure_zap_handler started before any bind and which admits only the
    cluster's key. Any other failure to set it is an error."""
    option = getattr(zmq, "ZAP_ENFORCE_DOMAIN", None)
    if option is None or zmq.zmq_version_info() < ZAP_ENFORCE_MIN_LIBZMQ:
        if not _warned_no_enforce.is_set():
            _warned_no_enforce.set()
            log.warning("libzmq %s has no ZAP_ENFORCE_DOMAIN; relying on the ZAP "
                        "handler alone to refuse peers without the cluster key",
                        zmq.zmq_version())
        return
    try:
        sock.setsockopt(option, 1)
    except zmq.ZMQError as error:
        raise ZapSetupError(f"cannot enforce ZAP authentication on a server socket "
                            f"(libzmq {zmq.zmq_version()}): {error}") from error


def connect_dealer(ctx: zmq.Context, address: str, keys: ClusterKeys | None,
                   identity: bytes) -> zmq.Socket:
    sock = ctx.socket(zmq.DEALER)
    _tune(sock)
    sock.identity = identity
    try:
        _authenticate(sock, address, keys, server=False)
        sock.connect(address)
    except BaseException:
        sock.close(0)
        raise
    return sock


class HandshakeFailedError(RuntimeConnectionError):
    """The server at `address` did not complete the CurveZMQ handshake: it does not
    hold the cluster's key (not this cluster's head), refused ours, or does not speak
    CurveZMQ at all. Nothing was read from it."""


HANDSHAKE_FAILURES_TOLERATED = 2   # the third failed handshake in a row is final
_HANDSHAKE_EVENTS = (zmq.EVENT_HANDSHAKE_SUCCEEDED
                     | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
                     | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                     | zmq.EVENT_HANDSHAKE_FAILED_AUTH)


def connect_authenticated(ctx: zmq.Context, address: str, keys: ClusterKeys | None,
                          identity: bytes, timeout_s: float) -> zmq.Socket:
    """connect_dealer to a TCP server, returning only once the CurveZMQ handshake
    succeeded: the server proved it holds the cluster's secret key and admitted ours,
    before a byte from it reached us. A server that still refuses, or does not speak
    CurveZMQ, raises HandshakeFailedError; none answering within timeout_s raises
    RuntimeConnectionError (the head may still be starting: refused connections are
    retried until then). The socket is closed on failure. ipc endpoints: connect_dealer."""
    if not address.startswith("tcp://"):
        return connect_dealer(ctx, address, keys, identity)
    from zmq.utils.monitor import recv_monitor_message
    sock = ctx.socket(zmq.DEALER)
    _tune(sock)
    sock.identity = identity
    monitor = None
    try:
        _authenticate(sock, address, keys, server=False)
        monitor = sock.get_monitor_socket(_HANDSHAKE_EVENTS)
        sock.connect(address)
        deadline = time.monotonic() + timeout_s
        failures = 0
        while True:
            left_ms = int((deadline - time.monotonic()) * 1000)
            if left_ms <= 0 or not monitor.poll(left_ms):
                raise RuntimeConnectionError(address, f"no CurveZMQ handshake within "
                                             f"{timeout_s} s (nothing listens there?)")
            event = recv_monitor_message(monitor)["event"]
            if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                break
            failures += 1
            if event != zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL or \
                    failures > HANDSHAKE_FAILURES_TOLERATED:
                raise HandshakeFailedError(address, _handshake_reason(event))
        sock.disable_monitor()
        return sock
    except BaseException:
        sock.close(0)
        raise
    finally:
        if monitor is not None:
            monitor.close(0)


def _handshake_reason(event: int) -> str:
    if event == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL:
        return ("the server does not speak CurveZMQ (not a corral head, or one "
                "started without keys): nothing was read from it")
    return ("the CurveZMQ handshake failed: the server does not hold this cluster's "
            "key (not this cluster's head) or refused ours; nothing was read from it")


_zap_lock = threading.Lock()
_zap_contexts: set[int] = set()
_zap_threads: dict[int, threading.Thread] = {}
ZAP_ENDPOINT = "inproc://zeromq.zap.01"
# Sent by destroy_context over inproc (only this process can reach it): the handler
# closes its own socket and ends, so destroying the context never closes that socket
# under the thread blocked in it (which aborts libzmq: "pfd.revents & POLLIN").
ZAP_STOP = b"corral-zap-stop"
ZAP_STOP_WAIT_S = 1.0


def ensure_zap_handler(ctx: zmq.Context, keys: ClusterKeys) -> None:
    """Start (once per context) the ZAP handler that admits only CURVE clients holding
    the cluster's public key. NULL is admitted only on non-TCP (ipc/inproc) sockets,
    which never reach this handler with ZAP set."""
    with _zap_lock:
        if id(ctx) in _zap_contexts:
            return
        _zap_contexts.add(id(ctx))
    ready = threading.Event()
    thread = threading.Thread(target=_zap_loop, args=(ctx, keys.public, ready),
                              name="corral-zap", daemon=True)
    with _zap_lock:
        _zap_threads[id(ctx)] = thread
    thread.start()
    if not ready.wait(10):
        raise ZapSetupError("the ZAP authentication handler did not start")


def _zap_loop(ctx: zmq.Context, cluster_public_z85: bytes, ready: threading.Event):
    allowed = z85.decode(cluster_public_z85)
    sock = ctx.socket(zmq.REP)
    sock.linger = 0
    sock.bind(ZAP_ENDPOINT)
    ready.set()
    while True:
        try:
            msg = sock.recv_multipart()
        except zmq.ContextTerminated:
            sock.close()
            return
        if msg == [ZAP_STOP]:
            sock.send(b"")
            sock.close()
            return
        if len(msg) < 6:
            sock.send_multipart([b"1.0", b"", b"400", b"malformed ZAP request", b"", b""])
            continue
        version, request_id, _domain, _address, _identity, mechanism = msg[:6]
        credentials = msg[6:]
        ok = mechanism == b"CURVE" and bool(credentials) and credentials[0] == allowed
        status = (b"200", b"OK") if ok else (b"400", b"client key not admitted")
        sock.send_multipart([version, request_id, status[0], status[1], b"", b""])


def destroy_context(ctx: zmq.Context) -> None:
    """ctx.destroy(linger=0), after ending the context's ZAP handler (if it has one)
    from its own thread: destroy closes every socket of the context, and closing the
    handler's socket under the thread blocked in it aborts the process."""
    with _zap_lock:
        thread = _zap_threads.pop(id(ctx), None)
        _zap_contexts.discard(id(ctx))
    if thread is not None and thread.is_alive():
        stopper = ctx.socket(zmq.REQ)
        stopper.linger = 0
        try:
            stopper.connect(ZAP_ENDPOINT)
            stopper.send(ZAP_STOP)
            stopper.poll(int(ZAP_STOP_WAIT_S * 1000))
        except zmq.ZMQError as error:
            log.warning("could not stop the ZAP handler before closing: %s", error)
        finally:
            stopper.close()
        thread.join(ZAP_STOP_WAIT_S)
    ctx.destroy(linger=0)


def ipc_endpoint(directory: str, name: str) -> str:
    """An ipc endpoint in a node's private (0700) socket directory."""
    return f"ipc://{directory}/{name}.sock"


def ipc_path(endpoint: str) -> str:
    return endpoint[len("ipc://"):]
