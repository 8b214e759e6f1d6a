"""Nothing of a runtime outlives what owns it, with real processes killed by pid: an
embedded runtime (init() with no address) dies with its driver however the driver ends
(SIGTERM, SIGKILL, started from a thread, a normal shutdown), and ipc socket dirs go
when their agent stops or is found dead at the next start."""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from runtime.node import ipc_dirs
from runtime.node import processes
from runtime.node import session
from runtime.node.startup import start_node
from tests.helpers import wait_for
from tests.runtime.conftest import wait_until

pytestmark = pytest.mark.timeout(120)
REPO = str(Path(__file__).resolve().parents[2])

# A driver with an embedded runtime and one actor; it prints what the test needs, then
# waits to be ended. IN_THREAD: init() runs in a thread that then exits.
DRIVER = """
import json, os, sys, threading, time
import runtime
from runtime import api
from runtime.node import ipc_dirs
from runtime.node import session

def start():
    runtime.init(num_cpus=1)
if {in_thread}:
    thread = threading.Thread(target=start)
    thread.start()
    thread.join()
else:
    start()

@runtime.remote
class Actor:
    def pid(self):
        return os.getpid()

actor = Actor.remote()
actor_pid = runtime.get(actor.pid.remote(), timeout=60)
embedded = api._embedded
print(json.dumps({{"session": str(embedded["session"]), "node_dir": embedded["node_dir"],
                  "pids": session.running_pids(embedded["session"]),
                  "actor_pid": actor_pid,
                  "ipc_dir": ipc_dirs.path_for(embedded["session"])}}), flush=True)
if {shutdown}:
    runtime.shutdown()
    print("shut down", flush=True)
time.sleep(300)
"""


