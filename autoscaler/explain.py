"""What `corral status` shows of the autoscaler, and why it decided what it did.

The monitor writes its latest view to $CORRAL_NODE_DIR/session/autoscaler.status.json
(`summarize` below + the plan); `describe` turns that into lines of text. The launcher's
status command calls `status_section` lazily (it must not import the autoscaler):

    section = importlib.import_module("autoscaler.explain").status_section
    section(config, provider, nodes, explain=explain)
"""
from __future__ import annotations

import json
import time
from typing import Callable

from autoscaler.snapshot import NODE_FAILED, NODE_RUNNING, Snapshot, shape_dict, shape_text

STATUS_FILE_COMMAND = 'cat "${CORRAL_NODE_DIR:-/tmp/corral}/session/autoscaler.status.json"'


def _amounts(resources) -> str:
    return ", ".join(f"{name} {amount:g}" for name, amount in sorted(resources.items())) or "-"


def summarize(snapshot: Snapshot) -> dict:
    """The cluster as the planner saw it: nodes grouped active / idle / pending / failed,
    resources used and total, pending demand and request_resources bundles."""
    groups: dict[str, list] = {"active": [], "idle": [], "pending": [], "failed": []}
    used: dict[str, float] = {}
    total: dict[str, float] = {}
    for node in snapshot.nodes:
        if node.status == NODE_FAILED:
            group = "failed"
        elif node.status != NODE_RUNNING:
            group = "pending"
        elif node.idle_since_s is not None:
            group = "idle"
        else:
            group = "active"
        entry = {"id": node.id, "type": node.node_type, "kind": node.kind,
                 "status": node.status}
        if group == "idle":
            entry["idle_for_s"] = round(snapshot.now_s - node.idle_since_s, 1)
        if node.failure:
            entry["failure"] = node.failure
        groups[group].append(entry)
        if node.status == NODE_RUNNING:
            for name, amount in node.resources_total.items():
                total[name] = total.get(name, 0.0) + amount
            for name, amount in node.resources_used.items():
                used[name] = used.get(name, 0.0) + amount
    return {"nodes": groups, "resources_used": used, "resources_total": total,
            "demand": [{"shape": shape_dict(shape), "count": count}
                       for shape, count in sorted(snapshot.demand.items())],
            "requested_bundles": [{"shape": shape_dict(shape), "count": count}
                                  for shape, count in sorted(snapshot.requested_bundles.items())]}


def describe(status: dict, explain: bool = False) -> list[str]:
    """Lines for `corral status` from the monitor's status file."""
    lines = []
    at_s = status.get("at_s")
    stamp = time.strftime("%H:%M:%S UTC", time.gmtime(at_s)) if at_s else "?"
    lines.append(f"Autoscaler (as of {stamp}):")
    groups = status.get("nodes") or {}
    for group in ("active", "idle", "pending", "failed"):
        members = groups.get(group) or []
        if not members:
            continue
        shown = []
        for member in members:
            text = f"{member['id']} ({member['type']}"
            if "idle_for_s" in member:
                text += f", idle {member['idle_for_s']:.0f} s"
            if member.get("failure"):
                text += f": {member['failure']}"
            shown.append(text + ")")
        lines.append(f"  {group:<8} {len(members)}: {', '.join(shown)}")
    total = status.get("resources_total") or {}
    if total:
        used = status.get("resources_used") or {}
        lines.append("  resources " + ", ".join(
            f"{name} {used.get(name, 0):g}/{amount:g}" for name, amount in sorted(total.items())))
    demand = status.get("demand") or []
    if demand:
        lines.append("  pending  " + ", ".join(
            f"{item['count']} x {shape_text(tuple(sorted(item['shape'].items())))}"
            for item in demand))
    else:
        lines.append("  pending  no queued demand")
    for bundle in status.get("requested_bundles") or []:
        lines.append(f"  requested {bundle['count']} x "
                     f"{shape_text(tuple(sorted(bundle['shape'].items())))}")
    launching = status.get("launch") or {}
    if launching:
        lines.append("  launching " + ", ".join(f"{count} x {name}"
                                                 for name, count in sorted(launching.items())))
    for name in status.get("quarantined") or []:
        lines.append(f"  quarantined {name}")
    if explain:
        reasons = status.get("reasons") or []
        lines.append("  decisions:" if reasons else "  decisions: none (nothing to change)")
        for reason in reasons:
            lines.append(f"    {reason.get('kind', '?'):<10} {reason.get('message', '')}")
    return lines


def read_status_text(text: str) -> dict | None:
    try:
        data = json.loads(text)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def fetch_status(provider, head) -> dict | None:
    """The head's status file, read through the head's CommandRunner (None if absent)."""
    from launcher.errors import ClusterError
    try:
        result = provider.command_runner(head).run(STATUS_FILE_COMMAND, timeout_s=30)
    except ClusterError:
        return None
    return read_status_text(result.stdout) if result.ok else None


def status_section(config, provider, nodes, explain: bool = False,
                   echo: Callable[[str], None] | None = None) -> None:
    """Print the autoscaler's part of `corral status` (head found among `nodes`)."""
    import click
    echo = echo or click.echo
    head = next((node for node in nodes if node.kind == "head"), None)
    if head is None:
        return
    status = fetch_status(provider, head)
    if status is None:
        echo("Autoscaler: no status yet (the monitor writes it once it has planned; see "
             "`corral monitor` and the head's session/logs/monitor.log)")
        return
    for line in describe(status, explain=explain):
        echo(line)
