"""Provider extras are declared capabilities (launcher.providers.base.Capability): each
provider declares exactly the extras it implements, and callers get the neutral default
from a provider without one."""
from __future__ import annotations

import pytest

from launcher.bootstrap.node_context import DEFAULT_HEAD_PORT, head_port_of
from launcher.commands.cluster import all_nodes, damage_error
from launcher.commands.cluster_down import can_purge, purge
from launcher.errors import UsageError
from launcher.providers import PROVIDERS, provider_class
from launcher.providers.base import Capability, NodeProvider, unreachable_hosts
from tests.contract.provider_process import process_config
from tests.fake_provider import FakeProvider

# The member of NodeProvider a provider overrides when it has the capability.
MEMBER = {Capability.DAMAGED_NODES: "nodes_including_damaged",
          Capability.HEAD_PORT: "head_port", Capability.PURGE: "purge"}
EXPECTED = {"process": {Capability.DAMAGED_NODES, Capability.HEAD_PORT},
            "local": {Capability.UNREACHABLE},
            "aws": {Capability.PURGE}, "gcp": {Capability.PURGE}}


@pytest.mark.parametrize("provider_type", sorted(PROVIDERS))
def test_each_provider_declares_the_extras_it_implements(provider_type):
    try:
        cls = provider_class(provider_type)
    except UsageError as error:  # its cloud SDK is not installed here
        pytest.skip(str(error))
    assert cls.capabilities == EXPECTED[provider_type]
    for capability, member in MEMBER.items():
        overridden = getattr(cls, member) is not getattr(NodeProvider, member)
        assert overridden == cls.supports(capability), (provider_type, capability)
    assert can_purge(process_config("c").replace(provider={"type": provider_type})) == \
        (Capability.PURGE in EXPECTED[provider_type])


def test_a_provider_without_extras_gets_the_neutral_defaults(tmp_path):
    provider = FakeProvider(process_config("plain"), str(tmp_path))
    assert provider.capabilities == frozenset()
    [node_id] = provider.create_nodes("cpu", {}, {}, 1)
    assert [node.id for node in all_nodes(provider)] == [node_id]
    assert damage_error(provider) is None
    assert unreachable_hosts(provider) == {}
    assert head_port_of(provider, None) == DEFAULT_HEAD_PORT
    assert purge(provider.config) is None  # process: nothing to purge
    with pytest.raises(UsageError, match="nothing to purge"):
        NodeProvider.purge(provider.config)
