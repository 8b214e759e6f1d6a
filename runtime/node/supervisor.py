"""The head's supervisor: keeps the control service and the autoscaler monitor running.

`corral start --head` (runtime.node.startup) starts `python -m runtime.node.supervisor --session
DIR` and asks it for each service (runtime.node.supervision.start_service); the supervisor
starts them as its children (new sessions, stdio to session/logs/<name>.log, pid files
<name>.pid as before) and, when one ends however it ended, starts it again after a
backoff: 0.5 s, doubled after each failure up to 30 s, back to 0.5 s once the service
ran for a minute. A restart runs the service's argv plus its restart arguments (the
control service's `--resume`: same port, saved state). Every exit and restart is a line
in the supervisor's log (session/logs/supervisor.log) and an event in the autoscaler's
event log (`service-down`, `service-restarted`, with the exit code or signal), which
`corral monitor` shows.

One supervisor per node: it holds an exclusive lock (session/supervisor.lock) for its
life and writes supervisor.pid once it has it; a second one waits briefly and exits. A
supervisor that starts while services run (its predecessor was killed) adopts them
from their pid files instead of starting duplicates; an adopted service's exit status
cannot be known (it is not our child), and is logged as such. The control service
starts the supervisor again when it finds the lock free (runtime.control.service), so the two
cover each other; `corral up` repairs a head where both died (launcher.commands.head_services).

What to run is in session/supervisor.json (written by start_service, read again when it
changes); what runs is in session/supervisor.state.json (written on every change;
`corral health` reads it, runtime.node.health). `corral stop` (runtime.node.session.
stop_session) stops the supervisor first and leaves a marker (session/stopping, naming
the stopping process) under which nothing is started again.
"""
from __future__ import annotations

import argparse
import dataclasses
import fcntl
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from runtime.node import processes
from runtime.node import session as sessions
from runtime.control.persist import write_private_atomic
from runtime.node.supervision import (BACKOFF_FIRST_S, BACKOFF_MAX_S, ENV_SUPERVISED,
                                 EVENT_DOWN, EVENT_RESTARTED, HEALTHY_AFTER_S,
                                 LOCK_WAIT_S, SPEC_FILE, TICK_S, open_lock, spawn,
                                 append_event, describe_exit, label, read_json,
                                 report_path, spec_path, stopping)

log = logging.getLogger("corral.supervisor")


# ------------------------------------------------------------------------ the loop

@dataclasses.dataclass
class Service:
    name: str
    argv: list
    restart_args: list
    covers_supervisor: bool = False      # told to start the supervisor again
    proc: subprocess.Popen | None = None
    pid: int | None = None
    adopted: dict | None = None          # {pid: start time} of an adopted process
    state: str = "starting"              # running / restarting
    since_s: float = 0.0                 # wall clock: when the state began
    started_at: float = 0.0              # monotonic: when it last started
    restarts: int = 0
    failures_in_row: int = 0
    backoff_s: float = BACKOFF_FIRST_S
    next_try: float = 0.0                # monotonic
    next_try_s: float | None = None      # wall clock, for the report
    last_exit: str | None = None
    last_exit_at_s: float | None = None

    def report(self) -> dict:
        return {"state": self.state, "pid": self.pid, "since_s": self.since_s,
                "restarts": self.restarts, "failures_in_row": self.failures_in_row,
                "last_exit": self.last_exit, "last_exit_at_s": self.last_exit_at_s,
                "next_try_s": self.next_try_s if self.state == "restarting" else None,
                "adopted": self.adopted is not None}


