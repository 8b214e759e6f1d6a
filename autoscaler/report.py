"""Text and JSON renderings of plans and simulations, for the commands."""
from __future__ import annotations

from autoscaler.decisions import Plan
from autoscaler.simulate import SimulationResult
from autoscaler.snapshot import shape_dict, shape_text


def _resources_text(resources) -> str:
    return ", ".join(f"{name} {amount:g}" for name, amount in sorted(resources.items())) or "-"


def _table(headers: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows)]
    lines = ["  ".join(str(cell).ljust(width) for cell, width in zip(headers, widths)).rstrip()]
    for row in rows:
        lines.append("  ".join(str(cell).ljust(width)
                               for cell, width in zip(row, widths)).rstrip())
    return lines


def plan_table(result: Plan, config) -> str:
    lines = []
    if result.target_launch:
        rows = []
        for name, count in sorted(result.target_launch.items()):
            resources = config.available_node_types[name].resources
            rows.append([name, str(count), _resources_text(resources)])
        total = sum(result.target_launch.values())
        lines += _table(["node type", "nodes", "resources per node"], rows)
        lines.append(f"total: {total} node{'s' if total != 1 else ''}")
    else:
        lines.append("no nodes to launch")
    if result.unplaced:
        lines.append("")
        lines.append("unplaced:")
        for item in result.unplaced:
            lines.append(f"  {item.count} x {shape_text(item.shape)}: {item.reason}")
    lines.append("")
    lines.append("reasons:")
    for reason in result.reasons:
        lines.append(f"  {reason.kind:<10} {reason.message}")
    return "\n".join(lines)


def _counts_text(counts: dict[str, int]) -> str:
    return " ".join(f"{name}={count}" for name, count in sorted(counts.items())) or "-"


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} s"


def simulation_text(result: SimulationResult, max_rows: int = 60) -> str:
    lines = ["nodes over time (workers running / pending, tasks queued / running):"]
    rows = [[f"{row.at_s:.1f}", _counts_text(row.running), _counts_text(row.pending),
             str(row.queued_tasks), str(row.running_tasks)] for row in result.timeline]
    if len(rows) > max_rows:
        head = max_rows // 2
        skipped = len(rows) - max_rows
        rows = rows[:head] + [["...", f"({skipped} rows)", "", "", ""]] + \
            rows[-(max_rows - head):]
    lines += ["  " + line for line in
              _table(["t (s)", "running", "pending", "queued", "tasks running"], rows)]
    lines.append("")
    lines.append(f"tasks run: {result.tasks_run}; waited p50 "
                 f"{_seconds(result.wait_percentile(0.5))}, p95 "
                 f"{_seconds(result.wait_percentile(0.95))}, max "
                 f"{_seconds(result.wait_percentile(1.0))}")
    if result.never_ran:
        for shape, count in sorted(result.never_ran.items()):
            lines.append(f"never ran: {count} x {shape_text(shape)}")
    lines.append("node-minutes: " + ", ".join(
        f"{name} {seconds / 60:.1f}" for name, seconds in sorted(result.node_seconds.items()))
        + f" (total {sum(result.node_seconds.values()) / 60:.1f})")
    lines.append("launched: " + (_counts_text(result.launched) if result.launched else "none")
                 + f"; simulation ended at {result.end_s:.1f} s")
    if result.reasons_seen:
        lines.append("limits hit:")
        lines += [f"  {message}" for message in result.reasons_seen]
    return "\n".join(lines)


def simulation_dict(result: SimulationResult) -> dict:
    return {
        "timeline": [{"at_s": row.at_s, "running": row.running, "pending": row.pending,
                      "queued_tasks": row.queued_tasks, "running_tasks": row.running_tasks}
                     for row in result.timeline],
        "tasks_run": result.tasks_run,
        "wait_s": {"p50": result.wait_percentile(0.5), "p95": result.wait_percentile(0.95),
                   "max": result.wait_percentile(1.0)},
        "never_ran": [{"shape": shape_dict(shape), "count": count}
                      for shape, count in sorted(result.never_ran.items())],
        "node_minutes": {name: seconds / 60 for name, seconds in
                         sorted(result.node_seconds.items())},
        "launched": result.launched,
        "end_s": result.end_s,
        "limits_hit": list(result.reasons_seen),
    }
