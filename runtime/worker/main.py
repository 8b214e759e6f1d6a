"""A worker process: runs tasks (or hosts one actor) for its node agent, over the agent's
local ipc socket; a leasable task worker (--leasable) also runs the tasks of the driver
that leased it (runtime.protocol.leases, runtime.worker.leased), sent straight to its
direct socket. Its stdout/stderr go to the driver of the task it runs. It runs each
task with that task's GPU ids in CUDA_VISIBLE_DEVICES (an actor: with its own, from its
start to its end; runtime.node.gpus)."""
from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
import threading
import traceback

import zmq

from runtime import api
from runtime.driver import objects as driver_objects
from runtime.node import gpus
from runtime.driver import nested_refs
from runtime.protocol import codec
from runtime.protocol import frames as protocol
from runtime.protocol import sync_channel
from runtime.protocol.frames import INLINE_LIMIT_BYTES, Packer, serialize, unpack_value
from runtime.protocol.kinds import Kind
from runtime.protocol.tasks import (ACTOR_CALL, ACTOR_CREATE, ResultValue, TaskMessage,
                                    message_of)
from runtime.protocol.workers import WorkerLog
from runtime.worker.leased import LeasedServing
from runtime.worker.process import DriverOutput, die_with_parent, exit_when_reparented

__all__ = ["Worker", "main", "remote_error", "die_with_parent", "exit_when_reparented"]

