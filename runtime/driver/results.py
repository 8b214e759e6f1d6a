"""Results, failures, retries and actor restarts, on the driver's IO thread: what
comes back from node agents and actor workers, and what follows from it (objects
become ready, dependents are placed, failed work retried or failed)."""
from __future__ import annotations

import logging
import sys

from runtime.protocol import frames as protocol
from runtime.protocol import rpc
from runtime.protocol.kinds import Kind
from runtime.driver.records import FAILED, READY, TaskRecord, user_error
from runtime.errors import (ActorDiedError, DriverIOError, ObjectLostError,
                            ObjectStoreFullError, RuntimeSystemError, TaskError)
from runtime.protocol.frames import Serialized
from runtime.protocol.kinds import Kind
from runtime.protocol.tasks import (ACTOR_DIED, ERROR, LOG, LOST, OK, RETURNED, STORE_FULL,
                                    STORED, WORKER_DIED, WORKER_ROOM, result_of)

log = logging.getLogger("corral.driver")


class ResultsMixin:
    """Part of DriverIO (runtime.driver.io_thread): results and failures."""

    def handle(self, sock, kind: bytes, header, frames) -> None:
        core = self.core
        if sock is core.control:
            if kind == Kind.REPLY:
                reply = rpc.reply_of(header)
                future = core.rpc_futures.pop(reply.request_id, None)
                if future is not None:    # its caller turns it into a value or error
                    future.set_result((reply.ok, reply.result))
                    return
                try:         # a heartbeat's answer (no one waits for it)
                    result = rpc.outcome(reply, core.control_address, "a control call")
                except RuntimeSystemError as error:   # RemoteCallError and kin
                    log.warning("%s", error)
                    return
                if isinstance(result, dict) and "nodes" in result:
                    self.learn_nodes(result["nodes"])
            elif kind == Kind.NODES:
                self.learn_nodes(header)
        elif kind == Kind.LEASED:
            self.leases.granted(header)
        elif kind == Kind.LEASE_REVOKED:
            self.leases.revoked(header)
        elif kind == Kind.RESULTS:
            with core.cv:
                for item in header:
                    try:
                        self._result(item, frames)
                    except Exception as error:   # this entry fails, not the thread
                        self._result_failed(item, error)
                core.cv.notify_all()
            self._drain()
        elif kind == Kind.OBJECT:
            self._fetched(header, frames)

    def _result(self, item, frames) -> None:
        """One entry of a results message (a runtime.protocol.tasks result record)."""
        core = self.core
        entry = result_of(item)
        task_id, status = entry.task_id, entry.status
        if status == LOG:
            self._print(entry.node_id, entry.pid, entry.text, entry.stream)
            return
        if status == WORKER_ROOM:      # an agent at its worker bound has room again
            self.worker_room(entry.node_id, entry.room)
            return
        record = core.tasks.pop(task_id, None)
        if record is None:
            if status == STORED:
                self.frees[entry.node_id].append(task_id)
            elif status == ACTOR_DIED:   # an actor that had been created died
                actor = core.actors.get(entry.actor_id)
                if actor is not None and actor.create is not None and \
                        actor.create.task_id == task_id and actor.state != "dead":
                    self._actor_failed(actor, entry.cause)
            return
        if record.kind == "task":
            core.inflight[record.node_id] -= 1
            if record.lease is not None:
                self.leases.answered(record, status)
        elif record.kind == "actor_call" and record.direct:
            actor = core.actors.get(record.actor_id)
            if actor is not None and actor.direct_inflight > 0:
                actor.direct_inflight -= 1
            if actor is not None and actor.sync_task == task_id:
                actor.sync_task = None           # the held calls may go now
                if actor.held:
                    core.outgoing[("actor", actor.actor_id)].extend(actor.held)
                    actor.held = []
        elif record.kind == "actor_call":
            actor = core.actors.get(record.actor_id)
            if actor is not None and actor.via_agent > 0:
                actor.via_agent -= 1
        if status == OK or status == ERROR:
            data, _, count = entry.packed
            base = entry.base
            value = Serialized(data, [f.buffer for f in frames[base:base + count]])
            if status == ERROR:
                self._fail(record, user_error(record.name, value))
            elif record.kind == "actor_create":
                actor = core.actors.get(record.actor_id)
                if actor is not None and actor.create is record:
                    actor.state = "alive"
                    self._connect_direct(actor, value)
                    self.publish_actor(actor, "up")
            else:
                self._complete(task_id, value=value)
        elif status == STORED:
            self._complete(task_id, node_id=entry.node_id)
        elif status == WORKER_DIED:
            self._retry(record, entry.cause, None)
        elif status == ACTOR_DIED:
            actor = core.actors.get(record.actor_id)
            if record.kind == "actor_create":
                if actor is not None and actor.create is record:
                    self._actor_failed(actor, entry.cause)
            else:
                known = actor.error if actor is not None and actor.state == "dead" else None
                self._fail(record, known or ActorDiedError(record.actor_id.hex(),
                                                           entry.cause))
                if actor is not None and not actor.owned and actor.state == "alive":
                    self.relocate(actor, entry.cause)     # its owner may restart it
        elif status == LOST:
            self._fail(record, ObjectLostError(entry.object_id.hex(),
                                               f"on node {entry.node_id}"))
        elif status == STORE_FULL:     # (runtime.agent.objects)
            self._fail(record, ObjectStoreFullError(entry.node_id, entry.reason))
        elif status == RETURNED:   # with a notice: the agent's worker bound was why
            if isinstance(entry.notice, dict):
                self.turned_away(entry.node_id, entry.notice)
            self._returned(record, node_id=entry.node_id, draining=entry.draining)

    def _result_failed(self, item, error: Exception) -> None:
        """One entry of a results message could not be handled: logged, and the object
        it was for fails with DriverIOError (its get() raises instead of waiting)."""
        core = self.core
        task_id = item[0] if isinstance(item, (tuple, list)) and item else None
        what = f"the result of {task_id.hex() if isinstance(task_id, bytes) else task_id!r}"
        log.error("the driver's IO thread failed on %s (it goes on)", what,
                  exc_info=error)
        failure = DriverIOError(what, f"{type(error).__name__}: {error}")
        if not isinstance(task_id, bytes):
            return
        record = core.tasks.pop(task_id, None)
        if record is not None:
            if record.kind == "task" and record.node_id is not None:
                core.inflight[record.node_id] -= 1     # it is answered, if badly
            if record.lease is not None:
                self.leases.answered(record, "")
            try:
                self._fail(record, failure, lock=False)
                return
            except Exception:
                log.exception("could not fail %s either", record.name)
        entry = core.objects.get(task_id)
        if entry is not None and not entry.local_ready:
            entry.state, entry.error = FAILED, failure
            core.unfinished.discard(task_id)

    def _returned(self, record: TaskRecord, node_id: str, draining: bool) -> None:
        """A node agent handed work back unstarted: it is draining, or this driver
        reclaimed queued tasks for a node that joined. Placed again (not a retry)."""
        node = self.core.nodes.get(node_id)
        if draining and node is not None:
            node["draining"] = True       # until the control service's table says else
        record.node_id = None
        if record.kind == "actor_create":
            actor = self.core.actors.get(record.actor_id)
            if actor is None or actor.create is not record or actor.state != "creating":
                return
            actor.node_id, actor.state = None, "pending"
        self.place(record)

    def _print(self, node_id, pid, text, stream) -> None:
        if not self.core.log_to_driver:
            return
        out = sys.stderr if stream == "stderr" else sys.stdout
        forward = getattr(out, "forward_log", None)
        if forward is not None:  # this driver is a task in a worker: its driver prints
            forward(node_id, pid, text)
            return
        prefix = f"({node_id[:12]} pid={pid}) "
        out.write("".join(prefix + line + "\n" for line in text.rstrip("\n").split("\n")))
        out.flush()

    def _complete(self, object_id: bytes, value=None, node_id=None) -> None:
        core = self.core
        with core.cv:
            entry = core.objects.get(object_id)
            if entry is None:
                if node_id is not None:
                    self.frees[node_id].append(object_id)
                return
            entry.value, entry.node_id, entry.state = value, node_id, READY
            core.unfinished.discard(object_id)
            if value is None:      # stored on its node: waiters look for fetches to ask
                core.stored_seq += 1
            core.cv.notify_all()
        self._wake_dependents(object_id)

    def _fail(self, record: TaskRecord, error: BaseException, lock: bool = True) -> None:
        core = self.core
        if record.kind == "actor_create":
            actor = core.actors.get(record.actor_id)
            if actor is not None and actor.create is record:
                self._actor_dead(actor, ActorDiedError(record.actor_id.hex(),
                                                       f"creation failed: {error}"))
            return
        if lock:
            core.cv.acquire()
        try:
            entry = core.objects.get(record.task_id)
            if entry is not None:
                entry.state, entry.error = FAILED, error
                core.unfinished.discard(record.task_id)
                core.cv.notify_all()
        finally:
            if lock:
                core.cv.release()
        if lock:
            self._wake_dependents(record.task_id)
        else:
            core._run(lambda: self._wake_dependents(record.task_id))

    def _wake_dependents(self, object_id: bytes) -> None:
        for record in self.core.dep_waiters.pop(object_id, ()):
            record.deps.discard(object_id)
            if not record.deps:
                self.place(record)

    def _retry(self, record: TaskRecord, cause: str, final_error) -> None:
        if record.retries_left > 0:
            record.retries_left -= 1
            record.last_cause = cause
            record.node_id = None
            self.place(record)
        else:
            self._fail(record, final_error or TaskError(record.name, cause))

    def _actor_failed(self, actor, cause: str) -> None:
        core = self.core
        if not actor.owned and actor.state != "killed":
            self.relocate(actor, cause)     # a borrowed handle: follow its owner's restart
            return
        self._close_direct(actor)
        if actor.state != "killed" and actor.restarts_left > 0 and actor.create is not None:
            actor.restarts_left -= 1
            actor.epoch += 1
            old = actor.create
            new = TaskRecord(core.new_id(), "actor_create", old.name, old.fn, old.fn_id,
                             old.args, old.kwargs, old.shape, actor_id=old.actor_id,
                             detached=old.detached)
            actor.create, actor.node_id, actor.state = new, None, "pending"
            self.publish_actor(actor, "restarting")
            self.place(new)
            return
        self._actor_dead(actor, ActorDiedError(actor.actor_id.hex(), cause))

    def _actor_dead(self, actor, error: BaseException) -> None:
        self._close_direct(actor, error)
        if actor.state != "killed":
            actor.state = "dead"
        actor.error = error
        calls, actor.waiting_calls = actor.waiting_calls, []
        for call in calls:
            self._fail(call, error)
        if actor.owned:
            self.publish_actor_gone(actor)

    def kill_actor(self, actor_id: bytes) -> None:
        actor = self.core.actors.get(actor_id)
        if actor is None:
            return
        actor.state = "killed"
        sock = self.core.agents.get(actor.node_id) if actor.node_id else None
        if sock is not None:
            protocol.send(sock, Kind.KILL_ACTOR, actor_id)
        else:
            self._actor_dead(actor, ActorDiedError(actor_id.hex(), "killed by kill()"))
