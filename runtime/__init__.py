"""corral's task runtime: ZeroMQ + cloudpickle, with a Ray-shaped API.

    import runtime
    runtime.init()                       # or init(address="auto") / init("HOST:PORT")

    @runtime.remote(num_cpus=1, max_retries=3)
    def square(x):
        return x * x

    @runtime.remote(max_restarts=1)
    class Counter:
        def __init__(self):
            self.n = 0
        def add(self, k):
            self.n += k
            return self.n

    refs = [square.remote(i) for i in range(10)]
    print(runtime.get(refs))
    counter = Counter.options(name="counter").remote()
    runtime.get(counter.add.remote(runtime.put(5)))

Processes (see DESIGN.md "Runtime"): runtime.control.service (one per cluster, on the head:
node table, resource view, named actors, KV, drivers, aggregated pending demand — the
load structure is documented in runtime.control.service), runtime.agent.main/runtime.agent.service (one per
node: worker pool, resources, local object store, heartbeats), runtime.worker.main, and
drivers (runtime.driver.core + runtime.driver.io_thread). Wire format and authentication:
runtime.protocol.frames. `corral start`/`corral stop`: runtime.cli and runtime.node.startup (which
also documents the autoscaler-monitor hook). Tools read the load with runtime.state.

`init()` without an address connects to this node's runtime when one runs
($CORRAL_NODE_DIR/session/address.json), else starts an embedded one-node runtime
(loopback only, CurveZMQ with a key pair of its own) that stops when the program exits.

ObjectRefs passed as task arguments (positional or keyword) are replaced by their
values; refs inside arguments (a list of refs...) reach the task as refs whose values
are already there, and refs inside a put() value or a task's result carry a copy of
their values (runtime.driver.nested_refs).

Each node keeps at most `object_store_memory` bytes of objects in memory (`corral start
--object-store-memory`, init(object_store_memory=) for the embedded runtime; default 30 %
of its memory) and spills the least recently used to its disk, reading them back when
they are needed (runtime.agent.store, runtime.agent.spill); an object neither can hold fails the
tasks that need it with ObjectStoreFullError.

Limits: Results of actor calls
made directly (driver on the actor's host) come back inline whatever their size. An
object on a node that died is lost (ObjectLostError), not reconstructed.
"""
from runtime.api import (ObjectRef, available_resources, cluster_resources, get,
                         get_gpu_ids, init, is_initialized, nodes, put, request_resources,
                         shutdown, wait)
from runtime.errors import (ActorDiedError, GetTimeoutError, NodeDiedError,
                            ObjectLostError, ObjectStoreFullError, RuntimeSystemError,
                            TaskError)
from runtime.remote import ActorHandle, get_actor, kill, remote

__all__ = ["init", "shutdown", "is_initialized", "remote", "get", "put", "wait", "kill",
           "get_actor", "cluster_resources", "available_resources", "nodes",
           "request_resources", "get_gpu_ids", "ObjectRef", "ActorHandle",
           "RuntimeSystemError", "TaskError", "ActorDiedError", "NodeDiedError",
           "GetTimeoutError", "ObjectLostError", "ObjectStoreFullError"]
