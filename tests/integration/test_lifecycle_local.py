"""The cluster lifecycle on the `local` provider against real sshd hosts (tests/testhosts.py),
1 head + 3 workers, driven through the real `corral` CLI (subprocesses; attach with
pexpect), checking exit codes, messages and what is left on every host."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

pytestmark = [pytest.mark.netns, pytest.mark.timeout(180)]

SSH_TIMEOUT_S = 5
COUNTER = "$CORRAL_NODE_DIR/setup-count"
DAEMON = "nohup sleep 600 > /dev/null 2>&1 &"


def corral(*args: str, timeout_s: float = 90) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "launcher", *args], capture_output=True,
                          text=True, timeout=timeout_s, stdin=subprocess.DEVNULL)


def ours(host) -> list[tuple[int, str]]:
    """Processes on the host other than its sshd (the test hosts' own bookkeeping)."""
    return list(host.processes())


class LocalCluster:
    def __init__(self, tmp_path: Path, test_hosts, worker_ips=None):
        self.hosts = test_hosts.hosts
        self.path = tmp_path / "onprem.yaml"
        self.data = tmp_path / "data"
        self.data.mkdir(exist_ok=True)
        (self.data / "input.txt").write_text("payload\n")
        worker_ips = worker_ips or [host.ip for host in self.hosts[1:]]
        self.document = {
            "cluster_name": "onprem-it",
            "provider": {"type": "local", "head_ip": self.hosts[0].ip,
                         "worker_ips": worker_ips},
            "auth": {"ssh_user": test_hosts.ssh_user,
                     "ssh_private_key": str(test_hosts.ssh_private_key),
                     "ssh_timeout_s": SSH_TIMEOUT_S},
            "file_mounts": {"/tmp/corral-data": str(self.data)},
            "setup_commands": [f"echo setup >> {COUNTER}"],
            "head_start_commands": [DAEMON],
            "worker_start_commands": [DAEMON],
        }
        self.write()

    def write(self) -> None:
        self.path.write_text(yaml.safe_dump(self.document, sort_keys=False))

    def run(self, command: str, *args: str, timeout_s: float = 90):
        return corral(command, str(self.path), *args, timeout_s=timeout_s)

    def counts(self) -> list[int]:
        return [len(host.run("cat /tmp/corral/setup-count 2>/dev/null").stdout.splitlines())
                for host in self.hosts]


@pytest.fixture
def cluster(tmp_path, test_hosts):
    made = LocalCluster(tmp_path, test_hosts)
    try:
        yield made
    finally:
        corral("down", str(made.path), "-y", timeout_s=90)


def test_lifecycle_up_exec_attach_rsync_reup_down(cluster, tmp_path):
    head, *workers = cluster.hosts
    up = cluster.run("up")
    assert up.returncode == 0, up.stdout + up.stderr
    assert up.stdout.count("up-to-date") >= 4 and "corral attach" in up.stdout
    assert cluster.counts() == [1, 1, 1, 1]
    for host in cluster.hosts:
        assert any("sleep 600" in cmdline for _, cmdline in ours(host)), host.name
        keys = host.run("stat -c %a /tmp/corral/keys /tmp/corral/keys/*").stdout.split()
        assert keys and set(keys) <= {"700", "600"}
    assert head.run("test -f /tmp/corral/cluster.yaml").returncode == 0

    name = cluster.run("exec", "hostname; echo $CORRAL_NODE_KIND $CORRAL_HEAD_IP")
    assert name.returncode == 0 and name.stdout.split() == [head.name, "head", head.ip]
    everywhere = cluster.run("exec", "--all-nodes", "hostname")
    assert everywhere.returncode == 0
    assert sorted(line.split()[-1] for line in everywhere.stdout.splitlines()) == \
        sorted(host.name for host in cluster.hosts)
    one = cluster.run("exec", "--node", workers[1].ip, "hostname")
    assert one.stdout.strip() == workers[1].name
    assert cluster.run("exec", "exit 4").returncode == 4
    assert cluster.run("get-head-ip").stdout.strip() == head.ip
    assert sorted(cluster.run("get-worker-ips").stdout.split()) == \
        sorted(host.ip for host in workers)
    status = cluster.run("status")
    assert status.returncode == 0 and status.stdout.count("up-to-date") == 4

    import pexpect
    shell = pexpect.spawn(sys.executable, ["-m", "launcher", "attach", str(cluster.path)],
                          env=dict(os.environ), timeout=30, encoding="utf-8")
    try:
        shell.sendline('echo "AT-$(hostname)-$CORRAL_NODE_KIND-END"')
        shell.expect(f"AT-{head.name}-head-END")
        shell.sendline("exit 3")
        shell.expect(pexpect.EOF)
    finally:
        shell.close()
    assert shell.exitstatus == 3

    upload = tmp_path / "upload"
    upload.mkdir()
    (upload / "file.txt").write_text("to every node\n")
    assert cluster.run("rsync-up", str(upload), "/tmp/uploaded").returncode == 0
    for host in cluster.hosts:
        assert host.run("cat /tmp/uploaded/file.txt").stdout == "to every node\n"
        assert host.run("cat /tmp/corral-data/input.txt").stdout == "payload\n"
    head.run("echo from the head > /tmp/result.txt")
    fetched = tmp_path / "fetched.txt"
    assert cluster.run("rsync-down", "/tmp/result.txt", str(fetched)).returncode == 0
    assert fetched.read_text() == "from the head\n"

    again = cluster.run("up")
    assert again.returncode == 0 and "nothing changed" in again.stdout
    assert cluster.counts() == [1, 1, 1, 1]
    cluster.document["setup_commands"] = [f"echo v2 >> {COUNTER}"]
    cluster.write()
    changed = cluster.run("up")
    assert changed.returncode == 0, changed.stdout + changed.stderr
    assert cluster.counts() == [2, 2, 2, 2]

    down = cluster.run("down", "-y")
    assert down.returncode == 0, down.stdout + down.stderr
    for host in cluster.hosts:
        assert ours(host) == [], f"{host.name} still runs {ours(host)}"
        assert host.run("test -e /tmp/corral").returncode != 0


def test_failing_setup_on_one_worker(cluster):
    bad = cluster.hosts[2]
    cluster.document["worker_setup_commands"] = [
        f'if [ "$(hostname)" = {bad.name} ]; then echo no space left >&2; exit 9; fi']
    cluster.write()
    up = cluster.run("up")
    assert up.returncode == 1
    assert bad.ip in up.stderr and "exited 9" in up.stderr and "no space left" in up.stderr
    assert f"{bad.ip}.log" in up.stderr
    status = cluster.run("status").stdout
    assert status.count("up-to-date") == 3 and "update-failed" in status
    for host in cluster.hosts:
        running = any("sleep 600" in cmdline for _, cmdline in ours(host))
        assert running == (host is not bad), host.name


def test_unreachable_worker_fails_within_the_ssh_timeout_naming_the_host(tmp_path, test_hosts):
    dead_ip = test_hosts.unreachable_ip
    made = LocalCluster(tmp_path, test_hosts, worker_ips=[test_hosts.hosts[1].ip, dead_ip])
    try:
        started = time.monotonic()
        up = made.run("up")
        elapsed_s = time.monotonic() - started
        assert up.returncode == 1 and dead_ip in up.stderr
        assert "Traceback" not in up.stderr
        assert elapsed_s < SSH_TIMEOUT_S * 3 + 30
        status = made.run("status")
        assert status.stdout.count("up-to-date") == 2  # the head and the reachable worker
    finally:
        corral("down", str(made.path), "-y")


def test_changed_host_key_is_refused(cluster, test_hosts):
    assert cluster.run("up").returncode == 0
    worker = cluster.hosts[3]
    test_hosts.restart_host(worker, new_host_key=True)
    again = cluster.run("up")
    assert again.returncode == 1
    assert worker.ip in again.stderr and "host key" in again.stderr
    exec_there = cluster.run("exec", "--all-nodes", "true")
    assert exec_there.returncode != 0 or worker.ip not in exec_there.stdout
