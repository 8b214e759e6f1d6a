"""Dead services come back, and `corral status` tells the truth: real head processes
killed with SIGKILL by pid (the control service, the autoscaler monitor, the
supervisor), first on a head started with start_node, then on a process-provider
cluster brought up by the `corral` CLI under a running workload, with invariants: no
lost result of a retryable task, never two control services / monitors / supervisors /
heads, nothing left after `down`, status says down or restarting while it is and up
afterwards, and `corral up` repairs a head whose services died with their supervisor;
a full disk on the head (a small tmpfs) does not stop a restart."""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

import runtime
from runtime.node import processes
from runtime.node import session
from runtime.node import supervision
from runtime.node import health as supervisor_report
from runtime.control.persist import STATE_FILE
from tests.helpers import wait_for

pytestmark = pytest.mark.timeout(150)


def corral(*args: str, env: dict | None = None, timeout_s: float = 120):
    return subprocess.run([sys.executable, "-m", "launcher", *args], capture_output=True,
                          text=True, timeout=timeout_s, stdin=subprocess.DEVNULL,
                          env=env)


def service_pids(node_dir: Path, module: str) -> list[int]:
    """Live processes of this node (CORRAL_NODE_DIR) running `python -m module`."""
    found = processes.pids_with_env(processes.ENV_NODE_DIR, [str(node_dir)])[str(node_dir)]
    return sorted(pid for pid in found if module in (processes.cmdline(pid) or []))


def running(session_dir: Path) -> dict[str, int]:
    return session.running_pids(session_dir)


