"""AWSProvider's nodes against moto's EC2: tags, pagination, cached stopped nodes, zone
fallback on injected capacity errors, error translation, purge."""
from __future__ import annotations

import pytest

from launcher import tags as T
from launcher.errors import (CapacityError, NodeNotFoundError, ProviderAuthError,
                             ProviderError, QuotaError)
from launcher.providers.aws import AWSProvider
from launcher.providers.aws import naming
from tests.aws.configs import HEAD_TYPE, WORKER_TYPE, aws_config
from tests.aws.moto_server import REGION, inject_client_error, record_calls


def worker_tags(extra=None):
    return {T.TAG_NODE_KIND: T.KIND_WORKER, T.TAG_NODE_TYPE: WORKER_TYPE, **(extra or {})}


@pytest.fixture
def bootstrapped(cluster_name):
    config = AWSProvider.bootstrap(aws_config(cluster_name))
    yield config
    AWSProvider.purge(config)


@pytest.fixture
def provider(bootstrapped):
    provider = AWSProvider(bootstrapped)
    yield provider
    provider.close()


def worker_config(config):
    return config.available_node_types[WORKER_TYPE].node_config


def zone_of(ec2, subnet_id):
    return ec2.describe_subnets(SubnetIds=[subnet_id])["Subnets"][0]["AvailabilityZone"]


def test_nodes_carry_our_tags_merged_with_the_users(provider, bootstrapped, ec2):
    node_config = dict(worker_config(bootstrapped))
    node_config["TagSpecifications"] = [
        {"ResourceType": "instance", "Tags": [{"Key": "team", "Value": "ml"},
                                              {"Key": T.TAG_CLUSTER_NAME, "Value": "spoofed"}]}]
    [node_id] = provider.create_nodes(WORKER_TYPE, node_config, worker_tags(), 1)
    [node] = provider.non_terminated_nodes()
    assert node.id == node_id and node.kind == T.KIND_WORKER and node.node_type == WORKER_TYPE
    assert node.tags["team"] == "ml"
    assert node.tags[T.TAG_CLUSTER_NAME] == provider.cluster_name  # ours win
    described = ec2.describe_instances(InstanceIds=[node_id])["Reservations"][0]["Instances"][0]
    assert node.internal_ip == described["PrivateIpAddress"]
    assert node.external_ip == described["PublicIpAddress"]
    assert described["KeyName"] == naming.key_pair_name(provider.cluster_name)
    assert zone_of(ec2, described["SubnetId"]) == "us-west-2a"  # first preferred zone


def test_listing_pages_through_many_nodes(provider, bootstrapped):
    provider.page_size = 5
    provider.ids_per_filter = 4  # as EC2's 200-values-per-filter limit, made small
    provider.ids_per_call = 5
    ids = provider.create_nodes(WORKER_TYPE, worker_config(bootstrapped), worker_tags(), 12)
    listed = [node.id for node in provider.non_terminated_nodes()]
    assert sorted(listed) == sorted(ids) and len(set(listed)) == 12
    calls = record_calls(provider.clients.ec2, "TerminateInstances")
    provider.terminate_nodes(ids)
    assert sorted(i for call in calls for i in call["InstanceIds"]) == sorted(ids)
    assert max(len(call["InstanceIds"]) for call in calls) == 5
    assert provider.non_terminated_nodes() == []


def test_set_tags_refuses_another_clusters_node(provider, bootstrapped, cluster_name):
    other_config = AWSProvider.bootstrap(aws_config(cluster_name + "-x"))
    other = AWSProvider(other_config)
    try:
        [theirs] = other.create_nodes(WORKER_TYPE, worker_config(other_config), worker_tags(), 1)
        with pytest.raises(NodeNotFoundError):
            provider.set_node_tags(theirs, {"color": "red"})
        assert "color" not in other.node(theirs).tags
        provider.terminate_nodes([theirs])
        assert other.node(theirs) is not None
    finally:
        AWSProvider.purge(other_config)


def test_cached_nodes_are_stopped_and_restarted(cluster_name, capsys):
    config = AWSProvider.bootstrap(aws_config(cluster_name,
                                              provider={"cache_stopped_nodes": True}))
    provider = AWSProvider(config)
    try:
        tags = worker_tags({T.TAG_LAUNCH_HASH: "h1"})
        first = provider.create_nodes(WORKER_TYPE, worker_config(config), tags, 2)
        provider.terminate_nodes(first)
        assert "cache_stopped_nodes" in capsys.readouterr().err  # the user is told
        assert provider.non_terminated_nodes() == []
        assert sorted(n.id for n in provider.stopped_nodes()) == sorted(first)
        # another launch hash does not reuse them
        [fresh] = provider.create_nodes(WORKER_TYPE, worker_config(config),
                                        worker_tags({T.TAG_LAUNCH_HASH: "h2"}), 1)
        assert fresh not in first
        again = provider.create_nodes(WORKER_TYPE, worker_config(config),
                                      {**tags, T.TAG_NODE_STATUS: T.STATUS_UNINITIALIZED}, 3)
        assert set(first) < set(again) and len(again) == 3
        running = {n.id: n for n in provider.non_terminated_nodes()}
        assert set(again) | {fresh} == set(running)
        assert all(running[i].tags[T.TAG_NODE_STATUS] == T.STATUS_UNINITIALIZED for i in first)
    finally:
        removed = AWSProvider.purge(config)
    assert any("node(s)" in line for line in removed)
    assert provider.stopped_nodes() == [] and provider.non_terminated_nodes() == []


