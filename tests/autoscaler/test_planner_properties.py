"""Property tests of the planner (hypothesis): limits hold for any cluster and demand."""
from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from autoscaler.planner import plan
from autoscaler.policy import NodeTypePolicy, Policy
from autoscaler.snapshot import LaunchBackoff, NodeRecord, Snapshot, make_shape

pytestmark = pytest.mark.timeout(120)
SETTINGS = settings(max_examples=150, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])

TYPE_RESOURCES = {
    "cpu2": {"CPU": 2, "memory": 4},
    "cpu8": {"CPU": 8, "memory": 16},
    "mem8": {"CPU": 8, "memory": 64},
    "gpu1": {"CPU": 4, "GPU": 1, "memory": 16},
    "gpu4": {"CPU": 16, "GPU": 4, "memory": 64},
}
STATUSES = ["pending", "launching", "bootstrapping", "running", "running", "running", "failed"]
cpu_shapes = st.builds(lambda cpu, memory: make_shape({"CPU": cpu, "memory": memory}),
                       st.sampled_from([0.5, 1, 2, 3, 8]), st.sampled_from([0, 1, 4, 16]))
gpu_shapes = st.builds(lambda gpu, cpu: make_shape({"GPU": gpu, "CPU": cpu}),
                       st.sampled_from([1, 2, 4]), st.sampled_from([0, 1, 4]))
any_shape = st.one_of(cpu_shapes, gpu_shapes,
                      st.just(make_shape({"CPU": 1000})), st.just(make_shape({"TPU": 1})))


@st.composite
def policies(draw, types=None):
    names = types or draw(st.lists(st.sampled_from(sorted(TYPE_RESOURCES)), min_size=1,
                                   max_size=5, unique=True))
    specs = {}
    for name in sorted(names):
        low = draw(st.integers(0, 3))
        high = draw(st.integers(low, 12))
        specs[name] = NodeTypePolicy(name, TYPE_RESOURCES[name], min_workers=low,
                                     max_workers=high,
                                     launch_hash=draw(st.sampled_from([None, "h1"])))
    return Policy(node_types=specs, max_workers=draw(st.integers(0, 40)),
                  upscaling_speed=draw(st.sampled_from([0.0, 0.5, 1.0, 10.0])),
                  idle_timeout_s=draw(st.sampled_from([0.0, 60.0, 300.0])))


@st.composite
def snapshots(draw, policy, with_failures=True):
    nodes = []
    names = sorted(policy.node_types) + ["retired"]
    for index in range(draw(st.integers(0, 12))):
        name = draw(st.sampled_from(names))
        resources = TYPE_RESOURCES.get(name, {"CPU": 2})
        status = draw(st.sampled_from(STATUSES if with_failures else STATUSES[:-1]))
        used = {key: draw(st.sampled_from([0, value / 2, value]))
                for key, value in resources.items()} if status == "running" else {}
        idle = draw(st.sampled_from([None, 0.0, 900.0])) if status == "running" else None
        nodes.append(NodeRecord(
            id=f"n{index:02d}", node_type=name, status=status,
            resources_total=resources if status == "running" else {},
            resources_used=used, idle_since_s=idle,
            launch_hash=draw(st.sampled_from([None, "h1", "h0"]))))
    demand = draw(st.dictionaries(any_shape, st.integers(1, 200), max_size=6))
    bundles = draw(st.dictionaries(cpu_shapes, st.integers(1, 5), max_size=2))
    backoffs = [LaunchBackoff(name, 1000.0 + draw(st.sampled_from([-10, 30])), "CapacityError")
                for name in draw(st.lists(st.sampled_from(names), max_size=2))]
    failures = {name: draw(st.integers(0, 4)) for name in
                draw(st.lists(st.sampled_from(names), max_size=2))} if with_failures else {}
    return Snapshot(now_s=1000.0, nodes=tuple(nodes), demand=demand,
                    requested_bundles=bundles, backoffs=tuple(backoffs),
                    bootstrap_failures=failures)


@st.composite
def cases(draw):
    policy = draw(policies())
    return policy, draw(snapshots(policy))


def live_workers(snapshot, result, node_type=None):
    gone = {node_id for node_id, _ in result.to_terminate}
    return [node for node in snapshot.nodes
            if not node.is_head and node.id not in gone and node.status != "failed"
            and (node_type is None or node.node_type == node_type)]


@SETTINGS
@given(cases())
def test_never_above_any_max(case):
    policy, snapshot = case
    result = plan(snapshot, policy)
    workers = live_workers(snapshot, result)  # terminations go out before launches
    total_launch = sum(result.target_launch.values())
    assert total_launch <= max(0, policy.max_workers - len(workers)) or total_launch == 0
    for name, count in result.target_launch.items():
        existing = sum(1 for node in workers if node.node_type == name)
        assert existing + count <= policy.node_types[name].max_workers
    for name, count in result.to_launch.items():
        assert count <= result.target_launch[name]


