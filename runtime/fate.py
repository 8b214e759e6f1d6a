"""Fate-sharing: an embedded runtime (runtime.init() with no address) dies with its
driver, however the driver ends - runtime.shutdown(), an exception, SIGTERM, SIGKILL.

The runtime's control service and agent are detached daemons (their own sessions, so
a Ctrl-C in the driver's terminal does not reach them). With them starts a keeper,
`python -m runtime.fate` (pid file fate.pid), which watches the driver:

- on Linux the kernel sends it SIGTERM the moment the driver dies (prctl
  PR_SET_PDEATHSIG, through the process's own C library). That signal comes when the
  *thread* that started it ends, so it is asked for only when the runtime was started
  from the driver's main thread (`death_signal`);
- everywhere, it polls every POLL_S whether the driver still runs (its parent pid
  changes when the driver dies; the driver's pid and start time, for a driver that is
  not its parent), as runtime.worker does for workers.

When the driver is gone the keeper stops the session's processes by their pid files
(the agent takes its workers down with it, and removes its ipc directory), removes
the ipc directory and, for an embedded runtime, the node directory (keys, logs), then
exits. A SIGTERM while the driver still runs is a normal stop (runtime.session.
stop_session, from the driver's shutdown): the keeper just exits.
"""
from __future__ import annotations

import argparse
import ctypes
import logging
import os
import shutil
import signal
import sys
import threading
import time
from pathlib import Path

from runtime import ipc_dirs, processes

log = logging.getLogger("corral.fate")

PR_SET_PDEATHSIG = 1
POLL_S = 0.25


def set_death_signal(signum: int) -> bool:
    """Ask the kernel for `signum` when this process's parent (thread) dies. Linux only;
    False elsewhere or when the C library has no prctl."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)   # glibc or musl, whichever we run on
        return libc.prctl(PR_SET_PDEATHSIG, int(signum), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def keeper_argv(driver_pid: int, session: Path, node_dir: Path | None,
                death_signal: bool) -> list[str]:
    """The `python -m` arguments of a keeper for this driver and session. node_dir:
    removed too once the driver is gone (an embedded runtime's own directory)."""
    argv = ["runtime.fate", "--driver-pid", str(driver_pid),
            "--driver-start-s", repr(processes.start_time_s(driver_pid) or 0.0),
            "--session", str(session)]
    if node_dir is not None:
        argv += ["--node-dir", str(node_dir)]
    if death_signal:
        argv += ["--death-signal"]
    return argv


def started_from_main_thread() -> bool:
    """The death signal follows the thread that forks: ask for it only from the main
    thread, which lives as long as the driver."""
    return threading.current_thread() is threading.main_thread()


class Watch:
    """Whether the driver still runs."""

    def __init__(self, driver_pid: int, driver_start_s: float):
        self.driver_pid = driver_pid
        self.remembered = {driver_pid: driver_start_s} if driver_start_s else None
        self.our_parent = os.getppid() == driver_pid

    def driver_gone(self) -> bool:
        if self.our_parent and os.getppid() != self.driver_pid:
            return True                       # reparented: the driver died
        if self.remembered is not None:
            return not processes.still_same(self.remembered)
        return not processes.is_alive(self.driver_pid)


def clean_up(session: Path, node_dir: Path | None) -> list[int]:
    """Stop the session's processes and remove what the runtime leaves behind."""
    from runtime.session import stop_session     # psutil and our pid-file rules
    stopped = stop_session(session) if session.is_dir() else []
    ipc_dirs.remove(session)
    if node_dir is not None:
        shutil.rmtree(node_dir, ignore_errors=True)
    return stopped


class _Terminated(Exception):
    """SIGTERM arrived (the death signal, or a normal stop)."""


def _on_sigterm(signum, frame):
    raise _Terminated()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="runtime.fate")
    parser.add_argument("--driver-pid", type=int, required=True)
    parser.add_argument("--driver-start-s", type=float, default=0.0)
    parser.add_argument("--session", required=True)
    parser.add_argument("--node-dir")
    parser.add_argument("--death-signal", action="store_true",
                        help="ask the kernel for SIGTERM when the driver dies")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    signal.signal(signal.SIGTERM, _on_sigterm)
    if args.death_signal:
        set_death_signal(signal.SIGTERM)
    watch = Watch(args.driver_pid, args.driver_start_s)
    try:
        while not watch.driver_gone():
            time.sleep(POLL_S)
    except _Terminated:
        if not watch.driver_gone():
            return 0                          # a normal stop: the driver cleans up
    signal.signal(signal.SIGTERM, signal.SIG_IGN)   # finish the clean-up
    session = Path(args.session)
    node_dir = Path(args.node_dir) if args.node_dir else None
    stopped = clean_up(session, node_dir)
    log.info("driver %d is gone: stopped its runtime (pids %s)", args.driver_pid,
             stopped)
    return 0


if __name__ == "__main__":
    sys.exit(main())
