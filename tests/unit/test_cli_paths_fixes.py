"""Exit codes of `corral` for interrupts and OS errors, private state directories,
picking a node by id or IP, the head's copy of the config, and unexpected bootstrap
errors."""
from __future__ import annotations

import os
import stat
import subprocess
import sys

import click
import pytest

from launcher import cli, paths
from launcher.commands.cluster import pick_node
from launcher.commands.cluster_up import UpOptions, apply_up, plan_up
from launcher.config.model import AuthConfig, ClusterConfig, NodeTypeConfig
from launcher.errors import ClusterError, UsageError
from launcher.bootstrap.node_context import ClusterContext
from launcher.providers.base import STATE_RUNNING, Node
from launcher.tags import STATUS_UPDATE_FAILED, TAG_FAILURE, TAG_NODE_STATUS
from tests.fake_provider import FakeProvider, FakeRunner

pytestmark = pytest.mark.timeout(60)


# -- cli.main exit codes ---------------------------------------------------------------
@click.command(name="boom")
@click.argument("what")
def boom(what):
    if what == "ctrl-c":
        raise KeyboardInterrupt
    if what == "decline":
        click.confirm("Go on?", abort=True)
    if what == "oserror":
        raise NotADirectoryError(20, "Not a directory", "/some/where")
    if what == "runtime":
        from runtime.errors import RuntimeConnectionError
        raise RuntimeConnectionError("198.18.0.9:6390", "no answer")


@pytest.mark.parametrize("what, code, message", [
    ("ctrl-c", 130, "Interrupted."), ("decline", 1, "Aborted."),
    ("oserror", 1, "Error: [Errno 20] Not a directory: '/some/where'"),
    ("runtime", 1, "Error: ")])
def test_main_maps_interrupts_declines_and_os_errors(monkeypatch, capsys, what, code,
                                                     message):
    monkeypatch.setitem(cli.COMMANDS, "boom", (f"{__name__}:boom", "test"))
    monkeypatch.setattr("sys.stdin", open(os.devnull))  # the prompt reads EOF: declined
    with pytest.raises(SystemExit) as exited:
        cli.main(["boom", what])
    assert exited.value.code == code
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_the_cli_does_not_import_the_runtime_just_to_catch_its_errors():
    run = subprocess.run([sys.executable, "-c", "import sys, launcher.cli; "
                          "print('runtime' in sys.modules)"],
                         capture_output=True, text=True, timeout=60)
    assert run.stdout.strip() == "False", run.stderr


def test_corral_home_that_is_a_file_is_a_message_not_a_traceback(tmp_path):
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    config = tmp_path / "c.yaml"
    config.write_text("cluster_name: c\nprovider: {type: process}\n")
    run = subprocess.run([sys.executable, "-m", "launcher", "up", str(config)],
                         capture_output=True, text=True, timeout=60,
                         env={**os.environ, "CORRAL_HOME": str(not_a_dir)})
    assert run.returncode == 1, run.stderr
    assert "Error:" in run.stderr and str(not_a_dir) in run.stderr
    assert "Traceback" not in run.stderr


# -- paths --------------------------------------------------------------------------------
def test_state_directories_are_private_from_the_top(tmp_path, monkeypatch):
    home = tmp_path / "deep" / "home"
    monkeypatch.setenv("CORRAL_HOME", str(home))
    old_umask = os.umask(0o022)
    try:
        logs = paths.logs_dir("c1")
    finally:
        os.umask(old_umask)
    for directory in (home, home / "clusters", home / "clusters" / "c1", logs):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700, directory


def test_a_state_directory_that_cannot_be_made_names_its_path(tmp_path, monkeypatch):
    blocker = tmp_path / "home"
    blocker.write_text("not a directory")
    monkeypatch.setenv("CORRAL_HOME", str(blocker))
    with pytest.raises(ClusterError) as raised:
        paths.cluster_dir("c1")
    assert str(blocker / "clusters" / "c1") in str(raised.value)


