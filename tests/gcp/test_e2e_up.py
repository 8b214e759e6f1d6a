"""End to end on gcp: the real `corral` CLI (a subprocess) brings a cluster up in the fake
GCE; each instance's internal IP is an sshd test host's address and its external IP is
mapped to that host by auth.ssh_proxy_command, so bootstrap really runs over SSH. A
capacity error injected in the first zone sends a node to the second one. `down` leaves
zero instances; purge removes the firewall rules."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml

from launcher import tags as T
from launcher.providers.gcp import labels as label_codec
from launcher.providers.gcp import naming
from tests.gcp.helpers import PROJECT, REGION, ZONES

pytestmark = [pytest.mark.timeout(170), pytest.mark.netns]
HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
WORKERS = 2


def corral(*args: str, timeout_s: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "launcher", *args], capture_output=True,
                          text=True, timeout=timeout_s, stdin=subprocess.DEVNULL, cwd=REPO)


@pytest.fixture
def gcp_cluster(tmp_path, test_hosts, fake_gce):
    hosts = test_hosts.hosts[:WORKERS + 1]
    pool = [(host.ip, f"192.0.2.{10 + index}") for index, host in enumerate(hosts)]
    fake_gce.state.ip_pool = pool
    mapping = tmp_path / "ip-map.json"
    mapping.write_text(json.dumps({external: internal for internal, external in pool}))
    document = {
        "cluster_name": f"gcpe2e{os.getpid() % 1000}",
        "max_workers": WORKERS,
        "provider": {"type": "gcp", "project_id": PROJECT, "region": REGION,
                     "availability_zone": ZONES, "ssh_ingress_cidrs": ["198.18.0.0/24"],
                     "compute_endpoint": fake_gce.compute_endpoint, "operation_timeout_s": 20},
        "auth": {"ssh_user": test_hosts.ssh_user, "ssh_private_key": test_hosts.ssh_private_key,
                 "ssh_proxy_command": f"{sys.executable} {HERE}/ip_proxy.py {mapping} %h %p",
                 "ssh_timeout_s": 30},
        "available_node_types": {
            "head": {"node_config": {"machineType": "e2-small"}, "min_workers": 0,
                     "max_workers": 0},
            "cpu": {"node_config": {"machineType": "e2-small"}, "min_workers": WORKERS,
                    "max_workers": WORKERS}},
        "head_node_type": "head",
        "setup_commands": ["echo setup >> /tmp/gcp-setup-count"],
        "head_start_commands": ["nohup sleep 600 > /dev/null 2>&1 &"],
        "worker_start_commands": ["nohup sleep 600 > /dev/null 2>&1 &"],
    }
    path = tmp_path / "gcp-e2e.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    try:
        yield path, document, hosts
    finally:
        if fake_gce.state.instances:
            corral("down", "-y", str(path), timeout_s=120)


def instance_tags(fake):
    return {name: label_codec.decode_labels(instance["labels"])
            for (_p, _z, name), instance in fake.state.instances.items()}


def test_up_exec_down_on_fake_gce(gcp_cluster, fake_gce):
    path, document, hosts = gcp_cluster
    fake_gce.state.inject(method="instances.insert", zone=ZONES[0], times=1,
                          operation_code="ZONE_RESOURCE_POOL_EXHAUSTED",
                          message="The zone does not have enough resources")
    up = corral("up", "-y", str(path))
    assert up.returncode == 0, up.stdout + up.stderr
    tags = instance_tags(fake_gce)
    assert len(tags) == WORKERS + 1
    assert {each[T.TAG_NODE_STATUS] for each in tags.values()} == {T.STATUS_UP_TO_DATE}
    assert sorted(each[T.TAG_NODE_KIND] for each in tags.values()) == ["head", "worker", "worker"]
    zones = {zone for (_p, zone, _n) in fake_gce.state.instances}
    assert zones == set(ZONES)  # one launch fell back to the second zone
    for host in hosts:  # setup really ran on every host, once
        assert host.run("cat /tmp/gcp-setup-count").stdout.split() == ["setup"]

    on_head = corral("exec", str(path), "echo $CORRAL_NODE_KIND $CORRAL_HEAD_IP")
    assert on_head.returncode == 0, on_head.stderr
    kind, head_ip = on_head.stdout.split()
    assert kind == "head" and head_ip in [host.ip for host in hosts]

    again = corral("up", "-y", str(path))
    assert again.returncode == 0, again.stdout + again.stderr
    assert len(fake_gce.state.instances) == WORKERS + 1  # nothing new created

    down = corral("down", "-y", str(path))
    assert down.returncode == 0, down.stdout + down.stderr
    assert fake_gce.state.instances == {}

    from launcher.config.load import load_config
    from launcher.providers.gcp import GCPProvider
    removed = GCPProvider.purge(load_config(path))
    name = document["cluster_name"]
    assert sorted(removed) == sorted(
        [f"firewall rule {rule}" for rule in naming.firewall_names(name).values()]
        + [f"image pin {naming.image_pins_path(name)}"])  # the user's own SSH key stays
    assert not fake_gce.state.firewalls


def test_down_purge_removes_the_firewall_rules(gcp_cluster, fake_gce):
    path, document, _hosts = gcp_cluster
    up = corral("up", "-y", str(path))
    assert up.returncode == 0, up.stdout + up.stderr
    rules = sorted(naming.firewall_names(document["cluster_name"]).values())
    assert sorted(name for (_p, name) in fake_gce.state.firewalls) == rules

    unconfirmed = corral("down", "--purge", str(path))  # no tty to confirm on: refused
    assert unconfirmed.returncode == 2 and "firewall rules" in unconfirmed.stderr

    down = corral("down", "-y", "--purge", str(path))
    assert down.returncode == 0, down.stdout + down.stderr
    assert fake_gce.state.instances == {}
    assert not fake_gce.state.firewalls
    for rule in rules:
        assert f"removed firewall rule {rule}" in down.stdout
