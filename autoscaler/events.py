"""The autoscaler's event log and status file, on the head under $CORRAL_NODE_DIR/session/.

- `autoscaler.events`: JSON lines, one per event (an action taken, or a decision that
  changed): {"at_s", "time", "kind", "message", ["node_type", "count", "node_id"]}.
  `corral monitor` follows it.
- `autoscaler.status.json`: the latest plan's reasons, backoffs and quarantines, rewritten
  atomically after each plan that changed; `corral status --explain` reads it.
Both are 0600: they name nodes and types, and nothing else needs them.

A full or failing disk never stops the monitor: an event line is appended whole or not
at all (one write of the line; a short write is cut off again), events that could not be
written wait in memory (up to MAX_PENDING_EVENTS, oldest dropped and counted) and go out
with the next write that succeeds, and a status file that could not be replaced is
written again later. Readers take whole lines only and skip a torn one.
"""
from __future__ import annotations

import collections
import errno
import json
import logging
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
EVENTS_LOST = "events-lost"

MAX_PENDING_EVENTS = 1000  # unwritten events kept in memory while the disk refuses them
log = logging.getLogger("corral.autoscaler")


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


def append_whole(path: Path, data: bytes) -> None:
    """Append `data` (a whole line) to the file at `path` (created 0600) in one write, or
    not at all: a short write (a disk that filled up meanwhile) is cut off again and
    raises OSError(ENOSPC). A file that ends in a torn line (a writer that died between
    its write and the cut) gets a newline first, so the torn part stays a line of its
    own that readers skip, instead of spoiling the next event."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        start = os.fstat(fd).st_size
        if start and os.pread(fd, 1, start - 1) != b"\n":
            data = b"\n" + data
        written = os.write(fd, data)
        if written != len(data):
            os.ftruncate(fd, start)
            raise OSError(errno.ENOSPC, f"{os.strerror(errno.ENOSPC)} (a write of "
                                        f"{len(data)} bytes stopped after {written}; "
                                        f"taken back)", str(path))
    finally:
        os.close(fd)


class EventLog:
    """The event log and status file of one monitor. Writing never raises OSError: see
    the module's docstring for what happens instead."""

    def __init__(self, path: str | Path, status_file: str | Path | None = None):
        self.path = Path(path)
        self.status_file = Path(status_file) if status_file else \
            self.path.with_name(STATUS_FILE)
        self._previous: set[tuple] = set()
        self._pending: collections.deque[dict] = collections.deque()
        self.lost_count = 0  # events dropped from a full backlog, not yet reported
        self.last_error: str | None = None  # why the last write failed (None: it worked)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as error:  # the next write tries again
            self._failed(error)

    @property
    def pending_count(self) -> int:
        """Events waiting in memory for the disk to take them."""
        return len(self._pending)

    def write(self, now_s: float, kind: str, message: str, **fields: Any) -> dict:
        """Record an event: written at once, or kept until a later write succeeds."""
        event = {"at_s": round(now_s, 3),
                 "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now_s)),
                 "kind": kind, "message": message}
        event.update({key: value for key, value in fields.items() if value is not None})
        if len(self._pending) >= MAX_PENDING_EVENTS:
            dropped = self._pending.popleft()
            self.lost_count += int(dropped.get("count", 1)) \
                if dropped.get("kind") == EVENTS_LOST else 1
        self._pending.append(event)
        self.flush(now_s)
        return event

    def flush(self, now_s: float | None = None) -> bool:
        """Write the events waiting in memory, oldest first, one append each (so a reader
        never sees a whole line that a cut-off write later takes back); True when none
        wait any more."""
        if self.lost_count:
            at_s = now_s if now_s is not None else time.time()
            self._pending.appendleft({
                "at_s": round(at_s, 3), "kind": EVENTS_LOST, "count": self.lost_count,
                "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at_s)),
                "message": f"{self.lost_count} earlier events were lost: the event log "
                           f"could not be written ({self.last_error})"})
            self.lost_count = 0
        if not self._pending:
            return True
        waiting = len(self._pending)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            while self._pending:
                line = json.dumps(self._pending[0], sort_keys=True) + "\n"
                append_whole(self.path, line.encode("utf-8"))
                self._pending.popleft()
        except OSError as error:
            self._failed(error)
            return False
        if self.last_error is not None:
            log.info("the event log %s is written again (%d events were waiting)",
                     self.path, waiting)
            self.last_error = None
        return True

    def _failed(self, error: OSError) -> None:
        text = error.strerror or str(error)
        if text != self.last_error:  # once per distinct problem, not per event
            log.warning("cannot write the event log %s: %s; %d events wait in memory",
                        self.path, text, len(self._pending))
        self.last_error = text

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

    def write_status(self, now_s: float, plan: Plan, extra: dict | None = None) -> bool:
        """Replace the status file atomically; False (logged) when the disk refused it:
        the old file stays whole, and the caller writes it again later."""
        data = {"at_s": now_s, **plan.to_dict(), **(extra or {})}
        try:
            write_json_atomic(self.status_file, data)
        except OSError as error:
            log.warning("cannot write the status file %s: %s", self.status_file,
                        error.strerror or error)
            return False
        return True


def parse_events(lines: Iterable[str]) -> list[dict]:
    """Events from JSON lines. A torn event (a line that starts like one but is not
    whole JSON: a writer cut short) is skipped; any other foreign line becomes a 'note'."""
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
            if line.startswith("{"):
                continue
            event = {"kind": "note", "message": line}
        events.append(event)
    return events


def whole_lines(data: bytes) -> bytes:
    """The complete lines of what was read from an event log: a last line without its
    newline is still being written (or was torn) and is left for later."""
    return data[:data.rfind(b"\n") + 1]


def read_events(path: str | Path) -> list[dict]:
    """Every whole event in the log at `path` ([] when there is none)."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return []
    return parse_events(whole_lines(data).decode("utf-8", "replace").splitlines())


def format_event(event: dict) -> str:
    stamp = str(event.get("time", ""))[11:19] or "--:--:--"
    return f"{stamp}  {event.get('kind', '?'):<16} {event.get('message', '')}"
