"""corral ships itself: `corral up` on hosts that look like stock VMs (tests/hostnet.py
fresh mode: private empty home, no checkout, only Debian's /usr/bin/python3, no corral,
no pip or internet needed) with a `local` config that has no setup_commands brings the
runtime up on all four; a program run with `corral exec` uses every node; a second `up`
ships nothing; a changed corral ships once and restarts the runtime; `down` leaves no
process behind. And the head's autoscaler ships the corral it runs (the installed wheel)
to the workers it launches.

The first test runs corral from a copy of this checkout, so that it can change corral's
code without touching the checkout others work in."""
from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.helpers import wait_for
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


CHECKOUT = Path(__file__).resolve().parents[2]
SOURCES = ("launcher", "runtime", "autoscaler", "schemas", "configs/defaults", "setup.cfg")


def corral(*args: str, timeout_s: float = 300, source: Path | None = None
           ) -> subprocess.CompletedProcess:
    """The corral CLI; from `source` (a copy of the checkout) when given."""
    return subprocess.run([sys.executable, "-m", "launcher", *args], capture_output=True,
                          text=True, timeout=timeout_s, stdin=subprocess.DEVNULL,
                          cwd=source)


def copy_of_corral(target: Path) -> Path:
    for name in SOURCES:
        source = CHECKOUT / name
        if source.is_dir():
            shutil.copytree(source, target / name,
                            ignore=shutil.ignore_patterns("__pycache__"))
        else:
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target / name)
    return target


def assert_nothing_runs(hosts, grace_s: float = 10.0) -> None:
    """No process of ours is left on the hosts (a per-connection helper of the SSH
    session that ran `down` may take a moment to see its connection close)."""
    for host in hosts:
        wait_for(lambda: host.processes() == [], grace_s, f"{host.name} to run nothing",
                 describe=lambda: f"still running: {host.processes()}")


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
    source = copy_of_corral(tmp_path / "corral-src")
    try:
        yield path, hosts, source
    finally:
        corral("down", str(path), "-y", timeout_s=120, source=source)


