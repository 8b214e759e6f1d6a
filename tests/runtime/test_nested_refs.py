"""ObjectRefs inside task arguments (lists, dicts) reach the task as refs, whose values
are already there; they can be waited on, passed on and kept by actors, and the values
are freed once the task is done and the driver drops them. Refs inside put() values
and task results carry their values."""
from __future__ import annotations

import pytest

import runtime

pytestmark = pytest.mark.timeout(120)


@runtime.remote(num_cpus=0)
def kinds_and_total(refs):
    kinds = sorted({type(ref).__name__ for ref in refs})
    ok = all(isinstance(ref, runtime.ObjectRef) for ref in refs)
    return ok, kinds, sum(runtime.get(refs))


@runtime.remote(num_cpus=0)
def waits_on_dict(named):
    ready, rest = runtime.wait(list(named.values()), num_returns=len(named), timeout=5)
    return runtime.get(named["a"]), len(ready), len(rest)


@runtime.remote(num_cpus=0)
def passes_on(refs):
    return runtime.get(kinds_and_total.remote(refs), timeout=30)[2]


@runtime.remote(num_cpus=0)
def slow_value(value):
    import time
    time.sleep(0.3)
    return value


@runtime.remote(num_cpus=0)
def fails():
    raise ValueError("no widgets")


@runtime.remote(num_cpus=0)
def returns_refs(count):
    return [runtime.put(number * 10) for number in range(count)]


@runtime.remote(num_cpus=0)
class Keeper:
    def __init__(self):
        self.refs = []

    def keep(self, refs):
        self.refs = refs
        return len(refs)

    def total(self):
        return sum(runtime.get(self.refs))


def test_refs_inside_arguments_arrive_as_refs_with_their_values(one_node):
    refs = [runtime.put(number) for number in range(5)]
    # pending results too: the task starts once they are ready
    ok, kinds, total = runtime.get(kinds_and_total.remote(
        [*refs, slow_value.remote(100), slow_value.remote(1000)]), timeout=60)
    assert ok and kinds == ["ResolvedRef"] and total == 10 + 100 + 1000
    assert runtime.get(waits_on_dict.remote({"a": refs[1], "b": refs[2]}),
                       timeout=60) == (1, 2, 0)
    assert runtime.get(passes_on.remote(refs), timeout=60) == 10   # a task passes them on
    keeper = Keeper.remote()
    assert runtime.get(keeper.keep.remote(refs[:3]), timeout=60) == 3
    assert runtime.get(keeper.total.remote(), timeout=60) == 3     # kept and used later


def test_a_failed_ref_inside_an_argument_fails_the_task_with_its_error(one_node):
    with pytest.raises(runtime.TaskError, match="no widgets"):
        runtime.get(kinds_and_total.remote([fails.remote()]), timeout=60)


def test_refs_inside_put_values_and_results_carry_their_values(one_node):
    refs = [runtime.put("a"), slow_value.remote("b")]
    holder = runtime.put({"parts": refs})        # waits for "b", then copies both
    parts = runtime.get(holder)["parts"]
    assert [type(ref).__name__ for ref in parts] == ["ResolvedRef"] * 2
    assert runtime.get(parts) == ["a", "b"]
    assert runtime.wait(parts, num_returns=2, timeout=5) == (parts, [])
    returned = runtime.get(returns_refs.remote(3), timeout=60)
    assert runtime.get(returned) == [0, 10, 20]
    assert runtime.get(kinds_and_total.remote(returned), timeout=60)[2] == 30  # passed on
    with pytest.raises(runtime.TaskError, match="no widgets"):
        runtime.put([fails.remote()])             # a failed ref: its error, at once
    with pytest.raises(TypeError):
        runtime.put(refs[0])                      # as in Ray: put() of a ref itself


@runtime.remote(num_cpus=1, resources={"maker": 1})
def make_array(fill):
    import numpy
    return numpy.full(1_000_000, fill, dtype=numpy.float64)   # 8 MB: stays on its node


@runtime.remote(num_cpus=1, resources={"maker": 1})
def make_parts(count):
    import numpy
    return [runtime.put(numpy.full(1_000_000, part, dtype=numpy.float64))
            for part in range(count)]


@runtime.remote(num_cpus=1, resources={"user": 1})
def sum_arrays(refs):
    import os
    return float(sum(runtime.get(ref).sum() for ref in refs)), \
        os.environ.get("CORRAL_NODE_ID")


def test_large_values_inside_arguments_come_from_the_node_that_made_them(local_cluster):
    local_cluster.start_head(num_cpus=1)
    local_cluster.add_node("maker", num_cpus=1, resources={"maker": 1})
    local_cluster.add_node("user", num_cpus=1, resources={"user": 1})
    local_cluster.connect()
    arrays = [make_array.remote(1.0), make_array.remote(2.0)]
    assert runtime.get(sum_arrays.remote(arrays), timeout=90) == (3_000_000.0, "user")
    parts = runtime.get(make_parts.remote(3), timeout=90)   # refs made inside a task
    assert [float(runtime.get(part).sum()) for part in parts] == [0.0, 1e6, 2e6]
    assert runtime.get(sum_arrays.remote(parts), timeout=90) == (3_000_000.0, "user")
    del arrays, parts
    from tests.runtime.conftest import wait_until
    wait_until(lambda: runtime.api.object_count() == 0, 10)   # nothing held after
