"""The driver's IO thread loop (DriverCore._loop runs `serve`): poll the sockets, handle
what arrived, run the commands the user's threads queued, then the periodic steps
(timers, frees, sending, heartbeats).

The thread never dies of one bad event. A message, command or step that raises is
logged, and the calls that depended on it fail with DriverIOError: a command's waiting
caller (a `Call`), a task record's result, the entries of a results message (see
runtime.driver.results). The thread gives up only when it cannot go on: the poller
itself fails, an error that is not an Exception escapes, or a periodic step fails
every time it runs for GIVE_UP_AFTER_S. Then `give_up` fails every pending call at once, and every
later call raises (DriverCore._run), instead of waiting for timeouts that explain
nothing."""
from __future__ import annotations

import logging
import time
import traceback
from concurrent.futures import Future

import zmq

from runtime.protocol import codec
from runtime.protocol import frames as protocol
from runtime.driver.records import FAILED, PENDING, TaskRecord
from runtime.errors import DriverIOError

log = logging.getLogger("corral.driver")

HEARTBEAT_INTERVAL_S = 0.5
EARLY_HEARTBEAT_S = 0.05  # a newly waiting shape is reported this soon after the last one
GIVE_UP_AFTER_S = 10.0    # a periodic step failing every time for this long: give up
GIVE_UP_MIN_TIMES = 3     # (and at least this many times)
BATCH = 1000              # non-blocking receives per socket per round


class Call:
    """A command whose caller waits on `future`: if running it raises, the future gets
    the error at once (the caller does not wait for its timeout)."""

    __slots__ = ("fn", "future", "what")

    def __init__(self, fn, future: Future, what: str):
        self.fn, self.future, self.what = fn, future, what

    def __call__(self) -> None:
        self.fn()

    def fail(self, error: BaseException) -> None:
        if not self.future.done():
            self.future.set_exception(error)


def describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


def fail_command(core, command, error: DriverIOError) -> None:
    """The caller of a command that failed (or will never run) gets the error: a Call's
    future, a task record's result entry. Other commands have no waiting caller."""
    if isinstance(command, TaskRecord):
        core.tasks.pop(command.task_id, None)
        with core.cv:
            entry = core.objects.get(command.task_id)
            if entry is not None and entry.state == PENDING:
                entry.state, entry.error = FAILED, error
                core.unfinished.discard(command.task_id)
            core.cv.notify_all()
    elif isinstance(command, Call):
        command.fail(error)


def fail_queued_commands(core, error: DriverIOError) -> None:
    """Every command still queued fails (the IO thread will never run them). Safe from
    any thread: each command is taken off the queue exactly once."""
    while True:
        try:
            command = core.commands.popleft()
        except IndexError:
            return
        fail_command(core, command, error)


