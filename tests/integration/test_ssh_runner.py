"""SSHRunner against real sshd hosts (tests/testhosts.py): commands, environment, timeouts,
logs, reachability, proxy commands, pinned host keys, pooling, concurrency, PTY shells."""
from __future__ import annotations

import os
import shlex
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from launcher import paths
from launcher.ssh import pool as ssh_pool
from launcher.errors import CommandError, HostKeyMismatchError, SSHUnreachableError
from launcher.ssh.runner import SSHRunner, env_prefix
from tests import testhosts
from tests.helpers import wait_for

pytestmark = pytest.mark.netns
CLUSTER = "sshtest"


def make_runner(test_hosts, host, **kwargs) -> SSHRunner:
    return SSHRunner(host.ip, user=test_hosts.ssh_user,
                     private_key_path=test_hosts.ssh_private_key, cluster_name=CLUSTER,
                     **kwargs)


@pytest.mark.timeout(60)
def test_run_returns_exit_code_stdout_and_stderr(test_hosts):
    host = test_hosts.hosts[1]
    runner = make_runner(test_hosts, host)
    result = runner.run("echo out; echo err >&2; hostname; exit 3")
    assert result.exit_code == 3 and not result.ok
    assert result.stdout == f"out\n{host.name}\n"
    assert result.stderr == "err\n"
    assert result.host == host.ip and result.command.startswith("echo out")
    assert runner.run("true").ok
    with pytest.raises(CommandError) as raised:
        runner.run("echo boom >&2; exit 5", check=True)
    assert raised.value.result.exit_code == 5 and "boom" in str(raised.value)


@pytest.mark.timeout(60)
def test_environment_is_explicit_and_quoted(test_hosts):
    runner = make_runner(test_hosts, test_hosts.hosts[0],
                         base_env={"CORRAL_CLUSTER_NAME": "c1", "CORRAL_NODE_ID": "base"})
    tricky = "a b 'c' \"d\" $HOME `x` \\ ;|&\nline2"
    result = runner.run('printf "%s|%s|%s" "$CORRAL_CLUSTER_NAME" "$CORRAL_NODE_ID" "$TRICKY"',
                        env={"CORRAL_NODE_ID": "n-1", "TRICKY": tricky})
    assert result.stdout == f"c1|n-1|{tricky}"
    # Not a login shell, no stdin: a command reading stdin sees EOF at once.
    assert runner.run("cat; echo done").stdout == "done\n"
    with pytest.raises(ValueError):
        env_prefix({"BAD-NAME": "x"})


@pytest.mark.timeout(60)
def test_timeout_gives_124_and_kills_the_remote_command(test_hosts):
    host = test_hosts.hosts[2]
    runner = make_runner(test_hosts, host)
    result = runner.run("echo started; sleep 300; echo never", timeout_s=1)
    assert result.exit_code == 124
    assert "started" in result.stdout and "never" not in result.stdout
    assert "timed out" in result.stderr
    wait_for(lambda: not [cmd for _, cmd in host.processes() if "sleep 300" in cmd],
             what="the timed-out command to be gone")
    assert runner.run("echo still fine").stdout == "still fine\n"


@pytest.mark.timeout(60)
def test_background_process_holding_output_does_not_hang_run(test_hosts):
    host = test_hosts.hosts[0]
    result = make_runner(test_hosts, host).run("sleep 120 & echo launched")
    assert result.ok and result.stdout == "launched\n"
    assert any("sleep 120" in cmd for _, cmd in host.processes())


@pytest.mark.timeout(60)
def test_output_is_streamed_to_the_log_file(test_hosts, tmp_path):
    host = test_hosts.hosts[3]
    log_path = tmp_path / "logs" / "node.log"
    runner = make_runner(test_hosts, host, log_path=str(log_path))
    cmd = "echo first; while [ ! -f /tmp/go ]; do sleep 0.05; done; echo second >&2"
    results = []
    worker = threading.Thread(target=lambda: results.append(runner.run(cmd)))
    worker.start()
    try:
        wait_for(lambda: log_path.exists() and "first" in log_path.read_text(),
                 what="streamed output in the log")
        assert "second\n" not in log_path.read_text()
    finally:
        host.run("touch /tmp/go")
        worker.join(30)
    assert results and results[0].ok
    text = log_path.read_text()
    assert text.startswith(f"$ {cmd}\n") and "first\n" in text and "second\n" in text
    assert "[exit 0 after" in text
    assert (log_path.stat().st_mode & 0o777) == 0o600


