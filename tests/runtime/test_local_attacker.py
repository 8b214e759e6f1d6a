"""A second local user attacks the runtime (issue 10, items 1, 2 and 8's key half).

The intruder is a real throwaway user (useradd, removed at the end) running in a forked
child that dropped to its uid with no groups, so it has exactly that user's rights: it
sends pickles to every TCP port of an embedded runtime and of a `corral start --head`
runtime, plants node dirs, keys and address.json files, and runs fake heads. Nothing
it sends may run (a marker file its payload would create stays absent), the services
stay up and keep serving the real driver, planted state is refused with an error naming
path, owner and mode, and a driver never reads from a head without the cluster's key.
"""
from __future__ import annotations

import encodings.idna  # noqa: F401 - the intruder resolves hosts, cannot read this module
import os
import pickle
import select
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
import traceback
import uuid
from dataclasses import dataclass
from pathlib import Path

import cloudpickle
import psutil
import pytest
import zmq

import runtime
from runtime import api
from runtime.protocol import frames as protocol
from runtime.node import session
from runtime.control.client import ControlClient
from runtime.node.keys import MissingKeysError, create_cluster_keys, load_cluster_keys
from runtime.node.private_paths import UnsafePathError
from tests.helpers import alive, wait_for

pytestmark = pytest.mark.timeout(150)
REPO = str(Path(runtime.__file__).resolve().parent.parent)


# ---------------------------------------------------------------- the second user

@dataclass(frozen=True)
class Intruder:
    name: str
    uid: int
    gid: int


@pytest.fixture(scope="session")
def intruder():
    if os.geteuid() != 0:
        pytest.skip("needs root: creates a throwaway user to attack the runtime as")
    if not shutil.which("useradd") or not shutil.which("userdel"):
        pytest.skip("needs useradd/userdel to create the attacking user")
    name = f"crlx{os.getpid() % 100000}"
    made = subprocess.run(["useradd", "--system", "--no-create-home", "--user-group",
                           "--shell", "/usr/sbin/nologin", name],
                          capture_output=True, text=True, timeout=60)
    assert made.returncode == 0, made.stderr
    try:
        import pwd
        entry = pwd.getpwnam(name)
        yield Intruder(name, entry.pw_uid, entry.pw_gid)
    finally:
        subprocess.run(["userdel", name], capture_output=True, timeout=60)


def _become(user: Intruder) -> None:
    os.setgroups([])
    os.setgid(user.gid)
    os.setuid(user.uid)


def as_intruder(user: Intruder, fn, *args, timeout_s: float = 60.0):
    """fn(*args) run by `user` (a forked child with that uid, gid and no groups):
    -> what it returned. Everything fn uses is imported already (the intruder cannot
    read this Python's files)."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:   # the intruder
        try:
            os.close(read_fd)
            _become(user)
            result = ("ok", fn(*args))
        except BaseException:   # handed to the test, which fails with it
            result = ("error", traceback.format_exc())
        data = pickle.dumps(result)
        while data:
            data = data[os.write(write_fd, data):]
        os._exit(0)
    os.close(write_fd)
    chunks, deadline = [], time.monotonic() + timeout_s
    try:
        while True:
            left_s = deadline - time.monotonic()
            assert left_s > 0, f"the intruder's {fn.__name__} took over {timeout_s} s"
            ready, _, _ = select.select([read_fd], [], [], left_s)
            if ready:
                chunk = os.read(read_fd, 1 << 16)
                if not chunk:
                    break
                chunks.append(chunk)
    finally:
        os.close(read_fd)
        _end_child(pid)
    status, value = pickle.loads(b"".join(chunks))
    assert status == "ok", f"the intruder failed:\n{value}"
    return value


def spawn_intruder(user: Intruder, fn, *args) -> tuple[int, str]:
    """Start fn(ready_fd, *args) as `user` in the background; fn writes one line to
    ready_fd when it is ready. -> (pid, that line); end it with _end_child(pid)."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(read_fd)
            _become(user)
            fn(write_fd, *args)
            code = 0
        finally:
            os._exit(code)
    os.close(write_fd)
    try:
        ready, _, _ = select.select([read_fd], [], [], 30)
        line = os.read(read_fd, 4096).decode().strip() if ready else ""
    finally:
        os.close(read_fd)
    if not line:
        _end_child(pid)
        raise AssertionError("the intruder's server did not start")
    return pid, line


