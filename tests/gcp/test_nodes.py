"""GCPProvider against the fake GCE API: listing by label with pages, zone fallback on
capacity errors, typed errors, fingerprinted label updates, spot scheduling, deletion."""
from __future__ import annotations

import pytest

from launcher import tags as T
from launcher.errors import (CapacityError, ProviderAuthError, ProviderError, QuotaError,
                             RateLimitError)
from tests.gcp.helpers import PROJECT, WORKER_TYPE, ZONES, gcp_config, make_provider

pytestmark = pytest.mark.timeout(60)
WORKER = {T.TAG_NODE_KIND: T.KIND_WORKER, T.TAG_NODE_TYPE: WORKER_TYPE}
CONFIG = {"machineType": "n2-standard-4"}


@pytest.fixture
def provider(fake_gce):
    provider = make_provider(gcp_config(fake_gce, "demo"))
    try:
        yield provider
    finally:
        fake_gce.state.injections.clear()
        provider.terminate_nodes([node.id for node in provider.non_terminated_nodes()])


def zone_of(fake, name):
    return next(zone for (_p, zone, each) in fake.state.instances if each == name)


def test_listing_follows_pages(fake_gce, provider):
    fake_gce.state.max_page_size = 2
    ids = provider.create_nodes(WORKER_TYPE, CONFIG, WORKER, 5)
    fake_gce.state.calls.clear()
    listed = provider.non_terminated_nodes()
    assert sorted(node.id for node in listed) == sorted(ids)
    list_calls = [call for call in fake_gce.state.calls if call[0] == "instances.aggregatedList"]
    assert len(list_calls) == 3  # 2 + 2 + 1


def test_insert_body_and_node_record(fake_gce, provider):
    [node_id] = provider.create_nodes(WORKER_TYPE, CONFIG, {**WORKER, "Owner": "Ada L."}, 1)
    instance = fake_gce.state.instances[(PROJECT, ZONES[0], node_id)]
    assert instance["machineType"] == f"zones/{ZONES[0]}/machineTypes/n2-standard-4"
    assert "corral-demo" in instance["tags"]["items"]
    assert instance["networkInterfaces"][0]["accessConfigs"][0]["type"] == "ONE_TO_ONE_NAT"
    node = provider.node(node_id)
    assert node.state == "running" and node.kind == T.KIND_WORKER
    assert node.tags["Owner"] == "Ada L."
    assert node.internal_ip.startswith("10.128.") and node.external_ip.startswith("192.0.2.")


def test_capacity_error_falls_back_to_next_zone(fake_gce, provider):
    fake_gce.state.inject(method="instances.insert", zone=ZONES[0], times=10,
                          operation_code="ZONE_RESOURCE_POOL_EXHAUSTED",
                          message="The zone does not have enough resources")
    ids = provider.create_nodes(WORKER_TYPE, CONFIG, WORKER, 2)
    assert len(ids) == 2
    assert {zone_of(fake_gce, name) for name in ids} == {ZONES[1]}
    attempts = [call for call in fake_gce.state.calls if call[0] == "instances.insert"]
    assert [zone for _, zone in attempts].count(ZONES[0]) == 2


def test_capacity_everywhere_raises_capacity_error_with_data(fake_gce, provider):
    for zone in ZONES:
        fake_gce.state.inject(method="instances.insert", zone=zone, times=10,
                              operation_code="ZONE_RESOURCE_POOL_EXHAUSTED")
    with pytest.raises(CapacityError) as caught:
        provider.create_nodes(WORKER_TYPE, CONFIG, WORKER, 1)
    error = caught.value
    assert error.retryable and error.try_elsewhere
    assert error.node_type == WORKER_TYPE
    assert error.zone == ",".join(ZONES)
    assert error.created_ids == []
    assert "ZONE_RESOURCE_POOL_EXHAUSTED" in error.cause
    assert not fake_gce.state.instances


def test_capacity_as_http_error_is_capacity_too(fake_gce, provider):
    fake_gce.state.inject(method="instances.insert", zone=ZONES[0], status=503,
                          reason="ZONE_RESOURCE_POOL_EXHAUSTED", times=100)
    [node_id] = provider.create_nodes(WORKER_TYPE, CONFIG, WORKER, 1)
    assert zone_of(fake_gce, node_id) == ZONES[1]


def test_quota_error(fake_gce, provider):
    fake_gce.state.inject(method="instances.insert", status=403, reason="quotaExceeded",
                          message="Quota 'CPUS' exceeded. Limit: 8.0", times=100)
    with pytest.raises(QuotaError, match="quotaExceeded") as caught:
        provider.create_nodes(WORKER_TYPE, CONFIG, WORKER, 1)
    assert "Quota 'CPUS' exceeded" in str(caught.value.failures)


