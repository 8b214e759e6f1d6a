"""What a node agent knows about a task beside its spec: the spec as it arrived
(runtime.protocol.tasks.TaskSpec, never edited) and what the agent learns while the
task waits and runs: where each argument's value is, how many are still being
fetched, and which GPU ids it took.

The fields the agent reads on every pass over its queue (task id, driver, kind, shape,
actor id) are copied out of the spec once, so that the hot loops read attributes, not
a record inside a record."""
from __future__ import annotations

from runtime.protocol.frames import Serialized, unpack_value
from runtime.protocol.tasks import VALUE, TaskSpec

# ArgState.state: where the argument's value is
HERE = "here"        # `value` holds it (it came with the task, or was fetched)
REMOTE = "remote"    # on node `node_id`: to fetch
LOCAL = "local"      # in this node's store, read when the task goes to its worker
FULL = "full"        # a store could not hold it: `node_id`, `reason`
LOST = "lost"        # gone with node `node_id`


class ArgState:
    """One argument of a queued task, as the agent resolves it."""

    __slots__ = ("state", "object_id", "node_id", "value", "reason")

    def __init__(self, state: str, object_id: bytes | None = None, node_id: str = "",
                 value: Serialized | None = None, reason: str = ""):
        self.state = state
        self.object_id = object_id
        self.node_id = node_id
        self.value = value
        self.reason = reason

    @classmethod
    def of(cls, arg, frames: list) -> "ArgState":
        """From a spec's ArgValue (unpacked from the message's frames) or ArgRef."""
        if arg.tag == VALUE:
            return cls(HERE, value=unpack_value(arg.packed, frames))
        return cls(REMOTE, arg.object_id, arg.node_id)

    def arrived(self, value: Serialized) -> None:
        self.state, self.value = HERE, value

    def failed(self, state: str, node_id: str, reason: str = "") -> None:
        """FULL or LOST, on `node_id`."""
        self.state, self.node_id, self.reason = state, node_id, reason


class AgentTask:
    """A task at this node agent: its spec and its agent-side state."""

    __slots__ = ("spec", "task_id", "driver", "kind", "shape", "actor_id", "args",
                 "kwargs", "missing", "gpus")

    def __init__(self, spec: TaskSpec, frames: list):
        self.spec = spec
        self.task_id = spec.task_id
        self.driver = spec.driver
        self.kind = spec.kind
        self.shape = spec.shape
        self.actor_id = spec.actor_id
        self.args = [ArgState.of(arg, frames) for arg in spec.args] if spec.args else []
        self.kwargs = {key: ArgState.of(arg, frames) for key, arg in
                       spec.kwargs.items()} if spec.kwargs else {}
        self.missing = 0        # arguments still being fetched
        self.gpus = None        # the GPU ids it holds while it runs (runtime.agent.gpu_ids)

    def all_args(self):
        yield from self.args
        yield from self.kwargs.values()
