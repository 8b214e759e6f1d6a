"""`corral down CONFIG`: stop and remove every node of a cluster, and prove it."""
from __future__ import annotations

import sys

import click

from launcher.commands.cluster import open_cluster
from launcher.commands.cluster_down import (PURGED_RESOURCES, can_purge, mount_targets_left,
                                   nodes_to_take_down, take_down)
from launcher.commands.cluster_down import purge as purge_cluster
from launcher.errors import ClusterError, UsageError
from launcher.progress import print_table
from launcher.providers.base import STATE_DAMAGED, unreachable_hosts
from launcher.tags import TAG_FAILURE


@click.command(name="down")
@click.argument("config_path", metavar="CONFIG")
@click.option("--workers-only", is_flag=True, help="Remove the workers, keep the head.")
@click.option("--purge", is_flag=True,
              help="Afterwards also remove the cloud resources corral made for the cluster "
                   "(AWS: security group, key pair, instance profile; GCP: firewall rules). "
                   "Resources you named in the config are kept.")
@click.option("-y", "--yes", is_flag=True, help="Do not ask for confirmation.")
def down(config_path: str, workers_only: bool, purge: bool, yes: bool) -> None:
    """Stop the runtime on every node of CONFIG's cluster, terminate the nodes, then list
    them again and report anything left. With --purge, then remove the cluster's cloud
    resources too.

    Exit code 0 when nothing is left, 1 when a node survived (it is named)."""
    if purge and workers_only:
        raise UsageError("--purge removes the whole cluster's resources; it cannot be "
                         "combined with --workers-only")
    with open_cluster(config_path) as (config, provider):
        nodes = nodes_to_take_down(provider, workers_only)
        what = "workers" if workers_only else "nodes"
        purging = purge and can_purge(config)
        if not nodes and not purging:
            click.echo(f"Cluster {config.cluster_name!r} has no {what}; nothing to do.")
            _warn_unreachable(provider)
            if purge:
                _echo_nothing_to_purge(config)
            return
        if not yes:
            _confirm(config, len(nodes), what, purging)
        result = None
        if nodes:
            click.echo(f"Taking down {len(nodes)} {what} of cluster {config.cluster_name!r}: "
                       + ", ".join(node.id for node in nodes))
            for node in nodes:
                if node.state == STATE_DAMAGED:
                    click.echo(f"  note: {node.id} is damaged ({node.tags.get(TAG_FAILURE)});"
                               f" its processes are found by their node directory")
            result = take_down(provider, config, workers_only=workers_only,
                               on_event=lambda text: click.echo(f"  note: {text}"))
        else:
            click.echo(f"Cluster {config.cluster_name!r} has no {what}.")
        _warn_unreachable(provider)
    if result is not None:
        _check_result(config, result, what, workers_only, purge)
    if purge:
        _purge(config)


def _confirm(config, node_count: int, what: str, purging: bool) -> None:
    name = config.cluster_name
    parts = [f"{node_count} {what} of cluster {name!r}"] if node_count else []
    if purging:
        resources = PURGED_RESOURCES.get(config.provider_type, "cloud resources")
        parts.append(f"the cloud resources corral made for cluster {name!r} ({resources})")
    targets = " and ".join(parts)
    if not sys.stdin.isatty():
        raise UsageError(f"down would remove {targets}; confirm with -y/--yes")
    click.confirm(f"Remove {targets}?", abort=True)


def _check_result(config, result, what: str, workers_only: bool, purge: bool) -> None:
    if result.terminate_error:
        click.secho(f"  terminate: {result.terminate_error}", fg="red", err=True)
    if result.left:
        print_table(("node", "kind", "type", "status"),
                    [(node.id, node.kind, node.node_type, node.status) for node in result.left],
                    title="Still there after down:")
        raise ClusterError(f"{len(result.left)} node(s) of cluster {config.cluster_name!r} "
                           f"are still there: {', '.join(n.id for n in result.left)}; "
                           f"run `corral down` again or check the provider"
                           + ("; nothing was purged" if purge else ""))
    if result.terminate_error:
        raise ClusterError(f"terminating failed: {result.terminate_error}"
                           + ("; nothing was purged" if purge else ""))
    left_files = mount_targets_left(config, result.targeted)
    click.echo(f"Removed {len(result.targeted)} {what} in {result.duration_s:.1f} s; "
               + (f"no node of cluster {config.cluster_name!r} is left" if left_files else
                  f"nothing of cluster {config.cluster_name!r} is left")
               + (" but the head." if workers_only else "."))
    if left_files:
        click.echo("File mounts left in place (corral merges into these targets and "
                   "keeps no list of what it wrote, so it does not delete them):")
        for line in left_files:
            click.echo(f"  {line}")


def _purge(config) -> None:
    if not can_purge(config):
        _echo_nothing_to_purge(config)
        return
    click.echo(f"Purging the cloud resources of cluster {config.cluster_name!r}...")
    removed = purge_cluster(config) or []
    for line in removed:
        click.echo(f"  removed {line}")
    if not removed:
        click.echo("  nothing left to remove.")


def _echo_nothing_to_purge(config) -> None:
    click.echo(f"Nothing to purge for provider {config.provider_type}.")


def _warn_unreachable(provider) -> None:
    for host, problem in unreachable_hosts(provider).items():
        click.secho(f"  warning: could not check {host}: {problem.splitlines()[0]}",
                    fg="yellow", err=True)
