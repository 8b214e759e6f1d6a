"""What every cluster command needs: the config and provider of a cluster, its head,
its nodes, and the environment commands on a node get.

`corral up` lives in launcher/commands/cluster_up.py, `corral down` in launcher/commands/cluster_down.py.
"""
from __future__ import annotations

import contextlib
import os
from typing import Iterator

from launcher.errors import ClusterError, UsageError
from launcher.bootstrap.node_context import (DEFAULT_NODE_DIR, ClusterContext, head_port_of,
                                   known_node_dir, node_ip)
from launcher.providers import make_provider
from launcher.providers.base import Capability, Node, NodeProvider
from launcher.tags import KIND_HEAD, KIND_WORKER, TAG_NODE_KIND


class NoClusterError(ClusterError):
    """The cluster has no head node (never brought up, or already down)."""

    def __init__(self, cluster_name: str, config_path: str | None):
        self.cluster_name = cluster_name
        hint = f"corral up {config_path}" if config_path else "corral up CONFIG"
        super().__init__(f"cluster {cluster_name!r} has no head node; is it up? "
                         f"(start it with: {hint})")


HEAD_CONFIG_NAME = "cluster.yaml"


def load_cluster_config(config_path: str | None):
    """load_config, printing the loader's notices (aliases read, ...) on stderr. Without
    a path, on a head node: the config `corral up` left there ($CORRAL_NODE_DIR)."""
    import click
    from launcher.config.load import load_config_with_notices, load_normalised_config
    if config_path is None:
        node_dir = os.environ.get("CORRAL_NODE_DIR")
        candidate = os.path.join(node_dir, HEAD_CONFIG_NAME) if node_dir else None
        if not candidate or not os.path.isfile(candidate):
            raise UsageError("CONFIG is required (it may be left out only on a head node, "
                             "where $CORRAL_NODE_DIR/cluster.yaml names the cluster)")
        return load_normalised_config(candidate)
    config, notices = load_config_with_notices(config_path)
    for notice in notices:
        click.secho(f"note: {notice}", err=True, fg="yellow")
    return config


@contextlib.contextmanager
def open_cluster(config_path: str | None) -> Iterator[tuple[object, NodeProvider]]:
    """(config, provider) for a cluster YAML; the provider is closed on exit."""
    config = load_cluster_config(config_path)
    provider = make_provider(config)
    try:
        yield config, provider
    finally:
        provider.close()


def all_nodes(provider: NodeProvider, tag_filters=None) -> list[Node]:
    """Every node, damaged ones included (state STATE_DAMAGED: a record that cannot be
    read, or processes left without one), for the commands that must act on all of
    them: `down` removes them, `up` replaces them, `status` shows them. Providers that
    cannot have damaged nodes list as usual."""
    if provider.supports(Capability.DAMAGED_NODES):
        return list(provider.nodes_including_damaged(tag_filters))
    return provider.non_terminated_nodes(tag_filters)


def damage_error(provider: NodeProvider) -> ClusterError | None:
    """The damage the last all_nodes() found, as one error naming every damaged state
    file (None when there was none)."""
    damaged = dict(provider.damaged) if provider.supports(Capability.DAMAGED_NODES) else {}
    if not damaged:
        return None
    if len(damaged) == 1:
        return next(iter(damaged.values()))
    return ClusterError(f"{len(damaged)} damaged node records:\n  " + "\n  ".join(
        str(error) for error in damaged.values()))


def find_head(provider: NodeProvider, config) -> Node:
    heads = provider.non_terminated_nodes({TAG_NODE_KIND: KIND_HEAD})
    if not heads:
        raise NoClusterError(config.cluster_name, config.source_path)
    return heads[0]


def worker_nodes(provider: NodeProvider) -> list[Node]:
    return provider.non_terminated_nodes({TAG_NODE_KIND: KIND_WORKER})


def pick_node(provider: NodeProvider, config, node_id: str) -> Node:
    """The node named `node_id`: its id (exactly), else its IP when exactly one node has
    that IP (the process provider's nodes all share 127.0.0.1)."""
    nodes = provider.non_terminated_nodes()
    for node in nodes:
        if node.id == node_id:
            return node
    by_ip = [node for node in nodes
             if node_id in (node.internal_ip, node.external_ip, node_ip(node))]
    if len(by_ip) == 1:
        return by_ip[0]
    if by_ip:
        raise UsageError(f"{len(by_ip)} nodes of cluster {config.cluster_name!r} have the "
                         f"IP {node_id}: {', '.join(node.id for node in by_ip)}; "
                         f"name one by its id")
    known = ", ".join(node.id for node in nodes) or "none"
    raise UsageError(f"cluster {config.cluster_name!r} has no node {node_id!r} "
                     f"(nodes: {known})")


def command_env(provider: NodeProvider, config, node: Node, head: Node,
                runner) -> dict[str, str]:
    """The common-contract environment for a command run on `node` outside bootstrap
    (on a node corral was shipped to, with its active environment first on PATH)."""
    from launcher.ship.layout import ACTIVE_ENV_SHELL, ships_to
    head_ip = node_ip(head) or ""
    context = ClusterContext(config=config, head_ip=head_ip,
                             head_port=head_port_of(provider, head), keys_dir=None,
                             mounts_digest={}, keys_digest=None)
    return context.node_env(node, known_node_dir(runner) or DEFAULT_NODE_DIR,
                            ACTIVE_ENV_SHELL if ships_to(runner) else None)


def display_ip(node: Node) -> str:
    return node.external_ip or node.internal_ip or "-"


def default_config_hint(config) -> str:
    """How to name this cluster's config in a suggested command."""
    if config.source_path:
        relative = os.path.relpath(config.source_path)
        return relative if not relative.startswith("../../") else config.source_path
    return "CONFIG"
