"""The driver side of the runtime: one DriverCore per program. The user's threads build
task specs and wait on objects; one IO thread owns every socket (control service, node
agents), places tasks on nodes, resolves dependencies, retries, restarts actors and
receives results. Objects are reference counted by ObjectRef lifetimes."""
from __future__ import annotations

import collections
import itertools
import logging
import socket
import threading
import time
import uuid
from concurrent.futures import Future

import zmq

from runtime.protocol import frames as protocol
from runtime.protocol import rpc, version
from runtime.driver.loop import Call, fail_queued_commands
from runtime.driver.records import ActorRecord, Entry, TaskRecord
from runtime.errors import DriverIOError, RuntimeConnectionError
from runtime.node.keys import MissingKeysError
from runtime.agent.store import BUFFER_POOL

log = logging.getLogger("corral.driver")


class DriverCore:
    def __init__(self, control_address: str, keys, home_node_id: str | None = None,
                 connect_timeout_s: float = 15.0, log_to_driver: bool = True):
        self.driver_id = uuid.uuid4().hex[:16]
        self.id_prefix = bytes.fromhex(self.driver_id[:16])
        self.counter = itertools.count(1)
        self.control_address = control_address
        self.keys = keys
        self.home_node_id = home_node_id
        self.log_to_driver = log_to_driver
        self.hostname = socket.gethostname()
        self.identity = b"D" + self.driver_id.encode()
        if keys is None:     # before any socket: there is no unauthenticated connection
            raise MissingKeysError(None)
        started_s = time.monotonic()
        self.ctx = zmq.Context()
        try:     # the head proves it holds the cluster's key before we read from it
            self.control = protocol.connect_authenticated(
                self.ctx, f"tcp://{control_address}", keys, self.identity,
                connect_timeout_s)
        except BaseException:
            protocol.destroy_context(self.ctx)      # no other thread uses it yet
            raise
        self.wake_in = self.ctx.socket(zmq.PAIR)
        self.wake_in.bind(f"inproc://wake-{self.driver_id}")
        self.wake_out = self.ctx.socket(zmq.PAIR)
        self.wake_out.connect(f"inproc://wake-{self.driver_id}")
        self.wake_lock = threading.Lock()
        self.wake_pending = False
        self.poller = zmq.Poller()
        self.poller.register(self.control, zmq.POLLIN)
        self.poller.register(self.wake_in, zmq.POLLIN)
        self.lock = threading.RLock()           # guards objects; cv waits on it
        self.cv = threading.Condition(self.lock)
        self.objects: dict[bytes, Entry] = {}
        self.unfinished: set[bytes] = set()      # ids of entries still PENDING
        self.stored_seq = 0    # counts results that arrived as "stored on a node"
        self.refcounts: dict[bytes, int] = {}
        self.ref_lock = threading.Lock()
        self.to_free: list[bytes] = []
        self.commands: collections.deque = collections.deque()
        self.nodes: dict[str, dict] = {}
        self.agents: dict[str, zmq.Socket] = {}
        self.inflight: collections.Counter = collections.Counter()
        self.tasks: dict[bytes, TaskRecord] = {}
        self.waiting: collections.deque = collections.deque()   # not placed yet
        self.dep_waiters: dict[bytes, list] = collections.defaultdict(list)
        self.actors: dict[bytes, ActorRecord] = {}
        self.sync_actors: dict[int, ActorRecord] = {}    # sync channel fd -> actor
        self.outgoing: dict[str, list] = collections.defaultdict(list)
        self.rpc_ids = itertools.count()
        self.rpc_futures: dict[int, Future] = {}
        self.running = True
        self.io_error = None      # set when the IO thread gives up (runtime.driver.loop)
        self.next_heartbeat = 0.0
        self.thread = threading.Thread(target=self._loop, name="corral-driver", daemon=True)
        self.thread.start()
        try:
            reply = self.call_control(
                "register_driver", driver_id=self.driver_id,
                protocol_version=version.PROTOCOL_VERSION,
                timeout_s=max(1.0, connect_timeout_s - (time.monotonic() - started_s)))
        except (version.ProtocolVersionError, rpc.RemoteCallError):   # it answered: say
            self.close(notify=False)                                  # what it said
            raise
        except RuntimeConnectionError:
            self.close(notify=False)
            raise RuntimeConnectionError(control_address, "no answer (not running, or "
                                         "the cluster key was refused)") from None
        self._run(lambda: self._learn_nodes(reply["nodes"]))

    # ------------------------------------------------------------ user-thread side
    def new_id(self) -> bytes:
        return self.id_prefix + next(self.counter).to_bytes(8, "little")

    def _run(self, command) -> None:
        """Queue a command for the IO thread. Once that thread gave up (DriverIOError,
        runtime.driver.loop), every call raises its error at once."""
        if self.io_error is not None:
            raise self.io_error
        self.commands.append(command)
        if self.io_error is not None:    # it gave up just now: none will run
            fail_queued_commands(self, self.io_error)
            raise self.io_error
        self._wake()

    def _wake(self) -> None:
        if not self.wake_pending:
            with self.wake_lock:
                self.wake_pending = True
                self.wake_out.send(b"")

    def call_control(self, method: str, timeout_s: float = 30.0, **kwargs):
        future: Future = Future()

        def send():
            request_id = next(self.rpc_ids)
            self.rpc_futures[request_id] = future
            rpc.send_request(self.control, request_id, method, kwargs)
        self._run(Call(send, future, f"the control call {method}"))
        try:
            ok, result = future.result(timeout_s)
        except TimeoutError:
            raise RuntimeConnectionError(self.control_address, f"no answer to {method} "
                                         f"within {timeout_s} s") from None
        return rpc.outcome(rpc.RpcReply(None, ok, result), self.control_address, method)

    def incref(self, object_id: bytes) -> None:
        with self.ref_lock:
            self.refcounts[object_id] = self.refcounts.get(object_id, 0) + 1

    def decref(self, object_id: bytes) -> None:
        with self.ref_lock:
            count = self.refcounts[object_id] - 1
            if count > 0:
                self.refcounts[object_id] = count
                return
            del self.refcounts[object_id]
        with self.lock:
            entry = self.objects.pop(object_id, None)
            self.unfinished.discard(object_id)
        if entry is None:
            return
        if entry.pooled and entry.value is not None:
            for buffer in entry.value.buffers:
                BUFFER_POOL.give(buffer)
        if entry.node_id is not None:
            with self.ref_lock:
                self.to_free.append((object_id, entry.node_id))
                if len(self.to_free) < 256:
                    return
            self._wake()

    def add_entry(self, object_id: bytes, entry: Entry) -> None:
        with self.lock:
            self.objects[object_id] = entry
            if entry.state == 0:
                self.unfinished.add(object_id)

    def submit(self, record: TaskRecord) -> None:
        """Hand a task (or actor creation/call) to the IO thread."""
        self._run(record)

    def wait_one(self, object_id: bytes, timeout_s: float | None) -> tuple[bool, Entry]:
        """wait_ready for one object (the sync get): -> (ready, entry or None)."""
        deadline = None
        requested = False
        with self.cv:
            while True:
                entry = self.objects.get(object_id)
                if entry is None or entry.state == 2 or \
                        (entry.state == 1 and entry.value is not None):
                    return True, entry
                if not requested and entry.needs_fetch:
                    requested = True
                    self._run(lambda: self._fetch(object_id))
                if timeout_s is not None:
                    if deadline is None:
                        deadline = time.monotonic() + timeout_s
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return False, entry
                    self.cv.wait(remaining)
                else:
                    self.cv.wait()

    def wait_ready(self, object_ids: list, num_ready: int, timeout_s: float | None,
                   fetch: bool = True):
        """Block until num_ready of object_ids are ready; with fetch, ready means the
        value (or error) is in this process, fetched from its node if needed.
        -> list of ready flags."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        requested = set()
        if not fetch:  # fast path: every entry already finished
            with self.cv:
                if self.unfinished.isdisjoint(object_ids):
                    return [True] * len(object_ids)
        flags = [False] * len(object_ids)
        pending = list(range(len(object_ids)))
        count = 0
        stored_seen = None
        with self.cv:
            while True:
                # When every remaining entry is needed, a pass may stop at the first one
                # not ready (results come mostly in order, so a wait on n refs costs
                # O(n), not O(n) per wake-up); it looks at all of them when values
                # stored on nodes arrived (fetches to ask for) and before returning.
                full = stored_seen != self.stored_seq or num_ready < len(object_ids)
                stored_seen = self.stored_seq
                pending, count = self._scan(object_ids, pending, flags, count, fetch,
                                            requested, stop_early=not full)
                if count >= num_ready:
                    return flags
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    if not full:
                        self._scan(object_ids, pending, flags, count, fetch, requested,
                                   stop_early=False)
                    return flags
                self.cv.wait(remaining)

    def _scan(self, object_ids, pending, flags, count, fetch, requested, stop_early):
        """One pass (cv held) over the pending indexes: flags the ready ones, asks for
        the fetches they need. -> (indexes still pending, count of ready ones)."""
        still = []
        for position, index in enumerate(pending):  # entries only move forward
            oid = object_ids[index]
            entry = self.objects.get(oid)
            if not fetch:
                ready = entry is None or entry.state != 0
            else:
                ready = entry is None or entry.local_ready
                if entry is not None and entry.needs_fetch and oid not in requested:
                    requested.add(oid)
                    self._run(lambda oid=oid: self._fetch(oid))
            if ready:
                flags[index] = True
                count += 1
            elif stop_early:
                still.extend(pending[position:])
                break
            else:
                still.append(index)
        return still, count

    def entry(self, object_id: bytes) -> Entry | None:
        with self.lock:
            return self.objects.get(object_id)

    def close(self, notify: bool = True) -> None:
        if notify and self.running:
            try:     # idle leases go back before the control service says we are gone
                self._run(lambda: self.io.leases.return_all())
            except DriverIOError:
                pass
            try:
                self.call_control("driver_exit", timeout_s=2.0, driver_id=self.driver_id)
            except (RuntimeConnectionError, DriverIOError):
                pass  # the control service or the IO thread is gone: the control
                # service drops this driver by itself
        self.running = False
        self._wake()
        self.thread.join(5)
        if self.thread.is_alive():
            # stuck in a socket call: destroying the context under it would abort the
            # process (libzmq asserts on a socket closed while another thread uses it)
            log.warning("the driver's IO thread did not stop within 5 s; its sockets "
                        "are left to process exit")
            return
        for actor in list(self.sync_actors.values()):
            if actor.sync is not None:
                actor.sync.close()
        protocol.destroy_context(self.ctx)

    # ------------------------------------------------------------ IO thread
    def _loop(self) -> None:
        from runtime.driver import io_thread as driver_io
        from runtime.driver import loop as driver_loop
        self.io = driver_io.DriverIO(self)
        driver_loop.serve(self, self.io)   # survives bad events; see runtime.driver.loop

    def _learn_nodes(self, table) -> None:
        self.io.learn_nodes(table)

    def _fetch(self, object_id: bytes) -> None:
        self.io.fetch(object_id)
