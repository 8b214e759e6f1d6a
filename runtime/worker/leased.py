"""A task worker leased by a driver on its host (runtime.protocol.leases): the tasks the
driver sends straight to its direct socket (a mixin of runtime.worker.main.Worker)."""
from __future__ import annotations

import time

import zmq

from runtime.driver import objects as driver_objects
from runtime.node import gpus
from runtime.protocol import frames as protocol
from runtime.protocol import sync_channel
from runtime.protocol.frames import INLINE_LIMIT_BYTES, Packer
from runtime.protocol.kinds import Kind
from runtime.protocol.tasks import Returned, ResultValue, message_of

# A leased worker answers the tasks it ran at once when none is queued, and at the
# latest this long after the first unanswered one ended.
LEASED_ANSWER_DELAY_S = 0.002


class LeasedServing:
    def _return_leased(self) -> None:
        """(lock held; from blocked_tick) Tasks the driver queued here while this
        worker's task waits in get() go back to it as Returned entries (one of them
        could be what it waits for); the driver places them again, elsewhere."""
        while True:
            try:
                received = self._receive(self.direct, True, zmq.NOBLOCK)
            except zmq.Again:
                return
            if received is not None and received[1] == Kind.TASK:
                entry = Returned.of(received[2].task_id, self.node_id, False)
                protocol.send(self.direct, Kind.RESULTS, [tuple(entry)],
                              identity=received[0])
        for conn in list(self.sync_conns.values()):     # and those on sync channels
            for header in sync_channel.receive_waiting(conn):
                try:
                    task = message_of(header)
                except ValueError:
                    continue
                entry = Returned.of(task.task_id, self.node_id, False)
                conn.send(sync_channel.encode([tuple(entry)]))

    def _serve_leased(self) -> bool:
        """Tasks sent here by the driver that leased this worker: each runs, and the
        answers go back together when no task is queued (or LEASED_ANSWER_DELAY_S
        after the first one waiting), so a short task's answer does not wait behind a
        long task. A large result goes into the agent's store (Kind.DONE, as for the
        agent's tasks), which tells the driver where it is. -> True when the agent
        asked this worker to exit while a task was blocked."""
        replies: dict[bytes, tuple[list, Packer]] = {}
        first_done_s = None
        while True:
            if replies and time.monotonic() - first_done_s >= LEASED_ANSWER_DELAY_S:
                self._send_replies(replies)
                replies, first_done_s = {}, None
            try:
                received = self._receive(self.direct, routed=True, flags=zmq.NOBLOCK)
            except zmq.Again:
                break
            if received is None or received[1] != Kind.TASK:
                continue
            identity, _, task, frames = received
            gpus.assign(())       # leases are never for GPU tasks
            ok, result = self._run_task(task, frames)
            if ok and result.size_bytes > INLINE_LIMIT_BYTES:
                with self.lock:
                    driver_objects.send_result(self.sock, task, ok, result)
            else:
                entries, packer = replies.setdefault(identity, ([], Packer()))
                base = len(packer.frames)
                entries.append(tuple(ResultValue.of(task.task_id, ok,
                                                    packer.value(result), base)))
                if first_done_s is None:
                    first_done_s = time.monotonic()
            if self.exit_requested:
                break
        self._send_replies(replies)
        return self.exit_requested

    def _send_replies(self, replies: dict) -> None:
        for identity, (entries, packer) in replies.items():
            with self.lock:
                protocol.send(self.direct, Kind.RESULTS, entries, packer.frames,
                              identity=identity)

