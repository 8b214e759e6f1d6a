"""The object store's capacity and its spilling to disk (runtime.agent.store, runtime.agent.spill,
runtime.agent.objects). The store itself with real files and real ZeroMQ sends; then
real node agents: one under an address-space limit (prlimit) taking in more objects
than its memory holds, two nodes fetching each other's spilled objects, a spill disk
that fills up (a small tmpfs), puts and results larger than memory and disk together,
and `corral start --object-store-memory`. Every object is checked byte for byte
(sha256); every agent is the same live process at the end."""
from __future__ import annotations

import hashlib
import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import numpy
import psutil
import pytest
import zmq

import runtime
from runtime import api
from runtime.node import session
from runtime.agent import spill as spill_module
from runtime.agent.store import ObjectStore
from runtime.protocol.frames import serialize
from runtime.agent.spill import SpillDir
from runtime.node.startup import start_node
from tests.runtime.conftest import wait_until

pytestmark = pytest.mark.timeout(180)
MiB = 1 << 20
REPO = str(Path(runtime.__file__).resolve().parent.parent)


def _array(seed: int, size_bytes: int) -> numpy.ndarray:
    return numpy.random.default_rng(seed).integers(0, 1 << 62, size_bytes // 8,
                                                   dtype=numpy.int64)


def _sha(array) -> str:
    return hashlib.sha256(memoryview(numpy.ascontiguousarray(array)).cast("B")).hexdigest()


def _files(path: Path) -> list[str]:
    return sorted(os.listdir(path)) if path.exists() else []


# ---------------------------------------------------------------- the store alone

@pytest.fixture
def store(tmp_path):
    made = ObjectStore(3 * MiB + 4096, SpillDir(tmp_path / "spill", "n1"), "n1")
    yield made
    made.close()


def test_least_recently_used_spill_first_and_come_back_intact(store, tmp_path):
    values = {bytes([i]): _array(i, MiB) for i in range(6)}
    for object_id in list(values)[:3]:
        store.put(object_id, serialize(values[object_id]), "driver")
    store.get(bytes([0]))                   # used again: 1 is now the oldest
    spilled = []
    for object_id in list(values)[3:]:
        store.put(object_id, serialize(values[object_id]), "driver")
        spilled.append({oid for oid, record in store._objects.items() if record.spilled})
    assert spilled == [{b"\1"}, {b"\1", b"\2"}, {b"\0", b"\1", b"\2"}]
    assert store.memory_bytes <= store.capacity_bytes
    assert len(_files(tmp_path / "spill")) == 3
    assert os.stat(tmp_path / "spill").st_mode & 0o777 == 0o700
    for name in _files(tmp_path / "spill"):
        assert os.stat(tmp_path / "spill" / name).st_mode & 0o777 == 0o600
    for object_id, array in values.items():
        assert _sha(store.get(object_id).value()) == _sha(array)


def test_a_value_being_sent_or_read_is_never_spilled(store):
    ctx = zmq.Context()
    sender, receiver = ctx.socket(zmq.PAIR), ctx.socket(zmq.PAIR)
    sender.bind("inproc://spill-test")
    receiver.connect("inproc://spill-test")
    try:
        store.put(b"sent", serialize(_array(1, MiB)), "driver")
        store.put(b"read", serialize(_array(2, MiB)), "driver")
        store.put(b"idle", serialize(_array(3, MiB)), "driver")
        value = store.get(b"sent")          # a zero-copy send the peer has not read
        sender.send_multipart([b"object", *value.buffers], copy=False)
        del value
        held = store.get(b"read")           # a task queued with it as its argument
        store.get(b"idle")                  # the most recently used now
        store.put(b"new", serialize(_array(4, MiB)), "driver")
        in_memory = [oid for oid, r in store._objects.items() if r.value is not None]
        assert b"idle" not in in_memory and {b"sent", b"read"} <= set(in_memory)
        receiver.recv_multipart()
        assert held.value()[0] == _array(2, MiB)[0]
    finally:
        ctx.destroy(linger=0)


def test_freed_objects_leave_no_file_and_close_removes_the_directory(store, tmp_path):
    for i in range(5):
        store.put(bytes([i]), serialize(_array(i, MiB)), "driver-a" if i % 2 else "b")
    assert len(_files(tmp_path / "spill")) == 2
    for oid in [oid for oid, r in store._objects.items() if r.spilled][:1]:
        store.free(oid)
    assert len(_files(tmp_path / "spill")) == 1
    store.free_owner("driver-a")
    store.free_owner("b")
    assert len(store) == 0 and store.size_bytes == 0 and _files(tmp_path / "spill") == []
    store.put(b"x", serialize(_array(9, 4 * MiB)), "b")     # larger than memory: disk
    assert len(_files(tmp_path / "spill")) == 1
    store.close()
    assert not (tmp_path / "spill").exists()


