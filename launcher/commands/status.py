"""`corral status CONFIG`: the cluster's nodes as their tags describe them."""
from __future__ import annotations

from typing import Callable

import click

from launcher.cluster import display_ip, open_cluster
from launcher.errors import ClusterError
from launcher.progress import print_table
from launcher.tags import KIND_HEAD, TAG_FAILURE

STATUS_HEADERS = ("node", "kind", "type", "ip", "status", "failure")

# Extra sections printed after the node table: fn(config, provider, nodes) -> None.
# The autoscaler adds its summary here (kept pluggable so the launcher does not import it).
STATUS_SECTIONS: list[Callable] = []


def status_rows(nodes) -> list[tuple]:
    return [(node.id, node.kind, node.node_type, display_ip(node), node.status or "-",
             node.tags.get(TAG_FAILURE) or "") for node in nodes]


@click.command(name="status")
@click.argument("config_path", metavar="[CONFIG]", required=False)
def status(config_path: str | None) -> None:
    """Show the nodes of CONFIG's cluster: id, kind, type, IP, bootstrap stage and last
    failure, read from the provider's tags (the same truth the head sees).
    Exit code 1 when the cluster has no head. On a head node CONFIG may be left out."""
    with open_cluster(config_path) as (config, provider):
        nodes = provider.non_terminated_nodes()
        unreachable = dict(getattr(provider, "unreachable", None) or {})
        if not any(node.kind == KIND_HEAD for node in nodes):
            detail = f" ({len(nodes)} worker(s) without a head)" if nodes else ""
            raise ClusterError(f"cluster {config.cluster_name!r} has no head node{detail}; "
                               f"start it with: corral up {config_path or 'CONFIG'}")
        print_table(STATUS_HEADERS, status_rows(nodes),
                    title=f"Cluster {config.cluster_name!r} ({config.provider_type}): "
                          f"{len(nodes)} node(s)")
        for host, problem in unreachable.items():
            click.secho(f"warning: could not read {host}: {problem.splitlines()[0]}",
                        fg="yellow", err=True)
        for section in STATUS_SECTIONS:
            section(config, provider, nodes)
