"""The NodeProvider interface: what every provider (process, local, aws, gcp) implements.

A node is a machine (a VM, an on-prem host, or a group of local processes). Providers
speak in plain records (`Node`) and our own errors (launcher.errors); cloud SDK exceptions
never leave a provider.
"""
from __future__ import annotations

import abc
import dataclasses
import enum
from types import MappingProxyType
from typing import TYPE_CHECKING, Mapping

from launcher.errors import CapacityError, ClusterError, ProviderError, UsageError

if TYPE_CHECKING:  # pragma: no cover
    from launcher.bootstrap.command_runner import CommandRunner
    from launcher.config.load import ClusterConfig

NodeId = str

# Node.state: the provider's view of the machine, not the bootstrap stage (that is a tag).
STATE_PENDING = "pending"
STATE_RUNNING = "running"
STATE_STOPPING = "stopping"
STATE_STOPPED = "stopped"
STATE_TERMINATED = "terminated"
# A node whose record cannot be read (corrupt, or processes left without one): listed
# only by the calls that repair (process provider: nodes_including_damaged), so that
# `down` can remove it and `up` replace it.
STATE_DAMAGED = "damaged"


class Capability(enum.Enum):
    """What a provider can do beyond the interface every provider implements. A provider
    declares its own in `capabilities`; callers ask `supports(...)` rather than probing
    for attributes. NodeProvider has a neutral default for each (no damage, nothing
    unreachable, no port of its own, nothing to purge), so a caller that did not ask
    still gets a sensible answer."""

    # `nodes_including_damaged()` lists nodes whose record cannot be read (state
    # STATE_DAMAGED) too, and `damaged` holds why: {node id: StateFileError}. (process)
    DAMAGED_NODES = "damaged_nodes"
    # `unreachable`: {host: why} of the hosts the last listing could not ask. (local)
    UNREACHABLE = "unreachable"
    # `head_port()`: the runtime port the provider chose for the head. (process)
    HEAD_PORT = "head_port"
    # `purge(config)` (on the class): remove the cloud resources corral made for the
    # cluster, nodes included; one line per thing removed. (aws, gcp)
    PURGE = "purge"


@dataclasses.dataclass(frozen=True)
class Node:
    id: NodeId
    kind: str  # launcher.tags.KIND_HEAD or KIND_WORKER
    node_type: str
    state: str  # one of STATE_*
    internal_ip: str | None
    external_ip: str | None
    tags: Mapping[str, str]

    def __post_init__(self):
        object.__setattr__(self, "tags", MappingProxyType(dict(self.tags)))

    @property
    def status(self) -> str | None:
        """The bootstrap stage recorded in the node's tags."""
        from launcher.tags import TAG_NODE_STATUS
        return self.tags.get(TAG_NODE_STATUS)