def test_a_new_agent_clears_what_a_killed_one_left(tmp_path):
    spill = SpillDir(tmp_path / "spill", "n1")
    spill.write(serialize(_array(1, MiB)))          # never freed: its agent was killed
    assert len(_files(tmp_path / "spill")) == 1
    again = SpillDir(tmp_path / "spill", "n1")
    assert _files(tmp_path / "spill") == [] and again.used_bytes == 0
    os.chmod(tmp_path / "spill", 0o755)             # not private: refused, not used
    with pytest.raises(runtime.RuntimeSystemError, match="mode 700"):
        SpillDir(tmp_path / "spill", "n1")


def test_spill_limit_refuses_a_value_and_keeps_nothing_of_it(tmp_path):
    store = ObjectStore(MiB, SpillDir(tmp_path / "spill", "n1", limit_bytes=3 * MiB), "n1")
    try:
        store.put(b"a", serialize(_array(1, 2 * MiB)), "driver")
        with pytest.raises(runtime.ObjectStoreFullError, match="spill limit") as caught:
            store.put(b"b", serialize(_array(2, 2 * MiB)), "driver")
        assert caught.value.node_id == "n1" and caught.value.size_bytes >= 2 * MiB
        assert not store.contains(b"b") and len(_files(tmp_path / "spill")) == 1
        with pytest.raises(runtime.ObjectStoreFullError):   # announced in pieces: at once
            store.begin(b"c", "driver", b"header", [2 * MiB])
        assert "spill limit" in store.failure(b"c")
        assert store.piece(b"c", 0, 0, b"\0" * 100) is False     # dropped
        store.free(b"a")
        store.put(b"b", serialize(_array(2, 2 * MiB)), "driver")  # room again
        assert _sha(store.get(b"b").value()) == _sha(_array(2, 2 * MiB))
    finally:
        store.close()


def test_a_put_arriving_in_pieces_goes_to_memory_or_straight_to_disk(store, tmp_path):
    for object_id, size in ((b"small", MiB), (b"large", 8 * MiB)):
        value = serialize(_array(len(object_id), size))
        view = memoryview(value.buffers[0]).cast("B")
        assert store.begin(object_id, "driver", value.data, [view.nbytes]) is False
        assert store.arriving(object_id)
        for offset in range(0, view.nbytes, 300_000):
            done = store.piece(object_id, 0, offset, view[offset:offset + 300_000])
        assert done and not store.arriving(object_id)
        assert _sha(store.get(object_id).value()) == _sha(_array(len(object_id), size))
    assert store._objects[b"small"].value is not None       # fitted in memory
    assert store._objects[b"large"].spilled is not None     # larger than the capacity
    assert store.begin(b"stalls", "driver", b"x", [MiB]) is False
    assert store.abort_stalled(-1.0) == [b"stalls"]
    assert "stopped arriving" in store.failure(b"stalls")


@pytest.fixture
def tiny_disk(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs as the spill disk needs root")
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m,mode=0700", "tmpfs",
                    str(mount)], check=True)
    try:
        yield mount
    finally:   # a node living on it is stopped first: its pid files go with the mount
        for node_session in mount.glob("*/session"):
            session.stop_session(node_session)
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_is_an_object_store_full_error(tiny_disk, monkeypatch):
    store = ObjectStore(MiB, SpillDir(tiny_disk / "spill", "n1"), "n1")
    try:
        store.put(b"a", serialize(_array(1, 8 * MiB)), "driver")
        store.put(b"b", serialize(_array(2, 8 * MiB)), "driver")
        with pytest.raises(runtime.ObjectStoreFullError, match="bytes free"):
            store.put(b"c", serialize(_array(3, 8 * MiB)), "driver")
        # the disk fills between the look at its free space and the write (another
        # writer): the kernel's ENOSPC is the same error, and no partial file stays
        real_statvfs = os.statvfs
        monkeypatch.setattr(spill_module.os, "statvfs", lambda path: os.statvfs_result(
            tuple(real_statvfs(path))[:4] + (1 << 30,) + tuple(real_statvfs(path))[5:]))
        with pytest.raises(runtime.ObjectStoreFullError, match="No space left"):
            store.put(b"c", serialize(_array(3, 8 * MiB)), "driver")
        assert len(_files(tiny_disk / "spill")) == 2
        for oid, seed in ((b"a", 1), (b"b", 2)):
            assert _sha(store.get(oid).value()) == _sha(_array(seed, 8 * MiB))
    finally:
        store.close()


