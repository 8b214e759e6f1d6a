"""The gcp provider in the shared contract suite: the real google-api-python-client talks
to the stateful fake GCE API (tests/gcp/fake_gce.py) on loopback. Its instances are not
machines, so commands cannot run on them here (the SSH path is covered end to end with
auth.ssh_proxy_command mapping instance IPs to sshd test hosts)."""
from __future__ import annotations

import contextlib

from tests.contract.conftest import ContractSetup
from tests.gcp.fake_gce import FakeGCE
from tests.gcp.helpers import WORKER_TYPE, gcp_config, make_provider


@contextlib.contextmanager
def contract_provider(tmp_path, cluster_name):
    with FakeGCE(operation_delay_s=0.03) as fake:
        provider = make_provider(gcp_config(fake, cluster_name))
        other = make_provider(gcp_config(fake, cluster_name + "-other"))
        try:
            yield ContractSetup(provider=provider, node_type=WORKER_TYPE,
                                node_config={"machineType": "e2-small"},
                                other_cluster_provider=other, runs_commands=False,
                                settle_timeout_s=10.0)
        finally:
            for each in (provider, other):
                each.terminate_nodes([node.id for node in each.non_terminated_nodes()])
