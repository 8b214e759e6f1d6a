"""The public, Ray-shaped API: init, shutdown, remote, get, put, wait, kill, get_actor,
cluster_resources, available_resources, nodes, request_resources, get_gpu_ids."""
from __future__ import annotations

import atexit
import operator
import os
import hashlib
import shutil
import tempfile
import threading
import time
from pathlib import Path

from runtime import scheduling
from runtime.protocol import frames as protocol
from runtime.node import session
from runtime.driver.core import DriverCore
from runtime.driver.records import FAILED, READY, ActorRecord, Entry, TaskRecord
from runtime.node.gpus import get_gpu_ids  # noqa: F401 - part of the API (in a task: its ids)
from runtime.errors import (GetTimeoutError, NotInitializedError, ObjectLostError,
                            RuntimeConnectionError, RuntimeSystemError)
from runtime.node.keys import load_cluster_keys
from runtime.agent.store import BUFFER_POOL
from runtime.protocol.frames import Serialized, serialize

_lock = threading.Lock()
_core: DriverCore | None = None
_embedded: dict | None = None


class ObjectRef:
    """A reference to a value (a task's result or a put). The value is freed when the
    last ObjectRef to it is gone."""

    __slots__ = ("id", "_core", "__weakref__")

    def __init__(self, object_id: bytes, core: DriverCore):
        self.id = object_id
        self._core = core
        core.incref(object_id)

    def __del__(self):
        try:
            self._core.decref(self.id)
        except (AttributeError, TypeError):  # interpreter shutdown
            pass

    def hex(self) -> str:
        return self.id.hex()

    def __repr__(self):
        return f"ObjectRef({self.id.hex()})"

    def __hash__(self):
        return hash(self.id)

    def __eq__(self, other):
        return isinstance(other, ObjectRef) and other.id == self.id

    def __reduce__(self):  # see runtime.driver.nested_refs
        return nested_refs.reduce_ref(self)


_ID = operator.attrgetter("id")


def current_core() -> DriverCore | None:
    return _core


_connect_on_first_use = False


def connect_on_first_use() -> None:
    """In a worker process: the first API call connects to this node's runtime (as
    init(address="auto") would), so tasks and actors can call remote functions and
    actors themselves (see set_blocking_hooks for what a task waiting in get() lends)."""
    global _connect_on_first_use
    _connect_on_first_use = True


def _get_core() -> DriverCore:
    if _core is None:
        if not _connect_on_first_use:
            raise NotInitializedError()
        init(address="auto", ignore_reinit_error=True)
    return _core


# ---------------------------------------------------------------- init / shutdown

def init(address: str | None = None, num_cpus: float | None = None,
         num_gpus: float | None = None, resources: dict | None = None,
         keys_dir: str | None = None, log_to_driver: bool = True,
         ignore_reinit_error: bool = False,
         object_store_memory: int | str | None = None) -> dict:
    """Connect this program to a cluster. address: "auto" = this node's running runtime
    (address.json); "HOST:PORT" = that head; None = this node's runtime if one runs,
    else an embedded one-node runtime for this program, torn down at exit.
    object_store_memory: bytes of objects the embedded runtime keeps in memory before
    spilling to disk (default $CORRAL_OBJECT_STORE_MEMORY, else 30 % of memory)."""
    global _core, _embedded
    with _lock:
        if _core is not None:
            if ignore_reinit_error:
                return {"address": _core.control_address}
            raise RuntimeSystemError("runtime.init() was already called; call "
                                     "runtime.shutdown() first")
        home = found = None
        if address in (None, "auto"):   # only state this user alone controls is used
            found = session.find_address(running=address is None,
                                         refuse_foreign_fallback=address == "auto")
        if address == "auto" or (address is None and found):
            if not found:
                raise RuntimeConnectionError("auto", "no runtime runs on this node (no "
                                             "address in " + ", ".join(
                                                 str(d / "session") for d in
                                                 session.discovery_dirs()) + ")")
            node_session, info = found
            address, home = info["address"], info.get("node_id")
            keys_dir = keys_dir or info.get("keys_dir") or \
                str(session.keys_dir(node_session.parent))
        elif address is None:
            _embedded = _start_embedded(num_cpus, num_gpus, resources,
                                        object_store_memory)
            address, keys_dir, home = (_embedded["address"], _embedded["keys_dir"],
                                       _embedded["node_id"])
        keys_dir = keys_dir or str(session.keys_dir())
        try:
            keys = load_cluster_keys(keys_dir)    # MissingKeysError, UnsafePathError
        except BaseException:
            _stop_embedded()
            raise
        try:
            _core = DriverCore(address, keys, home_node_id=home,
                               log_to_driver=log_to_driver)
        except BaseException:
            _stop_embedded()
            raise
        atexit.register(shutdown)
        return {"address": address, "driver_id": _core.driver_id}


