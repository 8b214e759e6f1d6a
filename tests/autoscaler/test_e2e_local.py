"""End to end on the `local` provider over the SSH test hosts (tests/testhosts.py): the
head's monitor launches workers from the host pool over SSH for work the head cannot run,
and gives them back once idle."""
from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time

import pytest
import yaml

pytestmark = [pytest.mark.netns, pytest.mark.timeout(170)]

JOB = """
import os, time, runtime
runtime.init(address="auto")

@runtime.remote(num_cpus=1)
def work(i):
    time.sleep(1)
    return os.environ.get("CORRAL_NODE_ID")

print("RESULT", sorted(runtime.get([work.remote(i) for i in range(4)], timeout=120)))
"""


def corral(*args: str, timeout_s: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "launcher", *args], capture_output=True,
                          text=True, timeout=timeout_s, stdin=subprocess.DEVNULL)


@pytest.fixture
def onprem(tmp_path, hosts_run_this_checkout):
    test_hosts = hosts_run_this_checkout
    head, first, second = test_hosts.hosts[:3]
    path = tmp_path / "onprem.yaml"
    path.write_text(yaml.safe_dump({
        "cluster_name": "onprem-as", "max_workers": 2,
        "provider": {"type": "local", "head_ip": head.ip,
                     "worker_ips": [first.ip, second.ip]},
        "auth": {"ssh_user": test_hosts.ssh_user,
                 "ssh_private_key": str(test_hosts.ssh_private_key), "ssh_timeout_s": 10},
        "available_node_types": {
            "head": {"resources": {"CPU": 0}, "min_workers": 0, "max_workers": 0},
            "w1": {"resources": {"CPU": 1}, "min_workers": 0, "max_workers": 2,
                   "idle_timeout_s": 5}},
        "head_node_type": "head",
        # The test hosts share this machine's /root; keep the head's own corral state
        # (the monitor's known_hosts, logs) in its private /tmp instead.
        "head_start_commands": [
            "corral stop; CORRAL_HOME=$CORRAL_NODE_DIR/home corral start --head "
            "--autoscaling-config=$CORRAL_NODE_DIR/cluster.yaml"]}))
    try:
        yield path, head
    finally:
        corral("down", str(path), "-y")


def events_on(head) -> list[dict]:
    text = head.run("cat /tmp/corral/session/autoscaler.events 2>/dev/null").stdout
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def monitor_log(head) -> str:
    return head.run("tail -n 30 /tmp/corral/session/logs/monitor.log 2>&1").stdout


def test_local_hosts_are_launched_for_work_and_released_when_idle(onprem):
    path, head = onprem
    up = corral("up", str(path), "-y")
    assert up.returncode == 0, up.stdout + up.stderr
    try:
        job = corral("exec", str(path), f"python3 -c {shlex.quote(JOB)}", timeout_s=90)
    except subprocess.TimeoutExpired as expired:
        raise AssertionError(f"job timed out; events: {json.dumps(events_on(head))}; "
                             f"monitor log: {monitor_log(head)}") from expired
    assert job.returncode == 0, job.stdout + job.stderr + json.dumps(events_on(head))
    assert "RESULT" in job.stdout
    launched = [event for event in events_on(head) if event["kind"] == "launched"]
    assert launched and sum(event["count"] for event in launched) <= 2
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        status = corral("status", str(path))
        if status.returncode == 0 and " worker " not in status.stdout:
            break
        time.sleep(1)
    assert " worker " not in status.stdout, status.stdout + json.dumps(events_on(head))
    assert any(event["kind"] == "terminated" and "idle for" in event["message"]
               for event in events_on(head))
