"""What every NodeProvider must do (see tests/contract/conftest.py to add a provider)."""
from __future__ import annotations

from launcher import tags as T
from tests.helpers import wait_for


def worker_tags(setup, extra=None):
    return {T.TAG_NODE_KIND: T.KIND_WORKER, T.TAG_NODE_TYPE: setup.node_type, **(extra or {})}


def test_create_list_terminate(contract):
    provider = contract.provider
    ids = provider.create_nodes(contract.node_type, contract.node_config,
                                worker_tags(contract), 2)
    assert len(ids) == 2 and len(set(ids)) == 2
    listed = wait_for(lambda: {n.id: n for n in provider.non_terminated_nodes()
                               if n.id in ids and n.state in ("pending", "running")},
                      contract.settle_timeout_s, "the created nodes to be listed")
    assert set(listed) == set(ids)
    for node in listed.values():
        assert node.kind == T.KIND_WORKER
        assert node.node_type == contract.node_type
        assert node.tags[T.TAG_CLUSTER_NAME] == provider.cluster_name
        # known_node may not know (None); when it answers, it answers what a listing says
        known = provider.known_node(node.id)
        if known is not None:
            assert (known.id, known.kind, known.node_type, known.internal_ip, known.tags) \
                == (node.id, node.kind, node.node_type, node.internal_ip, node.tags)
    provider.terminate_nodes(ids)
    assert all(provider.known_node(node_id) is None for node_id in ids)
    gone = wait_for(lambda: not [n for n in provider.non_terminated_nodes() if n.id in ids],
                    contract.settle_timeout_s, "the terminated nodes to leave the listing")
    assert gone


def test_tag_filters_and_set_tags(contract):
    provider = contract.provider
    [first] = provider.create_nodes(contract.node_type, contract.node_config,
                                    worker_tags(contract, {"color": "red"}), 1)
    [second] = provider.create_nodes(contract.node_type, contract.node_config,
                                     worker_tags(contract, {"color": "blue"}), 1)
    try:
        red = wait_for(lambda: [n.id for n in provider.non_terminated_nodes({"color": "red"})],
                       contract.settle_timeout_s, "a node tagged red")
        assert red == [first]
        provider.set_node_tags(second, {"color": "red", T.TAG_NODE_STATUS: T.STATUS_SETTING_UP})
        both = wait_for(lambda: sorted(n.id for n in provider.non_terminated_nodes({"color": "red"})) == sorted([first, second]),
                        contract.settle_timeout_s, "both nodes tagged red")
        assert both
        node = provider.node(second)
        assert node.tags[T.TAG_NODE_STATUS] == T.STATUS_SETTING_UP
        assert node.tags[T.TAG_NODE_TYPE] == contract.node_type  # merged, not replaced
    finally:
        provider.terminate_nodes([first, second])


def test_terminate_is_idempotent(contract):
    provider = contract.provider
    [node_id] = provider.create_nodes(contract.node_type, contract.node_config,
                                      worker_tags(contract), 1)
    provider.terminate_nodes([node_id])
    provider.terminate_nodes([node_id])  # again: no error
    assert wait_for(lambda: provider.node(node_id) is None, contract.settle_timeout_s,
                    f"{node_id} to be gone")


def test_clusters_are_isolated(contract):
    [mine] = contract.provider.create_nodes(contract.node_type, contract.node_config,
                                            worker_tags(contract), 1)
    try:
        wait_for(lambda: contract.provider.node(mine), contract.settle_timeout_s,
                 f"{mine} to be listed")
        other_ids = [n.id for n in contract.other_cluster_provider.non_terminated_nodes()]
        assert mine not in other_ids
        contract.other_cluster_provider.terminate_nodes([mine])  # not its node: untouched
        assert contract.provider.node(mine) is not None
    finally:
        contract.provider.terminate_nodes([mine])


def test_command_runner_runs_on_node(contract):
    if not contract.runs_commands:
        import pytest
        pytest.skip("this provider's nodes cannot run commands in this test setting")
    provider = contract.provider
    [node_id] = provider.create_nodes(contract.node_type, contract.node_config,
                                      worker_tags(contract), 1)
    try:
        node = wait_for(lambda: (lambda n: n if n and n.state == "running" else None)(
            provider.node(node_id)), contract.settle_timeout_s, f"{node_id} to run")
        assert node is not None
        runner = provider.command_runner(node)
        runner.wait_ready(contract.settle_timeout_s)
        result = runner.run("echo contract-$((40+2))", timeout_s=30)
        assert result.exit_code == 0
        assert result.stdout.strip() == "contract-42"
        failed = runner.run("exit 3", timeout_s=30)
        assert failed.exit_code == 3
        runner.close()
    finally:
        provider.terminate_nodes([node_id])
