"""Provider errors get every field from their constructor (no caller sets one after), and
a launch that fails part-way names every node it created."""
from __future__ import annotations

import pytest

from launcher.errors import CapacityError, ProviderAuthError, ProviderError, QuotaError
from launcher.providers import cloud_common


def test_fields_come_from_the_constructor():
    error = CapacityError("only 1 of 3 hosts free", node_type="w", free_count=1,
                          requested_count=3, unreachable_ips=("10.0.0.9",))
    assert (error.free_count, error.requested_count, error.unreachable_ips) == \
        (1, 3, ["10.0.0.9"])
    assert error.retryable and error.try_elsewhere and error.created_ids == []
    assert not CapacityError("type not offered here", retryable=False).retryable
    assert ProviderError("connection reset", retryable=True).retryable
    assert not ProviderError("bad request").retryable  # the class's default
    assert QuotaError("vCPU limit", created_ids=["i-1"], failures=[("a", "x")]).failures \
        == [("a", "x")]


def test_a_hard_error_after_some_zones_names_every_node_created():
    """Zone a is full, zone b creates 2 of 5, zone c creates 1 and then fails hard (not
    worth trying elsewhere): the error names all 3 created nodes."""
    def launch(zone, count):
        if zone == "a":
            raise CapacityError("a is full", created_ids=[])  # nothing here
        if zone == "b":
            return ["n1", "n2"]
        raise ProviderAuthError("credentials expired", created_ids=["n3"])
    with pytest.raises(ProviderAuthError) as caught:
        cloud_common.launch_across_places(["a", "b", "c"], 5, launch, node_type="cpu")
    assert caught.value.created_ids == ["n1", "n2", "n3"]
    assert caught.value.add_created_ids(["n0", "n1"]) is caught.value
    assert caught.value.created_ids == ["n0", "n1", "n2", "n3"]
