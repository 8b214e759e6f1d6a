"""AWSProvider.bootstrap against moto's EC2/IAM/SSM: idempotent, scoped, secure by default."""
from __future__ import annotations

import json
import os
import stat

import paramiko
import pytest

from launcher.errors import ConfigError, ProviderError
from launcher.providers.aws import AWSProvider
from launcher.providers.aws import naming
from launcher.tags import TAG_CLUSTER_NAME
from tests.aws.configs import (GPU_TYPE, HEAD_TYPE, TEST_IMAGE_ID, WORKER_TYPE, aws_config,
                               publish_ubuntu_image)
from tests.aws.moto_server import REGION


def cluster_groups(ec2, name):
    return ec2.describe_security_groups(
        Filters=[{"Name": f"tag:{TAG_CLUSTER_NAME}", "Values": [name]}])["SecurityGroups"]


def ssh_cidrs(group):
    return sorted(r["CidrIp"] for p in group["IpPermissions"]
                  if p.get("IpProtocol") == "tcp" and p.get("FromPort") == 22
                  for r in p.get("IpRanges", []))


def test_bootstrap_fills_the_node_configs(cluster_name, ec2):
    config = AWSProvider.bootstrap(aws_config(cluster_name))
    [group] = cluster_groups(ec2, cluster_name)
    subnets = {s["SubnetId"]: s["AvailabilityZone"] for s in ec2.describe_subnets()["Subnets"]}
    for name, node_type in config.available_node_types.items():
        node_config = node_type.node_config
        assert node_config["KeyName"] == naming.key_pair_name(cluster_name)
        assert node_config["ImageId"] == TEST_IMAGE_ID  # from the public SSM parameter
        assert list(node_config["SecurityGroupIds"]) == [group["GroupId"]]
        zones = [subnets[subnet] for subnet in node_config["SubnetIds"]]
        assert zones == ["us-west-2a", "us-west-2b"]  # availability_zone order
        assert ("IamInstanceProfile" in node_config) == (name == HEAD_TYPE)
    key_path = config.auth.ssh_private_key
    assert key_path == str(naming.private_key_path(cluster_name))
    assert stat.S_IMODE(os.stat(key_path).st_mode) == 0o600
    paramiko.PKey.from_path(key_path)  # a usable private key
    assert config.auth.ssh_user == "ubuntu"


def test_bootstrap_twice_creates_nothing_new(cluster_name, ec2, iam):
    first = AWSProvider.bootstrap(aws_config(cluster_name))
    key_before = open(first.auth.ssh_private_key).read()
    again = AWSProvider.bootstrap(aws_config(cluster_name))
    rebootstrapped = AWSProvider.bootstrap(first)
    assert again.to_dict() == first.to_dict() == rebootstrapped.to_dict()
    # what the head re-reads (the normalised config) passes the schema as it is
    from launcher.config.load import normalize
    assert normalize(first.to_dict(), check_local_files=False).to_dict() == first.to_dict()
    assert len(cluster_groups(ec2, cluster_name)) == 1
    pairs = ec2.describe_key_pairs(
        Filters=[{"Name": "key-name", "Values": [naming.key_pair_name(cluster_name)]}])
    assert len(pairs["KeyPairs"]) == 1
    assert open(first.auth.ssh_private_key).read() == key_before
    profile_name = naming.head_profile_name(cluster_name, REGION)
    profiles = [p for p in iam.list_instance_profiles()["InstanceProfiles"]
                if p["InstanceProfileName"] == profile_name]
    assert len(profiles) == 1 and len(profiles[0]["Roles"]) == 1
    [group] = cluster_groups(ec2, cluster_name)
    assert len(group["IpPermissions"]) == 2  # rules not duplicated


def test_head_role_policy_is_scoped_to_the_cluster(cluster_name, iam):
    config = AWSProvider.bootstrap(aws_config(cluster_name))
    role = naming.head_profile_name(cluster_name, REGION)
    document = iam.get_role_policy(RoleName=role, PolicyName=naming.ROLE_POLICY_NAME)
    policy = document["PolicyDocument"]
    policy = json.loads(policy) if isinstance(policy, str) else policy
    text = json.dumps(policy)
    assert '"ec2:*"' not in text and '"*"' not in json.dumps(
        [s["Action"] for s in policy["Statement"]])
    assert f'"aws:ResourceTag/{TAG_CLUSTER_NAME}": "{cluster_name}"' in text
    assert f'"aws:RequestTag/{TAG_CLUSTER_NAME}": "{cluster_name}"' in text
    head = config.available_node_types[HEAD_TYPE].node_config
    assert head["IamInstanceProfile"]["Arn"].endswith(f"instance-profile/{role}")