def kill9(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def events(session_dir: Path) -> list[dict]:
    path = session_dir / supervision.EVENTS_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def restarted_after(session_dir: Path, name: str, old_pid: int, timeout_s: float = 30):
    """The new pid of service `name` once its supervisor started it again."""
    return wait_for(lambda: (pid := running(session_dir).get(name)) and pid != old_pid
                    and pid, timeout_s, f"{name} to be restarted",
                    describe=lambda: (session_dir / "logs" / "supervisor.log").read_text())


# ------------------------------------------------------------------ a head on its own

@pytest.fixture
def head(local_cluster):
    local_cluster.start_head(num_cpus=1)
    local_cluster.add_node("worker", num_cpus=1)
    return local_cluster


def test_a_killed_control_service_comes_back_with_the_cluster_it_had(head):
    session_dir = head.head.session
    assert set(running(session_dir)) == {"supervisor", "control", "agent"}
    state_file = session_dir / STATE_FILE
    assert stat.S_IMODE(state_file.stat().st_mode) == 0o600
    head.connect()

    @runtime.remote(max_retries=3)
    def square(x):
        return x * x

    @runtime.remote(num_cpus=0)
    class Keeper:
        def value(self):
            return "kept"

    keeper = Keeper.options(name="keeper", lifetime="detached").remote()
    assert runtime.get(keeper.value.remote(), timeout=60) == "kept"
    old_pid = running(session_dir)["control"]
    kill9(old_pid)
    new_pid = restarted_after(session_dir, "control", old_pid)
    assert service_pids(head.base / "head", "runtime.control.service") == [new_pid]
    # Work goes on through the same driver (its sockets reconnect by themselves) ...
    assert runtime.get([square.remote(i) for i in range(8)], timeout=60) == \
        [i * i for i in range(8)]
    runtime.shutdown()
    # ... and a new driver finds the cluster as it was: both nodes, the named actor.
    head.connect()
    assert {node["node_id"] for node in runtime.nodes() if node["alive"]} == \
        {"head", "worker"}
    assert runtime.get(runtime.get_actor("keeper").value.remote(), timeout=60) == "kept"
    log = (session_dir / "logs" / "control.log").read_text()
    assert re.search(r"resumed from .*: 2 nodes, \d+ drivers, 1 named actors", log), log
    kinds = [(e["kind"], e["service"]) for e in events(session_dir)]
    assert ("service-down", "control") in kinds and ("service-restarted", "control") in kinds
    restart = [e for e in events(session_dir) if e["kind"] == "service-restarted"][-1]
    assert "SIGKILL" in restart["message"] and str(old_pid) in restart["message"]
    assert "killed by SIGKILL" in (session_dir / "logs" / "supervisor.log").read_text()


def test_the_supervisor_and_the_control_service_cover_each_other(head):
    session_dir = head.head.session
    node_dir = head.base / "head"
    before = running(session_dir)
    kill9(before["supervisor"])
    new_supervisor = restarted_after(session_dir, "supervisor", before["supervisor"])
    # the new supervisor adopted the running control service: no second one
    assert running(session_dir)["control"] == before["control"]
    assert service_pids(node_dir, "runtime.control.service") == [before["control"]]
    assert service_pids(node_dir, "runtime.node.supervisor") == [new_supervisor]
    log = (session_dir / "logs" / "supervisor.log").read_text()
    assert f"adopted the control service (pid {before['control']})" in log
    # a second supervisor started by hand finds the lock taken and leaves
    extra = subprocess.run([sys.executable, "-m", "runtime.node.supervisor", "--session",
                            str(session_dir)], capture_output=True, text=True, timeout=30,
                           env=dict(os.environ, CORRAL_NODE_DIR=str(node_dir)))
    assert extra.returncode == 0 and "another supervisor runs" in extra.stderr
    assert service_pids(node_dir, "runtime.node.supervisor") == [new_supervisor]
    # an adopted service that dies is restarted too (its exit status is unknowable)
    kill9(before["control"])
    restarted_after(session_dir, "control", before["control"])
    assert "exit status unknown" in (session_dir / "logs" / "supervisor.log").read_text()


def test_health_says_restarting_then_down_then_stopped(head):
    session_dir = head.head.session
    pids = running(session_dir)
    assert supervisor_report.health(session_dir)["healthy"]
    os.kill(pids["supervisor"], signal.SIGSTOP)     # it cannot restart anything now
    try:
        kill9(pids["control"])
        wait_for(lambda: "control" not in running(session_dir), 10, "control to die")
        report = supervisor_report.health(session_dir)
        assert report["services"]["control"]["state"] == "restarting"
        assert not report["healthy"]
        kill9(pids["supervisor"])
    finally:
        os.kill(pids["supervisor"], signal.SIGCONT)
    wait_for(lambda: "supervisor" not in running(session_dir), 10, "supervisor to die")
    report = supervisor_report.health(session_dir)
    assert report["services"]["control"]["state"] == "down"
    assert report["supervisor"]["state"] == "down"
    assert report["agent"]["state"] == "running"
    text = "\n".join(supervisor_report.describe(report))
    assert "DOWN (not running" in text and "supervisor" in text, text
    env = dict(os.environ, CORRAL_NODE_DIR=str(head.base / "head"))
    health = corral("health", env=env)
    assert health.returncode == 1 and "DOWN" in health.stdout, health.stdout
    stopped = corral("stop", env=env)
    assert stopped.returncode == 0, stopped.stderr
    assert corral("health", "--json", env=env).stdout.count('"runtime": "stopped"') == 1
    assert processes.pids_with_env(processes.ENV_NODE_DIR, [str(head.base / "head")]) == \
        {str(head.base / "head"): set()}


def test_stop_right_after_a_kill_leaves_nothing_restarted(head):
    session_dir = head.head.session
    node_dir = head.base / "head"
    kill9(running(session_dir)["control"])     # the supervisor restarts it in 0.5 s
    session.stop_session(session_dir)
    time.sleep(1.5)                            # (a restart would have happened by now)
    assert processes.pids_with_env(processes.ENV_NODE_DIR, [str(node_dir)]) == \
        {str(node_dir): set()}
    assert not (session_dir / supervision.STOP_MARKER).exists()


def test_a_failing_service_is_retried_with_a_growing_backoff(head):
    session_dir = head.head.session
    port = int(head.head.address.rsplit(":", 1)[1])
    old_pid = running(session_dir)["control"]
    supervisor_pid = running(session_dir)["supervisor"]
    blocker = socket.socket()
    try:
        os.kill(supervisor_pid, signal.SIGSTOP)   # until the port is taken
        try:
            kill9(old_pid)
            wait_for(lambda: not processes.is_alive(old_pid), 10, "control to die")
            blocker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            # its restarts cannot bind the port (taken once the killed service's
            # connections are past closing: TIME_WAIT does not stop a bind)
            wait_for(lambda: _bound(blocker, port), 10, "the port to be free")
            blocker.listen()
        finally:
            os.kill(supervisor_pid, signal.SIGCONT)

        def downs():
            return [e for e in events(session_dir) if e["kind"] == "service-down"]
        wait_for(lambda: len(downs()) >= 3, 60, "three failed restarts",
                 describe=lambda: str(events(session_dir)))
        delays = [float(re.search(r"again in ([0-9.]+) s", e["message"]).group(1))
                  for e in downs()[:3]]
        assert delays == [0.5, 1.0, 2.0], delays
        assert all("exited with code" in e["exit"] for e in downs()[1:3])
        report = supervisor_report.health(session_dir)
        assert report["services"]["control"]["failures_in_row"] >= 3
    finally:
        blocker.close()
    new_pid = wait_for(lambda: running(session_dir).get("control"), 60, "control back")
    assert service_pids(head.base / "head", "runtime.control.service") == [new_pid]


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs as the head's "
                    "disk needs root")
