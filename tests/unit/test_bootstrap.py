"""The bootstrap state machine and the `up` plan, with the fake provider and runner."""
from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess

import pytest
import yaml

from launcher.ssh import user_config as ssh_config
from launcher.bootstrap.stages import FULL, NO_RESTART, RESTART_ONLY, CONFIG_ONLY
from launcher.commands.cluster_up import (CREATE, KEEP, REPLACE, UPDATE, UpOptions, apply_up,
                                 plan_up)
from launcher.bootstrap.command_batch import run_batch
from launcher.config.model import AuthConfig, ClusterConfig, NodeTypeConfig
from launcher.bootstrap.hashing import tree_digest
from launcher.tags import (STATUS_UP_TO_DATE, STATUS_UPDATE_FAILED, TAG_FAILURE,
                           TAG_NODE_STATUS)
from tests.fake_provider import FakeProvider, FakeRunner

pytestmark = pytest.mark.timeout(60)

STAGES = ["waiting-for-ssh", "syncing-files", "setting-up", "starting", "up-to-date"]
FAIL_ON_WORKER_2 = ('if [ "$CORRAL_NODE_ID" = fake-worker-3 ]; then echo first-line; '
                    'echo the-last-words >&2; exit 3; fi')


def assert_stages(written: list[str], final: str, must_show=()) -> None:
    """Tags move forward through the stages, in order (a stage shorter than one tag
    write may be merged into the next write), and end at the final state."""
    assert written and written[-1] == final, written
    positions = [STAGES.index(stage) for stage in written[:-1]]
    assert positions == sorted(set(positions)), written
    for stage in must_show:
        assert stage in written, written


def make_config(tmp_path, **changes) -> ClusterConfig:
    mount = tmp_path / "mount"
    mount.mkdir(exist_ok=True)
    if not (mount / "app.py").exists():
        (mount / "app.py").write_text("print('hi')\n")
    base = dict(
        cluster_name="unit", provider={"type": "local", "head_ip": "10.0.0.1"},
        auth=AuthConfig(ssh_user="root", ssh_timeout_s=5),
        available_node_types={
            "head": NodeTypeConfig("head", {"size": "s"}, {"CPU": 1}),
            "w": NodeTypeConfig("w", {"size": "m"}, {"CPU": 2}, min_workers=2,
                                max_workers=4)},
        head_node_type="head", max_workers=4, file_mounts={"/app": str(mount)},
        setup_commands=("echo ran >> $CORRAL_NODE_DIR/setup-count",),
        head_start_commands=("echo head-started >> $CORRAL_NODE_DIR/start-count",),
        worker_start_commands=("echo started >> $CORRAL_NODE_DIR/start-count",
                               "env | grep ^CORRAL_ | sort > $CORRAL_NODE_DIR/env.txt"))
    base.update(changes)
    return ClusterConfig(**base)


def up(config, provider, keys_dir, **options):
    plan = plan_up(config, provider, UpOptions(**options), keys_dir)
    return plan, apply_up(config, provider, plan)


def node_file(provider, node_id, name) -> str:
    return os.path.join(provider.runners[node_id].local_path("/tmp/corral"), name)


def read_lines(path) -> list[str]:
    if not os.path.exists(path):
        return []
    with open(path) as handle:
        return handle.read().splitlines()


def test_fresh_up_runs_every_stage_in_order_with_the_contract_env(tmp_path, keys_dir):
    config = make_config(tmp_path)
    provider = FakeProvider(config, str(tmp_path / "nodes"))
    plan, result = up(config, provider, keys_dir)
    assert [action.action for action in plan.actions] == [CREATE, CREATE, CREATE]
    assert result.ok and len(result.outcomes) == 3
    for node in provider.non_terminated_nodes():
        assert_stages(provider.statuses(node.id), STATUS_UP_TO_DATE)
        assert node.tags[TAG_NODE_STATUS] == STATUS_UP_TO_DATE
        assert read_lines(node_file(provider, node.id, "setup-count")) == ["ran"]
        keys = node_file(provider, node.id, "keys/cluster.secret")
        assert stat.S_IMODE(os.stat(keys).st_mode) == 0o600
        assert os.path.exists(provider.runners[node.id].local_path("/app/app.py"))
    head = provider.non_terminated_nodes({"corral-node-kind": "head"})[0]
    uploaded = yaml.safe_load(open(node_file(provider, head.id, "cluster.yaml")))
    assert uploaded["cluster_name"] == "unit"
    # The head keeps its own copy of every file mount for the autoscaler's new workers,
    # with the same checksum, so workers it bootstraps carry the same runtime hash.
    assert uploaded["file_mounts"] == {"/app": "/tmp/corral/mounts/0"}
    copy = provider.runners[head.id].local_path("/tmp/corral/mounts/0")
    assert tree_digest(copy) == tree_digest(str(tmp_path / "mount"))
    assert stat.S_IMODE(os.stat(node_file(provider, head.id, "cluster.yaml")).st_mode) == 0o600
    worker = provider.non_terminated_nodes({"corral-node-kind": "worker"})[0]
    env = dict(line.split("=", 1) for line in read_lines(node_file(provider, worker.id,
                                                                   "env.txt")))
    assert env["CORRAL_CLUSTER_NAME"] == "unit"
    assert env["CORRAL_NODE_ID"] == worker.id
    assert env["CORRAL_NODE_TYPE"] == "w" and env["CORRAL_NODE_KIND"] == "worker"
    assert env["CORRAL_HEAD_IP"] == head.internal_ip and env["CORRAL_HEAD_PORT"] == "6390"
    assert json.loads(env["CORRAL_NODE_RESOURCES"]) == {"CPU": 2}
    assert env["CORRAL_NODE_DIR"].endswith("/tmp/corral")
    # One remote shell per stage: the setup stage and the two start commands are one run each.
    assert len(provider.runners[worker.id].stage_commands()) <= 3