def _end_child(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    os.waitpid(pid, 0)


@pytest.fixture
def shared_tmp():
    """A sticky world-writable directory like /tmp (pytest's tmp_path is private to
    root), removed with whatever the intruder left in it."""
    path = Path(tempfile.mkdtemp(prefix="corral-shared-", dir="/tmp"))
    path.chmod(0o1777)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def intruder_dir(shared: Path, user: Intruder, name: str, mode: int = 0o755) -> Path:
    """A directory the intruder made in the shared (sticky, world-writable) dir."""
    path = shared / name
    as_intruder(user, _mkdir, str(path), mode)
    return path


def _mkdir(path: str, mode: int) -> None:
    os.makedirs(path)
    os.chmod(path, mode)


# ---------------------------------------------------------------- payloads

class Touch:
    """Unpickling this creates `path` (as whoever unpickles it)."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def _submit_header(marker: str) -> list:
    def touch():
        open(marker + ".task", "w").close()
    return [{"task_id": os.urandom(16), "driver": "intruder", "kind": "task",
             "fn": cloudpickle.dumps(touch), "fn_id": os.urandom(16), "method": None,
             "shape": {"CPU": 1.0}, "actor_id": None, "detached": False, "args": [],
             "kwargs": {}, "touch": Touch(marker)}]


def _attack_ports(ports: list, marker: str, leaked_public: bytes, ipc_paths: list) -> dict:
    """The intruder's attack on every TCP port: ZMTP without keys (NULL), CurveZMQ with
    its own keys (and the leaked public key as the server key), and raw bytes (a bare
    pickle; a ZMTP greeting then a pickle). Also tries the runtime's ipc sockets.
    -> what came back: {"received": [...], "ipc": {path: outcome}}."""
    ctx = zmq.Context()
    rpc = pickle.dumps((1, "nodes", {"touch": Touch(marker)}), protocol=5)
    submit = pickle.dumps(_submit_header(marker), protocol=5)
    bare = pickle.dumps(Touch(marker), protocol=5)
    own_public, own_secret = zmq.curve_keypair()
    sockets = []
    for host, port in ports:
        endpoint = f"tcp://{host}:{port}"
        for curve in (False, True):
            sock = ctx.socket(zmq.DEALER)
            sock.linger = 0
            sock.identity = b"D" + uuid.uuid4().hex.encode()
            if curve:
                sock.curve_serverkey = leaked_public
                sock.curve_publickey = own_public
                sock.curve_secretkey = own_secret
            sock.connect(endpoint)
            sockets.append((endpoint, curve, sock))
            for frames in ([b"rpc", rpc], [b"submit", submit], [b"fetch", rpc],
                           [b"task", submit], [b"register", bare]):
                try:
                    sock.send_multipart(frames, zmq.NOBLOCK)
                except zmq.Again:   # the server hung up on us: nowhere to send
                    pass
        greeting = b"\xff" + b"\x00" * 8 + b"\x7f\x03\x00NULL" + b"\x00" * 52
        for raw in (bare, greeting + bare):
            try:
                with socket.create_connection((host, port), timeout=2) as conn:
                    conn.sendall(raw)
                    time.sleep(0.05)
            except OSError:
                pass
    time.sleep(1.5)
    received = [f"{endpoint} curve={curve}" for endpoint, curve, sock in sockets
                if sock.poll(0)]
    ipc = {}
    for path in ipc_paths:
        unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            unix.connect(path)
            ipc[path] = "connected"
        except OSError as error:
            ipc[path] = type(error).__name__
        finally:
            unix.close()
    ctx.destroy(linger=0)
    return {"received": received, "ipc": ipc}


# ---------------------------------------------------------------- runtimes to attack

def _listening(pids) -> list[tuple[str, int]]:
    found = set()
    for pid in pids:
        for conn in psutil.Process(pid).net_connections(kind="tcp"):
            if conn.status == psutil.CONN_LISTEN:
                found.add((conn.laddr.ip, conn.laddr.port))
    return sorted(found)


@pytest.fixture
def embedded_runtime(tmp_path, monkeypatch):
    """runtime.init() with no address: the embedded runtime, this test its driver."""
    monkeypatch.setenv("CORRAL_NODE_DIR", str(tmp_path / "no-runtime-here"))
    runtime.init(num_cpus=1)
    try:
        yield Path(api._embedded["session"])
    finally:
        runtime.shutdown()


@pytest.fixture
def started_head(tmp_path, monkeypatch):
    """`corral start --head` (a real subprocess), this test connected as its driver."""
    node_dir = tmp_path / "head"
    env = dict(os.environ, CORRAL_NODE_DIR=str(node_dir), PYTHONPATH=REPO)
    try:
        out = subprocess.run([sys.executable, "-m", "launcher", "start", "--head",
                              "--port", "0", "--num-cpus", "1", "--node-ip-address",
                              "127.0.0.1"], capture_output=True, text=True, timeout=90,
                             env=env, cwd=REPO)
        assert out.returncode == 0, out.stderr
        assert "CurveZMQ" in out.stdout
        monkeypatch.setenv("CORRAL_NODE_DIR", str(node_dir))
        runtime.init(address="auto")
        yield node_dir / "session"
    finally:
        runtime.shutdown()
        session.stop_session(node_dir / "session")


@runtime.remote
def _plus_one(x):
    return x + 1


@pytest.mark.parametrize("kind", ["embedded", "corral start --head"])
def test_intruder_pickles_to_every_port_run_nothing(intruder, tmp_path, request, kind):
    sess = request.getfixturevalue("embedded_runtime" if kind == "embedded"
                                   else "started_head")
    pids = session.running_pids(sess)
    assert {"control", "agent"} <= set(pids), pids
    ports = _listening(pids.values())
    assert len(ports) >= 2, ports                      # control and agent at least
    info = session.read_address(sess)
    ipc_dir = os.path.dirname(protocol.ipc_path(info["agent_ipc"]))
    ipc_paths = [os.path.join(ipc_dir, name) for name in os.listdir(ipc_dir)]
    marker = tmp_path / "intruder-ran"
    # the intruder even knows the public key; the secret stays unreadable to it
    leaked = load_cluster_keys(session.keys_dir(sess.parent)).public
    outcome = as_intruder(intruder, _attack_ports, ports, str(marker), leaked, ipc_paths)
    assert outcome["received"] == [], "a runtime port answered the intruder"
    assert ipc_paths and set(outcome["ipc"].values()) == {"PermissionError"}, outcome["ipc"]
    assert not marker.exists() and not Path(str(marker) + ".task").exists()
    assert all(alive(pid) for pid in pids.values()), "a service died of the attack"
    assert session.running_pids(sess) == pids
    assert runtime.get(_plus_one.remote(41), timeout=60) == 42    # still serving us
    assert not marker.exists()


# ---------------------------------------------------------------- malformed messages

def test_malformed_messages_from_a_member_kill_no_service(local_cluster):
    """Headers are parsed inside the services' guards: whatever frames a peer (even
    one holding the key) sends, the control service and the agent go on serving."""
    head = local_cluster.start_head(num_cpus=1)
    keys = load_cluster_keys(local_cluster.keys_dir)
    info = session.read_address(head.session)
    ctx = zmq.Context()
    try:
        for address in (head.address, info["agent_address"]):
            sock = protocol.connect_dealer(ctx, f"tcp://{address}", keys, b"Dmember")
            for frames in ([b"rpc"], [b"rpc", b"not a pickle"],
                           [b"rpc", pickle.dumps("not a tuple")],
                           [b"rpc", pickle.dumps((1, 2))],
                           [b"rpc", pickle.dumps((1, ("no", "str"), {}))],
                           [b"rpc", pickle.dumps((2, "nodes", ["not", "kwargs"]))],
                           [b"submit", pickle.dumps(["not a task"])],
                           [b"reclaim", pickle.dumps(None)], [b"\xff", b""]):
                sock.send_multipart(frames)
            sock.close(0)
        time.sleep(1.0)
        assert all(alive(pid) for pid in head.pids.values())
        with ControlClient(head.address, str(local_cluster.keys_dir)) as client:
            assert [n["node_id"] for n in client.call("nodes")] == ["head"]
        local_cluster.connect()
        assert runtime.get(_plus_one.remote(1), timeout=60) == 2
    finally:
        ctx.destroy(linger=0)


# ---------------------------------------------------------------- planted state

def _corral(args, node_dir: Path):
    env = dict(os.environ, CORRAL_NODE_DIR=str(node_dir), PYTHONPATH=REPO)
    return subprocess.run([sys.executable, "-m", "launcher", *args], capture_output=True,
                          text=True, timeout=90, env=env, cwd=REPO)


def _plant_node_dir(path: str, public: bytes, secret: bytes, address: str) -> None:
    """The intruder's node dir: its own keys, an address.json naming its head."""
    os.makedirs(f"{path}/keys", 0o700)
    os.makedirs(f"{path}/session", 0o700)
    for name, data in (("cluster.public", public), ("cluster.secret", secret)):
        with open(f"{path}/keys/{name}", "wb") as handle:
            handle.write(data)
        os.chmod(f"{path}/keys/{name}", 0o600)
    with open(f"{path}/session/address.json", "w") as handle:
        handle.write('{"address": "%s", "node_id": "fake", "keys_dir": "%s/keys", '
                     '"registered": true}' % (address, path))