def test_a_full_disk_on_the_head_does_not_stop_restarts(tmp_path):
    from tests.autoscaler.test_monitor_disk_full import SmallDisk
    from tests.runtime.conftest import LocalCluster
    node_dir = tmp_path / "cluster" / "head"
    node_dir.mkdir(parents=True)
    disk = SmallDisk(node_dir, 32 << 20)
    cluster = LocalCluster(tmp_path / "cluster", heartbeat_timeout_s=2.0)
    try:
        started = cluster.start_head(num_cpus=1)
        session_dir = started.session
        cluster.connect()

        @runtime.remote(max_retries=3)
        def square(x):
            return x * x
        assert runtime.get(square.remote(3), timeout=60) == 9
        disk.fill()
        old_pid = running(session_dir)["control"]
        kill9(old_pid)
        restarted_after(session_dir, "control", old_pid)
        runtime.shutdown()
        cluster.connect()                 # the new service answers a new driver
        assert runtime.get(square.remote(4), timeout=60) == 16

        @runtime.remote(num_cpus=0)
        class Named:
            def ping(self):
                return "pong"
        named = Named.options(name="named", lifetime="detached").remote()
        assert runtime.get(named.ping.remote(), timeout=60) == "pong"   # (not saved)
        assert "supervisor" in running(session_dir)
        assert b"named" not in (session_dir / STATE_FILE).read_bytes()   # no room
        disk.free()
        wait_for(lambda: b"named" in (session_dir / STATE_FILE).read_bytes(), 30,
                 "the state to be saved once the disk has room")
    finally:
        runtime.shutdown()
        cluster.stop()
        disk.unmount()


def _bound(sock: socket.socket, port: int) -> bool:
    try:
        sock.bind(("127.0.0.1", port))
    except OSError:
        return False
    return True


# ------------------------------------------------------------------ a whole cluster

JOB = """
import os, sys, time, runtime
runtime.init(address="auto")

@runtime.remote(num_cpus=1, max_retries=5)
def square(x):
    time.sleep(0.05)
    return x * x

done = rounds = 0
while not os.path.exists({stop!r}) and rounds < 500:
    values = runtime.get([square.remote(i) for i in range(20)], timeout=120)
    assert values == [i * i for i in range(20)], values
    done, rounds = done + len(values), rounds + 1
    open({progress!r}, "w").write(str(done))
print("RESULT", done, "ROUNDS", rounds)
"""


class Cluster:
    def __init__(self, tmp_path: Path, home: Path):
        self.name = f"sup{os.getpid() % 10000}"
        self.path = tmp_path / "cluster.yaml"
        self.tmp_path = tmp_path
        self.nodes_dir = home / "clusters" / self.name / "nodes"
        self.path.write_text(yaml.safe_dump({
            "cluster_name": self.name, "max_workers": 2, "idle_timeout_minutes": 1,
            "provider": {"type": "process"},
            "available_node_types": {
                "head": {"resources": {"CPU": 0}, "min_workers": 0, "max_workers": 0},
                "cpu1": {"resources": {"CPU": 1}, "min_workers": 0, "max_workers": 2,
                         "idle_timeout_s": 3}},
            "head_node_type": "head"}))

    def run(self, command: str, *args: str, timeout_s: float = 120):
        return corral(command, *args, str(self.path), timeout_s=timeout_s)

    @property
    def head_dir(self) -> Path:
        (head,) = [path for path in self.nodes_dir.iterdir() if "-head-" in path.name]
        return head

    @property
    def session(self) -> Path:
        return self.head_dir / "session"

    def workers(self) -> list[str]:
        return sorted(path.name for path in self.nodes_dir.iterdir()
                      if "-worker-" in path.name and (path / "node.json").exists())

    def all_pids(self) -> dict[str, set[int]]:
        return {key: pids for key, pids in
                processes.pids_with_env_in(processes.ENV_NODE_DIR, str(self.nodes_dir))
                .items() if pids}

    def check_one_of_each(self) -> None:
        """Never two heads, control services, monitors or supervisors."""
        heads = [path for path in self.nodes_dir.iterdir() if "-head-" in path.name]
        assert len(heads) == 1, heads
        for module in ("runtime.control.service", "autoscaler.monitor", "runtime.node.supervisor"):
            found = service_pids(self.head_dir, module)
            assert len(found) <= 1, (module, found)

    def healthy(self) -> bool:
        self.check_one_of_each()
        report = supervisor_report.health(self.session)
        return report["healthy"] and set(report["services"]) == {"control", "monitor"}


@pytest.fixture
def cluster(tmp_path, corral_home):
    made = Cluster(tmp_path, corral_home)
    up = made.run("up", "-y")
    assert up.returncode == 0, up.stdout + up.stderr
    try:
        yield made
    finally:
        made.run("down", "-y")
        for pids in made.all_pids().values():
            for pid in pids:
                kill9(pid)


