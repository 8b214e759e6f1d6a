"""The status file, `corral status`'s autoscaler section and `corral monitor --events`."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from autoscaler.events import EventLog, format_event, parse_events
from autoscaler.explain import describe, status_section, summarize
from autoscaler.planner import plan
from autoscaler.snapshot import LaunchBackoff
from launcher.bootstrap.command_runner import LocalRunner
from tests.fake_provider import FakeProvider
from tests.autoscaler.helpers import CPU4, node, policy, snapshot
from tests.autoscaler.test_monitor import make_config

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.timeout(60)


def busy_cluster():
    snap = snapshot(now_s=1000.0, nodes=[
        node("h", "head", {"CPU": 1}, kind="head", used={"CPU": 1}),
        node("a", "cpu4", CPU4, used={"CPU": 2}),
        node("b", "cpu4", CPU4, idle_since_s=600.0),
        node("c", "cpu4", {}, status="launching"),
        node("d", "cpu4", CPU4, status="failed", failure="setting-up: exit 1")],
        pending=[({"CPU": 4}, 5)],
        backoffs=[LaunchBackoff("gpu", 1060.0, "CapacityError: none")])
    rules = policy({"cpu4": (CPU4, 1, 4), "gpu": ({"GPU": 1, "CPU": 4}, 0, 2)}, max_workers=4)
    return snap, plan(snap, rules)


def test_describe_groups_nodes_and_explains_decisions():
    snap, result = busy_cluster()
    status = {"at_s": 1000.0, **result.to_dict(), **summarize(snap)}
    text = "\n".join(describe(status, explain=True))
    assert "active   2: a (cpu4), h (head)" in text
    assert "idle     1: b (cpu4, idle 400 s)" in text
    assert "pending  1: c (cpu4)" in text
    assert "failed   1: d (cpu4: setting-up: exit 1)" in text
    assert "resources CPU 3/9" in text
    assert "pending  5 x {CPU: 4}" in text
    assert "not launched: cpu4 at its max_workers 4" in text
    assert "gpu backing off until 00:17:40 UTC (60 s more) after CapacityError: none" in text
    assert "kept b: pending demand needs it" in text
    assert "decisions" not in "\n".join(describe(status, explain=False))


class RunnerProvider(FakeProvider):
    def __init__(self, config, node_dir):
        super().__init__(config)
        self.node_dir = node_dir

    def command_runner(self, node):
        return LocalRunner(str(self.node_dir), {"CORRAL_NODE_DIR": str(self.node_dir)})


def test_status_section_reads_the_heads_status_file_through_its_runner(tmp_path):
    snap, result = busy_cluster()
    provider = RunnerProvider(make_config(), tmp_path)
    head = provider.add_head()
    lines = []
    status_section(provider.config, provider, [head], explain=True, echo=lines.append)
    assert lines and lines[0].startswith("Autoscaler: no status yet")
    EventLog(tmp_path / "session" / "autoscaler.events").write_status(
        1000.0, result, summarize(snap))
    lines.clear()
    status_section(provider.config, provider, [head], explain=True, echo=lines.append)
    assert lines[0] == "Autoscaler (as of 00:16:40 UTC):"
    assert any("kept b: pending demand needs it" in line for line in lines)
    mode = os.stat(tmp_path / "session" / "autoscaler.status.json").st_mode & 0o777
    assert mode == 0o600


def test_event_log_dedupes_unchanged_decisions(tmp_path):
    log = EventLog(tmp_path / "autoscaler.events")
    snap, result = busy_cluster()
    assert log.record_plan(1000.0, result) == len({(r.kind, r.message) for r in result.reasons})
    later = plan(snapshot(now_s=1001.0, nodes=snap.nodes, pending=[({"CPU": 4}, 5)],
                          backoffs=snap.backoffs),
                 policy({"cpu4": (CPU4, 1, 4), "gpu": ({"GPU": 1, "CPU": 4}, 0, 2)},
                        max_workers=4))
    assert log.record_plan(1001.0, later) == 0  # only the seconds ticked
    events = parse_events((tmp_path / "autoscaler.events").read_text().splitlines()
                          + ["torn {"])
    assert events[-1] == {"kind": "note", "message": "torn {"}
    assert format_event(events[0]).startswith("00:16:40  ")


def test_corral_monitor_prints_the_last_events(tmp_path):
    log = EventLog(tmp_path / "autoscaler.events")
    for index in range(5):
        log.write(1000.0 + index, "launched", f"launched {index} x cpu4")
    result = subprocess.run([sys.executable, "-m", "launcher", "monitor", "--events",
                             str(tmp_path / "autoscaler.events"), "--no-follow", "-n", "2"],
                            capture_output=True, text=True, timeout=50, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "00:16:43  launched         launched 3 x cpu4",
        "00:16:44  launched         launched 4 x cpu4"]
    missing = subprocess.run([sys.executable, "-m", "launcher", "monitor", "--events",
                              str(tmp_path / "none"), "--no-follow"],
                             capture_output=True, text=True, timeout=50, cwd=ROOT)
    assert missing.returncode == 2 and "no autoscaler event log" in missing.stderr
