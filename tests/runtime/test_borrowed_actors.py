"""A process holding a passed-on actor handle (a task's or actor's worker) follows the
actor when its owner restarts it on another node, and learns at once when the actor
is gone for good."""
from __future__ import annotations

import os
import signal

import pytest

import runtime
from tests.runtime.conftest import wait_until

pytestmark = pytest.mark.timeout(120)


@runtime.remote(num_cpus=0, resources={"spot": 1}, max_restarts=1)
class Counter:
    def __init__(self):
        self.count = 0

    def add(self):
        self.count += 1
        return self.count, os.environ["CORRAL_NODE_ID"]


@runtime.remote(num_cpus=0)
class Caller:
    """Holds a borrowed handle and calls through it."""

    def __init__(self, counter):
        self.counter = counter

    def call(self, method="add"):
        return runtime.get(getattr(self.counter, method).remote(), timeout=60)


@runtime.remote(num_cpus=0, max_restarts=1)
class Pid:
    def pid(self):
        return os.getpid()


def _kill_node(cluster, node_id: str) -> None:
    os.kill(cluster.nodes[node_id].pids["agent"], signal.SIGKILL)
    wait_until(lambda: not {n["node_id"]: n for n in runtime.nodes()}[node_id]["alive"],
               timeout_s=30)


def test_a_borrowed_handle_follows_a_restart_on_another_node(local_cluster):
    local_cluster.start_head(num_cpus=1)
    local_cluster.add_node("first", num_cpus=1, resources={"spot": 1})
    local_cluster.connect()
    counter = Counter.remote()
    assert runtime.get(counter.add.remote(), timeout=60) == (1, "first")
    caller = Caller.remote(counter)
    assert runtime.get(caller.call.remote(), timeout=60) == (2, "first")
    local_cluster.add_node("second", num_cpus=1, resources={"spot": 1})
    _kill_node(local_cluster, "first")
    # the owner restarts it on "second" (fresh state); the caller's handle follows
    assert runtime.get(counter.add.remote(), timeout=60) == (1, "second")
    assert runtime.get(caller.call.remote(), timeout=60) == (2, "second")


def test_a_borrowed_handle_fails_at_once_when_no_restart_is_left(local_cluster):
    local_cluster.start_head(num_cpus=1)
    local_cluster.add_node("only", num_cpus=1, resources={"spot": 1})
    local_cluster.connect()
    counter = Counter.options(max_restarts=0).remote()
    caller = Caller.remote(counter)
    assert runtime.get(caller.call.remote(), timeout=60) == (1, "only")
    _kill_node(local_cluster, "only")
    with pytest.raises(runtime.ActorDiedError):
        runtime.get(counter.add.remote(), timeout=30)
    with pytest.raises(runtime.TaskError, match="ActorDiedError"):
        runtime.get(caller.call.remote(), timeout=15)   # not after the 30 s relocation wait


def test_a_borrowed_handle_follows_a_restart_after_its_worker_dies(one_node):
    target = Pid.remote()
    caller = Caller.remote(target)
    first = runtime.get(caller.call.remote("pid"), timeout=60)
    os.kill(first, signal.SIGKILL)
    # the owner restarts it on the same node; a call in flight at the death may fail,
    # later ones reach the new worker
    import time
    deadline = time.monotonic() + 60
    while True:
        try:
            second = runtime.get(caller.call.remote("pid"), timeout=60)
            break
        except runtime.TaskError:
            assert time.monotonic() < deadline
    assert second != first
    assert runtime.get(target.pid.remote(), timeout=60) == second
