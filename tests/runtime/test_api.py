"""Tasks, actors, objects and errors through the public API on a real one-node cluster."""
from __future__ import annotations

import os

import numpy as np
import pytest

import runtime

pytestmark = pytest.mark.timeout(60)


@runtime.remote
def add(a, b=0):
    return a + b


@runtime.remote
class Counter:
    def __init__(self, start=0):
        self.value = start

    def increment(self, by=1):
        self.value += by
        return self.value

    def fail(self):
        raise KeyError("no such thing")


def test_tasks_and_refs_as_arguments(one_node):
    assert runtime.get(add.remote(1, 2)) == 3
    assert runtime.get([add.remote(i, b=i) for i in range(20)]) == [2 * i for i in range(20)]
    first = add.remote(1, 1)
    second = add.remote(first, b=add.remote(10))    # dependencies resolved first
    assert runtime.get(second) == 12


def test_put_get_and_wait(one_node):
    ref = runtime.put({"a": [1, 2, 3]})
    assert runtime.get(ref) == {"a": [1, 2, 3]}
    array = np.arange(3_000_000, dtype=np.float64)
    big = runtime.put(array)
    array[0] = 99.0                                   # put took a snapshot
    assert runtime.get(big)[0] == 0.0
    assert runtime.get(add.remote(big, 1))[:3].tolist() == [1.0, 2.0, 3.0]
    refs = [add.remote(i) for i in range(10)]
    ready, rest = runtime.wait(refs, num_returns=10, timeout=30)
    assert len(ready) == 10 and rest == []


def test_get_timeout(one_node):
    @runtime.remote
    def slow():
        import time
        time.sleep(30)
    with pytest.raises(runtime.GetTimeoutError):
        runtime.get(slow.remote(), timeout=0.2)
    ready, rest = runtime.wait([slow.remote()], timeout=0.1)
    assert ready == [] and len(rest) == 1
    # the not-ready one first: the count still sees the ready ones after it
    with pytest.raises(runtime.GetTimeoutError) as caught:
        runtime.get([slow.remote(), runtime.put(1), runtime.put(2)], timeout=0.2)
    assert caught.value.pending == 1


def test_user_exception_carries_remote_traceback(one_node):
    @runtime.remote
    def explode():
        raise ValueError("boom from the task")
    with pytest.raises(runtime.TaskError) as caught:
        runtime.get(explode.remote())
    assert "boom from the task" in str(caught.value)
    assert "explode" in caught.value.remote_traceback
    assert isinstance(caught.value.cause_exception, ValueError)
    # a task depending on a failed one fails with the same error
    with pytest.raises(runtime.TaskError):
        runtime.get(add.remote(explode.remote(), 1))


def test_actor_state_order_and_kill(one_node):
    counter = Counter.remote(10)
    assert runtime.get([counter.increment.remote() for _ in range(50)])[-1] == 60
    with pytest.raises(runtime.TaskError, match="KeyError"):
        runtime.get(counter.fail.remote())
    assert runtime.get(counter.increment.remote(by=5)) == 65
    runtime.kill(counter)
    with pytest.raises(runtime.ActorDiedError):
        runtime.get(counter.increment.remote(), timeout=30)


def test_named_actor(one_node):
    Counter.options(name="shared").remote(100)
    handle = runtime.get_actor("shared")
    assert runtime.get(handle.increment.remote()) == 101
    with pytest.raises(ValueError):
        runtime.get_actor("nobody")
    with pytest.raises(runtime.RuntimeSystemError, match="'shared' already exists") as taken:
        Counter.options(name="shared").remote()
    assert isinstance(taken.value, ValueError)     # as Ray raises


def test_worker_print_reaches_driver_with_prefix(one_node, capfd):
    @runtime.remote
    def speak():
        print("hello from a worker")
        return os.getpid()
    pid = runtime.get(speak.remote())
    from tests.runtime.conftest import wait_until

    def printed():
        out = capfd.readouterr().out
        printed.text += out
        return "hello from a worker" in printed.text
    printed.text = ""
    wait_until(printed, timeout_s=10)
    line = next(l for l in printed.text.splitlines() if "hello from a worker" in l)
    assert line.startswith(f"(head pid={pid})")