class Driver:
    """A driver process and what its embedded runtime is made of (by pid)."""

    def __init__(self, in_thread: bool = False, shutdown: bool = False):
        code = DRIVER.format(in_thread=in_thread, shutdown=shutdown)
        self.proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO,
                                     stdout=subprocess.PIPE, text=True,
                                     env=dict(os.environ, PYTHONPATH=REPO))
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait(30)
            raise AssertionError(f"the driver exited ({self.proc.returncode}) before "
                                 "its runtime was up")
        self.info = json.loads(line)
        self.pids = {name: pid for name, pid in self.info["pids"].items()}
        agent = self.pids["agent"]
        self.workers = [child.pid for child in psutil.Process(agent).children()]
        self.node_dir = Path(self.info["node_dir"])
        self.ipc_dir = self.info["ipc_dir"]

    def all_pids(self) -> set[int]:
        return set(self.pids.values()) | set(self.workers) | {self.info["actor_pid"]}

    def left(self) -> set[int]:
        return {pid for pid in self.all_pids() if processes.is_alive(pid)}

    def gone(self) -> bool:
        return not self.left() and not os.path.exists(self.ipc_dir) and \
            not self.node_dir.exists()

    def describe(self) -> str:
        keeper_log = self.node_dir / "session" / "logs" / "fate.log"
        return (f"left: {sorted(self.left())} of {self.pids} workers {self.workers}; "
                f"ipc dir there: {os.path.exists(self.ipc_dir)}; node dir there: "
                f"{self.node_dir.exists()}; keeper log: "
                f"{keeper_log.read_text()[-2000:] if keeper_log.exists() else None}")

    def clean_up(self) -> None:
        """Whatever the test left (on failure): ours, by pid."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(30)
        self.proc.stdout.close()
        processes.kill(self.left(), reap=True)
        shutil.rmtree(self.node_dir, ignore_errors=True)
        ipc_dirs.remove_dir(self.ipc_dir)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL],
                         ids=["SIGTERM", "SIGKILL"])
def test_embedded_runtime_dies_with_its_driver(signum):
    driver = Driver()
    try:
        assert {"control", "agent", "fate"} <= set(driver.pids)
        assert driver.info["actor_pid"] in driver.workers
        assert os.path.exists(os.path.join(driver.ipc_dir, "agent.sock"))
        assert not driver.left() ^ driver.all_pids()      # all of it runs now
        killed_s = time.monotonic()
        driver.proc.send_signal(signum)
        driver.proc.wait(30)
        wait_for(driver.gone, 30, "the runtime to go", describe=driver.describe)
        print(f"{signal.Signals(signum).name}: runtime gone "
              f"{time.monotonic() - killed_s:.2f} s after the driver was killed")
    finally:
        driver.clean_up()
    assert not driver.left()


def test_runtime_started_from_a_thread_dies_with_its_driver():
    """init() in a thread that ended: the runtime lives on with the driver (a death
    signal would have followed that thread), and dies with it."""
    driver = Driver(in_thread=True)
    try:
        time.sleep(1.0)               # the thread is gone; the runtime is not
        assert not driver.left() ^ driver.all_pids()
        driver.proc.kill()
        driver.proc.wait(30)
        wait_for(driver.gone, 30, "the runtime to go", describe=driver.describe)
    finally:
        driver.clean_up()


def test_shutdown_stops_the_keeper_and_leaves_nothing():
    driver = Driver(shutdown=True)
    try:
        assert driver.proc.stdout.readline().strip() == "shut down"
        assert driver.gone()
        assert driver.proc.poll() is None        # the driver lives on without it
    finally:
        driver.clean_up()


def _start_head(base: Path, name: str):
    return start_node(head=True, port=0, num_cpus=1, node_id=name, node_dir=base / name,
                      node_ip="127.0.0.1")


def test_agent_killed_leaves_no_socket_after_the_next_start(tmp_path):
    first = _start_head(tmp_path, "first")
    second = None
    try:
        directory = ipc_dirs.path_for(first.session)
        agent = first.pids["agent"]
        assert ipc_dirs.owner_of(directory)["pid"] == agent
        workers = processes.children(agent)
        processes.kill([agent], reap=True)
        wait_until(lambda: not any(processes.is_alive(pid) for pid in workers))
        socket_path = os.path.join(directory, "agent.sock")
        assert os.path.exists(socket_path)       # left behind by a SIGKILL
        # (stale once the agent's last thread is gone: until then it still listens)
        wait_until(lambda: ipc_dirs.is_stale(directory))
        second = _start_head(tmp_path, "second")
        assert not os.path.exists(directory)
        assert os.path.exists(os.path.join(ipc_dirs.path_for(second.session), "agent.sock"))
    finally:
        for started in (first, second):
            if started is not None:
                session.stop_session(started.session)
    assert not os.path.exists(ipc_dirs.path_for(second.session))


def test_agent_stopped_by_signal_removes_its_ipc_dir(tmp_path):
    """As when the autoscaler removes a node on this machine: only its agent is
    signalled; no `corral stop` runs."""
    started = _start_head(tmp_path, "node")
    try:
        directory = ipc_dirs.path_for(started.session)
        assert os.path.isdir(directory)
        agent = started.pids["agent"]
        os.kill(agent, signal.SIGTERM)
        wait_until(lambda: not processes.is_alive(agent))
        assert not os.path.exists(directory)
    finally:
        session.stop_session(started.session)


def test_clean_stale_keeps_what_a_live_process_uses(tmp_path):
    started = _start_head(tmp_path, "live")
    try:
        directory = ipc_dirs.path_for(started.session)
        assert not ipc_dirs.is_stale(directory)
        assert directory not in ipc_dirs.clean_stale()
        assert os.path.exists(os.path.join(directory, "agent.sock"))
    finally:
        session.stop_session(started.session)


def test_unclaimed_dir_is_stale_only_when_old_and_no_socket_answers(tmp_path):
    """A directory without owner.json (an older corral's): judged by its sockets."""
    directory = tmp_path / "ipc"
    directory.mkdir(mode=0o700)
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(directory / "agent.sock"))
    dead.close()                                  # the file stays; nobody listens
    old_s = time.time() - ipc_dirs.UNCLAIMED_GRACE_S - 5
    os.utime(directory, (old_s, old_s))
    assert ipc_dirs.is_stale(str(directory))
    os.utime(directory, None)                     # young: perhaps being set up
    assert not ipc_dirs.is_stale(str(directory))
    os.utime(directory, (old_s, old_s))
    live = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        live.bind(str(directory / "actor-1.sock"))
        live.listen(1)
        os.utime(directory, (old_s, old_s))
        assert not ipc_dirs.is_stale(str(directory))
    finally:
        live.close()


def test_owner_with_a_reused_pid_is_not_taken_for_alive(tmp_path):
    """owner.json names pid and start time: the same pid with another start time (a
    re-used pid) is a dead owner, unless a socket in the dir still answers (an owner in
    another PID namespace that shares /tmp looks dead from here)."""
    directory = tmp_path / "ipc"
    directory.mkdir(mode=0o700)
    me = os.getpid()
    (directory / ipc_dirs.OWNER_FILE).write_text(json.dumps(
        {"pid": me, "start_time_s": processes.start_time_s(me)}))
    assert not ipc_dirs.is_stale(str(directory))
    (directory / ipc_dirs.OWNER_FILE).write_text(json.dumps(
        {"pid": me, "start_time_s": processes.start_time_s(me) - 1000.0}))
    assert ipc_dirs.is_stale(str(directory))
    live = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        live.bind(str(directory / "agent.sock"))
        live.listen(1)
        assert not ipc_dirs.is_stale(str(directory))
    finally:
        live.close()
    assert ipc_dirs.is_stale(str(directory))
