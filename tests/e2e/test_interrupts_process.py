"""Ctrl-C, streaming, signals, odd bytes and read-only commands, through the real `corral`
CLI on the `process` provider (subprocesses, so exit codes and messages are a user's)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading

import pytest

from tests.e2e.test_lifecycle_process import Cluster, corral, processes_of
from tests.helpers import alive, wait_for

pytestmark = pytest.mark.timeout(120)




class Background:
    """`corral ...` started in the background; its output read by threads as it comes."""

    def __init__(self, *args: str):
        self.process = subprocess.Popen([sys.executable, "-m", "launcher", *args],
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        stdin=subprocess.DEVNULL, text=True)
        self.out: list[str] = []
        self.err: list[str] = []
        self._threads = [threading.Thread(target=self._read, args=(pipe, into), daemon=True)
                         for pipe, into in ((self.process.stdout, self.out),
                                            (self.process.stderr, self.err))]
        for thread in self._threads:
            thread.start()

    @staticmethod
    def _read(pipe, into):
        for line in pipe:
            into.append(line)

    def interrupt_and_wait(self, timeout_s: float = 60) -> int:
        self.process.send_signal(signal.SIGINT)
        code = self.process.wait(timeout_s)
        for thread in self._threads:
            thread.join(5)
        return code

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def cluster(tmp_path, corral_home):
    made = Cluster(tmp_path, f"int{os.getpid() % 1000}", corral_home)
    made.document["available_node_types"]["cpu"].update(min_workers=1, max_workers=1)
    made.document["max_workers"] = 1
    made.document["file_mounts"] = {}
    made.write()
    try:
        yield made
    finally:
        corral("down", "-y", str(made.path), timeout_s=60)
        for pid in processes_of(made.nodes_dir):  # never leave a process behind
            os.kill(pid, 9)


def test_exec_streams_and_ctrl_c_stops_the_command_and_its_children(cluster):
    assert cluster.run("up").returncode == 0
    pid_file = cluster.tmp_path / "child.pid"
    running = Background("exec", str(cluster.path),
                         f"sleep 300 & echo $! > {pid_file}; echo started; wait")
    try:
        wait_for(lambda: "started\n" in running.out, what="streamed output")
        assert running.process.poll() is None  # still running: the line came live
        child = int(pid_file.read_text())
        code = running.interrupt_and_wait()
    finally:
        running.kill()
    assert code == 130 and "Interrupted." in "".join(running.err)
    assert "Traceback" not in "".join(running.err)
    wait_for(lambda: not alive(child), what="the remote command's child to end")


def test_exec_signals_bad_bytes_timeout_and_node_choice(cluster):
    assert cluster.run("up").returncode == 0
    killed = cluster.run("exec", "kill -TERM $$")
    assert killed.returncode == 143 and "killed by signal SIGTERM" in killed.stderr
    odd = cluster.run("exec", r'printf "\xff\n"')
    assert odd.returncode == 0 and odd.stdout == "\ufffd\n", odd.stderr
    zero = cluster.run("exec", "--timeout", "0", "true")
    assert zero.returncode == 2 and "--timeout" in zero.stderr
    ambiguous = cluster.run("exec", "--node", "127.0.0.1", "true")
    assert ambiguous.returncode == 2 and "name one by its id" in ambiguous.stderr
    worker = next(path.name for path in cluster.node_dirs() if "-worker-" in path.name)
    picked = cluster.run("exec", "--node", worker, "echo $CORRAL_NODE_ID")
    assert picked.returncode == 0 and picked.stdout == f"{worker}\n"
    both = cluster.run("exec", "--all-nodes", "echo hi; exit 2")
    assert both.returncode == 1 and both.stdout.count("] hi\n") == 2


def test_ctrl_c_during_up_stops_bootstraps_and_marks_nodes_interrupted(cluster):
    cluster.document["setup_commands"] = [
        "touch $CORRAL_NODE_DIR/setup-began; sleep 300"]
    cluster.write()
    running = Background("up", str(cluster.path))
    try:
        wait_for(lambda: len([path for path in cluster.node_dirs()
                              if (path / "setup-began").exists()]) == 2,
                 what="both nodes in setup")
        code = running.interrupt_and_wait()
    finally:
        running.kill()
    err = "".join(running.err)
    assert code == 130 and "Interrupted." in err and "Traceback" not in err
    wait_for(lambda: not processes_of(cluster.nodes_dir), what="setup commands to end")
    status = cluster.run("status")
    assert status.stdout.count("update-failed") == 2, status.stdout


def test_latin1_setup_output_does_not_fail_the_node(cluster):
    cluster.document["setup_commands"] = [r'printf "caf\xe9\n"']
    cluster.write()
    up = cluster.run("up")
    assert up.returncode == 0, up.stdout + up.stderr


def test_read_only_commands_leave_no_state_for_an_unknown_cluster(cluster, corral_home):
    state = corral_home / "clusters" / cluster.name
    assert cluster.run("up", "--dry-run").returncode == 0
    assert cluster.run("status").returncode in (0, 1)
    assert cluster.run("down", "-y").returncode in (0, 1)
    assert not state.exists(), sorted(str(path) for path in state.rglob("*"))
