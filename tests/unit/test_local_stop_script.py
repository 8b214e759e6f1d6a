"""The script the `local` provider runs on a host to stop our processes there, run here
through a LocalRunner: it stops the node's processes by PID, spares others, and removes
the node directory."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from launcher.bootstrap.command_runner import LocalRunner
from launcher.providers.local import stop_script
from launcher.providers.node_processes import is_alive
from tests.helpers import wait_for

pytestmark = pytest.mark.timeout(60)

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_stop_script_kills_tagged_daemons_and_spares_others(tmp_path):
    node_dir = str(tmp_path / "corral")
    os.makedirs(node_dir)
    node = LocalRunner(workdir=node_dir, env={"CORRAL_NODE_DIR": node_dir})
    node.run("( sleep 300 >/dev/null 2>&1 </dev/null & echo $! > daemon )", check=True)
    daemon = int(open(os.path.join(node_dir, "daemon")).read())
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    try:
        # The script itself runs with the node's environment, as an SSH session would.
        result = node.run(stop_script(node_dir, 2.0), timeout_s=30)
        assert result.ok, result.stderr
        wait_for(lambda: not is_alive(daemon), 10, "the node's daemon to be stopped",
                 interval_s=0.02)
        assert bystander.poll() is None
        assert not os.path.exists(node_dir)
    finally:
        bystander.kill()
        bystander.wait()


def test_pid_file_processes_are_remembered_across_an_orderly_stop(tmp_path):
    """`corral stop` may delete pid files it judges stale; what they named before it ran is
    still stopped (and only that: same pid AND same start time)."""
    node_dir = str(tmp_path / "corral")
    os.makedirs(os.path.join(node_dir, "session"))
    untagged = subprocess.Popen(["sleep", "300"], env={"PATH": os.environ["PATH"]},
                                start_new_session=True)
    try:
        with open(os.path.join(node_dir, "session", "agent.pid"), "w") as handle:
            handle.write(f"{untagged.pid}\n")
        first = f"rm -f {node_dir}/session/agent.pid"
        done = subprocess.run([sys.executable, "-m", "launcher.providers.node_processes",
                               node_dir, "2", first], capture_output=True, text=True,
                              timeout=30, env=dict(os.environ, PYTHONPATH=REPO_ROOT))
        assert done.returncode == 0, done.stderr
        assert untagged.wait(timeout=10) is not None
        assert not os.path.exists(os.path.join(node_dir, "session", "agent.pid"))
    finally:
        if untagged.poll() is None:
            untagged.kill()
            untagged.wait()
