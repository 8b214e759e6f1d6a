"""The bound on worker processes per node (runtime.agent.worker_bound, agent_bound,
driver_bound) on real clusters on loopback: actors beyond it wait, the wait is explained
and counted as demand the autoscaler launches a node for, and the waiting actors start
as others are killed or a node with room joins."""
from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import runtime
from autoscaler.observe import demand_of
from autoscaler.planner import plan
from autoscaler.policy import NodeTypePolicy, Policy
from autoscaler.snapshot import NodeRecord, Snapshot
from runtime import api
from runtime.node import session
from runtime.agent import worker_bound
from runtime.control.client import ControlClient
from runtime.node.startup import start_node
from tests.runtime.conftest import wait_until

pytestmark = pytest.mark.timeout(150)
REPO = str(Path(__file__).resolve().parents[2])
GIB = float(1 << 30)


@runtime.remote
class Holder:
    def where(self):
        return os.environ["CORRAL_NODE_ID"], os.getpid()


@runtime.remote(num_cpus=0)
def nap(seconds):
    import time
    time.sleep(seconds)
    return os.getpid()


class Cluster:
    """A head (and maybe more nodes) with worker bounds; stopped by pid at the end."""

    def __init__(self, base: Path):
        self.base = base
        self.started = []

    def head(self, max_workers, **options):
        self.first = start_node(head=True, port=0, node_id="head", node_dir=self.base / "head",
                                node_ip="127.0.0.1", max_workers=max_workers, **options)
        self.started.append(self.first)
        runtime.init(address=self.first.address, keys_dir=str(self.base / "head" / "keys"))
        return self.first

    def add(self, node_id, max_workers, **options):
        node_dir = self.base / node_id
        shutil.copytree(self.base / "head" / "keys", node_dir / "keys")
        started = start_node(head=False, address=self.first.address, node_id=node_id,
                             node_dir=node_dir, node_ip="127.0.0.1",
                             max_workers=max_workers, wait_registered=True, **options)
        self.started.append(started)
        return started

    def load(self) -> dict:
        client = ControlClient(self.first.address, str(self.base / "head" / "keys"))
        try:
            return client.call("get_load")
        finally:
            client.close()

    def stop(self):
        runtime.shutdown()
        for started in self.started:
            session.stop_session(started.session)


@pytest.fixture
def cluster(tmp_path):
    made = Cluster(tmp_path / "cluster")
    try:
        yield made
    finally:
        made.stop()


def _ready(refs, count, timeout_s=60):
    ready, _ = runtime.wait(refs, num_returns=count, timeout=timeout_s)
    assert len(ready) >= count, f"{len(ready)} of {count} ready"
    return ready


def test_actors_beyond_the_bound_wait_explained_counted_and_start_later(cluster, caplog):
    """Bound 4 with one CPU: 1 task worker + 3 actors run, 3 more actors wait."""
    caplog.set_level(logging.WARNING, logger="corral.driver")
    head = cluster.head(max_workers=4, num_cpus=1, resources={"memory": 2 * GIB})
    actors = [Holder.remote() for _ in range(6)]
    refs = [actor.where.remote() for actor in actors]
    _ready(refs[:3], 3)
    core = api.current_core()
    wait_until(lambda: len(core.io.bound_waiting) == 3)
    ready, _ = runtime.wait(refs[3:], num_returns=1, timeout=1.0)
    assert not ready                                   # still waiting
    assert api.node_stats("head")["workers"] == 4
    explained = [r.getMessage() for r in caplog.records
                 if "wait for a worker process" in r.getMessage()]
    assert explained and "3 actor(s)" in explained[0] and "--max-workers 4" in explained[0]
    agent_log = (head.session / "logs" / "agent.log").read_text()
    assert "at most 4 worker processes on this node (--max-workers 4)" in agent_log

    # demand the autoscaler sees: a worker's memory per waiting actor, none on the head
    estimate = float(worker_bound.WORKER_ESTIMATE_BYTES)

    def reported():
        load = cluster.load()
        return load if demand_of(load).get((("memory", estimate),)) == 3 and \
            load["nodes"][0]["resources_available"].get("memory") == 0 else None
    load = wait_until(reported)
    node = load["nodes"][0]
    record = NodeRecord(id="head", node_type="head", kind="head",
                        resources_total=node["resources_total"],
                        resources_used={name: amount - node["resources_available"].get(
                            name, 0.0) for name, amount in node["resources_total"].items()})
    policy = Policy(node_types={"worker": NodeTypePolicy(
        "worker", {"CPU": 1, "memory": 2 * GIB}, max_workers=2)}, max_workers=2)
    decided = plan(Snapshot(now_s=0.0, nodes=(record,), demand=demand_of(load)), policy)
    assert decided.to_launch == {"worker": 1}

    # one actor killed: one waiting actor starts in its place
    runtime.kill(actors[0])
    started = _ready(refs[3:], 1)
    assert runtime.get(started[0], timeout=30)[0] == "head"
    assert len(core.io.bound_waiting) == 2
    # a node with room joins: the other two start there
    cluster.add("w1", max_workers=4, num_cpus=1)
    places = runtime.get(refs[3:], timeout=60)
    assert sorted(node_id for node_id, _ in places).count("w1") == 2
    assert not core.io.bound_waiting
    assert api.node_stats("head")["workers"] == 4


