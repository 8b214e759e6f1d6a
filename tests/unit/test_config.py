"""The cluster config loader on good input: the example files, defaults, Ray aliases,
the local provider's synthesised node types, paths, freezing and round trips."""
from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import yaml

from launcher.config import defaults as config_defaults
from launcher.config import schema as config_schema
from launcher.config.load import (load_config, load_config_text, load_config_with_notices,
                             load_normalised_config, normalize, normalize_with_notices)
from launcher.config.model import ClusterConfig
from launcher.errors import ConfigErrors

ROOT = Path(__file__).resolve().parents[2]
HEAD_START = "corral stop; corral start --head --autoscaling-config=$CORRAL_NODE_DIR/cluster.yaml"
WORKER_START = "corral stop; corral start"


def test_demo_config_loads_with_defaults_filled():
    config = load_config(ROOT / "configs" / "demo.yaml")
    assert config.cluster_name == "demo"
    assert config.provider_type == "process"
    assert config.provider["head_port"] == 0
    assert config.head_node_type == "head"
    assert dict(config.available_node_types["head"].resources) == {"CPU": 1}
    worker = config.available_node_types["cpu1"]
    assert (worker.min_workers, worker.max_workers) == (1, 3)
    assert dict(worker.resources) == {"CPU": 1}
    assert config.idle_timeout_minutes == 1.0
    assert config.upscaling_speed == 1.0
    assert config.auth.ssh_timeout_s == 120.0
    assert config.setup_commands == ("echo setting up",)
    assert config.head_start_commands == (HEAD_START,)
    assert config.worker_start_commands == (WORKER_START,)
    assert config.source_path == str((ROOT / "configs" / "demo.yaml").resolve())
    assert list(config.worker_node_types()) == ["cpu1"]


def test_local_example_gets_one_head_type_and_a_worker_type_per_host_list():
    config = load_config(ROOT / "configs" / "local.yaml")
    assert config.provider_type == "local"
    assert config.auth.ssh_user == "corral"
    assert config.auth.ssh_private_key is None  # left to ssh-agent and ~/.ssh/config
    hosts = list(config.provider["worker_ips"])
    assert len(hosts) == 3
    head = config.available_node_types[config.head_node_type]
    assert head.max_workers == 0
    workers = config.worker_node_types()
    assert len(workers) == 1
    (worker,) = workers.values()
    assert worker.min_workers == worker.max_workers == len(hosts)
    assert config.max_workers == len(hosts)


LOCAL = """
cluster_name: rack
provider:
  type: local
  head_ip: 10.1.0.1
  worker_ips: [10.1.0.2, 10.1.0.3]
auth: {ssh_user: ops, ssh_private_key: rack.pem}
"""


@pytest.fixture
def in_rack_dir(tmp_path, monkeypatch):
    """A current directory holding rack.pem, the key LOCAL names (relative paths in a
    document that came from no file are relative to the current directory)."""
    (tmp_path / "rack.pem").write_text("not really a key\n")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_local_defaults_follow_worker_ips_unless_the_user_sets_them(in_rack_dir):
    config = load_config_text(LOCAL)
    assert config.max_workers == 2
    assert config.available_node_types["local.worker"].min_workers == 2
    assert config.available_node_types["local.head"].max_workers == 0
    explicit = load_config_text(LOCAL + "max_workers: 1\n"
                                "available_node_types:\n"
                                "  head: {}\n"
                                "  worker: {min_workers: 0, max_workers: 1}\n"
                                "head_node_type: head\n")
    assert explicit.max_workers == 1
    assert set(explicit.available_node_types) == {"head", "worker"}


def test_local_without_worker_ips_is_a_head_only_cluster(in_rack_dir):
    config = load_config_text(LOCAL.replace("  worker_ips: [10.1.0.2, 10.1.0.3]\n", ""))
    assert config.provider["worker_ips"] == ()
    assert config.max_workers == 0
    assert config.available_node_types["local.worker"].max_workers == 0


def test_local_max_workers_above_the_host_count_is_a_notice(in_rack_dir):
    path = in_rack_dir / "rack.yaml"
    path.write_text(LOCAL + "max_workers: 5\n")
    config, notices = load_config_with_notices(path)
    assert config.max_workers == 5
    assert len(notices) == 1 and "more than the 2 hosts" in notices[0]
    assert notices[0].startswith(f"{path}:8:")


