"""Process inspection and stopping by PID, on psutil, for every platform corral runs on
(Linux nodes, a macOS laptop): one meaning of "alive" for the launcher and the runtime.

- A process is alive while it exists and is not a zombie (a zombie has exited and only
  waits for its parent to reap it: it can no longer do anything, and signals are moot).
- A process is identified by its PID *and* its start time (`start_time_s`): a PID that
  the kernel handed to a newer, unrelated process is not the process we saw before
  (`remember` / `still_same`, and `stop`, which re-checks before every signal).
- Node processes are recognised by `CORRAL_NODE_DIR=<node dir>` in their environment
  (`pids_with_env`), never by name.
- The caller and its ancestors are never signalled (`stop` leaves them out).

This module imports only the standard library and psutil, never the rest of corral, so
that the `local` provider can send its source to a host whose Python has psutil but not
corral (see launcher.providers.local.stop_script).
"""
from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass, field

import psutil

ENV_NODE_DIR = "CORRAL_NODE_DIR"
# Start times derive from the boot time, which Linux gives in whole seconds: a process's
# start time can read up to a second later than the file it wrote right after starting.
START_TIME_SLACK_S = 1.0
POLL_S = 0.02
_GONE = (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD)


def _process(pid: int) -> psutil.Process | None:
    """The process with this PID as psutil sees it now, or None when there is none."""
    if pid <= 0:  # 0 would mean "my process group" to kill(2)
        return None
    try:
        return psutil.Process(pid)
    except psutil.Error:
        return None


def _not_zombie(proc: psutil.Process) -> bool:
    try:
        return proc.status() not in _GONE
    except psutil.NoSuchProcess:  # ZombieProcess included
        return False
    except psutil.AccessDenied:   # another user's process: it exists
        return True


def _running(proc: psutil.Process) -> bool:
    """The very process `proc` was made for (same PID and start time) runs, not a zombie."""
    return proc.is_running() and _not_zombie(proc)


def is_alive(pid: int) -> bool:
    """True while a process with this PID exists and is not a zombie."""
    proc = _process(pid)
    return proc is not None and _not_zombie(proc)


def _ask(pid: int, question):
    """question(proc) for the process with this PID, or None when it is gone or not ours
    to ask."""
    proc = _process(pid)
    if proc is None:
        return None
    try:
        return question(proc)
    except psutil.Error:
        return None


def start_time_s(pid: int) -> float | None:
    """When the process started (seconds since the epoch), or None if there is none."""
    return _ask(pid, psutil.Process.create_time)


def started_by(pid: int, written_s: float) -> bool:
    """The process runs and started no later than `written_s` (e.g. the mtime of the pid
    file that names it): a PID re-used by a newer process fails this."""
    started = start_time_s(pid)
    return started is not None and started <= written_s + START_TIME_SLACK_S


def cmdline(pid: int) -> list[str] | None:
    """The process's argv, or None when it is gone or not ours to read."""
    return _ask(pid, psutil.Process.cmdline)


def environ(pid: int) -> dict[str, str] | None:
    """The process's environment, or None when it is gone or not ours to read."""
    return _ask(pid, psutil.Process.environ)


def _live_env_values(name: str):
    """(pid, value of `name` in its environment) for every live process that has it, in
    one pass; processes whose environment we may not read (other users', unless we are
    root) are skipped."""
    for pid in psutil.pids():
        proc = _process(pid)
        try:
            value = proc.environ().get(name) if proc is not None else None
        except psutil.Error:  # gone, or not ours to read
            continue
        if value and _not_zombie(proc):
            yield pid, value


def pids_with_env(name: str, values) -> dict[str, set[int]]:
    """{value: live processes whose environment has name=value}, for each value asked,
    in one pass over the processes however many values are asked for. Processes whose
    environment we may not read (other users', unless we are root) are skipped."""
    found: dict[str, set[int]] = {value: set() for value in values}
    if found:
        for pid, value in _live_env_values(name):
            if value in found:
                found[value].add(pid)
    return found


def pids_with_env_in(name: str, parent_dir: str) -> dict[str, set[int]]:
    """{value: live processes whose environment has name=value} for every value that
    is a path directly inside `parent_dir` (e.g. each node directory of a cluster,
    including those whose directory is gone), in one pass over the processes. The same
    rules as pids_with_env: other users' unreadable processes are skipped."""
    parent_dir = os.path.abspath(parent_dir)
    found: dict[str, set[int]] = {}
    for pid, value in _live_env_values(name):
        if os.path.dirname(os.path.normpath(value)) == parent_dir:
            found.setdefault(value, set()).add(pid)
    return found