def test_write_private_fixes_an_existing_files_mode_before_writing(tmp_path):
    path = tmp_path / "secret"
    path.write_text("old")
    os.chmod(path, 0o644)
    paths.write_private(path, "new secret")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text() == "new secret"


# -- pick_node ----------------------------------------------------------------------------
class _Config:
    cluster_name = "c1"


class _Listing:
    def __init__(self, nodes):
        self.nodes = nodes

    def non_terminated_nodes(self, tag_filters=None):
        return self.nodes


def _node(node_id, ip):
    return Node(node_id, "worker", "w", STATE_RUNNING, ip, ip, {})


def test_pick_node_prefers_ids_and_refuses_an_ambiguous_ip():
    nodes = [_node("c1-head-1", "127.0.0.1"), _node("c1-worker-2", "127.0.0.1"),
             _node("c1-worker-3", "10.0.0.3")]
    provider = _Listing(nodes)
    assert pick_node(provider, _Config, "c1-worker-2") is nodes[1]
    assert pick_node(provider, _Config, "10.0.0.3") is nodes[2]
    with pytest.raises(UsageError) as raised:
        pick_node(provider, _Config, "127.0.0.1")
    assert "c1-head-1" in str(raised.value) and "c1-worker-2" in str(raised.value)
    with pytest.raises(UsageError):
        pick_node(provider, _Config, "nope")


# -- the head's config --------------------------------------------------------------------
def _config(tmp_path, **changes):
    base = dict(
        cluster_name="unit", provider={"type": "local", "head_ip": "10.0.0.1"},
        auth=AuthConfig(ssh_user="root", ssh_timeout_s=5),
        available_node_types={"head": NodeTypeConfig("head", {}, {"CPU": 1}),
                              "w": NodeTypeConfig("w", {}, {"CPU": 1}, min_workers=1,
                                                  max_workers=1)},
        head_node_type="head", max_workers=1,
        setup_commands=("echo setup",))
    base.update(changes)
    return ClusterConfig(**base)


def test_head_document_drops_the_laptops_credentials_file(tmp_path):
    config = _config(tmp_path, provider={"type": "gcp", "project_id": "p", "zone": "z",
                                         "credentials_file": "/home/me/sa.json"})
    context = ClusterContext.build(config, "10.0.0.1", 6390, None)
    document = context.head_document("/tmp/corral")
    assert "credentials_file" not in document["provider"]
    assert document["provider"]["project_id"] == "p"
    assert config.provider["credentials_file"] == "/home/me/sa.json"  # unchanged


# -- unexpected bootstrap errors ----------------------------------------------------------
class _BrokenSyncRunner(FakeRunner):
    def put(self, local, remote, *, exclude=None):
        raise RuntimeError("a bug in file sync")


class _BrokenSyncProvider(FakeProvider):
    def command_runner(self, node):
        if node.id not in self.runners:
            self.runners[node.id] = _BrokenSyncRunner(
                node.internal_ip, os.path.join(self.workdir, node.id))
        return self.runners[node.id]


def test_an_unexpected_error_names_the_stage_reached_in_outcome_log_and_tags(tmp_path):
    mount = tmp_path / "mount"
    mount.mkdir()
    (mount / "f").write_text("x")
    config = _config(tmp_path, file_mounts={"/app": str(mount)})
    provider = _BrokenSyncProvider(config, str(tmp_path / "nodes"))
    plan = plan_up(config, provider, UpOptions(), None)
    result = apply_up(config, provider, plan)
    assert len(result.failed) == 2
    for outcome in result.failed:
        assert outcome.error.stage == "syncing-files", str(outcome.error)
        assert "RuntimeError: a bug in file sync" in str(outcome.error)
        log = open(outcome.log_path).read()
        assert "syncing-files" in log and "a bug in file sync" in log
        tags = provider.nodes[outcome.node_id].tags
        assert tags[TAG_NODE_STATUS] == STATUS_UPDATE_FAILED
        assert tags[TAG_FAILURE].startswith("syncing-files:")