def _assert_refused(error_text: str, path: Path, owner_uid: int | None = None,
                    mode: int | None = None) -> None:
    assert f"refusing {path}" in error_text, error_text
    if owner_uid is not None:
        assert f"owner uid {owner_uid}" in error_text, error_text
    if mode is not None:
        assert f"mode {mode:o}" in error_text, error_text
    assert "Traceback" not in error_text


def test_a_node_dir_planted_by_another_user_is_refused(intruder, shared_tmp, monkeypatch):
    planted = intruder_dir(shared_tmp, intruder, "corral")
    fake_public, fake_secret = zmq.curve_keypair()
    as_intruder(intruder, _plant_node_dir, str(planted), fake_public, fake_secret,
                "127.0.0.1:9")
    out = _corral(["start", "--head", "--port", "0", "--node-ip-address", "127.0.0.1"],
                  planted)
    assert out.returncode == 1, (out.stdout, out.stderr)
    assert "CurveZMQ" not in out.stdout
    _assert_refused(out.stderr, planted, intruder.uid, 0o755)
    assert sorted(p.name for p in (planted / "session").iterdir()) == ["address.json"]
    monkeypatch.setenv("CORRAL_NODE_DIR", str(planted))
    for address in ("auto", None):
        with pytest.raises(UnsafePathError) as refused:
            runtime.init(address=address)
        assert refused.value.path == str(planted)
        assert refused.value.owner_uid == intruder.uid
    with pytest.raises(UnsafePathError):
        ControlClient("auto")
    assert not runtime.is_initialized()