def test_services_killed_in_a_loop_under_a_workload(cluster):
    progress, stop = cluster.tmp_path / "progress", cluster.tmp_path / "stop"
    script = cluster.tmp_path / "job.py"
    script.write_text(JOB.format(progress=str(progress), stop=str(stop)))
    job = subprocess.Popen([sys.executable, "-m", "launcher", "exec", str(cluster.path),
                            f"{sys.executable} {script}"], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    labels = {"control": "control service", "monitor": "autoscaler monitor"}
    try:
        wait_for(lambda: progress.exists(), 90, "the workload's first round")
        for round_ in range(2):
            for name in ("control", "monitor", "supervisor"):
                pids = running(cluster.session)
                if round_ == 0 and name != "supervisor":
                    # hold the supervisor, so that what status says can be seen
                    os.kill(pids["supervisor"], signal.SIGSTOP)
                    try:
                        kill9(pids[name])
                        wait_for(lambda: name not in running(cluster.session), 10,
                                 f"the {name} to die")
                        status = cluster.run("status")
                    finally:
                        os.kill(pids["supervisor"], signal.SIGCONT)
                    assert status.returncode == 1, status.stdout + status.stderr
                    assert re.search(labels[name] + r"\s+RESTARTING", status.stdout), \
                        status.stdout
                    assert "its supervisor is restarting it" in status.stderr
                else:
                    kill9(pids[name])
                restarted_after(cluster.session, name, pids[name])
                wait_for(cluster.healthy, 30, f"all services up after killing the {name}")
        stop.write_text("")
        out, err = job.communicate(timeout=120)
    finally:
        stop.write_text("")
        if job.poll() is None:
            job.kill()
            job.communicate()
    assert job.returncode == 0, out + err
    done, rounds = map(int, re.search(r"RESULT (\d+) ROUNDS (\d+)", out).groups())
    assert done == 20 * rounds > 0, out      # every retryable task's result came back
    restarts = [e for e in events(cluster.session) if e["kind"] == "service-restarted"]
    assert sorted(e["service"] for e in restarts) == ["control"] * 2 + ["monitor"] * 2
    status = cluster.run("status")
    assert status.returncode == 0, status.stdout + status.stderr
    assert re.search(r"control service\s+up \(pid \d+, since .*2 restarts", status.stdout), \
        status.stdout
    # the restarted monitor still removes idle workers
    wait_for(lambda: cluster.workers() == [], 90, "idle workers to be removed",
             describe=lambda: str(events(cluster.session)[-5:]))
    down = cluster.run("down", "-y")
    assert down.returncode == 0, down.stdout + down.stderr
    assert cluster.all_pids() == {}           # nothing of any node is left running


def test_up_repairs_a_head_whose_services_died_with_their_supervisor(cluster):
    view = cluster.session / supervisor_report.AUTOSCALER_STATUS_FILE
    wait_for(view.exists, 60, "the monitor's first status file")
    pids = running(cluster.session)
    os.kill(pids["supervisor"], signal.SIGSTOP)
    kill9(pids["control"])
    kill9(pids["monitor"])
    kill9(pids["supervisor"])
    os.kill(pids["supervisor"], signal.SIGCONT)
    wait_for(lambda: not set(running(cluster.session)) & {"control", "monitor",
                                                           "supervisor"}, 10, "them gone")
    # what the dead monitor last wrote: as if long ago (no monitor refreshes it now)
    os.utime(view, (time.time() - 100, time.time() - 100))
    status = cluster.run("status")
    assert status.returncode == 1, status.stdout + status.stderr
    assert re.search(r"autoscaler view\s+STALE: written 1\d\d s ago", status.stdout), \
        status.stdout
    assert "the autoscaler's view is stale: written 1" in status.stderr, status.stderr
    assert re.search(r"control service\s+DOWN", status.stdout), status.stdout
    assert re.search(r"autoscaler monitor\s+DOWN", status.stdout), status.stdout
    assert "control service down" in status.stdout          # the head's row says so
    assert "corral up" in status.stderr
    time.sleep(1.0)                         # nothing brings them back on its own
    assert not set(running(cluster.session)) & {"control", "monitor", "supervisor"}
    dry = cluster.run("up", "--dry-run")
    assert "head services: control service down" in dry.stdout, dry.stdout
    up = cluster.run("up")
    assert up.returncode == 0, up.stdout + up.stderr
    assert "nothing changed" not in up.stdout
    wait_for(cluster.healthy, 30, "the repaired head's services")
    status = cluster.run("status")
    assert status.returncode == 0, status.stdout + status.stderr
    assert "STALE" not in status.stdout and "stale" not in status.stderr
    again = cluster.run("up")
    assert again.returncode == 0 and "nothing changed" in again.stdout, again.stdout
    down = cluster.run("down", "-y")
    assert down.returncode == 0, down.stdout + down.stderr
    assert cluster.all_pids() == {}
