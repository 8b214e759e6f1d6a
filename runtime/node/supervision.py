"""Client side of the head's supervisor (runtime.node.supervisor): asking it to run a
service (`start_service`, used by runtime.node.startup), starting it again when it died
(`ensure_supervisor`, used by the control service), whether the node is stopping, and
the files they share in the session dir:

- supervisor.json: what to run, {"services": {name: {"argv", "restart_args"}}}, written
  by start_service, read again by the supervisor when it changes;
- supervisor.state.json: what runs (each service's state, pid, since when, restarts,
  last exit), written by the supervisor on every change (runtime.node.health);
- supervisor.lock: held by the one supervisor of the node for its life;
- stopping: written by `corral stop` (runtime.node.session.stop_session), naming the stopping
  process; while that process lives nothing is started again;
- autoscaler.events: the autoscaler's event log, where exits and restarts go too.
"""
from __future__ import annotations

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
from runtime.errors import RuntimeStartError

log = logging.getLogger("corral.supervisor")

SPEC_FILE = "supervisor.json"
REPORT_FILE = "supervisor.state.json"
LOCK_FILE = "supervisor.lock"
STOP_MARKER = "stopping"
EVENTS_FILE = "autoscaler.events"        # the autoscaler's event log (autoscaler.events)
ENV_SUPERVISED = "CORRAL_SUPERVISED_SESSION"
BACKOFF_FIRST_S = 0.5
BACKOFF_MAX_S = 30.0
HEALTHY_AFTER_S = 60.0     # running this long: the backoff starts again from the first
TICK_S = 0.1
LOCK_WAIT_S = 2.0
SERVICE_START_TIMEOUT_S = 30.0
EVENT_DOWN, EVENT_RESTARTED = "service-down", "service-restarted"
LABELS = {"control": "control service", "monitor": "autoscaler monitor"}


class SupervisorError(RuntimeStartError):
    """The supervisor could not be started, or did not start a service."""


def label(name: str) -> str:
    return LABELS.get(name, name)


def describe_exit(returncode: int | None) -> str:
    """'killed by SIGKILL', 'exited with code 1'; None: not our child, unknown."""
    if returncode is None:
        return "ended (exit status unknown: adopted from an earlier supervisor)"
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"killed by {name}"
    return f"exited with code {returncode}"


# ----------------------------------------------------------------- files and the lock

def spec_path(session: Path) -> Path:
    return Path(session) / SPEC_FILE


def report_path(session: Path) -> Path:
    return Path(session) / REPORT_FILE


def read_json(path: Path) -> dict:
    data = sessions.read_json(Path(path))
    return data if isinstance(data, dict) else {}


def stopping(session: Path) -> bool:
    """A `corral stop` of this node is under way (its marker names a live process)."""
    marker = Path(session) / STOP_MARKER
    try:
        pid = int(marker.read_text().strip() or 0)
    except FileNotFoundError:
        return False
    except (OSError, ValueError):
        return True
    return processes.is_alive(pid)


def open_lock(session: Path) -> int:
    return os.open(Path(session) / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)


def supervisor_running(session: Path) -> bool:
    """Some supervisor holds this node's lock (running, or just starting)."""
    fd = open_lock(session)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)          # (closing releases a lock we took)
    return False


def spawn(session: Path, name: str, argv: list[str], env: dict) -> subprocess.Popen:
    """`python -m <argv>` detached (new session, stdio appended to logs/<name>.log)."""
    logs = Path(session) / "logs"
    logs.mkdir(exist_ok=True, mode=0o700)
    out = open(logs / f"{name}.log", "ab")
    try:
        return subprocess.Popen([sys.executable, "-m", *argv], stdin=subprocess.DEVNULL,
                                stdout=out, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True, close_fds=True)
    finally:
        out.close()


_started: list[subprocess.Popen] = []    # supervisors we started (reaped, no zombies)


def ensure_supervisor(session: Path, env: dict | None = None) -> subprocess.Popen | None:
    """Start the node's supervisor unless one runs or the node is stopping; returns
    the process started, if any. (It writes supervisor.pid itself, once it holds the
    lock.)"""
    session = Path(session)
    for proc in list(_started):
        if proc.poll() is not None:
            _started.remove(proc)
    if stopping(session) or supervisor_running(session):
        return None
    proc = spawn(session, "supervisor", ["runtime.node.supervisor", "--session", str(session)],
                  dict(env if env is not None else os.environ))
    log.info("started the supervisor (pid %d)", proc.pid)
    _started.append(proc)
    return proc


def start_service(session: Path, name: str, argv: list[str], env: dict, pids: dict,
                  restart_args: list[str] = (), covers_supervisor: bool = False,
                  timeout_s: float = SERVICE_START_TIMEOUT_S) -> int:
    """Have the node's supervisor run `python -m <argv>` as service `name` (started
    first if it does not run: then the services of an earlier start are forgotten).
    covers_supervisor: the service is told (ENV_SUPERVISED) to start the supervisor
    again should it die (the control service does). Returns once the service runs; its
    pid and the supervisor's go into `pids`."""
    session = Path(session)
    fresh = not supervisor_running(session)
    spec = {} if fresh else read_json(spec_path(session)).get("services") or {}
    spec[name] = {"argv": list(argv), "restart_args": list(restart_args),
                  "covers_supervisor": bool(covers_supervisor)}
    pid_file = sessions.pid_file(session, name)
    if name not in sessions.running_pids(session):
        pid_file.unlink(missing_ok=True)
    write_private_atomic(spec_path(session), json.dumps({"services": spec}).encode())
    started = None
    if fresh:
        report_path(session).unlink(missing_ok=True)
        (session / STOP_MARKER).unlink(missing_ok=True)
        started = ensure_supervisor(session, env)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        running = sessions.running_pids(session)
        if name in running and "supervisor" in running:
            pids["supervisor"], pids[name] = running["supervisor"], running[name]
            return running[name]
        if (started is None or started.poll() is not None) and \
                not supervisor_running(session):
            tail = _log_tail(session, "supervisor")
            raise SupervisorError(f"the supervisor exited before it started the {label(name)}"
                                  f"; log {session / 'logs' / 'supervisor.log'}:\n{tail}")
        time.sleep(0.02)
    raise SupervisorError(f"the supervisor did not start the {label(name)} within "
                          f"{timeout_s:g} s (see {session / 'logs'})")


def _log_tail(session: Path, name: str) -> str:
    path = Path(session) / "logs" / f"{name}.log"
    try:
        return path.read_text(errors="replace")[-2000:]
    except OSError:
        return ""


# ------------------------------------------------------------------------ events

def append_event(session: Path, kind: str, message: str, **fields) -> None:
    """One line in the autoscaler's event log, appended whole (one write; a short
    write is taken back). A disk that refuses it is logged, never raised."""
    now_s = time.time()
    event = {"at_s": round(now_s, 3), "kind": kind, "message": message,
             "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now_s)), **fields}
    data = (json.dumps(event, sort_keys=True) + "\n").encode()
    try:
        fd = os.open(Path(session) / EVENTS_FILE, os.O_RDWR | os.O_CREAT | os.O_APPEND,
                     0o600)
        try:
            start = os.fstat(fd).st_size
            if start and os.pread(fd, 1, start - 1) != b"\n":
                data = b"\n" + data       # a torn line before ours stays its own line
            if os.write(fd, data) != len(data):
                os.ftruncate(fd, start)
                raise OSError("short write (disk full?)")
        finally:
            os.close(fd)
    except OSError as error:
        log.warning("cannot write the event %s to %s: %s", kind,
                    Path(session) / EVENTS_FILE, error)