@SETTINGS
@given(cases())
def test_terminations_never_take_a_type_below_min_workers(case):
    policy, snapshot = case
    result = plan(snapshot, policy)
    for name, spec in policy.node_types.items():
        healthy = [node for node in snapshot.nodes if node.node_type == name
                   and not node.is_head and node.status != "failed"
                   and not (spec.launch_hash and node.launch_hash
                            and node.launch_hash != spec.launch_hash)]
        kept = [node for node in live_workers(snapshot, result, name) if node in healthy]
        assert len(kept) >= min(spec.min_workers, len(healthy))


@SETTINGS
@given(policies(), st.data())
def test_min_workers_reached_when_the_maxima_allow(policy, data):
    policy = Policy(node_types=policy.node_types, max_workers=1000,
                    upscaling_speed=policy.upscaling_speed,
                    idle_timeout_s=policy.idle_timeout_s)
    snapshot = data.draw(snapshots(policy, with_failures=False))
    snapshot = Snapshot(now_s=snapshot.now_s, nodes=snapshot.nodes, demand=snapshot.demand,
                        requested_bundles=snapshot.requested_bundles)
    result = plan(snapshot, policy)
    for name, spec in policy.node_types.items():
        current = [node for node in live_workers(snapshot, result, name)
                   if not (spec.launch_hash and node.launch_hash
                           and node.launch_hash != spec.launch_hash)]
        all_of_type = [node for node in live_workers(snapshot, result, name)]
        room = spec.max_workers - len(all_of_type)
        launched = result.target_launch.get(name, 0)
        assert len(current) + launched >= min(spec.min_workers, len(current) + max(0, room))


@SETTINGS
@given(cases())
def test_deterministic_and_independent_of_input_order(case):
    policy, snapshot = case
    first = plan(snapshot, policy)
    assert plan(snapshot, policy) == first
    shuffled = list(snapshot.nodes)
    random.Random(1).shuffle(shuffled)
    reordered = Snapshot(now_s=snapshot.now_s, nodes=tuple(shuffled),
                         demand=dict(reversed(list(snapshot.demand.items()))),
                         requested_bundles=snapshot.requested_bundles,
                         backoffs=snapshot.backoffs,
                         bootstrap_failures=snapshot.bootstrap_failures)
    assert plan(reordered, policy) == first


@SETTINGS
@given(st.lists(st.tuples(st.sampled_from(sorted(TYPE_RESOURCES)), st.integers(0, 3)),
                min_size=1, max_size=8), cpu_shapes, st.integers(0, 3), st.data())
def test_nothing_launched_when_existing_capacity_fits(nodes, shape, headroom, data):
    """One shape, any count that the nodes' free capacity holds: no launch."""
    records, fits = [], 0
    for index, (name, used_cpu) in enumerate(nodes):
        resources = TYPE_RESOURCES[name]
        used = {"CPU": min(used_cpu, resources["CPU"])}
        records.append(NodeRecord(id=f"n{index}", node_type=name, resources_total=resources,
                                  resources_used=used))
        free = {key: value - used.get(key, 0) for key, value in resources.items()}
        fits += min(int(free.get(key, 0) // amount) for key, amount in shape)
    count = data.draw(st.integers(0, fits))
    policy = Policy(node_types={name: NodeTypePolicy(name, resources, max_workers=10)
                                for name, resources in TYPE_RESOURCES.items()},
                    max_workers=50)
    result = plan(Snapshot(now_s=0.0, nodes=tuple(records), demand={shape: count}), policy)
    assert dict(result.target_launch) == {}
    assert result.unplaced == ()


@SETTINGS
@given(cases())
def test_infeasible_demand_reported_and_never_launched_for(case):
    policy, snapshot = case
    result = plan(snapshot, policy)
    capacities = [dict(spec.resources) for spec in policy.node_types.values()]
    capacities += [dict(node.resources_total) for node in snapshot.nodes]

    def fits_somewhere(shape):
        return any(all(capacity.get(name, 0) >= amount for name, amount in shape)
                   for capacity in capacities)
    for shape in list(snapshot.demand) + list(snapshot.requested_bundles):
        assert (shape in result.infeasible) == (not fits_somewhere(shape))
    placed_or_waiting = {item.shape for item in result.unplaced}
    assert set(result.infeasible) <= placed_or_waiting


@SETTINGS
@given(st.dictionaries(cpu_shapes, st.integers(1, 500), min_size=1, max_size=5))
def test_cpu_only_work_never_launches_gpu_nodes(demand):
    policy = Policy(node_types={name: NodeTypePolicy(name, TYPE_RESOURCES[name],
                                                     max_workers=1000)
                                for name in ("cpu8", "mem8", "gpu1", "gpu4")},
                    max_workers=5000)
    result = plan(Snapshot(now_s=0.0, demand=demand), policy)
    assert not {"gpu1", "gpu4"} & set(result.target_launch)
    assert result.unplaced == ()


@SETTINGS
@given(cases())
def test_blocked_types_are_not_launched(case):
    policy, snapshot = case
    result = plan(snapshot, policy)
    for name in policy.node_types:
        if snapshot.active_backoff(name) is not None:
            assert name not in result.target_launch
        if snapshot.bootstrap_failures.get(name, 0) >= policy.max_bootstrap_failures:
            assert name not in result.target_launch
            assert name in result.quarantined