def _start_embedded(num_cpus, num_gpus, resources, object_store_memory=None) -> dict:
    from runtime.node.startup import start_node
    # a fresh key pair per embedded runtime, in a 0700 dir of this user's (mkdtemp):
    # its ports are on loopback, where any local user can reach them
    node_dir = tempfile.mkdtemp(prefix="corral-embedded-")
    try:
        started = start_node(head=True, port=0, num_cpus=num_cpus, num_gpus=num_gpus,
                             resources=resources, node_dir=node_dir, node_ip="127.0.0.1",
                             node_id="embedded", driver_pid=os.getpid(),  # dies with us
                             discard_node_dir=True, object_store_memory=object_store_memory)
    except BaseException:
        shutil.rmtree(node_dir, ignore_errors=True)
        raise
    return {"address": started.address, "node_dir": node_dir, "node_id": started.node_id,
            "session": started.session, "keys_dir": str(session.keys_dir(Path(node_dir)))}


def _stop_embedded() -> None:
    global _embedded
    if _embedded is not None:
        session.stop_session(_embedded["session"])
        shutil.rmtree(_embedded["node_dir"], ignore_errors=True)
        _embedded = None


def shutdown() -> None:
    """Disconnect; the cluster cleans up this driver's tasks and non-detached actors.
    An embedded runtime is stopped."""
    global _core
    with _lock:
        core, _core = _core, None
        if core is not None:
            core.close()
        _stop_embedded()


def is_initialized() -> bool:
    return _core is not None


# ---------------------------------------------------------------- objects

def put(value) -> ObjectRef:
    core = _get_core()
    if isinstance(value, ObjectRef):
        raise TypeError("put() of an ObjectRef is not supported")
    item = serialize(value)
    entry = Entry(READY, name="put")
    if item.buffers:  # a snapshot: later changes to the caller's arrays don't leak in
        item = Serialized(item.data, [BUFFER_POOL.copy(b) for b in item.buffers])
        entry.pooled = True
    entry.value = item
    object_id = core.new_id()
    core.add_entry(object_id, entry)
    return ObjectRef(object_id, core)


# In a task worker: (enter, leave, tick) around a get/wait that has to block, so the
# node agent lends the task's resources to other work meanwhile (see runtime.worker.main).
_blocking_hooks: tuple | None = None


def set_blocking_hooks(enter, leave, tick) -> None:
    global _blocking_hooks
    _blocking_hooks = (enter, leave, tick)


def _blocking_wait(attempt, timeout: float | None):
    """attempt(timeout_s) -> (done, result). Outside workers one call; in a worker a
    first try that does not wait, then the hooks around waits of at most TICK_S."""
    if _blocking_hooks is None:
        return attempt(timeout)[1]
    done, result = attempt(0)
    if done:
        return result
    enter, leave, tick = _blocking_hooks
    deadline = None if timeout is None else time.monotonic() + timeout
    enter()
    try:
        while True:
            tick()
            slice_s = BLOCKED_TICK_S if deadline is None else \
                max(0.0, min(BLOCKED_TICK_S, deadline - time.monotonic()))
            done, result = attempt(slice_s)
            if done or (deadline is not None and time.monotonic() >= deadline):
                return result
    finally:
        leave()


BLOCKED_TICK_S = 0.02


def _wait_one_blocking(core, object_id: bytes, timeout: float | None):
    def attempt(slice_s):
        ready, entry = core.wait_one(object_id, slice_s)
        return ready, (ready, entry)
    return _blocking_wait(attempt, timeout)


