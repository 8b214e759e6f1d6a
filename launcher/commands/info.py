"""`corral get-head-ip` and `corral get-worker-ips`: addresses for scripts."""
from __future__ import annotations

import click

from launcher.commands.cluster import find_head, open_cluster, worker_nodes


def _address(node, internal: bool) -> str:
    if internal:
        return node.internal_ip or node.external_ip or ""
    return node.external_ip or node.internal_ip or ""


_INTERNAL = click.option("--internal", is_flag=True,
                         help="Print the internal (private) address instead of the public "
                              "one where a node has both.")


@click.command(name="get-head-ip")
@click.argument("config_path", metavar="[CONFIG]", required=False)
@_INTERNAL
def get_head_ip(config_path: str, internal: bool) -> None:
    """Print the IP of CONFIG's head node (exit 1 if the cluster has no head). On a head
    node CONFIG may be left out."""
    with open_cluster(config_path) as (config, provider):
        head = find_head(provider, config)
    click.echo(_address(head, internal))


@click.command(name="get-worker-ips")
@click.argument("config_path", metavar="[CONFIG]", required=False)
@_INTERNAL
def get_worker_ips(config_path: str, internal: bool) -> None:
    """Print the IPs of CONFIG's workers, one per line (exit 1 if the cluster has no
    head; no output when it has no workers)."""
    with open_cluster(config_path) as (config, provider):
        find_head(provider, config)
        workers = worker_nodes(provider)
    for node in workers:
        click.echo(_address(node, internal))
