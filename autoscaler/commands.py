"""`corral plan`, `corral simulate` and `corral monitor`: thin commands over the planner,
the simulator and the event log. Errors are raised (UsageError, ConfigErrors); the CLI's
main() turns them into messages and exit codes."""
from __future__ import annotations

import json

import click

from autoscaler import report


def _load(config_file: str):
    from launcher.config.load import load_config
    return load_config(config_file)


@click.command(name="plan")
@click.argument("config_file", metavar="CLUSTER_YAML")
@click.option("--demands", "demands_file", required=True, metavar="DEMANDS_JSON",
              help='Pending demand: a JSON list of {"shape": {"CPU": 1}, "count": 100}.')
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
def plan(config_file: str, demands_file: str, as_json: bool) -> None:
    """Show the nodes the given demand needs on an empty cluster (the head only).

    The counts are the target before upscaling_speed paces them and include the
    min_workers of each type. Demand that no node type can hold, or that the maxima leave
    no room for, is listed as unplaced with the reason. Nothing is created or contacted."""
    from autoscaler.inputs import read_demands
    from autoscaler.what_if import plan_empty_cluster
    config = _load(config_file)
    demand = read_demands(demands_file)
    result = plan_empty_cluster(config, demand)
    if as_json:
        data = result.to_dict()
        click.echo(json.dumps({"launch": data["target_launch"], "unplaced": data["unplaced"],
                               "reasons": data["reasons"]}, indent=2))
    else:
        click.echo(report.plan_table(result, config))


@click.command(name="simulate")
@click.argument("config_file", metavar="CLUSTER_YAML")
@click.argument("trace_file", metavar="TRACE_JSON")
@click.option("--launch-delay-s", type=click.FloatRange(min=0), default=30.0, show_default=True,
              help="Simulated seconds from a node's launch to it running tasks.")
@click.option("--max-rows", type=click.IntRange(min=1), default=60, show_default=True,
              help="Most timeline rows to print (first and last are kept).")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
def simulate(config_file: str, trace_file: str, launch_delay_s: float, max_rows: int,
             as_json: bool) -> None:
    """Replay TRACE_JSON through the planner and show nodes over time, how long tasks
    waited (p50/p95/max) and the node-minutes spent.

    TRACE_JSON is a list of {"at_s": 0, "shape": {"CPU": 1}, "count": 8, "duration_s": 30}.
    The cluster starts with the head and the min_workers of each type running; launched
    nodes take --launch-delay-s to come up; idle workers leave after the config's idle
    timeouts. Nothing is created or contacted."""
    from autoscaler.inputs import read_trace
    from autoscaler.what_if import simulate_trace
    config = _load(config_file)
    trace = read_trace(trace_file)
    result = simulate_trace(config, trace, launch_delay_s=launch_delay_s)
    if as_json:
        click.echo(json.dumps(report.simulation_dict(result), indent=2))
    else:
        click.echo(report.simulation_text(result, max_rows=max_rows))


@click.command(name="monitor")
@click.argument("config_file", metavar="CLUSTER_YAML", required=False)
@click.option("--events", "events_file", metavar="PATH",
              help="Read this event log instead of the cluster's.")
@click.option("--follow/--no-follow", default=True, show_default=True,
              help="Keep printing new events as they come.")
@click.option("--lines", "-n", type=click.IntRange(min=0), default=20, show_default=True,
              help="How many past events to show first.")
def monitor(config_file: str | None, events_file: str | None, follow: bool,
            lines: int) -> None:
    """Follow the autoscaler's event log: every launch, termination, cap and skip with
    its reason. On the head, without CLUSTER_YAML, reads this node's log; with
    CLUSTER_YAML, reads the head's log through the cluster's provider."""
    from autoscaler.follow import follow_events
    follow_events(config_file, events_file, follow=follow, lines=lines, echo=click.echo)
