"""`corral start` argument checks, listening addresses of a loopback cluster, the pid
guard of `corral stop`, and the private files and directories of a node."""
from __future__ import annotations

import os
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import zmq

import runtime
from runtime.protocol import frames as protocol
from runtime.node import session
from runtime.node.keys import create_cluster_keys, load_cluster_keys
from tests.helpers import alive, wait_for

pytestmark = pytest.mark.timeout(90)
REPO = str(Path(runtime.__file__).resolve().parent.parent)


def _corral(args, node_dir: Path, **env):
    full_env = dict(os.environ, CORRAL_NODE_DIR=str(node_dir), PYTHONPATH=REPO, **env)
    return subprocess.run([sys.executable, "-m", "launcher", *args], capture_output=True,
                          text=True, timeout=60, env=full_env, cwd=REPO)


# ---------------------------------------------------------------- corral start arguments

@pytest.mark.parametrize("args, message", [
    (["--address", "nohostport"], "HOST:PORT"),
    (["--address", "10.0.0.1:"], "1 to 65535"),
    (["--address", ":6390"], "HOST:PORT"),
    (["--address", "10.0.0.1:99999"], "1 to 65535"),
    (["--address", "10.0.0.1:http"], "1 to 65535"),
    (["--head", "--port", "99999"], "0<=x<=65535"),
    (["--head", "--port", "-5"], "0<=x<=65535"),
])
def test_start_rejects_bad_address_and_port(tmp_path, args, message):
    out = _corral(["start", *args], tmp_path / "node")
    assert out.returncode == 2, (out.stdout, out.stderr)
    assert message in out.stderr
    assert "Traceback" not in out.stderr and "ZMQError" not in out.stderr
    # nothing was started
    assert not (tmp_path / "node" / "session" / "agent.pid").exists()


def test_start_rejects_bad_head_port_variable(tmp_path):
    out = _corral(["start", "--head"], tmp_path / "node", CORRAL_HEAD_PORT="70000")
    assert out.returncode == 2 and "CORRAL_HEAD_PORT" in out.stderr


# ---------------------------------------------------------------- listening addresses

def _listening(pids) -> list[tuple[str, int]]:
    """(ip, port) of every TCP socket in LISTEN state that one of `pids` holds."""
    inodes = set()
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[len("socket:["):-1])
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state != "0A" or inode not in inodes:     # 0A = LISTEN
                continue
            address, port = local.split(":")
            if len(address) == 8:
                ip = ".".join(str(b) for b in reversed(bytes.fromhex(address)))
            else:
                ip = "::" if set(address) == {"0"} else address
            found.append((ip, int(port, 16)))
    return found


def test_loopback_cluster_listens_on_loopback_only(tmp_path, monkeypatch):
    """The demo cluster (process provider: every node at 127.0.0.1, with keys) must not
    listen on every interface."""
    from runtime.node.startup import start_node
    monkeypatch.setenv("CORRAL_HEAD_IP", "127.0.0.1")
    head = start_node(head=True, port=0, num_cpus=1, node_dir=tmp_path / "head",
                      node_id="head")
    nodes = [head]
    try:
        assert head.secure
        worker_dir = tmp_path / "worker"
        (worker_dir / "keys").mkdir(parents=True)
        for name in ("cluster.public", "cluster.secret"):
            (worker_dir / "keys" / name).write_bytes(
                (tmp_path / "head" / "keys" / name).read_bytes())
        nodes.append(start_node(head=False, address=head.address, num_cpus=1,
                                node_dir=worker_dir, node_id="worker",
                                wait_registered=True))
        pids = [pid for started in nodes for pid in started.pids.values()]
        listening = _listening(pids)
        assert len(listening) >= 3, listening     # control + two agents
        assert {ip for ip, _ in listening} == {"127.0.0.1"}, listening
    finally:
        for started in nodes:
            session.stop_session(started.session)


# ---------------------------------------------------------------- corral stop's pid guard

@pytest.fixture
def spawned():
    procs = []

    def spawn(argv, **kwargs):
        proc = subprocess.Popen(argv, start_new_session=True, **kwargs)
        procs.append(proc)
        return proc
    try:
        yield spawn
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)


