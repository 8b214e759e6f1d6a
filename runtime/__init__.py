"""corral's task runtime, Ray-shaped: `import runtime; runtime.init();
@runtime.remote ...; runtime.get(...)`."""
from runtime.api import (ObjectRef, available_resources, cluster_resources, get, init,
                         is_initialized, nodes, put, request_resources, shutdown, wait)
from runtime.errors import (ActorDiedError, GetTimeoutError, NodeDiedError,
                            ObjectLostError, RuntimeSystemError, TaskError)
from runtime.remote import ActorHandle, get_actor, kill, remote

__all__ = ["init", "shutdown", "is_initialized", "remote", "get", "put", "wait", "kill",
           "get_actor", "cluster_resources", "available_resources", "nodes",
           "request_resources", "ObjectRef", "ActorHandle", "RuntimeSystemError",
           "TaskError", "ActorDiedError", "NodeDiedError", "GetTimeoutError",
           "ObjectLostError"]
