"""`corral status CONFIG`: the cluster's nodes as their tags describe them, then the
autoscaler's view (read from the head) when the autoscaler is installed."""
from __future__ import annotations

import importlib
from typing import Callable

import click

from launcher.cluster import all_nodes, damage_error, display_ip, open_cluster
from launcher.errors import ClusterError
from launcher.progress import print_table
from launcher.tags import KIND_HEAD, TAG_FAILURE

STATUS_HEADERS = ("node", "kind", "type", "ip", "status", "failure")

# Extra sections printed after the node table: "module:function" called as
# fn(config, provider, nodes, explain=bool). Loaded by name, so the launcher does not
# import the autoscaler (DESIGN.md: imports run one way).
STATUS_SECTIONS: list[str] = ["autoscaler.explain:status_section"]


def _section(target: str) -> Callable | None:
    module_name, attribute = target.split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name and module_name.startswith(error.name):
            return None  # that part is not installed: nothing to show
        raise
    return getattr(module, attribute)


def status_rows(nodes) -> list[tuple]:
    return [(node.id, node.kind, node.node_type, display_ip(node), node.status or "-",
             node.tags.get(TAG_FAILURE) or "") for node in nodes]


@click.command(name="status")
@click.argument("config_path", metavar="[CONFIG]", required=False)
@click.option("--explain", is_flag=True,
              help="Also give the reason behind each autoscaler decision (launched, kept, "
                   "capped, backing off, quarantined).")
def status(config_path: str | None, explain: bool) -> None:
    """Show the nodes of CONFIG's cluster: id, kind, type, IP, bootstrap stage and last
    failure, read from the provider's tags (the same truth the head sees); then the
    autoscaler's summary from the head: nodes active / idle / pending / failed, resources
    used and total, and pending demand. A node whose record is damaged is shown as
    `damaged`, and its file is named.
    Exit code 1 when the cluster has no head or a damaged node. On a head node CONFIG
    may be left out."""
    with open_cluster(config_path) as (config, provider):
        nodes = all_nodes(provider)
        damage = damage_error(provider)
        unreachable = dict(getattr(provider, "unreachable", None) or {})
        if not nodes:
            raise ClusterError(f"cluster {config.cluster_name!r} has no head node; "
                               f"start it with: corral up {config_path or 'CONFIG'}")
        print_table(STATUS_HEADERS, status_rows(nodes),
                    title=f"Cluster {config.cluster_name!r} ({config.provider_type}): "
                          f"{len(nodes)} node(s)")
        for host, problem in unreachable.items():
            click.secho(f"warning: could not read {host}: {problem.splitlines()[0]}",
                        fg="yellow", err=True)
        if damage is not None:  # named, after the table that shows the rest
            raise damage
        if not any(node.kind == KIND_HEAD for node in nodes):
            raise ClusterError(f"cluster {config.cluster_name!r} has no head node "
                               f"({len(nodes)} worker(s) without a head); start it with: "
                               f"corral up {config_path or 'CONFIG'}")
        for target in STATUS_SECTIONS:
            section = _section(target)
            if section is not None:
                section(config, provider, nodes, explain=explain)