def children(pid: int, recursive: bool = False) -> list[int]:
    """The PIDs of the process's children (all descendants when `recursive`), [] when
    the process is gone."""
    proc = _process(pid)
    if proc is None:
        return []
    try:
        return [child.pid for child in proc.children(recursive=recursive)]
    except psutil.Error:
        return []


def caller_and_ancestors() -> set[int]:
    """This process and every process above it up to init: never signalled."""
    pids = {os.getpid()}
    try:
        pids.update(parent.pid for parent in psutil.Process().parents())
    except psutil.Error:  # a parent went away during the walk: what we have is above us
        pass
    return pids


def remember(pids) -> dict[int, float]:
    """{pid: start time} of the pids that run, to recognise exactly these processes later."""
    return {pid: started for pid in pids if (started := start_time_s(pid)) is not None}


def still_same(remembered: dict[int, float]) -> set[int]:
    """The remembered pids that still run the process remembered (same start time)."""
    return {pid for pid, started in remembered.items()
            if start_time_s(pid) == started and is_alive(pid)}


@dataclass
class Stopped:
    """What `stop` did: `terminated` got SIGTERM, `killed` needed SIGKILL too, `left`
    still ran (not a zombie) when stop gave up."""
    terminated: set[int] = field(default_factory=set)
    killed: set[int] = field(default_factory=set)
    left: set[int] = field(default_factory=set)


def _signal(proc: psutil.Process, signum: int, group: bool) -> bool:
    """Send signum to the process (to its whole process group when `group` and it leads
    one) if it is still the process we found. False when it was already gone. A group
    whose leader exited but was not reaped yet still gets the signal: the zombie keeps
    its PID, so neither can have been re-used."""
    try:
        if not proc.is_running():  # gone, or its PID now names another process
            return False
        if group and os.getpgid(proc.pid) == proc.pid:
            os.killpg(proc.pid, signum)
        elif _running(proc):
            os.kill(proc.pid, signum)
        else:
            return False
    except ProcessLookupError:
        return False
    except PermissionError:  # not ours to signal; `left` reports it if it stays
        pass
    return True


def _reap(pids) -> None:
    """Collect our own children among pids that have exited, so they do not stay
    zombies of ours; other processes' children are their parents' business."""
    for pid in pids:
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass


def _wait_gone(procs: dict[int, psutil.Process], timeout_s: float,
               reap: bool) -> dict[int, psutil.Process]:
    """Wait up to timeout_s for the processes to end; returns those still running."""
    deadline = time.monotonic() + timeout_s
    while True:
        if reap:
            _reap(procs)
        procs = {pid: proc for pid, proc in procs.items() if _running(proc)}
        if not procs or time.monotonic() >= deadline:
            return procs
        time.sleep(POLL_S)


def _identify(pids) -> dict[int, psutil.Process]:
    """The processes with these PIDs as they are now, without the caller and its
    ancestors."""
    protected = caller_and_ancestors()
    return {pid: proc for pid in dict.fromkeys(pids)
            if pid not in protected and (proc := _process(pid)) is not None}


def stop(pids, grace_s: float = 5.0, kill_wait_s: float = 2.0, *, groups: bool = False,
         reap: bool = False) -> Stopped:
    """Stop processes by PID: SIGTERM, up to grace_s for them to exit, SIGKILL to the
    rest, up to kill_wait_s for those to go. Each process is identified when stop starts
    (PID and start time), so a PID the kernel re-uses meanwhile is never signalled; the
    caller and its ancestors are never signalled. `groups`: a process that leads a
    process group gets each signal for its whole group. `reap`: collect those of them
    that are our own children (for a caller that spawned them and kept no handle)."""
    procs = _identify(pids)
    outcome = Stopped()
    outcome.terminated = {pid for pid, proc in procs.items()
                          if _signal(proc, signal.SIGTERM, groups)}
    stubborn = _wait_gone(procs, grace_s, reap)
    if stubborn:
        outcome.killed = {pid for pid, proc in stubborn.items()
                          if _signal(proc, signal.SIGKILL, groups)}
        outcome.left = set(_wait_gone(stubborn, kill_wait_s, reap))
    return outcome


def kill(pids, wait_s: float = 2.0, *, groups: bool = False, reap: bool = False
         ) -> Stopped:
    """SIGKILL processes by PID at once (no grace), then wait up to wait_s for them to
    go; the same identity and caller rules as `stop`."""
    procs = _identify(pids)
    outcome = Stopped()
    outcome.killed = {pid for pid, proc in procs.items()
                      if _signal(proc, signal.SIGKILL, groups)}
    outcome.left = set(_wait_gone(procs, wait_s, reap))
    return outcome
