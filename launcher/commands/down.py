"""`corral down CONFIG`: stop and remove every node of a cluster, and prove it."""
from __future__ import annotations

import sys

import click

from launcher.cluster import open_cluster
from launcher.cluster_down import nodes_to_take_down, take_down
from launcher.errors import ClusterError, UsageError
from launcher.progress import print_table


@click.command(name="down")
@click.argument("config_path", metavar="CONFIG")
@click.option("--workers-only", is_flag=True, help="Remove the workers, keep the head.")
@click.option("-y", "--yes", is_flag=True, help="Do not ask for confirmation.")
def down(config_path: str, workers_only: bool, yes: bool) -> None:
    """Stop the runtime on every node of CONFIG's cluster, terminate the nodes, then list
    them again and report anything left.

    Exit code 0 when nothing is left, 1 when a node survived (it is named)."""
    with open_cluster(config_path) as (config, provider):
        nodes = nodes_to_take_down(provider, workers_only)
        what = "workers" if workers_only else "nodes"
        if not nodes:
            click.echo(f"Cluster {config.cluster_name!r} has no {what}; nothing to do.")
            _warn_unreachable(provider)
            return
        if not yes:
            if not sys.stdin.isatty():
                raise UsageError(f"down would remove {len(nodes)} {what} of cluster "
                                 f"{config.cluster_name!r}; confirm with -y/--yes")
            click.confirm(f"Remove {len(nodes)} {what} of cluster {config.cluster_name!r}?",
                          abort=True)
        click.echo(f"Taking down {len(nodes)} {what} of cluster {config.cluster_name!r}: "
                   + ", ".join(node.id for node in nodes))
        result = take_down(provider, config, workers_only=workers_only,
                           on_event=lambda text: click.echo(f"  note: {text}"))
        _warn_unreachable(provider)
    if result.terminate_error:
        click.secho(f"  terminate: {result.terminate_error}", fg="red", err=True)
    if result.left:
        print_table(("node", "kind", "type", "status"),
                    [(node.id, node.kind, node.node_type, node.status) for node in result.left],
                    title="Still there after down:")
        raise ClusterError(f"{len(result.left)} node(s) of cluster {config.cluster_name!r} "
                           f"are still there: {', '.join(n.id for n in result.left)}; "
                           f"run `corral down` again or check the provider")
    if result.terminate_error:
        raise ClusterError(f"terminating failed: {result.terminate_error}")
    click.echo(f"Removed {len(result.targeted)} {what} in {result.duration_s:.1f} s; "
               f"nothing of cluster {config.cluster_name!r} is left"
               + (" but the head." if workers_only else "."))


def _warn_unreachable(provider) -> None:
    unreachable = getattr(provider, "unreachable", None) or {}
    for host, problem in unreachable.items():
        click.secho(f"  warning: could not check {host}: {problem.splitlines()[0]}",
                    fg="yellow", err=True)