@pytest.mark.timeout(30)
@pytest.mark.parametrize("which", ["no_host_in_slot", "outside_slot"])
def test_wait_ready_on_unreachable_host_names_it(test_hosts, which):
    address = test_hosts.unreachable_ip if which == "no_host_in_slot" else "198.18.0.250"
    runner = SSHRunner(address, user="root", private_key_path=test_hosts.ssh_private_key,
                       cluster_name=CLUSTER, timeout_s=1.5)
    with pytest.raises(SSHUnreachableError) as raised:
        runner.wait_ready()
    assert raised.value.host == address
    assert address in str(raised.value) and raised.value.last_error
    assert raised.value.timeout_s == 1.5


@pytest.mark.timeout(30)
def test_wait_ready_on_ready_host_and_run_after_it(test_hosts):
    runner = make_runner(test_hosts, test_hosts.hosts[0], timeout_s=10)
    runner.wait_ready()
    runner.wait_ready(0.5)  # already connected: returns at once from the pool
    assert runner.run("echo ok").stdout == "ok\n"


@pytest.mark.timeout(60)
def test_wait_ready_retries_until_the_host_comes_up(test_hosts):
    host = test_hosts.hosts[1]
    test_hosts.network.stop_host(host)  # sshd down: connections are refused
    runner = make_runner(test_hosts, host)
    with pytest.raises(SSHUnreachableError) as raised:
        runner.wait_ready(0.3)
    assert "refused" in raised.value.last_error.lower()
    starter = threading.Timer(0.5, lambda: test_hosts.restart_host(host))
    starter.start()
    try:
        runner.wait_ready(30)
    finally:
        starter.join()
    assert runner.run("hostname").stdout.strip() == host.name


PROXY_SOURCE = """
import socket, sys, threading
marker, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
open(marker, "a").write(f"{host}:{port}\\n")
sock = socket.create_connection((host, port))
def pump_in():
    while True:
        data = sys.stdin.buffer.read1(65536)
        if not data:
            sock.shutdown(socket.SHUT_WR)
            return
        sock.sendall(data)
threading.Thread(target=pump_in, daemon=True).start()
while True:
    data = sock.recv(65536)
    if not data:
        break
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()
"""


@pytest.mark.timeout(60)
def test_proxy_command_substitutes_host_and_port(test_hosts, tmp_path):
    marker = tmp_path / "proxy-used"
    script = tmp_path / "relay.py"
    script.write_text(PROXY_SOURCE)
    host = test_hosts.hosts[1]
    proxy = f"{shlex.quote(sys.executable)} {script} {marker} %h %p"
    runner = make_runner(test_hosts, host, proxy_command=proxy)
    assert runner.spec.proxy_argv().endswith(f"{host.ip} 22")
    runner.wait_ready(20)
    assert runner.run("hostname").stdout.strip() == host.name
    assert marker.read_text().splitlines() == [f"{host.ip}:22"]


@pytest.mark.timeout(90)
def test_host_key_is_pinned_and_a_changed_key_refused(test_hosts):
    host = test_hosts.hosts[2]
    runner = make_runner(test_hosts, host)
    assert runner.run("true").ok
    known_hosts = paths.known_hosts_path(CLUSTER)
    lines = known_hosts.read_text().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{host.ip} ssh-ed25519 ")
    assert (known_hosts.stat().st_mode & 0o777) == 0o600

    test_hosts.restart_host(host)  # same key: still accepted, pool reconnects by itself
    assert runner.run("echo again").stdout == "again\n"

    test_hosts.restart_host(host, new_host_key=True)
    for attempt in (runner.run, lambda _cmd: make_runner(test_hosts, host).wait_ready(10)):
        ssh_pool.close_all()
        with pytest.raises(HostKeyMismatchError) as raised:
            attempt("true")
        message = str(raised.value)
        assert host.ip in message and str(known_hosts) in message
        assert raised.value.host == host.ip
    assert known_hosts.read_text().splitlines() == lines  # the pin is not overwritten


