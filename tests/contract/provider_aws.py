"""The `aws` provider in the shared contract suite: EC2 as served by moto's server on
loopback. Where the SSH test hosts can run (root, sshd), each instance's made-up IP is
mapped onto a test host through auth.ssh_proxy_command (tests/aws/ip_proxy.py), so the
provider's command runner is exercised for real; elsewhere runs_commands is False."""
from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path

from launcher.providers.aws import AWSProvider
from tests.aws.configs import WORKER_TYPE, aws_config, publish_ubuntu_image
from tests.aws.moto_server import moto_server
from tests.contract.conftest import ContractSetup

PROXY = Path(__file__).resolve().parent.parent / "aws" / "ip_proxy.py"


def ssh_auth(tmp_path) -> tuple[dict | None, object]:
    """(auth block mapping instance IPs to test hosts, network) or (None, None)."""
    from tests import testhosts
    if testhosts.missing_requirements():
        return None, None
    network = testhosts.shared_network()
    ip_map = Path(tmp_path) / "ip-map.json"
    ip_map.write_text(json.dumps({"hosts": [host.ip for host in network.all_hosts[:4]],
                                  "assigned": {}}))
    return {"ssh_user": network.ssh_user, "ssh_private_key": network.ssh_private_key,
            "ssh_proxy_command": f"{sys.executable} {PROXY} {ip_map} %h %p",
            "ssh_timeout_s": 20}, network


@contextlib.contextmanager
def contract_provider(tmp_path, cluster_name):
    auth, network = ssh_auth(tmp_path)
    with moto_server(tmp_dir=str(tmp_path)):
        publish_ubuntu_image()
        config = AWSProvider.bootstrap(aws_config(cluster_name, auth=auth))
        other_config = AWSProvider.bootstrap(aws_config(cluster_name + "-other", auth=auth))
        provider, other = AWSProvider(config), AWSProvider(other_config)
        try:
            yield ContractSetup(
                provider=provider, node_type=WORKER_TYPE,
                node_config=config.available_node_types[WORKER_TYPE].node_config,
                other_cluster_provider=other, runs_commands=auth is not None,
                settle_timeout_s=10.0)
        finally:
            for each, each_config in ((provider, config), (other, other_config)):
                each.terminate_nodes([node.id for node in each.non_terminated_nodes()])
                each.close()
                AWSProvider.purge(each_config)
            if network is not None:
                network.reset_hosts()
