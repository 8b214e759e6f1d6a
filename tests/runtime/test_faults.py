"""Faults with real processes killed by pid: a worker mid-task, a whole node agent
mid-task (heartbeat loss), actors restarting, and a driver that exits."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import runtime
from runtime.node import session
from tests.runtime.conftest import wait_until

pytestmark = pytest.mark.timeout(120)


def _attempt_task(marker_dir: str):
    """Records each attempt (node, pid) in marker_dir; the first attempt blocks so the
    test can kill it; later attempts return."""
    import os
    import time
    attempts = sorted(os.listdir(marker_dir))
    with open(os.path.join(marker_dir, f"attempt-{len(attempts)}"), "w") as handle:
        handle.write(f"{os.environ['CORRAL_NODE_ID']} {os.getpid()}")
    if not attempts:
        time.sleep(120)
    return len(attempts)


def _first_attempt(marker_dir: Path):
    path = marker_dir / "attempt-0"
    wait_until(lambda: path.exists() and path.read_text().count(" ") == 1)
    node, pid = path.read_text().split()
    return node, int(pid)


def test_worker_killed_mid_task_is_retried(one_node, tmp_path):
    markers = tmp_path / "markers"
    markers.mkdir()
    task = runtime.remote(max_retries=2)(_attempt_task)
    ref = task.remote(str(markers))
    _, pid = _first_attempt(markers)
    os.kill(pid, signal.SIGKILL)
    assert runtime.get(ref, timeout=60) == 1


def test_worker_death_without_retries_names_the_cause(one_node, tmp_path):
    markers = tmp_path / "markers"
    markers.mkdir()
    task = runtime.remote(max_retries=0)(_attempt_task)
    ref = task.remote(str(markers))
    _, pid = _first_attempt(markers)
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(runtime.TaskError, match="died"):
        runtime.get(ref, timeout=60)


def test_node_killed_mid_task_retries_elsewhere_and_restarts_actor(local_cluster, tmp_path):
    local_cluster.start_head(num_cpus=1)
    local_cluster.add_node("a", num_cpus=1, resources={"pool": 1, "slot": 1})
    local_cluster.add_node("b", num_cpus=1, resources={"pool": 1, "slot": 1})
    local_cluster.connect()
    markers = tmp_path / "markers"
    markers.mkdir()
    task = runtime.remote(max_retries=3, resources={"pool": 1})(_attempt_task)
    ref = task.remote(str(markers))
    victim, _ = _first_attempt(markers)

    @runtime.remote(resources={"slot": 1}, max_restarts=1)
    class Where:
        def node(self):
            return os.environ["CORRAL_NODE_ID"]
    actor = Where.remote()
    first_home = runtime.get(actor.node.remote())
    os.kill(local_cluster.nodes[victim].pids["agent"], signal.SIGKILL)
    assert runtime.get(ref, timeout=60) == 1
    survivor = ({"a", "b"} - {victim}).pop()
    assert (markers / "attempt-1").read_text().split()[0] == survivor
    wait_until(lambda: not {n["node_id"]: n for n in runtime.nodes()}[victim]["alive"])
    if first_home == victim:
        deadline = time.monotonic() + 60
        while True:  # calls in flight during the restart may fail; new ones succeed
            try:
                assert runtime.get(actor.node.remote(), timeout=60) == survivor
                break
            except runtime.ActorDiedError:
                assert time.monotonic() < deadline
    else:
        assert runtime.get(actor.node.remote()) == survivor


def test_actor_without_restarts_dies_with_its_node(local_cluster):
    local_cluster.start_head(num_cpus=1)
    local_cluster.add_node("doomed", num_cpus=1, resources={"doomed": 1})
    local_cluster.connect()

    @runtime.remote(resources={"doomed": 1})
    class Pinned:
        def ping(self):
            return "pong"
    actor = Pinned.remote()
    assert runtime.get(actor.ping.remote()) == "pong"
    os.kill(local_cluster.nodes["doomed"].pids["agent"], signal.SIGKILL)
    wait_until(lambda: not {n["node_id"]: n for n in runtime.nodes()}["doomed"]["alive"])
    with pytest.raises(runtime.ActorDiedError):
        runtime.get(actor.ping.remote(), timeout=30)


DRIVER = """
import os, sys, runtime
runtime.init(address=sys.argv[1], keys_dir=sys.argv[2])
@runtime.remote
class Holder:
    def pid(self):
        return os.getpid()
holder = Holder.options(name="kept").remote()
print(runtime.get(holder.pid.remote()), flush=True)
os._exit(0)   # no shutdown(): the cluster must notice on its own
"""


def test_driver_exit_cleans_up_its_actors(local_cluster, tmp_path):
    local_cluster.start_head(num_cpus=1)
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    out = subprocess.run([sys.executable, str(script), local_cluster.head.address,
                          str(local_cluster.keys_dir)], capture_output=True, text=True,
                         timeout=60, cwd=str(Path(runtime.__file__).parent.parent))
    assert out.returncode == 0, out.stderr
    actor_pid = int(out.stdout.strip().splitlines()[-1])

    def gone():
        try:
            os.kill(actor_pid, 0)
        except ProcessLookupError:
            return True
        return Path(f"/proc/{actor_pid}/stat").read_text().split()[2] == "Z"
    wait_until(gone, timeout_s=30)
    local_cluster.connect()
    with pytest.raises(ValueError):
        runtime.get_actor("kept")


def test_actor_worker_killed_is_restarted_then_dies(one_node):
    @runtime.remote(max_restarts=1)
    class Stateful:
        def __init__(self):
            self.calls = 0

        def pid(self):
            self.calls += 1
            return os.getpid(), self.calls

    actor = Stateful.remote()
    first_pid, _ = runtime.get(actor.pid.remote())
    runtime.get(actor.pid.remote())
    os.kill(first_pid, signal.SIGKILL)

    def restarted():
        try:
            pid, calls = runtime.get(actor.pid.remote(), timeout=30)
        except runtime.ActorDiedError:
            return None          # a call that raced with the death
        return (pid, calls) if pid != first_pid else None
    second_pid, calls = wait_until(restarted)
    assert calls == 1                      # a fresh instance: state starts over
    os.kill(second_pid, signal.SIGKILL)    # no restarts left

    def dead():
        try:
            runtime.get(actor.pid.remote(), timeout=30)
        except runtime.ActorDiedError:
            return True
        return False
    wait_until(dead)


def test_node_restarted_with_the_same_id_is_used_again(local_cluster):
    local_cluster.start_head(num_cpus=1)
    local_cluster.add_node("phoenix", num_cpus=1, resources={"phoenix": 1})
    local_cluster.connect()

    @runtime.remote(resources={"phoenix": 1})
    def agent_pid():
        return os.getppid()
    first = runtime.get(agent_pid.remote(), timeout=60)
    assert first == local_cluster.nodes["phoenix"].pids["agent"]
    os.kill(first, signal.SIGKILL)
    wait_until(lambda: not session.is_alive(first))   # SIGKILL is not instant
    local_cluster.add_node("phoenix", num_cpus=1, resources={"phoenix": 1})
    second = runtime.get(agent_pid.remote(), timeout=60)
    assert second == local_cluster.nodes["phoenix"].pids["agent"] != first
