"""The simulator in-process: launch delays, pacing, idle removal and tasks that never run."""
from __future__ import annotations

import pytest

from autoscaler.inputs import TraceEntry
from autoscaler.simulate import Simulation
from autoscaler.snapshot import make_shape
from tests.autoscaler.helpers import CPU4, policy

pytestmark = pytest.mark.timeout(30)


def entry(at_s, resources, count, duration_s):
    return TraceEntry(at_s, make_shape(resources), count, duration_s)


def test_burst_scales_up_then_down_to_min_workers():
    rules = policy({"cpu4": (CPU4, 1, 10)}, max_workers=10, idle_timeout_s=60.0)
    result = Simulation(rules, "head", {}, [entry(0, {"CPU": 1}, 40, 100)],
                        launch_delay_s=20).run()
    assert result.tasks_run == 40
    assert result.launched == {"cpu4": 9}  # 1 min worker + 9 new = 40 CPUs
    assert result.wait_percentile(1.0) == 20.0
    assert result.wait_percentile(0.05) == 0.0  # the min worker started 4 at once
    assert result.timeline[-1].running == {"cpu4": 1}
    # The 9 new nodes lived 20 s launch + 100 s work + 60 s idle; the first worker went
    # idle at 100 s and left at 160 s (the others kept min_workers); one new one stays.
    assert result.end_s == 180.0
    assert result.node_seconds["cpu4"] == pytest.approx(9 * 180 + 160)


def test_upscaling_speed_paces_a_large_burst():
    rules = policy({"cpu4": (CPU4, 0, 100)}, max_workers=100, upscaling_speed=1.0)
    result = Simulation(rules, "head", {}, [entry(0, {"CPU": 4}, 40, 1000)],
                        launch_delay_s=10).run()
    pending_counts = [sum(row.pending.values()) for row in result.timeline]
    assert max(pending_counts) <= 20  # 5, then at most 1 x running
    assert pending_counts[0] == 5
    assert result.tasks_run == 40


def test_infeasible_and_capped_work_is_reported_as_never_ran():
    rules = policy({"cpu4": (CPU4, 0, 1)}, max_workers=1)
    result = Simulation(rules, "head", {}, [entry(0, {"CPU": 8}, 2, 10),
                                            entry(0, {"CPU": 4}, 1, 10)],
                        launch_delay_s=1).run()
    assert result.never_ran == {make_shape({"CPU": 8}): 2}
    assert result.tasks_run == 1
    assert any("no node type can hold {CPU: 8}" in message
               for message in result.reasons_seen)