class Supervisor:
    def __init__(self, session: Path, env: dict | None = None):
        self.session = Path(session)
        self.env = dict(env if env is not None else os.environ)
        self.env.pop(ENV_SUPERVISED, None)       # only for the services that cover us
        self.services: dict[str, Service] = {}
        self.spec_stamp = None
        self.running = True
        self.started_s = time.time()
        self.earlier = read_json(report_path(self.session)).get("services") or {}

    # -- spec ------------------------------------------------------------------------
    def read_spec(self) -> None:
        try:
            info = spec_path(self.session).stat()
        except FileNotFoundError:
            return
        stamp = (info.st_mtime_ns, info.st_size, info.st_ino)
        if stamp == self.spec_stamp:
            return
        self.spec_stamp = stamp
        wanted = read_json(spec_path(self.session)).get("services") or {}
        for name, entry in wanted.items():
            if not isinstance(entry, dict) or not isinstance(entry.get("argv"), list):
                log.warning("ignored service %r of %s: no argv", name, SPEC_FILE)
                continue
            service = self.services.get(name)
            if service is None:
                service = self.services[name] = Service(name, [], [])
                earlier = self.earlier.get(name) or {}
                service.restarts = int(earlier.get("restarts") or 0)
                service.last_exit = earlier.get("last_exit")
                service.last_exit_at_s = earlier.get("last_exit_at_s")
                self._take_up(service)
            service.argv = [str(part) for part in entry["argv"]]
            service.restart_args = [str(part) for part in entry.get("restart_args") or ()]
            service.covers_supervisor = bool(entry.get("covers_supervisor"))
        for name in set(self.services) - set(wanted):
            log.info("%s is no longer supervised", label(name))
            del self.services[name]
        self.write_report()

    def _take_up(self, service: Service) -> None:
        """A service new to this supervisor: adopt it if it runs, else start it now."""
        if not self._adopt(service):
            service.state, service.next_try = "restarting", 0.0
            service.since_s = time.time()

    def _adopt(self, service: Service) -> bool:
        pid = sessions.running_pids(self.session).get(service.name)
        if pid is None:
            return False
        service.proc, service.pid = None, pid
        service.adopted = processes.remember([pid])
        service.state = "running"
        service.since_s = processes.start_time_s(pid) or time.time()
        service.started_at = time.monotonic()
        log.info("adopted the %s (pid %d), which was running", label(service.name), pid)
        return True

    # -- one round -------------------------------------------------------------------
    def tick(self) -> None:
        self.read_spec()
        now = time.monotonic()
        changed = False
        for service in self.services.values():
            if service.state == "running":
                returncode, ended = self._poll(service)
                if ended:
                    self._ended(service, returncode, now)
                    changed = True
                elif service.failures_in_row and now - service.started_at >= HEALTHY_AFTER_S:
                    service.failures_in_row, service.backoff_s = 0, BACKOFF_FIRST_S
                    changed = True
            elif now >= service.next_try and self.running:
                if stopping(self.session):
                    self.running = False
                    log.info("the node is stopping: nothing is started again")
                    break
                self._restart(service)
                changed = True
        if changed:
            self.write_report()

    def _poll(self, service: Service) -> tuple[int | None, bool]:
        if service.proc is not None:
            returncode = service.proc.poll()
            return returncode, returncode is not None
        return None, not processes.still_same(service.adopted or {})

    def _ended(self, service: Service, returncode: int | None, now: float) -> None:
        how = describe_exit(returncode)
        ran_s = now - service.started_at
        if ran_s >= HEALTHY_AFTER_S:
            service.backoff_s, service.failures_in_row = BACKOFF_FIRST_S, 0
        delay_s = service.backoff_s
        service.backoff_s = min(BACKOFF_MAX_S, delay_s * 2)
        service.failures_in_row += 1
        service.state, service.since_s = "restarting", time.time()
        service.next_try, service.next_try_s = now + delay_s, time.time() + delay_s
        service.last_exit, service.last_exit_at_s = how, time.time()
        message = (f"{label(service.name)} (pid {service.pid}) {how} after "
                   f"{ran_s:.1f} s; starting it again in {delay_s:g} s")
        log.warning("%s", message)
        append_event(self.session, EVENT_DOWN, message, service=service.name,
                     pid=service.pid, exit=how)

    def _restart(self, service: Service) -> None:
        if self._adopt(service):      # someone started it meanwhile: no duplicate
            return
        pid_file = sessions.pid_file(self.session, service.name)
        first = not pid_file.exists()  # start_service removed it: a fresh start
        argv = service.argv + ([] if first else service.restart_args)
        old_pid = service.pid
        try:
            env = dict(self.env, **{ENV_SUPERVISED: str(self.session)}) \
                if service.covers_supervisor else self.env
            proc = spawn(self.session, service.name, argv, env)
        except OSError as error:
            service.last_exit = f"could not be started: {error}"
            service.next_try = time.monotonic() + service.backoff_s
            service.next_try_s = time.time() + service.backoff_s
            service.backoff_s = min(BACKOFF_MAX_S, service.backoff_s * 2)
            log.error("cannot start the %s: %s", label(service.name), error)
            return
        write_pid_file(pid_file, proc.pid)
        service.proc, service.pid, service.adopted = proc, proc.pid, None
        service.state, service.since_s = "running", time.time()
        service.started_at, service.next_try_s = time.monotonic(), None
        if first:
            log.info("started the %s (pid %d)", label(service.name), proc.pid)
            return
        service.restarts += 1
        message = (f"{label(service.name)} restarted (pid {old_pid} -> {proc.pid}, "
                   f"restart {service.restarts}); pid {old_pid}: {service.last_exit}")
        log.warning("%s", message)
        append_event(self.session, EVENT_RESTARTED, message, service=service.name,
                     pid=proc.pid, exit=service.last_exit, restarts=service.restarts)

    def write_report(self) -> None:
        data = {"pid": os.getpid(), "started_s": self.started_s, "at_s": time.time(),
                "services": {name: service.report()
                             for name, service in self.services.items()}}
        try:
            write_private_atomic(report_path(self.session), json.dumps(data).encode())
        except OSError as error:
            log.warning("cannot write %s: %s", report_path(self.session), error)

    def run(self) -> None:
        """Until SIGTERM or a stop of the node; the services are left running (`corral
        stop` stops them; a supervisor started again adopts them)."""
        while self.running:
            self.tick()
            time.sleep(TICK_S)


