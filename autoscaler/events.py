"""The autoscaler's event log and status file, on the head under $CORRAL_NODE_DIR/session/.

- `autoscaler.events`: JSON lines, one per event (an action taken, or a decision that
  changed): {"at_s", "time", "kind", "message", ["node_type", "count", "node_id"]}.
  `corral monitor` follows it.
- `autoscaler.status.json`: the latest plan's reasons, backoffs and quarantines, rewritten
  atomically after each plan that changed; `corral status --explain` reads it.
Both are 0600: they name nodes and types, and nothing else needs them.
"""
from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from typing import Any, Iterable

from autoscaler.decisions import Plan, Reason
from launcher.paths import write_json_atomic

EVENTS_FILE = "autoscaler.events"
STATUS_FILE = "autoscaler.status.json"
DEFAULT_NODE_DIR = "/tmp/corral"

# Event kinds for actions (plan reasons use autoscaler.decisions' kinds).
LAUNCHED = "launched"
LAUNCH_FAILED = "launch-failed"
TERMINATED = "terminated"
TERMINATE_FAILED = "terminate-failed"
DRAIN_REFUSED = "drain-refused"
BOOTSTRAPPED = "bootstrapped"
BOOTSTRAP_FAILED = "bootstrap-failed"
OBSERVE_FAILED = "observe-failed"
STARTED = "started"


def session_dir(node_dir: str | None = None) -> Path:
    return Path(node_dir or os.environ.get("CORRAL_NODE_DIR") or DEFAULT_NODE_DIR) / "session"


def events_path(node_dir: str | None = None) -> Path:
    return session_dir(node_dir) / EVENTS_FILE


def status_path(node_dir: str | None = None) -> Path:
    return session_dir(node_dir) / STATUS_FILE


def reason_key(reason: Reason) -> tuple:
    """What makes two reasons 'the same decision' across plans: numbers that only tick
    (seconds left, times) do not count."""
    return (reason.kind, reason.node_type, reason.node_id,
            re.sub(r"\d+(\.\d+)?", "#", reason.message))


class EventLog:
    def __init__(self, path: str | Path, status_file: str | Path | None = None):
        self.path = Path(path)
        self.status_file = Path(status_file) if status_file else \
            self.path.with_name(STATUS_FILE)
        self._previous: set[tuple] = set()
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)

    def write(self, now_s: float, kind: str, message: str, **fields: Any) -> dict:
        event = {"at_s": round(now_s, 3),
                 "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now_s)),
                 "kind": kind, "message": message}
        event.update({key: value for key, value in fields.items() if value is not None})
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        with os.fdopen(fd, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(event, sort_keys=True) + "\n")
        return event

    def record_plan(self, now_s: float, plan: Plan) -> int:
        """Log the plan's reasons that were not in the previous plan; returns how many."""
        keys = {}
        for reason in plan.reasons:
            keys.setdefault(reason_key(reason), reason)
        new = [reason for key, reason in keys.items() if key not in self._previous]
        for reason in new:
            self.write(now_s, reason.kind, reason.message, node_type=reason.node_type,
                       count=reason.count or None, node_id=reason.node_id)
        self._previous = set(keys)
        return len(new)

    def write_status(self, now_s: float, plan: Plan, extra: dict | None = None) -> None:
        data = {"at_s": now_s, **plan.to_dict(), **(extra or {})}
        write_json_atomic(self.status_file, data)


def parse_events(lines: Iterable[str]) -> list[dict]:
    """Events from JSON lines; a torn or foreign line becomes a 'note' event."""
    events = []
    for line in lines:
        line = line.strip()
        if not line:
            continue
        try:
            event = json.loads(line)
            if not isinstance(event, dict):
                raise ValueError("not an object")
        except ValueError:
            event = {"kind": "note", "message": line}
        events.append(event)
    return events


def format_event(event: dict) -> str:
    stamp = str(event.get("time", ""))[11:19] or "--:--:--"
    return f"{stamp}  {event.get('kind', '?'):<16} {event.get('message', '')}"
