"""CurveZMQ authentication (a wrong key gets nothing executed) and `corral start` /
`corral stop` as real subprocesses."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import cloudpickle
import pytest
import zmq

import runtime
from runtime.protocol import frames as protocol
from runtime.node import session
from runtime.driver.core import DriverCore
from runtime.errors import RuntimeConnectionError
from runtime.node.keys import create_cluster_keys, load_cluster_keys

pytestmark = pytest.mark.timeout(90)
REPO = str(Path(runtime.__file__).resolve().parent.parent)


def _raw_submit(address: str, keys, marker: Path) -> zmq.Socket:
    """Send a task straight to a node agent, as a driver would: it creates `marker`."""
    def touch():
        open(marker, "w").close()
        return "ran"
    blob = cloudpickle.dumps(touch)
    spec = {"task_id": os.urandom(16), "driver": "intruder", "kind": "task", "fn": blob,
            "fn_id": os.urandom(16), "method": None, "shape": {"CPU": 1.0},
            "actor_id": None, "detached": False, "args": [], "kwargs": {}}
    ctx = zmq.Context.instance()
    if keys is None:   # our own sockets refuse TCP without keys: a plain one, by hand
        sock = ctx.socket(zmq.DEALER)
        sock.linger, sock.identity = 0, b"Dintruder"
        sock.connect(f"tcp://{address}")
    else:
        sock = protocol.connect_dealer(ctx, f"tcp://{address}", keys, b"Dintruder")
    protocol.send(sock, b"submit", [spec])
    return sock


def test_wrong_key_gets_nothing_executed(local_cluster, tmp_path):
    local_cluster.start_head(num_cpus=1)
    info = session.read_json(session.address_file(local_cluster.head.session))
    assert info["secure"]
    right = load_cluster_keys(local_cluster.keys_dir)
    wrong_own = create_cluster_keys(tmp_path / "wrong")
    # an intruder that even knows the servers' public key, but not the cluster secret
    intruder = type(right)(public=wrong_own.public, secret=wrong_own.secret)
    intruder_sock = _raw_submit(info["agent_address"], intruder, tmp_path / "intruder-ran")
    no_keys_sock = _raw_submit(info["agent_address"], None, tmp_path / "plain-ran")
    with pytest.raises(RuntimeConnectionError):
        DriverCore(local_cluster.head.address, intruder, connect_timeout_s=2)
    # the same message with the cluster key runs, so the refusal above is the key's doing
    ok_sock = _raw_submit(info["agent_address"], right, tmp_path / "member-ran")
    assert ok_sock.poll(30_000), "the cluster member got no answer"
    assert (tmp_path / "member-ran").exists()
    time.sleep(1.0)   # give refused messages every chance to (wrongly) run
    assert not (tmp_path / "intruder-ran").exists()
    assert not (tmp_path / "plain-ran").exists()
    assert not intruder_sock.poll(0) and not no_keys_sock.poll(0)
    for sock in (intruder_sock, no_keys_sock, ok_sock):
        sock.close(0)


def test_without_keys_nothing_starts_nor_listens(tmp_path):
    """There is no unauthenticated mode: a node without keys is refused before any
    process starts, and neither a server nor a client socket takes TCP without keys."""
    from runtime.node.keys import MissingKeysError
    from runtime.node.startup import start_node
    node_dir = tmp_path / "n"
    with pytest.raises(MissingKeysError, match="no cluster keys in"):
        start_node(head=True, port=0, num_cpus=1, node_dir=node_dir,
                   generate_keys=False, node_id="plain")
    assert session.running_pids(session.session_dir(node_dir)) == {}
    ctx = zmq.Context()
    try:
        with pytest.raises(MissingKeysError):
            protocol.bind_router(ctx, "tcp://127.0.0.1:0", None)
        with pytest.raises(MissingKeysError):
            protocol.connect_dealer(ctx, "tcp://127.0.0.1:1", None, b"x")
    finally:
        ctx.destroy(linger=0)


def _corral(args, node_dir: Path, **env):
    full_env = dict(os.environ, CORRAL_NODE_DIR=str(node_dir), **env)
    full_env["PYTHONPATH"] = REPO
    return subprocess.run([sys.executable, "-m", "launcher", *args], capture_output=True,
                          text=True, timeout=60, env=full_env, cwd=REPO)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


DRIVER = """
import os, runtime
runtime.init(address="auto")
@runtime.remote
def pid():
    return os.getpid(), os.environ["CORRAL_NODE_ID"]
print(sorted(runtime.cluster_resources().items()))
print(runtime.get(pid.options(resources={"late": 1}).remote()))
"""


def test_corral_start_and_stop(tmp_path):
    head_dir, worker_dir = tmp_path / "head", tmp_path / "worker"
    port = _free_port()
    started_dirs = []
    try:
        # the worker may start first: it keeps trying to join until the head answers
        create_cluster_keys(worker_dir / "keys")
        started_dirs.append(worker_dir)
        out = _corral(["start", "--node-ip-address", "127.0.0.1"], worker_dir,
                      CORRAL_HEAD_IP="127.0.0.1", CORRAL_HEAD_PORT=str(port),
                      CORRAL_NODE_ID="w1", CORRAL_NODE_RESOURCES='{"CPU": 1, "late": 1}')
        assert out.returncode == 0, out.stderr
        (head_dir / "keys").mkdir(parents=True)
        for name in ("cluster.public", "cluster.secret"):
            (head_dir / "keys" / name).write_bytes((worker_dir / "keys" / name).read_bytes())
        started_dirs.append(head_dir)
        out = _corral(["start", "--head", "--node-ip-address", "127.0.0.1", "--num-cpus",
                       "1"], head_dir, CORRAL_HEAD_PORT=str(port), CORRAL_NODE_ID="h")
        assert out.returncode == 0, out.stderr
        assert f"127.0.0.1:{port}" in out.stdout
        again = _corral(["start", "--head"], head_dir)
        assert again.returncode == 1 and "already runs" in again.stderr
        on_head = session.running_pids(head_dir / "session")
        on_worker = session.running_pids(worker_dir / "session")
        assert set(on_head) == {"supervisor", "control", "agent"} and set(on_worker) == \
            {"agent"}
        pids = list(on_head.values()) + list(on_worker.values())
        script = tmp_path / "driver.py"
        script.write_text(DRIVER)
        env = dict(os.environ, CORRAL_NODE_DIR=str(head_dir), PYTHONPATH=REPO)
        run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                             timeout=60, env=env, cwd=REPO)
        assert run.returncode == 0, run.stderr
        lines = run.stdout.strip().splitlines()
        assert "('late', 1.0)" in lines[0]
        worker_pid, node = eval(lines[-1])
        assert node == "w1"
        for directory in (head_dir, worker_dir):
            stopped = _corral(["stop"], directory)
            assert stopped.returncode == 0, stopped.stderr
        for pid in pids + [worker_pid]:
            assert not session.is_alive(pid)
        assert _corral(["stop"], head_dir).returncode == 0      # nothing left: no-op
        assert not list((head_dir / "session").glob("*.pid"))
    finally:
        for directory in started_dirs:
            session.stop_session(session.session_dir(directory))
