"""`corral validate cluster.yaml`: check a cluster file without touching anything."""
from __future__ import annotations

import click

from launcher.config.load import load_config_with_notices
from launcher.config.model import ClusterConfig


def summary(config: ClusterConfig) -> str:
    """One line: provider, node types, worker bounds."""
    types = config.available_node_types
    min_total = sum(node_type.min_workers for node_type in types.values())
    return (f"provider {config.provider_type}, {len(types)} node "
            f"type{'s' if len(types) != 1 else ''} ({', '.join(types)}), head "
            f"{config.head_node_type!r}, workers {min_total}..{config.max_workers}")


@click.command(name="validate")
@click.argument("config_file", metavar="CLUSTER_YAML")
@click.option("--show", is_flag=True,
              help="Also print the normalised config (defaults filled in) as YAML.")
def validate(config_file: str, show: bool) -> None:
    """Check CLUSTER_YAML and report every problem with its line, or print `ok`.

    Nothing is created, contacted or changed. Exit code 0 when the file is valid, 2 when
    it is not (one message per problem: file:line: path: what was expected)."""
    config, notices = load_config_with_notices(config_file)
    for notice in notices:
        click.secho(f"note: {notice}", err=True, fg="yellow")
    if show:
        import yaml
        click.echo(yaml.safe_dump(config.to_dict(), sort_keys=False, default_flow_style=False),
                   nl=False)
    click.echo(f"{config_file}: ok ({summary(config)})")