class Serve:
    """One IO thread's loop over a DriverCore and its DriverIO."""

    def __init__(self, core, io):
        self.core = core
        self.io = io
        self.step_failures: dict[str, list] = {}   # step -> [first failure, count]

    def run(self) -> None:
        core = self.core
        try:
            while core.running:
                events = core.poller.poll(50)
                for sock, _ in events:
                    self._readable(sock)
                core.wake_pending = False
                self._commands()
                self._step("timers", self.io.run_due)
                self._step("freeing objects", self.io.free_unreferenced)
                self._step("sending", self.io.flush)
                now = time.monotonic()
                if now >= core.next_heartbeat or (
                        self.io.demand_changed and now >= core.next_heartbeat
                        - HEARTBEAT_INTERVAL_S + EARLY_HEARTBEAT_S):
                    core.next_heartbeat = now + HEARTBEAT_INTERVAL_S
                    self._step("the heartbeat", self.io.heartbeat)
        except _GiveUp as stop:
            self.give_up(stop.error)
        except BaseException as error:   # the loop itself broke: nothing can go on
            log.critical("the driver's IO thread stops:\n%s", traceback.format_exc())
            self.give_up(DriverIOError("the IO loop", describe(error), fatal=True))

    # ------------------------------------------------------------ one event each
    def _readable(self, sock) -> None:
        core, io = self.core, self.io
        if type(sock) is int:       # an actor's sync channel
            self._guard(f"an actor's sync channel (fd {sock})", io.sync_readable, sock)
            return
        if sock is core.wake_in:
            try:
                while True:
                    core.wake_in.recv(zmq.NOBLOCK)
            except zmq.Again:
                pass
            return
        for _ in range(BATCH):
            try:
                _, kind, header, frames = codec.receive(sock, False, zmq.NOBLOCK)
            except zmq.Again:
                break
            except protocol.MalformedMessageError as error:
                log.warning("dropped a malformed message: %s", error)
                continue
            self._guard(f"a {kind.decode(errors='replace')!r} message", io.handle,
                        sock, kind, header, frames)

    def _commands(self) -> None:
        core = self.core
        while core.commands:
            command = core.commands.popleft()
            if isinstance(command, TaskRecord):
                what = f"placing {command.kind} {command.name}"
                error = self._guard(what, self.io.place, command)
            else:
                what = getattr(command, "what", None) or "a command"
                error = self._guard(what, command)
            if error is not None:
                self._fail(command, error)

    def _fail(self, command, error: DriverIOError) -> None:
        """A failed task record fails as user-visible work does (an actor creation
        fails its actor and the calls waiting for it); other commands' callers get the
        error."""
        if isinstance(command, TaskRecord):
            self.core.tasks.pop(command.task_id, None)
            if self._guard(f"failing {command.name}", self.io._fail, command,
                           error) is None:
                return
        fail_command(self.core, command, error)

    def _guard(self, what: str, fn, *args) -> DriverIOError | None:
        """Run fn(*args); an Exception is logged and returned as the DriverIOError the
        affected calls fail with. Anything else (not an Exception) ends the loop."""
        try:
            fn(*args)
        except Exception as error:
            log.error("the driver's IO thread failed on %s (it goes on):\n%s", what,
                      traceback.format_exc())
            return DriverIOError(what, describe(error))
        return None

    def _step(self, what: str, fn) -> None:
        """A periodic step; failing every time for GIVE_UP_AFTER_S, it cannot go on."""
        try:
            fn()
        except Exception as error:
            now = time.monotonic()
            failures = self.step_failures.setdefault(what, [now, 0])
            failures[1] += 1
            if failures[1] == 1:
                log.error("the driver's IO thread failed on %s (it goes on):\n%s", what,
                          traceback.format_exc())
            if failures[1] >= GIVE_UP_MIN_TIMES and now - failures[0] >= GIVE_UP_AFTER_S:
                raise _GiveUp(DriverIOError(what, f"{describe(error)} (every time for "
                                            f"{now - failures[0]:.0f} s)", fatal=True)
                              ) from error
            return
        self.step_failures.pop(what, None)

    # ------------------------------------------------------------ giving up
    def give_up(self, error: DriverIOError) -> None:
        """Fail everything that waits on this thread, and make later calls raise."""
        core = self.core
        core.io_error = error     # DriverCore._run raises it from now on
        log.critical("%s", error)
        fail_queued_commands(core, error)
        core.tasks.clear()
        for future in list(core.rpc_futures.values()) + list(self.io.rpc_stats.values()):
            if not future.done():
                future.set_exception(error)
        core.rpc_futures.clear()
        self.io.rpc_stats.clear()
        with core.cv:
            for object_id, entry in core.objects.items():
                if not entry.local_ready:     # pending, or its value not here yet
                    entry.state, entry.error = FAILED, error
            core.unfinished.clear()
            core.cv.notify_all()


class _GiveUp(Exception):
    def __init__(self, error: DriverIOError):
        super().__init__(str(error))
        self.error = error


def serve(core, io) -> None:
    Serve(core, io).run()
