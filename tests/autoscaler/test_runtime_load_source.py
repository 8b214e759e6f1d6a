"""The monitor's RuntimeLoadSource against a real ControlService (bound to loopback with
real keys, serving in a thread): load reports come as LoadReport records, the monitor's
node types are pushed whenever a report shows others (its start, a control service
started afresh), and an older service's answers (no drain_nodes, no max_workers) are
told apart by UnknownMethodError and RemoteCallError, not by their text."""
from __future__ import annotations

import threading

import pytest

from autoscaler.observe import RuntimeLoadSource, node_types_of
from autoscaler.policy import NodeTypePolicy, Policy
from runtime.control.client import ControlClient
from runtime.control.service import ControlService
from runtime.node.keys import create_cluster_keys
from runtime.protocol.load import LoadReport, NodeType
from runtime.protocol.version import PROTOCOL_VERSION

pytestmark = pytest.mark.timeout(60)
POLICY = Policy(node_types={
    "cpu4": NodeTypePolicy("cpu4", {"CPU": 4}, max_workers=3),
    "gpu": NodeTypePolicy("gpu", {"CPU": 8, "GPU": 2}, max_workers=1)}, max_workers=4)


class WithoutDrain(ControlService):
    """A control service from before drain_nodes."""
    rpc_drain_nodes = None


class WithoutMaxWorkers(ControlService):
    """A control service whose set_node_types takes the resources alone."""
    calls = 0

    def rpc_set_node_types(self, identity, node_types):
        WithoutMaxWorkers.calls += 1
        return super().rpc_set_node_types(identity, node_types)


@pytest.fixture
def serve(tmp_path):
    keys = create_cluster_keys(tmp_path / "keys")
    running = []

    def start(kind=ControlService) -> tuple[ControlService, str]:
        service = kind("tcp://127.0.0.1:0", keys, 30.0)
        thread = threading.Thread(target=service.serve_forever, daemon=True)
        thread.start()
        running.append((service, thread))
        return service, f"127.0.0.1:{service.port}"
    yield start, str(tmp_path / "keys")
    for service, thread in running:
        service.running = False
        thread.join(10)


def test_reports_are_records_and_the_node_types_are_pushed_and_kept(serve):
    start, keys_dir = serve
    service, address = start()
    source = RuntimeLoadSource(address, keys_dir, node_types=node_types_of(POLICY))
    try:
        report = source.get_load()
        assert isinstance(report, LoadReport)
        assert dict(report.node_types) == {"cpu4": NodeType({"CPU": 4.0}, 3),
                                           "gpu": NodeType({"CPU": 8.0, "GPU": 2.0}, 1)}
        assert service.node_types == {"cpu4": {"CPU": 4.0}, "gpu": {"CPU": 8.0, "GPU": 2.0}}
        # someone (a control service started afresh) has other types: pushed again
        with ControlClient(address, keys_dir) as other:
            other.call("set_node_types", node_types={})
            assert LoadReport.from_wire(other.call("get_load")).node_types == {}
        assert set(source.get_load().node_types) == {"cpu4", "gpu"}
    finally:
        source.close()


def test_a_service_without_max_workers_is_told_the_types_alone_once(serve):
    start, keys_dir = serve
    WithoutMaxWorkers.calls = 0
    service, address = start(WithoutMaxWorkers)
    source = RuntimeLoadSource(address, keys_dir, node_types=node_types_of(POLICY))
    try:
        for _ in range(3):
            report = source.get_load()
        assert {name: dict(kind.resources) for name, kind in report.node_types.items()} \
            == {"cpu4": {"CPU": 4.0}, "gpu": {"CPU": 8.0, "GPU": 2.0}}
        assert WithoutMaxWorkers.calls == 1      # not every poll
    finally:
        source.close()


def test_drain_tells_a_service_without_it_by_its_typed_error(serve):
    start, keys_dir = serve
    _, old_address = start(WithoutDrain)
    _, address = start()
    old = RuntimeLoadSource(old_address, keys_dir)
    current = RuntimeLoadSource(address, keys_dir)
    try:
        assert old.drain(["w1"]) is None          # cannot drain: the monitor goes on
        assert old._can_drain is False
        assert current.drain(["w1"]) == []        # can: nothing drained and idle yet
        assert current._can_drain is True
    finally:
        old.close()
        current.close()


def test_infeasible_is_judged_with_the_pushed_types(serve):
    start, keys_dir = serve
    service, address = start()
    source = RuntimeLoadSource(address, keys_dir, node_types=node_types_of(POLICY))
    try:
        with ControlClient(address, keys_dir) as driver:
            driver.call("register_driver", driver_id="d1",
                        protocol_version=PROTOCOL_VERSION)
            driver.call("driver_heartbeat", driver_id="d1", pending_demand={
                (("CPU", 1.0), ("GPU", 2.0)): 1, (("GPU", 4.0),): 2})
            before = LoadReport.from_wire(driver.call("get_load"))
            assert {tuple(sorted(shape.items())) for shape in before.infeasible} == {
                (("CPU", 1.0), ("GPU", 2.0)), (("GPU", 4.0),)}   # no nodes, no types yet
            after = source.get_load()
            assert [dict(shape) for shape in after.infeasible] == [{"GPU": 4.0}]
    finally:
        source.close()
