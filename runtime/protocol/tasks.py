"""Tasks on the wire: the specs a driver submits, the message a worker runs, its
answer, and the result entries drivers receive.

    Kind.SUBMIT   D -> A   [TaskSpec]       args: ArgValue | ArgRef
    Kind.TASK     A -> W   TaskMessage      (D -> actor W too, and over the sync channel)
    Kind.DONE     W -> A   TaskDone
    Kind.RESULTS  A/W -> D [result entry]   one record per status (RESULT_TYPES)

Records are NamedTuples: fields by name for every sender and receiver, at the cost of a
tuple on the hot path. On the wire each is the plain tuple of its fields: senders send
`tuple(record)` (`spec_wire` for a spec, whose arguments are records too;
`message_wire` on the agent's hot path), because a NamedTuple itself would pickle with
a reference to its class. So the bytes are as small as the hand-built tuples they
replace (smaller than the dicts a spec and a task message were); `*_of` turn a received
one back into its record and raise ValueError when it is not one (runtime.protocol.codec
makes that a MalformedMessageError). A received record is never edited: a node agent
keeps what it learns about a task (fetched arguments, GPU ids) beside its spec.
"""
from __future__ import annotations

from typing import NamedTuple

from runtime.protocol.fields import record_of

# TaskSpec.kind
TASK = "task"
ACTOR_CREATE = "actor_create"
ACTOR_CALL = "actor_call"

VALUE = "v"     # ArgValue.tag
REF = "r"       # ArgRef.tag


class ArgValue(NamedTuple):
    """An argument that travels with the task: a packed value (frames.Packer.value)."""
    tag: str
    packed: tuple

    @classmethod
    def of(cls, packed: tuple) -> "ArgValue":
        return cls(VALUE, packed)


class ArgRef(NamedTuple):
    """An argument that is an object on a node (node_id "" when not known yet): the
    node agent fetches it before the task starts."""
    tag: str
    object_id: bytes
    node_id: str

    @classmethod
    def of(cls, object_id: bytes, node_id: str) -> "ArgRef":
        return cls(REF, object_id, node_id)


class TaskSpec(NamedTuple):
    """A task, actor creation or actor call, as a driver submits it to a node agent."""
    task_id: bytes
    driver: str
    kind: str               # TASK, ACTOR_CREATE or ACTOR_CALL
    fn: bytes | None        # the pickled function or class (None for calls)
    fn_id: bytes | None
    method: str | None      # an actor call's method
    shape: dict             # resources it takes while it runs
    actor_id: bytes | None
    detached: bool
    args: list              # [ArgValue | ArgRef]
    kwargs: dict            # {name: ArgValue | ArgRef}


class TaskMessage(NamedTuple):
    """One task as its worker runs it: every argument a packed value."""
    task_id: bytes
    driver: str
    kind: str
    method: str | None
    args: list              # [packed value]
    kwargs: dict            # {name: packed value}
    fn: bytes | None = None
    fn_id: bytes | None = None
    gpu_ids: tuple = ()     # a task's GPU ids (an actor's worker got its own at start)
    reply_to: bytes | None = None   # sync channel: the driver's identity, for large answers


class TaskDone(NamedTuple):
    """A worker's answer to its agent: packed is None when a large result went into
    the agent's store in pieces (Kind.PUT_BEGIN / PUT_PIECE) before it."""
    task_id: bytes
    ok: bool
    packed: tuple | None


# ---------------------------------------------------------------- result entries
OK, ERROR, STORED, RETURNED = "ok", "error", "stored", "returned"
LOG, WORKER_ROOM, LOST, STORE_FULL = "log", "worker_room", "lost", "store_full"
ACTOR_DIED, WORKER_DIED = "actor_died", "worker_died"


class ResultValue(NamedTuple):
    """A task's value (OK) or its user error (ERROR), inline: its buffers are the
    message's frames from `base` on."""
    task_id: bytes
    status: str
    packed: tuple
    base: int = 0

    @classmethod
    def of(cls, task_id: bytes, ok: bool, packed: tuple, base: int = 0) -> "ResultValue":
        # one per task: built as _make builds it, without the call to cls
        return tuple.__new__(cls, (task_id, OK if ok else ERROR, packed, base))


class Stored(NamedTuple):
    """A task's result stays in its node's store."""
    task_id: bytes
    status: str
    node_id: str
    size_bytes: int

    @classmethod
    def of(cls, task_id: bytes, node_id: str, size_bytes: int) -> "Stored":
        return cls(task_id, STORED, node_id, size_bytes)


class Returned(NamedTuple):
    """Work handed back unstarted: the node drains, the driver reclaimed it, or (with
    `notice`, runtime.agent.worker_bound.WorkerBound.notice) the node is at its bound."""
    task_id: bytes
    status: str
    node_id: str
    draining: bool
    notice: dict | None = None

    @classmethod
    def of(cls, task_id: bytes, node_id: str, draining: bool,
           notice: dict | None = None) -> "Returned":
        return cls(task_id, RETURNED, node_id, draining, notice)


class Printed(NamedTuple):
    """Lines a task printed (task_id ""), from process `pid` on `node_id`."""
    task_id: str
    status: str
    node_id: str
    pid: int
    text: str
    stream: str             # "stdout" or "stderr"

    @classmethod
    def of(cls, node_id: str, pid: int, text: str, stream: str) -> "Printed":
        return cls("", LOG, node_id, pid, text, stream)


