"""Records the driver keeps: object entries, task records and actor records."""
from __future__ import annotations

import pickle

from runtime.errors import TaskError
from runtime.protocol.frames import Serialized

PENDING, READY, FAILED = 0, 1, 2


class Entry:
    """One object this driver owns or borrowed: a local value, a location, or an error."""

    __slots__ = ("state", "value", "node_id", "error", "fetching", "name", "pooled")

    def __init__(self, state=PENDING, value: Serialized | None = None,
                 node_id: str | None = None, name: str = ""):
        self.state = state
        self.value = value
        self.node_id = node_id
        self.error: BaseException | None = None
        self.fetching = False
        self.name = name
        self.pooled = False

    @property
    def local_ready(self) -> bool:
        return self.state == FAILED or (self.state == READY and self.value is not None)

    @property
    def needs_fetch(self) -> bool:
        return self.state == READY and self.value is None and not self.fetching


class TaskRecord:
    """A task, actor creation or actor call: its spec (sent to an agent), where it runs,
    and what keeps its arguments alive."""

    __slots__ = ("task_id", "kind", "name", "fn", "fn_id", "method", "args", "kwargs",
                 "shape", "actor_id", "detached", "retries_left", "node_id", "deps",
                 "last_cause", "direct", "lease")

    def __init__(self, task_id: bytes, kind: str, name: str, fn: bytes | None,
                 fn_id: bytes | None, args: list, kwargs: dict, shape: dict,
                 retries_left: int = 0, actor_id: bytes | None = None,
                 method: str | None = None, detached: bool = False):
        self.task_id = task_id
        self.kind = kind
        self.name = name
        self.fn = fn
        self.fn_id = fn_id
        self.method = method
        self.args = args            # [("v", Serialized) | ("ref", ObjectRef)]
        self.kwargs = kwargs
        self.shape = shape
        self.actor_id = actor_id
        self.detached = detached
        self.retries_left = retries_left
        self.node_id: str | None = None
        self.deps: set = set()
        self.last_cause = ""
        self.direct = False         # an actor call sent straight to the actor's worker
        self.lease = None           # the lease it was sent on (runtime.driver.leases)

    def refs(self):
        for kind, item in list(self.args) + list(self.kwargs.values()):
            if kind == "ref":
                yield item


class ActorRecord:
    __slots__ = ("actor_id", "name", "create", "node_id", "state", "restarts_left",
                 "waiting_calls", "owned", "error", "class_name", "direct",
                 "via_agent", "sync", "direct_inflight", "sync_task", "held", "epoch")

    def __init__(self, actor_id: bytes, create: TaskRecord | None, restarts_left: int,
                 name: str | None, owned: bool, class_name: str):
        self.actor_id = actor_id
        self.create = create
        self.name = name
        self.node_id: str | None = None
        self.state = "pending"        # pending | creating | alive | dead | killed
        self.restarts_left = restarts_left
        self.waiting_calls: list[TaskRecord] = []
        self.owned = owned
        self.error: BaseException | None = None
        self.class_name = class_name
        self.direct = None          # DEALER to the actor's worker (same host only)
        self.via_agent = 0          # calls in flight through the agent
        self.sync = None            # runtime.protocol.sync_channel socket to its worker
        self.direct_inflight = 0    # calls in flight straight to its worker
        self.sync_task = None       # the call in flight on the sync channel
        self.held: list = []        # later calls, sent once that one is answered
        self.epoch = 0              # restarts so far (a borrowed record: as last seen)


def user_error(function_name: str, value: Serialized) -> BaseException:
    """The TaskError for a user exception, sent back by runtime.worker.main.remote_error as
    (type name, message, traceback text, pickled exception or None)."""
    type_name, message, text, pickled = value.value()
    error = None
    if pickled is not None:
        try:
            error = pickle.loads(pickled)
        except Exception:  # its class may not exist here: the text still tells
            error = None
    if isinstance(error, TaskError):
        return error
    return TaskError(function_name, f"{type_name}: {message}", text, error)


def error_for(entry: Entry) -> BaseException:
    return entry.error
