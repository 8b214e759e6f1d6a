"""The helpers the cloud providers share (no cloud needed)."""
from __future__ import annotations

import pytest

from launcher.config.model import AuthConfig, ClusterConfig, NodeTypeConfig
from launcher.errors import CapacityError, ConfigError, ProviderAuthError, QuotaError
from launcher.providers import cloud_common as cc


def test_zone_list_accepts_lists_and_comma_strings():
    assert cc.zone_list("us-west-2b, us-west-2a,,us-west-2b") == ["us-west-2b", "us-west-2a"]
    assert cc.zone_list(("a", "b")) == ["a", "b"]
    assert cc.zone_list(None) == []


class Zones:
    """A plain fake cloud: zone -> how many nodes it still has room for, or an error."""

    def __init__(self, room):
        self.room = dict(room)
        self.calls = []

    def launch(self, zone, count):
        self.calls.append((zone, count))
        room = self.room[zone]
        if isinstance(room, Exception):
            raise room
        if room < count:
            raise CapacityError("full", zone=zone, cause="InsufficientInstanceCapacity")
        self.room[zone] -= count
        return [f"{zone}-{i}" for i in range(count)]


def test_launch_moves_to_the_next_zone_on_capacity_errors():
    zones = Zones({"a": 0, "b": 5})
    ids = cc.launch_across_places(["a", "b"], 3, zones.launch, node_type="cpu")
    assert ids == ["b-0", "b-1", "b-2"]
    assert zones.calls == [("a", 3), ("b", 3)]


def test_launch_raises_capacity_error_naming_every_zone_tried():
    zones = Zones({"a": 0, "b": QuotaError("quota", cause="VcpuLimitExceeded")})
    with pytest.raises(CapacityError) as caught:
        cc.launch_across_places(["a", "b"], 2, zones.launch, node_type="cpu")
    error = caught.value
    assert error.node_type == "cpu" and error.zone == "a,b"
    assert error.try_elsewhere and error.created_ids == []
    assert [name for name, _ in error.failures] == ["a", "b"]
    assert "InsufficientInstanceCapacity" in str(error) and "VcpuLimitExceeded" in str(error)


def test_launch_reports_quota_when_every_zone_is_over_quota():
    zones = Zones({"a": QuotaError("q", cause="InstanceLimitExceeded"),
                   "b": QuotaError("q", cause="InstanceLimitExceeded")})
    with pytest.raises(QuotaError) as caught:
        cc.launch_across_places(["a", "b"], 1, zones.launch, node_type="big")
    assert caught.value.cause == "InstanceLimitExceeded"


def test_launch_stops_at_errors_another_zone_cannot_fix():
    zones = Zones({"a": ProviderAuthError("denied", cause="AuthFailure"), "b": 5})
    with pytest.raises(ProviderAuthError):
        cc.launch_across_places(["a", "b"], 1, zones.launch, node_type="cpu")
    assert zones.calls == [("a", 1)]


def test_resources_from_shape():
    assert cc.resources_from_shape(4, 16384) == {"CPU": 4, "memory": 16 * 1024 ** 3}
    assert cc.resources_from_shape(8, 1024, gpus=1)["GPU"] == 1


def _config(resources_by_type):
    node_types = {name: NodeTypeConfig(name=name, node_config={"InstanceType": machine},
                                       resources=resources)
                  for name, (machine, resources) in resources_by_type.items()}
    return ClusterConfig(cluster_name="c", provider={"type": "aws"}, auth=AuthConfig(),
                         available_node_types=node_types, head_node_type="head")


def test_fill_node_resources_only_fills_empty_ones():
    config = _config({"head": ("m.large", {}), "given": ("m.large", {"CPU": 1})})
    asked = []

    def describe(names):
        asked.append(names)
        return {"m.large": {"CPU": 2, "memory": 8}}
    filled = cc.fill_node_resources(config, lambda nc: nc.get("InstanceType"), describe)
    assert dict(filled.available_node_types["head"].resources) == {"CPU": 2, "memory": 8}
    assert dict(filled.available_node_types["given"].resources) == {"CPU": 1}
    assert asked == [["m.large"]]


def test_fill_node_resources_names_an_unknown_machine_type():
    config = _config({"head": ("nope.large", {})})
    with pytest.raises(ConfigError) as caught:
        cc.fill_node_resources(config, lambda nc: nc.get("InstanceType"), lambda names: {})
    assert caught.value.path == "available_node_types.head.node_config.InstanceType"


def test_cluster_resource_names_fit_the_limit_and_stay_stable():
    long_name = "x" * 80
    name = cc.cluster_resource_name("corral-head", long_name, "us-west-2", max_length=64)
    assert len(name) <= 64
    assert name == cc.cluster_resource_name("corral-head", long_name, "us-west-2", 64)
    assert cc.cluster_resource_name("corral", "c") == "corral-c"


def test_ssh_open_notice(capsys):
    cc.ssh_open_notice(["10.0.0.0/8"], "group g")
    assert capsys.readouterr().err == ""
    cc.ssh_open_notice(["0.0.0.0/0"], "group g")
    assert "open to the whole internet" in capsys.readouterr().err


def test_aws_node_config_keys_are_checked_with_a_suggestion():
    from launcher.config.load import normalize
    from launcher.errors import ConfigErrors
    from tests.aws.configs import aws_document
    document = aws_document("c")
    document["available_node_types"]["cpu"]["node_config"] = {"InstanceTyp": "t3.micro"}
    with pytest.raises((ConfigError, ConfigErrors)) as caught:
        normalize(document)
    assert "InstanceTyp" in str(caught.value) and "InstanceType" in str(caught.value)
    document["available_node_types"]["cpu"]["node_config"] = {
        "InstanceType": "t3.micro", "SubnetIds": ["subnet-0a"],
        "InstanceMarketOptions": {"MarketType": "spot"}}
    normalize(document)


def test_example_aws_config_loads():
    from pathlib import Path
    from launcher.config.load import load_config
    config = load_config(Path(__file__).resolve().parents[2] / "configs" / "aws.yaml")
    assert config.provider["type"] == "aws" and not config.provider["cache_stopped_nodes"]
    assert config.auth.ssh_user == "ubuntu"