def test_ray_start_aliases_are_read_as_ours_with_a_notice(tmp_path):
    path = tmp_path / "ray.yaml"
    path.write_text("cluster_name: from-ray\n"
                    "provider: {type: process}\n"
                    "head_start_ray_commands:\n"
                    "  - ray stop\n"
                    "  - ray start --head --port=6379\n"
                    "worker_start_ray_commands: [ray start --address=$RAY_HEAD_IP:6379]\n")
    config, notices = load_config_with_notices(path)
    assert config.head_start_commands == ("ray stop", "ray start --head --port=6379")
    assert config.worker_start_commands == ("ray start --address=$RAY_HEAD_IP:6379",)
    assert len(notices) == 2
    assert notices[0] == (f"{path}:3: head_start_ray_commands is Ray's name for "
                          f"head_start_commands; read as head_start_commands")
    assert notices[1].startswith(f"{path}:6: worker_start_ray_commands")
    assert load_config(path) == config  # load_config just drops the notices


def test_process_provider_without_node_types_uses_its_default_types():
    config = load_config_text("cluster_name: tiny\nprovider: {type: process}\n")
    assert config.head_node_type == "head"
    assert set(config.available_node_types) == {"head", "worker"}
    assert config.max_workers == 2


def test_user_values_win_over_defaults_and_lists_replace_whole():
    config = load_config_text("cluster_name: mine\n"
                              "provider: {type: process, head_port: 7000}\n"
                              "max_workers: 9\nupscaling_speed: 2\n"
                              "auth: {ssh_timeout_s: 5}\n"
                              "head_start_commands: [corral start --head]\n"
                              "worker_start_commands: []\n")
    assert config.provider["head_port"] == 7000
    assert config.max_workers == 9
    assert config.upscaling_speed == 2.0 and isinstance(config.upscaling_speed, float)
    assert config.auth.ssh_timeout_s == 5.0
    assert config.head_start_commands == ("corral start --head",)
    assert config.worker_start_commands == ()


def test_default_node_types_are_never_added_to_the_users_own():
    config = load_config_text("cluster_name: own\nprovider: {type: process}\n"
                              "available_node_types: {boss: {}, big: {resources: {CPU: 8}}}\n"
                              "head_node_type: boss\n")
    assert set(config.available_node_types) == {"boss", "big"}
    # a type without max_workers: 0 for the head, the cluster's max_workers for others
    assert config.available_node_types["boss"].max_workers == 0
    assert config.available_node_types["big"].max_workers == config.max_workers == 2
    assert dict(config.available_node_types["boss"].node_config) == {}


def test_per_type_idle_timeout_and_custom_resources():
    config = load_config_text("cluster_name: r\nprovider: {type: process}\n"
                              "available_node_types:\n"
                              "  head: {}\n"
                              "  gpu: {resources: {CPU: 4, GPU: 1, memory: 16000000000, accel: 0.5},\n"
                              "        idle_timeout_s: 30, max_workers: 1}\n"
                              "head_node_type: head\n")
    gpu = config.available_node_types["gpu"]
    assert gpu.idle_timeout_s == 30.0
    assert dict(gpu.resources) == {"CPU": 4, "GPU": 1, "memory": 16000000000, "accel": 0.5}
    assert config.available_node_types["head"].idle_timeout_s is None


def test_paths_expand_home_and_resolve_against_the_yaml_directory(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "project" / "src").mkdir(parents=True)
    (tmp_path / "project" / "src" / "main.py").write_text("print(1)\n")
    path = tmp_path / "project" / "cluster.yaml"
    path.write_text("cluster_name: p\nprovider: {type: process}\n"
                    "auth: {ssh_private_key: ~/.ssh/id_ed25519}\n"
                    "file_mounts:\n  /remote/src: src\n  /remote/main.py: ./src/main.py\n")
    monkeypatch.chdir(tmp_path)  # not the YAML's directory: must not matter
    config = load_config(path)
    assert config.auth.ssh_private_key == str(tmp_path / "home" / ".ssh" / "id_ed25519")
    assert dict(config.file_mounts) == {
        "/remote/src": str(tmp_path / "project" / "src"),
        "/remote/main.py": str(tmp_path / "project" / "src" / "main.py")}