# ---------------------------------------------------------------- real node agents

class Nodes:
    """Nodes started as real processes (head first), stopped by pid at the end."""

    def __init__(self, base: Path):
        self.base = base
        self.started = {}

    def start(self, node_id: str, node_dir: Path | None = None, **options):
        node_dir = node_dir or self.base / node_id
        if self.started:
            shutil.copytree(self.base / "head" / "keys", node_dir / "keys",
                            dirs_exist_ok=True)
            options.update(head=False, address=self.started["head"].address,
                           wait_registered=True)
        else:
            options.update(head=True, port=0)
        self.started[node_id] = start_node(node_id=node_id, node_dir=node_dir,
                                           node_ip="127.0.0.1", **options)
        return self.started[node_id]

    def connect(self):
        runtime.init(address=self.started["head"].address,
                     keys_dir=str(self.base / "head" / "keys"))

    def agent_pid(self, node_id: str) -> int:
        return self.started[node_id].pids["agent"]

    def spill_dir(self, node_id: str) -> Path:
        return self.started[node_id].session / "spill"

    def stop(self):
        for started in self.started.values():
            session.stop_session(started.session)


@pytest.fixture
def nodes(tmp_path):
    made = Nodes(tmp_path / "cluster")
    try:
        yield made
    finally:
        runtime.shutdown()
        made.stop()


@runtime.remote
def _make(seed: int, size_bytes: int):
    return _array(seed, size_bytes)


@runtime.remote
def _digest(array):
    return _sha(array)


def test_memory_limited_agent_spills_and_returns_every_object_intact(nodes):
    nodes.start("head", num_cpus=2, object_store_memory=48 * MiB,
                object_spill_limit=1024 * MiB)
    agent = nodes.agent_pid("head")
    limit = psutil.Process(agent).memory_info().vms + 448 * MiB   # prlimit --as
    resource.prlimit(agent, resource.RLIMIT_AS, (limit, limit))
    nodes.connect()
    made = [_make.remote(seed, 16 * MiB) for seed in range(20)]       # 320 MiB
    made.append(_make.remote(20, 96 * MiB))     # a result sent in pieces, to disk
    puts = [runtime.put(_array(100 + i, 24 * MiB)) for i in range(4)]  # 96 MiB more
    puts.append(runtime.put(_array(104, 96 * MiB)))   # a put sent in pieces, to disk
    digests = runtime.get([_digest.remote(ref) for ref in puts + made], timeout=150)
    assert digests == [_sha(_array(100 + i, 24 * MiB)) for i in range(4)] + \
        [_sha(_array(104, 96 * MiB))] + \
        [_sha(_array(seed, 16 * MiB)) for seed in range(20)] + [_sha(_array(20, 96 * MiB))]
    stats = api.node_stats("head")
    assert stats["memory_bytes"] <= 48 * MiB and stats["spilled_objects"] >= 15
    assert len(_files(nodes.spill_dir("head"))) == stats["spilled_objects"]
    for seed, ref in enumerate(made):       # restored in the driver too
        assert _sha(runtime.get(ref)) == _sha(_array(seed, 16 * MiB if seed < 20 else
                                                     96 * MiB))
    del made, puts, ref
    wait_until(lambda: api.node_stats("head")["objects"] == 0, timeout_s=30)
    assert _files(nodes.spill_dir("head")) == []
    assert psutil.Process(agent).is_running() and \
        resource.prlimit(agent, resource.RLIMIT_AS)[0] == limit


def test_more_than_memory_and_disk_fails_the_request_not_the_agent(nodes):
    nodes.start("head", num_cpus=1, object_store_memory=32 * MiB,
                object_spill_limit=48 * MiB)
    agent = nodes.agent_pid("head")
    nodes.connect()
    too_big = runtime.put(_array(1, 128 * MiB))            # arrives in pieces
    with pytest.raises(runtime.ObjectStoreFullError, match="spill limit") as caught:
        runtime.get(_digest.remote(too_big), timeout=60)
    assert caught.value.node_id == "head"
    with pytest.raises(runtime.ObjectStoreFullError):       # every task needing it
        runtime.get(_digest.remote(too_big), timeout=60)
    assert _sha(runtime.get(too_big)) == _sha(_array(1, 128 * MiB))   # the driver's copy
    with pytest.raises(runtime.ObjectStoreFullError, match="spill limit"):
        runtime.get(_make.remote(2, 112 * MiB), timeout=60)   # a result, in pieces
    with pytest.raises(runtime.ObjectStoreFullError, match="spill limit"):
        runtime.get(_make.remote(2, 60 * MiB), timeout=60)    # in one message
    kept = [_make.remote(seed, 20 * MiB) for seed in range(3)]   # 60 MiB: memory + disk
    assert runtime.get([_digest.remote(r) for r in kept], timeout=60) == \
        [_sha(_array(seed, 20 * MiB)) for seed in range(3)]
    assert runtime.get(_make.remote(3, 1024)).nbytes == 1024
    assert psutil.Process(agent).is_running()
    assert api.node_stats("head")["failed_puts"] == 1
    del too_big
    wait_until(lambda: api.node_stats("head")["failed_puts"] == 0, timeout_s=30)