@pytest.mark.parametrize("what", ["keys dir", "secret key", "address.json"])
def test_state_in_our_node_dir_owned_by_another_user_is_refused(intruder, tmp_path,
                                                                monkeypatch, what):
    node_dir = tmp_path / "node"
    keys = create_cluster_keys(node_dir / "keys")
    sess = session.session_dir(node_dir)
    target = {"keys dir": node_dir / "keys",
              "secret key": node_dir / "keys" / "cluster.secret",
              "address.json": sess / "address.json"}[what]
    if what == "address.json":
        session.write_json_atomic(target, {"address": "127.0.0.1:9", "node_id": "x",
                                           "keys_dir": str(node_dir / "keys")})
    os.chown(target, intruder.uid, intruder.gid)
    monkeypatch.setenv("CORRAL_NODE_DIR", str(node_dir))
    if what != "address.json":
        out = _corral(["start", "--head", "--port", "0", "--node-ip-address",
                       "127.0.0.1"], node_dir)
        assert out.returncode == 1 and "CurveZMQ" not in out.stdout, out.stdout
        _assert_refused(out.stderr, target, intruder.uid)
        assert session.running_pids(sess) == {}
    else:
        with pytest.raises(UnsafePathError) as refused:
            runtime.init(address="auto")
        _assert_refused(str(refused.value), target, intruder.uid)
    assert keys.public == (node_dir / "keys" / "cluster.public").read_bytes()


