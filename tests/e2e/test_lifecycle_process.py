"""The whole cluster lifecycle on the `process` provider, through the real `corral` CLI
(a subprocess, so exit codes and messages are what a user gets)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.timeout(120)

WORKERS = 3


def corral(*args: str, timeout_s: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "launcher", *args], capture_output=True,
                          text=True, timeout=timeout_s, stdin=subprocess.DEVNULL)


def processes_of(nodes_dir: Path) -> list[int]:
    """PIDs of live processes started for any node under nodes_dir (by their env)."""
    prefix = f"CORRAL_NODE_DIR={nodes_dir}".encode()
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as handle:
                entries = handle.read().split(b"\0")
            with open(f"/proc/{name}/stat") as handle:
                state = handle.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and any(entry.startswith(prefix) for entry in entries):
            found.append(int(name))
    return found


class Cluster:
    def __init__(self, tmp_path: Path, name: str, corral_home: Path):
        self.tmp_path = tmp_path
        self.name = name
        self.path = tmp_path / f"{name}.yaml"
        self.nodes_dir = corral_home / "clusters" / name / "nodes"
        self.data = tmp_path / "data"
        self.data.mkdir(exist_ok=True)
        (self.data / "input.txt").write_text("payload\n")
        self.document = {
            "cluster_name": name,
            "provider": {"type": "process"},
            "max_workers": WORKERS,
            "available_node_types": {
                "head": {"resources": {"CPU": 1}, "min_workers": 0, "max_workers": 0},
                "cpu": {"resources": {"CPU": 2}, "min_workers": WORKERS,
                        "max_workers": WORKERS}},
            "head_node_type": "head",
            "file_mounts": {"data": str(self.data)},
            "setup_commands": ["echo setup >> $CORRAL_NODE_DIR/setup-count"],
            "head_start_commands": ["nohup sleep 600 > /dev/null 2>&1 &"],
            "worker_start_commands": ["nohup sleep 600 > /dev/null 2>&1 &"],
        }
        self.write()

    def write(self) -> None:
        self.path.write_text(yaml.safe_dump(self.document, sort_keys=False))

    def run(self, command: str, *args: str, timeout_s: float = 60):
        return corral(command, *args, str(self.path), timeout_s=timeout_s) if command in (
            "up", "down", "status", "get-head-ip", "get-worker-ips") else \
            corral(command, str(self.path), *args, timeout_s=timeout_s)

    def node_dirs(self) -> list[Path]:
        if not self.nodes_dir.exists():
            return []
        return sorted(path for path in self.nodes_dir.iterdir() if path.is_dir())

    def setup_counts(self) -> dict[str, int]:
        return {path.name: len((path / "setup-count").read_text().splitlines())
                if (path / "setup-count").exists() else 0 for path in self.node_dirs()}


@pytest.fixture
def cluster(tmp_path, corral_home):
    made = Cluster(tmp_path, f"e2e{os.getpid() % 1000}", corral_home)
    try:
        yield made
    finally:
        corral("down", "-y", str(made.path), timeout_s=60)
        for pid in processes_of(made.nodes_dir):  # never leave a daemon behind
            os.kill(pid, 9)


def test_lifecycle_up_exec_rsync_reup_down(cluster, tmp_path):
    up = cluster.run("up")
    assert up.returncode == 0, up.stdout + up.stderr
    assert up.stdout.count("up-to-date") >= WORKERS + 1
    assert "corral exec" in up.stdout and "corral down" in up.stdout
    assert len(cluster.node_dirs()) == WORKERS + 1
    assert set(cluster.setup_counts().values()) == {1}
    assert processes_of(cluster.nodes_dir), "the start commands' daemons should run"

    status = cluster.run("status")
    assert status.returncode == 0
    assert status.stdout.count("up-to-date") == WORKERS + 1
    assert status.stdout.count(" worker ") == WORKERS

    on_head = cluster.run("exec", "echo $CORRAL_NODE_KIND $CORRAL_CLUSTER_NAME")
    assert on_head.returncode == 0 and on_head.stdout.strip() == f"head {cluster.name}"
    everywhere = cluster.run("exec", "--all-nodes", "echo kind=$CORRAL_NODE_KIND")
    assert everywhere.returncode == 0
    assert everywhere.stdout.count("kind=worker") == WORKERS
    assert everywhere.stdout.count("] kind=") == WORKERS + 1  # prefixed per node
    assert cluster.run("exec", "exit 7").returncode == 7
    assert cluster.run("exec", "--all-nodes", "test $CORRAL_NODE_KIND = head").returncode == 1
    on_the_head = cluster.run("exec", "corral status")  # CONFIG comes from the head itself
    assert on_the_head.returncode == 0, on_the_head.stderr
    assert on_the_head.stdout.count("up-to-date") == WORKERS + 1
    assert cluster.run("get-head-ip").stdout.strip() == "127.0.0.1"
    assert cluster.run("get-worker-ips").stdout.splitlines() == ["127.0.0.1"] * WORKERS

    upload = tmp_path / "upload"
    (upload / "sub").mkdir(parents=True)
    (upload / "sub" / "file.txt").write_text("to every node\n")
    assert cluster.run("rsync-up", str(upload), "uploaded").returncode == 0
    read = cluster.run("exec", "--all-nodes", "cat uploaded/sub/file.txt data/input.txt")
    assert read.stdout.count("to every node") == WORKERS + 1
    assert read.stdout.count("payload") == WORKERS + 1
    cluster.run("exec", "echo made on the head > result.txt")
    down_dir = tmp_path / "down"
    assert cluster.run("rsync-down", "result.txt", str(down_dir / "result.txt")).returncode == 0
    assert (down_dir / "result.txt").read_text() == "made on the head\n"

    again = cluster.run("up")
    assert again.returncode == 0 and "nothing changed" in again.stdout
    assert set(cluster.setup_counts().values()) == {1}, "nothing may re-run"
    assert len(cluster.node_dirs()) == WORKERS + 1

    cluster.document["setup_commands"] = ["echo v2 >> $CORRAL_NODE_DIR/setup-count"]
    cluster.write()
    dry = cluster.run("up", "--dry-run")
    assert dry.returncode == 0 and dry.stdout.count("update") >= WORKERS + 1
    assert set(cluster.setup_counts().values()) == {1}, "a dry run changes nothing"
    changed = cluster.run("up")
    assert changed.returncode == 0, changed.stdout + changed.stderr
    assert set(cluster.setup_counts().values()) == {2}
    assert len(cluster.node_dirs()) == WORKERS + 1

    down = cluster.run("down", "-y")
    assert down.returncode == 0, down.stdout + down.stderr
    assert "nothing of cluster" in down.stdout
    assert cluster.node_dirs() == []
    assert processes_of(cluster.nodes_dir) == []
    gone = cluster.run("status")
    assert gone.returncode == 1 and "no head node" in gone.stderr


def test_failing_setup_on_one_worker_leaves_the_others_up(cluster, tmp_path):
    marker = tmp_path / "one-failure"
    # mkdir is atomic: exactly one worker wins the race and fails.
    cluster.document["worker_setup_commands"] = [
        f"if mkdir {marker} 2>/dev/null; then echo about to fail; echo disk on fire >&2; "
        f"exit 5; fi"]
    cluster.write()
    up = cluster.run("up")
    assert up.returncode == 1
    failed = [path.name for path in cluster.node_dirs()
              if not (path / "setup-count").exists() or
              "update-failed" in (path / "node.json").read_text()]
    [failed_id] = failed
    assert failed_id in up.stderr and "exited 5" in up.stderr and "disk on fire" in up.stderr
    log_path = Path(os.environ["CORRAL_HOME"]) / "clusters" / cluster.name / "logs" / \
        f"{failed_id}.log"
    assert str(log_path) in up.stderr and "disk on fire" in log_path.read_text()
    status = cluster.run("status")
    assert status.stdout.count("up-to-date") == WORKERS
    assert "update-failed" in status.stdout and "exited 5" in status.stdout
    # Re-running up retries only the failed node.
    retry = cluster.run("up")
    assert retry.returncode == 0, retry.stdout + retry.stderr
    assert cluster.run("status").stdout.count("up-to-date") == WORKERS + 1


def test_dry_run_touches_nothing_and_unknown_cluster_is_a_clear_error(cluster):
    dry = cluster.run("up", "--dry-run")
    assert dry.returncode == 0
    assert dry.stdout.count("create") == WORKERS + 1 and "nothing is changed" in dry.stdout
    assert cluster.node_dirs() == []
    for command in ("status", "get-head-ip", "get-worker-ips"):
        result = cluster.run(command)
        assert result.returncode == 1 and "no head node" in result.stderr
        assert "Traceback" not in result.stderr
    result = cluster.run("exec", "true")
    assert result.returncode == 1 and "corral up" in result.stderr
    nothing = cluster.run("down", "-y")
    assert nothing.returncode == 0 and "nothing to do" in nothing.stdout


def test_replacing_needs_confirmation_without_a_terminal(cluster):
    cluster.document["available_node_types"]["cpu"]["min_workers"] = 1
    cluster.write()
    assert cluster.run("up").returncode == 0
    types = cluster.document["available_node_types"]
    types["head2"] = types.pop("head")
    cluster.document["head_node_type"] = "head2"
    cluster.write()
    refused = cluster.run("up")
    assert refused.returncode == 2 and "-y" in refused.stderr
    assert "head_node_type changed" in refused.stderr
    replaced = cluster.run("up", "-y")
    assert replaced.returncode == 0, replaced.stdout + replaced.stderr
    status = cluster.run("status").stdout
    assert "head2" in status and status.count("up-to-date") == 2
    down = cluster.run("down")
    assert down.returncode == 2 and "-y" in down.stderr
    workers_gone = cluster.run("down", "--workers-only", "-y")
    assert workers_gone.returncode == 0, workers_gone.stdout + workers_gone.stderr
    status = cluster.run("status")
    assert status.returncode == 0 and " worker " not in status.stdout
    assert status.stdout.count("up-to-date") == 1 and len(cluster.node_dirs()) == 1