def test_cluster_state(one_node):
    assert runtime.cluster_resources() == {"CPU": 2.0}
    nodes = runtime.nodes()
    assert [n["node_id"] for n in nodes] == ["head"] and nodes[0]["alive"]
    assert runtime.available_resources()["CPU"] <= 2.0
    runtime.request_resources(num_cpus=3, bundles=[{"GPU": 1}])
    from runtime import state
    load = state.get_load()
    assert load["request_resources"] == [{"CPU": 1.0}] * 3 + [{"GPU": 1}]


EMBEDDED = """
import os, runtime
info = runtime.init(num_cpus=1)
@runtime.remote
def pid():
    return os.getpid()
print(runtime.get(pid.remote()))
print(runtime.cluster_resources())
"""


def test_init_without_cluster_starts_an_embedded_runtime_torn_down_at_exit(tmp_path):
    import subprocess
    import sys
    from pathlib import Path
    from runtime.node import session
    script = tmp_path / "embedded.py"
    script.write_text(EMBEDDED)
    env = dict(os.environ, CORRAL_NODE_DIR=str(tmp_path / "no-node"),
               PYTHONPATH=str(Path(runtime.__file__).resolve().parent.parent))
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                         timeout=60, env=env)
    assert out.returncode == 0, out.stderr
    worker_pid, resources = out.stdout.strip().splitlines()[-2:]
    assert resources == "{'CPU': 1.0}"
    assert not session.is_alive(int(worker_pid))     # the embedded runtime is gone


def test_work_no_node_can_fit_is_logged_once_and_keeps_waiting(one_node, caplog,
                                                              monkeypatch):
    import logging
    import time
    from runtime.driver import io_thread as driver_io
    monkeypatch.setattr(driver_io, "UNFIT_WARNING_S", 0.3)

    @runtime.remote(num_cpus=64)
    def huge():
        return 1
    refs = [huge.remote() for _ in range(2)]
    with caplog.at_level(logging.WARNING, logger="corral.driver"):
        from tests.runtime.conftest import wait_until
        wait_until(lambda: any("need {'CPU': 64.0}" in r.getMessage()
                               for r in caplog.records), timeout_s=10)
        time.sleep(1.5)    # a few more heartbeats: still one warning
    warnings = [r.getMessage() for r in caplog.records if "CPU': 64.0" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].startswith("2 task(s)")
    ready, _ = runtime.wait(refs, timeout=0)
    assert ready == []     # waiting, not failed


def test_get_and_wait_edges_as_in_ray(one_node):
    assert runtime.get([]) == []
    assert runtime.wait([]) == ([], [])
    with pytest.raises(TypeError, match="ObjectRef or a list of them, got int"):
        runtime.get(5)


@runtime.remote(num_cpus=1)
class FailsToStart:
    def __init__(self):
        raise ValueError("no config here")

    def ping(self):
        return "pong"


def test_an_actor_whose_init_raises_reports_it_and_frees_its_resources(one_node):
    actors = [FailsToStart.remote() for _ in range(2)]      # 2 of the node's 2 CPUs
    for actor in actors:
        with pytest.raises(runtime.ActorDiedError, match="ValueError: no config here"):
            runtime.get(actor.ping.remote(), timeout=30)
    from tests.runtime.conftest import wait_until
    wait_until(lambda: runtime.available_resources().get("CPU") == 2.0, 10)

    @runtime.remote(num_cpus=2)
    def needs_both():
        return "ran"
    assert runtime.get(needs_both.remote(), timeout=30) == "ran"


@pytest.mark.parametrize("options, message", [
    ({"num_cpus": -1}, "num_cpus must be a number >= 0, got -1"),
    ({"num_gpus": "1"}, "num_gpus must be a number >= 0, got '1'"),
    ({"resources": {"ssd": -2}}, "resources\\['ssd'\\] must be a number >= 0"),
    ({"num_cpus": float("nan")}, "num_cpus must be a number >= 0"),
])
def test_bad_resource_amounts_are_refused_where_they_are_written(options, message):
    with pytest.raises(ValueError, match=message):
        runtime.remote(**options)(lambda: None)
    with pytest.raises(ValueError, match=message):
        runtime.remote(lambda: None).options(**options)
