"""What the monitor remembers between steps: launch backoffs, bootstrap failures, which
nodes it is bootstrapping, and since when nodes wait to join the runtime.

Everything here can be lost (a monitor restart): nodes and their stages live in the
provider's tags, so a new monitor rebuilds the rest; backoffs and failure counts are also
saved to a small state file so a restart does not forget a quarantine.
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
        data = {"failed_nodes": {name: sorted(ids) for name, ids in self.failed_nodes.items()},
                "backoffs": [dataclasses.asdict(backoff) for backoff in self.backoffs.values()],
                "failure_streak": self.failure_streak, "config_token": self.config_token}
        try:
            write_json_atomic(self.path, data)
        except OSError as error:
            if not self.unsaved:
                log.warning("cannot save the monitor's state to %s: %s (kept in memory; "
                            "tried again each round)", self.path, error.strerror or error)
            self.unsaved = True
            return False
        self.unsaved = False
        return True

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
        except (OSError, ValueError, TypeError, KeyError):
            return cls(path=state.path, config_token=config_token)
        return state
