"""launcher.bootstrap.hashing: what changes which hash."""
from __future__ import annotations

import os

import pytest

from launcher.config.model import AuthConfig, ClusterConfig, NodeTypeConfig
from launcher.bootstrap.hashing import config_hash, launch_hash, runtime_hash, tree_digest

pytestmark = pytest.mark.timeout(30)


def make_config(tmp_path, **changes) -> ClusterConfig:
    mount = tmp_path / "mount"
    mount.mkdir(exist_ok=True)
    if not (mount / "a.txt").exists():
        (mount / "a.txt").write_text("one")
    base = dict(
        cluster_name="hashes", provider={"type": "local", "head_ip": "198.18.0.2",
                                         "worker_ips": ["198.18.0.3"]},
        auth=AuthConfig(ssh_user="root"),
        available_node_types={
            "head": NodeTypeConfig("head", {"size": "s"}, {"CPU": 1}),
            "w": NodeTypeConfig("w", {"size": "m"}, {"CPU": 2}, min_workers=1, max_workers=2)},
        head_node_type="head", file_mounts={"/data": str(mount)},
        setup_commands=("echo setup",), worker_start_commands=("echo start",))
    base.update(changes)
    return ClusterConfig(**base)


def rt(config, kind="worker", node_type="w", head_ip="198.18.0.2", port=6390):
    return runtime_hash(config, kind, node_type, head_ip=head_ip, head_port=port)


def test_launch_hash_follows_node_config_and_provider_essentials(tmp_path):
    config = make_config(tmp_path)
    assert launch_hash(config, "w") == launch_hash(make_config(tmp_path), "w")
    assert launch_hash(config, "w") != launch_hash(config, "head")
    bigger = make_config(tmp_path, available_node_types={
        **config.available_node_types, "w": NodeTypeConfig("w", {"size": "l"}, {"CPU": 2})})
    assert launch_hash(bigger, "w") != launch_hash(config, "w")
    # Listing more hosts does not make an existing host a different node.
    more_hosts = make_config(tmp_path, provider={**config.provider,
                                                 "worker_ips": ["198.18.0.3", "198.18.0.4"]})
    assert launch_hash(more_hosts, "w") == launch_hash(config, "w")
    # ...but commands never change what a node is.
    assert launch_hash(make_config(tmp_path, setup_commands=("other",)), "w") == \
        launch_hash(config, "w")


def test_runtime_hash_follows_commands_mount_contents_resources_and_head(tmp_path):
    config = make_config(tmp_path)
    before = rt(config)
    assert rt(make_config(tmp_path)) == before
    assert rt(make_config(tmp_path, setup_commands=("echo other",))) != before
    assert rt(make_config(tmp_path, worker_start_commands=("echo x",))) != before
    # Head-only commands do not restart workers, but do change the head's hash.
    head_setup = make_config(tmp_path, head_setup_commands=("echo head",))
    assert rt(head_setup) == before
    assert rt(head_setup, "head", "head") != rt(config, "head", "head")
    assert rt(config, head_ip="198.18.0.9") != before
    assert rt(config, port=7000) != before
    more_cpu = make_config(tmp_path, available_node_types={
        **config.available_node_types, "w": NodeTypeConfig("w", {"size": "m"}, {"CPU": 4})})
    assert rt(more_cpu) != before
    (tmp_path / "mount" / "a.txt").write_text("two")
    assert rt(config) != before


def test_tree_digest_sees_contents_names_modes_and_honours_excludes(tmp_path):
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "sub" / "f.py").write_text("x")
    (tree / "cache.pyc").write_text("junk")
    first = tree_digest(str(tree))
    assert tree_digest(str(tree)) == first
    excluded = tree_digest(str(tree), ["*.pyc"])
    (tree / "cache.pyc").write_text("other junk")
    assert tree_digest(str(tree), ["*.pyc"]) == excluded
    assert tree_digest(str(tree)) != first
    os.chmod(tree / "sub" / "f.py", 0o755)
    assert tree_digest(str(tree), ["*.pyc"]) != excluded
    (tree / "sub" / "f.py").rename(tree / "sub" / "g.py")
    assert tree_digest(str(tree), ["*.pyc"]) != excluded
    (tmp_path / "empty-new").mkdir()
    assert tree_digest(str(tmp_path / "empty-new")) != tree_digest(str(tmp_path / "missing"))


def test_config_hash_changes_with_any_setting(tmp_path):
    config = make_config(tmp_path)
    assert config_hash(config.to_dict()) == config_hash(make_config(tmp_path).to_dict())
    assert config_hash(make_config(tmp_path, max_workers=9).to_dict()) != \
        config_hash(config.to_dict())