log = logging.getLogger("corral.worker")
_TAKEN = frozenset((Kind.TASK, Kind.EXIT))    # what a worker is sent
class Worker(LeasedServing):
    def __init__(self, endpoint: str, worker_id: str, direct: bool = False,
                 leasable: bool = False):
        """direct: an actor's worker; leasable: a task worker that drivers may lease.
        Both take tasks from drivers on this host on a direct socket and a sync channel."""
        self.ctx = zmq.Context()
        self.hosts_actor = direct
        self.node_id = os.environ.get("CORRAL_NODE_ID", "")
        self.direct = None
        self.direct_endpoint = None
        self.sync_path = None
        self.sync_listener = None
        self.sync_conns: dict[int, socket.socket] = {}
        if direct or leasable:  # local drivers may call it without the agent in between
            directory = os.path.dirname(protocol.ipc_path(endpoint))
            role = "actor" if direct else "task"
            self.direct_endpoint = protocol.ipc_endpoint(directory, f"{role}-{worker_id}")
            self.direct = protocol.bind_router(self.ctx, self.direct_endpoint, None)
            self.sync_path = sync_channel.endpoint_path(directory, worker_id, role)
            self.sync_listener = sync_channel.listen(self.sync_path)
        self.sock = protocol.connect_dealer(self.ctx, endpoint, None,
                                            b"W" + worker_id.encode())
        self.lock = threading.Lock()
        self.functions: dict[bytes, object] = {}
        self.actor = None
        self.driver = ""
        self.blocked_depth = 0      # get()/wait() calls of the running task now waiting
        self.exit_requested = False

    def send_log(self, text: str, stream: str, origin: tuple[str, int] | None = None) -> None:
        """`origin`: (node id, pid) of the process that printed it, when not this one."""
        line = WorkerLog(self.driver, text, stream) if origin is None else \
            WorkerLog(self.driver, text, stream, *origin)
        with self.lock:
            protocol.send(self.sock, Kind.LOG, tuple(line))

    def run(self) -> None:
        with self.lock:
            protocol.send(self.sock, Kind.READY, os.getpid())
        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        if self.direct is not None:
            poller.register(self.direct, zmq.POLLIN)
        if self.sync_listener is not None:
            poller.register(self.sync_listener.fileno(), zmq.POLLIN)
        while True:
            for sock, _ in poller.poll():
                if type(sock) is int:
                    self._serve_sync(sock, poller)
                elif sock is self.sock:
                    received = self._receive(self.sock, routed=False)
                    if received is None:
                        continue
                    _, kind, task, frames = received
                    if kind == Kind.EXIT:
                        self._close()
                        return
                    if not self.hosts_actor:   # a task worker: this task's GPUs, or none
                        gpus.assign(task.gpu_ids)
                    ok, result = self._run_task(task, frames)
                    with self.lock:   # a large result goes in pieces (driver_objects)
                        driver_objects.send_result(self.sock, task, ok, result)
                    if self.exit_requested:   # asked while the task was blocked
                        self._close()
                        return
                elif self.hosts_actor:
                    self._serve_direct()
                elif self._serve_leased():
                    self._close()
                    return

    @staticmethod
    def _receive(sock, routed: bool, flags: int = 0):
        """(identity, kind, record, frames) of the next task (or Kind.EXIT); None
        (logged) for a message that does not parse or is neither: the worker goes on.
        zmq.Again as recv."""
        try:
            identity, kind, header, frames = codec.receive(sock, routed, flags)
        except protocol.MalformedMessageError as error:
            log.warning("dropped: %s", error)
            return None
        if kind not in _TAKEN:
            log.warning("dropped a %r message: a worker takes tasks", kind)
            return None
        return identity, kind, header, frames

    # -- a task blocked in get()/wait() (runtime.api.set_blocking_hooks) --------------------
    def blocked_enter(self) -> None:
        """The agent lends this task's resources to other work until blocked_leave."""
        with self.lock:
            self.blocked_depth += 1
            if self.blocked_depth == 1:
                protocol.send(self.sock, Kind.BLOCKED, None)

    def blocked_leave(self) -> None:
        with self.lock:
            self.blocked_depth -= 1
            if self.blocked_depth == 0:
                protocol.send(self.sock, Kind.UNBLOCKED, None)

    def blocked_tick(self) -> None:
        """Tasks the agent queued here early (the next one of the same shape) go back to
        it: waiting behind this task, one of them could be the very task it waits for."""
        with self.lock:
            if self.direct is not None and not self.hosts_actor:
                self._return_leased()
            while True:
                try:
                    received = self._receive(self.sock, False, zmq.NOBLOCK)
                except zmq.Again:
                    return
                if received is None:
                    continue
                kind, task = received[1], received[2]
                if kind == Kind.EXIT:
                    self.exit_requested = True
                else:
                    protocol.send(self.sock, Kind.RETURNED, task.task_id)

    def _close(self) -> None:
        for path in (self.direct_endpoint and protocol.ipc_path(self.direct_endpoint),
                     self.sync_path):
            if path:
                try:
                    os.unlink(path)
                except OSError:
                    pass

    def _serve_sync(self, fd: int, poller: zmq.Poller) -> None:
        """A sync call from a driver on this host (runtime.protocol.sync_channel); the answer
        goes back the same way, or over the ZeroMQ direct socket when it is large."""
        if fd == self.sync_listener.fileno():
            conn, _ = self.sync_listener.accept()
            self.sync_conns[conn.fileno()] = conn
            poller.register(conn.fileno(), zmq.POLLIN)
            return
        conn = self.sync_conns[fd]
        try:
            header = sync_channel.receive(conn)
        except OSError:
            header = None
        if header is None:                       # the driver went away
            poller.unregister(fd)
            del self.sync_conns[fd]
            conn.close()
            return
        try:
            task = message_of(header)
        except ValueError as error:
            log.warning("dropped a sync-channel message: %s", error)
            return
        if not self.hosts_actor:
            gpus.assign(())       # leases are never for GPU tasks
        ok, result = self._run_task(task, [])
        if not self.hosts_actor and ok and result.size_bytes > INLINE_LIMIT_BYTES:
            with self.lock:   # a leased task's large result: into the agent's store
                driver_objects.send_result(self.sock, task, ok, result)
            return
        packer = Packer()
        entries = [tuple(ResultValue.of(task.task_id, ok, packer.value(result)))]
        message = None if packer.frames else sync_channel.encode(entries)
        if message is not None:
            conn.send(message)
            return
        with self.lock:
            protocol.send(self.direct, Kind.RESULTS, entries, packer.frames,
                          identity=task.reply_to)

    def _serve_direct(self) -> None:
        """Actor calls sent straight here by a driver on this node: run every call
        already queued, then answer them in one Kind.RESULTS message."""
        replies: dict[bytes, tuple[list, Packer]] = {}
        while True:
            try:   # no poll() per message: a non-blocking receive says when none is left
                received = self._receive(self.direct, routed=True, flags=zmq.NOBLOCK)
            except zmq.Again:
                break
            if received is None:
                continue
            identity, kind, task, frames = received
            if kind != Kind.TASK:     # (an exit comes from the agent, not here)
                continue
            ok, result = self._run_task(task, frames)
            entries, packer = replies.setdefault(identity, ([], Packer()))
            base = len(packer.frames)
            packed = packer.value(result)
            entries.append(tuple(ResultValue.of(task.task_id, ok, packed, base)))
        for identity, (entries, packer) in replies.items():
            with self.lock:
                protocol.send(self.direct, Kind.RESULTS, entries, packer.frames,
                              identity=identity)

    def _run_task(self, task: TaskMessage, frames: list):
        self.driver = task.driver
        ok, result = self._execute(task, frames)
        sys.stdout.flush()
        sys.stderr.flush()
        if ok and task.kind == ACTOR_CREATE and self.direct is not None:
            result = serialize({"direct": self.direct_endpoint, "sync": self.sync_path,
                                "hostname": socket.gethostname()})
        return ok, result

    @staticmethod
    def _arguments(packed_args: list, packed_kwargs: dict, frames: list
                   ) -> tuple[list, dict]:
        return ([unpack_value(a, frames).value() for a in packed_args],
                {k: unpack_value(v, frames).value() for k, v in packed_kwargs.items()})

    def _execute(self, task: TaskMessage, frames: list):
        try:
            packed_kwargs = dict(task.kwargs)   # (the received message stays as it came)
            nested = nested_refs.take_nested(packed_kwargs)
            if nested:   # refs inside the arguments: see runtime.driver.nested_refs
                with nested_refs.resolving({index: unpack_value(packed, frames)
                                            for index, packed in nested.items()}):
                    args, kwargs = self._arguments(task.args, packed_kwargs, frames)
            else:
                args, kwargs = self._arguments(task.args, packed_kwargs, frames)
            kind = task.kind
            if kind == ACTOR_CALL:
                if self.actor is None:
                    raise RuntimeError("this worker hosts no actor")
                value = getattr(self.actor, task.method)(*args, **kwargs)
            else:
                code = self.functions.get(task.fn_id)
                if code is None:
                    code = self.functions[task.fn_id] = protocol.pickle.loads(task.fn)
                value = code(*args, **kwargs)
                if kind == ACTOR_CREATE:
                    self.actor, value = value, None
            return True, serialize(value)
        except BaseException as error:  # user code: everything goes back to get()
            return False, serialize(remote_error(error, traceback.format_exc()))