def _wait_flags(core, ids: list, num_ready: int, timeout: float | None, fetch: bool):
    def attempt(slice_s):
        flags = core.wait_ready(ids, num_ready, slice_s, fetch=fetch)
        return flags.count(True) >= num_ready, flags
    return _blocking_wait(attempt, timeout)


def _ready_value(ref: ObjectRef, entry) -> Serialized:
    """The value of a finished ref's entry; raises its error, or ObjectLostError when
    the entry is gone."""
    if entry is None:
        raise ObjectLostError(ref.hex(), "freed")
    if entry.state == FAILED:
        raise entry.error
    return entry.value


def _owned(refs: list) -> list:
    """The refs to wait for: all but those that came with their values (ResolvedRefs,
    which only a task that received refs inside its arguments holds)."""
    if not nested_refs.made_any:
        return refs
    return [ref for ref in refs if type(ref) is not nested_refs.ResolvedRef]


def get(refs, timeout: float | None = None):
    if type(refs) is nested_refs.ResolvedRef:   # in a task: a ref passed inside an arg
        return refs.value()
    core = _get_core()
    if type(refs) is ObjectRef:      # the sync path: one ref, no lists
        if _blocking_hooks is None:
            ready, entry = core.wait_one(refs.id, timeout)
        else:
            ready, entry = _wait_one_blocking(core, refs.id, timeout)
        if not ready:
            raise GetTimeoutError(timeout, 1)
        return _ready_value(refs, entry).value()
    single = isinstance(refs, ObjectRef)
    if not single and not isinstance(refs, (list, tuple)):
        raise TypeError(f"get() expects an ObjectRef or a list of them, got "
                        f"{type(refs).__name__}")
    items = [refs] if single else list(refs)
    for ref in items:
        if not isinstance(ref, ObjectRef):
            raise TypeError(f"get() expects ObjectRefs, got {type(ref).__name__}")
    owned = _owned(items)
    flags = _wait_flags(core, [ref.id for ref in owned], len(owned), timeout,
                        fetch=True) if owned else []
    if not all(flags):
        raise GetTimeoutError(timeout, flags.count(False))
    values = [ref.value() if type(ref) is nested_refs.ResolvedRef
              else _ready_value(ref, core.entry(ref.id)).value() for ref in items]
    return values[0] if single else values


def serialized_value(ref: ObjectRef) -> Serialized:
    """A ref's value, still pickled, once it is ready (fetched here if it is stored on a
    node); raises the error of a failed ref."""
    if type(ref) is nested_refs.ResolvedRef:
        return ref.serialized
    core = _get_core()
    _wait_flags(core, [ref.id], 1, None, fetch=True)
    return _ready_value(ref, core.entry(ref.id))


def wait(refs, num_returns: int = 1, timeout: float | None = None):
    """-> (ready, not_ready): the first num_returns refs that finished (value or error),
    in the order given, and the rest."""
    refs = list(refs)
    if not refs:
        return [], []
    if num_returns > len(refs):
        raise ValueError("num_returns is larger than the number of refs")
    owned = _owned(refs)
    flags = _wait_flags(_get_core(), list(map(_ID, owned)),
                        max(0, num_returns - (len(refs) - len(owned))), timeout,
                        fetch=False) if owned else []
    if owned is not refs:   # refs that came inside this task's arguments are ready
        found = iter(flags)
        flags = [True if type(ref) is nested_refs.ResolvedRef else next(found)
                 for ref in refs]
    if num_returns == len(refs) and all(flags):
        return refs, []
    ready, rest = [], []
    for ref, flag in zip(refs, flags):
        (ready if flag and len(ready) < num_returns else rest).append(ref)
    return ready, rest


# ---------------------------------------------------------------- cluster state

def nodes() -> list[dict]:
    return _get_core().call_control("nodes")


def _sum(key: str) -> dict:
    total: dict = {}
    for node in nodes():
        if node["alive"]:
            for name, amount in node[key].items():
                total[name] = total.get(name, 0.0) + amount
    return total


def cluster_resources() -> dict:
    return _sum("resources_total")


def available_resources() -> dict:
    return _sum("resources_available")