def test_config_is_frozen_all_the_way_down():
    config = load_config(ROOT / "configs" / "demo.yaml")
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.max_workers = 10
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.available_node_types["cpu1"].max_workers = 10
    with pytest.raises(TypeError):
        config.provider["type"] = "aws"
    with pytest.raises(TypeError):
        config.available_node_types["cpu1"].resources["CPU"] = 64
    with pytest.raises(TypeError):
        config.available_node_types["extra"] = None
    with pytest.raises(AttributeError):
        config.setup_commands.append("rm -rf /")


@pytest.mark.parametrize("name", ["demo.yaml", "local.yaml"])
def test_to_dict_round_trips_through_from_dict_and_normalize(name):
    config = load_config(ROOT / "configs" / name)
    data = config.to_dict()
    json.dumps(data)  # plain data
    assert ClusterConfig.from_dict(data, source_path=config.source_path) == config
    again = normalize(yaml.safe_load(yaml.safe_dump(data)), check_local_files=False)
    assert again.replace(source_path=config.source_path) == config


def test_normalize_accepts_a_dict_and_reports_like_a_file():
    config, notices = normalize_with_notices({"cluster_name": "d",
                                              "provider": {"type": "process"}})
    assert config.cluster_name == "d" and notices == []
    with pytest.raises(ConfigErrors) as raised:
        normalize({"cluster_name": "d", "provider": {"type": "process"}, "max_wokers": 1})
    (error,) = raised.value.errors
    assert (error.path, error.line) == ("max_wokers", None)
    assert "did you mean 'max_workers'?" in error.message


def test_unknown_provider_type_lists_the_types_that_have_a_schema():
    with pytest.raises(ConfigErrors) as raised:
        load_config_text("cluster_name: x\nprovider: {type: azure}\n", source="c.yaml")
    (error,) = raised.value.errors
    assert error.path == "provider.type" and error.line == 2
    known = config_schema.known_provider_types()
    assert {"process", "local"} <= set(known)
    assert f"known types: {', '.join(known)}" in error.message
    assert str(error).startswith("c.yaml:2: provider.type: unknown provider type 'azure'")


def test_a_new_provider_plugs_in_by_adding_a_schema_and_a_defaults_file(tmp_path, monkeypatch):
    schemas = tmp_path / "schemas"
    defaults = tmp_path / "defaults"
    shutil.copytree(config_schema.SCHEMA_DIR, schemas)
    shutil.copytree(config_defaults.DEFAULTS_DIR, defaults)
    (schemas / "provider-toy.schema.json").write_text(json.dumps({
        "type": "object", "additionalProperties": False, "required": ["type"],
        "properties": {"type": {"const": "toy"}, "size": {"type": "integer"}},
        "$defs": {"node_config": {"type": "object", "additionalProperties": False,
                                  "properties": {"flavour": {"type": "string"}}}}}))
    (defaults / "toy.yaml").write_text("provider: {size: 3}\nauth: {ssh_user: toy}\n")
    monkeypatch.setattr(config_schema, "SCHEMA_DIR", schemas)
    monkeypatch.setattr(config_defaults, "DEFAULTS_DIR", defaults)
    for cached in (config_schema.load_schema, config_schema.validator_for,
                   config_defaults._defaults_file):
        cached.cache_clear()
    try:
        text = ("cluster_name: t\nprovider: {type: toy}\n"
                "available_node_types: {h: {node_config: {flavour: mint}}}\n"
                "head_node_type: h\n")
        config = load_config_text(text)
        assert dict(config.provider) == {"type": "toy", "size": 3}
        assert config.auth.ssh_user == "toy"
        with pytest.raises(ConfigErrors) as raised:
            load_config_text(text.replace("flavour", "flavor"))
        assert "did you mean 'flavour'?" in str(raised.value)
    finally:
        for cached in (config_schema.load_schema, config_schema.validator_for,
                       config_defaults._defaults_file):
            cached.cache_clear()


def test_every_schema_file_is_a_valid_json_schema():
    from jsonschema import Draft202012Validator
    files = sorted(config_schema.SCHEMA_DIR.glob("*.schema.json"))
    assert {"cluster.schema.json", "provider-process.schema.json",
            "provider-local.schema.json"} <= {path.name for path in files}
    for path in files:
        Draft202012Validator.check_schema(json.loads(path.read_text()))


