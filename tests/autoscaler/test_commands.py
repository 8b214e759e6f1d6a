"""`corral plan` and `corral simulate` as a user runs them: real subprocesses, exit codes,
messages without tracebacks."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.timeout(60)

CLUSTER = {
    "cluster_name": "plan-test",
    "max_workers": 10,
    "idle_timeout_minutes": 1,
    "provider": {"type": "process"},
    "available_node_types": {
        "head": {"resources": {"CPU": 1}, "min_workers": 0, "max_workers": 0},
        "cpu4": {"resources": {"CPU": 4}, "min_workers": 0, "max_workers": 4},
        "gpu2": {"resources": {"CPU": 8, "GPU": 2}, "min_workers": 0, "max_workers": 2},
    },
    "head_node_type": "head",
}


def corral(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "launcher", *args], capture_output=True,
                          text=True, timeout=50, cwd=ROOT, env=dict(os.environ))


@pytest.fixture
def cluster_file(tmp_path):
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(CLUSTER))
    return path


def write(tmp_path, name, data) -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def test_plan_json_lists_launches_unplaced_and_reasons(cluster_file, tmp_path):
    demands = write(tmp_path, "demands.json", [
        {"shape": {"CPU": 1}, "count": 9}, {"shape": {"GPU": 1, "CPU": 1}, "count": 6},
        {"shape": {"TPU": 1}, "count": 2}])
    result = corral("plan", str(cluster_file), "--demands", str(demands), "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    # 4 GPU tasks fit the 2 gpu2 nodes (max 2); their 12 spare CPUs hold 8 of the 9
    # CPU tasks after the head's one CPU: no cpu4 node is needed.
    assert data["launch"] == {"gpu2": 2}
    unplaced = {json.dumps(item["shape"], sort_keys=True): item for item in data["unplaced"]}
    assert unplaced['{"CPU": 1, "GPU": 1}']["count"] == 2
    assert "gpu2 at its max_workers 2" in unplaced['{"CPU": 1, "GPU": 1}']["reason"]
    assert unplaced['{"TPU": 1}']["reason"] == "no node type can hold {TPU: 1}"
    kinds = {reason["kind"] for reason in data["reasons"]}
    assert {"launch", "infeasible", "cap", "unplaced"} <= kinds


def test_plan_table_shows_nodes_and_reasons(cluster_file, tmp_path):
    demands = write(tmp_path, "demands.json", [{"shape": {"CPU": 4}, "count": 3}])
    result = corral("plan", str(cluster_file), "--demands", str(demands))
    assert result.returncode == 0, result.stderr
    assert "cpu4       3      CPU 4" in result.stdout
    assert "total: 3 nodes" in result.stdout
    assert "launch 3 x cpu4 for 3 x {CPU: 4} (pending demand)" in result.stdout


@pytest.mark.parametrize("content, message", [
    ("not json", "not valid JSON"),
    ('{"shape": {}}', "expected a JSON list of demands"),
    ('[{"shape": {"CPU": -1}, "count": 1}]', "must not be negative"),
    ('[{"shape": {"CPU": 1}, "count": 1.5}]', "'count' must be a whole number"),
    ('[{"shape": "CPU", "count": 1}]', "'shape' must be an object"),
    ('[{"shape": {"CPU": 1}, "cnt": 1}]', "unknown key(s) cnt"),
])
def test_plan_bad_demands_exit_2_without_traceback(cluster_file, tmp_path, content, message):
    demands = write(tmp_path, "demands.json", content)
    result = corral("plan", str(cluster_file), "--demands", str(demands))
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_plan_missing_files_and_bad_config_exit_2(cluster_file, tmp_path):
    result = corral("plan", str(cluster_file), "--demands", str(tmp_path / "none.json"))
    assert result.returncode == 2 and "no such file" in result.stderr
    bad = write(tmp_path, "bad.yaml", "cluster_name: x\nmax_wrkers: 2\n")
    demands = write(tmp_path, "demands.json", [])
    result = corral("plan", str(bad), "--demands", str(demands))
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    result = corral("plan", str(cluster_file))
    assert result.returncode == 2 and "--demands" in result.stderr


def test_simulate_prints_timeline_waits_and_node_minutes(cluster_file, tmp_path):
    trace = write(tmp_path, "trace.json", [
        {"at_s": 0, "shape": {"CPU": 1}, "count": 9, "duration_s": 30},
        {"at_s": 500, "shape": {"CPU": 1}, "count": 1, "duration_s": 10}])
    result = corral("simulate", str(cluster_file), str(trace), "--launch-delay-s", "10",
                    "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["tasks_run"] == 10
    # The head runs one task at once; two cpu4 nodes arrive 10 s later for the other 8.
    assert data["launched"] == {"cpu4": 2}
    assert data["wait_s"] == {"p50": 10.0, "p95": 10.0, "max": 10.0}
    # Both workers went idle at 40 s and left after the 60 s idle timeout.
    assert data["timeline"][-1]["running"] == {}
    assert data["node_minutes"]["cpu4"] == pytest.approx(2 * 100 / 60)
    text = corral("simulate", str(cluster_file), str(trace), "--launch-delay-s", "10")
    assert text.returncode == 0, text.stderr
    assert "waited p50" in text.stdout and "node-minutes: cpu4 3.3" in text.stdout


def test_simulate_bad_trace_exit_2(cluster_file, tmp_path):
    trace = write(tmp_path, "trace.json", [{"at_s": 0, "shape": {"CPU": 1}, "count": 1}])
    result = corral("simulate", str(cluster_file), str(trace))
    assert result.returncode == 2
    assert "missing 'duration_s'" in result.stderr and "Traceback" not in result.stderr
