"""Draining nodes for the autoscaler (runtime.control.drain) and spreading queued tasks
onto nodes that join. Tasks wait on files, not sleeps; tests check where work ran and
what the control service reports, never timings."""
from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

import runtime
from runtime import state
from tests.runtime.conftest import wait_until

pytestmark = pytest.mark.timeout(120)


@runtime.remote(num_cpus=1)
def where():
    return os.environ["CORRAL_NODE_ID"]


@runtime.remote(num_cpus=1)
def hold(started_dir: str, release_file: str, index: int):
    """Says it started (a file per task), then waits until the release file exists."""
    Path(started_dir, f"{index}-{os.environ['CORRAL_NODE_ID']}").touch()
    while not os.path.exists(release_file):
        time.sleep(0.02)
    return os.environ["CORRAL_NODE_ID"]


@runtime.remote(num_cpus=1)
class Placed:
    def node(self):
        return os.environ["CORRAL_NODE_ID"]


def _node(load, node_id):
    return next((n for n in load["nodes"] if n["node_id"] == node_id), None)


def _started(started_dir: Path) -> dict[int, str]:
    return {int(p.name.split("-", 1)[0]): p.name.split("-", 1)[1]
            for p in started_dir.iterdir()}


def test_drained_node_gets_no_work_and_reply_lists_only_idle_nodes(local_cluster, tmp_path):
    local_cluster.start_head(num_cpus=0)
    local_cluster.add_node("busy", num_cpus=1)
    local_cluster.add_node("idle", num_cpus=1)
    local_cluster.add_node("keep", num_cpus=1)
    local_cluster.connect()
    started, release = tmp_path / "started", tmp_path / "release"
    started.mkdir()
    in_flight = hold.remote(str(started), str(release), 0)
    wait_until(lambda: _started(started))
    busy_node = _started(started)[0]
    idle_nodes = sorted({"busy", "idle", "keep"} - {busy_node})
    drained_idle, kept = idle_nodes
    names = [busy_node, drained_idle]

    # the busy node is never confirmed while its task runs; the idle one is, once its
    # agent knows it is draining
    confirmed = wait_until(lambda: state.drain_nodes(names) or None)
    assert confirmed == [drained_idle]
    load = state.get_load()
    assert _node(load, drained_idle) is None           # removed from the table at once
    assert _node(load, busy_node)["draining"] is True
    assert _node(load, kept)["draining"] is False
    assert state.drain_nodes(names) == []              # still busy: not confirmed

    # new work goes only to the node that is not draining
    assert set(runtime.get([where.remote() for _ in range(6)], timeout=60)) == {kept}
    actor = Placed.remote()
    assert runtime.get(actor.node.remote(), timeout=60) == kept
    runtime.kill(actor)

    # the task in flight on the draining node finishes there, then the node is idle
    release.touch()
    assert runtime.get(in_flight, timeout=60) == busy_node
    assert wait_until(lambda: state.drain_nodes([busy_node]) or None) == [busy_node]
    assert {n["node_id"] for n in state.get_load()["nodes"]} == {"head", kept}


def test_removed_node_demand_is_reported_at_once(local_cluster):
    """After the only worker is drained and removed, work that fits no remaining node is
    pending demand (not placed on the terminated node until its heartbeats time out)."""
    local_cluster.start_head(num_cpus=0)
    local_cluster.add_node("w1", num_cpus=1)
    local_cluster.connect()
    assert runtime.get(where.remote(), timeout=60) == "w1"
    assert wait_until(lambda: state.drain_nodes(["w1"]) or None) == ["w1"]
    ref = where.remote()

    def demand():
        return [d for d in state.get_load()["pending_demand"] if d["shape"] == {"CPU": 1.0}]
    assert wait_until(demand, timeout_s=5)[0]["count"] == 1
    # the removed node's agent is still running but stays out of the table
    assert "w1" not in {n["node_id"] for n in state.get_load()["nodes"]}
    local_cluster.add_node("w2", num_cpus=1)
    assert runtime.get(ref, timeout=60) == "w2"


def test_drain_lapses_when_not_asked_again(local_cluster):
    local_cluster.start_head(num_cpus=0)
    local_cluster.add_node("w1", num_cpus=1)
    local_cluster.add_node("w2", num_cpus=1)
    local_cluster.connect()
    started = Path(local_cluster.base) / "started"
    started.mkdir()
    release = Path(local_cluster.base) / "release"
    ref = hold.remote(str(started), str(release), 0)
    wait_until(lambda: _started(started))
    busy = _started(started)[0]
    assert state.drain_nodes([busy]) == []
    # a later call that does not name it takes the drain back
    state.drain_nodes([])
    assert _node(state.get_load(), busy)["draining"] is False
    release.touch()
    assert runtime.get(ref, timeout=60) == busy


def test_queued_tasks_spread_onto_nodes_that_join(local_cluster, tmp_path):
    local_cluster.start_head(num_cpus=0)
    local_cluster.add_node("w1", num_cpus=1)
    local_cluster.connect()
    started, release = tmp_path / "started", tmp_path / "release"
    started.mkdir()
    refs = [hold.remote(str(started), str(release), i) for i in range(8)]
    wait_until(lambda: _started(started))           # all 8 were sent while only w1 was up
    for name in ("w2", "w3", "w4"):
        local_cluster.add_node(name, num_cpus=1)
    # each node runs one task at a time; the queued ones move to the new nodes
    wait_until(lambda: len(set(_started(started).values())) >= 4, timeout_s=60)
    release.touch()
    ran_on = runtime.get(refs, timeout=90)
    assert len(set(ran_on)) >= 3
    assert set(ran_on) <= {"w1", "w2", "w3", "w4"}