def test_worker_profile_gets_pass_role(cluster_name, iam):
    iam.create_role(RoleName=f"{cluster_name}-w", AssumeRolePolicyDocument="{}")
    iam.create_instance_profile(InstanceProfileName=f"{cluster_name}-w")
    iam.add_role_to_instance_profile(InstanceProfileName=f"{cluster_name}-w",
                                     RoleName=f"{cluster_name}-w")
    config = AWSProvider.bootstrap(aws_config(
        cluster_name, provider={"worker_iam_instance_profile": f"{cluster_name}-w"}))
    worker = config.available_node_types[WORKER_TYPE].node_config
    assert worker["IamInstanceProfile"] == {"Name": f"{cluster_name}-w"}
    role = naming.head_profile_name(cluster_name, REGION)
    policy = iam.get_role_policy(RoleName=role, PolicyName=naming.ROLE_POLICY_NAME)
    text = json.dumps(policy["PolicyDocument"])
    assert "iam:PassRole" in text and f"role/{cluster_name}-w" in text


def test_ssh_only_from_the_given_networks_and_changes_follow_the_config(cluster_name, ec2):
    AWSProvider.bootstrap(aws_config(cluster_name, provider={
        "ssh_ingress_cidrs": ["198.51.100.0/24", "203.0.113.7/32"]}))
    [group] = cluster_groups(ec2, cluster_name)
    assert ssh_cidrs(group) == ["198.51.100.0/24", "203.0.113.7/32"]
    inside = [p for p in group["IpPermissions"] if p["IpProtocol"] == "-1"]
    assert [pair["GroupId"] for p in inside for pair in p["UserIdGroupPairs"]] == [
        group["GroupId"]]
    assert not [r for p in inside for r in p.get("IpRanges", [])]  # all traffic: group only
    AWSProvider.bootstrap(aws_config(cluster_name, provider={
        "ssh_ingress_cidrs": ["203.0.113.7/32"]}))
    [group] = cluster_groups(ec2, cluster_name)
    assert ssh_cidrs(group) == ["203.0.113.7/32"]


def test_no_ssh_networks_is_a_config_error_and_creates_nothing(cluster_name, ec2):
    with pytest.raises(ConfigError) as caught:
        AWSProvider.bootstrap(aws_config(cluster_name, provider={"ssh_ingress_cidrs": []}))
    assert caught.value.path == "provider.ssh_ingress_cidrs"
    assert cluster_groups(ec2, cluster_name) == []


def test_internal_ips_default_to_the_vpc_range(cluster_name, ec2):
    AWSProvider.bootstrap(aws_config(cluster_name, provider={
        "ssh_ingress_cidrs": [], "use_internal_ips": True}))
    [vpc] = ec2.describe_vpcs(Filters=[{"Name": "isDefault", "Values": ["true"]}])["Vpcs"]
    [group] = cluster_groups(ec2, cluster_name)
    assert ssh_cidrs(group) == [vpc["CidrBlock"]]


def test_the_whole_internet_only_when_asked_and_then_said(cluster_name, ec2, capsys):
    AWSProvider.bootstrap(aws_config(cluster_name, provider={"ssh_ingress_cidrs": ["0.0.0.0/0"]}))
    assert "open to the whole internet" in capsys.readouterr().err
    [group] = cluster_groups(ec2, cluster_name)
    assert ssh_cidrs(group) == ["0.0.0.0/0"]


def test_resources_filled_from_instance_types(cluster_name):
    config = AWSProvider.bootstrap(aws_config(cluster_name))
    types = config.available_node_types
    assert dict(types[WORKER_TYPE].resources) == {"CPU": 2, "memory": 1024 ** 3}
    assert types[GPU_TYPE].resources["GPU"] == 1
    assert types[GPU_TYPE].resources["CPU"] == 4


def test_given_values_are_kept(cluster_name):
    node_types = {
        HEAD_TYPE: {"node_config": {"InstanceType": "t3.medium",
                                    "ImageId": "ami-00000000000000001",
                                    "SubnetId": "subnet-0123456789abcdef0"},
                    "resources": {"CPU": 7}},
        WORKER_TYPE: {"node_config": {"InstanceType": "t3.micro"}, "max_workers": 2}}
    config = AWSProvider.bootstrap(aws_config(cluster_name, node_types=node_types))
    head = config.available_node_types[HEAD_TYPE]
    assert head.node_config["ImageId"] == "ami-00000000000000001"
    assert head.node_config["SubnetId"] == "subnet-0123456789abcdef0" and "SubnetIds" not in head.node_config
    assert dict(head.resources) == {"CPU": 7}