class NodeProvider(abc.ABC):
    """Lifecycle of the nodes of one cluster.

    Constructed with the frozen cluster config; `cluster_name` scopes every call: a
    provider only ever lists, tags or terminates nodes tagged with its cluster's name.
    """

    capabilities: frozenset[Capability] = frozenset()
    # Defaults for providers without the capability (see Capability).
    unreachable: Mapping[str, str] = MappingProxyType({})
    damaged: Mapping[str, Exception] = MappingProxyType({})

    def __init__(self, config: "ClusterConfig"):
        self.config = config
        self.cluster_name = config.cluster_name

    @classmethod
    def supports(cls, capability: Capability) -> bool:
        return capability in cls.capabilities

    @staticmethod
    def bootstrap(config: "ClusterConfig") -> "ClusterConfig":
        """Fill in cloud resources (key pair, security group, firewall) once, idempotently."""
        return config

    @abc.abstractmethod
    def non_terminated_nodes(self, tag_filters: Mapping[str, str] | None = None) -> list[Node]:
        """Every node of this cluster not terminated, whose tags match all of tag_filters."""

    @abc.abstractmethod
    def create_nodes(self, node_type: str, node_config: Mapping, tags: Mapping[str, str],
                     count: int) -> list[NodeId]:
        """Create `count` nodes of `node_type` carrying `tags` (plus the cluster tag).
        May return before the nodes run."""

    @abc.abstractmethod
    def terminate_nodes(self, ids: list[NodeId]) -> None:
        """Terminate the nodes; unknown ids are ignored (terminating is idempotent)."""

    @abc.abstractmethod
    def set_node_tags(self, node_id: NodeId, tags: Mapping[str, str]) -> None:
        """Merge `tags` into the node's tags."""

    @abc.abstractmethod
    def command_runner(self, node: Node) -> "CommandRunner":
        """A CommandRunner that runs commands on `node`."""

    def node(self, node_id: NodeId) -> Node | None:
        """The node with this id, if it is not terminated."""
        for node in self.non_terminated_nodes():
            if node.id == node_id:
                return node
        return None

    def known_node(self, node_id: NodeId) -> Node | None:
        """The node as this provider itself just made or read it, without asking any host
        or cloud; None when it cannot say (the caller then lists)."""
        return None

    def close(self) -> None:
        """Release connections; the provider is not used afterwards."""

    # -- capabilities: neutral defaults ---------------------------------------------------
    def nodes_including_damaged(self, tag_filters: Mapping[str, str] | None = None
                                ) -> list[Node]:
        """Capability.DAMAGED_NODES: the listing with damaged nodes too; otherwise the
        usual listing (this provider has no records to damage)."""
        return self.non_terminated_nodes(tag_filters)

    def head_port(self) -> int | None:
        """Capability.HEAD_PORT: the head's runtime port chosen by the provider; None:
        the default port."""
        return None

    @staticmethod
    def purge(config: "ClusterConfig") -> list[str]:
        """Capability.PURGE: remove the cloud resources corral made for the cluster."""
        raise UsageError(f"the {config.provider_type} provider has nothing to purge")


@dataclasses.dataclass(frozen=True)
class CreateOutcome:
    """What create_what_fits did: `ids` created; `error`, the provider's refusal of the
    whole request (None: all were created); `retried_count`, how many a second, smaller
    request asked for (0: none was made) and `retry_error` when that failed too."""
    ids: list[NodeId]
    error: ProviderError | None = None
    retried_count: int = 0
    retry_error: ClusterError | None = None


def create_what_fits(provider: NodeProvider, node_type: str, node_config: Mapping,
                     tags: Mapping[str, str], count: int) -> CreateOutcome:
    """Create `count` nodes; when the provider refuses for want of room but says how
    many would fit (CapacityError.free_count: the local provider's free hosts), ask
    again for that many. `corral up` and the autoscaler both launch through this.
    (Clouds try their zones and subnets inside create_nodes: cloud_common.)

    A ProviderError is returned in the outcome, never raised; any other ClusterError
    of the first request is raised."""
    try:
        return CreateOutcome(list(provider.create_nodes(node_type, node_config, tags, count)))
    except ProviderError as error:
        free_count = error.free_count if isinstance(error, CapacityError) else 0
        if not 0 < free_count < count:
            return CreateOutcome([], error)
        try:
            ids = list(provider.create_nodes(node_type, node_config, tags, free_count))
        except ClusterError as retry_error:
            return CreateOutcome([], error, free_count, retry_error)
        return CreateOutcome(ids, error, free_count)


def unreachable_hosts(provider: NodeProvider) -> dict[str, str]:
    """{host: why} of the hosts the provider's last listing could not ask
    (Capability.UNREACHABLE); empty for a provider that always reaches its nodes."""
    if not provider.supports(Capability.UNREACHABLE):
        return {}
    return dict(provider.unreachable)


def matches(tags: Mapping[str, str], tag_filters: Mapping[str, str] | None) -> bool:
    """True when every filter key is present in tags with the same value."""
    return all(tags.get(key) == value for key, value in (tag_filters or {}).items())
