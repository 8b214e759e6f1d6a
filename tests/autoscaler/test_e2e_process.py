"""End to end on the `process` provider, through the real `corral` CLI and runtime: work
the head cannot run makes the monitor launch workers, the work finishes, idle workers go;
a monitor killed mid-scale-up and restarted launches nothing twice."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.helpers import wait_for

pytestmark = pytest.mark.timeout(170)

JOB = """
import os, sys, time, runtime
runtime.init(address="auto")

@runtime.remote(num_cpus=1)
def work(i):
    time.sleep({task_s})
    return os.environ.get("CORRAL_NODE_ID")

refs = [work.remote(i) for i in range({tasks})]
print("RESULT", len(runtime.get(refs, timeout=120)))
"""


def corral(*args: str, timeout_s: float = 90, **kwargs):
    return subprocess.run([sys.executable, "-m", "launcher", *args], capture_output=True,
                          text=True, timeout=timeout_s, stdin=subprocess.DEVNULL, **kwargs)


class ProcessCluster:
    def __init__(self, tmp_path: Path, corral_home: Path, name: str, max_workers: int,
                 idle_timeout_s: float):
        self.path = tmp_path / "cluster.yaml"
        self.tmp_path = tmp_path
        self.home = corral_home
        self.name = name
        self.path.write_text(yaml.safe_dump({
            "cluster_name": name, "max_workers": max_workers, "idle_timeout_minutes": 1,
            "provider": {"type": "process"},
            "available_node_types": {
                "head": {"resources": {"CPU": 0}, "min_workers": 0, "max_workers": 0},
                "cpu1": {"resources": {"CPU": 1}, "min_workers": 0,
                         "max_workers": max_workers, "idle_timeout_s": idle_timeout_s}},
            "head_node_type": "head"}))

    def nodes_dir(self) -> Path:
        return self.home / "clusters" / self.name / "nodes"

    def head_dir(self) -> Path:
        (head,) = [path for path in self.nodes_dir().iterdir() if "-head-" in path.name]
        return head

    def events(self) -> list[dict]:
        path = self.head_dir() / "session" / "autoscaler.events"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def worker_ids_alive(self) -> list[str]:
        alive = []
        for path in self.nodes_dir().iterdir():
            record = path / "node.json"
            if "-worker-" in path.name and record.exists():
                if json.loads(record.read_text()).get("state") == "running":
                    alive.append(path.name)
        return sorted(alive)

    def job(self, tasks: int, task_s: float) -> subprocess.Popen:
        script = self.tmp_path / "job.py"
        script.write_text(JOB.format(tasks=tasks, task_s=task_s))
        return subprocess.Popen([sys.executable, "-m", "launcher", "exec", str(self.path),
                                 f"{sys.executable} {script}"], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)

    def wait_for(self, predicate, timeout_s: float, what: str):
        return wait_for(predicate, timeout_s, what, interval_s=0.2,
                        describe=lambda: f"events: {self.events()}")


@pytest.fixture
def cluster_factory(tmp_path, corral_home):
    made: list[ProcessCluster] = []
    extra_pids: list[int] = []

    def make(max_workers: int, idle_timeout_s: float = 4) -> ProcessCluster:
        cluster = ProcessCluster(tmp_path, corral_home, f"as{os.getpid() % 10000}",
                                 max_workers, idle_timeout_s)
        made.append(cluster)
        result = corral("up", "-y", str(cluster.path))
        assert result.returncode == 0, result.stdout + result.stderr
        return cluster
    make.extra_pids = extra_pids
    try:
        yield make
    finally:
        for cluster in made:
            corral("down", "-y", str(cluster.path))
        for pid in extra_pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_queued_work_launches_workers_that_go_when_idle(cluster_factory):
    cluster = cluster_factory(max_workers=4)
    job = cluster.job(tasks=8, task_s=1)
    out, err = job.communicate(timeout=120)
    assert job.returncode == 0, out + err
    assert "RESULT 8" in out
    launched = [event for event in cluster.events() if event["kind"] == "launched"]
    assert launched and sum(event["count"] for event in launched) <= 4
    # The provider marks a node stopped while terminate_nodes runs; the monitor writes its
    # "terminated" event once that call returns. Wait for both, not just the first.
    def all_gone_and_recorded() -> bool:
        terminated = [event for event in cluster.events() if event["kind"] == "terminated"]
        return bool(terminated) and cluster.worker_ids_alive() == [] and \
            len(terminated) >= sum(event["count"] for event in launched)
    cluster.wait_for(all_gone_and_recorded, 60, "idle workers to go")
    terminated = [event for event in cluster.events() if event["kind"] == "terminated"]
    assert all("idle for" in event["message"] for event in terminated), terminated
    status = corral("status", str(cluster.path), "--explain")
    assert status.returncode == 0, status.stdout + status.stderr
    node_table, _, autoscaler_view = status.stdout.partition("Autoscaler")
    assert "-worker-" not in node_table, status.stdout
    # The autoscaler's view, read from the head through `corral status` (the launcher
    # loads it by name): the head is listed among the idle nodes, and nothing is queued.
    assert autoscaler_view.startswith(" (as of"), status.stdout
    assert re.search(r"idle\s+\d+: \S+-head-", status.stdout), status.stdout
    assert "no queued demand" in status.stdout, status.stdout


def test_monitor_killed_mid_scale_up_restarts_without_duplicates(cluster_factory):
    # Idle timeout longer than the job: this test is about launches, not removals.
    cluster = cluster_factory(max_workers=6, idle_timeout_s=60)
    session = cluster.head_dir() / "session"
    old_pid = int((session / "monitor.pid").read_text())
    argv = Path(f"/proc/{old_pid}/cmdline").read_bytes().decode().split("\0")[:-1]
    environ = dict(entry.split("=", 1) for entry in
                   Path(f"/proc/{old_pid}/environ").read_bytes().decode().split("\0")
                   if "=" in entry)
    job = cluster.job(tasks=3, task_s=3)
    try:
        cluster.wait_for(lambda: [e for e in cluster.events() if e["kind"] == "launched"],
                         60, "the first launch")
        os.kill(old_pid, signal.SIGKILL)  # mid scale-up: its bootstraps die with it
        restarted = subprocess.Popen(argv + ["--adopt-after-s", "5"], env=environ, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)
        cluster_factory.extra_pids.append(restarted.pid)
        (session / "monitor.pid").write_text(f"{restarted.pid}\n")
        out, err = job.communicate(timeout=120)
    finally:
        if job.poll() is None:
            job.kill()
            job.communicate()
    assert job.returncode == 0, out + err
    assert "RESULT 3" in out
    events = cluster.events()
    starts = [event for event in events if event["kind"] == "started"]
    assert len(starts) == 2
    launched = sum(event["count"] for event in events if event["kind"] == "launched")
    assert launched == 3, "\n".join(f"{e['time']} {e['kind']} {e['message']}" for e in events)
    assert not [event for event in events if event["kind"] == "terminated"]