@pytest.mark.timeout(60)
def test_runs_share_one_pooled_connection(test_hosts):
    host = test_hosts.hosts[0]
    runners = [make_runner(test_hosts, host) for _ in range(5)]
    for index in range(20):
        assert runners[index % 5].run(f"echo {index}").stdout == f"{index}\n"
    assert len(ssh_pool.POOL) == 1
    established = host.run(
        "awk 'NR > 1 && $2 ~ /:0016$/ && $4 == \"01\"' /proc/net/tcp | wc -l").stdout
    assert int(established) == 1
    for runner in runners[:4]:
        runner.close()
        runner.close()  # twice is harmless
    assert len(ssh_pool.POOL) == 1  # runners[4] still holds it
    runners[4].close()
    assert len(ssh_pool.POOL) == 0
    assert runners[1].run("echo reconnected").ok


@pytest.mark.timeout(60)
def test_closing_one_runner_does_not_cut_anothers_command(test_hosts):
    host = test_hosts.hosts[2]
    busy, idle = make_runner(test_hosts, host), make_runner(test_hosts, host)
    results = []
    worker = threading.Thread(target=lambda: results.append(
        busy.run("while [ ! -f /tmp/go ]; do sleep 0.05; done; echo finished")))
    worker.start()
    wait_for(lambda: any("sleep" in cmd for _, cmd in host.processes()),
             what="the command to start")
    idle.close()
    host.run("touch /tmp/go")
    worker.join(30)
    assert results and results[0].ok and results[0].stdout == "finished\n"


@pytest.mark.timeout(120)
def test_twenty_threads_on_four_hosts(test_hosts):
    hosts = test_hosts.hosts

    def job(index: int):
        host = hosts[index % len(hosts)]
        runner = make_runner(test_hosts, host)
        outputs = []
        for round_number in range(3):
            result = runner.run(f'echo "$JOB $ROUND $(hostname)"; echo e$JOB >&2',
                                env={"JOB": str(index), "ROUND": str(round_number)})
            outputs.append((result.exit_code, result.stdout, result.stderr))
        return host.name, outputs

    with ThreadPoolExecutor(max_workers=20) as pool:
        results = list(pool.map(job, range(20)))
    for index, (name, outputs) in enumerate(results):
        assert outputs == [(0, f"{index} {round_number} {name}\n", f"e{index}\n")
                           for round_number in range(3)]
    assert len(ssh_pool.POOL) == len(hosts)
    pinned = paths.known_hosts_path(CLUSTER).read_text().splitlines()
    assert sorted(line.split()[0] for line in pinned) == sorted(host.ip for host in hosts)


@pytest.mark.timeout(60)
def test_more_hosts_on_demand(test_hosts):
    extra = test_hosts.more(2)
    assert len(extra) == 2 and test_hosts.more(1) == extra[:1]
    base_ips = {host.ip for host in test_hosts.hosts}
    assert len({host.ip for host in extra} | base_ips) == 6
    for host in extra:
        assert make_runner(test_hosts, host).run("hostname").stdout.strip() == host.name


SHELL_DRIVER = """
import sys
from launcher.ssh.runner import SSHRunner
runner = SSHRunner(sys.argv[1], user="root", private_key_path=sys.argv[2], cluster_name="pty")
sys.exit(runner.interactive_shell())
"""


@pytest.mark.timeout(60)
def test_interactive_shell_with_pexpect(test_hosts, tmp_path):
    pexpect = pytest.importorskip("pexpect")
    host = test_hosts.hosts[1]
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]),
               TERM="xterm")
    child = pexpect.spawn(sys.executable, ["-c", SHELL_DRIVER, host.ip,
                                           test_hosts.ssh_private_key],
                          env=env, dimensions=(30, 100), timeout=20)
    try:
        child.expect(r"[#$] ")  # the prompt: bash drops what is typed before it starts
        child.sendline("stty size; echo h''i; tty")
        child.expect("30 100")
        child.expect("hi")
        child.expect("/dev/pts/")
        child.setwinsize(40, 120)  # SIGWINCH: forwarded to the remote PTY
        child.sendline("sleep 0.3; stty size")
        child.expect("40 120")
        child.sendline("echo bye; exit 7")
        child.expect("bye")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 7


@pytest.mark.timeout(60)
def test_interactive_command_exit_code(test_hosts, tmp_path):
    pexpect = pytest.importorskip("pexpect")
    host = test_hosts.hosts[0]
    driver = SHELL_DRIVER.replace("interactive_shell()", "interactive_shell('read x; "
                                  "echo got=$x; exit 3')")
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    child = pexpect.spawn(sys.executable, ["-c", driver, host.ip, test_hosts.ssh_private_key],
                          env=env, timeout=20)
    try:
        child.sendline("value42")
        child.expect("got=value42")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 3


