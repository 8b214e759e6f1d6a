"""ObjectRefs inside task arguments (lists, dicts) reach the task as refs, whose values
are already there; they can be waited on, passed on and kept by actors, and the values
are freed once the task is done and the driver drops them. Refs cannot be put() or
returned (a clear TypeError)."""
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
def returns_a_ref():
    return [runtime.put(1)]


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


def test_refs_cannot_be_put_or_returned(one_node):
    with pytest.raises(TypeError, match="only inside a task's arguments"):
        runtime.put([runtime.put(1)])
    with pytest.raises(runtime.TaskError, match="TypeError"):
        runtime.get(returns_a_ref.remote(), timeout=60)


@runtime.remote(num_cpus=1, resources={"maker": 1})
def make_array(fill):
    import numpy
    return numpy.full(1_000_000, fill, dtype=numpy.float64)   # 8 MB: stays on its node


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
    del arrays
    from tests.runtime.conftest import wait_until
    wait_until(lambda: runtime.api.object_count() == 0, 10)   # nothing held after
