"""`corral health`: whether this node's runtime services run, told truthfully.

The truth about each process comes from its pid file and the process itself (alive, and
still the one the file named: runtime.node.session.running_pids), whoever started it; the
supervisor's report (runtime.node.supervision.REPORT_FILE) adds since when, restarts, the
last exit and the next try. A service that does not run is `restarting` while the
supervisor runs (it will start it again) and `down` when no supervisor does. The
autoscaler's status file is `stale` once it is older than STALE_PERIODS of the
monitor's refresh period (it is rewritten at least that often while the monitor can
plan): its view of the cluster is then old, and `corral status` says how old.

health(session) ->
    {"at_s": float, "session": str,
     "runtime": "running" | "stopped" | "dead",   # stopped: no pid files (corral stop)
     "supervisor": {"state": "running" | "down" | "none", "pid": int | None},
     "agent": {"state": "running" | "down", "pid": int | None},
     "services": {"control" | "monitor": {"state": "running" | "restarting" | "down",
                  "pid", "since_s", "restarts", "failures_in_row", "last_exit",
                  "last_exit_at_s", "next_try_s"}},
     "autoscaler_status": None | {"written_s", "age_s", "refresh_s", "stale_after_s",
                                  "stale"},
     "healthy": bool}
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from runtime.node import processes
from runtime.node import session as sessions
from runtime.node.supervision import label, read_json, report_path, spec_path

AUTOSCALER_STATUS_FILE = "autoscaler.status.json"   # written by autoscaler.events
DEFAULT_REFRESH_S = 10.0     # autoscaler.monitor.STATUS_REFRESH_S, if the file says none
STALE_PERIODS = 3
SERVICES = ("control", "monitor")


def health(session: Path) -> dict:
    session = Path(session)
    now_s = time.time()
    running = sessions.running_pids(session) if session.is_dir() else {}
    pid_files = {path.stem for path in session.glob("*.pid")} if session.is_dir() else set()
    spec = read_json(spec_path(session)).get("services") or {}
    names = [name for name in spec if name in pid_files or name in running] or \
        [name for name in SERVICES if name in pid_files]
    report = read_json(report_path(session))
    supervisor_pid = running.get("supervisor")
    # the running supervisor's report, or the last one a dead supervisor left
    if supervisor_pid is None or report.get("pid") == supervisor_pid:
        known = report.get("services") or {}
    else:
        known = {}
    services = {name: _service(name, running, supervisor_pid, known.get(name) or {})
                for name in names}
    supervised = bool(spec) and "supervisor" in pid_files | set(running)
    result = {
        "at_s": now_s, "session": str(session),
        "runtime": "running" if running else ("dead" if pid_files else "stopped"),
        "supervisor": {"state": "running" if supervisor_pid else
                       ("down" if supervised else "none"), "pid": supervisor_pid},
        "agent": {"state": "running" if "agent" in running else "down",
                  "pid": running.get("agent")},
        "services": services,
        "autoscaler_status": _autoscaler_status(session, now_s)
        if "monitor" in names else None}
    result["healthy"] = bool(running) and "agent" in running and \
        all(entry["state"] == "running" for entry in services.values()) and \
        result["supervisor"]["state"] != "down" and \
        not (result["autoscaler_status"] or {}).get("stale")
    return result


def _service(name: str, running: dict, supervisor_pid: int | None, known: dict) -> dict:
    entry = {key: known.get(key) for key in ("since_s", "last_exit", "last_exit_at_s",
                                             "next_try_s")}
    entry["restarts"] = int(known.get("restarts") or 0)
    entry["failures_in_row"] = int(known.get("failures_in_row") or 0)
    pid = running.get(name)
    if pid is not None:
        entry["state"], entry["pid"] = "running", pid
        if known.get("pid") != pid or known.get("state") != "running":
            entry["since_s"] = processes.start_time_s(pid)
        entry["next_try_s"] = None
        return entry
    entry["pid"] = None
    entry["state"] = "restarting" if supervisor_pid is not None else "down"
    if supervisor_pid is None:
        entry["next_try_s"] = None
    if known.get("state") == "running":   # the supervisor did not see it go (yet)
        entry["since_s"] = None
    return entry


def _autoscaler_status(session: Path, now_s: float) -> dict | None:
    path = session / AUTOSCALER_STATUS_FILE
    try:
        written_s = path.stat().st_mtime
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        data = {}
    refresh_s = data.get("refresh_s") if isinstance(data, dict) else None
    refresh_s = float(refresh_s) if isinstance(refresh_s, (int, float)) and refresh_s > 0 \
        else DEFAULT_REFRESH_S
    age_s = max(0.0, now_s - written_s)
    stale_after_s = STALE_PERIODS * refresh_s
    return {"written_s": written_s, "age_s": age_s, "refresh_s": refresh_s,
            "stale_after_s": stale_after_s, "stale": age_s > stale_after_s}


# ------------------------------------------------------------------------ text

def _when(at_s: float | None, now_s: float) -> str:
    """' since 12:00:01 UTC (5 s ago)', or '' when unknown."""
    if not at_s:
        return ""
    stamp = time.strftime("%H:%M:%S UTC", time.gmtime(at_s))
    return f" since {stamp} ({_ago(now_s - at_s)} ago)"


def _ago(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def describe(report: dict) -> list[str]:
    """Lines saying what runs and what does not (for `corral health` and, read from
    the head, `corral status`)."""
    now_s = report.get("at_s") or time.time()
    if report.get("runtime") == "stopped":
        return ["  runtime   not running (stopped)"]
    lines = []
    for name, entry in (report.get("services") or {}).items():
        lines.append(f"  {label(name):<19} {service_text(entry, now_s)}")
    agent = report.get("agent") or {}
    lines.append(f"  {'node agent':<19} " + (f"up (pid {agent.get('pid')})"
                                             if agent.get("state") == "running" else
                                             "DOWN (not running)"))
    supervisor = report.get("supervisor") or {}
    if supervisor.get("state") == "running":
        lines.append(f"  {'supervisor':<19} up (pid {supervisor.get('pid')})")
    elif supervisor.get("state") == "down":
        lines.append(f"  {'supervisor':<19} DOWN: nothing restarts the services "
                     "(`corral up` restarts the head's runtime)")
    scaler = report.get("autoscaler_status")
    if scaler and scaler.get("stale"):
        lines.append(f"  {'autoscaler view':<19} STALE: written {_ago(scaler['age_s'])} "
                     f"ago (the monitor rewrites it at least every "
                     f"{scaler['refresh_s']:g} s while it can plan)")
    return lines


def service_text(entry: dict, now_s: float) -> str:
    """'up (pid 12, since ...)', 'RESTARTING (down since ..., next try in 0.4 s)' or
    'DOWN (not running since ...; no supervisor restarts it)', with restarts so far."""
    state = entry.get("state")
    when = _when(entry.get("since_s"), now_s)
    restarts = entry.get("restarts") or 0
    history = ""
    if restarts or entry.get("last_exit"):
        history = f"; {restarts} restart{'s' if restarts != 1 else ''}"
        if entry.get("last_exit"):
            history += f", last: {entry['last_exit']}"
            if entry.get("last_exit_at_s"):
                history += f" ({_ago(now_s - entry['last_exit_at_s'])} ago)"
    if state == "running":
        return f"up (pid {entry.get('pid')}{',' if when else ''}{when}{history})"
    if state == "restarting":
        next_try = entry.get("next_try_s")
        soon = f", next try in {max(0.0, next_try - now_s):.1f} s" if next_try else ""
        return f"RESTARTING (down{when}{soon}{history})"
    return f"DOWN (not running{when}; no supervisor restarts it{history})"
