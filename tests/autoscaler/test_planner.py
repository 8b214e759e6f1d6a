"""Table-driven planner tests: each case is a cluster, a demand, and the plan expected."""
from __future__ import annotations

import dataclasses

import pytest

from autoscaler import decisions as d
from autoscaler.planner import plan
from autoscaler.snapshot import LaunchBackoff
from tests.autoscaler.helpers import CPU4, CPU16, GPU4, demand, node, policy, snapshot

pytestmark = pytest.mark.timeout(30)

TWO_TYPES = {"cpu4": (CPU4, 0, 10), "cpu16": (CPU16, 0, 10)}
WITH_GPU = {"cpu4": (CPU4, 0, 10), "gpu4": (GPU4, 0, 10)}


@dataclasses.dataclass
class Case:
    name: str
    types: dict
    snap: object
    launch: dict
    terminate: tuple = ()
    unplaced: int = 0
    says: tuple = ()  # (kind, substring) pairs that must appear among the reasons
    max_workers: int = 100
    upscaling_speed: float = 100.0
    paced: bool = False  # compare to_launch (after upscaling_speed), else target_launch


CASES = [
    Case("empty cluster, no demand: nothing to do", TWO_TYPES, snapshot(), {}),
    Case("one small task: smallest node that holds it", TWO_TYPES,
         snapshot(pending=[({"CPU": 1}, 1)]), {"cpu4": 1}, says=[(d.LAUNCH, "cpu4")]),
    Case("many tasks: fewest nodes (the big type)", TWO_TYPES,
         snapshot(pending=[({"CPU": 1}, 32)]), {"cpu16": 2}),
    Case("17 tasks: 2 nodes, the second the one wasting least", TWO_TYPES,
         snapshot(pending=[({"CPU": 1}, 17)]), {"cpu16": 2}),
    Case("existing free capacity is used first", TWO_TYPES,
         snapshot(nodes=[node("a", "cpu16", CPU16, used={"CPU": 8})],
                  pending=[({"CPU": 1}, 8)]), {}),
    Case("pending nodes count as capacity", TWO_TYPES,
         snapshot(nodes=[node("a", "cpu16", {}, status="launching")],
                  pending=[({"CPU": 2}, 8)]), {}),
    Case("only the overflow gets new nodes", TWO_TYPES,
         snapshot(nodes=[node("a", "cpu4", CPU4)], pending=[({"CPU": 1}, 6)]), {"cpu4": 1}),
    Case("the head's free capacity counts", TWO_TYPES,
         snapshot(nodes=[node("h", "head", {"CPU": 2}, kind="head")],
                  pending=[({"CPU": 1}, 2)]), {}),
    Case("infeasible shape reported, nothing launched for it", TWO_TYPES,
         snapshot(pending=[({"CPU": 64}, 3)]), {}, unplaced=3,
         says=[(d.INFEASIBLE, "no node type can hold {CPU: 64}")]),
    Case("unknown resource is infeasible", TWO_TYPES,
         snapshot(pending=[({"TPU": 1}, 1)]), {}, unplaced=1, says=[(d.INFEASIBLE, "TPU")]),
    Case("per-type max caps and says so", {"cpu4": (CPU4, 0, 2)},
         snapshot(pending=[({"CPU": 4}, 5)]), {"cpu4": 2}, unplaced=3,
         says=[(d.CAP, "cpu4 at its max_workers 2"), (d.UNPLACED, "max_workers 2")]),
    Case("global max caps across types", TWO_TYPES,
         snapshot(pending=[({"CPU": 16}, 5)]), {"cpu16": 3}, unplaced=2, max_workers=3,
         says=[(d.CAP, "cluster at max_workers 3")]),
    Case("existing workers count against max", {"cpu4": (CPU4, 0, 2)},
         snapshot(nodes=[node("a", "cpu4", CPU4, used=CPU4)], pending=[({"CPU": 4}, 3)]),
         {"cpu4": 1}, unplaced=2),
    Case("min_workers launched with no demand", {"cpu4": (CPU4, 2, 5)}, snapshot(),
         {"cpu4": 2}, says=[(d.LAUNCH, "min_workers 2")]),
    Case("min_workers nodes absorb demand", {"cpu4": (CPU4, 2, 5)},
         snapshot(pending=[({"CPU": 1}, 8)]), {"cpu4": 2}),
    Case("CPU work never launches GPU nodes when a CPU type exists", WITH_GPU,
         snapshot(pending=[({"CPU": 4}, 4)]), {"cpu4": 4},
         says=[(d.SKIP, "not launching gpu4")]),
    Case("CPU work waits rather than launch GPU nodes when CPU type is full",
         {"cpu4": (CPU4, 0, 1), "gpu4": (GPU4, 0, 10)},
         snapshot(pending=[({"CPU": 4}, 3)]), {"cpu4": 1}, unplaced=2),
    Case("CPU work too big for CPU types may use GPU types", WITH_GPU,
         snapshot(pending=[({"CPU": 16}, 1)]), {"gpu4": 1}),
    Case("GPU work first; CPU work fills what the GPU nodes leave", WITH_GPU,
         snapshot(pending=[({"CPU": 1}, 8), ({"GPU": 1, "CPU": 2}, 8)]), {"gpu4": 2}),
    Case("GPU work is not starved by CPU work on existing GPU nodes", WITH_GPU,
         snapshot(nodes=[node("g", "gpu4", GPU4)],
                  pending=[({"CPU": 1}, 16), ({"GPU": 1, "CPU": 4}, 4)]), {"cpu4": 4}),
    Case("request_resources bundles launch nodes", TWO_TYPES,
         snapshot(bundles=[({"CPU": 16}, 2)]), {"cpu16": 2}),
    Case("request_resources counts total, not free, capacity", TWO_TYPES,
         snapshot(nodes=[node("a", "cpu16", CPU16, used=CPU16)],
                  bundles=[({"CPU": 16}, 1)]), {}),
    Case("demand runs on nodes launched for bundles", TWO_TYPES,
         snapshot(bundles=[({"CPU": 16}, 1)], pending=[({"CPU": 1}, 16)]), {"cpu16": 1}),
    Case("backoff: falls back to another type that fits", TWO_TYPES,
         snapshot(pending=[({"CPU": 16}, 2)],
                  backoffs=[LaunchBackoff("cpu16", 1060.0, "CapacityError: none left")]),
         {}, unplaced=2, says=[(d.BACKOFF, "cpu16 backing off until 00:17:40 UTC (60 s more) after "
                             "CapacityError: none left")]),
    Case("backoff: smaller shapes fall back to the other type", TWO_TYPES,
         snapshot(pending=[({"CPU": 1}, 32)],
                  backoffs=[LaunchBackoff("cpu16", 1060.0, "CapacityError")]),
         {"cpu4": 8}),
    Case("expired backoff no longer blocks", TWO_TYPES,
         snapshot(pending=[({"CPU": 16}, 1)],
                  backoffs=[LaunchBackoff("cpu16", 999.0, "CapacityError")]),
         {"cpu16": 1}),
    Case("failed node is terminated and replaced", {"cpu4": (CPU4, 1, 5)},
         snapshot(nodes=[node("a", "cpu4", CPU4, status="failed", failure="setting-up: exit 1")],
                  bootstrap_failures={"cpu4": 1}),
         {"cpu4": 1}, terminate=("a",), says=[(d.TERMINATE, "setting-up: exit 1")]),
    Case("quarantined after repeated bootstrap failures", {"cpu4": (CPU4, 1, 5)},
         snapshot(nodes=[node("a", "cpu4", CPU4, status="failed")],
                  pending=[({"CPU": 1}, 1)], bootstrap_failures={"cpu4": 3}),
         {}, terminate=("a",), unplaced=1,
         says=[(d.QUARANTINE, "cpu4 quarantined after 3 bootstrap failures"),
               (d.SKIP, "min_workers 1 of cpu4")]),
    Case("idle worker past its timeout is removed", TWO_TYPES,
         snapshot(nodes=[node("a", "cpu4", CPU4, idle_since_s=600.0)]), {}, terminate=("a",),
         says=[(d.TERMINATE, "idle for 400 s (idle timeout 300 s)")]),
    Case("idle worker within its timeout stays", TWO_TYPES,
         snapshot(nodes=[node("a", "cpu4", CPU4, idle_since_s=900.0)]), {}),
    Case("per-type idle timeout overrides (5 s here)", {"cpu4": (CPU4, 0, 5)},
         snapshot(nodes=[node("a", "cpu4", CPU4, idle_since_s=990.0)]), {}, terminate=("a",),
         says=[(d.TERMINATE, "idle timeout 5 s")]),
    Case("idle removal keeps min_workers", {"cpu4": (CPU4, 1, 5)},
         snapshot(nodes=[node("a", "cpu4", CPU4, idle_since_s=0.0),
                         node("b", "cpu4", CPU4, idle_since_s=100.0)]),
         {}, terminate=("a",), says=[(d.KEEP, "kept b: min_workers 1")]),
    Case("idle node kept when pending demand needs it", TWO_TYPES,
         snapshot(nodes=[node("a", "cpu4", CPU4, idle_since_s=0.0)],
                  pending=[({"CPU": 2}, 1)]), {}, says=[(d.KEEP, "pending demand needs it")]),
    Case("idle node kept for request_resources", TWO_TYPES,
         snapshot(nodes=[node("a", "cpu4", CPU4, idle_since_s=0.0)],
                  bundles=[({"CPU": 4}, 1)]), {},
         says=[(d.KEEP, "request_resources needs it")]),
    Case("the head is never removed", TWO_TYPES,
         snapshot(nodes=[node("h", "head", CPU4, kind="head", idle_since_s=0.0)]), {}),
    Case("outdated idle node replaced", {"cpu4": (CPU4, 1, 5)},
         snapshot(nodes=[node("a", "cpu4", CPU4, idle_since_s=990.0, launch_hash="old")]),
         {"cpu4": 1}, terminate=("a",), says=[(d.TERMINATE, "changed (old -> new)")]),
    Case("outdated busy node kept until idle, replacement launched", {"cpu4": (CPU4, 1, 5)},
         snapshot(nodes=[node("a", "cpu4", CPU4, used=CPU4, launch_hash="old")]),
         {"cpu4": 1}, says=[(d.KEEP, "replaced once idle")]),
    Case("node of a removed type goes", TWO_TYPES,
         snapshot(nodes=[node("a", "gone", CPU4, idle_since_s=999.0)]), {}, terminate=("a",),
         says=[(d.TERMINATE, "no longer in the config")]),
    Case("upscaling_speed paces launches", {"cpu4": (CPU4, 0, 100)},
         snapshot(nodes=[node(f"n{i}", "cpu4", CPU4, used=CPU4) for i in range(10)],
                  pending=[({"CPU": 4}, 30)]),
         {"cpu4": 10}, upscaling_speed=1.0, paced=True,
         says=[(d.CAP, "20 x cpu4 deferred: upscaling_speed 1 allows 10")]),
    Case("at least 5 pending at once, minus those already pending", {"cpu4": (CPU4, 0, 100)},
         snapshot(nodes=[node("p", "cpu4", CPU4, status="pending")],
                  pending=[({"CPU": 4}, 30)]),
         {"cpu4": 4}, upscaling_speed=0.0, paced=True),
]


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_plan_table(case):
    types = dict(case.types)
    if case.name.startswith("per-type idle timeout"):
        from autoscaler.policy import NodeTypePolicy
        types = {"cpu4": NodeTypePolicy("cpu4", CPU4, max_workers=5, idle_timeout_s=5.0)}
    if case.name.startswith("outdated"):
        from autoscaler.policy import NodeTypePolicy
        types = {"cpu4": NodeTypePolicy("cpu4", CPU4, min_workers=1, max_workers=5,
                                        launch_hash="new")}
    result = plan(case.snap, policy(types, max_workers=case.max_workers,
                                    upscaling_speed=case.upscaling_speed))
    launched = result.to_launch if case.paced else result.target_launch
    assert dict(launched) == case.launch, result.reasons
    assert tuple(node_id for node_id, _ in result.to_terminate) == tuple(case.terminate)
    assert sum(item.count for item in result.unplaced) == case.unplaced, result.unplaced
    for kind, text in case.says:
        messages = [reason.message for reason in result.reasons_of(kind)]
        assert any(text in message for message in messages), (kind, text, result.reasons)


