"""Errors raised by the runtime. Root: RuntimeSystemError. Each leaf carries the data a
caller needs (the task's name, the remote traceback, the actor or node id)."""
from __future__ import annotations


class RuntimeSystemError(Exception):
    """Root of every error the runtime raises."""

    exit_code = 1


class RuntimeConnectionError(RuntimeSystemError):
    """The control service could not be reached (wrong address, wrong key, not running)."""

    def __init__(self, address: str, reason: str):
        super().__init__(f"cannot reach the runtime at {address}: {reason}")
        self.address = address
        self.reason = reason


class RuntimeStartError(RuntimeSystemError):
    """`corral start` (or the embedded runtime) could not bring its processes up."""


class ActorNameTakenError(RuntimeSystemError, ValueError):
    def __init__(self, name: str):
        super().__init__(f"an actor named {name!r} already exists in this cluster; "
                         f"use runtime.get_actor({name!r}) to call it, or another name")
        self.name = name

    def __reduce__(self):
        return (ActorNameTakenError, (self.name,))


class TaskError(RuntimeSystemError):
    """A task failed: user code raised (the remote traceback is kept), or its worker died
    more often than max_retries allows."""

    def __init__(self, function_name: str, cause: str, remote_traceback: str = "",
                 cause_exception: BaseException | None = None):
        text = f"task {function_name} failed: {cause}"
        if remote_traceback:
            text += "\n\nRemote traceback:\n" + remote_traceback
        super().__init__(text)
        self.function_name = function_name
        self.cause = cause
        self.remote_traceback = remote_traceback
        self.cause_exception = cause_exception

    def __reduce__(self):
        return (TaskError, (self.function_name, self.cause, self.remote_traceback,
                            None))


class ActorDiedError(RuntimeSystemError):
    def __init__(self, actor_id: str, cause: str):
        super().__init__(f"actor {actor_id} died: {cause}")
        self.actor_id = actor_id
        self.cause = cause

    def __reduce__(self):
        return (ActorDiedError, (self.actor_id, self.cause))


class NodeDiedError(RuntimeSystemError):
    def __init__(self, node_id: str, what: str = ""):
        super().__init__(f"node {node_id} died (stopped heartbeating)"
                         + (f" while running {what}" if what else ""))
        self.node_id = node_id
        self.what = what

    def __reduce__(self):
        return (NodeDiedError, (self.node_id, self.what))


class GetTimeoutError(RuntimeSystemError, TimeoutError):
    def __init__(self, timeout_s: float, pending: int):
        super().__init__(f"get() timed out after {timeout_s} s with {pending} object(s) "
                         "not ready")
        self.timeout_s = timeout_s
        self.pending = pending

    def __reduce__(self):
        return (GetTimeoutError, (self.timeout_s, self.pending))


class ObjectLostError(RuntimeSystemError):
    def __init__(self, object_id: str, reason: str):
        super().__init__(f"object {object_id} is lost: {reason}")
        self.object_id = object_id
        self.reason = reason

    def __reduce__(self):
        return (ObjectLostError, (self.object_id, self.reason))


class NotInitializedError(RuntimeSystemError):
    def __init__(self):
        super().__init__("the runtime is not initialised: call runtime.init() first")


class DriverIOError(RuntimeSystemError):
    """The driver's IO thread failed while handling `what` (a message, a command, a
    periodic step): the calls that depended on it fail with this error and the thread
    goes on. `fatal`: the thread could not go on; every pending and later call of this
    driver fails with this error (runtime.shutdown() and init() again to reconnect)."""

    def __init__(self, what: str, cause: str, fatal: bool = False):
        text = (f"the driver's IO thread stopped ({what} failed: {cause}); this driver can "
                "no longer run work: call runtime.shutdown() and runtime.init() again"
                if fatal else f"the driver's IO thread failed on {what}: {cause}")
        super().__init__(text)
        self.what = what
        self.cause = cause
        self.fatal = fatal

    def __reduce__(self):
        return (DriverIOError, (self.what, self.cause, self.fatal))


class ObjectStoreFullError(RuntimeSystemError):
    """A node's object store could not hold an object: its memory is at capacity and
    spilling to disk failed too (the spill limit or the disk is full, or the object is
    larger than the node can receive). Raised for the task whose result or argument it
    was; the node agent itself goes on."""

    def __init__(self, node_id: str, reason: str, size_bytes: int | None = None):
        super().__init__(f"the object store of node {node_id} is full: {reason}")
        self.node_id = node_id
        self.reason = reason
        self.size_bytes = size_bytes

    def __reduce__(self):
        return (ObjectStoreFullError, (self.node_id, self.reason, self.size_bytes))
