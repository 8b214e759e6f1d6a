"""Direct worker leases (runtime.driver.leases, runtime.agent.leases) with real
processes: tasks go straight to leased task workers; a lease holds its resources while
it lives and goes back when idle; the agent revokes it when its node drains; a leased
worker that dies has its tasks retried (or failed) as under the agent; a driver that
exits returns its leases, and one that dies has its leased workers killed.

Leases are on here (CORRAL_LEASES=1, inherited by the node processes). Tasks wait on
files, not sleeps; nothing asserts timings."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import runtime
from runtime import api, state
from runtime.errors import TaskError
from tests.runtime.conftest import wait_until

pytestmark = pytest.mark.timeout(120)
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def leasing(monkeypatch):
    monkeypatch.setenv("CORRAL_LEASES", "1")


def _leases():
    return api.current_core().io.leases


@runtime.remote(num_cpus=1)
def add_one(x):
    return x + 1


@runtime.remote(num_cpus=1)
def hold(started: str, release: str):
    Path(started).write_text(f"{os.getpid()} {os.environ['CORRAL_NODE_ID']}")
    while not os.path.exists(release):
        time.sleep(0.02)
    return os.getpid()


@runtime.remote(num_cpus=1, max_retries=1)
def die_once(marker: str):
    if not os.path.exists(marker):
        Path(marker).touch()
        os._exit(1)
    return "second try"


@runtime.remote(num_cpus=1, max_retries=0)
def die():
    os._exit(1)


@runtime.remote(num_cpus=1)
def parent(x):
    return runtime.get(add_one.remote(x), timeout=60) * 10


def _cpu_available() -> float:
    return runtime.available_resources().get("CPU", 0.0)


def test_tasks_go_to_leased_workers_and_the_lease_holds_its_cpu_until_idle(
        leasing, local_cluster, tmp_path):
    local_cluster.start_head(num_cpus=2)
    local_cluster.connect()
    assert runtime.get([add_one.remote(i) for i in range(300)]) == \
        [i + 1 for i in range(300)]
    assert _leases().granted_total >= 1            # they went straight to workers
    started, release = tmp_path / "started", tmp_path / "release"
    ref = hold.remote(str(started), str(release))
    wait_until(started.exists, what="the held task started")
    assert _leases().leases                       # on a lease...
    wait_until(lambda: _cpu_available() <= 1.0, what="the lease's CPU counted as used")
    release.touch()
    assert isinstance(runtime.get(ref, timeout=30), int)
    wait_until(lambda: not _leases().leases, what="the idle lease returned")
    wait_until(lambda: _cpu_available() == 2.0, what="its CPU free again")


@runtime.remote(num_cpus=1)
def parent_of_held(started: str, release: str):
    return runtime.get(hold.remote(started, release), timeout=60)


def test_a_task_blocking_in_get_on_a_leased_worker_lends_its_cpu(
        leasing, local_cluster, tmp_path):
    local_cluster.start_head(num_cpus=1)
    local_cluster.connect()
    # a task worker is up once a lease was granted (until then tasks use the agent)
    wait_until(lambda: runtime.get(add_one.remote(0)) and _leases().granted_total,
               what="a lease granted")
    started, release = tmp_path / "started", tmp_path / "release"
    ref = parent_of_held.remote(str(started), str(release))
    # the child runs on the node's only CPU: lent by its parent, blocked in get()
    wait_until(started.exists, what="the child task started")
    assert _leases().leases
    release.touch()
    assert isinstance(runtime.get(ref, timeout=60), int)
    assert runtime.get([parent.remote(i) for i in range(3)], timeout=60) == [10, 20, 30]


def test_a_leased_worker_that_dies_has_its_task_retried_then_failed(
        leasing, local_cluster, tmp_path):
    local_cluster.start_head(num_cpus=2)
    local_cluster.connect()
    runtime.get(add_one.remote(0))                 # leases are in use
    assert runtime.get(die_once.remote(str(tmp_path / "marker")), timeout=60) == \
        "second try"
    with pytest.raises(TaskError):
        runtime.get(die.remote(), timeout=60)
    assert _leases().worker_deaths >= 2
    # the node goes on: its CPUs are free again and tasks run
    assert runtime.get([add_one.remote(i) for i in range(20)], timeout=60) == \
        list(range(1, 21))
    wait_until(lambda: _cpu_available() == 2.0, what="the dead workers' CPUs free")


def test_a_draining_node_revokes_its_leases(leasing, local_cluster, tmp_path):
    local_cluster.start_head(num_cpus=0)
    local_cluster.add_node("w1", num_cpus=1)
    local_cluster.add_node("w2", num_cpus=1)
    local_cluster.connect()
    started, release = tmp_path / "started", tmp_path / "release"
    ref = hold.remote(str(started), str(release))
    wait_until(started.exists, what="the held task started")
    busy = started.read_text().split()[1]
    other = ({"w1", "w2"} - {busy}).pop()
    assert state.drain_nodes([busy]) == []         # busy: not drained yet
    wait_until(lambda: any(lease.revoked for lease in list(_leases().leases.values())),
               what="the busy node's lease revoked")
    second = tmp_path / "second"
    second_ref = hold.remote(str(second), str(release))   # new work: the other node
    wait_until(second.exists, what="the second task started")
    assert second.read_text().split()[1] == other
    release.touch()
    runtime.get([ref, second_ref], timeout=30)
    # the revoked lease went back once its task was answered: the node is idle
    assert wait_until(lambda: state.drain_nodes([busy]) or None) == [busy]


_DRIVER = """
import os, sys, time
from pathlib import Path
import runtime
runtime.init(address=sys.argv[1], keys_dir=sys.argv[2])