SLEEPER = [sys.executable, "-c", "import time; time.sleep(60)"]


def _age(path: Path, seconds: float) -> None:
    written = time.time() - seconds
    os.utime(path, (written, written))


def test_stop_spares_a_process_that_took_over_a_stale_pid(tmp_path, spawned):
    node_dir = tmp_path / "node"
    sess = session.session_dir(node_dir)
    pid_path = session.pid_file(sess, "agent")
    pid_path.write_text("1\n")
    _age(pid_path, 30)            # written long ago, by a runtime that is gone
    # another cluster's runtime-like process, started after the pid file was written,
    # even one that names this node's session dir, must not be taken for ours
    other = spawned([*SLEEPER, "runtime.fake"])
    same_dir = spawned([*SLEEPER, "runtime.fake", "--session", str(sess)])
    for proc in (other, same_dir):
        pid_path.write_text(f"{proc.pid}\n")
        _age(pid_path, 30)
        assert session.running_pids(sess) == {}
        session.stop_session(sess)
        assert proc.poll() is None, "corral stop killed a process that is not its own"
        session.session_dir(node_dir)


def test_stop_spares_an_older_process_of_another_node(tmp_path, spawned):
    sess = session.session_dir(tmp_path / "node")
    other_session = session.session_dir(tmp_path / "other")
    proc = spawned([*SLEEPER, "runtime.fake", "--session", str(other_session)])
    time.sleep(0.05)
    session.pid_file(sess, "agent").write_text(f"{proc.pid}\n")
    assert session.running_pids(sess) == {}
    session.stop_session(sess)
    assert proc.poll() is None


def test_stop_stops_this_nodes_process(tmp_path, spawned):
    node_dir = tmp_path / "node"
    sess = session.session_dir(node_dir)
    by_argv = spawned([*SLEEPER, "runtime.fake", "--session", str(sess)])
    by_env = spawned([*SLEEPER, "autoscaler.fake"],
                     env=dict(os.environ, CORRAL_NODE_DIR=str(node_dir)))
    time.sleep(0.05)
    session.pid_file(sess, "agent").write_text(f"{by_argv.pid}\n")
    session.pid_file(sess, "monitor").write_text(f"{by_env.pid}\n")
    assert session.running_pids(sess) == {"agent": by_argv.pid, "monitor": by_env.pid}
    assert sorted(session.stop_session(sess)) == sorted([by_argv.pid, by_env.pid])
    assert by_argv.wait(10) is not None and by_env.wait(10) is not None


def test_process_start_time_is_now_for_a_new_process(spawned):
    before = time.time()
    proc = spawned(SLEEPER)
    started = session.process_start_time_s(proc.pid)
    assert started is not None
    assert before - 2 <= started <= time.time() + 2


# ---------------------------------------------------------------- private files and dirs

def test_keys_never_land_in_a_readable_file(tmp_path, monkeypatch):
    """Every byte written to a key file goes into a file that is already 0600, even
    when a 0644 file stood at its path before."""
    from runtime.node import keys as keys_module
    keys_dir = tmp_path / "keys"
    keys_dir.mkdir(mode=0o700)
    for name in ("cluster.public", "cluster.secret"):
        (keys_dir / name).write_text("old")
        (keys_dir / name).chmod(0o644)
    modes_at_write = []
    real_write = os.write

    def checking_write(fd, data):
        target = os.readlink(f"/proc/self/fd/{fd}")
        if target.startswith(str(keys_dir)):
            modes_at_write.append(stat.S_IMODE(os.fstat(fd).st_mode))
        return real_write(fd, data)
    monkeypatch.setattr(keys_module.os, "write", checking_write)
    keys = create_cluster_keys(keys_dir)
    monkeypatch.undo()
    assert modes_at_write and set(modes_at_write) == {0o600}
    for name in ("cluster.public", "cluster.secret"):
        assert stat.S_IMODE((keys_dir / name).stat().st_mode) == 0o600
    assert load_cluster_keys(keys_dir) == keys