@pytest.mark.timeout(60)
def test_fixture_reset_kills_processes_and_wipes_tmp(test_hosts):
    host = test_hosts.hosts[3]
    runner = make_runner(test_hosts, host)
    runner.run("mkdir -p /tmp/corral && echo x > /tmp/corral/f; "
               "setsid sleep 200 >/dev/null 2>&1 < /dev/null &")
    # the shell returns once it has forked the background job, maybe before that job
    # has become `sleep`
    wait_for(lambda: any("sleep 200" in cmd for _, cmd in host.processes()), 10,
             "the background sleep on the host")
    assert host.run("cat /tmp/corral/f").stdout == "x\n"
    other = test_hosts.hosts[0]
    assert other.run("ls /tmp").stdout == ""  # /tmp is per host
    test_hosts.network.reset_hosts()
    assert host.processes() == []
    assert host.run("ls -A /tmp").stdout == ""
    assert make_runner(test_hosts, host).run("echo alive").ok


@pytest.mark.timeout(60)
def test_host_network_teardown_leaves_nothing():
    reason = testhosts.missing_requirements()
    if reason:
        pytest.skip(reason)
    with testhosts.host_network(1) as network:
        host = network.all_hosts[0]
        assert host.run("hostname").stdout.strip() == host.name
        sleeper = subprocess.run(
            ["nsenter", "-t", str(host.init_pid), "-n", "-m", "-p", "-u", "--", "sh", "-c",
             "setsid sleep 300 >/dev/null 2>&1 < /dev/null & echo started"],
            capture_output=True, text=True, timeout=20)
        assert sleeper.stdout.strip() == "started"
        pids = [pid for pid, _ in host.processes()] + [host.init_pid, host.launcher_pid]
        names = (network.bridge, host.netns)
        slot_dir = network.directory
    netns_list = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    routes = subprocess.run(["ip", "route", "show", "table", "all"], capture_output=True,
                            text=True).stdout
    assert names[1] not in netns_list
    assert f" {names[0]}:" not in links
    assert f"crv{os.getpid() % 10000}s{network.slot}h" not in links
    assert f"metric {1000 + network.slot}" not in routes
    assert not slot_dir.exists()
    left = {pid: Path(f"/proc/{pid}/stat").read_text() for pid in pids
            if Path(f"/proc/{pid}").exists()}
    assert left == {}


@pytest.mark.timeout(60)
def test_host_dying_mid_command_gives_255_and_the_runner_recovers(test_hosts):
    host = test_hosts.hosts[1]
    runner = make_runner(test_hosts, host)
    results = []
    said_up = threading.Event()  # the output reached us: the host may die now
    worker = threading.Thread(target=lambda: results.append(runner.run(
        "echo up; sleep 60", on_output=lambda stream, line: said_up.set())))
    worker.start()
    wait_for(said_up.is_set, what="the command's first line")
    test_hosts.restart_host(host)
    worker.join(30)
    assert results and results[0].exit_code == 255
    assert results[0].stdout == "up\n" and results[0].stderr, results[0]
    assert runner.run("echo back").stdout == "back\n"


@pytest.mark.timeout(60)
def test_leftovers_of_a_dead_session_are_cleaned_by_the_next():
    reason = testhosts.missing_requirements()
    if reason:
        pytest.skip(reason)
    network = testhosts.open_network(1)
    host = network.all_hosts[0]
    try:
        # The session "dies": its slot lock is released, nothing is torn down.
        os.close(network._lock_fd)
        network._closed = True
        slot, fd = testhosts._take_slot()
        os.close(fd)
        assert host.netns not in subprocess.run(["ip", "netns", "list"], capture_output=True,
                                                text=True).stdout
        links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
        assert f" {network.bridge}:" not in links
        assert not network.directory.exists()
        stat_file = Path(f"/proc/{host.init_pid}/stat")
        assert not stat_file.exists() or stat_file.read_text().split(") ")[1][0] == "Z"
    finally:
        for process in network._processes.values():
            process.kill()
            process.wait(timeout=10)
        network._closed = False
        network._lock_fd = os.open("/dev/null", os.O_RDONLY)
        network.close()  # idempotent when the cleanup above already ran