def test_stopped_nodes_without_room_to_restart_are_replaced_by_new_ones(cluster_name):
    config = AWSProvider.bootstrap(aws_config(cluster_name,
                                              provider={"cache_stopped_nodes": True}))
    provider = AWSProvider(config)
    try:
        [stopped] = provider.create_nodes(WORKER_TYPE, worker_config(config), worker_tags(), 1)
        provider.terminate_nodes([stopped])
        inject_client_error(provider.clients.ec2, "StartInstances",
                            "InsufficientInstanceCapacity")
        [fresh] = provider.create_nodes(WORKER_TYPE, worker_config(config), worker_tags(), 1)
        assert fresh != stopped
        assert [node.id for node in provider.stopped_nodes()] == [stopped]
    finally:
        AWSProvider.purge(config)


def test_capacity_error_moves_to_the_next_zone(provider, bootstrapped, ec2):
    ec2_client = provider.clients.ec2
    first_subnet = worker_config(bootstrapped)["SubnetIds"][0]
    failed = inject_client_error(ec2_client, "RunInstances", "InsufficientInstanceCapacity",
                                 when=lambda params: params.get("SubnetId") == first_subnet)
    ids = provider.create_nodes(WORKER_TYPE, worker_config(bootstrapped), worker_tags(), 2)
    assert len(failed) == 1 and len(ids) == 2
    zones = {zone_of(ec2, ec2.describe_instances(InstanceIds=[i])["Reservations"][0]
                     ["Instances"][0]["SubnetId"]) for i in ids}
    assert zones == {"us-west-2b"}


def test_capacity_error_everywhere_carries_what_the_autoscaler_needs(provider, bootstrapped):
    failed = inject_client_error(provider.clients.ec2, "RunInstances",
                                 "InsufficientInstanceCapacity")
    with pytest.raises(CapacityError) as caught:
        provider.create_nodes(WORKER_TYPE, worker_config(bootstrapped), worker_tags(), 1)
    error = caught.value
    assert len(failed) == 2  # both zones tried, nothing else
    assert error.node_type == WORKER_TYPE and error.try_elsewhere and error.retryable
    assert error.zone.split(",")[0].startswith("us-west-2a")
    assert "us-west-2b" in error.zone and error.cause == "InsufficientInstanceCapacity"
    assert provider.non_terminated_nodes() == []


def test_spot_shortage_is_a_capacity_error(provider, bootstrapped):
    inject_client_error(provider.clients.ec2, "RunInstances", "SpotMaxPriceTooLow",
                        when=lambda params: "InstanceMarketOptions" in params)
    spot_config = {**worker_config(bootstrapped),
                   "InstanceMarketOptions": {"MarketType": "spot"}}
    with pytest.raises(CapacityError):
        provider.create_nodes(WORKER_TYPE, spot_config, worker_tags(), 1)
    assert provider.create_nodes(WORKER_TYPE, worker_config(bootstrapped), worker_tags(), 1)


@pytest.mark.parametrize("code", ["VcpuLimitExceeded", "InstanceLimitExceeded"])
def test_quota_errors(provider, bootstrapped, code):
    inject_client_error(provider.clients.ec2, "RunInstances", code)
    with pytest.raises(QuotaError) as caught:
        provider.create_nodes(WORKER_TYPE, worker_config(bootstrapped), worker_tags(), 1)
    assert caught.value.try_elsewhere and caught.value.cause == code


def test_auth_errors_stop_at_once(provider, bootstrapped):
    failed = inject_client_error(provider.clients.ec2, "RunInstances", "UnauthorizedOperation")
    with pytest.raises(ProviderAuthError):
        provider.create_nodes(WORKER_TYPE, worker_config(bootstrapped), worker_tags(), 1)
    assert len(failed) == 1  # no other zone tried


def test_other_errors_carry_their_code(provider, bootstrapped):
    inject_client_error(provider.clients.ec2, "DescribeInstances", "InternalFailure")
    with pytest.raises(ProviderError) as caught:
        provider.non_terminated_nodes()
    assert caught.value.cause == "InternalFailure"
    assert "InternalFailure" in str(caught.value)


def test_missing_credentials_are_a_provider_auth_error(bootstrapped, monkeypatch):
    with monkeypatch.context() as patch:  # undone before the fixture's purge runs
        for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            patch.delenv(name)
        provider = AWSProvider(bootstrapped)
        with pytest.raises(ProviderAuthError) as caught:
            provider.non_terminated_nodes()
    assert "credentials" in str(caught.value)


