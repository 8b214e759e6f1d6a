"""Several node agents on loopback, each with its own node id and resources: placement,
peer-to-peer objects, reference counting, waiting work and pending demand."""
from __future__ import annotations

import os

import numpy as np
import pytest

import runtime
from runtime import state
from tests.runtime.conftest import wait_until

pytestmark = pytest.mark.timeout(90)


@runtime.remote
def where():
    return os.environ["CORRAL_NODE_ID"]


@runtime.remote
def make_array(size):
    return np.ones(size, dtype=np.float64)


@runtime.remote
def total(array):
    return float(array.sum()), os.environ["CORRAL_NODE_ID"]


def test_tasks_run_only_where_resources_fit(local_cluster):
    local_cluster.start_head(num_cpus=1)
    local_cluster.add_node("gpu-node", num_cpus=1, resources={"GPU": 1})
    local_cluster.add_node("ssd-node", num_cpus=2, resources={"ssd": 4})
    local_cluster.connect()
    assert runtime.cluster_resources() == {"CPU": 4.0, "GPU": 1.0, "ssd": 4.0}
    on_gpu = runtime.get([where.options(num_gpus=1).remote() for _ in range(4)])
    on_ssd = runtime.get([where.options(resources={"ssd": 1}).remote() for _ in range(6)])
    assert set(on_gpu) == {"gpu-node"} and set(on_ssd) == {"ssd-node"}
    spread = set(runtime.get([where.remote() for _ in range(40)]))
    assert len(spread) >= 2


def test_large_objects_move_peer_to_peer(local_cluster):
    local_cluster.start_head(num_cpus=1)
    local_cluster.add_node("maker", num_cpus=1, resources={"maker": 1})
    local_cluster.add_node("user", num_cpus=1, resources={"user": 1})
    local_cluster.connect()
    array_ref = make_array.options(resources={"maker": 1}).remote(2_000_000)  # 16 MB
    value, node = runtime.get(total.options(resources={"user": 1}).remote(array_ref))
    assert value == 2_000_000.0 and node == "user"
    # the large result stays on the node that made it ...
    assert runtime.api.node_stats("maker")["objects"] == 1
    assert runtime.get(array_ref).shape == (2_000_000,)
    # ... until its last reference is gone
    del array_ref
    wait_until(lambda: runtime.api.node_stats("maker")["objects"] == 0)


def test_memory_is_freed_over_many_tasks(one_node):
    @runtime.remote
    def small(i):
        return i

    for i in range(3000):
        assert runtime.get(small.remote(i)) == i
    refs = [small.remote(i) for i in range(2000)]
    assert sum(runtime.get(refs)) == sum(range(2000))
    del refs
    wait_until(lambda: runtime.api.object_count() == 0)
    for _ in range(20):
        runtime.get(make_array.remote(200_000))          # stored on the node
    wait_until(lambda: runtime.api.node_stats("head")["objects"] == 0)


def test_waiting_task_reports_demand_then_runs_on_joining_node(local_cluster):
    local_cluster.start_head(num_cpus=1)
    local_cluster.connect()
    refs = [where.options(resources={"accelerator": 1}).remote() for _ in range(3)]
    ready, _ = runtime.wait(refs, timeout=0.5)
    assert ready == []                                    # waiting, not an error

    def demand():
        load = state.get_load()
        return [d for d in load["pending_demand"]
                if d["shape"] == {"CPU": 1.0, "accelerator": 1.0}]
    assert wait_until(demand)[0]["count"] == 3
    # without node types, a shape no live node fits is infeasible
    assert {"CPU": 1.0, "accelerator": 1.0} in state.get_load()["infeasible"]
    state.set_node_types({"accel": {"CPU": 1, "accelerator": 1}})
    assert state.get_load()["infeasible"] == []
    local_cluster.add_node("late", num_cpus=1, resources={"accelerator": 1})
    assert runtime.get(refs, timeout=60) == ["late"] * 3
    wait_until(lambda: not demand())


def test_load_reports_nodes_and_idle_time(local_cluster):
    local_cluster.start_head(num_cpus=2)
    local_cluster.add_node("w1", num_cpus=1)
    local_cluster.connect()
    load = wait_until(lambda: (lambda l: l if all(n["idle_since_s"] for n in l["nodes"])
                               else None)(state.get_load()))
    by_id = {n["node_id"]: n for n in load["nodes"]}
    assert set(by_id) == {"head", "w1"}
    assert by_id["w1"]["resources_total"] == {"CPU": 1.0}
    assert by_id["w1"]["idle_for_s"] >= 0.0
    state.set_node_types({"small": {"CPU": 1}})
    ref = where.options(num_gpus=8).remote()
    wait_until(lambda: {"CPU": 1.0, "GPU": 8.0} in state.get_load()["infeasible"])
    del ref
