"""The command session (launcher.ssh.shell) on real sshd hosts whose ~/.bashrc is slow and
counts its runs: the user's shell starts once per connection, commands still see what
it set up, run several at once, stop (with their process group) on timeout and cancel,
stream their output; a killed session is replaced; a node without python3 falls back to
one channel per command."""
from __future__ import annotations

import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from launcher.ship.layout import NodeShellValue
from launcher.ssh.runner import SSHRunner
from tests.helpers import wait_for

pytestmark = pytest.mark.netns
CLUSTER = "shelltest"
RC_COUNT = "/tmp/rc-runs"
# Like a user's pyenv/conda init: slow, exports a variable, defines a function; it also
# prints (an rc may), which must not disturb anything.
SLOW_RC = f"""echo "$$" >> {RC_COUNT}
export FROM_RC=from-rc
rc_function() {{ echo "function from rc"; }}
sleep 0.3
echo "rc says hello"
"""


def rc_host(test_hosts, index: int, bashrc: str = SLOW_RC):
    host = test_hosts.hosts[index]
    test_hosts.network.restart_host(host, bashrc=bashrc)
    if host.run("cat /root/.bashrc").stdout != bashrc:
        pytest.skip("this machine has no /root/.bashrc for the test hosts to mount theirs "
                    "over")
    return host


def rc_runs(host) -> int:
    return len(host.run(f"cat {RC_COUNT} 2>/dev/null").stdout.split())


def servers(host) -> list[int]:
    """The host's command servers (pids in its namespace; TestHost.processes() leaves
    them out, as part of the SSH session). The pattern does not match pgrep's shell."""
    found = host.run("pgrep -f -- '-c import sys;exec.* corral-she[l]l '")
    return sorted(int(pid) for pid in found.stdout.split())


def make_runner(test_hosts, host, **kwargs) -> SSHRunner:
    return SSHRunner(host.ip, user=test_hosts.ssh_user,
                     private_key_path=test_hosts.ssh_private_key, cluster_name=CLUSTER,
                     **kwargs)


@pytest.mark.timeout(90)
def test_the_rc_runs_once_and_every_command_sees_what_it_set_up(test_hosts):
    host = rc_host(test_hosts, 0)
    runner = make_runner(test_hosts, host, base_env={"BASE": "b"})
    try:
        for index in range(6):
            result = runner.run(f'echo "{index} $FROM_RC $BASE"; rc_function; echo "$P"',
                                env={"P": NodeShellValue("$HOME/x:$FROM_RC")})
            assert (result.exit_code, result.stderr) == (0, ""), result
            assert result.stdout == f"{index} from-rc b\nfunction from rc\n/root/x:from-rc\n"
        # file sync listings use the session too
        assert runner.put(str(test_hosts.network.directory / "client_ed25519.pub"),
                          "/tmp/copied.pub") == 1
        assert runner.run("cat /tmp/copied.pub").ok
        assert rc_runs(host) == 1
        assert len(servers(host)) == 1
        # A command's own `bash -c` does not source the rc again either.
        assert runner.run("bash -c 'echo nested $FROM_RC'").stdout == "nested from-rc\n"
        assert rc_runs(host) == 1
    finally:
        runner.close()
    wait_for(lambda: not servers(host), what="the server to end with its connection")


@pytest.mark.timeout(90)
def test_a_setup_command_that_edits_the_rc_is_seen_by_the_next_command(test_hosts):
    host = rc_host(test_hosts, 1)
    runner = make_runner(test_hosts, host)
    try:
        assert runner.run("echo \"[$LATER]\"").stdout == "[]\n"
        assert runner.run("echo 'export LATER=later' >> ~/.bashrc").ok
        assert runner.run("echo \"[$LATER]\"").stdout == "[later]\n"
        assert rc_runs(host) == 2  # a fresh session, once
        wait_for(lambda: len(servers(host)) == 1, what="the old server to exit")
    finally:
        runner.close()


@pytest.mark.timeout(90)
def test_commands_run_concurrently_on_one_session(test_hosts):
    host = rc_host(test_hosts, 2)
    runner = make_runner(test_hosts, host)
    count = 12
    # Each command waits until all have started: only concurrent commands can finish.
    command = ("touch /tmp/started-$I; "
               f"while [ $(ls /tmp | grep -c started-) -lt {count} ]; do sleep 0.05; done; "
               "echo $I; echo e$I >&2")
    try:
        with ThreadPoolExecutor(max_workers=count) as pool:
            results = list(pool.map(
                lambda index: runner.run(command, env={"I": str(index)}, timeout_s=60),
                range(count)))
        for index, result in enumerate(results):
            assert (result.exit_code, result.stdout, result.stderr) == \
                (0, f"{index}\n", f"e{index}\n"), result
        assert rc_runs(host) == 1 and len(servers(host)) == 1
    finally:
        runner.close()


@pytest.mark.timeout(90)
def test_timeout_kills_the_process_group_even_when_it_ignores_sigterm(test_hosts):
    host = rc_host(test_hosts, 3)
    runner = make_runner(test_hosts, host)
    try:
        result = runner.run("echo started; sleep 301 & sleep 302; echo never", timeout_s=1)
        assert result.exit_code == 124 and "timed out after 1 s" in result.stderr
        assert result.stdout == "started\n"
        wait_for(lambda: not [cmd for _, cmd in host.processes() if "sleep 30" in cmd],
                 what="the timed-out command's group to be gone")
        stubborn = runner.run("trap '' TERM; sleep 303 & sleep 304", timeout_s=1)
        assert stubborn.exit_code == 124  # SIGKILL 5 s after the SIGTERM it ignored
        wait_for(lambda: not [cmd for _, cmd in host.processes() if "sleep 30" in cmd],
                 what="the stubborn group to be killed")
        assert runner.run("echo fine").stdout == "fine\n"
        assert rc_runs(host) == 1
    finally:
        runner.close()