@runtime.remote(num_cpus=1)
def pid_of(path, wait):
    Path(path).write_text(str(os.getpid()))
    while wait and True:
        time.sleep(0.05)
    return os.getpid()

if sys.argv[4] == "exit":
    runtime.get(pid_of.remote(sys.argv[3], False))
    runtime.shutdown()
else:
    pid_of.remote(sys.argv[3], True)
    time.sleep(600)
"""


def _driver(local_cluster, pid_file: Path, how: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.Popen([sys.executable, "-c", _DRIVER, local_cluster.head.address,
                             str(local_cluster.keys_dir), str(pid_file), how], env=env)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and \
        "Z" not in Path(f"/proc/{pid}/stat").read_text().split()[2]


def test_driver_exit_returns_its_leases_and_a_dead_drivers_workers_are_killed(
        leasing, local_cluster, tmp_path):
    local_cluster.start_head(num_cpus=1)
    local_cluster.connect()
    exiting = _driver(local_cluster, tmp_path / "exit.pid", "exit")
    try:
        assert exiting.wait(60) == 0
    finally:                  # (a driver that hangs must not outlive the test)
        if exiting.poll() is None:
            exiting.kill()
            exiting.wait(30)
    returned_pid = int((tmp_path / "exit.pid").read_text())
    wait_until(lambda: _cpu_available() == 1.0, what="the exited driver's lease back")
    assert _alive(returned_pid)                    # returned, not killed
    assert runtime.get(add_one.remote(1), timeout=30) == 2
    dying = _driver(local_cluster, tmp_path / "die.pid", "die")
    try:
        wait_until((tmp_path / "die.pid").exists, what="the dying driver's task started")
        leased_pid = int((tmp_path / "die.pid").read_text())
    finally:
        dying.send_signal(signal.SIGKILL)
        dying.wait(30)
    wait_until(lambda: not _alive(leased_pid), what="the dead driver's worker killed")
    wait_until(lambda: _cpu_available() == 1.0, what="its CPU free again")
    assert runtime.get(add_one.remote(2), timeout=30) == 3
