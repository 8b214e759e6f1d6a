"""The autoscaler's monitor driving the real AWSProvider on moto's EC2: a capacity error
(injected for one instance type in every zone) makes the provider try each zone, then the
monitor backs that type off and falls back to another type, which really launches.

The runtime's load, the clock and the node bootstrap are the autoscaler tests' plain fakes
(tests/autoscaler/fakes.py); the provider, its errors and EC2 are real."""
from __future__ import annotations

import pytest

from autoscaler.events import EventLog, parse_events
from autoscaler.monitor import Monitor, MonitorOptions
from autoscaler.tracker import MonitorState
from launcher import tags as T
from launcher.providers.aws import AWSProvider
from tests.autoscaler.fakes import FakeBootstrap, FakeClock, FakeRuntime, StepExecutor
from tests.aws.configs import aws_config
from tests.aws.moto_server import inject_client_error

pytestmark = pytest.mark.timeout(60)

NODE_TYPES = {
    "head": {"node_config": {"InstanceType": "t3.medium"}, "max_workers": 0},
    "big": {"node_config": {"InstanceType": "m5.4xlarge"}, "max_workers": 10},
    "small": {"node_config": {"InstanceType": "t3.xlarge"}, "max_workers": 10},
}


@pytest.fixture
def aws_monitor(cluster_name, tmp_path):
    document_config = aws_config(cluster_name, node_types=NODE_TYPES)
    config = AWSProvider.bootstrap(document_config.replace(idle_timeout_minutes=1))
    provider = AWSProvider(config)
    clock = FakeClock()
    runtime = FakeRuntime(clock)
    [head] = provider.create_nodes("head", config.available_node_types["head"].node_config,
                                   {T.TAG_NODE_KIND: T.KIND_HEAD, T.TAG_NODE_TYPE: "head",
                                    T.TAG_NODE_STATUS: T.STATUS_UP_TO_DATE}, 1)
    runtime.join(head, "head", config.available_node_types["head"].resources)
    runtime.busy(head)
    executor = StepExecutor()
    monitor = Monitor(config, provider, runtime,
                      events=EventLog(tmp_path / "autoscaler.events"),
                      state=MonitorState(path=tmp_path / "state.json"),
                      bootstrap=FakeBootstrap(runtime, config), clock=clock,
                      options=MonitorOptions(join_timeout_s=60), executor=executor)
    try:
        yield monitor, provider, runtime, clock, executor
    finally:
        AWSProvider.purge(config)


def workers_by_type(provider):
    found: dict[str, int] = {}
    for node in provider.non_terminated_nodes({T.TAG_NODE_KIND: T.KIND_WORKER}):
        found[node.node_type] = found.get(node.node_type, 0) + 1
    return found


def test_capacity_error_backs_off_and_falls_back_to_another_type(aws_monitor, tmp_path):
    monitor, provider, runtime, clock, executor = aws_monitor
    assert monitor.config.available_node_types["big"].resources["CPU"] == 16  # from EC2
    failed = inject_client_error(provider.clients.ec2, "RunInstances",
                                 "InsufficientInstanceCapacity",
                                 when=lambda params: params["InstanceType"] == "m5.4xlarge")
    runtime.pending = [{"shape": {"CPU": 1}, "count": 32}]
    monitor.step()
    executor.run_all()
    assert len(failed) == 2  # the provider tried both zones before giving up
    assert workers_by_type(provider) == {}
    backoff = monitor.state.backoffs["big"]
    assert backoff.until_s > clock.now() and "CapacityError" in backoff.reason

    clock.advance(0.2)
    plan = monitor.step()
    executor.run_all()
    assert set(plan.to_launch) == {"small"}
    assert workers_by_type(provider) == {"small": plan.to_launch["small"]}
    statuses = {node.status for node in provider.non_terminated_nodes(
        {T.TAG_NODE_KIND: T.KIND_WORKER})}
    assert statuses == {T.STATUS_UP_TO_DATE}  # bootstrapped, tags written to EC2
    events = parse_events((tmp_path / "autoscaler.events").read_text().splitlines())
    assert any(event["kind"] == "launch-failed" and "InsufficientInstanceCapacity"
               in event["message"] for event in events)
