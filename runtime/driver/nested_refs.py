"""ObjectRefs nested inside task arguments: `total.remote([ref1, ref2])`, `{"a": ref}`.

A top-level argument ref is replaced by its value; a ref inside an argument reaches the
task as a ref, as in Ray. How it travels:

- Driver: a task's arguments are pickled between start_collecting() and
  stop_collecting(); an ObjectRef met inside one is pickled as a placeholder (its
  index and id) and collected. Every collected ref
  becomes a hidden keyword argument (NESTED_PREFIX + index), so it takes the usual
  dependency path: the task is placed once the ref is ready, the node agent fetches the
  value like any argument's, and the task record holds the ref (the value cannot be
  freed) until the task is done.
- Worker: `take_nested(kwargs)` removes the hidden keywords, and while the arguments are
  unpickled under `resolving(...)` each placeholder turns into a ResolvedRef holding the
  value. `runtime.get` on it returns the value at once (no round trip, no connection);
  passed on to another task it travels with its value.

So a nested ref is ready before its task starts (Ray fetches it on first get), and one
whose task failed fails the task that received it, as a top-level ref does.

Anywhere else a ref is pickled (inside a put() value, a task's result, an actor's
state) it waits for its value and carries it: what arrives is a ResolvedRef. So a task
can return refs (`return [runtime.put(part) for part in parts]`), at the price of a copy
of their values and of waiting for them before the result is sent.
"""
from __future__ import annotations

import contextlib
import pickle
import threading

from runtime.api import ObjectRef
from runtime.protocol.frames import Serialized

NESTED_PREFIX = "__corral_nested_ref_"

_local = threading.local()

# Whether this process ever held a ResolvedRef (only tasks that received refs inside
# their arguments do): get() and wait() look for them only then.
made_any = False


def start_collecting() -> list:
    """From now until stop_collecting(), ObjectRefs pickled on this thread are collected
    into the returned list and pickled as placeholders. (Two calls, not a context
    manager: this runs for every task submitted.)"""
    refs: list = []
    _local.collected, _local.positions = refs, {}
    return refs


def stop_collecting() -> None:
    _local.collected = _local.positions = None


def reduce_ref(ref):
    """ObjectRef.__reduce__: a placeholder while a task's arguments are pickled;
    anywhere else (put(), a task's result, a closure) the ref carries its value, waited
    for here (a failed ref raises its error)."""
    refs = getattr(_local, "collected", None)
    if refs is None:
        from runtime import api
        return _with_value(ref.id, api.serialized_value(ref))
    index = _local.positions.get(ref.id)
    if index is None:
        index = _local.positions[ref.id] = len(refs)
        refs.append(ref)
    return _placeholder, (index, ref.id)


def _with_value(object_id: bytes, value: Serialized) -> tuple:
    """Reduce to a ResolvedRef holding `value`; its large buffers stay out of band."""
    return _rebuild, (object_id, value.data,
                      [pickle.PickleBuffer(buffer) for buffer in value.buffers])


def take_nested(kwargs: dict) -> dict:
    """Remove the hidden keywords from a worker's packed kwargs: {index: packed value}."""
    found: dict = {}
    if not kwargs:
        return found
    for key in [k for k in kwargs if k.startswith(NESTED_PREFIX)]:
        found[int(key[len(NESTED_PREFIX):])] = kwargs.pop(key)
    return found


@contextlib.contextmanager
def resolving(values: dict):
    """While active, placeholders unpickle into ResolvedRefs ({index: Serialized})."""
    _local.resolving = values
    try:
        yield
    finally:
        _local.resolving = None


def _placeholder(index: int, object_id: bytes):
    values = getattr(_local, "resolving", None)
    if values is None or index not in values:
        raise RuntimeError("a nested ObjectRef was unpickled outside the task it was "
                           "passed to")
    return ResolvedRef(object_id, values[index])


def _rebuild(object_id: bytes, data: bytes, buffers: list):
    return ResolvedRef(object_id, Serialized(data, [memoryview(b) for b in buffers]))


class ResolvedRef(ObjectRef):
    """A ref that reached a task inside an argument, with its value already here. It
    does not own the value (the submitting driver does), so it counts no reference."""
    __slots__ = ("serialized",)

    def __init__(self, object_id: bytes, value: Serialized):  # pylint: disable=super-init-not-called
        global made_any
        self.id, self._core, self.serialized = object_id, None, value
        made_any = True

    def __del__(self):
        pass

    def value(self):
        return self.serialized.value()

    def __reduce__(self):  # passed on to another task or returned: it carries its value
        return _with_value(self.id, self.serialized)
