"""A received header, by its kind, as its record: the one place receivers of the
driver / node agent / worker messages turn the plain tuples of the wire into records.

    identity, kind, header, frames = codec.receive(sock, routed)   # header: a record

Headers that are a single value (a pid, an id, None) are checked for their type and
stay that value. A kind with no entry here (the control service's rpc, reply, nodes and
driver_dead: runtime.protocol.rpc) passes through unchanged; a frame no version of corral
sends is MalformedMessageError. Senders build records and send `tuple(record)` (or
`tasks.spec_wire`, `tasks.message_wire`): the tuples these decoders read.
"""
from __future__ import annotations

from runtime.protocol import leases, objects, tasks, workers
from runtime.protocol import frames as wire
from runtime.protocol.frames import MalformedMessageError
from runtime.protocol.kinds import Kind


def _none(header):
    if header is not None:
        raise ValueError(f"a header that should be None is {type(header).__name__}")
    return header


def _typed(*types):
    def check(header):
        if type(header) not in types:
            raise ValueError(f"the header is {type(header).__name__}, not "
                             f"{' or '.join(t.__name__ for t in types)}")
        return header
    return check


DECODERS = {
    Kind.SUBMIT: tasks.specs_of,
    Kind.TASK: tasks.message_of,
    Kind.DONE: tasks.done_of,
    Kind.RESULTS: tasks.results_of,
    Kind.KILL_ACTOR: _typed(bytes),
    Kind.OBJECT: objects.reply_of,
    Kind.FETCH: objects.fetch_of,
    Kind.PUT: objects.put_of,
    Kind.PUT_BEGIN: objects.put_begin_of,
    Kind.PUT_PIECE: objects.put_piece_of,
    Kind.FREE: objects.object_ids_of,
    Kind.RECLAIM: objects.reclaim_of,
    Kind.STATS: _typed(int),
    Kind.READY: _typed(int),
    Kind.BLOCKED: _none,
    Kind.UNBLOCKED: _none,
    Kind.RETURNED: _typed(bytes),
    Kind.LOG: workers.log_of,
    Kind.EXIT: _none,
    Kind.LEASE: leases.request_of,
    Kind.LEASED: leases.reply_of,
    Kind.LEASE_RETURN: leases.return_of,
    Kind.LEASE_REVOKED: leases.revoked_of,
}
PASSED_THROUGH = frozenset((Kind.RPC, Kind.REPLY, Kind.NODES, Kind.DRIVER_DEAD))


def decode(identity: bytes | None, kind: bytes, header):
    """The record (or checked value) `header` is for its kind; MalformedMessageError
    when it is none, or when `kind` is not a Kind."""
    decoder = DECODERS.get(kind)
    if decoder is None:
        if kind in PASSED_THROUGH:
            return header
        raise MalformedMessageError(identity, kind, "no such message kind")
    try:
        return decoder(header)
    except (ValueError, TypeError) as error:
        raise MalformedMessageError(identity, kind, str(error)) from None


def receive(sock, routed: bool, flags: int = 0):
    """frames.recv, then decode: (identity or None, kind, record, extra frames).
    zmq.Again as recv; MalformedMessageError (the message consumed) when its frames or
    its header do not parse."""
    identity, kind, header, frames = wire.recv(sock, routed, flags)
    return identity, kind, decode(identity, kind, header), frames