def test_quota_in_operation(fake_gce, provider):
    for zone in ZONES:
        fake_gce.state.inject(method="instances.insert", zone=zone, operation_code="QUOTA_EXCEEDED")
    with pytest.raises(QuotaError):
        provider.create_nodes(WORKER_TYPE, CONFIG, WORKER, 1)


def test_rate_limit_is_retried_then_reported(fake_gce, provider):
    fake_gce.state.inject(method="instances.aggregatedList", status=429, reason="rateLimitExceeded", times=2)
    assert provider.non_terminated_nodes() == []  # two throttled answers, then success
    fake_gce.state.calls.clear()
    fake_gce.state.inject(method="instances.aggregatedList", status=403, reason="rateLimitExceeded",
                          times=1000)
    with pytest.raises(RateLimitError) as caught:
        provider.non_terminated_nodes()
    assert caught.value.retryable
    assert len(fake_gce.state.calls) == provider.client.max_attempts  # bounded


@pytest.mark.parametrize("status", [401, 403])
def test_refused_credentials(fake_gce, provider, status):
    fake_gce.state.inject(method="instances.aggregatedList", status=status, reason="forbidden",
                          message="Required 'compute.instances.list' permission")
    with pytest.raises(ProviderAuthError) as caught:
        provider.non_terminated_nodes()
    # 403 names the missing permission; on 401 the client first tries to refresh the
    # (anonymous) credentials, and that failure is what is reported.
    expected = "compute.instances.list" if status == 403 else "cannot be refreshed"
    assert expected in str(caught.value)


def test_set_tags_retries_on_stale_fingerprint(fake_gce, provider):
    [node_id] = provider.create_nodes(WORKER_TYPE, CONFIG, WORKER, 1)
    fake_gce.state.inject(method="instances.setLabels", status=412, reason="conditionNotMet",
                          times=2)
    failure = "setting-up: `apt-get install -y Foo` exited 100: E: Unable to locate package Foo " * 2
    provider.set_node_tags(node_id, {T.TAG_NODE_STATUS: T.STATUS_UPDATE_FAILED,
                                     T.TAG_FAILURE: failure})
    tags = provider.node(node_id).tags
    assert tags[T.TAG_FAILURE] == failure
    assert tags[T.TAG_NODE_STATUS] == T.STATUS_UPDATE_FAILED
    assert tags[T.TAG_NODE_TYPE] == WORKER_TYPE  # merged
    # A shorter value afterwards removes the extra pieces of the long one.
    provider.set_node_tags(node_id, {T.TAG_FAILURE: "none"})
    assert provider.node(node_id).tags[T.TAG_FAILURE] == "none"
    labels = fake_gce.state.instances[(PROJECT, ZONES[0], node_id)]["labels"]
    assert not [key for key in labels if key.startswith(T.TAG_FAILURE + "_9")]


def test_set_tags_keeps_labels_someone_else_added(fake_gce, provider):
    [node_id] = provider.create_nodes(WORKER_TYPE, CONFIG, WORKER, 1)
    fake_gce.state.change_labels_behind_our_back(PROJECT, ZONES[0], node_id, team="ml")
    provider.set_node_tags(node_id, {"color": "red"})
    tags = provider.node(node_id).tags
    assert tags["team"] == "ml" and tags["color"] == "red"


def test_set_tags_gives_up_on_endless_conflicts(fake_gce, provider):
    [node_id] = provider.create_nodes(WORKER_TYPE, CONFIG, WORKER, 1)
    fake_gce.state.inject(method="instances.setLabels", status=412, reason="conditionNotMet",
                          times=1000)
    with pytest.raises(ProviderError, match="stale labelFingerprint"):
        provider.set_node_tags(node_id, {"color": "red"})


def test_spot_scheduling(fake_gce, provider):
    spot = {"machineType": "n2-standard-4", "scheduling": {"provisioningModel": "SPOT"}}
    [node_id] = provider.create_nodes(WORKER_TYPE, spot, WORKER, 1)
    scheduling = fake_gce.state.instances[(PROJECT, ZONES[0], node_id)]["scheduling"]
    assert scheduling == {"provisioningModel": "SPOT", "instanceTerminationAction": "DELETE",
                          "automaticRestart": False, "onHostMaintenance": "TERMINATE"}
    preemptible = {"machineType": "n2-standard-4", "scheduling": {"preemptible": True}}
    [other] = provider.create_nodes(WORKER_TYPE, preemptible, WORKER, 1)
    assert fake_gce.state.instances[(PROJECT, ZONES[0], other)]["scheduling"]["preemptible"]


