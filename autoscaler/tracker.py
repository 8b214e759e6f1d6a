"""What the monitor remembers between steps: launch backoffs, bootstrap failures, which
nodes it is bootstrapping, and since when nodes wait to join the runtime.

Everything here can be lost (a monitor restart): nodes and their stages live in the
provider's tags, so a new monitor rebuilds the rest. What a restart must not forget is
also saved to a small state file: backoffs and failure counts (a quarantine stays), and
since when each node waits to join the runtime (wall clock), so that a monitor the
head's supervisor restarts (runtime.node.supervisor) still declares a node that never joins
failed after join_timeout_s instead of starting its wait again. The monitor saves after
each round in which any of it changed (`save_if_changed`).
"""
from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

from autoscaler.snapshot import LaunchBackoff
from launcher.errors import (CapacityError, ClusterError, ProviderAuthError, QuotaError,
                             RateLimitError)
from launcher.paths import write_json_atomic

# First wait after a failed launch, per error; doubled for each failure in a row.
BACKOFF_BASE_S = {CapacityError: 30.0, QuotaError: 300.0, RateLimitError: 15.0,
                  ProviderAuthError: 600.0}
DEFAULT_BACKOFF_BASE_S = 60.0
MAX_BACKOFF_S = 900.0
log = logging.getLogger("corral.autoscaler")


@dataclasses.dataclass
class MonitorState:
    failed_nodes: dict[str, set[str]] = dataclasses.field(default_factory=dict)  # type -> ids
    backoffs: dict[str, LaunchBackoff] = dataclasses.field(default_factory=dict)
    failure_streak: dict[str, int] = dataclasses.field(default_factory=dict)
    waiting_to_join_since: dict[str, float] = dataclasses.field(default_factory=dict)
    path: Path | None = None
    config_token: str = ""  # the config the state belongs to (its hash)
    unsaved: bool = False  # the last save failed (a full disk): save again
    saved_text: str | None = None  # what the file holds (as far as we wrote it)

    # -- launch failures --------------------------------------------------------------------
    def launch_failed(self, node_type: str, error: ClusterError, now_s: float) -> LaunchBackoff:
        streak = self.failure_streak.get(node_type, 0) + 1
        self.failure_streak[node_type] = streak
        base = next((seconds for kind, seconds in BACKOFF_BASE_S.items()
                     if isinstance(error, kind)), DEFAULT_BACKOFF_BASE_S)
        wait_s = min(MAX_BACKOFF_S, base * 2 ** (streak - 1))
        first_line = (str(error).splitlines() or [""])[0]
        backoff = LaunchBackoff(node_type, now_s + wait_s, f"{type(error).__name__}: "
                                                           f"{first_line}")
        self.backoffs[node_type] = backoff
        self.save()
        return backoff

    def launch_succeeded(self, node_type: str) -> None:
        if self.failure_streak.pop(node_type, None) is not None:
            self.save()

    def active_backoffs(self, now_s: float) -> tuple[LaunchBackoff, ...]:
        return tuple(backoff for _, backoff in sorted(self.backoffs.items())
                     if backoff.until_s > now_s)

    # -- bootstrap failures -----------------------------------------------------------------
    def node_failed(self, node_type: str, node_id: str) -> bool:
        """Count a failed node once; True when it was new."""
        seen = self.failed_nodes.setdefault(node_type, set())
        if node_id in seen:
            return False
        seen.add(node_id)
        self.save()
        return True

    def bootstrap_failures(self) -> dict[str, int]:
        return {name: len(ids) for name, ids in self.failed_nodes.items()}

    # -- persistence --------------------------------------------------------------------------
    def save(self) -> bool:
        """Write the state file atomically. A disk that refuses it (full) is logged and
        leaves `unsaved` set, for the monitor to try again next round; False then."""
        if self.path is None:
            return True
        data = self._data()
        try:
            write_json_atomic(self.path, data)
        except OSError as error:
            if not self.unsaved:
                log.warning("cannot save the monitor's state to %s: %s (kept in memory; "
                            "tried again each round)", self.path, error.strerror or error)
            self.unsaved = True
            return False
        self.unsaved = False
        self.saved_text = json.dumps(data, sort_keys=True)
        return True

    def save_if_changed(self) -> bool:
        """save() when the state differs from what was last written (or that failed);
        True when the file is current."""
        if self.path is None:
            return True
        if not self.unsaved and json.dumps(self._data(), sort_keys=True) == self.saved_text:
            return True
        return self.save()

    def _data(self) -> dict:
        return {"failed_nodes": {name: sorted(ids) for name, ids in self.failed_nodes.items()},
                "backoffs": [dataclasses.asdict(backoff) for backoff in self.backoffs.values()],
                "failure_streak": dict(self.failure_streak),
                "waiting_to_join_since": dict(self.waiting_to_join_since),
                "config_token": self.config_token}

    @classmethod
    def load(cls, path: str | Path | None, config_token: str = "") -> "MonitorState":
        """The saved state, or a fresh one (no file, unreadable, or saved for another
        config: a new config lifts quarantines)."""
        state = cls(path=Path(path) if path else None, config_token=config_token)
        if state.path is None or not state.path.exists():
            return state
        try:
            data = json.loads(state.path.read_text(encoding="utf-8"))
            if data.get("config_token", "") != config_token:
                return state
            state.failed_nodes = {name: set(ids)
                                  for name, ids in data.get("failed_nodes", {}).items()}
            state.backoffs = {item["node_type"]: LaunchBackoff(**item)
                              for item in data.get("backoffs", [])}
            state.failure_streak = {name: int(count) for name, count
                                    in data.get("failure_streak", {}).items()}
            state.waiting_to_join_since = {
                str(node_id): float(since_s) for node_id, since_s
                in (data.get("waiting_to_join_since") or {}).items()}
        except (OSError, ValueError, TypeError, KeyError, AttributeError):
            return cls(path=state.path, config_token=config_token)
        state.saved_text = json.dumps(state._data(), sort_keys=True)
        return state