def test_every_launch_and_termination_has_a_reason():
    snap = snapshot(nodes=[node("a", "cpu4", CPU4, idle_since_s=0.0)],
                    pending=[({"CPU": 16}, 2), ({"GPU": 1}, 1)])
    result = plan(snap, policy(WITH_GPU))
    launched = {}
    for reason in result.reasons_of(d.LAUNCH):
        launched[reason.node_type] = launched.get(reason.node_type, 0) + reason.count
    assert launched == dict(result.target_launch)
    terminated = {reason.node_id for reason in result.reasons_of(d.TERMINATE)}
    assert terminated == {node_id for node_id, _ in result.to_terminate}


def test_plan_serialises_to_plain_data():
    import json
    result = plan(snapshot(pending=[({"CPU": 1}, 3), ({"CPU": 99}, 1)]), policy(TWO_TYPES))
    data = json.loads(json.dumps(result.to_dict()))
    assert data["launch"] == {"cpu4": 1}
    assert data["unplaced"] == [{"shape": {"CPU": 99}, "count": 1,
                                 "reason": "no node type can hold {CPU: 99}"}]
    assert data["infeasible"] == [{"CPU": 99}]


def test_a_million_identical_tasks_cost_one_shape():
    result = plan(snapshot(pending=[({"CPU": 1}, 1_000_000)]),
                  policy({"cpu16": (CPU16, 0, 1_000_000)}, max_workers=1_000_000))
    assert dict(result.target_launch) == {"cpu16": 62_500}
    assert len(result.reasons_of(d.LAUNCH)) == 1


def test_demand_input_order_does_not_change_the_plan():
    first = snapshot(pending=[({"CPU": 1}, 5), ({"CPU": 3}, 4), ({"GPU": 1}, 2)])
    second = snapshot(pending=[({"GPU": 1}, 2), ({"CPU": 3}, 4), ({"CPU": 1}, 5)])
    assert plan(first, policy(WITH_GPU)) == plan(second, policy(WITH_GPU))


def test_demand_helper_rejects_bad_amounts():
    with pytest.raises(ValueError):
        demand(({"CPU": -1}, 1))
    with pytest.raises(ValueError):
        demand(({"CPU": "two"}, 1))