def test_terminate_waits_for_the_deletions(fake_gce, provider):
    ids = provider.create_nodes(WORKER_TYPE, CONFIG, WORKER, 3)
    provider.terminate_nodes(ids)
    assert not fake_gce.state.instances  # the delete operations finished before returning
    assert provider.non_terminated_nodes() == []


def test_operation_timeout_is_bounded(fake_gce):
    provider = make_provider(gcp_config(fake_gce, "slow", operation_timeout_s=1))
    fake_gce.state.operation_delay_s = 30
    with pytest.raises(ProviderError, match="did not finish within 1 s"):
        provider.create_nodes(WORKER_TYPE, CONFIG, WORKER, 1)
    fake_gce.state.operation_delay_s = 0.01


def test_tags_too_big_for_labels_overflow_to_metadata(fake_gce, provider):
    huge = "Trace: " + "Ω≈ç√ line\n" * 400
    node_config = {"machineType": "e2-small",
                   "metadata": {"items": [{"key": "startup-script", "value": "echo hi"}]}}
    [node_id] = provider.create_nodes(WORKER_TYPE, node_config, {**WORKER, "notes": huge}, 1)
    instance = fake_gce.state.instances[(PROJECT, ZONES[0], node_id)]
    assert len(instance["labels"]) <= 64
    keys = [item["key"] for item in instance["metadata"]["items"]]
    assert keys == ["startup-script", "corral-tags"]
    assert provider.node(node_id).tags["notes"] == huge
    assert [n.id for n in provider.non_terminated_nodes({"notes": huge})] == [node_id]

    fake_gce.state.inject(method="instances.setMetadata", status=412, reason="conditionNotMet")
    provider.set_node_tags(node_id, {T.TAG_FAILURE: huge + "!", "notes": "short now"})
    tags = provider.node(node_id).tags
    assert tags[T.TAG_FAILURE] == huge + "!" and tags["notes"] == "short now"
    assert tags[T.TAG_NODE_TYPE] == WORKER_TYPE

    provider.set_node_tags(node_id, {T.TAG_FAILURE: ""})
    instance = fake_gce.state.instances[(PROJECT, ZONES[0], node_id)]
    assert [item["key"] for item in instance["metadata"]["items"]] == ["startup-script"]
    tags = provider.node(node_id).tags
    assert tags[T.TAG_FAILURE] == "" and tags["notes"] == "short now"


def test_capacity_http_error_is_not_retried_in_place(fake_gce, provider):
    fake_gce.state.inject(method="instances.insert", zone=ZONES[0], status=503,
                          reason="ZONE_RESOURCE_POOL_EXHAUSTED", times=100)
    provider.create_nodes(WORKER_TYPE, CONFIG, WORKER, 1)
    assert fake_gce.state.calls.count(("instances.insert", ZONES[0])) == 1


def test_busy_resource_is_retried(fake_gce, provider):
    [node_id] = provider.create_nodes(WORKER_TYPE, CONFIG, WORKER, 1)
    fake_gce.state.inject(method="instances.delete", status=400, reason="resourceNotReady",
                          times=2, message="The resource is not ready")
    provider.terminate_nodes([node_id])
    assert not fake_gce.state.instances


def test_node_lookup(fake_gce, provider):
    [node_id] = provider.create_nodes(WORKER_TYPE, CONFIG, WORKER, 1)
    other = make_provider(gcp_config(fake_gce, "someone-else"))
    assert provider.node(node_id).id == node_id
    assert other.node(node_id) is None  # not its cluster's
    assert provider.node("corral-demo-worker-00000000") is None


def test_unreachable_api_is_a_provider_error(fake_gce):
    config = gcp_config(fake_gce, "demo")
    provider = make_provider(config.replace(provider=dict(
        config.provider, compute_endpoint="http://127.0.0.1:9/compute/v1/")))
    provider.client.max_attempts = 2
    with pytest.raises(ProviderError, match="cannot reach the API"):
        provider.non_terminated_nodes()


def test_nodes_in_a_zone_no_longer_configured_are_still_found(fake_gce, provider):
    wide = make_provider(gcp_config(fake_gce, "demo", availability_zone="us-central1-f"))
    [stray] = wide.create_nodes(WORKER_TYPE, CONFIG, WORKER, 1)
    assert [node.id for node in provider.non_terminated_nodes()] == [stray]
    fresh = make_provider(gcp_config(fake_gce, "demo"))  # has never seen it
    assert fresh.node(stray).id == stray
    fresh.set_node_tags(stray, {"color": "red"})
    provider.terminate_nodes([stray])
    assert not fake_gce.state.instances
