"""Wire format, sockets and authentication shared by every runtime process.

Frame layout of every message (a ROUTER socket prepends the peer's identity frame):

    frame 0   kind      ASCII message type, e.g. b"submit", b"done", b"rpc"
    frame 1   header    pickle (protocol 5) of a small tuple/dict: ids, names, resources,
                        and the in-band part of every value it carries
    frame 2+  buffers   out-of-band pickle-5 buffers of large values (numpy arrays, bytes),
                        sent and received zero-copy; a value in the header points at its
                        buffers by (first frame index, count)

Authentication happens below this layer: every TCP socket runs CurveZMQ with the
cluster's key pair and a ZAP handler that admits only the cluster's public key, so a peer
without the key is refused during the handshake, before any frame reaches our code and
long before anything is unpickled. Without keys, servers bind only to 127.0.0.1. Local
peers (workers, drivers on the same node) use ipc sockets in a 0700 directory.
"""
from __future__ import annotations

import logging
import pickle
import threading

import cloudpickle
import zmq
from zmq.utils import z85

from runtime.errors import RuntimeSystemError
from runtime.keys import ClusterKeys

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
    parts = [identity] if identity is not None else []
    parts.append(kind)
    parts.append(pickle.dumps(header, protocol=5))
    parts.extend(frames)
    sock.send_multipart(parts, copy=False if frames else True)


def recv(sock: zmq.Socket, routed: bool, flags: int = 0):
    """-> (identity or None, kind, header, extra frames); zmq.Again with NOBLOCK when
    no message is waiting. The small leading frames are copied (cheaper than Frame
    objects); only the value buffers after them are received zero-copy."""
    identity = None
    if routed:
        identity = sock.recv(flags)
        kind = sock.recv()
    else:
        kind = sock.recv(flags)
    header = pickle.loads(sock.recv())
    frames = []
    while sock.getsockopt(zmq.RCVMORE):   # the rest of a multipart message is here
        frames.append(sock.recv(copy=False))
    return identity, kind, header, frames


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
    if address.startswith("tcp://") and keys is not None:
        ensure_zap_handler(ctx, keys)
        sock.curve_server = True
        sock.curve_secretkey = keys.secret
        sock.curve_publickey = keys.public
        sock.zap_domain = ZAP_DOMAIN
        enforce_zap_domain(sock)
    sock.bind(address)
    return sock


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
    if address.startswith("tcp://") and keys is not None:
        sock.curve_serverkey = keys.public
        sock.curve_publickey = keys.public
        sock.curve_secretkey = keys.secret
    sock.connect(address)
    return sock


_zap_lock = threading.Lock()
_zap_contexts: set[int] = set()


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
    thread.start()
    if not ready.wait(10):
        raise ZapSetupError("the ZAP authentication handler did not start")


def _zap_loop(ctx: zmq.Context, cluster_public_z85: bytes, ready: threading.Event):
    allowed = z85.decode(cluster_public_z85)
    sock = ctx.socket(zmq.REP)
    sock.linger = 0
    sock.bind("inproc://zeromq.zap.01")
    ready.set()
    while True:
        try:
            msg = sock.recv_multipart()
        except zmq.ContextTerminated:
            sock.close()
            return
        if len(msg) < 6:
            continue
        version, request_id, _domain, _address, _identity, mechanism = msg[:6]
        credentials = msg[6:]
        ok = mechanism == b"CURVE" and bool(credentials) and credentials[0] == allowed
        status = (b"200", b"OK") if ok else (b"400", b"client key not admitted")
        sock.send_multipart([version, request_id, status[0], status[1], b"", b""])


def ipc_endpoint(directory: str, name: str) -> str:
    """An ipc endpoint in a node's private (0700) socket directory."""
    return f"ipc://{directory}/{name}.sock"


def ipc_path(endpoint: str) -> str:
    return endpoint[len("ipc://"):]
