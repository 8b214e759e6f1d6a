"""Tasks and actors that call remote functions and actors themselves (their worker
connects to its node's runtime on first use), actor handles passed to tasks, and user
exceptions that cannot be rebuilt on the driver."""
from __future__ import annotations

import pytest

import runtime

pytestmark = pytest.mark.timeout(90)


@runtime.remote(num_cpus=0, resources={"leaf": 1})
def leaf(x):
    import os
    return x * 2, os.environ.get("CORRAL_NODE_ID")


@runtime.remote(num_cpus=1)
def parent(x):
    value, node = runtime.get(leaf.remote(x), timeout=30)
    return value + 1, node


@runtime.remote(num_cpus=0)
class Tally:
    def __init__(self):
        self.total = 0

    def add(self, amount):
        self.total += amount
        return self.total


@runtime.remote(num_cpus=1)
def add_through(tally, amount):
    return runtime.get(tally.add.remote(amount), timeout=30)


@runtime.remote(num_cpus=0)
class Delegator:
    def twice(self, x):
        return runtime.get(leaf.remote(x), timeout=30)[0]


class NeedsTwoArguments(Exception):
    def __init__(self, code, detail):   # pickles as (message,): cannot be rebuilt
        super().__init__(f"code {code}: {detail}")


@runtime.remote
def raises_odd_exception():
    raise NeedsTwoArguments(7, "out of widgets")


def test_a_task_calls_a_task_on_another_node(local_cluster):
    local_cluster.start_head(num_cpus=1)
    local_cluster.add_node("leafy", num_cpus=1, resources={"leaf": 2})
    local_cluster.connect()
    assert runtime.get(parent.remote(20), timeout=60) == (41, "leafy")


def test_actor_handles_passed_to_tasks_and_actors_calling_tasks(local_cluster):
    local_cluster.start_head(num_cpus=2, resources={"leaf": 1})
    local_cluster.connect()
    tally = Tally.remote()            # passed on before it is even placed
    assert runtime.get([add_through.remote(tally, 5), add_through.remote(tally, 5)],
                       timeout=60) in ([5, 10], [10, 5])
    assert runtime.get(tally.add.remote(1)) == 11     # the same actor, seen by its owner
    assert runtime.get(Delegator.remote().twice.remote(4), timeout=60) == 8


def test_an_exception_that_cannot_be_rebuilt_still_reports_its_message(one_node):
    with pytest.raises(runtime.TaskError) as caught:
        runtime.get(raises_odd_exception.remote())
    text = str(caught.value)
    assert "NeedsTwoArguments: code 7: out of widgets" in text
    assert "Remote traceback" in text and "raises_odd_exception" in text


@runtime.remote(num_cpus=1)
def depth_first(depth):
    if depth == 0:
        return 1
    return 1 + runtime.get(depth_first.remote(depth - 1), timeout=60)


@runtime.remote(num_cpus=1)
def fan_out(width):
    return sum(runtime.get([depth_first.remote(0) for _ in range(width)], timeout=60))


def test_a_task_waiting_in_get_lends_its_cpu_so_deeper_work_runs(one_node):
    # 2 CPUs: seven nested levels, each waiting for the next, and twelve parents of the
    # same shape (queued early behind each other) each waiting for children of that shape
    assert runtime.get(depth_first.remote(6), timeout=60) == 7
    assert runtime.get([fan_out.remote(3) for _ in range(12)], timeout=60) == [3] * 12
    # once everything finished, every CPU is back
    from tests.runtime.conftest import wait_until
    wait_until(lambda: runtime.available_resources().get("CPU") == 2.0, 10)


@runtime.remote(num_cpus=0)
def speak_inner():
    import os
    print("said by the inner task")
    return os.getpid()


@runtime.remote(num_cpus=0)
def speak_outer():
    import os
    return os.getpid(), runtime.get(speak_inner.remote(), timeout=30)


def test_a_nested_task_prints_once_under_its_own_node_and_pid(one_node, capfd):
    outer_pid, inner_pid = runtime.get(speak_outer.remote(), timeout=60)
    from tests.runtime.conftest import wait_until
    seen = []

    def printed():
        seen.append(capfd.readouterr().out)
        return "said by the inner task" in "".join(seen)
    wait_until(printed, timeout_s=10)
    lines = [line for line in "".join(seen).splitlines() if "said by the inner task" in line]
    assert lines == [f"(head pid={inner_pid}) said by the inner task"]
    assert outer_pid != inner_pid
