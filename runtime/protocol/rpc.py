"""Requests to the control service and its replies, with failures as typed data.

    Kind.RPC    header RpcRequest(request_id, method, kwargs)
    Kind.REPLY  header RpcReply(request_id, ok, result): `result` is the method's return
                value when ok, else a RemoteFailure record (never a bare string)

On the wire both are plain tuples (pickled without class references, so a peer needs
none of these classes to read them): send `tuple(record)`, and a failed reply's result
as `tuple(RemoteFailure.of(error))`. `request_of` and `reply_of` turn a received header
back into its record, and `outcome` turns a reply into the value or the raised error:
RemoteCallError, UnknownMethodError for a method the service lacks, and
ProtocolVersionError (runtime.protocol.version) when the service refused this process's
protocol version at registration.
"""
from __future__ import annotations

import traceback
from typing import Any, NamedTuple

from runtime.errors import RuntimeConnectionError
from runtime.protocol import version


class RpcRequest(NamedTuple):
    request_id: Any
    method: str
    kwargs: dict


class RemoteFailure(NamedTuple):
    """What a failed remote call raised: the exception's type name, its message, the
    remote traceback (text) and, for the errors the protocol knows, their fields as
    plain data (`wire_detail` of the exception: ProtocolVersionError's versions)."""
    type_name: str
    message: str
    traceback: str = ""
    detail: Any = None

    @classmethod
    def of(cls, error: BaseException) -> "RemoteFailure":
        text = "".join(traceback.format_exception(type(error), error, error.__traceback__))
        return cls(type(error).__name__, str(error), text,
                   getattr(error, "wire_detail", None))


class RpcReply(NamedTuple):
    request_id: Any
    ok: bool
    result: Any


class RemoteCallError(RuntimeConnectionError):
    """A call reached the control service and failed there. A RuntimeConnectionError,
    as every failed control call is to its caller; the remote exception's type,
    message and traceback are fields, not text to parse."""

    def __init__(self, address: str, method: str, failure: RemoteFailure):
        super().__init__(address, f"{method}: {failure.type_name}: {failure.message}")
        self.method = method
        self.type_name = failure.type_name
        self.remote_message = failure.message
        self.remote_traceback = failure.traceback


class UnknownMethodError(RemoteCallError):
    """The control service has no such method (an older corral on the head)."""


UNKNOWN_METHOD = "UnknownMethod"  # RemoteFailure.type_name of a method the service lacks


def unknown_method(method) -> RemoteFailure:
    return RemoteFailure(UNKNOWN_METHOD, f"unknown control method {method!r:.100}")


def send_request(sock, request_id, method: str, kwargs: dict) -> None:
    """Send an RpcRequest (Kind.RPC) on `sock`: the one way every caller asks."""
    from runtime.protocol import frames
    from runtime.protocol.kinds import Kind
    frames.send(sock, Kind.RPC, tuple(RpcRequest(request_id, method, kwargs)))


def request_of(header) -> RpcRequest:
    """The request in a received header; ValueError when it is not three items (there
    is no request id to answer). Its method and kwargs are not checked here: a request
    whose method is no string or whose kwargs are no dict has an id, and is answered
    with a failure (unknown_method, TypeError) by the service."""
    if not isinstance(header, (tuple, list)) or len(header) != 3:
        raise ValueError(f"header {header!r:.200} is not (request_id, method, kwargs)")
    return RpcRequest(*header)


def reply_of(header) -> RpcReply:
    """The reply in a received header; ValueError when it is not one."""
    try:
        return RpcReply(*header)
    except TypeError:
        raise ValueError(f"header {header!r:.200} is not (request_id, ok, result)") \
            from None


def failure_of(result) -> RemoteFailure:
    """A failed reply's result as a RemoteFailure (a peer before protocol 2 sent text)."""
    if isinstance(result, tuple) and 2 <= len(result) <= len(RemoteFailure._fields):
        return RemoteFailure(*result)
    type_name, _, message = str(result).partition(": ")
    return RemoteFailure(type_name if message else "Error", message or str(result))


def outcome(reply: RpcReply, address: str, method: str):
    """The reply's result, or the RemoteCallError (UnknownMethodError) it carries."""
    if reply.ok:
        return reply.result
    failure = failure_of(reply.result)
    if failure.type_name == version.ProtocolVersionError.__name__:
        detail = failure.detail if isinstance(failure.detail, dict) else {}
        # the service's version, and the one it took ours to be (none sent: 1)
        raise version.ProtocolVersionError(detail.get("theirs", version.PROTOCOL_VERSION),
                                           detail.get("ours"),
                                           f"the control service at {address}")
    error_type = UnknownMethodError if failure.type_name == UNKNOWN_METHOD else \
        RemoteCallError
    raise error_type(address, method, failure)
