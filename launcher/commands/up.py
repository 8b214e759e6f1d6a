"""`corral up CONFIG`: create or update a cluster."""
from __future__ import annotations

import sys

import click

from launcher import paths
from launcher.commands.cluster import default_config_hint, load_cluster_config
from launcher.commands.cluster_up import UpOptions, UpPlan, UpResult, apply_up, ensure_cluster_keys, \
    plan_up
from launcher.errors import ClusterError, UsageError
from launcher.progress import ProgressView, print_table
from launcher.providers import make_provider, provider_class
from launcher.providers.base import unreachable_hosts


@click.command(name="up")
@click.argument("config_path", metavar="CONFIG")
@click.option("--dry-run", is_flag=True,
              help="Print what would be created, updated or replaced, and why; change nothing.")
@click.option("-y", "--yes", is_flag=True, help="Do not ask before replacing nodes.")
@click.option("--restart-only", is_flag=True,
              help="Skip setup commands; sync files and run the start commands on every node.")
@click.option("--no-restart", is_flag=True,
              help="Sync files and run setup where needed, but do not run start commands "
                   "on existing nodes.")
@click.option("--force-setup", is_flag=True,
              help="Run setup (and start) commands on every node even if nothing changed.")
def up(config_path: str, dry_run: bool, yes: bool, restart_only: bool, no_restart: bool,
       force_setup: bool) -> None:
    """Create or update the cluster described by CONFIG.

    Brings up the head and every node type's min_workers at once, each node through
    waiting-for-ssh, shipping-corral (SSH nodes: this corral is installed there if the
    node lacks it), syncing-files, setting-up and starting. Running it again only
    redoes what changed: nothing when nothing changed; setup and start when commands,
    file contents or corral itself changed; a replacement (after confirmation) when a
    node_config changed.
    Exit code 0 when every node is up to date, 1 when any failed (its log is named),
    2 for a bad config or usage."""
    if restart_only and (no_restart or force_setup):
        raise UsageError("--restart-only cannot be combined with --no-restart or "
                         "--force-setup")
    options = UpOptions(restart_only=restart_only, no_restart=no_restart,
                        force_setup=force_setup)
    config = load_cluster_config(config_path)
    if dry_run:
        _dry_run(config, options)
        return
    config = provider_class(config.provider_type).bootstrap(config)
    from filelock import FileLock, Timeout
    lock = FileLock(str(paths.cluster_dir(config.cluster_name) / "up.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise ClusterError(f"another `corral up` is running for cluster "
                           f"{config.cluster_name!r}; wait for it to finish") from None
    try:
        _up(config, options, yes)
    finally:
        lock.release()


def _dry_run(config, options: UpOptions) -> None:
    keys = paths.corral_home() / "clusters" / config.cluster_name / "keys"
    keys_dir = str(keys) if keys.is_dir() and any(keys.iterdir()) else None
    provider = make_provider(config)
    try:
        plan = plan_up(config, provider, options, keys_dir)
        _warn_unreachable(provider)
    finally:
        provider.close()
    click.echo(f"Plan for cluster {config.cluster_name!r} "
               f"(provider {config.provider_type}); dry run, nothing is changed:")
    _echo_plan(plan)
    if plan.nothing_to_do:
        click.echo("Nothing to do: every node is up to date.")


def _warn_unreachable(provider) -> None:
    """Hosts the provider could not read (down, or a changed host key): say so, since
    they will look free or missing in the plan."""
    for host, problem in unreachable_hosts(provider).items():
        click.secho(f"warning: could not reach {host}: {problem}", fg="yellow", err=True)


def _echo_plan(plan: UpPlan) -> None:
    click.echo(f"  {'ACTION':<34} {'NODE':<34} {'KIND':<6} {'TYPE':<14} REASON")
    for line in plan.describe():
        click.echo(f"  {line}")


def _confirm_replacements(plan: UpPlan, yes: bool) -> None:
    if not plan.replacements or yes:
        return
    names = ", ".join(f"{action.node.id} ({action.reason})" for action in plan.replacements)
    if not sys.stdin.isatty():
        raise UsageError(f"up would replace {names}; that needs confirmation: "
                         f"re-run with -y/--yes")
    click.confirm(f"Replace {names}? Their processes and local state will be lost",
                  abort=True)


def _up(config, options: UpOptions, yes: bool) -> None:
    keys_dir, notice = ensure_cluster_keys(config.cluster_name)
    if notice:
        click.secho(f"note: {notice}", err=True, fg="yellow")
    provider = make_provider(config)
    try:
        plan = plan_up(config, provider, options, keys_dir)
        _warn_unreachable(provider)
        if plan.nothing_to_do:
            nodes = [action.node for action in plan.actions if action.node is not None]
            click.echo(f"Cluster {config.cluster_name!r} is up to date: nothing changed, "
                       f"nothing re-run ({len(nodes)} node{'s' if len(nodes) != 1 else ''}).")
            _echo_next_steps(config)
            return
        _confirm_replacements(plan, yes)
        click.echo(f"Bringing up cluster {config.cluster_name!r} "
                   f"(provider {config.provider_type}):")
        _echo_plan(plan)
        with ProgressView() as view:
            result = apply_up(config, provider, plan, on_stage=view.stage,
                              on_nodes=view.add_nodes)
    finally:
        provider.close()
    _report(config, result)


def _report(config, result: UpResult) -> None:
    rows = [(outcome.node_id, outcome.node_kind, outcome.node_type, outcome.ip,
             outcome.status, f"{outcome.duration_s:.1f}") for outcome in result.outcomes]
    rows += [(node.id, node.kind, node.node_type, node.internal_ip or node.external_ip,
              "up-to-date (unchanged)", "0.0") for node in result.kept]
    if rows:
        print_table(("node", "kind", "type", "ip", "status", "seconds"), rows)
    for outcome in result.failed:
        click.secho(f"FAILED {outcome.error}", fg="red", err=True)
    for error in result.launch_errors:
        click.secho(f"FAILED {error}", fg="red", err=True)
    if not result.ok:
        failed = [outcome.node_id for outcome in result.failed]
        parts = []
        if failed:
            parts.append(f"{len(failed)} node(s) failed: {', '.join(failed)} "
                         f"(logs: {', '.join(o.log_path for o in result.failed)})")
        if result.launch_errors:
            parts.append(f"{len(result.launch_errors)} launch error(s)")
        good = sum(1 for outcome in result.outcomes if outcome.ok) + len(result.kept)
        raise ClusterError(f"cluster {config.cluster_name!r} is only partly up: "
                           + "; ".join(parts) + f"; {good} node(s) up to date and left running."
                           + " Fix the cause and run `corral up` again.")
    click.echo(f"Cluster {config.cluster_name!r} is up ({len(rows)} nodes, "
               f"{result.duration_s:.1f} s).")
    _echo_next_steps(config)


def _echo_next_steps(config) -> None:
    hint = default_config_hint(config)
    click.echo("Next:")
    click.echo(f"  corral exec {hint} 'hostname'       # run a command on the head")
    click.echo(f"  corral attach {hint}                # a shell on the head")
    click.echo(f"  corral status {hint}                # nodes and their stages")
    click.echo(f"  corral down {hint}                  # stop and remove every node")
