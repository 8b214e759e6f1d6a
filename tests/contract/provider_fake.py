"""The tests' fake provider (tests/fake_provider.py) in the shared contract suite, so the
fake the unit and monitor tests rely on behaves as every real provider must: two
clusters share one FakeCloud, and nodes run commands with bash in their own directory."""
from __future__ import annotations

import contextlib

from launcher.config.model import AuthConfig, ClusterConfig, NodeTypeConfig
from tests.contract.conftest import ContractSetup
from tests.fake_provider import FakeCloud, FakeProvider

HEAD_TYPE = "head"
WORKER_TYPE = "cpu"


def fake_config(cluster_name: str) -> ClusterConfig:
    node_types = {
        HEAD_TYPE: NodeTypeConfig(name=HEAD_TYPE, node_config={}, resources={"CPU": 1}),
        WORKER_TYPE: NodeTypeConfig(name=WORKER_TYPE, node_config={}, resources={"CPU": 2},
                                    min_workers=0, max_workers=4),
    }
    return ClusterConfig(cluster_name=cluster_name, provider={"type": "process"},
                         auth=AuthConfig(), available_node_types=node_types,
                         head_node_type=HEAD_TYPE)


@contextlib.contextmanager
def contract_provider(tmp_path, cluster_name):
    cloud = FakeCloud()
    provider = FakeProvider(fake_config(cluster_name), str(tmp_path / "nodes"), cloud=cloud)
    other = FakeProvider(fake_config(cluster_name + "-other"), str(tmp_path / "other"),
                         cloud=cloud)
    try:
        yield ContractSetup(provider=provider, node_type=WORKER_TYPE, node_config={},
                            other_cluster_provider=other, runs_commands=True,
                            settle_timeout_s=1.0)
    finally:
        for each in (provider, other):
            each.terminate_nodes([node.id for node in each.non_terminated_nodes()])
            each.close()