def test_failing_setup_records_stage_command_exit_code_and_tail(tmp_path, keys_dir):
    config = make_config(tmp_path, worker_setup_commands=("echo fine", FAIL_ON_WORKER_2))
    provider = FakeProvider(config, str(tmp_path / "nodes"))
    _, result = up(config, provider, keys_dir)
    assert not result.ok
    [failed] = result.failed
    assert failed.node_id == "fake-worker-3" and failed.status == STATUS_UPDATE_FAILED
    message = str(failed.error)
    assert "setting-up" in message and "exited 3" in message and "the-last-words" in message
    assert FAIL_ON_WORKER_2 in message and failed.log_path in message
    node = provider.nodes["fake-worker-3"]
    assert node.tags[TAG_NODE_STATUS] == STATUS_UPDATE_FAILED
    assert node.tags[TAG_FAILURE].startswith("setting-up:") and "exited 3" in \
        node.tags[TAG_FAILURE]
    assert_stages(provider.statuses("fake-worker-3"), STATUS_UPDATE_FAILED)
    assert "starting" not in provider.statuses("fake-worker-3")
    assert read_lines(node_file(provider, "fake-worker-3", "start-count")) == []
    log = open(failed.log_path).read()
    assert "the-last-words" in log and "[exit 3" in log and "$ echo fine" in log
    # The others are up and running.
    others = [o for o in result.outcomes if o.node_id != "fake-worker-3"]
    assert len(others) == 2 and all(o.status == STATUS_UP_TO_DATE for o in others)
    # A retry re-runs the failed node only (its status says it never finished).
    plan = plan_up(make_config(tmp_path, worker_setup_commands=("echo fine",)), provider,
                   UpOptions(), keys_dir)
    by_node = {action.node.id: action for action in plan.actions}
    assert by_node["fake-worker-3"].action == UPDATE


def test_unreachable_node_fails_in_waiting_for_ssh_naming_the_host(tmp_path, keys_dir):
    config = make_config(tmp_path)
    provider = FakeProvider(config, str(tmp_path / "nodes"))
    provider.unreachable_ips.add("10.0.0.2")
    _, result = up(config, provider, keys_dir)
    [failed] = result.failed
    assert failed.error.stage == "waiting-for-ssh" and "10.0.0.2" in str(failed.error)
    assert_stages(provider.statuses(failed.node_id), STATUS_UPDATE_FAILED)
    assert set(provider.statuses(failed.node_id)) <= {"waiting-for-ssh", STATUS_UPDATE_FAILED}
    assert sum(1 for o in result.outcomes if o.ok) == 2


def test_every_stage_that_lasts_shows_in_the_tags(tmp_path, keys_dir, monkeypatch):
    from launcher.bootstrap import tag_writer
    monkeypatch.setattr(tag_writer, "DEBOUNCE_S", 0.02)
    config = make_config(tmp_path, setup_commands=("sleep 0.5",),
                         head_start_commands=("sleep 0.5",),
                         worker_start_commands=("sleep 0.5",))
    provider = FakeProvider(config, str(tmp_path / "nodes"))
    _, result = up(config, provider, keys_dir)
    assert result.ok
    for node_id in provider.nodes:
        assert_stages(provider.statuses(node_id), STATUS_UP_TO_DATE,
                      must_show=("setting-up", "starting"))


def actions_by_kind(plan):
    return sorted((action.kind, action.action, action.steps) for action in plan.actions)


