"""Runtime test clusters on loopback: a head and node agents started as real detached
processes (each with its own node dir, node id and resources), stopped by pid at the end
even when the test fails."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import runtime
from runtime.node import session
from runtime.node.startup import start_node
from tests.helpers import wait_for


class LocalCluster:
    def __init__(self, base: Path, heartbeat_timeout_s: float):
        self.base = base
        self.heartbeat_timeout_s = heartbeat_timeout_s
        self.nodes = {}          # node_id -> StartedNode
        self.head = None

    @property
    def keys_dir(self) -> Path:
        return self.base / "head" / "keys"

    def start_head(self, num_cpus=1, resources=None, autoscaling_config=None):
        self.head = start_node(head=True, port=0, num_cpus=num_cpus, resources=resources,
                               node_id="head", node_dir=self.base / "head",
                               node_ip="127.0.0.1", autoscaling_config=autoscaling_config,
                               heartbeat_timeout_s=self.heartbeat_timeout_s)
        self.nodes["head"] = self.head
        return self.head

    def add_node(self, node_id: str, num_cpus=1, resources=None, wait=True):
        node_dir = self.base / node_id
        shutil.copytree(self.keys_dir, node_dir / "keys", dirs_exist_ok=True)
        started = start_node(head=False, address=self.head.address, num_cpus=num_cpus,
                             resources=resources, node_id=node_id, node_dir=node_dir,
                             node_ip="127.0.0.1", wait_registered=wait)
        self.nodes[node_id] = started
        return started

    def connect(self):
        runtime.init(address=self.head.address, keys_dir=str(self.keys_dir))

    def stop(self):
        for started in self.nodes.values():
            session.stop_session(started.session)


@pytest.fixture
def local_cluster(tmp_path):
    cluster = LocalCluster(tmp_path / "cluster", heartbeat_timeout_s=2.0)
    try:
        yield cluster
    finally:
        runtime.shutdown()
        cluster.stop()


@pytest.fixture
def one_node(local_cluster):
    """A head with 2 CPUs and a driver connected to it."""
    local_cluster.start_head(num_cpus=2)
    local_cluster.connect()
    return local_cluster


# tests.helpers.wait_for itself, under the name the runtime tests use (one wait_for).
wait_until = wait_for
