"""The tests' fake provider (tests/fake_provider.py) in the shared contract suite, so the
fake the unit and monitor tests rely on behaves as every real provider must: two
clusters share one FakeCloud, and nodes run commands with bash in their own directory."""
from __future__ import annotations

import contextlib

from tests.contract.conftest import ContractSetup
from tests.contract.provider_process import WORKER_TYPE, process_config
from tests.fake_provider import FakeCloud, FakeProvider


@contextlib.contextmanager
def contract_provider(tmp_path, cluster_name):
    cloud = FakeCloud()
    provider = FakeProvider(process_config(cluster_name), str(tmp_path / "nodes"),
                            cloud=cloud)
    other = FakeProvider(process_config(cluster_name + "-other"), str(tmp_path / "other"),
                         cloud=cloud)
    try:
        yield ContractSetup(provider=provider, node_type=WORKER_TYPE, node_config={},
                            other_cluster_provider=other, runs_commands=True,
                            settle_timeout_s=1.0)
    finally:
        for each in (provider, other):
            each.terminate_nodes([node.id for node in each.non_terminated_nodes()])
            each.close()