@pytest.mark.parametrize("what", ["node dir", "session dir", "keys dir", "secret key"])
def test_group_or_world_writable_state_of_our_own_is_refused(tmp_path, monkeypatch, what):
    node_dir = tmp_path / "node"
    create_cluster_keys(node_dir / "keys")
    sess = session.session_dir(node_dir)
    target = {"node dir": node_dir, "session dir": sess, "keys dir": node_dir / "keys",
              "secret key": node_dir / "keys" / "cluster.secret"}[what]
    mode = 0o666 if target.is_file() else 0o777
    target.chmod(mode)
    out = _corral(["start", "--head", "--port", "0", "--node-ip-address", "127.0.0.1"],
                  node_dir)
    assert out.returncode == 1 and "CurveZMQ" not in out.stdout, (out.stdout, out.stderr)
    _assert_refused(out.stderr, target, os.getuid(), mode)
    assert stat.S_IMODE(target.stat().st_mode) == mode      # refused, not fixed up
    if what in ("node dir", "session dir"):
        monkeypatch.setenv("CORRAL_NODE_DIR", str(node_dir))
        with pytest.raises(UnsafePathError):
            runtime.init(address="auto")


def test_default_node_dirs_planted_by_another_user(intruder, shared_tmp, monkeypatch):
    """Without CORRAL_NODE_DIR: the per-user default squatted by the intruder is
    refused (loudly: it is ours by name); the launcher's dir of another user is not
    ours, so init() passes it by for an embedded runtime, init("auto") says why not."""
    monkeypatch.delenv("CORRAL_NODE_DIR", raising=False)
    default = intruder_dir(shared_tmp, intruder, "corral-default", 0o700)
    launcher_dir = intruder_dir(shared_tmp, intruder, "corral-launcher", 0o755)
    fake_public, fake_secret = zmq.curve_keypair()
    as_intruder(intruder, _plant_node_dir, str(launcher_dir), fake_public, fake_secret,
                "127.0.0.1:9")
    monkeypatch.setattr(session, "DEFAULT_NODE_DIR", str(default))
    monkeypatch.setattr(session, "LAUNCHER_NODE_DIR", str(launcher_dir))
    for address in ("auto", None):
        with pytest.raises(UnsafePathError) as refused:
            runtime.init(address=address)
        assert refused.value.path == str(default)
    as_intruder(intruder, os.rmdir, str(default))
    with pytest.raises(UnsafePathError) as refused:
        runtime.init(address="auto")
    assert refused.value.path == str(launcher_dir)
    runtime.init(num_cpus=1)           # the launcher dir passed by: embedded
    try:
        assert api._embedded is not None
        assert runtime.get(_plus_one.remote(1), timeout=60) == 2
    finally:
        runtime.shutdown()