def test_all_problems_are_reported_at_once_sorted_by_line():
    text = ("cluster_name: x\nprovider: {type: process}\n"
            "max_workers: -1\nupscaling_speed: 0\nsetup_commands: [1, 2]\n")
    with pytest.raises(ConfigErrors) as raised:
        load_config_text(text)
    lines = [error.line for error in raised.value.errors]
    assert lines == [3, 4, 5, 5]
    assert [error.path for error in raised.value.errors] == [
        "max_workers", "upscaling_speed", "setup_commands[0]", "setup_commands[1]"]
    assert raised.value.errors[1].message == "expected a number > 0, got 0"


def test_a_number_yaml_reads_as_text_gets_a_hint():
    with pytest.raises(ConfigErrors) as raised:
        load_config_text("cluster_name: x\nprovider: {type: process}\n"
                         "available_node_types: {h: {resources: {memory: 16e9, CPU: '4'}}}\n"
                         "head_node_type: h\n")
    messages = [error.message for error in raised.value.errors]
    assert len(messages) == 2
    assert all(message.startswith("expected a number >= 0, got '") for message in messages)
    assert all("text, not a number" in message for message in messages)


def test_x_keys_hold_yaml_anchors_and_whole_floats_become_integers():
    config = load_config_text("cluster_name: a\nprovider: {type: process}\n"
                              "x-common: &common {resources: {CPU: 2}, max_workers: 2.0}\n"
                              "max_workers: 4.0\n"
                              "available_node_types:\n"
                              "  head: {resources: {CPU: 1}}\n"
                              "  w:\n    <<: *common\n    min_workers: 1\n"
                              "head_node_type: head\n")
    worker = config.available_node_types["w"]
    assert dict(worker.resources) == {"CPU": 2}
    assert (worker.min_workers, worker.max_workers, config.max_workers) == (1, 2, 4)
    assert all(type(value) is int for value in (worker.max_workers, config.max_workers))
    assert "x-common" not in config.to_dict()


def test_local_key_file_named_but_missing_is_an_error_at_its_line(tmp_path):
    path = tmp_path / "rack.yaml"
    path.write_text(LOCAL.replace("rack.pem", "keys/rack.pem"))
    with pytest.raises(ConfigErrors) as raised:
        load_config_with_notices(path)
    (error,) = raised.value.errors
    assert (error.path, error.line) == ("auth.ssh_private_key", 7)
    assert f"no such file: {tmp_path / 'keys' / 'rack.pem'}" in error.message
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "rack.pem").write_text("not really a key\n")
    assert load_config_with_notices(path)[1] == []


def test_the_heads_copy_loads_where_the_laptops_files_do_not_exist(tmp_path):
    project = tmp_path / "laptop"
    project.mkdir()
    (project / "code").mkdir()
    (project / "id_key").write_text("key\n")
    (project / "c.yaml").write_text(LOCAL.replace("rack.pem", "id_key")
                                    + "file_mounts: {/srv/code: code}\n")
    config = load_config(project / "c.yaml")
    head_copy = tmp_path / "head" / "cluster.yaml"
    head_copy.parent.mkdir()
    head_copy.write_text(yaml.safe_dump(config.to_dict()))
    shutil.rmtree(project)  # as on the head: none of the laptop's files are there
    with pytest.raises(ConfigErrors, match="does not exist"):
        load_config(head_copy)
    again = load_normalised_config(head_copy)
    assert again.replace(source_path=None) == config.replace(source_path=None)


def test_ray_keys_left_off_load_with_a_notice(tmp_path):
    path = tmp_path / "ray-example.yaml"
    path.write_text("cluster_name: default\n"
                    "provider: {type: process}\n"
                    "cluster_synced_files: []\n"
                    "file_mounts_sync_continuously: False\n"
                    "rsync_exclude: ['**/.git', '**/.git/**']\n"
                    "rsync_filter: []\n")
    config, notices = load_config_with_notices(path)
    assert config.rsync_exclude == ("**/.git", "**/.git/**")
    assert [notice.split(": ", 1)[0] for notice in notices] == [
        f"{path}:3", f"{path}:4", f"{path}:6"]
    assert notices[0].endswith("cluster_synced_files is a Ray key corral does not use; ignored")


def test_normalize_accepts_frozen_mappings():
    from launcher.config.frozen import freeze
    config = normalize(freeze({"cluster_name": "f", "provider": {"type": "process"},
                               "setup_commands": ["echo hi"]}))
    assert config.setup_commands == ("echo hi",)
