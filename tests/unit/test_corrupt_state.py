"""Damaged process-provider records (truncated, wrong shape, missing, or only the node's
processes left) are named with their path, never skipped: `status` shows them and exits
1, `down` stops their processes and says nothing is left only when no record and no
process of the cluster is left, `up` replaces a damaged head instead of starting a
second one. Real `corral` processes and real node processes throughout."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
import yaml

from launcher import tags as T
from launcher.errors import ProviderError, StateFileError
from launcher.providers.base import STATE_DAMAGED
from launcher.providers.process import ProcessProvider
from runtime.node.processes import ENV_NODE_DIR, pids_with_env_in, stop
from tests.contract.provider_process import process_config
from tests.helpers import alive, wait_for

pytestmark = pytest.mark.timeout(150)

DAEMON = "nohup sleep 600 > /dev/null 2>&1 &"
HEAD_TAGS = {T.TAG_NODE_KIND: T.KIND_HEAD, T.TAG_NODE_TYPE: "head"}
WORKER_TAGS = {T.TAG_NODE_KIND: T.KIND_WORKER, T.TAG_NODE_TYPE: "cpu"}


def corral(*args: str, timeout_s: float = 90) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "launcher", *args], capture_output=True,
                          text=True, timeout=timeout_s, stdin=subprocess.DEVNULL)


class Cluster:
    """A process-provider cluster (head + `workers` workers) through the real CLI."""

    def __init__(self, tmp_path: Path, corral_home: Path, name: str, workers: int,
                 runtime: bool):
        self.name = name
        self.path = tmp_path / f"{name}.yaml"
        self.nodes_dir = corral_home / "clusters" / name / "nodes"
        document = {
            "cluster_name": name, "provider": {"type": "process"}, "max_workers": 2,
            "available_node_types": {
                "head": {"resources": {"CPU": 0}, "min_workers": 0, "max_workers": 0},
                "cpu": {"resources": {"CPU": 1}, "min_workers": workers, "max_workers": 2}},
            "head_node_type": "head"}
        if not runtime:  # a daemon per node instead of the runtime: quicker, same rules
            document.update(head_start_commands=[DAEMON], worker_start_commands=[DAEMON])
        self.path.write_text(yaml.safe_dump(document))

    def run(self, command: str, *extra: str) -> subprocess.CompletedProcess:
        return corral(command, *extra, str(self.path))

    def node_dirs(self, kind: str | None = None) -> list[Path]:
        if not self.nodes_dir.is_dir():
            return []
        return sorted(path for path in self.nodes_dir.iterdir() if path.is_dir()
                      and not path.name.startswith(".")
                      and (kind is None or f"-{kind}-" in path.name))

    def processes(self) -> dict[str, set[int]]:
        """{node id: pids} of every live process tagged with one of this cluster's node
        directories (whether or not the directory is still there)."""
        return {os.path.basename(node_dir): pids for node_dir, pids
                in pids_with_env_in(ENV_NODE_DIR, str(self.nodes_dir)).items() if pids}

    def commands_running(self, module: str) -> list[int]:
        found = []
        for pids in self.processes().values():
            for pid in pids:
                try:
                    if module in psutil.Process(pid).cmdline():
                        found.append(pid)
                except psutil.Error:
                    continue
        return found


@pytest.fixture
def make_cluster(tmp_path, corral_home):
    made: list[Cluster] = []

    def make(workers: int = 1, runtime: bool = False) -> Cluster:
        cluster = Cluster(tmp_path, corral_home, f"dmg{len(made)}x{os.getpid() % 10000}",
                          workers, runtime)
        made.append(cluster)
        result = cluster.run("up", "-y")
        assert result.returncode == 0, result.stdout + result.stderr
        # The start command's daemon is forked by a shell that exits at once; on a busy
        # machine it may still be exec'ing (its environment not yet readable) when up
        # returns, so the tests start from every node's daemon seen running.
        wait_for(lambda: all(cluster.processes().get(node.name)
                             for node in cluster.node_dirs()), 30,
                 "a running process on every node after up")
        return cluster
    try:
        yield make
    finally:
        for cluster in made:
            corral("down", "-y", str(cluster.path))
            leftover = set().union(*cluster.processes().values()) \
                if cluster.processes() else set()
            stop(leftover, grace_s=1.0)  # never leave a process behind, even on failure


def damage(record_path: Path, how: str) -> None:
    text = record_path.read_text()
    record = json.loads(text)
    if how == "truncated":
        record_path.write_text(text[:len(text) // 2])
    elif how == "empty":
        record_path.write_text("")
    elif how == "a list":
        record_path.write_text(json.dumps([record]))
    elif how == "no tags":
        del record["tags"]
        record_path.write_text(json.dumps(record))
    elif how == "tags not a mapping":
        record["tags"] = ["corral-cluster-name"]
        record_path.write_text(json.dumps(record))
    elif how == "another node's id":
        record["id"] = record["id"] + "0"
        record_path.write_text(json.dumps(record))
    elif how == "binary":
        record_path.write_bytes(b"\xff\xfe\x00garbage")
    elif how == "missing":
        record_path.unlink()
    else:
        raise AssertionError(how)


DAMAGES = ["truncated", "empty", "a list", "no tags", "tags not a mapping",
           "another node's id", "binary", "missing"]


@pytest.mark.parametrize("how", DAMAGES)
def test_a_damaged_record_is_named_and_listed_as_damaged(corral_home, how):
    provider = ProcessProvider(process_config("rec"))
    try:
        [head] = provider.create_nodes("head", {}, HEAD_TAGS, 1)
        [worker] = provider.create_nodes("cpu", {}, WORKER_TAGS, 1)
        record = provider.node_dir(worker) / "node.json"
        damage(record, how)
        with pytest.raises(StateFileError) as raised:
            provider.non_terminated_nodes()
        assert raised.value.path == str(record)
        assert str(record) in str(raised.value) and "corral down" in str(raised.value)
        listed = {node.id: node for node in provider.nodes_including_damaged()}
        assert listed[head].state != STATE_DAMAGED
        assert listed[worker].state == STATE_DAMAGED and listed[worker].kind == T.KIND_WORKER
        assert provider.damaged[worker].path == str(record)
        assert provider.head_port() is not None  # the head's record is still read
        provider.terminate_nodes([worker])  # a damaged node can be taken down
        assert not provider.node_dir(worker).exists()
        assert [node.id for node in provider.non_terminated_nodes()] == [head]
    finally:
        provider.terminate_nodes([node.id for node in provider.nodes_including_damaged()])


def test_a_second_head_is_refused_while_one_is_there_even_damaged(corral_home):
    provider = ProcessProvider(process_config("onehead"))
    try:
        [head] = provider.create_nodes("head", {}, HEAD_TAGS, 1)
        with pytest.raises(ProviderError, match="already has a head"):
            provider.create_nodes("head", {}, HEAD_TAGS, 1)
        damage(provider.node_dir(head) / "node.json", "truncated")
        with pytest.raises(ProviderError, match=f"already has a head \\({head}\\)"):
            provider.create_nodes("head", {}, HEAD_TAGS, 1)
        provider.terminate_nodes([head])
        [second] = provider.create_nodes("head", {}, HEAD_TAGS, 1)
        assert [node.id for node in provider.non_terminated_nodes()] == [second]
    finally:
        provider.terminate_nodes([node.id for node in provider.nodes_including_damaged()])
    assert not any(provider.nodes_dir.glob(".creating-*"))


def test_status_shows_a_truncated_head_record_and_names_it(make_cluster):
    cluster = make_cluster()
    [head_dir] = cluster.node_dirs("head")
    damage(head_dir / "node.json", "truncated")
    status = cluster.run("status")
    assert status.returncode == 1, status.stdout + status.stderr
    assert "Traceback" not in status.stdout + status.stderr
    assert f"{head_dir.name}" in status.stdout and "damaged" in status.stdout
    assert f"{head_dir / 'node.json'}: corrupt state file: not valid JSON" in status.stderr


def test_down_takes_down_a_cluster_whose_head_record_is_truncated(make_cluster):
    cluster = make_cluster(workers=1)
    head_pids = cluster.processes()[cluster.node_dirs("head")[0].name]
    assert head_pids
    damage(cluster.node_dirs("head")[0] / "node.json", "truncated")
    down = cluster.run("down", "-y")
    assert down.returncode == 0, down.stdout + down.stderr
    assert "is damaged" in down.stdout and "nothing of cluster" in down.stdout
    assert cluster.processes() == {} and cluster.node_dirs() == []
    assert not any(alive(pid) for pid in head_pids)


@pytest.mark.parametrize("how", ["truncated", "a list", "missing"])
def test_up_replaces_a_damaged_head_and_never_starts_a_second(make_cluster, how):
    cluster = make_cluster(workers=1)
    [old_head] = cluster.node_dirs("head")
    old_pids = cluster.processes()[old_head.name]
    damage(old_head / "node.json", how)
    refused = cluster.run("up")  # not a terminal: replacing needs -y
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert f"up would replace {old_head.name}" in refused.stderr
    assert cluster.node_dirs("head") == [old_head]
    up = cluster.run("up", "-y")
    assert up.returncode == 0, up.stdout + up.stderr
    [new_head] = cluster.node_dirs("head")
    assert new_head != old_head
    assert not any(alive(pid) for pid in old_pids)
    assert set(cluster.processes()) == {node.name for node in cluster.node_dirs()}
    assert cluster.run("status").returncode == 0


def test_up_replaces_a_head_that_left_only_processes(make_cluster):
    cluster = make_cluster(workers=0)
    [old_head] = cluster.node_dirs("head")
    old_pids = cluster.processes()[old_head.name]
    os.rename(old_head, old_head.parent / ".gone")  # the directory is gone, processes run
    status = cluster.run("status")
    assert status.returncode == 1 and "still run" in status.stderr, status.stderr
    up = cluster.run("up", "-y")
    assert up.returncode == 0, up.stdout + up.stderr
    assert not any(alive(pid) for pid in old_pids)
    assert len(cluster.node_dirs("head")) == 1
    shutil.rmtree(old_head.parent / ".gone")


def test_down_stops_processes_that_have_no_record_left(make_cluster):
    cluster = make_cluster(workers=1)
    [worker] = cluster.node_dirs("worker")
    pids = cluster.processes()[worker.name]
    os.rename(worker, worker.parent / ".terminated-lost")  # as an interrupted terminate
    down = cluster.run("down", "-y")
    assert down.returncode == 0, down.stdout + down.stderr
    assert worker.name in down.stdout
    assert not any(alive(pid) for pid in pids)
    assert cluster.processes() == {}


def test_a_wrong_shaped_worker_record_is_replaced_by_up(make_cluster):
    cluster = make_cluster(workers=1)
    [old_worker] = cluster.node_dirs("worker")
    old_pids = cluster.processes()[old_worker.name]
    damage(old_worker / "node.json", "tags not a mapping")
    up = cluster.run("up", "-y")
    assert up.returncode == 0, up.stdout + up.stderr
    assert "remove" in up.stdout and "damaged" in up.stdout
    [new_worker] = cluster.node_dirs("worker")
    assert new_worker != old_worker and len(cluster.node_dirs("head")) == 1
    assert not any(alive(pid) for pid in old_pids)


@pytest.mark.timeout(170)
def test_with_the_runtime_a_truncated_head_record_never_gives_two_control_services(
        make_cluster):
    """The issue's case on the real runtime: truncate the head's record, run `up` again:
    one control service and one monitor, before and after; the monitor meanwhile names
    the damaged file instead of acting; `down` then leaves no process."""
    cluster = make_cluster(workers=0, runtime=True)
    assert len(cluster.commands_running("runtime.control.service")) == 1
    wait_for(lambda: len(cluster.commands_running("autoscaler.monitor")) == 1, 30,
             "the monitor to start")
    [head] = cluster.node_dirs("head")
    damage(head / "node.json", "truncated")
    events = head / "session" / "autoscaler.events"
    wait_for(lambda: events.exists() and str(head / "node.json") in events.read_text(), 30,
             "the monitor to name the damaged record",
             describe=lambda: events.read_text() if events.exists() else "no events")
    up = cluster.run("up", "-y")
    assert up.returncode == 0, up.stdout + up.stderr
    assert len(cluster.node_dirs("head")) == 1
    assert len(cluster.commands_running("runtime.control.service")) == 1
    wait_for(lambda: len(cluster.commands_running("autoscaler.monitor")) == 1, 30,
             "one monitor")
    down = cluster.run("down", "-y")
    assert down.returncode == 0, down.stdout + down.stderr
    assert cluster.processes() == {}