def test_up_ships_corral_to_stock_vms_and_runs_a_program_on_all_of_them(fresh_cluster):
    path, hosts, source = fresh_cluster
    for host in hosts:
        assert fresh_problem(host) is None
        missing = host.run("env -i PATH=/usr/bin:/bin HOME=/root sh -c "
                           "'cd / && python3 -c \"import runtime\"'")
        assert missing.returncode != 0 and "runtime" in missing.stderr

    up = corral("up", str(path), "-y", source=source)
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
                   "command -v corral; python3 -c 'import runtime, sys; print(sys.prefix)'",
                   source=source)
    assert found.returncode == 0, found.stdout + found.stderr
    lines = sorted(line.split()[-1] for line in found.stdout.splitlines())
    assert lines == ["/root/.corral/env"] * 4 + ["/root/.corral/env/bin/corral"] * 4, \
        found.stdout

    job = corral("exec", str(path), "python3 /tmp/job/prog.py", timeout_s=180,
                 source=source)
    assert job.returncode == 0, job.stdout + job.stderr
    assert f"HOSTS {','.join(sorted(host.name for host in hosts))}" in job.stdout, job.stdout
    assert "NODES 4" in job.stdout

    import pexpect  # attach: a login shell, and still the shipped corral first on PATH
    shell = pexpect.spawn(sys.executable, ["-m", "launcher", "attach", str(path)],
                          cwd=str(source), timeout=30, encoding="utf-8")
    try:
        shell.sendline('echo "AT-$(command -v corral)-$(hostname)-END"')
        shell.expect(f"AT-/root/.corral/env/bin/corral-{hosts[0].name}-END")
        shell.sendline("exit")
        shell.expect(pexpect.EOF)
    finally:
        shell.close()

    again = corral("up", str(path), "-y", source=source)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "nothing changed" in again.stdout and "shipping-corral" not in again.stdout
    for host in hosts:
        assert host.run(ENV_STATE).stdout == first_state[host.name]

    # A new corral: shipped once, next to the old env, and the runtime restarts on it.
    with open(source / "runtime" / "__init__.py", "a") as handle:
        handle.write("# a new corral version (test_ship_fresh)\n")
    newer = corral("up", str(path), "-y", source=source)
    assert newer.returncode == 0, newer.stdout + newer.stderr
    assert "corral's code changed" in newer.stdout and newer.stdout.count("shipped:") == 4
    old_hash = first_state[hosts[0].name].split("\n")[1]
    for host in hosts:
        link = host.run("readlink /root/.corral/env").stdout.strip()
        new_hash = link.removeprefix("envs/")
        assert new_hash != old_hash
        assert sorted(host.run("ls /root/.corral/envs").stdout.split()) == \
            sorted([old_hash, new_hash])
        runtime_processes = [line for _, line in host.processes() if "runtime" in line]
        assert runtime_processes and all(f"/envs/{new_hash}/" in line
                                         for line in runtime_processes), runtime_processes
    rerun = corral("exec", str(path), "python3 /tmp/job/prog.py", timeout_s=180,
                   source=source)
    assert rerun.returncode == 0 and "NODES 4" in rerun.stdout, rerun.stdout + rerun.stderr

    down = corral("down", str(path), "-y", timeout_s=120, source=source)
    assert down.returncode == 0, down.stdout + down.stderr
    assert_nothing_runs(hosts)


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
    source = copy_of_corral(tmp_path / "corral-src")
    try:
        up = corral("up", str(path), "-y", source=source)
        assert up.returncode == 0, up.stdout + up.stderr
        assert worker.run("test -e /root/.corral").returncode != 0  # not touched by up
        job = corral("exec", str(path), f"python3 -c {shlex.quote(AUTOSCALED_JOB)}",
                     timeout_s=240, source=source)
        assert job.returncode == 0, job.stdout + job.stderr + head.run(
            "tail -n 40 /tmp/corral/session/logs/monitor.log").stdout
        assert f"RAN ON {worker.name}" in job.stdout
        head_env = head.run("readlink /root/.corral/env").stdout.strip()
        worker_env = worker.run("readlink /root/.corral/env").stdout.strip()
        assert head_env.startswith("envs/") and worker_env == head_env
        assert worker.run("/root/.corral/env/bin/corral --version").returncode == 0
        # The head computed the worker's hashes with the corral it runs (the installed
        # wheel): they are the ones this machine computes, so nothing is redone.
        again = corral("up", str(path), "-y", source=source)
        assert again.returncode == 0 and "nothing changed" in again.stdout, again.stdout
    finally:
        down = corral("down", str(path), "-y", timeout_s=120, source=source)
    assert down.returncode == 0, down.stdout + down.stderr
    assert_nothing_runs([head, worker])


def test_a_node_whose_home_is_not_writable_fails_naming_it_and_what_to_do(tmp_path,
                                                                        fresh_hosts):
    head, worker = fresh_hosts.hosts[:2]
    path = tmp_path / "readonly.yaml"
    path.write_text(yaml.safe_dump({
        "cluster_name": "fresh-readonly",
        "provider": {"type": "local", "head_ip": head.ip, "worker_ips": [worker.ip]},
        "auth": {"ssh_user": fresh_hosts.ssh_user,
                 "ssh_private_key": str(fresh_hosts.ssh_private_key), "ssh_timeout_s": 10}}))
    assert worker.run("mount -o remount,ro /root").returncode == 0
    try:
        up = corral("up", str(path), "-y")
        assert up.returncode == 1, up.stdout + up.stderr
        failure = next(line for line in up.stderr.splitlines() if worker.ip in line)
        assert "shipping-corral" in failure and "upload of corral" in failure, up.stderr
        assert "can write there" in up.stderr and "corral up" in up.stderr
        # (the head's autoscaler may already be trying the worker again)
        status = corral("status", str(path))
        assert status.stdout.count("up-to-date") == 1, status.stdout
        assert head.run("/root/.corral/env/bin/corral --version").returncode == 0
    finally:
        worker.run("mount -o remount,rw /root")
        down = corral("down", str(path), "-y", timeout_s=120)
    assert down.returncode == 0, down.stdout + down.stderr
    assert_nothing_runs([head, worker])
