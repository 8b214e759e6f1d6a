"""Planning without a cluster: what `corral plan` and `corral simulate` compute."""
from __future__ import annotations

from typing import Mapping

from autoscaler.decisions import Plan
from autoscaler.inputs import TraceEntry
from autoscaler.planner import plan
from autoscaler.policy import policy_from_config
from autoscaler.simulate import Simulation, SimulationResult
from autoscaler.snapshot import NodeRecord, Shape, Snapshot


def head_record(config) -> NodeRecord:
    head_type = config.available_node_types[config.head_node_type]
    return NodeRecord(id="head", node_type=config.head_node_type, kind="head",
                      resources_total=dict(head_type.resources))


def plan_empty_cluster(config, demand: Mapping[Shape, int]) -> Plan:
    """The plan for `demand` on a cluster that has only its head."""
    snapshot = Snapshot(now_s=0.0, nodes=(head_record(config),), demand=demand)
    return plan(snapshot, policy_from_config(config))


def simulate_trace(config, trace: list[TraceEntry], *,
                   launch_delay_s: float = 30.0) -> SimulationResult:
    head_type = config.available_node_types[config.head_node_type]
    return Simulation(policy_from_config(config), config.head_node_type,
                      dict(head_type.resources), trace, launch_delay_s=launch_delay_s).run()