@pytest.mark.timeout(90)
def test_concurrent_commands_beyond_sshd_max_sessions_wait_their_turn(test_hosts):
    host = test_hosts.hosts[3]
    test_hosts.restart_host(host, sshd_options={"MaxSessions": "3"})  # below our own cap
    runner = make_runner(test_hosts, host)
    runner.wait_ready(10)
    source = Path(test_hosts.network.directory)  # any small local tree will do

    def job(index: int):
        if index % 5 == 0:
            return runner.put(str(source / "client_ed25519.pub"), f"/tmp/put{index}")
        return runner.run(f"sleep 0.2; echo {index}")

    with ThreadPoolExecutor(max_workers=25) as pool:
        results = list(pool.map(job, range(25)))
    for index, result in enumerate(results):
        if index % 5 == 0:
            assert result == 1
        else:
            assert (result.exit_code, result.stdout) == (0, f"{index}\n"), result.stderr
    assert len(ssh_pool.POOL) == 1  # one connection throughout, never dropped


@pytest.mark.timeout(60)
def test_a_forked_child_gets_its_own_connections(test_hosts):
    host = test_hosts.hosts[0]
    runner = make_runner(test_hosts, host)
    assert runner.run("true").ok
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: the parent's pooled transport must not be used here
        code = 1
        try:
            code = 0 if (len(ssh_pool.POOL) == 0
                         and runner.run("echo child").stdout == "child\n") else 3
        finally:
            os.write(write_end, bytes([code]))
            os._exit(0)
    os.close(write_end)
    try:
        assert os.read(read_end, 1) == b"\x00"
    finally:
        os.close(read_end)
        os.waitpid(pid, 0)
    assert runner.run("echo parent").stdout == "parent\n"


@pytest.mark.timeout(90)
def test_host_keys_pinned_under_an_alias_follow_the_node_not_the_ip(test_hosts):
    """Clouds reuse private IPs: a new machine (another node id) on an old IP is a new
    host, while the same node id with another key is still refused."""
    host = test_hosts.hosts[3]
    known_hosts = paths.known_hosts_path(CLUSTER)
    first = make_runner(test_hosts, host, host_key_alias="i-first")
    assert first.run("echo one").stdout == "one\n"
    first.close()
    test_hosts.restart_host(host, new_host_key=True)  # same IP, another machine
    ssh_pool.close_all()
    second = make_runner(test_hosts, host, host_key_alias="i-second")
    assert second.run("echo two").stdout == "two\n"
    second.close()
    names = [line.split()[0] for line in known_hosts.read_text().splitlines()]
    assert names == ["i-first", "i-second"]  # nothing pinned under the IP
    ssh_pool.close_all()
    again = make_runner(test_hosts, host, host_key_alias="i-first")
    with pytest.raises(HostKeyMismatchError) as raised:
        again.run("true")
    assert "i-first" in str(raised.value)
    again.close()


@pytest.mark.timeout(60)
def test_output_streams_and_cancel_stops_the_remote_process_group(test_hosts):
    host = test_hosts.hosts[1]
    runner = make_runner(test_hosts, host)
    cancel = threading.Event()
    lines: list[tuple[str, str]] = []

    def on_output(stream, line):
        lines.append((stream, line))
        # Only within one stream is the order kept: cancel once both streams' lines
        # arrived while the command still runs.
        if {("stdout", "ready"), ("stderr", "started")} <= set(lines):
            cancel.set()
    result = runner.run("echo caf$'\\xe9' >&2; echo ready; sleep 301 & echo started >&2;"
                        " wait", on_output=on_output, cancel=cancel)
    assert result.exit_code == 130 and "interrupted" in result.stderr
    assert lines[-1] == ("stderr", "interrupted (channel closed)")
    assert sorted(lines[:-1]) == [("stderr", "caf\ufffd"), ("stderr", "started"),
                                  ("stdout", "ready")]  # no blank line before the note
    assert "@@corral-pid" not in result.stderr  # the group header is not output
    wait_for(lambda: not [cmd for _, cmd in host.processes() if "sleep 301" in cmd],
             what="the interrupted command's child to be gone")
    assert runner.run("echo still fine").stdout == "still fine\n"
    runner.close()


@pytest.mark.timeout(60)
def test_a_command_killed_by_a_signal_is_named_with_128_plus_n(test_hosts):
    runner = make_runner(test_hosts, test_hosts.hosts[0])
    result = runner.run("kill -TERM $$")
    assert result.exit_code == 143 and result.signal_name == "SIGTERM"
    assert "killed by signal SIGTERM" in result.stderr
    plain = runner.run("exit 143")
    assert plain.exit_code == 143 and plain.signal_name is None
    runner.close()
