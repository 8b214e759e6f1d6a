"""One "create what fits" (launcher.providers.base.create_what_fits), used by `corral up`
and the autoscaler alike: a launch refused for room, with the number that fits named,
creates that many."""
from __future__ import annotations

from autoscaler.act import Actuator
from autoscaler.events import EventLog, parse_events
from autoscaler.tracker import MonitorState
from launcher.commands.cluster_up import _create
from launcher.errors import CapacityError, ProviderAuthError
from launcher.providers.base import create_what_fits
from tests.contract.provider_process import WORKER_TYPE, process_config
from tests.fake_provider import FakeProvider


def test_outcomes(tmp_path):
    provider = FakeProvider(process_config("fits"))
    provider.room[WORKER_TYPE] = 2
    partial = create_what_fits(provider, WORKER_TYPE, {}, {}, 5)
    assert isinstance(partial.error, CapacityError) and partial.retried_count == 2
    assert len(partial.ids) == 2 and partial.retry_error is None
    assert [count for _, count, _ in provider.create_calls] == [5, 2]
    none_left = create_what_fits(provider, WORKER_TYPE, {}, {}, 1)
    assert none_left.ids == [] and none_left.retried_count == 0  # free_count 0: no retry
    provider.room.pop(WORKER_TYPE)
    assert len(create_what_fits(provider, WORKER_TYPE, {}, {}, 3).ids) == 3
    provider.fail_types[WORKER_TYPE] = ProviderAuthError("expired")
    refused = create_what_fits(provider, WORKER_TYPE, {}, {}, 3)
    assert refused.ids == [] and isinstance(refused.error, ProviderAuthError)


def test_up_and_the_autoscaler_both_create_what_fits(tmp_path):
    config = process_config("fits")
    provider = FakeProvider(config)
    provider.room[WORKER_TYPE] = 3
    ids, message = _create(config, provider, "worker", WORKER_TYPE, 4)
    assert len(ids) == 3 and message.endswith("(created 3)")
    provider.room[WORKER_TYPE] = 1
    actuator = Actuator(config, provider, MonitorState(), EventLog(tmp_path / "events"),
                        bootstrap=lambda *_: None, launch_hashes={})
    try:
        created = actuator.create(1000.0, WORKER_TYPE, 2)
    finally:
        actuator.close()
    assert len(created) == 1 and len(provider.non_terminated_nodes()) == 4
    [event] = parse_events((tmp_path / "events").read_text().splitlines())
    assert event["kind"] == "launch-failed" and "(created 1)" in event["message"]
