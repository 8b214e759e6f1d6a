"""bootstrap/purge of a gcp cluster against the fake: SSH key, firewall rules scoped to
the cluster and to ssh_ingress_cidrs, least-privilege head identity, default image,
resources from machine types; all idempotent."""
from __future__ import annotations

import os
import stat

import pytest
from cryptography.hazmat.primitives import serialization

from launcher.config.model import AuthConfig, NodeTypeConfig
from launcher.errors import ConfigError
from launcher.providers.gcp import iam_setup, naming
from launcher.providers.gcp.node_provider import GCPProvider
from launcher.providers.gcp.setup import bootstrap_gcp, purge_gcp
from tests.gcp.helpers import HEAD_TYPE, PROJECT, WORKER_TYPE, fast_client, gcp_config

pytestmark = pytest.mark.timeout(60)
FAMILY_IMAGE = "ubuntu-2404-noble-amd64-v20261101"


def boot(config):
    return bootstrap_gcp(config, client=fast_client(config))


def creating_calls(fake):
    return [call for call, _zone in fake.state.calls
            if call.endswith((".insert", ".create", ".patch", "setIamPolicy", ".delete"))]


def test_firewall_rules_are_scoped(fake_gce):
    boot(gcp_config(fake_gce, "demo"))
    names = naming.firewall_names("demo")
    internal = fake_gce.state.firewalls[(PROJECT, names["internal"])]
    ssh = fake_gce.state.firewalls[(PROJECT, names["ssh"])]
    assert internal["sourceTags"] == internal["targetTags"] == ["corral-demo"]
    assert "sourceRanges" not in internal
    assert ssh["sourceRanges"] == ["198.51.100.7/32"]
    assert ssh["targetTags"] == ["corral-demo"]
    assert ssh["allowed"] == [{"IPProtocol": "tcp", "ports": ["22"]}]
    assert ssh["network"] == f"projects/{PROJECT}/global/networks/default"
    every_range = [cidr for rule in fake_gce.state.firewalls.values()
                   for cidr in rule.get("sourceRanges", [])]
    assert "0.0.0.0/0" not in every_range


def test_ssh_ingress_is_required_with_external_ips(fake_gce):
    with pytest.raises(ConfigError, match="ssh_ingress_cidrs"):
        boot(gcp_config(fake_gce, "demo", ssh_ingress_cidrs=[]))
    assert not fake_gce.state.firewalls


def test_bootstrap_is_idempotent(fake_gce):
    config = gcp_config(fake_gce, "demo")
    first = boot(config)
    key_path = first.auth.ssh_private_key
    key_bytes = open(key_path, "rb").read()
    fake_gce.state.calls.clear()
    second = boot(config)
    assert second.to_dict() == first.to_dict()
    assert open(key_path, "rb").read() == key_bytes
    assert creating_calls(fake_gce) == []  # nothing created or changed the second time
    assert len(fake_gce.state.firewalls) == 2
    assert len(fake_gce.state.service_accounts) == 1


def test_firewall_drift_is_repaired(fake_gce):
    config = gcp_config(fake_gce, "demo")
    boot(config)
    ssh_name = naming.firewall_names("demo")["ssh"]
    fake_gce.state.firewalls[(PROJECT, ssh_name)]["sourceRanges"] = ["0.0.0.0/0"]
    boot(config)
    assert fake_gce.state.firewalls[(PROJECT, ssh_name)]["sourceRanges"] == ["198.51.100.7/32"]


def test_ssh_key_pair_is_private_and_in_metadata(fake_gce):
    config = boot(gcp_config(fake_gce, "demo"))
    key_path = config.auth.ssh_private_key
    assert key_path == str(naming.private_key_path("demo"))
    assert stat.S_IMODE(os.stat(key_path).st_mode) == 0o600
    private = serialization.load_ssh_private_key(open(key_path, "rb").read(), password=None)
    public = private.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                               serialization.PublicFormat.OpenSSH).decode()
    for node_type in config.available_node_types.values():
        items = {item["key"]: item["value"] for item in node_type.node_config["metadata"]["items"]}
        assert items["ssh-keys"] == f"ubuntu:{public} corral-demo"


def test_users_own_key_is_used(fake_gce, tmp_path):
    from cryptography.hazmat.primitives.asymmetric import ed25519
    key = ed25519.Ed25519PrivateKey.generate()
    path = tmp_path / "id_ed25519"
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.OpenSSH,
                                       serialization.NoEncryption()))
    config = boot(gcp_config(fake_gce, "demo",
                             auth=AuthConfig(ssh_user="me", ssh_private_key=str(path))))
    assert config.auth.ssh_private_key == str(path)
    head = config.available_node_types[HEAD_TYPE].node_config
    assert head["metadata"]["items"][0]["value"].startswith("me:ssh-ed25519 ")
    assert not naming.private_key_path("demo").exists()


