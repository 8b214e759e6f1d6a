"""The gcp provider in the shared contract suite: the real google-api-python-client talks
to the stateful fake GCE API (tests/gcp/fake_gce.py) on loopback.

Where the sshd test hosts can run (tests/testhosts.py), every fake instance gets a test
host's address as its internal IP and a documentation address (192.0.2.x) as its external
IP, which auth.ssh_proxy_command maps back to that host: commands then really run on the
nodes over SSH. Elsewhere the instances are records only (runs_commands=False)."""
from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path

from launcher.config.model import AuthConfig
from tests.contract.conftest import ContractSetup
from tests.gcp.fake_gce import FakeGCE
from tests.gcp.helpers import WORKER_TYPE, gcp_config, make_provider

PROXY = Path(__file__).resolve().parent.parent / "gcp" / "ip_proxy.py"


def _ssh_auth(fake: FakeGCE, tmp_path: Path):
    """AuthConfig reaching the test hosts through the IP mapping, or None (no hosts)."""
    from tests import testhosts
    if testhosts.missing_requirements():
        return None, None
    network = testhosts.shared_network()
    hosts = network.all_hosts[:4]
    pool = [(host.ip, f"192.0.2.{10 + index}") for index, host in enumerate(hosts)]
    fake.state.ip_pool = pool
    mapping = tmp_path / "ip-map.json"
    mapping.write_text(json.dumps({external: internal for internal, external in pool}))
    auth = AuthConfig(ssh_user=network.ssh_user, ssh_private_key=network.ssh_private_key,
                      ssh_proxy_command=f"{sys.executable} {PROXY} {mapping} %h %p",
                      ssh_timeout_s=20)
    return auth, network


@contextlib.contextmanager
def contract_provider(tmp_path, cluster_name):
    with FakeGCE(operation_delay_s=0.03) as fake:
        auth, network = _ssh_auth(fake, tmp_path)
        provider = make_provider(gcp_config(fake, cluster_name, auth=auth))
        other = make_provider(gcp_config(fake, cluster_name + "-other", auth=auth))
        try:
            yield ContractSetup(provider=provider, node_type=WORKER_TYPE,
                                node_config={"machineType": "e2-small"},
                                other_cluster_provider=other, runs_commands=auth is not None,
                                settle_timeout_s=10.0)
        finally:
            try:
                for each in (provider, other):
                    each.terminate_nodes([node.id for node in each.non_terminated_nodes()])
            finally:
                if network is not None:
                    network.reset_hosts()