def remote_error(error: BaseException, text: str) -> tuple:
    """(type name, message, traceback text, pickled exception or None): the text parts
    always reach get(); the exception object only when it survives a pickle round trip
    here (an exception class whose __init__ takes other arguments than it passes to
    Exception does not), so a driver never fails to decode the error itself."""
    import cloudpickle
    try:
        pickled = cloudpickle.dumps(error)
        cloudpickle.loads(pickled)
    except Exception:
        pickled = None
    return type(error).__name__, str(error), text, pickled


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="runtime.worker.main")
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--worker-id", required=True)
    parser.add_argument("--direct", action="store_true",
                        help="actor worker: also accept calls from local drivers")
    parser.add_argument("--leasable", action="store_true",
                        help="task worker: drivers on this host may lease it")
    parser.add_argument("--parent-pid", type=int,
                        help="the node agent's pid: exit at once if it is already gone")
    parser.add_argument("--gpu-ids", default="",
                        help="an actor's GPU ids (comma-separated), kept for its life")
    args = parser.parse_args(argv)
    gpus.assign(args.gpu_ids.split(",") if args.gpu_ids else ())
    die_with_parent(args.parent_pid)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    # A task that calls remote functions or actors connects to the cluster on first use.
    api.connect_on_first_use()
    worker = Worker(args.endpoint, args.worker_id, args.direct, args.leasable)
    if not args.direct:   # an actor keeps its resources for its whole life
        api.set_blocking_hooks(worker.blocked_enter, worker.blocked_leave,
                               worker.blocked_tick)
    sys.stdout = DriverOutput(worker, "stdout")
    sys.stderr = DriverOutput(worker, "stderr")
    worker.run()


if __name__ == "__main__":
    main()
