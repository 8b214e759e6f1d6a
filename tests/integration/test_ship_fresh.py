"""corral ships itself: `corral up` on hosts that look like stock VMs (tests/hostnet.py
fresh mode: private empty home, no checkout, only Debian's /usr/bin/python3, no corral,
no pip or internet needed) with a `local` config that has no setup_commands brings the
runtime up on all four; a program run with `corral exec` uses every node; a second `up`
ships nothing; `down` leaves no process behind. And the head's autoscaler ships the
corral it runs (the installed wheel) to the workers it launches."""
from __future__ import annotations

import shlex
import subprocess
import sys

import pytest
import yaml

from tests.hostnet import fresh_problem

pytestmark = [pytest.mark.netns, pytest.mark.timeout(420)]

PROGRAM = """
import socket, time
import runtime

runtime.init(address="auto")

@runtime.remote(num_cpus=1, resources={"slot": 1})
def where(i):
    time.sleep(1.5)
    return socket.gethostname()

hosts = runtime.get([where.remote(i) for i in range(8)], timeout=120)
print("HOSTS", ",".join(sorted(set(hosts))))
print("NODES", len(runtime.nodes()))
"""

ENV_STATE = ("readlink /root/.corral/env; ls /root/.corral/envs; "
             "stat -c '%i %Y' /root/.corral/env/; ls -A /root/.corral/incoming 2>/dev/null")


def corral(*args: str, timeout_s: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "launcher", *args], capture_output=True,
                          text=True, timeout=timeout_s, stdin=subprocess.DEVNULL)


@pytest.fixture
def fresh_cluster(tmp_path, fresh_hosts):
    hosts = fresh_hosts.hosts
    job = tmp_path / "job"
    job.mkdir()
    (job / "prog.py").write_text(PROGRAM)
    slot_type = {"node_config": {}, "resources": {"CPU": 1, "slot": 1}}
    path = tmp_path / "fresh.yaml"
    path.write_text(yaml.safe_dump({
        "cluster_name": "fresh-ship",
        "provider": {"type": "local", "head_ip": hosts[0].ip,
                     "worker_ips": [host.ip for host in hosts[1:]]},
        "auth": {"ssh_user": fresh_hosts.ssh_user,
                 "ssh_private_key": str(fresh_hosts.ssh_private_key), "ssh_timeout_s": 10},
        "available_node_types": {
            "head": {**slot_type, "min_workers": 0, "max_workers": 0},
            "worker": {**slot_type, "min_workers": 3, "max_workers": 3}},
        "head_node_type": "head",
        "max_workers": 3,
        "file_mounts": {"/tmp/job": str(job)},
    }, sort_keys=False))
    try:
        yield path, hosts
    finally:
        corral("down", str(path), "-y", timeout_s=120)


def test_up_ships_corral_to_stock_vms_and_runs_a_program_on_all_of_them(fresh_cluster):
    path, hosts = fresh_cluster
    for host in hosts:
        assert fresh_problem(host) is None
        missing = host.run("env -i PATH=/usr/bin:/bin HOME=/root sh -c "
                           "'cd / && python3 -c \"import runtime\"'")
        assert missing.returncode != 0 and "runtime" in missing.stderr

    up = corral("up", str(path), "-y")
    assert up.returncode == 0, up.stdout + up.stderr
    assert up.stdout.count("shipping-corral") >= 4, up.stdout
    assert up.stdout.count("shipped:") == 4, up.stdout
    assert up.stdout.count("up-to-date") >= 4, up.stdout
    first_state = {}
    for host in hosts:
        state = host.run(ENV_STATE)
        assert state.returncode == 0, state.stderr
        link, env_hash, inode_mtime, *incoming = state.stdout.split("\n")[:4]
        assert link == f"envs/{env_hash}" and not any(incoming), state.stdout
        first_state[host.name] = state.stdout
        installed = host.run("/root/.corral/env/bin/corral --version")
        assert installed.returncode == 0 and "installed at /root/.corral/envs/" in \
            installed.stdout, installed.stdout + installed.stderr

    found = corral("exec", str(path), "--all-nodes",
                   "command -v corral; python3 -c 'import runtime, sys; print(sys.prefix)'")
    assert found.returncode == 0, found.stdout + found.stderr
    lines = sorted(line.split()[-1] for line in found.stdout.splitlines())
    assert lines == ["/root/.corral/env"] * 4 + ["/root/.corral/env/bin/corral"] * 4, \
        found.stdout

    job = corral("exec", str(path), "python3 /tmp/job/prog.py", timeout_s=180)
    assert job.returncode == 0, job.stdout + job.stderr
    assert f"HOSTS {','.join(sorted(host.name for host in hosts))}" in job.stdout, job.stdout
    assert "NODES 4" in job.stdout

    again = corral("up", str(path), "-y")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "nothing changed" in again.stdout and "shipping-corral" not in again.stdout
    for host in hosts:
        assert host.run(ENV_STATE).stdout == first_state[host.name]

    down = corral("down", str(path), "-y", timeout_s=120)
    assert down.returncode == 0, down.stdout + down.stderr
    for host in hosts:
        assert host.processes() == [], f"{host.name} still runs {host.processes()}"


AUTOSCALED_JOB = """
import socket
import runtime
runtime.init(address="auto")

@runtime.remote(num_cpus=1)
def where():
    return socket.gethostname()

print("RAN ON", runtime.get(where.remote(), timeout=150))
"""


def test_the_heads_autoscaler_ships_corral_to_the_workers_it_launches(tmp_path, fresh_hosts):
    head, worker = fresh_hosts.hosts[:2]
    path = tmp_path / "autoscaled.yaml"
    path.write_text(yaml.safe_dump({
        "cluster_name": "fresh-autoscaled", "max_workers": 1,
        "provider": {"type": "local", "head_ip": head.ip, "worker_ips": [worker.ip]},
        "auth": {"ssh_user": fresh_hosts.ssh_user,
                 "ssh_private_key": str(fresh_hosts.ssh_private_key), "ssh_timeout_s": 10},
        "available_node_types": {
            "head": {"resources": {"CPU": 0}, "min_workers": 0, "max_workers": 0},
            "w": {"resources": {"CPU": 1}, "min_workers": 0, "max_workers": 1}},
        "head_node_type": "head"}))
    try:
        up = corral("up", str(path), "-y")
        assert up.returncode == 0, up.stdout + up.stderr
        assert worker.run("test -e /root/.corral").returncode != 0  # not touched by up
        job = corral("exec", str(path), f"python3 -c {shlex.quote(AUTOSCALED_JOB)}",
                     timeout_s=240)
        assert job.returncode == 0, job.stdout + job.stderr + head.run(
            "tail -n 40 /tmp/corral/session/logs/monitor.log").stdout
        assert f"RAN ON {worker.name}" in job.stdout
        head_env = head.run("readlink /root/.corral/env").stdout.strip()
        worker_env = worker.run("readlink /root/.corral/env").stdout.strip()
        assert head_env.startswith("envs/") and worker_env == head_env
        assert worker.run("/root/.corral/env/bin/corral --version").returncode == 0
    finally:
        down = corral("down", str(path), "-y", timeout_s=120)
    assert down.returncode == 0, down.stdout + down.stderr
    for host in (head, worker):
        assert host.processes() == [], f"{host.name} still runs {host.processes()}"
