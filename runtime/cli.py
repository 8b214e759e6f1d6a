"""`corral start` and `corral stop`: the runtime's processes on this node. Defaults come
from the environment the launcher sets (CORRAL_NODE_DIR, CORRAL_NODE_ID,
CORRAL_NODE_TYPE, CORRAL_NODE_RESOURCES, CORRAL_HEAD_IP, CORRAL_HEAD_PORT); without
CORRAL_NODE_DIR the node dir is the per-user default (runtime.node.session). A node dir, keys
or address that another user owns or may write is refused (UnsafePathError, exit 1)."""
from __future__ import annotations

import json
import os

import click

from runtime.node import session
from runtime.errors import RuntimeStartError


def _resources(value: str | None) -> dict | None:
    if not value:
        return None
    try:
        data = json.loads(value)
    except ValueError as error:
        raise click.BadParameter(f"not JSON: {error}") from None
    if not isinstance(data, dict):
        raise click.BadParameter('expected a JSON object, e.g. {"GPU": 1, "ssd": 2}')
    return data


def parse_host_port(value: str, what: str = "--address") -> tuple[str, int]:
    """HOST:PORT (IPv6 as [HOST]:PORT) -> (host, port); click.BadParameter otherwise."""
    host, sep, port_text = value.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or any(c.isspace() for c in host):
        raise click.BadParameter(f"{value!r} is not HOST:PORT (e.g. 10.0.0.5:6390)",
                                 param_hint=what)
    try:
        port = int(port_text)
    except ValueError:
        port = -1
    if not 1 <= port <= 65535:
        raise click.BadParameter(f"{value!r}: the port must be a number from 1 to 65535",
                                 param_hint=what)
    return host, port


def _address(ctx, param, value: str | None) -> str | None:
    if value is None:
        return None
    parse_host_port(value)
    return value


def _size(ctx, param, value: str | None) -> int | None:
    from runtime.agent.store_memory import parse_bytes
    if value is None:
        return None
    try:
        return parse_bytes(value)
    except ValueError as error:
        raise click.BadParameter(str(error)) from None


def _env_port() -> int | None:
    text = os.environ.get("CORRAL_HEAD_PORT")
    if not text:
        return None
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise click.UsageError(f"CORRAL_HEAD_PORT={text!r} is not a port (0-65535)")
    return port


@click.command(help="Start the runtime on this node: the head's control service and "
               "agent (--head), or a worker agent joining --address (default "
               "$CORRAL_HEAD_IP:$CORRAL_HEAD_PORT). Returns once the processes are up.")
@click.option("--head", is_flag=True, help="Start the head (control service + agent).")
@click.option("--address", callback=_address,
              help="HOST:PORT of the head to join (workers).")
@click.option("--port", type=click.IntRange(0, 65535), help="Head port (default $CORRAL_HEAD_PORT or 6390; "
              "0 picks a free one).")
@click.option("--num-cpus", type=float, help="CPUs (default: from "
              "$CORRAL_NODE_RESOURCES, else this machine's count).")
@click.option("--num-gpus", type=float, help="GPUs.")
@click.option("--resources", help='Custom resources as JSON, e.g. \'{"ssd": 1}\'.')
@click.option("--node-id", help="Node id (default $CORRAL_NODE_ID or hostname-random).")
@click.option("--node-ip-address", "node_ip", help="IP other nodes reach this node at.")
@click.option("--autoscaling-config", type=click.Path(),
              help="Cluster YAML for the autoscaler monitor (head only).")
@click.option("--max-workers", type=click.IntRange(min=1), metavar="N",
              help="Worker processes (task workers and actors) this node runs at most; "
              "actors beyond it wait (default $CORRAL_MAX_WORKERS, else half the "
              "available memory / 64 MiB, at least 4).")
@click.option("--heartbeat-timeout-s", type=float,
              help="Seconds without heartbeat before a node is dead (head; default 10).")
@click.option("--object-store-memory", callback=_size, metavar="BYTES",
              help="Bytes of objects this node keeps in memory; more spill to disk "
              "(default $CORRAL_OBJECT_STORE_MEMORY, else 30% of its memory; e.g. 512M).")
@click.option("--object-spill-limit", callback=_size, metavar="BYTES",
              help="Bytes of objects this node may spill to disk (default "
              "$CORRAL_OBJECT_SPILL_LIMIT, else the disk's room less 5%).")
def start(head, address, port, num_cpus, num_gpus, resources, node_id, node_ip, max_workers,
          autoscaling_config, heartbeat_timeout_s, object_store_memory,
          object_spill_limit):
    from runtime.node.startup import start_node
    if head and address:
        raise click.UsageError("give either --head or --address, not both")
    env_port = _env_port()        # validated for workers too: they join through it
    if port is None and head:
        port = env_port
    started = start_node(head=head, address=address, port=port, num_cpus=num_cpus,
                         num_gpus=num_gpus, resources=_resources(resources),
                         node_id=node_id, node_ip=node_ip, max_workers=max_workers,
                         autoscaling_config=autoscaling_config,
                         heartbeat_timeout_s=heartbeat_timeout_s,
                         object_store_memory=object_store_memory,
                         object_spill_limit=object_spill_limit)
    kind = "head" if head else "worker"
    click.echo(f"corral runtime started: {kind} node {started.node_id}, "
               f"cluster address {started.address} (CurveZMQ, keys in "
               f"{session.keys_dir(started.session.parent)})")
    if head:
        click.echo(f"  autoscaler monitor: {started.monitor}")
        if "supervisor" in started.pids:
            click.echo(f"  supervisor: pid {started.pids['supervisor']} restarts the control "
                       "service and the monitor if they die (`corral health` shows them)")
        click.echo("  connect with: runtime.init(address=\"auto\")")


@click.command(help="Stop this node's runtime processes (by the pids in "
               "$CORRAL_NODE_DIR/session), the head's supervisor first, so that "
               "nothing is started again. Does nothing if none run.")
def stop():
    stopped = session.stop_session(session.session_dir(create=False))
    if stopped:
        click.echo(f"corral runtime stopped (pids {', '.join(map(str, stopped))})")
    else:
        click.echo("corral runtime: nothing running on this node")


@click.command(help="Say whether this node's runtime services run: the head's control "
               "service and autoscaler monitor (up, RESTARTING while the supervisor "
               "brings one back, DOWN when nothing will), the node agent, the "
               "supervisor, and whether the autoscaler's view is stale. Exit code 1 "
               "when anything is not running or stale.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def health(as_json):
    from runtime.node.health import describe, health as node_health
    report = node_health(session.session_dir(create=False))
    if as_json:
        click.echo(json.dumps(report, sort_keys=True))
    else:
        click.echo(f"corral runtime on this node ({report['session']}):")
        for line in describe(report):
            click.echo(line)
    if not report["healthy"]:
        click.get_current_context().exit(1)


__all__ = ["start", "stop", "health", "RuntimeStartError"]