def write_pid_file(path: Path, pid: int) -> bool:
    """Record a pid (atomically; on a full disk, over the old file in place, which
    needs no new block). False, logged, when neither works: the process runs but
    `corral stop` will not find it by its pid file (the providers also find a node's
    processes by their CORRAL_NODE_DIR)."""
    data = f"{pid}\n".encode()
    try:
        write_private_atomic(path, data)
        return True
    except OSError as error:
        first = error
    try:
        with open(path, "r+b") as handle:
            handle.write(data)
            handle.truncate()
        return True
    except OSError:
        log.error("cannot write %s (pid %d): %s", path, pid, first)
        return False


def _hold_lock(session: Path) -> int | None:
    """The node's supervisor lock, waited for up to LOCK_WAIT_S (someone testing it
    holds it for an instant); None when another supervisor has it."""
    fd = open_lock(session)
    deadline = time.monotonic() + LOCK_WAIT_S
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() >= deadline:
                os.close(fd)
                return None
            time.sleep(0.05)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="runtime.node.supervisor")
    parser.add_argument("--session", required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    session = Path(args.session)
    sessions.session_dir(session.parent, create=False)  # ours alone, or UnsafePathError
    if stopping(session):
        log.info("the node is stopping: not supervising")
        return 0
    lock = _hold_lock(session)
    if lock is None:
        log.info("another supervisor runs for %s: exiting", session)
        return 0
    write_pid_file(sessions.pid_file(session, "supervisor"), os.getpid())
    supervisor = Supervisor(session)
    signal.signal(signal.SIGTERM, lambda *_: setattr(supervisor, "running", False))
    log.info("supervising %s (pid %d)", session, os.getpid())
    supervisor.run()
    log.info("supervisor stops")
    return 0


if __name__ == "__main__":
    sys.exit(main())
