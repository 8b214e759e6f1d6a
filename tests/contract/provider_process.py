"""The `process` provider in the shared contract suite: nodes are directories and
process groups on this machine, under the test's own CORRAL_HOME."""
from __future__ import annotations

import contextlib

from launcher.config.model import AuthConfig, ClusterConfig, NodeTypeConfig
from launcher.providers.process import ProcessProvider
from tests.contract.conftest import ContractSetup

HEAD_TYPE = "head"
WORKER_TYPE = "cpu"


def process_config(cluster_name: str) -> ClusterConfig:
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
    provider = ProcessProvider(process_config(cluster_name))
    other = ProcessProvider(process_config(cluster_name + "-other"))
    try:
        yield ContractSetup(provider=provider, node_type=WORKER_TYPE, node_config={},
                            other_cluster_provider=other, runs_commands=True,
                            settle_timeout_s=5.0)
    finally:
        for each in (provider, other):
            each.terminate_nodes([node.id for node in each.non_terminated_nodes()])
            each.close()
