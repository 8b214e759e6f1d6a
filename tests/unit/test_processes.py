"""runtime.node.processes (psutil) with real processes: what alive means (a zombie is not),
identity by PID and start time (real PID re-use, in a private PID namespace), the
environment tag, children, the caller's ancestors, stopping; the `local` provider's stop
script under corral's node environment's Python and under one without psutil; and that
the CLI and a driver neither read /proc themselves nor need it (a child with an empty
/proc, and an audit hook that reports every /proc access not made through psutil)."""
from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import psutil
import pytest

from launcher.bootstrap.command_runner import LocalRunner
from launcher.providers.local import stop_script
from runtime.node import processes
from tests.helpers import wait_for

pytestmark = pytest.mark.timeout(60)

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SLEEPER = [sys.executable, "-c", "import time; time.sleep(60)"]
IGNORES_TERM = [sys.executable, "-c", textwrap.dedent("""\
    import signal, sys, time
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    print("ready", flush=True)
    time.sleep(60)""")]


@pytest.fixture
def spawned():
    """Popen(...) that is killed and reaped after the test, whatever happens."""
    made = []

    def spawn(argv, **kwargs):
        made.append(subprocess.Popen(argv, **kwargs))
        return made[-1]
    yield spawn
    for proc in made:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


def _zombie(spawn, **kwargs) -> int:
    """A child of ours that exited and is not reaped yet."""
    proc = spawn([sys.executable, "-c", "pass"], **kwargs)
    wait_for(lambda: psutil.Process(proc.pid).status() == psutil.STATUS_ZOMBIE, 10,
             "the child to exit")
    return proc.pid


def test_alive_means_running_and_not_a_zombie(spawned):
    running = spawned(SLEEPER)
    assert processes.is_alive(running.pid)
    zombie = _zombie(spawned)
    assert not processes.is_alive(zombie)
    os.waitpid(zombie, 0)
    assert not processes.is_alive(zombie)
    assert not processes.is_alive(0) and not processes.is_alive(-1)


def test_start_time_is_now_and_pid_files_written_before_it_are_refused(spawned):
    before = time.time()
    proc = spawned(SLEEPER)
    started = processes.start_time_s(proc.pid)
    assert started is not None and before - 2 <= started <= time.time() + 2
    assert processes.started_by(proc.pid, time.time())
    assert not processes.started_by(proc.pid, before - 30)  # file older than the process
    assert processes.still_same(processes.remember([proc.pid])) == {proc.pid}
    assert processes.still_same({proc.pid: started - 5}) == set()
    proc.kill()
    proc.wait()
    assert processes.start_time_s(proc.pid) is None


def test_environment_and_argv_are_read_and_tagged_processes_found_in_one_pass(spawned,
                                                                               tmp_path):
    dir_a, dir_b = str(tmp_path / "a"), str(tmp_path / "b")
    env = lambda node_dir: dict(os.environ, CORRAL_NODE_DIR=node_dir)  # noqa: E731
    tagged_a = spawned([*SLEEPER, "marker-a"], env=env(dir_a))
    tagged_b = spawned(SLEEPER, env=env(dir_b))
    untagged = spawned(SLEEPER)
    _zombie(spawned, env=env(dir_a))           # exited: not a process of the node any more
    assert processes.environ(tagged_a.pid)["CORRAL_NODE_DIR"] == dir_a
    assert processes.cmdline(tagged_a.pid)[-1] == "marker-a"
    found = processes.pids_with_env("CORRAL_NODE_DIR", [dir_a, dir_b, str(tmp_path)])
    assert found == {dir_a: {tagged_a.pid}, dir_b: {tagged_b.pid}, str(tmp_path): set()}
    assert untagged.poll() is None


def test_children_and_descendants(spawned):
    parent = spawned([sys.executable, "-c", textwrap.dedent("""\
        import subprocess, sys, time
        child = subprocess.Popen(["sleep", "60"])
        print(child.pid, flush=True)
        time.sleep(60)""")], stdout=subprocess.PIPE, text=True)
    grandchild = int(parent.stdout.readline())
    try:
        assert processes.children(parent.pid) == [grandchild]
        assert parent.pid in processes.children(os.getpid())
        assert {parent.pid, grandchild} <= set(processes.children(os.getpid(), True))
    finally:
        os.kill(grandchild, signal.SIGKILL)
    assert processes.children(999_999_999) == []


