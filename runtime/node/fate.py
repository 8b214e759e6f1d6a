"""Fate-sharing: an embedded runtime (runtime.init() with no address) dies with its
driver, however the driver ends - runtime.shutdown(), an exception, SIGTERM, SIGKILL.

The runtime's control service and agent are detached daemons (their own sessions, so
a Ctrl-C in the driver's terminal does not reach them). Before them starts a keeper,
`python -m runtime.node.fate` (pid file fate.pid), which watches the driver through a
lifeline: a pipe whose write end only the driver holds. The kernel closes it when the
driver's last thread is gone, however it ended, and the keeper reads end-of-file at
once - on every OS, from whichever thread init() ran. (Not prctl's PR_SET_PDEATHSIG:
it follows the thread that forked, comes again for each thread of a dying process the
child is handed to, and may come before the driver looks dead, so that a keeper could
not tell it from a normal stop.) Every POLL_S the keeper also checks the driver's pid
and start time, for a lifeline someone else holds too (a child forked from the driver).

When the driver is gone the keeper stops the session's processes by their pid files
(the agent takes its workers down with it, and removes its ipc directory), removes the
ipc directory and, for an embedded runtime, the node directory (keys, logs), then
exits. A SIGTERM while the lifeline holds is a normal stop (runtime.node.session.
stop_session, from the driver's shutdown): the keeper just exits.
"""
from __future__ import annotations

import argparse
import logging
import os
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from runtime.node import ipc_dirs
from runtime.node import processes

log = logging.getLogger("corral.fate")

POLL_S = 0.5
_lifelines: dict[int, int] = {}     # keeper pid -> the write end this driver holds


def start_keeper(driver_pid: int, session: Path, node_dir: Path | None,
                 env: dict | None = None) -> int:
    """Start the keeper of this session for this process (the driver, `driver_pid`),
    detached like the runtime's daemons (stdio to session/logs/fate.log, pid file
    session/fate.pid). node_dir: removed too once the driver is gone (an embedded
    runtime's own directory). Returns its pid."""
    _release_stale_lifelines()
    read_end, write_end = os.pipe()         # not inherited by anything else we start
    logs = Path(session) / "logs"
    logs.mkdir(exist_ok=True, mode=0o700)
    argv = [sys.executable, "-m", "runtime.node.fate", "--driver-pid", str(driver_pid),
            "--driver-start-s", repr(processes.start_time_s(driver_pid) or 0.0),
            "--lifeline-fd", str(read_end), "--session", str(session)]
    if node_dir is not None:
        argv += ["--node-dir", str(node_dir)]
    try:
        with open(logs / "fate.log", "ab") as log_file:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log_file,
                                    stderr=subprocess.STDOUT, start_new_session=True,
                                    env=env, close_fds=True, pass_fds=(read_end,))
    except BaseException:
        os.close(write_end)
        raise
    finally:
        os.close(read_end)
    _lifelines[proc.pid] = write_end
    (Path(session) / "fate.pid").write_text(f"{proc.pid}\n")
    return proc.pid


def _release_stale_lifelines() -> None:
    """Close the lifelines of keepers that are gone (their runtimes were stopped)."""
    for pid in [pid for pid in _lifelines if not processes.is_alive(pid)]:
        os.close(_lifelines.pop(pid))
        try:
            os.waitpid(pid, os.WNOHANG)     # our child: not left a zombie
        except ChildProcessError:
            pass


class Watch:
    """Whether the driver is gone: its lifeline at end-of-file, or its pid no longer
    the process it was."""

    def __init__(self, driver_pid: int, driver_start_s: float, lifeline_fd: int | None):
        self.driver_pid = driver_pid
        self.remembered = {driver_pid: driver_start_s} if driver_start_s else None
        self.lifeline_fd = lifeline_fd

    def wait(self, timeout_s: float) -> bool:
        """Up to timeout_s for the driver to go; True when it is gone."""
        if self.lifeline_fd is not None:
            readable, _, _ = select.select([self.lifeline_fd], [], [], timeout_s)
            if readable and os.read(self.lifeline_fd, 1) == b"":
                return True
        else:
            time.sleep(timeout_s)
        return self.driver_gone()

    def driver_gone(self) -> bool:
        if self.lifeline_fd is not None:
            readable, _, _ = select.select([self.lifeline_fd], [], [], 0)
            if readable and os.read(self.lifeline_fd, 1) == b"":
                return True
        if self.remembered is not None:
            return not processes.still_same(self.remembered)
        return not processes.is_alive(self.driver_pid)


def clean_up(session: Path, node_dir: Path | None) -> list[int]:
    """Stop the session's processes and remove what the runtime leaves behind."""
    from runtime.node.session import stop_session     # psutil and our pid-file rules
    stopped = stop_session(session) if session.is_dir() else []
    ipc_dirs.remove(session)
    if node_dir is not None:
        shutil.rmtree(node_dir, ignore_errors=True)
    return stopped


class _Terminated(Exception):
    """SIGTERM arrived: a normal stop, unless the driver is gone too."""


_terminated: list[int] = []


def _on_sigterm(signum, frame):
    if not _terminated:          # once: a second one must not cut the clean-up short
        _terminated.append(signum)
        raise _Terminated()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="runtime.node.fate")
    parser.add_argument("--driver-pid", type=int, required=True)
    parser.add_argument("--driver-start-s", type=float, default=0.0)
    parser.add_argument("--lifeline-fd", type=int,
                        help="read end of a pipe only the driver writes to")
    parser.add_argument("--session", required=True)
    parser.add_argument("--node-dir")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    signal.signal(signal.SIGTERM, _on_sigterm)
    watch = Watch(args.driver_pid, args.driver_start_s, args.lifeline_fd)
    try:
        while not watch.wait(POLL_S):
            pass
    except _Terminated:
        if not watch.driver_gone():
            return 0                          # a normal stop: the driver cleans up
    session = Path(args.session)
    node_dir = Path(args.node_dir) if args.node_dir else None
    stopped = clean_up(session, node_dir)
    log.info("driver %d is gone: stopped its runtime (pids %s)", args.driver_pid,
             stopped)
    return 0


if __name__ == "__main__":
    sys.exit(main())