@pytest.mark.timeout(90)
def test_output_streams_and_cancel_stops_the_group_but_not_the_session(test_hosts, tmp_path):
    host = rc_host(test_hosts, 0)
    log_path = tmp_path / "node.log"
    runner = make_runner(test_hosts, host, log_path=str(log_path))
    cancel = threading.Event()
    lines: list[tuple[str, str]] = []
    first_seen = threading.Event()

    def on_output(stream, line):
        lines.append((stream, line))
        if line == "first":
            first_seen.set()
        if {("stdout", "second"), ("stderr", "in the background")} <= set(lines):
            cancel.set()
    results = []
    command = ("echo first; while [ ! -f /tmp/go ]; do sleep 0.05; done; echo second; "
               "(sleep 305; echo never) & echo 'in the background' >&2; wait")
    worker = threading.Thread(target=lambda: results.append(
        runner.run(command, on_output=on_output, cancel=cancel)))
    worker.start()
    try:
        wait_for(first_seen.is_set, what="the first line, streamed while the command runs")
        assert "first\n" in log_path.read_text() and not results
        host.run("touch /tmp/go")
        worker.join(30)
        assert results and results[0].exit_code == 130
        assert lines[-1] == ("stderr", "interrupted (channel closed)")
        assert "never" not in results[0].stdout
        wait_for(lambda: not [cmd for _, cmd in host.processes() if "sleep 305" in cmd],
                 what="the cancelled command's group to be gone")
        before = servers(host)
        assert runner.run("echo after").stdout == "after\n"
        assert servers(host) == before and rc_runs(host) == 1
        assert "[exit 130 after" in log_path.read_text()
    finally:
        host.run("touch /tmp/go")
        worker.join(30)
        runner.close()


@pytest.mark.timeout(90)
def test_a_killed_session_is_replaced_and_its_running_command_ends_255(test_hosts):
    host = rc_host(test_hosts, 1)
    runner = make_runner(test_hosts, host)
    try:
        assert runner.run("true").ok
        pids = servers(host)
        assert len(pids) == 1
        results, said_up = [], threading.Event()
        worker = threading.Thread(target=lambda: results.append(runner.run(
            "echo up; sleep 306", on_output=lambda stream, line: said_up.set())))
        worker.start()
        wait_for(said_up.is_set, what="the command's first line")
        host.run(f"kill -KILL {pids[0]}")  # the server this test started, by pid
        worker.join(30)
        assert results and results[0].exit_code == 255
        assert results[0].stdout == "up\n" and "session" in results[0].stderr
        assert runner.run("echo $FROM_RC").stdout == "from-rc\n"
        assert rc_runs(host) == 2
        new = servers(host)
        assert len(new) == 1 and new != pids
    finally:
        runner.close()


@pytest.mark.timeout(90)
def test_sessions_are_per_connection_and_shared_by_runners(test_hosts):
    host = rc_host(test_hosts, 2)
    runners = [make_runner(test_hosts, host) for _ in range(3)]
    try:
        for index in range(9):
            assert runners[index % 3].run(f"echo {index}").stdout == f"{index}\n"
        assert rc_runs(host) == 1 and len(servers(host)) == 1
    finally:
        for runner in runners:
            runner.close()
    wait_for(lambda: not servers(host), what="the server to end with the last holder")


@pytest.mark.timeout(90)
def test_a_node_without_python3_runs_each_command_on_its_own_channel(test_hosts):
    host = rc_host(test_hosts, 3, SLOW_RC.replace('echo "rc says hello"\n', ""))
    pythons = sorted({os.path.realpath(sys.executable), os.path.realpath("/usr/bin/python3")})
    hidden = host.run(" && ".join(f"mount --bind /dev/null {path}" for path in pythons))
    assert hidden.returncode == 0, hidden.stderr
    runner = make_runner(test_hosts, host)
    try:
        for index in range(3):
            result = runner.run(f'echo "{index} $FROM_RC"; exit 4')
            assert (result.exit_code, result.stdout) == (4, f"{index} from-rc\n"), result
        assert not servers(host)
        assert rc_runs(host) >= 3  # the shell starts for each command again
        assert runner.run("sleep 300", timeout_s=1).exit_code == 124
    finally:
        runner.close()
    # (the fixture's reset restarts this host: its mounts go with its namespace)


@pytest.mark.timeout(60)
def test_the_command_session_can_be_turned_off(test_hosts, monkeypatch):
    host = rc_host(test_hosts, 2, SLOW_RC.replace('echo "rc says hello"\n', ""))
    monkeypatch.setenv("CORRAL_SSH_COMMAND_SESSION", "0")
    runner = make_runner(test_hosts, host)
    try:
        assert runner.run("echo $FROM_RC").stdout == "from-rc\n"
        assert runner.run("echo again").stdout == "again\n"
        assert not servers(host) and rc_runs(host) >= 2
    finally:
        runner.close()