def test_the_caller_and_its_ancestors_are_never_signalled(spawned):
    assert {os.getpid(), os.getppid()} <= processes.caller_and_ancestors()
    # The check runs two levels down, so a failure would stop only processes of this test.
    script = ("import json, os; from runtime.node import processes; "
              "out = processes.stop([os.getpid(), os.getppid()], grace_s=0.5); "
              "print(json.dumps(sorted(out.terminated | out.killed)))")
    shell = spawned(["sh", "-c", f'{shlex.quote(sys.executable)} -c "{script}"; echo shell-ok'],
                    stdout=subprocess.PIPE, text=True,
                    env=dict(os.environ, PYTHONPATH=REPO_ROOT))
    out, _ = shell.communicate(timeout=30)
    assert out.split() == ["[]", "shell-ok"] and shell.returncode == 0


def test_stop_terminates_then_kills_what_ignores_sigterm(spawned):
    polite = spawned(SLEEPER)
    stubborn = spawned(IGNORES_TERM, stdout=subprocess.PIPE, text=True)
    assert stubborn.stdout.readline().strip() == "ready"
    outcome = processes.stop([polite.pid, stubborn.pid], grace_s=0.5, reap=True)
    assert outcome.terminated == {polite.pid, stubborn.pid}
    assert outcome.killed == {stubborn.pid} and outcome.left == set()
    for pid in (polite.pid, stubborn.pid):  # reaped by stop: no zombie of ours is left
        with pytest.raises(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
    assert processes.kill([polite.pid]).killed == set()   # gone: nothing to signal


def test_stop_signals_a_whole_process_group_only_when_asked(spawned):
    def group_with_child():
        leader = spawned(["sh", "-c", "sleep 60 & echo $!; wait"], stdout=subprocess.PIPE,
                         text=True, start_new_session=True)
        return leader, int(leader.stdout.readline())

    leader, member = group_with_child()
    processes.stop([leader.pid], grace_s=2.0, groups=True)
    wait_for(lambda: not processes.is_alive(member), 10, "the group's member to end")
    leader, member = group_with_child()
    try:
        processes.stop([leader.pid], grace_s=2.0)
        assert leader.wait(10) is not None
        assert processes.is_alive(member)  # the leader alone was signalled
    finally:
        os.kill(member, signal.SIGKILL)


# ---------------------------------------------------------------- real PID re-use

def _can_unshare(*flags) -> str | None:
    if os.geteuid() != 0 or not shutil.which("unshare"):
        return "needs root and unshare(1)"
    probe = subprocess.run(["unshare", *flags, "true"], capture_output=True, text=True)
    return None if probe.returncode == 0 else f"unshare {' '.join(flags)}: {probe.stderr}"


@pytest.mark.timeout(60)
def test_a_reused_pid_is_not_the_process_remembered(tmp_path):
    """In a private PID namespace (where only this test forks) ns_last_pid makes the
    kernel hand a dead process's PID to a new one: the new process is alive, but neither
    the remembered identity nor the node's old pid file accepts it."""
    reason = _can_unshare("--pid", "--fork", "--mount-proc")
    if reason:
        pytest.skip(reason)
    script = textwrap.dedent(f"""\
        import os, subprocess, time
        from runtime.node import processes
        from launcher.providers import node_processes
        node = {str(tmp_path)!r}
        os.makedirs(node + "/session")
        first = subprocess.Popen(["sleep", "60"])
        with open(node + "/session/agent.pid", "w") as handle:
            handle.write(f"{{first.pid}}\\n")
        assert node_processes.pid_file_pids(node) == {{first.pid}}
        remembered = processes.remember([first.pid])
        first.kill(); first.wait()
        # start times may read up to 1 s early (whole-second boot time) and pid files
        # get START_TIME_SLACK_S: so the new process starts > 2 s after the file
        time.sleep(2.2)
        with open("/proc/sys/kernel/ns_last_pid", "w") as handle:
            handle.write(str(first.pid - 1))
        second = subprocess.Popen(["sleep", "60"])
        assert second.pid == first.pid, (first.pid, second.pid)
        assert processes.is_alive(second.pid)
        assert processes.still_same(remembered) == set()
        assert node_processes.pid_file_pids(node) == set()
        assert node_processes.node_pids(node, remembered) == set()
        second.kill(); second.wait()
        print("checked")""")
    done = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", sys.executable,
                           "-c", script], capture_output=True, text=True, timeout=45,
                          env=dict(os.environ, PYTHONPATH=REPO_ROOT))
    assert done.returncode == 0 and done.stdout.strip() == "checked", done.stderr


# ---------------------------------------------------------------- the local provider's stop