def test_objects_spilled_on_one_node_are_fetched_by_a_task_on_another(nodes):
    nodes.start("head", num_cpus=1, resources={"at_head": 1})
    nodes.start("small", num_cpus=1, resources={"at_small": 1},
                object_store_memory=24 * MiB)
    nodes.connect()
    made = [_make.options(resources={"at_small": 1}).remote(seed, 12 * MiB)
            for seed in range(8)]
    runtime.wait(made, num_returns=len(made), timeout=90)
    stats = api.node_stats("small")
    assert stats["spilled_objects"] >= 6 and stats["memory_bytes"] <= 24 * MiB
    digests = runtime.get([_digest.options(resources={"at_head": 1}).remote(ref)
                           for ref in made], timeout=120)
    assert digests == [_sha(_array(seed, 12 * MiB)) for seed in range(8)]
    del made
    wait_until(lambda: _files(nodes.spill_dir("small")) == [], timeout_s=30)


def test_a_spill_disk_that_fills_up_fails_results_until_objects_are_freed(tiny_disk,
                                                                          nodes):
    nodes.start("head", num_cpus=1)
    nodes.start("tiny", node_dir=tiny_disk / "node", num_cpus=1,
                resources={"at_tiny": 1}, object_store_memory=8 * MiB)
    agent = nodes.agent_pid("tiny")
    nodes.connect()
    make = _make.options(resources={"at_tiny": 1})
    kept = [make.remote(seed, 6 * MiB) for seed in range(3)]      # 1 in memory, 2 on disk
    assert runtime.get([_digest.remote(r) for r in kept], timeout=60) == \
        [_sha(_array(seed, 6 * MiB)) for seed in range(3)]
    with pytest.raises(runtime.ObjectStoreFullError, match="tiny.*bytes free"):
        runtime.get(make.remote(9, 12 * MiB), timeout=60)
    del kept
    wait_until(lambda: api.node_stats("tiny")["objects"] == 0, timeout_s=30)
    again = make.remote(9, 12 * MiB)
    assert runtime.get(_digest.remote(again), timeout=60) == _sha(_array(9, 12 * MiB))
    assert psutil.Process(agent).is_running()


def test_corral_start_object_store_flags_and_stop_removes_spilled_files(tmp_path,
                                                                          monkeypatch):
    node_dir = tmp_path / "node"
    env = dict(os.environ, CORRAL_NODE_DIR=str(node_dir), PYTHONPATH=REPO)

    def corral(*args):
        return subprocess.run([sys.executable, "-m", "launcher", *args], env=env,
                              capture_output=True, text=True, timeout=90, cwd=REPO)
    bad = corral("start", "--head", "--object-store-memory", "lots")
    assert bad.returncode == 2 and "not a size" in bad.stderr
    try:
        out = corral("start", "--head", "--port", "0", "--num-cpus", "1",
                     "--node-ip-address", "127.0.0.1", "--object-store-memory", "16M",
                     "--object-spill-limit", "200MiB")
        assert out.returncode == 0, out.stderr
        monkeypatch.setenv("CORRAL_NODE_DIR", str(node_dir))
        runtime.init(address="auto")
        node_id = runtime.nodes()[0]["node_id"]
        refs = [_make.remote(seed, 8 * MiB) for seed in range(4)]
        runtime.wait(refs, num_returns=len(refs), timeout=60)
        stats = api.node_stats(node_id)
        assert (stats["capacity_bytes"], stats["spill_limit_bytes"]) == \
            (16 * MiB, 200 * MiB)
        assert len(_files(node_dir / "session" / "spill")) == stats["spilled_objects"] >= 2
        runtime.shutdown()
        stopped = corral("stop")
        assert stopped.returncode == 0, stopped.stderr
        assert not (node_dir / "session" / "spill").exists()
    finally:
        runtime.shutdown()
        session.stop_session(node_dir / "session")


def test_init_object_store_memory_sizes_the_embedded_runtime():
    try:
        runtime.init(num_cpus=1, object_store_memory="20M")
        assert api.node_stats("embedded")["capacity_bytes"] == 20 * MiB
    finally:
        runtime.shutdown()
