"""End to end on AWS as served by moto: the real `corral` CLI brings up 1 head + 2 workers
whose instance IPs are mapped (through auth.ssh_proxy_command) onto SSH test hosts, so the
whole bootstrap over SSH is real; then exec, a second `up` that changes nothing, and
`down` leaves no instance in moto."""
from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import boto3
import pytest
import yaml

from launcher.tags import TAG_CLUSTER_NAME, TAG_NODE_STATUS, STATUS_UP_TO_DATE
from tests.aws.configs import TEST_IMAGE_ID
from tests.aws.moto_server import REGION

pytestmark = [pytest.mark.netns, pytest.mark.timeout(240)]

PROXY = Path(__file__).with_name("ip_proxy.py")
DAEMON = "nohup sleep 600 > /dev/null 2>&1 &"
COUNTER = "$CORRAL_NODE_DIR/setup-count"


def corral(*args: str, timeout_s: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "launcher", *args], capture_output=True,
                          text=True, timeout=timeout_s, stdin=subprocess.DEVNULL)


def instances(cluster_name: str, states=("pending", "running", "stopping", "stopped")):
    ec2 = boto3.client("ec2", region_name=REGION)
    pages = ec2.get_paginator("describe_instances").paginate(Filters=[
        {"Name": f"tag:{TAG_CLUSTER_NAME}", "Values": [cluster_name]},
        {"Name": "instance-state-name", "Values": list(states)}])
    return [i for page in pages for r in page["Reservations"] for i in r["Instances"]]


@pytest.fixture
def aws_cluster(tmp_path, test_hosts, cluster_name):
    hosts = test_hosts.hosts[:3]
    ip_map = tmp_path / "ip-map.json"
    ip_map.write_text(json.dumps({"hosts": [host.ip for host in hosts], "assigned": {}}))
    name = f"e2e-{uuid.uuid4().hex[:6]}"
    document = {
        "cluster_name": name,
        "provider": {"type": "aws", "region": REGION,
                     "availability_zone": ["us-west-2a", "us-west-2b"],
                     "ssh_ingress_cidrs": ["198.18.0.0/24"]},
        "auth": {"ssh_user": test_hosts.ssh_user,
                 "ssh_private_key": str(test_hosts.ssh_private_key),
                 "ssh_proxy_command": f"{sys.executable} {PROXY} {ip_map} %h %p",
                 "ssh_timeout_s": 30},
        "available_node_types": {
            "head": {"node_config": {"InstanceType": "t3.medium"}, "max_workers": 0},
            "cpu": {"node_config": {"InstanceType": "t3.micro"},
                    "min_workers": 2, "max_workers": 2}},
        "head_node_type": "head",
        "setup_commands": [f"echo setup >> {COUNTER}"],
        "head_start_commands": [DAEMON],
        "worker_start_commands": [DAEMON],
    }
    path = tmp_path / "aws.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    try:
        yield name, path, hosts, ip_map
    finally:
        corral("down", str(path), "-y")
        for instance in instances(name):  # whatever down could not remove
            boto3.client("ec2", region_name=REGION).terminate_instances(
                InstanceIds=[instance["InstanceId"]])