def test_hash_decisions(tmp_path, keys_dir):
    config = make_config(tmp_path)
    provider = FakeProvider(config, str(tmp_path / "nodes"))
    up(config, provider, keys_dir)
    unchanged = plan_up(config, provider, UpOptions(), keys_dir)
    assert unchanged.nothing_to_do and all(a.action == KEEP for a in unchanged.actions)
    changed = make_config(tmp_path, setup_commands=("echo v2",))
    assert actions_by_kind(plan_up(changed, provider, UpOptions(), keys_dir)) == \
        [("head", UPDATE, FULL), ("worker", UPDATE, FULL), ("worker", UPDATE, FULL)]
    assert {a.reason for a in plan_up(changed, provider, UpOptions(), keys_dir).actions} \
        == {"setup commands changed"}
    assert {a.steps for a in plan_up(changed, provider, UpOptions(no_restart=True),
                                     keys_dir).actions} == {NO_RESTART}
    assert {a.steps for a in plan_up(config, provider, UpOptions(restart_only=True),
                                     keys_dir).actions} == {RESTART_ONLY}
    assert {a.steps for a in plan_up(config, provider, UpOptions(force_setup=True),
                                     keys_dir).actions} == {FULL}
    # Only the autoscaler's view changed: re-upload the head's config, touch nothing else.
    bounds = make_config(tmp_path, max_workers=9)
    assert actions_by_kind(plan_up(bounds, provider, UpOptions(), keys_dir)) == \
        [("head", UPDATE, CONFIG_ONLY), ("worker", KEEP, None), ("worker", KEEP, None)]
    (tmp_path / "mount" / "app.py").write_text("print('v2')\n")
    mounts_changed = plan_up(config, provider, UpOptions(), keys_dir).actions
    assert all(a.action == UPDATE for a in mounts_changed)
    assert {a.reason for a in mounts_changed} == {"file mount contents changed"}
    bigger = make_config(tmp_path, available_node_types={
        **config.available_node_types,
        "w": NodeTypeConfig("w", {"size": "xl"}, {"CPU": 2}, min_workers=2, max_workers=4)})
    replace = plan_up(bigger, provider, UpOptions(), keys_dir)
    assert [a.action for a in replace.actions if a.kind == "worker"] == [REPLACE, REPLACE]
    assert "node_config" in replace.replacements[0].reason


def test_re_up_reruns_only_what_changed_and_never_duplicates(tmp_path, keys_dir):
    config = make_config(tmp_path)
    provider = FakeProvider(config, str(tmp_path / "nodes"))
    up(config, provider, keys_dir)
    ids = sorted(provider.nodes)
    _, again = up(config, provider, keys_dir)
    assert again.outcomes == [] and len(again.kept) == 3 and sorted(provider.nodes) == ids
    for node_id in ids:
        assert read_lines(node_file(provider, node_id, "setup-count")) == ["ran"]
    _, restarted = up(config, provider, keys_dir, restart_only=True)
    assert all(o.ok for o in restarted.outcomes) and len(restarted.outcomes) == 3
    worker = "fake-worker-2"
    assert read_lines(node_file(provider, worker, "setup-count")) == ["ran"]
    assert read_lines(node_file(provider, worker, "start-count")) == ["started", "started"]
    changed = make_config(tmp_path, setup_commands=("echo v2 >> $CORRAL_NODE_DIR/setup-count",))
    _, rerun = up(changed, provider, keys_dir)
    assert len(rerun.outcomes) == 3 and sorted(provider.nodes) == ids
    assert read_lines(node_file(provider, worker, "setup-count")) == ["ran", "v2"]
    more = make_config(tmp_path, setup_commands=changed.setup_commands, available_node_types={
        **config.available_node_types,
        "w": NodeTypeConfig("w", {"size": "m"}, {"CPU": 2}, min_workers=3, max_workers=4)})
    plan, grown = up(more, provider, keys_dir)
    assert [a.action for a in plan.actions].count(CREATE) == 1
    assert len(provider.nodes) == 4
    # The new worker is bootstrapped; the head only gets the new config (min_workers).
    assert sorted(o.steps for o in grown.outcomes) == ["sync + setup + start", "upload config"]