def _node_env(home, with_psutil: bool) -> None:
    """$HOME/.corral/env as corral's node environment would be, with or without psutil,
    never with corral itself (the stop program travels as source)."""
    env_dir = os.path.join(home, ".corral", "env")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", env_dir], check=True,
                   timeout=60)
    if with_psutil:
        site = subprocess.run([os.path.join(env_dir, "bin", "python3"), "-c",
                               "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                              capture_output=True, text=True, check=True).stdout.strip()
        os.symlink(os.path.dirname(psutil.__file__), os.path.join(site, "psutil"))


def _run_stop_script(tmp_path, with_psutil: bool):
    """A tagged daemon on a node, then the stop script under a $HOME with corral's node
    environment and a PATH whose python3 must not be used (it fails)."""
    home, node_dir, fake_bin = (str(tmp_path / name) for name in ("home", "node", "bin"))
    for path in (home, node_dir, fake_bin):
        os.makedirs(path)
    _node_env(home, with_psutil)
    with open(os.path.join(fake_bin, "python3"), "w") as handle:
        handle.write("#!/bin/sh\necho 'the wrong python3' >&2\nexit 42\n")
    os.chmod(os.path.join(fake_bin, "python3"), 0o755)
    node = LocalRunner(workdir=node_dir, env={
        "CORRAL_NODE_DIR": node_dir, "HOME": home, "PYTHONPATH": "",
        "PATH": f"{fake_bin}:{os.environ['PATH']}"})
    node.run("( sleep 300 >/dev/null 2>&1 </dev/null & echo $! > daemon )", check=True)
    with open(os.path.join(node_dir, "daemon")) as handle:
        daemon = int(handle.read())
    return node, node_dir, daemon, node.run(stop_script(node_dir, 1.0), timeout_s=45)


def test_stop_script_runs_under_the_node_environment_without_corral(tmp_path):
    node, node_dir, daemon, result = _run_stop_script(tmp_path, with_psutil=True)
    try:
        assert result.ok, result.stderr
        assert "wrong python3" not in result.stderr
        summary = json.loads(result.stdout.strip().splitlines()[-1])
        assert daemon in summary["terminated"] and summary["left"] == []
        wait_for(lambda: not processes.is_alive(daemon), 10, "the daemon to end")
        assert not os.path.exists(node_dir)
    finally:
        if processes.is_alive(daemon):
            os.kill(daemon, signal.SIGKILL)


def test_stop_script_without_psutil_says_so_and_frees_the_host(tmp_path):
    """The decision documented in stop_script: a Python without psutil means corral never
    ran there; nothing is searched (no second process finder), a note says so, the node
    directory is removed and the script succeeds."""
    node, node_dir, daemon, result = _run_stop_script(tmp_path, with_psutil=False)
    try:
        assert result.ok, result.stderr
        assert "has no psutil: no processes searched" in result.stderr
        assert processes.is_alive(daemon)
        assert not os.path.exists(node_dir)
    finally:
        os.kill(daemon, signal.SIGKILL)


# ---------------------------------------------------------------- no /proc needed

DEMANDS = '[{"shape": {"CPU": 1}, "count": 5}]'
CLI_RUNS = textwrap.dedent("""\
    import sys
    from launcher.cli import main
    demo, demands = sys.argv[1:3]
    for argv in (["--help"], ["validate", demo], ["plan", demo, "--demands", demands]):
        try:
            main(argv)
        except SystemExit as exit:
            assert exit.code in (0, None), (argv, exit.code)
    """)

AUDIT_HOOK = textwrap.dedent("""\
    import os, sys
    def _report(event, args):
        if event not in ("open", "os.listdir", "os.scandir") or not args:
            return
        path = os.fsdecode(args[0]) if isinstance(args[0], (str, bytes)) else ""
        if path != "/proc" and not path.startswith("/proc/"):
            return
        frame, files = sys._getframe(1), []
        while frame is not None:
            files.append(frame.f_code.co_filename)
            frame = frame.f_back
        if not any(os.sep + "psutil" + os.sep in name for name in files):
            with open(os.environ["PROC_AUDIT_LOG"], "a") as log:
                log.write(f"{os.getpid()} {event} {path} from {files[0]}\\n")
    if os.environ.get("PROC_AUDIT_LOG"):
        sys.addaudithook(_report)
    """)


@pytest.mark.timeout(120)
def test_cli_and_a_driver_read_no_proc_except_through_psutil(tmp_path):
    """Every Python process of the run (the CLI commands, the driver, the embedded
    runtime's daemons and workers) gets an audit hook that logs each /proc access not
    made through psutil. A task that reads /proc itself shows the hook reaches workers."""
    (tmp_path / "hook").mkdir()
    (tmp_path / "hook" / "sitecustomize.py").write_text(AUDIT_HOOK)
    demands = tmp_path / "demands.json"
    demands.write_text(DEMANDS)
    log = tmp_path / "proc.log"
    script = CLI_RUNS + textwrap.dedent("""\
        import runtime
        runtime.init(num_cpus=1)
        @runtime.remote
        def double(x):
            return 2 * x
        assert runtime.get(double.remote(21)) == 42
        @runtime.remote
        def read_proc():
            with open("/proc/self/stat") as stat:
                return int(stat.read().split()[0])
        print(runtime.get(read_proc.remote()))
        runtime.shutdown()
        """)
    done = subprocess.run(
        [sys.executable, "-c", script, os.path.join(REPO_ROOT, "configs", "demo.yaml"),
         str(demands)], capture_output=True, text=True, timeout=100, cwd=tmp_path,
        env=dict(os.environ, PYTHONPATH=f"{tmp_path / 'hook'}:{REPO_ROOT}",
                 PROC_AUDIT_LOG=str(log), CORRAL_NODE_DIR=str(tmp_path / "node")))
    assert done.returncode == 0, done.stderr[-3000:]
    worker_pid = int(done.stdout.strip().splitlines()[-1])
    assert log.read_text().splitlines() == [
        f"{worker_pid} open /proc/self/stat from <string>"]


@pytest.mark.timeout(60)
def test_cli_and_the_processes_module_run_with_an_empty_proc(tmp_path):
    """As on a machine without /proc: a private mount namespace with an empty tmpfs on
    /proc. psutil on Linux learns everything from /proc, so here it knows no process:
    this shows that importing and running these paths needs no /proc and that a process
    that cannot be identified is never signalled (macOS answers through sysctl instead)."""
    reason = _can_unshare("--mount", "--propagation", "private")
    if reason:
        pytest.skip(reason)
    demands = tmp_path / "demands.json"
    demands.write_text(DEMANDS)
    script = CLI_RUNS + textwrap.dedent("""\
        import os, subprocess
        assert os.listdir("/proc") == []
        import runtime
        from runtime.node import processes
        from runtime.node import session
        child = subprocess.Popen(["sleep", "60"])
        try:
            outcome = processes.stop([child.pid], grace_s=0.2)
            assert not (outcome.terminated or outcome.killed), outcome
            assert child.poll() is None
            assert processes.start_time_s(child.pid) is None
            assert session.running_pids(session.session_dir(create=True)) == {}
        finally:
            child.kill()
            child.wait()
        print("checked")
        """)
    done = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c",
         'mount -t tmpfs corral-no-proc /proc && exec "$@"', "sh", sys.executable, "-c",
         script, os.path.join(REPO_ROOT, "configs", "demo.yaml"), str(demands)],
        capture_output=True, text=True, timeout=45, cwd=tmp_path,
        env=dict(os.environ, PYTHONPATH=REPO_ROOT, CORRAL_NODE_DIR=str(tmp_path / "node")))
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "checked"
    assert "ok (provider process" in done.stdout  # validate's line