def test_up_exec_down_on_moto_with_real_ssh(aws_cluster):
    name, path, hosts, ip_map = aws_cluster
    up = corral("up", str(path))
    assert up.returncode == 0, up.stdout + up.stderr
    running = instances(name, ("pending", "running"))
    assert len(running) == 3
    assert {i["ImageId"] for i in running} == {TEST_IMAGE_ID}
    assert all({t["Key"]: t["Value"] for t in i["Tags"]}[TAG_NODE_STATUS] == STATUS_UP_TO_DATE
               for i in running)
    assigned = json.loads(ip_map.read_text())["assigned"]
    assert sorted(assigned.values()) == sorted(host.ip for host in hosts)
    for host in hosts:
        assert any("sleep 600" in cmdline for _, cmdline in host.processes()), host.name
        assert host.run("cat /tmp/corral/setup-count").stdout.split() == ["setup"]

    head_ip = corral("get-head-ip", str(path)).stdout.strip()
    head_host = {host.ip: host for host in hosts}[assigned[head_ip]]
    where = corral("exec", str(path), "hostname; echo $CORRAL_NODE_KIND")
    assert where.returncode == 0, where.stderr
    assert where.stdout.split() == [head_host.name, "head"]

    again = corral("up", str(path))
    assert again.returncode == 0 and "nothing changed" in again.stdout
    assert len(instances(name)) == 3

    down = corral("down", str(path), "-y")
    assert down.returncode == 0, down.stdout + down.stderr
    assert instances(name) == []  # zero non-terminated instances in moto
    assert "nothing of cluster" in down.stdout
    # (Terminating a moto instance cannot power off the test host it was mapped to, so
    # the hosts' processes are not checked here; the test_hosts fixture clears them.)


def test_up_without_ssh_networks_is_a_config_error(tmp_path, cluster_name):
    document = {
        "cluster_name": cluster_name,
        "provider": {"type": "aws", "region": REGION},
        "available_node_types": {"head": {"node_config": {"InstanceType": "t3.micro"}}},
        "head_node_type": "head",
    }
    path = tmp_path / "open.yaml"
    path.write_text(yaml.safe_dump(document))
    up = corral("up", str(path))
    assert up.returncode == 2, up.stdout + up.stderr
    assert "provider.ssh_ingress_cidrs" in up.stderr and "Traceback" not in up.stderr
    assert instances(cluster_name) == []


def test_down_purge_removes_the_clusters_aws_resources(aws_cluster):
    from botocore.exceptions import ClientError

    from launcher.config.load import load_config
    from launcher.providers.aws import naming
    name, path, _hosts, _ip_map = aws_cluster
    ec2 = boto3.client("ec2", region_name=REGION)
    iam = boto3.client("iam", region_name=REGION)
    config = load_config(path)
    group_name = naming.security_group_name(config)
    key_name = naming.key_pair_name(name)
    profile_name = naming.head_profile_name(name, REGION)

    def groups():
        return ec2.describe_security_groups(
            Filters=[{"Name": "group-name", "Values": [group_name]}])["SecurityGroups"]

    def keys():
        return ec2.describe_key_pairs(
            Filters=[{"Name": "key-name", "Values": [key_name]}])["KeyPairs"]

    def profile_exists():
        try:
            iam.get_instance_profile(InstanceProfileName=profile_name)
        except ClientError as error:
            assert error.response["Error"]["Code"] == "NoSuchEntity"
            return False
        return True

    up = corral("up", str(path))
    assert up.returncode == 0, up.stdout + up.stderr
    assert groups() and keys() and profile_exists()  # what purge is about to remove

    mixed = corral("down", str(path), "--purge", "--workers-only", "-y")
    assert mixed.returncode == 2 and "--workers-only" in mixed.stderr
    assert len(instances(name)) == 3  # a usage error touches nothing

    unconfirmed = corral("down", str(path), "--purge")  # no tty to confirm on: refused
    assert unconfirmed.returncode == 2, unconfirmed.stdout + unconfirmed.stderr
    assert "security group, key pair, instance profile" in unconfirmed.stderr
    assert len(instances(name)) == 3

    down = corral("down", str(path), "--purge", "-y", timeout_s=180)
    assert down.returncode == 0, down.stdout + down.stderr
    assert instances(name) == []
    assert f"removed security group {group_name} (" in down.stdout, down.stdout
    assert f"removed key pair {key_name}" in down.stdout
    assert f"removed instance profile {profile_name}" in down.stdout
    assert groups() == [] and keys() == [] and not profile_exists()

    again = corral("down", str(path), "--purge", "-y")  # idempotent: nothing left to remove
    assert again.returncode == 0, again.stdout + again.stderr
    assert "nothing left to remove" in again.stdout