def test_head_identity_is_least_privilege(fake_gce):
    config = boot(gcp_config(fake_gce, "demo"))
    email = naming.head_account_email(PROJECT)
    role = fake_gce.state.roles[naming.role_name(PROJECT)]
    assert sorted(role["includedPermissions"]) == sorted(iam_setup.AUTOSCALER_PERMISSIONS)
    assert "compute.instances.create" in role["includedPermissions"]
    assert not [p for p in role["includedPermissions"]
                if p.startswith(("iam.", "resourcemanager.")) or "firewalls" in p]
    bindings = fake_gce.state.policies[PROJECT]["bindings"]
    assert bindings == [{"role": naming.role_name(PROJECT), "members": [f"serviceAccount:{email}"]}]
    assert all("admin" not in binding["role"] for binding in bindings)
    head = config.available_node_types[HEAD_TYPE].node_config
    worker = config.available_node_types[WORKER_TYPE].node_config
    assert head["serviceAccounts"][0]["email"] == email
    assert list(worker["serviceAccounts"]) == []


def test_role_with_drifted_permissions_is_fixed(fake_gce):
    config = gcp_config(fake_gce, "demo")
    boot(config)
    fake_gce.state.roles[naming.role_name(PROJECT)]["includedPermissions"].append("compute.*")
    boot(config)
    role = fake_gce.state.roles[naming.role_name(PROJECT)]
    assert sorted(role["includedPermissions"]) == sorted(iam_setup.AUTOSCALER_PERMISSIONS)


def test_given_service_account_skips_iam(fake_gce):
    config = boot(gcp_config(fake_gce, "demo", service_account="mine@corral-test-1.iam.gserviceaccount.com"))
    assert not fake_gce.state.roles and not fake_gce.state.service_accounts
    head = config.available_node_types[HEAD_TYPE].node_config
    assert head["serviceAccounts"][0]["email"] == "mine@corral-test-1.iam.gserviceaccount.com"


def test_default_image_comes_from_the_family(fake_gce):
    config = boot(gcp_config(fake_gce, "demo"))
    disk = config.available_node_types[WORKER_TYPE].node_config["disks"][0]
    assert disk["boot"] and disk["autoDelete"]
    assert disk["initializeParams"]["sourceImage"].endswith(
        f"projects/ubuntu-os-cloud/global/images/{FAMILY_IMAGE}")


def test_resources_from_machine_types_and_accelerators(fake_gce):
    node_types = {
        HEAD_TYPE: NodeTypeConfig(name=HEAD_TYPE, node_config={"machineType": "e2-small"},
                                  resources={}),
        "a100": NodeTypeConfig(name="a100", node_config={"machineType": "a2-highgpu-1g"},
                               resources={}, max_workers=1),
        "t4": NodeTypeConfig(name="t4", node_config={
            "machineType": "n2-standard-4",
            "guestAccelerators": [{"acceleratorType": "nvidia-tesla-t4", "acceleratorCount": 2}]},
            resources={}, max_workers=1),
        "given": NodeTypeConfig(name="given", node_config={"machineType": "n2-standard-4"},
                                resources={"CPU": 1}, max_workers=1),
    }
    config = boot(gcp_config(fake_gce, "demo", node_types=node_types))
    resources = {name: dict(node_type.resources)
                 for name, node_type in config.available_node_types.items()}
    assert resources[HEAD_TYPE] == {"CPU": 2, "memory": 2048 * 1024 * 1024}
    assert resources["a100"] == {"CPU": 12, "memory": 87040 * 1024 * 1024, "GPU": 1}
    assert resources["t4"] == {"CPU": 4, "memory": 16384 * 1024 * 1024, "GPU": 2}
    assert resources["given"] == {"CPU": 1}


def test_unknown_machine_type_is_a_config_error(fake_gce):
    node_types = {HEAD_TYPE: NodeTypeConfig(name=HEAD_TYPE, node_config={"machineType": "n9-huge"},
                                            resources={})}
    with pytest.raises(ConfigError, match="n9-huge"):
        boot(gcp_config(fake_gce, "demo", node_types=node_types))


def test_purge_removes_the_firewall_rules(fake_gce):
    config = gcp_config(fake_gce, "demo")
    boot(config)
    boot(gcp_config(fake_gce, "other"))
    provider = GCPProvider(config, client=fast_client(config))
    [leftover] = provider.create_nodes(WORKER_TYPE, {"machineType": "e2-small"},
                                       {"corral-node-kind": "worker"}, 1)
    removed = purge_gcp(config, client=fast_client(config))
    assert sorted(removed) == sorted(
        [f"firewall rule {name}" for name in naming.firewall_names("demo").values()]
        + [f"instance {leftover}", f"ssh key {naming.private_key_path('demo')}",
           f"image pin {naming.image_pins_path('demo')}"])
    assert not fake_gce.state.instances
    assert sorted(name for _p, name in fake_gce.state.firewalls) == sorted(
        naming.firewall_names("other").values())
    assert purge_gcp(config, client=fast_client(config)) == []  # idempotent
    assert callable(GCPProvider.purge)


