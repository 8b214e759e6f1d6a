"""The load report as a type (runtime.protocol.load): its wire form, what an older peer
sends, and `infeasible` judged by the planner's own fit test (runtime.scheduling
fit_count), so the control service and the planner agree on every shape."""
from __future__ import annotations

import dataclasses
import random

import pytest

from autoscaler.observe import demand_of
from autoscaler.planner import plan
from autoscaler.policy import NodeTypePolicy, Policy
from autoscaler.snapshot import Snapshot, make_shape
from runtime import scheduling
from runtime.control.service import ControlService
from runtime.node.keys import create_cluster_keys
from runtime.protocol.load import DemandEntry, LoadReport, NodeLoad, NodeType
from runtime.protocol.version import PROTOCOL_VERSION

pytestmark = pytest.mark.timeout(60)
GIB = 1 << 30

WIRE = {"now_s": 12.5,
        "nodes": [{"node_id": "w1", "node_type": "cpu", "address": "127.0.0.1:9",
                   "alive": True, "draining": False, "resources_total": {"CPU": 2.0},
                   "resources_available": {"CPU": 1.0}, "idle_since_s": None,
                   "idle_for_s": 0.0}],
        "pending_demand": [{"shape": {"CPU": 1.0}, "count": 3}],
        "infeasible": [{"GPU": 8.0}], "request_resources": [{"CPU": 4.0}],
        "node_types": {"cpu": {"CPU": 2.0}}, "node_type_max_workers": {"cpu": 5}}


def test_the_wire_form_round_trips_and_the_records_are_frozen():
    report = LoadReport.from_wire(WIRE)
    assert report.to_wire() == WIRE
    assert report.node("w1") == NodeLoad("w1", "cpu", "127.0.0.1:9", True, False,
                                         {"CPU": 2.0}, {"CPU": 1.0}, None, 0.0)
    assert report.pending_demand == (DemandEntry({"CPU": 1.0}, 3),)
    assert report.node_types == {"cpu": NodeType({"CPU": 2.0}, 5)}
    with pytest.raises(dataclasses.FrozenInstanceError):
        report.now_s = 0.0
    with pytest.raises(TypeError):
        report.node("w1").resources_total["CPU"] = 9.0
    assert LoadReport.of(report) is report


def test_an_older_peers_report_reads_with_defaults():
    older = {key: value for key, value in WIRE.items() if key != "node_type_max_workers"}
    del older["nodes"][0]["draining"]
    report = LoadReport.from_wire(older)
    assert report.node_types["cpu"].max_workers is None
    assert report.nodes[0].draining is False
    assert LoadReport.from_wire({}).nodes == ()


@pytest.fixture
def service(tmp_path):
    made = ControlService("tcp://127.0.0.1:0", create_cluster_keys(tmp_path / "keys"), 30.0)
    yield made
    made.sock.close(0)
    made.ctx.term()


def _call(service: ControlService, method: str, **kwargs):
    service._handle(b"D1", b"rpc", (1, method, kwargs))
    (_, (_, ok, result)), = service.held_replies
    service.held_replies.clear()
    assert ok, result
    return result


def test_infeasible_agrees_with_the_planner_on_every_shape(service):
    """Random node types and demand, with amounts where an absolute tolerance and the
    planner's relative one disagree (bytes of memory): the service's infeasible shapes
    are the planner's."""
    chooser = random.Random(13)
    amounts = {"CPU": [0.5, 1, 2, 3, 4, 8], "GPU": [0, 1, 2, 4],
               "memory": [GIB, 2 * GIB, 2 * GIB + 1, 4 * GIB]}
    for _ in range(30):
        types = {}
        for index in range(chooser.randint(1, 3)):
            resources = {name: chooser.choice(values) for name, values in amounts.items()}
            types[f"t{index}"] = {name: float(v) for name, v in resources.items() if v}
        demand = {}
        for _ in range(chooser.randint(1, 6)):
            shape = {name: float(chooser.choice(values)) for name, values in amounts.items()
                     if chooser.random() < 0.7}
            key = scheduling.shape_key(shape)
            if key:
                demand[key] = demand.get(key, 0) + 1
        _call(service, "set_node_types", node_types=types)
        _call(service, "register_driver", driver_id="d1", protocol_version=PROTOCOL_VERSION)
        _call(service, "driver_heartbeat", driver_id="d1", pending_demand=demand)
        report = service.load_report()
        policy = Policy(node_types={name: NodeTypePolicy(name, resources, max_workers=10)
                                    for name, resources in types.items()}, max_workers=10)
        planned = plan(Snapshot(now_s=0.0, nodes=(), demand=demand_of(report)), policy)
        assert sorted(make_shape(shape) for shape in report.infeasible) == \
            sorted(planned.infeasible), (types, demand)


def test_live_nodes_alone_judge_until_the_types_arrive(service):
    _call(service, "register_node", node_id="w1", node_type="big", address="127.0.0.1:9",
          ipc=None, hostname="h", resources_total={"CPU": 2.0, "memory": 2.0 * GIB},
          protocol_version=PROTOCOL_VERSION)
    _call(service, "register_driver", driver_id="d1", protocol_version=PROTOCOL_VERSION)
    _call(service, "driver_heartbeat", driver_id="d1", pending_demand={
        (("CPU", 2.0),): 1, (("memory", 2.0 * GIB + 1),): 1, (("CPU", 4.0),): 1})
    # 2 GiB + 1 byte fits 2 GiB within the planner's tolerance; 4 CPUs fit no node
    assert [dict(shape) for shape in service.load_report().infeasible] == [{"CPU": 4.0}]
    _call(service, "set_node_types", node_types={"cpu4": {"CPU": 4}}, max_workers={"cpu4": 2})
    assert service.load_report().infeasible == ()
    assert service.load_report().node_types == {"cpu4": NodeType({"CPU": 4.0}, 2)}
