"""The `process` provider: node files, head port, runner environment, and terminate
stopping exactly the node's own processes (daemons included, nothing else)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import pytest

from launcher import tags as T
from launcher.errors import NodeNotFoundError
from launcher.providers import make_provider
from launcher.providers.node_processes import is_alive
from launcher.providers.process import ProcessProvider
from tests.contract.provider_process import HEAD_TYPE, WORKER_TYPE, process_config
from tests.helpers import wait_for

pytestmark = pytest.mark.timeout(60)

HEAD_TAGS = {T.TAG_NODE_KIND: T.KIND_HEAD, T.TAG_NODE_TYPE: HEAD_TYPE}
WORKER_TAGS = {T.TAG_NODE_KIND: T.KIND_WORKER, T.TAG_NODE_TYPE: WORKER_TYPE}


@pytest.fixture
def provider():
    provider = ProcessProvider(process_config("unit"))
    try:
        yield provider
    finally:
        provider.terminate_nodes([node.id for node in provider.non_terminated_nodes()])


def wait_dead(pid, timeout_s=10.0):
    return wait_for(lambda: not is_alive(pid), timeout_s, f"pid {pid} to end",
                    interval_s=0.02)


def start_daemon(runner, name):
    """Start a double-forked `sleep` on the node; returns its PID."""
    result = runner.run(f"( sleep 300 >/dev/null 2>&1 </dev/null & echo $! > {name} )",
                        timeout_s=10, check=True)
    assert result.ok
    with open(os.path.join(runner.workdir, name)) as handle:
        pid = int(handle.read())
    assert is_alive(pid)
    return pid


def test_make_provider_picks_process_provider():
    assert isinstance(make_provider(process_config("pick")), ProcessProvider)


def test_head_gets_a_free_port_and_local_addresses(provider):
    assert provider.head_port() is None
    [head_id] = provider.create_nodes(HEAD_TYPE, {}, HEAD_TAGS, 1)
    [head] = provider.non_terminated_nodes({T.TAG_NODE_KIND: T.KIND_HEAD})
    assert head.id == head_id and head_id.startswith("unit-head-")
    assert head.state == "running"
    assert head.internal_ip == head.external_ip == "127.0.0.1"
    port = int(head.tags[T.TAG_HEAD_PORT])
    assert 0 < port < 65536
    assert provider.head_port() == port
    [worker_id] = provider.create_nodes(WORKER_TYPE, {}, WORKER_TAGS, 1)
    assert worker_id.startswith("unit-worker-")
    assert T.TAG_HEAD_PORT not in provider.node(worker_id).tags


def test_node_file_is_the_shared_truth(provider):
    ids = provider.create_nodes(WORKER_TYPE, {"x": 1}, WORKER_TAGS, 2)
    record = json.loads((provider.node_dir(ids[0]) / "node.json").read_text())
    assert record["kind"] == T.KIND_WORKER and record["node_type"] == WORKER_TYPE
    assert record["node_config"] == {"x": 1}
    assert oct(os.stat(provider.node_dir(ids[0]) / "node.json").st_mode & 0o777) == "0o600"
    second = ProcessProvider(process_config("unit"))  # e.g. the head's autoscaler
    assert sorted(n.id for n in second.non_terminated_nodes()) == sorted(ids)
    second.set_node_tags(ids[0], {T.TAG_NODE_STATUS: T.STATUS_UP_TO_DATE})
    assert provider.node(ids[0]).status == T.STATUS_UP_TO_DATE


def test_concurrent_creates_never_collide(provider):
    results, errors = [], []

    def create(shared):
        try:
            creator = provider if shared else ProcessProvider(process_config("unit"))
            new_ids = creator.create_nodes(WORKER_TYPE, {}, WORKER_TAGS, 3)
            creator.set_node_tags(new_ids[0], {"by": "thread"})
            results.extend(new_ids)
        except Exception as error:  # noqa: BLE001 - reported by the assert below
            errors.append(error)
    threads = [threading.Thread(target=create, args=(index % 2 == 0,)) for index in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert len(set(results)) == 12
    assert len(provider.non_terminated_nodes()) == 12
    assert len(provider.non_terminated_nodes({"by": "thread"})) == 4
    provider.terminate_nodes(results)  # in parallel, one shared lock
    assert provider.non_terminated_nodes() == []


def test_set_tags_on_unknown_node_raises(provider):
    with pytest.raises(NodeNotFoundError):
        provider.set_node_tags("unit-worker-nothere", {"a": "b"})


def test_terminating_unknown_or_bad_ids_is_a_no_op(provider):
    [keep] = provider.create_nodes(WORKER_TYPE, {}, WORKER_TAGS, 1)
    provider.terminate_nodes(["unit-worker-nothere", "../../etc", "", keep + "/.."])
    assert provider.node(keep) is not None


def test_runner_runs_in_node_dir_with_node_env(provider):
    [head_id] = provider.create_nodes(HEAD_TYPE, {}, HEAD_TAGS, 1)
    runner = provider.command_runner(provider.node(head_id))
    result = runner.run('echo "$PWD|$CORRAL_NODE_DIR|$CORRAL_NODE_ID|$CORRAL_HEAD_PORT"',
                        timeout_s=10, check=True)
    cwd, node_dir, node_id, port = result.stdout.strip().split("|")
    assert os.path.realpath(cwd) == os.path.realpath(node_dir) \
        == os.path.realpath(provider.node_dir(head_id))
    assert node_id == head_id
    assert int(port) == provider.head_port()
    assert runner.run("echo hi", env={"CORRAL_HEAD_PORT": "7"}).ok  # caller env still wins
    assert runner.run("echo $CORRAL_HEAD_PORT", env={"CORRAL_HEAD_PORT": "7"}).stdout == "7\n"


def test_terminate_kills_daemons_of_that_node_only(provider):
    first, second = provider.create_nodes(WORKER_TYPE, {}, WORKER_TAGS, 2)
    first_daemon = start_daemon(provider.command_runner(provider.node(first)), "d1")
    second_daemon = start_daemon(provider.command_runner(provider.node(second)), "d2")
    other_cluster = ProcessProvider(process_config("unit-other"))
    [foreign] = other_cluster.create_nodes(WORKER_TYPE, {}, WORKER_TAGS, 1)
    foreign_daemon = start_daemon(other_cluster.command_runner(other_cluster.node(foreign)),
                                  "d3")
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    try:
        provider.terminate_nodes([first])
        assert wait_dead(first_daemon)
        assert not provider.node_dir(first).exists()
        assert provider.node(first) is None
        assert is_alive(second_daemon) and is_alive(foreign_daemon)
        assert bystander.poll() is None
        other_cluster.terminate_nodes([first, second])  # not its nodes: nothing happens
        assert is_alive(second_daemon)
    finally:
        bystander.kill()
        bystander.wait()
        other_cluster.terminate_nodes([foreign])
    assert wait_dead(foreign_daemon)


def test_terminate_kills_pid_file_processes_even_without_the_env_tag(provider):
    [node_id] = provider.create_nodes(WORKER_TYPE, {}, WORKER_TAGS, 1)
    runner = provider.command_runner(provider.node(node_id))
    # `env -i` drops CORRAL_NODE_DIR: only the runtime's pid file can find this one.
    runner.run("mkdir -p session && ( env -i sleep 300 >/dev/null 2>&1 </dev/null & "
               "echo $! > session/agent.pid )", timeout_s=10, check=True)
    pid = int((provider.node_dir(node_id) / "session" / "agent.pid").read_text())
    assert is_alive(pid)
    provider.terminate_nodes([node_id])
    assert wait_dead(pid)


def test_stale_pid_file_never_kills_a_newer_process(provider):
    [node_id] = provider.create_nodes(WORKER_TYPE, {}, WORKER_TAGS, 1)
    session = provider.node_dir(node_id) / "session"
    session.mkdir()
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    try:
        stale = session / "old.pid"
        stale.write_text(f"{bystander.pid}\n")
        written_long_ago = time.time() - 3600  # as if the PID was re-used since
        os.utime(stale, (written_long_ago, written_long_ago))
        provider.terminate_nodes([node_id])
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()


def test_terminate_escalates_to_sigkill(provider, monkeypatch):
    [node_id] = provider.create_nodes(WORKER_TYPE, {}, WORKER_TAGS, 1)
    runner = provider.command_runner(provider.node(node_id))
    runner.run("( trap '' TERM; exec sleep 300 >/dev/null 2>&1 </dev/null & echo $! > p )",
               timeout_s=10, check=True)
    pid = int((provider.node_dir(node_id) / "p").read_text())
    monkeypatch.setattr("launcher.providers.process.STOP_GRACE_S", 0.3)
    provider.terminate_nodes([node_id])
    assert wait_dead(pid)


def test_configured_head_port_is_used():
    config = process_config("fixed-port")
    config = config.replace(provider={"type": "process", "head_port": 16390})
    provider = ProcessProvider(config)
    try:
        provider.create_nodes(HEAD_TYPE, {}, HEAD_TAGS, 1)
        assert provider.head_port() == 16390
    finally:
        provider.terminate_nodes([node.id for node in provider.non_terminated_nodes()])


def test_reading_a_cluster_that_never_existed_creates_nothing(corral_home):
    import stat
    provider = ProcessProvider(process_config("ghost"))
    try:
        assert provider.non_terminated_nodes() == []
        assert provider.head_port() is None
        provider.terminate_nodes(["ghost-worker-abc123"])
        assert not (corral_home / "clusters" / "ghost").exists()
        provider.create_nodes(WORKER_TYPE, {}, WORKER_TAGS, 1)  # the first write makes it
        nodes_dir = corral_home / "clusters" / "ghost" / "nodes"
        assert stat.S_IMODE(nodes_dir.stat().st_mode) == 0o700
        assert len(provider.non_terminated_nodes()) == 1
    finally:
        provider.terminate_nodes([node.id for node in provider.non_terminated_nodes()])