# ---------------------------------------------------------------- workers off Linux

def _describe(pid: int) -> str:
    try:
        proc = psutil.Process(pid)
        return f"pid {pid}: {proc.status()}, parent {proc.ppid()}, argv {proc.cmdline()}"
    except psutil.Error as error:
        return f"pid {pid}: {error!r}"


def test_a_worker_without_a_death_signal_exits_when_its_parent_dies(spawned):
    """Where the kernel sends no death signal (macOS), a worker watches for being
    reparented: the watch used there, run here under a parent that is then killed."""
    parent = spawned([sys.executable, "-c", textwrap.dedent("""\
        import os, subprocess, sys, time
        # the parent's pid is passed, as the agent passes --parent-pid to a worker
        watch = ("import sys; from runtime.worker.main import exit_when_reparented; "
                 "print('watching', flush=True); exit_when_reparented(int(sys.argv[1]), 0.05)")
        child = subprocess.Popen([sys.executable, "-c", watch, str(os.getpid())],
                                 stdout=subprocess.PIPE, text=True)
        assert child.stdout.readline().strip() == "watching"
        print(child.pid, flush=True)
        time.sleep(60)""")], stdout=subprocess.PIPE, text=True,
        env=dict(os.environ, PYTHONPATH=REPO_ROOT))
    child = int(parent.stdout.readline())
    try:
        assert processes.is_alive(child)
        parent.kill()
        parent.wait(10)
        wait_for(lambda: not processes.is_alive(child), 10, "the orphaned worker to exit",
                 describe=lambda: _describe(child))
    finally:
        if processes.is_alive(child):
            os.kill(child, signal.SIGKILL)