class WorkerRoom(NamedTuple):
    """A node at its worker bound can start `room` more worker processes (task_id "")."""
    task_id: str
    status: str
    node_id: str
    room: int | None

    @classmethod
    def of(cls, node_id: str, room: int | None) -> "WorkerRoom":
        return cls("", WORKER_ROOM, node_id, room)


class Lost(NamedTuple):
    """An argument of the task is gone with its node."""
    task_id: bytes
    status: str
    object_id: bytes
    node_id: str

    @classmethod
    def of(cls, task_id: bytes, object_id: bytes, node_id: str) -> "Lost":
        return cls(task_id, LOST, object_id, node_id)


class StoreFull(NamedTuple):
    """A node's store could not hold an argument or the result."""
    task_id: bytes
    status: str
    node_id: str
    reason: str

    @classmethod
    def of(cls, task_id: bytes, node_id: str, reason: str) -> "StoreFull":
        return cls(task_id, STORE_FULL, node_id, reason)


class ActorDied(NamedTuple):
    task_id: bytes
    status: str
    actor_id: bytes
    cause: str

    @classmethod
    def of(cls, task_id: bytes, actor_id: bytes, cause: str) -> "ActorDied":
        return cls(task_id, ACTOR_DIED, actor_id, cause)


class WorkerDied(NamedTuple):
    task_id: bytes
    status: str
    cause: str

    @classmethod
    def of(cls, task_id: bytes, cause: str) -> "WorkerDied":
        return cls(task_id, WORKER_DIED, cause)


RESULT_TYPES = {OK: ResultValue, ERROR: ResultValue, STORED: Stored, RETURNED: Returned,
                LOG: Printed, WORKER_ROOM: WorkerRoom, LOST: Lost, STORE_FULL: StoreFull,
                ACTOR_DIED: ActorDied, WORKER_DIED: WorkerDied}


# ---------------------------------------------------------------- to and from the wire
def spec_wire(spec: TaskSpec) -> tuple:
    """A TaskSpec as it travels, its arguments plain tuples too."""
    if not spec.args and not spec.kwargs:
        return tuple(spec)
    return (*spec[:9], [tuple(a) for a in spec.args],      # (the fields before args)
            {k: tuple(v) for k, v in spec.kwargs.items()})


def message_wire(spec: TaskSpec, args: list, kwargs: dict, gpu_ids=()) -> tuple:
    """The TaskMessage that runs `spec` with these packed arguments, as it travels:
    a node agent sends one per task, so the tuple is built once, in TaskMessage's
    field order, without the record in between."""
    return (spec.task_id, spec.driver, spec.kind, spec.method, args, kwargs, spec.fn,
            spec.fn_id, gpu_ids, None)


def arg_of(arg) -> ArgValue | ArgRef:
    if type(arg) is not tuple and type(arg) is not list or not arg:
        raise ValueError(f"argument {arg!r:.80} is not a tuple")
    if arg[0] == VALUE:
        return record_of(ArgValue, arg, "a value argument")
    if arg[0] == REF:
        return record_of(ArgRef, arg, "a ref argument")
    raise ValueError(f"argument tag {arg[0]!r:.40} is neither {VALUE!r} nor {REF!r}")


def spec_of(header) -> TaskSpec:
    spec = record_of(TaskSpec, header, "a task spec")
    args, kwargs = spec.args, spec.kwargs
    if type(kwargs) is not dict or (type(args) is not list and type(args) is not tuple):
        raise ValueError("a task spec's args are not a list, or its kwargs not a dict")
    if not args and not kwargs:
        return spec
    # the fields before args as received, then the arguments as records (a
    # _replace would cost more than the rest of the decoding)
    return tuple.__new__(TaskSpec, (*spec[:9], [arg_of(a) for a in args],
                                    {k: arg_of(v) for k, v in kwargs.items()}))


def specs_of(header) -> list[TaskSpec]:
    """A Kind.SUBMIT header: a list of task specs."""
    if type(header) is not list:
        raise ValueError(f"a submit header is {type(header).__name__}, not a list")
    return [spec_of(spec) for spec in header]


def message_of(header) -> TaskMessage:
    message = record_of(TaskMessage, header, "a task message")
    if type(message.kwargs) is not dict:
        raise ValueError("a task message's kwargs are not a dict")
    return message


def done_of(header) -> TaskDone:
    return record_of(TaskDone, header, "a done header")


def result_of(entry):
    """One entry of a Kind.RESULTS header, as the record its status names."""
    if type(entry) is not tuple and type(entry) is not list or len(entry) < 2:
        raise ValueError(f"result entry {entry!r:.80} is not a tuple")
    cls = RESULT_TYPES.get(entry[1])
    if cls is None:
        raise ValueError(f"result status {entry[1]!r:.40} is not one of "
                         f"{sorted(RESULT_TYPES)}")
    record = record_of(cls, entry, f"a {entry[1]!r} result entry")
    if cls is ResultValue and (type(record.packed) is not tuple or len(record.packed) != 3):
        raise ValueError(f"a {entry[1]!r} result entry's value is not (data, first, count)")
    return record


def results_of(header) -> list:
    """A Kind.RESULTS header is a list of entries. The entries are decoded one by one
    by their receiver (result_of), so that one bad entry fails only its own task."""
    if type(header) is not list:
        raise ValueError(f"a results header is {type(header).__name__}, not a list")
    return header
