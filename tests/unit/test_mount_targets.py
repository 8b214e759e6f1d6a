"""file_mounts targets: one that climbs out of the node's directory (home over SSH) with
`..` is refused with its key and line before anything is created; `down` names the
targets it leaves (an absolute one on the process provider, every one on SSH hosts)
instead of saying nothing is left. Through the real CLI on the process provider."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import yaml

from launcher.commands.cluster_down import mount_targets_left
from launcher.config.load import load_config
from launcher.config.checks import mount_target_escape
from launcher.errors import ConfigErrors
from launcher.providers.base import STATE_RUNNING, Node

pytestmark = pytest.mark.timeout(120)


def corral(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "launcher", *args], capture_output=True,
                          text=True, timeout=90, stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("target, escapes", [
    ("../x", True), ("~/../../x", True), ("a/../../x", True), ("..", True),
    ("~/..", True), ("./../x", True), ("~root/x", True), ("~other", True),
    ("x", False), ("a/../b", False), ("~/data", False), ("~", False), ("~/", False),
    ("./a/./b/..", False), ("/abs/../x", False), ("/tmp/data", False),
    ("~//etc/x", False),  # read as the absolute /etc/x by the runners: not relative
])
def test_which_targets_escape(target, escapes):
    assert bool(mount_target_escape(target)) is escapes


def test_traversal_is_refused_with_the_key_and_line_before_anything_is_made(tmp_path,
                                                                            corral_home):
    source = tmp_path / "src"
    source.mkdir()
    (source / "f.txt").write_text("data\n")
    outside = tmp_path / "outside"
    config = tmp_path / "c.yaml"
    config.write_text(f"cluster_name: trav\nprovider: {{type: process}}\nfile_mounts:\n"
                      f"  ok: {source}\n  ../../../../{outside.relative_to('/')}: {source}\n")
    with pytest.raises(ConfigErrors) as raised:
        load_config(config)
    [error] = raised.value.errors
    assert error.line == 5 and error.path.startswith("file_mounts[")
    up = corral("up", "-y", str(config))
    assert up.returncode == 2, up.stdout + up.stderr
    assert f"{config}:5: file_mounts['../../../../" in up.stderr
    assert "leads outside the node's directory" in up.stderr
    assert not outside.exists()
    assert not (corral_home / "clusters" / "trav" / "nodes").exists()


def test_down_names_the_absolute_targets_it_leaves_and_removes_the_rest(tmp_path,
                                                                        corral_home):
    source = tmp_path / "src"
    source.mkdir()
    (source / "f.txt").write_text("data\n")
    absolute = tmp_path / "left-here"
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({
        "cluster_name": f"mnt{os.getpid() % 10000}", "provider": {"type": "process"},
        "file_mounts": {"rel": str(source), "~/home-rel": str(source),
                        "~": str(source), str(absolute): str(source)},
        "available_node_types": {"head": {"resources": {"CPU": 0}, "max_workers": 0}},
        "head_node_type": "head", "max_workers": 0,
        "head_start_commands": ["true"]}))
    try:
        validate = corral("validate", str(config))
        assert validate.returncode == 0, validate.stderr
        assert f"{absolute}' is absolute: on the process provider" in validate.stderr
        up = corral("up", "-y", str(config))
        assert up.returncode == 0, up.stdout + up.stderr
        [node_dir] = (corral_home / "clusters").glob("mnt*/nodes/*-head-*")
        assert (node_dir / "rel" / "f.txt").exists()
        assert (node_dir / "home-rel" / "f.txt").exists()
        assert (node_dir / "f.txt").exists()  # `~` is the node's directory, not $HOME
        assert (absolute / "f.txt").exists()
    finally:
        down = corral("down", "-y", str(config))
    assert down.returncode == 0, down.stdout + down.stderr
    assert "no node of cluster" in down.stdout and "nothing of cluster" not in down.stdout
    assert f"on this machine: {absolute}" in down.stdout
    assert "rel" not in down.stdout.split("File mounts left in place")[1]
    assert not node_dir.exists() and (absolute / "f.txt").exists()


def test_down_on_ssh_hosts_lists_every_target_on_every_host(tmp_path):
    key = tmp_path / "key"
    key.write_text("not read here\n")
    config = load_config(_write(tmp_path / "local.yaml", {
        "cluster_name": "rack", "auth": {"ssh_user": "me", "ssh_private_key": str(key)},
        "provider": {"type": "local", "head_ip": "10.0.0.1", "worker_ips": ["10.0.0.2"]},
        "file_mounts": {"~/code": str(tmp_path), "/srv/data": str(tmp_path)}}))
    nodes = [Node(ip, kind, "t", STATE_RUNNING, ip, None, {})
             for ip, kind in (("10.0.0.2", "worker"), ("10.0.0.1", "head"))]
    assert mount_targets_left(config, nodes) == ["on 10.0.0.1, 10.0.0.2: /srv/data, ~/code"]
    assert mount_targets_left(config, []) == []


def _write(path, document):
    path.write_text(yaml.safe_dump(document))
    return path
