"""`corral status CONFIG`: the cluster's nodes as their tags describe them, then the
head's runtime services as the head sees them (launcher.commands.head_services: up, restarting,
down, and whether the autoscaler's view is stale), then the autoscaler's view (read
from the head) when the autoscaler is installed."""
from __future__ import annotations

import importlib
from typing import Callable

import click

from launcher.commands.cluster import all_nodes, damage_error, display_ip, open_cluster
from launcher.commands import head_services
from launcher.errors import ClusterError
from launcher.progress import print_table
from launcher.providers.base import STATE_DAMAGED, unreachable_hosts
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


def status_rows(nodes, head_note: str | None = None) -> list[tuple]:
    """One row per node; head_note (what of the head's runtime is down) goes into the
    head's failure column, since its bootstrap status alone would say up-to-date."""
    rows = []
    for node in nodes:
        failure = node.tags.get(TAG_FAILURE) or ""
        if head_note and node.kind == KIND_HEAD:
            failure = "; ".join(part for part in (head_note, failure) if part)
        rows.append((node.id, node.kind, node.node_type, display_ip(node),
                     node.status or "-", failure))
    return rows


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
    `damaged`, and its file is named. The head's services (control service, autoscaler
    monitor, node agent, supervisor) are shown as the head sees them: up, RESTARTING
    (its supervisor brings it back) or DOWN (`corral up` repairs it), and an autoscaler
    view older than a few of its refresh periods is called stale, with its age.
    Exit code 1 when the cluster has no head, a damaged node, or a head service that is
    not running. On a head node CONFIG may be left out."""
    with open_cluster(config_path) as (config, provider):
        nodes = all_nodes(provider)
        damage = damage_error(provider)
        unreachable = unreachable_hosts(provider)
        if not nodes:
            raise ClusterError(f"cluster {config.cluster_name!r} has no head node; "
                               f"start it with: corral up {config_path or 'CONFIG'}")
        head = next((node for node in nodes if node.kind == KIND_HEAD and
                     node.state != STATE_DAMAGED), None)
        health = head_services.probe(provider, head) if head is not None else None
        print_table(STATUS_HEADERS, status_rows(
            nodes, head_services.head_failure_note(health) if health else None),
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
        for line in head_services.section_lines(health):
            click.echo(line)
        for target in STATUS_SECTIONS:
            section = _section(target)
            if section is not None:
                section(config, provider, nodes, explain=explain)
        stale = head_services.stale_view(health)
        if stale is not None:
            click.secho(f"warning: the autoscaler's view is stale: written "
                        f"{stale['age_s']:.0f} s ago, while the monitor rewrites it at "
                        f"least every {stale['refresh_s']:g} s when it can plan (see the "
                        f"head services above and `corral monitor`)", fg="yellow",
                        err=True)
        not_running = head_services.head_failure_note(health)
        if not_running:
            repair = head_services.repair_reason(health.report)
            raise ClusterError(f"the head's runtime is not all running ({not_running}); "
                               + (f"`corral up {config_path or 'CONFIG'}` repairs it"
                                  if repair else "its supervisor is restarting it"))