def test_unknown_instance_type_is_a_config_error(cluster_name):
    node_types = {HEAD_TYPE: {"node_config": {"InstanceType": "t3.gigantic"}}}
    with pytest.raises(ConfigError) as caught:
        AWSProvider.bootstrap(aws_config(cluster_name, node_types=node_types))
    assert caught.value.path == f"available_node_types.{HEAD_TYPE}.node_config.InstanceType"


def test_missing_image_parameter_is_a_config_error(cluster_name):
    with pytest.raises(ConfigError) as caught:
        AWSProvider.bootstrap(aws_config(
            cluster_name, provider={"image_ssm_parameter": "/aws/service/nothing/here"}))
    assert caught.value.path == "provider.image_ssm_parameter"


def test_users_own_private_key_is_imported(cluster_name, ec2, tmp_path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    private = tmp_path / "id_test"
    private.write_bytes(Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption()))
    user_key = paramiko.PKey.from_path(private)
    config = AWSProvider.bootstrap(aws_config(cluster_name,
                                              auth={"ssh_private_key": str(private)}))
    assert config.auth.ssh_private_key == str(private)
    [pair] = ec2.describe_key_pairs(KeyNames=[naming.key_pair_name(cluster_name)],
                                    IncludePublicKey=True)["KeyPairs"]
    assert pair["PublicKey"].split()[:2] == [user_key.get_name(), user_key.get_base64()]
    assert not naming.private_key_path(cluster_name).exists()
    AWSProvider.bootstrap(config)  # again: the same key, nothing replaced
    [again] = ec2.describe_key_pairs(KeyNames=[naming.key_pair_name(cluster_name)])["KeyPairs"]
    assert again["KeyPairId"] == pair["KeyPairId"]


def test_named_key_pair_needs_its_private_key(cluster_name):
    with pytest.raises(ConfigError) as caught:
        AWSProvider.bootstrap(aws_config(cluster_name, provider={"key_name": "mine"}))
    assert caught.value.path == "auth.ssh_private_key"


def test_key_pair_made_elsewhere_without_its_private_key_is_reported(cluster_name):
    config = AWSProvider.bootstrap(aws_config(cluster_name))
    os.unlink(config.auth.ssh_private_key)
    with pytest.raises(ProviderError) as caught:
        AWSProvider.bootstrap(aws_config(cluster_name))
    assert "down --purge" in str(caught.value)


def test_default_image_is_current_ubuntu_from_ssm(cluster_name):
    publish_ubuntu_image("ami-0000000000000abcd")  # AWS moved the parameter on
    config = AWSProvider.bootstrap(aws_config(cluster_name))
    assert config.available_node_types[HEAD_TYPE].node_config["ImageId"] == "ami-0000000000000abcd"


def test_without_zones_every_default_subnet_is_used_in_zone_order(cluster_name, ec2):
    from launcher.config.load import normalize
    from tests.aws.configs import aws_document
    document = aws_document(cluster_name)
    del document["provider"]["availability_zone"]
    config = AWSProvider.bootstrap(normalize(document))
    subnets = {s["SubnetId"]: s["AvailabilityZone"] for s in ec2.describe_subnets()["Subnets"]}
    chosen = config.available_node_types[WORKER_TYPE].node_config["SubnetIds"]
    zones = [subnets[subnet] for subnet in chosen]
    assert zones == sorted(zones) and len(zones) >= 3


def test_a_named_vpc_is_used(cluster_name, ec2):
    vpc = ec2.create_vpc(CidrBlock="10.77.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.77.1.0/24",
                               AvailabilityZone="us-west-2b")["Subnet"]["SubnetId"]
    config = AWSProvider.bootstrap(aws_config(cluster_name, provider={"vpc_id": vpc}))
    worker = config.available_node_types[WORKER_TYPE].node_config
    assert list(worker["SubnetIds"]) == [subnet]
    [group] = cluster_groups(ec2, cluster_name)
    assert group["VpcId"] == vpc and list(worker["SecurityGroupIds"]) == [group["GroupId"]]
    provider = AWSProvider(config)
    [node_id] = provider.create_nodes(WORKER_TYPE, worker, {}, 1)
    described = ec2.describe_instances(InstanceIds=[node_id])["Reservations"][0]["Instances"][0]
    assert described["SubnetId"] == subnet
    AWSProvider.purge(config)
    assert cluster_groups(ec2, cluster_name) == []


def test_a_zone_without_subnets_is_a_config_error(cluster_name):
    with pytest.raises(ConfigError) as caught:
        AWSProvider.bootstrap(aws_config(cluster_name,
                                         provider={"availability_zone": "us-west-2z"}))
    assert caught.value.path == "provider.availability_zone"
