"""The head's runtime services as the head itself sees them, for `corral status` (say
what is down, or stale) and `corral up` (repair a head whose services died).

The head answers `corral health --json` (runtime.cli, runtime.node.health): which
of its control service, autoscaler monitor, node agent and supervisor run, since when,
their restarts and last exits, and the age of the autoscaler's status file. Its
supervisor restarts a service that dies; what it cannot bring back (the supervisor died
too, or the node agent, or a service keeps failing) is what `up` repairs, by running
the head's start commands again (as `up --restart-only` would, for the head alone).
"""
from __future__ import annotations

import dataclasses
import json

from launcher.errors import ClusterError

HEALTH_COMMAND = "corral health --json"
HEALTH_TIMEOUT_S = 30.0
CRASH_LOOP_FAILURES = 3   # restarts in a row without a minute of health: repair


@dataclasses.dataclass(frozen=True)
class HeadHealth:
    """The head's report (None when it could not be had), or why not."""
    report: dict | None
    problem: str | None = None


def probe(provider, head) -> HeadHealth:
    """Ask the head for its runtime's health (one command through its runner)."""
    try:
        result = provider.command_runner(head).run(HEALTH_COMMAND, timeout_s=HEALTH_TIMEOUT_S)
    except (ClusterError, OSError) as error:
        return HeadHealth(None, f"could not ask the head: {error}")
    report = _report_in(result.stdout or "")
    if report is None:
        detail = (result.stderr or result.stdout or "").strip().splitlines()
        return HeadHealth(None, f"`{HEALTH_COMMAND}` gave no report (exit "
                                f"{result.exit_code}{': ' + detail[-1] if detail else ''})")
    return HeadHealth(report)


def _report_in(stdout: str) -> dict | None:
    """The JSON report: the last line of output that is a JSON object (a login shell
    may print other lines first)."""
    for line in reversed(stdout.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                data = json.loads(line)
            except ValueError:
                return None
            return data if isinstance(data, dict) and "services" in data else None
    return None


def repair_reason(report: dict | None) -> str | None:
    """Why the head's runtime must be restarted, or None when its supervisor copes (or
    the runtime was stopped on purpose: a head without pid files is left alone)."""
    if not report:
        return None
    state = report.get("runtime")
    if state == "dead":
        return "the head's runtime processes are all gone"
    if state != "running":
        return None
    problems = []
    services = report.get("services") or {}
    for name, entry in services.items():
        what = _label(name)
        if entry.get("state") == "down":
            problems.append(f"{what} down (no supervisor restarts it)")
        elif entry.get("state") == "restarting" and \
                int(entry.get("failures_in_row") or 0) >= CRASH_LOOP_FAILURES:
            problems.append(f"{what} keeps failing ({entry.get('failures_in_row')} "
                            f"restarts in a row; last: {entry.get('last_exit')})")
    if (report.get("agent") or {}).get("state") != "running":
        problems.append("node agent down")
    if (report.get("supervisor") or {}).get("state") == "down" and not problems:
        problems.append("supervisor down (nothing would restart the services)")
    return "head services: " + "; ".join(problems) if problems else None


def _label(name: str) -> str:
    return {"control": "control service", "monitor": "autoscaler monitor"}.get(name, name)


def section_lines(health: HeadHealth | None) -> list[str]:
    """`corral status`'s lines about the head's services."""
    if health is None:
        return []
    if health.report is None:
        return [f"Head services: unknown ({health.problem})"]
    from runtime.node.health import describe
    healthy = health.report.get("healthy")
    lines = [f"Head services{'' if healthy else ' (NOT ALL RUNNING)'}:"]
    lines += describe(health.report)
    reason = repair_reason(health.report)
    if reason:
        lines.append("  -> `corral up` restarts the head's runtime to repair this")
    return lines


def stale_view(health: HeadHealth | None) -> dict | None:
    """The autoscaler status file's age when it is stale, else None."""
    status = ((health.report if health else None) or {}).get("autoscaler_status") or {}
    return status if status.get("stale") else None


def head_failure_note(health: HeadHealth | None) -> str | None:
    """What of the head's runtime does not run, in a few words ('control service
    restarting'), for the head's row of the node table; None when all runs, when it is
    not known, or when the runtime was stopped on purpose (no pid files)."""
    report = health.report if health is not None else None
    if not report or report.get("runtime") == "stopped":
        return None
    if report.get("runtime") == "dead":
        return "runtime down (all its processes gone)"
    down = [_label(name) + (" restarting" if entry.get("state") == "restarting" else " down")
            for name, entry in (report.get("services") or {}).items()
            if entry.get("state") != "running"]
    if (report.get("agent") or {}).get("state") != "running":
        down.append("node agent down")
    if (report.get("supervisor") or {}).get("state") == "down":
        down.append("supervisor down")
    return ", ".join(down) or None
