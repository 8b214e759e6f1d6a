"""The `aws` provider in the shared contract suite: EC2 as served by moto's server on
loopback. Nodes have no SSH here (runs_commands=False); the end-to-end test maps instance
IPs to SSH test hosts instead."""
from __future__ import annotations

import contextlib

from launcher.providers.aws import AWSProvider
from tests.aws.configs import WORKER_TYPE, aws_config, publish_ubuntu_image
from tests.aws.moto_server import moto_server
from tests.contract.conftest import ContractSetup


@contextlib.contextmanager
def contract_provider(tmp_path, cluster_name):
    with moto_server(tmp_dir=str(tmp_path)):
        publish_ubuntu_image()
        config = AWSProvider.bootstrap(aws_config(cluster_name))
        other_config = AWSProvider.bootstrap(aws_config(cluster_name + "-other"))
        provider, other = AWSProvider(config), AWSProvider(other_config)
        try:
            yield ContractSetup(
                provider=provider, node_type=WORKER_TYPE,
                node_config=config.available_node_types[WORKER_TYPE].node_config,
                other_cluster_provider=other, runs_commands=False, settle_timeout_s=10.0)
        finally:
            for each, each_config in ((provider, config), (other, other_config)):
                each.terminate_nodes([node.id for node in each.non_terminated_nodes()])
                each.close()
                AWSProvider.purge(each_config)
