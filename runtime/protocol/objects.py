"""Objects on the wire: fetching a value from a node agent's store, putting one there
(whole or in pieces), freeing it, and the other small driver -> agent requests.

    Kind.FETCH       D/A -> A  FetchRequest
    Kind.OBJECT      A -> D/A  ObjectReply   payload: a packed value when found, else
                                             ObjectFull | ObjectTooLarge | None (not
                                             there); a Kind.STATS answer: the stats dict
    Kind.PUT         D -> A    PutValue
    Kind.PUT_BEGIN   D/W -> A  PutBegin      then one PutPiece per piece of a buffer
    Kind.PUT_PIECE   D/W -> A  PutPiece      its frame 2 is the piece
    Kind.FREE        D -> A    [object id]
    Kind.RECLAIM     D -> A    Reclaim
    Kind.STATS       D -> A    request id (int); answered with an ObjectReply
    Kind.KILL_ACTOR  D -> A    actor id (bytes)

Plain tuples on the wire, records on receipt (see runtime.protocol.tasks for why).
"""
from __future__ import annotations

from typing import Any, NamedTuple

from runtime.protocol.fields import record_of

FULL = "full"             # ObjectFull.tag
TOO_LARGE = "too_large"   # ObjectTooLarge.tag


class FetchRequest(NamedTuple):
    request_id: int
    object_id: bytes
    limit_bytes: int | None = None   # the largest value the asker can take in now


class ObjectFull(NamedTuple):
    """The store of `node_id` cannot hold (or no longer reads) the object."""
    tag: str
    node_id: str
    reason: str

    @classmethod
    def of(cls, node_id: str, reason: str) -> "ObjectFull":
        return cls(FULL, node_id, reason)


class ObjectTooLarge(NamedTuple):
    """The value is larger than FetchRequest.limit_bytes: refused, not sent."""
    tag: str
    size_bytes: int

    @classmethod
    def of(cls, size_bytes: int) -> "ObjectTooLarge":
        return cls(TOO_LARGE, size_bytes)


class ObjectReply(NamedTuple):
    request_id: int
    found: bool
    payload: Any


class PutValue(NamedTuple):
    object_id: bytes
    packed: tuple
    owner: str              # the driver that owns it (freed when that driver goes)


class PutBegin(NamedTuple):
    object_id: bytes
    owner: str
    data: bytes             # the value's pickle; its buffers follow in pieces
    sizes: list             # bytes of each buffer


class PutPiece(NamedTuple):
    object_id: bytes
    index: int              # which buffer
    offset: int             # where in it this piece goes


class Reclaim(NamedTuple):
    """A driver takes back up to `count` of its tasks still queued at the agent."""
    driver: str
    count: int


def fetch_of(header) -> FetchRequest:
    return record_of(FetchRequest, header, "a fetch header")


def reply_of(header) -> ObjectReply:
    """An object reply; a failure payload becomes its record."""
    reply = record_of(ObjectReply, header, "an object reply")
    payload = reply.payload
    if not reply.found and type(payload) is tuple and payload:
        if payload[0] == FULL:
            return reply._replace(payload=record_of(ObjectFull, payload, "a full payload"))
        if payload[0] == TOO_LARGE:
            return reply._replace(payload=record_of(ObjectTooLarge, payload,
                                                  "a too-large payload"))
    return reply


def put_of(header) -> PutValue:
    return record_of(PutValue, header, "a put header")


def put_begin_of(header) -> PutBegin:
    return record_of(PutBegin, header, "a put_begin header")


def put_piece_of(header) -> PutPiece:
    return record_of(PutPiece, header, "a put_piece header")


def reclaim_of(header) -> Reclaim:
    return record_of(Reclaim, header, "a reclaim header")


def object_ids_of(header) -> list:
    """A Kind.FREE header: a list of object ids."""
    if type(header) is not list or not all(type(oid) is bytes for oid in header):
        raise ValueError("a free header is not a list of object ids")
    return header