def test_bootstrapped_nodes_carry_key_and_account(fake_gce):
    config = boot(gcp_config(fake_gce, "demo"))
    provider = GCPProvider(config, client=fast_client(config))
    head = config.available_node_types[HEAD_TYPE]
    [node_id] = provider.create_nodes(HEAD_TYPE, head.node_config,
                                      {"corral-node-kind": "head"}, 1)
    try:
        instance = next(body for (_p, _z, name), body in fake_gce.state.instances.items()
                        if name == node_id)
        assert instance["serviceAccounts"][0]["email"] == naming.head_account_email(PROJECT)
        assert instance["metadata"]["items"][0]["key"] == "ssh-keys"
        assert instance["disks"][0]["initializeParams"]["sourceImage"].endswith(FAMILY_IMAGE)
    finally:
        provider.terminate_nodes([node_id])


def test_example_config_bootstraps(fake_gce):
    from launcher.config.load import load_config
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    example = load_config(os.path.join(repo, "configs", "gcp.yaml"))
    provider = dict(example.provider, compute_endpoint=fake_gce.compute_endpoint,
                    operation_timeout_s=10)
    config = boot(example.replace(provider=provider))
    resources = {name: dict(node_type.resources)
                 for name, node_type in config.available_node_types.items()}
    assert resources["t4-spot"] == {"CPU": 8, "memory": 30720 * 1024 * 1024, "GPU": 1}
    assert resources["head"]["CPU"] == 4
    spot = config.available_node_types["t4-spot"]
    gcp = GCPProvider(config, client=fast_client(config))
    [node_id] = gcp.create_nodes("t4-spot", spot.node_config,
                                 {"corral-node-kind": "worker"}, 1)
    try:
        instance = next(body for (_p, _z, name), body in fake_gce.state.instances.items()
                        if name == node_id)
        assert instance["guestAccelerators"][0]["acceleratorType"] == \
            "zones/us-central1-a/acceleratorTypes/nvidia-tesla-t4"
        assert instance["scheduling"]["onHostMaintenance"] == "TERMINATE"
        assert gcp.node(node_id).tags["team"] == "research"
    finally:
        gcp.terminate_nodes([node_id])


def test_policy_races_and_young_accounts_are_retried(fake_gce):
    fake_gce.state.inject(method="projects.setIamPolicy", status=400, reason="badRequest",
                          message="Service account corral-head@corral-test-1.iam.gserviceaccount.com does not exist.")
    fake_gce.state.inject(method="projects.setIamPolicy", status=409, reason="aborted",
                          message="There were concurrent policy changes.")
    boot(gcp_config(fake_gce, "demo"))
    assert [call for call, _ in fake_gce.state.calls].count("projects.setIamPolicy") == 3
    assert fake_gce.state.policies[PROJECT]["bindings"][0]["members"] == [
        f"serviceAccount:{naming.head_account_email(PROJECT)}"]


def test_image_is_pinned_per_cluster(fake_gce):
    config = gcp_config(fake_gce, "demo")
    first = boot(config)
    family = ("ubuntu-os-cloud", "ubuntu-2404-lts-amd64")
    fake_gce.state.image_families[family] = "ubuntu-2404-noble-amd64-v20270101"  # new release
    fake_gce.state.calls.clear()
    second = boot(config)
    assert second.to_dict() == first.to_dict()  # same launch hash: no node replaced
    assert ("images.getFromFamily", None) not in fake_gce.state.calls
    purge_gcp(config, client=fast_client(config))
    third = boot(config)
    disk = third.available_node_types[WORKER_TYPE].node_config["disks"][0]
    assert disk["initializeParams"]["sourceImage"].endswith("v20270101")


def test_missing_iam_rights_suggest_a_service_account(fake_gce):
    from launcher.errors import ProviderAuthError
    fake_gce.state.inject(method="roles.get", status=403, reason="forbidden",
                          message="Permission 'iam.roles.get' denied")
    with pytest.raises(ProviderAuthError, match="provider.service_account") as caught:
        boot(gcp_config(fake_gce, "demo"))
    assert "iam.roles.get" in str(caught.value)


def test_head_node_config_service_accounts_are_kept(fake_gce):
    node_types = {HEAD_TYPE: NodeTypeConfig(name=HEAD_TYPE, node_config={
        "machineType": "e2-small",
        "serviceAccounts": [{"email": "ops@corral-test-1.iam.gserviceaccount.com", "scopes": []}]},
        resources={})}
    config = boot(gcp_config(fake_gce, "demo", node_types=node_types))
    head = config.available_node_types[HEAD_TYPE].node_config
    assert head["serviceAccounts"][0]["email"] == "ops@corral-test-1.iam.gserviceaccount.com"
    assert not fake_gce.state.roles and not fake_gce.state.service_accounts