# ---------------------------------------------------------------- fake heads

def _fake_head(ready_fd: int, mode: str, marker: str, cluster_public: bytes) -> None:
    """A head without the cluster's secret key answers anything with a pickle that
    creates `marker`. mode: "plain" (no CurveZMQ), "own keys" (CurveZMQ, its own pair),
    "leaked public" (CurveZMQ presenting the cluster's public key, own secret)."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.linger = 0
    if mode != "plain":
        public, secret = zmq.curve_keypair()
        sock.curve_server = True
        sock.curve_publickey = cluster_public if mode == "leaked public" else public
        sock.curve_secretkey = secret
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    os.write(ready_fd, f"{port}\n".encode())
    reply = pickle.dumps(Touch(marker), protocol=5)
    while True:
        frames = sock.recv_multipart()
        sock.send_multipart([frames[0], b"reply", reply])
        sock.send_multipart([frames[0], b"nodes", reply])


@pytest.mark.parametrize("mode", ["plain", "own keys", "leaked public"])
def test_a_driver_never_reads_from_a_head_without_the_cluster_key(intruder, tmp_path,
                                                                  mode):
    keys_dir = tmp_path / "keys"
    keys = create_cluster_keys(keys_dir)
    marker = tmp_path / "fake-head-payload-ran"
    pid, port = spawn_intruder(intruder, _fake_head, mode, str(marker), keys.public)
    try:
        address = f"127.0.0.1:{port}"
        started = time.monotonic()
        with pytest.raises(protocol.HandshakeFailedError, match="nothing was read"):
            runtime.init(address=address, keys_dir=str(keys_dir))
        assert time.monotonic() - started < 30     # refused, not waited out
        with pytest.raises(protocol.HandshakeFailedError):
            ControlClient(address, str(keys_dir))
        assert alive(pid)
        assert not marker.exists()
        assert not runtime.is_initialized()
    finally:
        _end_child(pid)


# ---------------------------------------------------------------- no keys: an error

_TRIES = """
import sys, runtime
from runtime.errors import RuntimeConnectionError
from runtime.node.keys import MissingKeysError
address, empty, wrong = sys.argv[1:4]
for keys_dir, expected in ((empty, MissingKeysError), (wrong, RuntimeConnectionError)):
    for attempt in range(20):
        try:
            runtime.init(address=address, keys_dir=keys_dir)
        except expected as error:
            print("raised", type(error).__name__, flush=True)
        else:
            print("connected", flush=True)
            runtime.shutdown()
"""


def test_connecting_without_keys_always_raises(local_cluster, tmp_path):
    """20 of 20 tries raise (was: a libzmq assertion aborted 4 of 9), and so do 20
    with the wrong keys, which go through a real failed CurveZMQ handshake."""
    head = local_cluster.start_head(num_cpus=1)
    (tmp_path / "empty").mkdir(mode=0o700)
    create_cluster_keys(tmp_path / "wrong")
    run = subprocess.run([sys.executable, "-c", _TRIES, head.address,
                          str(tmp_path / "empty"), str(tmp_path / "wrong")],
                         capture_output=True, text=True, timeout=140, cwd=REPO,
                         env=dict(os.environ, PYTHONPATH=REPO))
    assert run.returncode == 0, (run.returncode, run.stderr[-2000:])
    lines = run.stdout.splitlines()
    assert lines == ["raised MissingKeysError"] * 20 + ["raised HandshakeFailedError"] * 20
    with pytest.raises(MissingKeysError, match="no cluster keys in"):
        runtime.init(address=head.address, keys_dir=str(tmp_path / "empty"))
    assert wait_for(lambda: all(alive(pid) for pid in head.pids.values()), 5)
