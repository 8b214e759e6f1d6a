"""@remote on functions and classes: RemoteFunction, ActorClass, ActorHandle, plus
kill() and get_actor()."""
from __future__ import annotations

import inspect

from runtime import api
from runtime.driver.records import ActorRecord, TaskRecord
from runtime.errors import ActorNameTakenError

TASK_OPTIONS = {"num_cpus", "num_gpus", "resources", "max_retries", "name"}
ACTOR_OPTIONS = {"num_cpus", "num_gpus", "resources", "max_restarts", "name", "lifetime"}
DEFAULT_MAX_RETRIES = 3


def remote(*args, **options):
    """@remote or @remote(num_cpus=, num_gpus=, resources=, max_retries=, max_restarts=)."""
    if len(args) == 1 and not options and (inspect.isfunction(args[0]) or
                                           inspect.isclass(args[0])):
        return _make(args[0], {})
    if args:
        raise TypeError("use @remote or @remote(option=value, ...)")
    return lambda target: _make(target, options)


def _make(target, options):
    if inspect.isclass(target):
        return ActorClass(target, _check(options, ACTOR_OPTIONS))
    return RemoteFunction(target, _check(options, TASK_OPTIONS))


def _check(options: dict, allowed: set) -> dict:
    unknown = set(options) - allowed
    if unknown:
        raise TypeError(f"unknown option(s) {sorted(unknown)}; allowed: {sorted(allowed)}")
    for key in ("num_cpus", "num_gpus"):
        if options.get(key) is not None:
            _quantity(key, options[key])
    resources = options.get("resources")
    if resources is not None:
        if not isinstance(resources, dict):
            raise TypeError(f"resources must be a dict of name -> amount, got "
                            f"{type(resources).__name__}")
        for name, amount in resources.items():
            _quantity(f"resources[{name!r}]", amount)
    return dict(options)


def _quantity(what: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or \
            not value >= 0 or value == float("inf"):
        raise ValueError(f"{what} must be a number >= 0, got {value!r}")


class RemoteFunction:
    def __init__(self, function, options: dict, blob=None):
        self._function = function
        self._options = options
        self._blob = blob
        self.__name__ = getattr(function, "__name__", "task")
        self.__doc__ = function.__doc__

    def __call__(self, *args, **kwargs):
        raise TypeError(f"remote function {self.__name__} must be called with "
                        f"{self.__name__}.remote(...)")

    def options(self, **options) -> "RemoteFunction":
        merged = dict(self._options)
        merged.update(_check(options, TASK_OPTIONS))
        return RemoteFunction(self._function, merged, self._blob)

    def remote(self, *args, **kwargs) -> api.ObjectRef:
        core = api._get_core()
        if self._blob is None:
            self._blob = api._fn_blob(self._function)
        blob, fn_id = self._blob
        retries = self._options.get("max_retries", DEFAULT_MAX_RETRIES)
        return api.submit_task(core, "task", self._options.get("name") or self.__name__,
                               blob, fn_id, args, kwargs, api.make_shape(self._options, 1),
                               retries)


class ActorClass:
    def __init__(self, cls, options: dict):
        self._cls = cls
        self._options = options
        self._blob = None
        self.__name__ = cls.__name__

    def __call__(self, *args, **kwargs):
        raise TypeError(f"actor class {self.__name__} must be created with "
                        f"{self.__name__}.remote(...)")

    def options(self, **options) -> "ActorClass":
        copy = ActorClass(self._cls, dict(self._options))
        copy._options.update(_check(options, ACTOR_OPTIONS))
        copy._blob = self._blob
        return copy

    def remote(self, *args, **kwargs) -> "ActorHandle":
        core = api._get_core()
        if self._blob is None:
            self._blob = api._fn_blob(self._cls)
        blob, fn_id = self._blob
        name = self._options.get("name")
        detached = self._options.get("lifetime") == "detached"
        actor_id = core.new_id()
        if name and not core.call_control("register_actor", name=name, info={
                "actor_id": actor_id, "node_id": None, "owner": core.driver_id,
                "detached": detached, "class_name": self.__name__}):
            raise ActorNameTakenError(name)
        conv_args, conv_kwargs = api._args(core, args, kwargs)
        create = TaskRecord(core.new_id(), "actor_create", f"{self.__name__}.__init__",
                            blob, fn_id, conv_args, conv_kwargs,
                            api.make_shape(self._options, 0), actor_id=actor_id,
                            detached=detached)
        record = ActorRecord(actor_id, create, int(self._options.get("max_restarts", 0)),
                             name, True, self.__name__)
        api.register_actor(core, record)
        core.submit(create)
        return ActorHandle(actor_id, self.__name__, name)


class ActorHandle:
    """Calls an actor. A handle passed to a task or actor (pickled) carries the node the
    actor runs on and its restarts so far (epoch), so the receiving process can call it
    too; when that node or worker dies, the receiver asks the control service where the
    owner restarted it (runtime.driver.relocate)."""

    def __init__(self, actor_id: bytes, class_name: str, name: str | None = None,
                 node_id: str | None = None, epoch: int = 0):
        self._actor_id = actor_id
        self._class_name = class_name
        self._name = name
        self._node_id = node_id
        self._epoch = epoch

    def __reduce__(self):
        node_id, epoch = api.actor_node_for_handoff(self._actor_id, self._node_id is None)
        if node_id is None:
            node_id, epoch = self._node_id, self._epoch
        if node_id is None:
            raise TypeError(f"actor {self._class_name} has not been placed on a node yet "
                            f"(it waits for resources), so its handle cannot be passed on; "
                            f"pass it once the actor has started")
        return (ActorHandle, (self._actor_id, self._class_name, self._name, node_id, epoch))

    def __getattr__(self, method: str) -> "ActorMethod":
        if method.startswith("__"):
            raise AttributeError(method)
        return ActorMethod(self, method)

    def __repr__(self):
        return f"ActorHandle({self._class_name}, {self._actor_id.hex()})"


class ActorMethod:
    def __init__(self, handle: ActorHandle, method: str):
        self._handle = handle
        self._method = method

    def remote(self, *args, **kwargs) -> api.ObjectRef:
        core = api._get_core()
        handle = self._handle
        if handle._node_id is not None and handle._actor_id not in core.actors:
            _borrow(core, handle._actor_id, handle._class_name, handle._name,
                    handle._node_id, handle._epoch)
        return api.submit_task(core, "actor_call", f"{handle._class_name}.{self._method}",
                               None, None, args, kwargs, {}, 0, handle._actor_id,
                               self._method)


def kill(actor: ActorHandle) -> None:
    """Stop an actor now (no restart); its pending calls fail with ActorDiedError."""
    core = api._get_core()
    core._run(lambda: core.io.kill_actor(actor._actor_id))


def get_actor(name: str) -> ActorHandle:
    """The handle of a named actor, from any driver of the cluster."""
    core = api._get_core()
    info = api.wait_for_actor_info(name)
    record = _borrow(core, info["actor_id"], info.get("class_name", "Actor"), name,
                     info["node_id"], info.get("epoch", 0))
    return ActorHandle(record.actor_id, record.class_name, name)


def _borrow(core, actor_id: bytes, class_name: str, name: str | None, node_id: str,
            epoch: int) -> ActorRecord:
    """Register, in this process, an actor another process owns: it runs on `node_id`
    after `epoch` restarts."""
    record = ActorRecord(actor_id, None, 0, name, False, class_name)
    record.node_id, record.state, record.epoch = node_id, "alive", epoch
    api.register_actor(core, record)
    return record