def test_purge_removes_everything_corral_made(cluster_name, ec2, iam):
    config = AWSProvider.bootstrap(aws_config(cluster_name))
    provider = AWSProvider(config)
    provider.create_nodes(HEAD_TYPE, config.available_node_types[HEAD_TYPE].node_config,
                          {T.TAG_NODE_KIND: T.KIND_HEAD, T.TAG_NODE_TYPE: HEAD_TYPE}, 1)
    removed = AWSProvider.purge(config)
    assert len(removed) == 6, removed  # nodes, group, key pair, local key, profile, role
    assert provider.non_terminated_nodes() == []
    assert not ec2.describe_security_groups(Filters=[
        {"Name": f"tag:{T.TAG_CLUSTER_NAME}", "Values": [cluster_name]}])["SecurityGroups"]
    assert not ec2.describe_key_pairs(Filters=[
        {"Name": "key-name", "Values": [naming.key_pair_name(cluster_name)]}])["KeyPairs"]
    name = naming.head_profile_name(cluster_name, REGION)
    assert name not in [p["InstanceProfileName"]
                        for p in iam.list_instance_profiles()["InstanceProfiles"]]
    assert name not in [r["RoleName"] for r in iam.list_roles()["Roles"]]
    assert not naming.private_key_path(cluster_name).exists()
    assert AWSProvider.purge(config) == []  # nothing left: a second purge is a no-op


def test_purge_leaves_what_the_user_named(cluster_name, ec2):
    [vpc] = ec2.describe_vpcs(Filters=[{"Name": "isDefault", "Values": ["true"]}])["Vpcs"]
    group = ec2.create_security_group(GroupName=f"{cluster_name}-mine", Description="mine",
                                      VpcId=vpc["VpcId"])["GroupId"]
    config = AWSProvider.bootstrap(aws_config(cluster_name, provider={"security_group": group}))
    assert list(config.available_node_types[WORKER_TYPE].node_config["SecurityGroupIds"]) == [
        group]
    AWSProvider.purge(config)
    assert ec2.describe_security_groups(GroupIds=[group])["SecurityGroups"]


def test_launch_waits_for_a_new_instance_profile_to_be_visible(provider, bootstrapped):
    provider.iam_propagation_delay_s = 0
    head_config = bootstrapped.available_node_types[HEAD_TYPE].node_config
    failed = inject_client_error(
        provider.clients.ec2, "RunInstances", "InvalidParameterValue",
        message="Value (corral-head) for parameter iamInstanceProfile.name is invalid. "
                "Invalid IAM Instance Profile name",
        when=lambda params: len(failed) < 2)
    [node_id] = provider.create_nodes(HEAD_TYPE, head_config,
                                      {T.TAG_NODE_KIND: T.KIND_HEAD}, 1)
    assert len(failed) == 2 and provider.node(node_id).kind == T.KIND_HEAD


def test_other_invalid_parameters_are_not_retried(provider, bootstrapped):
    failed = inject_client_error(provider.clients.ec2, "RunInstances", "InvalidParameterValue",
                                 message="Invalid value 'x' for instanceType")
    with pytest.raises(ProviderError) as caught:
        provider.create_nodes(WORKER_TYPE, worker_config(bootstrapped), worker_tags(), 1)
    assert len(failed) == 1 and caught.value.cause == "InvalidParameterValue"


def test_throttling_beyond_botocore_retries_is_a_rate_limit_error(provider, bootstrapped):
    from launcher.errors import RateLimitError
    inject_client_error(provider.clients.ec2, "DescribeInstances", "RequestLimitExceeded")
    with pytest.raises(RateLimitError) as caught:
        provider.non_terminated_nodes()
    assert caught.value.retryable


def test_command_runner_addresses_and_key(cluster_name, bootstrapped):
    provider = AWSProvider(bootstrapped)
    [node_id] = provider.create_nodes(WORKER_TYPE, worker_config(bootstrapped), worker_tags(), 1)
    node = provider.node(node_id)
    runner = provider.command_runner(node)
    assert runner.host == node.external_ip and runner.user == "ubuntu"
    inside = AWSProvider(bootstrapped.replace(
        provider={**bootstrapped.provider, "use_internal_ips": True}))
    assert inside.command_runner(node).host == node.internal_ip
    # `corral down`/`exec` load the config without bootstrapping it: the cluster's own key
    import dataclasses
    plain = bootstrapped.replace(auth=dataclasses.replace(bootstrapped.auth,
                                                          ssh_private_key=None))
    assert AWSProvider(plain).command_runner(node).spec.private_key_path == str(
        naming.private_key_path(cluster_name))
    naming.private_key_path(cluster_name).unlink()
    with pytest.raises(ProviderError) as caught:
        AWSProvider(plain).command_runner(node)
    assert caught.value.cause == "NoPrivateKey"


def test_each_launch_request_carries_its_own_client_token(provider, bootstrapped):
    calls = record_calls(provider.clients.ec2, "RunInstances")
    provider.create_nodes(WORKER_TYPE, worker_config(bootstrapped), worker_tags(), 1)
    provider.create_nodes(WORKER_TYPE, worker_config(bootstrapped), worker_tags(), 1)
    seen = [call["ClientToken"] for call in calls]
    assert len(seen) == 2 and len(set(seen)) == 2 and all(len(token) >= 32 for token in seen)