def test_waiting_actors_start_as_others_are_killed(cluster):
    cluster.head(max_workers=3, num_cpus=1)            # 1 task worker + 2 actors
    actors = [Holder.remote() for _ in range(5)]
    refs = [actor.where.remote() for actor in actors]
    _ready(refs[:2], 2)
    core = api.current_core()
    wait_until(lambda: len(core.io.bound_waiting) == 3)
    for index in range(3):
        runtime.kill(actors[index])
        _ready(refs[2:], index + 1)
    assert {pid for _, pid in runtime.get(refs[2:], timeout=30)}.isdisjoint(
        pid for _, pid in runtime.get(refs[:2], timeout=30))
    assert api.node_stats("head")["workers"] == 3
    assert runtime.get(nap.remote(0), timeout=60) > 0  # tasks still have their worker


def test_an_idle_task_worker_beyond_the_pool_gives_its_slot_to_an_actor(cluster):
    cluster.head(max_workers=4, num_cpus=1)
    # two shapes, so the second is not queued behind the first at its worker
    pids = set(runtime.get([nap.remote(1.0), nap.options(num_cpus=0.5).remote(1.0)],
                           timeout=60))
    assert len(pids) == 2                              # two task workers now
    assert api.node_stats("head")["workers"] == 2
    actors = [Holder.remote() for _ in range(3)]
    places = runtime.get([actor.where.remote() for actor in actors], timeout=60)
    assert len({pid for _, pid in places}) == 3
    assert api.node_stats("head")["workers"] == 4      # 3 actors + the pool's 1
    assert not api.current_core().io.bound_waiting


def test_bound_from_settings_and_memory():
    one_cpu = {"CPU": 1.0}
    bound = worker_bound.for_node(one_cpu, configured=10, environ={})
    assert (bound.limit, bound.reserved) == (10, 1) and "--max-workers 10" in bound.source
    bound = worker_bound.for_node(one_cpu, environ={"CORRAL_MAX_WORKERS": "7"})
    assert bound.limit == 7 and "$CORRAL_MAX_WORKERS" in bound.source
    raised = worker_bound.for_node({"CPU": 8.0}, configured=2, environ={})
    assert raised.limit == 9 and "raised" in raised.source   # 8 task workers + 1 actor
    derived = worker_bound.for_node({"CPU": 2.0}, environ={})
    assert derived.limit >= worker_bound.MIN_WORKERS and "available memory" in derived.source
    estimate = worker_bound.WORKER_ESTIMATE_BYTES
    assert worker_bound.derive(256 * estimate, reserved=2) == 128
    assert worker_bound.derive(0, reserved=2) == worker_bound.MIN_WORKERS
    assert worker_bound.derive(0, reserved=6) == 7
    for bad in ("0", "-3", "many", ""):
        with pytest.raises(ValueError):
            worker_bound.parse(bad)
    with pytest.raises(ValueError):
        worker_bound.check_environment({"CORRAL_MAX_WORKERS": "lots"})


def _corral(args, node_dir: Path, **env):
    full_env = dict(os.environ, CORRAL_NODE_DIR=str(node_dir), PYTHONPATH=REPO, **env)
    full_env.pop("CORRAL_MAX_WORKERS", None)
    full_env.update(env)
    return subprocess.run([sys.executable, "-m", "launcher", *args], capture_output=True,
                          text=True, timeout=60, env=full_env, cwd=REPO)


def test_corral_start_max_workers(tmp_path):
    node_dir = tmp_path / "node"
    try:
        out = _corral(["start", "--head", "--port", "0", "--num-cpus", "1",
                       "--node-ip-address", "127.0.0.1", "--max-workers", "3"], node_dir)
        assert out.returncode == 0, out.stderr
        log_path = node_dir / "session" / "logs" / "agent.log"
        wait_until(lambda: "at most 3 worker processes" in log_path.read_text())
    finally:
        session.stop_session(session.session_dir(node_dir, create=False))
    refused = _corral(["start", "--head", "--port", "0", "--max-workers", "0"], node_dir)
    assert refused.returncode == 2 and "--max-workers" in refused.stderr
    bad_env = _corral(["start", "--head", "--port", "0", "--num-cpus", "1",
                       "--node-ip-address", "127.0.0.1"], tmp_path / "other",
                      CORRAL_MAX_WORKERS="lots")
    try:
        assert bad_env.returncode == 1 and "CORRAL_MAX_WORKERS" in bad_env.stderr, \
            bad_env.stderr
    finally:
        session.stop_session(session.session_dir(tmp_path / "other", create=False))
    assert not session.running_pids(session.session_dir(tmp_path / "other", create=False))