def test_replacing_the_head_terminates_it_and_restarts_workers(tmp_path, keys_dir):
    config = make_config(tmp_path)
    provider = FakeProvider(config, str(tmp_path / "nodes"))
    up(config, provider, keys_dir)
    new_head = make_config(tmp_path, available_node_types={
        **config.available_node_types, "head": NodeTypeConfig("head", {"size": "xl"},
                                                              {"CPU": 1})})
    plan, result = up(new_head, provider, keys_dir)
    assert [a.action for a in plan.actions] == [REPLACE, UPDATE, UPDATE]
    assert provider.terminated == ["fake-head-1"] and result.ok
    heads = provider.non_terminated_nodes({"corral-node-kind": "head"})
    assert len(heads) == 1 and heads[0].id != "fake-head-1"
    env = dict(line.split("=", 1) for line in read_lines(node_file(provider, "fake-worker-2",
                                                                   "env.txt")))
    assert env["CORRAL_HEAD_IP"] == heads[0].internal_ip


def test_batch_knows_which_command_failed_and_isolates_commands(tmp_path):
    runner = FakeRunner("10.0.0.9", str(tmp_path / "node"))
    log = str(tmp_path / "node.log")
    failure = run_batch(runner, ["cd / && export LEAK=1 && echo one",
                                 'test -z "$LEAK" && pwd',
                                 "echo out; echo err >&2; exit 7", "echo never"],
                        env={}, log_path=log)
    assert failure.index == 2 and failure.exit_code == 7
    assert failure.output_tail.splitlines() == ["out", "err"]
    text = open(log).read()
    assert str(tmp_path / "node") in text  # the second command ran in the original cwd
    assert "never" not in text.replace("$ echo never", "")
    assert run_batch(runner, ["true", "echo ok # a comment with )"], env={}) is None


def test_tag_writer_keeps_order_merges_while_busy_and_ends_at_the_final_tags(tmp_path,
                                                                             monkeypatch):
    import threading
    from launcher.bootstrap import tag_writer
    monkeypatch.setattr(tag_writer, "DEBOUNCE_S", 0.0)
    config = make_config(tmp_path)
    provider = FakeProvider(config, str(tmp_path / "nodes"))
    [node_id] = provider.create_nodes("w", {}, {"corral-node-kind": "worker"}, 1)
    release = threading.Event()
    original = provider.set_node_tags

    def slow_first_write(node, tags):
        release.wait(5)  # hold the first write until every later stage has been set
        original(node, tags)
    provider.set_node_tags = slow_first_write
    writer = tag_writer.TagWriter(provider, node_id)
    for stage in STAGES[:4]:
        writer.set({TAG_NODE_STATUS: stage})
    release.set()
    writer.finish({TAG_NODE_STATUS: STATUS_UP_TO_DATE, "corral-runtime-hash": "abc"})
    written = provider.statuses(node_id)
    assert_stages(written, STATUS_UP_TO_DATE)
    assert len(written) <= 3  # the stages set during the slow write were merged
    assert provider.nodes[node_id].tags["corral-runtime-hash"] == "abc"
    writer.finish({TAG_FAILURE: "late"})  # after finishing, writes go straight through
    assert provider.nodes[node_id].tags[TAG_FAILURE] == "late"


def _new_key(path, passphrase: str = "") -> str:
    if not shutil.which("ssh-keygen"):
        pytest.skip("ssh-keygen is not installed")
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", passphrase, "-f", str(path)],
                   check=True, capture_output=True)
    return str(path)


@pytest.mark.parametrize("passphrase", ["", "secret"])
def test_head_gets_the_ssh_config_key_when_the_yaml_names_none(tmp_path, keys_dir,
                                                               monkeypatch, passphrase):
    """With no auth.ssh_private_key, the head still reaches workers with the key this
    machine's ~/.ssh/config gives the head host, unless that key needs a passphrase."""
    key = _new_key(tmp_path / "id_rack", passphrase)
    ssh_config_file = tmp_path / "ssh_config"
    ssh_config_file.write_text(f"Host 10.0.0.1\n  IdentityFile {key}\n")
    monkeypatch.setenv(ssh_config.CONFIG_ENV, str(ssh_config_file))
    config = make_config(tmp_path)
    assert config.auth.ssh_private_key is None
    provider = FakeProvider(config, str(tmp_path / "nodes"))
    _, result = up(config, provider, keys_dir)
    assert result.ok
    head = provider.non_terminated_nodes({"corral-node-kind": "head"})[0]
    uploaded = yaml.safe_load(open(node_file(provider, head.id, "cluster.yaml")))
    shipped = node_file(provider, head.id, "ssh_key")
    if passphrase:  # the head cannot use it: nothing travels, validate said so
        assert not (uploaded["auth"] or {}).get("ssh_private_key")
        assert not os.path.exists(shipped)
        return
    assert uploaded["auth"]["ssh_private_key"] == "/tmp/corral/ssh_key"
    assert open(shipped).read() == open(key).read()
    assert stat.S_IMODE(os.stat(shipped).st_mode) == 0o600