def test_ipc_dir_refuses_a_planted_symlink(tmp_path, monkeypatch):
    monkeypatch.setattr(session.tempfile, "tempdir", str(tmp_path))
    elsewhere = tmp_path / "attacker"
    elsewhere.mkdir(mode=0o777)
    (tmp_path / f"corral-ipc-{os.getuid()}").symlink_to(elsewhere)
    with pytest.raises(session.UnsafeDirectoryError, match="not a directory"):
        session.ipc_dir(tmp_path / "node" / "session")
    assert list(elsewhere.iterdir()) == []


def test_ipc_dir_refuses_open_permissions(tmp_path, monkeypatch):
    monkeypatch.setattr(session.tempfile, "tempdir", str(tmp_path))
    parent = tmp_path / f"corral-ipc-{os.getuid()}"
    parent.mkdir()
    parent.chmod(0o755)
    with pytest.raises(session.UnsafeDirectoryError, match="755"):
        session.ipc_dir(tmp_path / "node" / "session")


def test_ipc_dir_is_private(tmp_path, monkeypatch):
    monkeypatch.setattr(session.tempfile, "tempdir", str(tmp_path))
    path = session.ipc_dir(tmp_path / "node" / "session")
    for directory in (path, os.path.dirname(path)):
        info = os.lstat(directory)
        assert stat.S_ISDIR(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o700


def test_write_json_atomic_with_concurrent_writers(tmp_path):
    target = tmp_path / "address.json"
    errors = []

    def writer(index):
        try:
            for round_ in range(200):
                session.write_json_atomic(target, {"writer": index, "round": round_})
        except OSError as error:
            errors.append(error)
    threads = [threading.Thread(target=writer, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert session.read_json(target)["round"] == 199
    assert [p.name for p in tmp_path.iterdir()] == ["address.json"]   # no temp left
    assert stat.S_IMODE(target.stat().st_mode) == 0o600


# ---------------------------------------------------------------- ZAP enforcement

def test_zap_enforcement_failure_is_an_error():
    ctx = zmq.Context()
    try:
        sock = ctx.socket(zmq.ROUTER)
        sock.close()
        with pytest.raises(protocol.ZapSetupError):
            protocol.enforce_zap_domain(sock)
    finally:
        ctx.term()


def test_zap_enforcement_missing_in_old_libzmq_warns_once(monkeypatch, caplog):
    monkeypatch.setattr(protocol.zmq, "zmq_version_info", lambda: (4, 2, 5))
    monkeypatch.setattr(protocol, "_warned_no_enforce", threading.Event())
    ctx = zmq.Context()
    try:
        sockets = [ctx.socket(zmq.ROUTER) for _ in range(2)]
        with caplog.at_level("WARNING", logger="corral.protocol"):
            for sock in sockets:
                protocol.enforce_zap_domain(sock)     # no error: the handler enforces
        warnings = [r for r in caplog.records if "ZAP_ENFORCE_DOMAIN" in r.getMessage()]
        assert len(warnings) == 1
        for sock in sockets:
            sock.close()
    finally:
        ctx.term()


_ORPHANING_PARENT = """
import subprocess, sys
worker = subprocess.Popen([sys.executable, "-m", "runtime.worker.main", "--endpoint",
                           "ipc://" + sys.argv[1], "--worker-id", "orphan",
                           "--parent-pid", str(__import__("os").getpid())],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
print(worker.pid, flush=True)   # and exit at once, before the worker is even running
"""


def test_a_worker_whose_agent_died_while_it_started_exits(tmp_path):
    # the agent's death signal (PDEATHSIG) reaches only a worker that already asked for it
    parent = subprocess.run([sys.executable, "-c", _ORPHANING_PARENT,
                             str(tmp_path / "no-agent.sock")], capture_output=True,
                            text=True, timeout=60, cwd=REPO,
                            env=dict(os.environ, PYTHONPATH=REPO))
    pid = int(parent.stdout.split()[0])
    try:
        wait_for(lambda: not alive(pid), 30, "the orphaned worker to exit")
    finally:
        if alive(pid):
            os.kill(pid, 9)
