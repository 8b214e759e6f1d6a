"""The `local` provider in the shared contract suite, on the real sshd test hosts
(tests/testhosts.py): host 0 is the head IP, hosts 1-3 are the worker IPs. Skips cleanly
where the hosts cannot run (not root, no sshd/ip/unshare)."""
from __future__ import annotations

import contextlib

import pytest

from launcher.config.model import AuthConfig, ClusterConfig, NodeTypeConfig
from launcher.providers.local import LocalProvider
from tests.contract.conftest import ContractSetup

HEAD_TYPE = "local.head"
WORKER_TYPE = "local.worker"


def local_config(cluster_name: str, head_ip: str, worker_ips: list[str], ssh_user: str,
                 ssh_private_key: str, ssh_timeout_s: float = 20.0,
                 **provider_extra) -> ClusterConfig:
    node_types = {
        HEAD_TYPE: NodeTypeConfig(name=HEAD_TYPE, node_config={}, resources={"CPU": 1}),
        WORKER_TYPE: NodeTypeConfig(name=WORKER_TYPE, node_config={}, resources={"CPU": 1},
                                    min_workers=len(worker_ips), max_workers=len(worker_ips)),
    }
    return ClusterConfig(
        cluster_name=cluster_name,
        provider={"type": "local", "head_ip": head_ip, "worker_ips": list(worker_ips),
                  **provider_extra},
        auth=AuthConfig(ssh_user=ssh_user, ssh_private_key=ssh_private_key,
                        ssh_timeout_s=ssh_timeout_s),
        available_node_types=node_types, head_node_type=HEAD_TYPE,
        max_workers=len(worker_ips))


def network_config(network, cluster_name: str, **extra) -> ClusterConfig:
    hosts = network.all_hosts[:4]
    return local_config(cluster_name, hosts[0].ip, [host.ip for host in hosts[1:]],
                        network.ssh_user, network.ssh_private_key, **extra)


@contextlib.contextmanager
def contract_provider(tmp_path, cluster_name):
    from tests import testhosts
    reason = testhosts.missing_requirements()
    if reason:
        pytest.skip(reason)
    network = testhosts.shared_network()
    provider = LocalProvider(network_config(network, cluster_name))
    other = LocalProvider(network_config(network, cluster_name + "-other"))
    try:
        yield ContractSetup(provider=provider, node_type=WORKER_TYPE, node_config={},
                            other_cluster_provider=other, runs_commands=True,
                            settle_timeout_s=5.0)
    finally:
        try:
            for each in (provider, other):
                each.terminate_nodes([node.id for node in each.non_terminated_nodes()])
        finally:
            provider.close()
            other.close()
            network.reset_hosts()