def request_resources(num_cpus: int | None = None, bundles: list[dict] | None = None):
    """Ask the autoscaler for capacity now: num_cpus one-CPU bundles plus bundles.
    Each call replaces the previous request."""
    wanted = [{"CPU": 1.0}] * int(num_cpus or 0) + [dict(b) for b in bundles or []]
    _get_core().call_control("request_resources", bundles=wanted)


def object_count() -> int:
    """Objects this driver holds (for tests of reference counting)."""
    core = _get_core()
    with core.cv:
        return len(core.objects)


def node_stats(node_id: str, timeout_s: float = 10.0) -> dict:
    """A node agent's store and pool counters: objects, object_bytes, workers, queued."""
    from concurrent.futures import Future
    from runtime.driver.loop import Call
    core = _get_core()
    future: Future = Future()
    core._run(Call(lambda: core.io.agent_stats(node_id, future), future,
                   f"node_stats({node_id!r})"))
    return future.result(timeout_s)


def _fn_blob(target) -> tuple[bytes, bytes]:
    blob = protocol.dumps_code(target)
    return blob, hashlib.blake2b(blob, digest_size=16).digest()


def _convert(value):
    if isinstance(value, ObjectRef):
        if type(value) is nested_refs.ResolvedRef:  # its value is here: pass that
            return ("v", value.serialized)
        return ("ref", value)
    return ("v", serialize(value))


def _args(core, args, kwargs):
    """Arguments as ("v", Serialized) / ("ref", ObjectRef); refs found inside arguments
    are added as hidden keyword refs (runtime.driver.nested_refs)."""
    nested = nested_refs.start_collecting()
    try:
        conv_args = [_convert(a) for a in args] if args else []
        conv_kwargs = {k: _convert(v) for k, v in kwargs.items()} if kwargs else {}
    finally:
        nested_refs.stop_collecting()
    for index, ref in enumerate(nested):
        conv_kwargs[f"{nested_refs.NESTED_PREFIX}{index}"] = ("ref", ref)
    return conv_args, conv_kwargs


def submit_task(core, kind, name, blob, fn_id, args, kwargs, shape, retries=0,
                actor_id=None, method=None, detached=False) -> ObjectRef:
    task_id = core.new_id()
    conv_args, conv_kwargs = _args(core, args, kwargs)
    record = TaskRecord(task_id, kind, name, blob, fn_id, conv_args, conv_kwargs, shape,
                        retries, actor_id, method, detached)
    core.add_entry(task_id, Entry(name=name))
    ref = ObjectRef(task_id, core)
    core.submit(record)
    return ref


def register_actor(core, record: ActorRecord) -> None:
    core._run(lambda: core.actors.setdefault(record.actor_id, record))


def actor_node_for_handoff(actor_id: bytes, created_here: bool,
                           wait_s: float = 10.0) -> tuple[str | None, int]:
    """(node, epoch): the node this process knows an actor to run on, and its restarts
    so far. An actor created here (its record reaches the IO thread a moment after
    .remote() returns) is waited for up to wait_s until it is placed. (None, 0) when
    unknown."""
    core = _core
    if core is None:
        return None, 0
    deadline = time.monotonic() + wait_s
    while True:
        record = core.actors.get(actor_id)
        if record is not None and (record.node_id or record.state in ("dead", "killed")):
            return record.node_id, record.epoch
        if (record is None and not created_here) or time.monotonic() > deadline:
            return None, 0
        time.sleep(0.005)


def wait_for_actor_info(name: str, timeout_s: float = 10.0) -> dict:
    core = _get_core()
    deadline = time.monotonic() + timeout_s
    while True:
        info = core.call_control("lookup_actor", name=name)
        if info is None:
            raise ValueError(f"no actor named {name!r}")
        if info.get("node_id") or time.monotonic() > deadline:
            return info
        time.sleep(0.05)


def make_shape(options: dict, default_cpus: float) -> dict:
    return scheduling.make_shape(options.get("num_cpus"), options.get("num_gpus"),
                                 options.get("resources"), default_cpus)


from runtime.driver import nested_refs  # noqa: E402 - it subclasses ObjectRef, defined above

__all__ = ["init", "shutdown", "put", "get", "wait", "nodes", "cluster_resources",
           "available_resources", "request_resources", "ObjectRef", "get_gpu_ids"]
