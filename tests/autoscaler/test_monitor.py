"""The monitor stepped by hand: fake clock, fake provider, fake runtime load, bootstraps
run when the test says so. No sleeps."""
from __future__ import annotations

import json

import pytest

from autoscaler.events import EventLog, parse_events
from autoscaler.monitor import Monitor, MonitorOptions
from autoscaler.tracker import MonitorState
from launcher.config.load import normalize
from launcher.errors import CapacityError, ProviderAuthError
from launcher.bootstrap.hashing import launch_hash
from launcher.tags import TAG_LAUNCH_HASH, TAG_NODE_KIND, TAG_NODE_STATUS, TAG_NODE_TYPE
from runtime.errors import RuntimeConnectionError
from tests.autoscaler.fakes import FakeBootstrap, FakeClock, FakeRuntime, StepExecutor
from tests.fake_provider import FakeProvider

pytestmark = pytest.mark.timeout(30)


def make_config(**types):
    node_types = {"head": {"resources": {"CPU": 1}, "min_workers": 0, "max_workers": 0}}
    node_types.update(types or {"cpu2": {"resources": {"CPU": 2}, "min_workers": 0,
                                         "max_workers": 10}})
    return normalize({"cluster_name": "mon", "max_workers": 20, "idle_timeout_minutes": 1,
                      "provider": {"type": "process"}, "available_node_types": node_types,
                      "head_node_type": "head"})


class Harness:
    def __init__(self, tmp_path, config=None, state=None, failing=()):
        self.tmp_path = tmp_path
        self.config = config or make_config()
        self.clock = FakeClock()
        self.provider = FakeProvider(self.config)
        head = self.provider.add_head()
        self.runtime = FakeRuntime(self.clock)
        self.runtime.join(head.id, "head", {"CPU": 1})
        self.runtime.busy(head.id)
        self.bootstrap = FakeBootstrap(self.runtime, self.config, set(failing))
        self.state = state or MonitorState(path=tmp_path / "state.json")
        self.monitor = self.new_monitor()

    def new_monitor(self, state=None):
        self.executor = StepExecutor()
        return Monitor(self.config, self.provider, self.runtime,
                       events=EventLog(self.tmp_path / "autoscaler.events"),
                       state=state or self.state, bootstrap=self.bootstrap,
                       clock=self.clock, options=MonitorOptions(join_timeout_s=60),
                       executor=self.executor)

    def workers(self):
        return [node for node in self.provider.nodes.values() if node.kind == "worker"]

    def events(self):
        return parse_events((self.tmp_path / "autoscaler.events").read_text().splitlines())

    def step(self, bootstraps=True):
        plan = self.monitor.step()
        if bootstraps:
            self.executor.run_all()
        return plan


def test_scale_up_on_demand_tags_and_bootstraps_new_nodes(tmp_path):
    h = Harness(tmp_path)
    h.runtime.pending = [{"shape": {"CPU": 1}, "count": 8}]
    plan = h.step()
    assert dict(plan.to_launch) == {"cpu2": 4}
    workers = h.workers()
    assert len(workers) == 4
    expected_hash = launch_hash(h.config, "cpu2")
    for node in workers:
        assert node.tags[TAG_NODE_KIND] == "worker" and node.tags[TAG_NODE_TYPE] == "cpu2"
        assert node.tags[TAG_LAUNCH_HASH] == expected_hash
    assert sorted(h.bootstrap.calls) == sorted(node.id for node in workers)
    assert all(node.status == "up-to-date" for node in h.workers())
    # The work starts on the new nodes; nothing more is launched.
    h.runtime.pending = []
    for node in workers:
        h.runtime.busy(node.id)
    h.clock.advance(1)
    plan = h.step()
    assert plan.is_empty and len(h.workers()) == 4
    kinds = [event["kind"] for event in h.events()]
    assert "launched" in kinds and "bootstrapped" in kinds
    status = json.loads((tmp_path / "autoscaler.status.json").read_text())
    assert status["demand"] == [] and status["launch"] == {}
    assert sorted(item["id"] for item in status["nodes"]["active"]) == \
        sorted(["head-1"] + [node.id for node in workers])
    assert status["resources_used"] == {"CPU": 9.0} and status["resources_total"] == {"CPU": 9.0}


def test_pending_nodes_are_not_launched_again_while_they_come_up(tmp_path):
    h = Harness(tmp_path)
    h.runtime.pending = [{"shape": {"CPU": 2}, "count": 3}]
    h.step(bootstraps=False)
    for _ in range(5):
        h.clock.advance(0.2)
        h.step(bootstraps=False)
    assert len(h.workers()) == 3
    assert len(h.bootstrap.calls) == 0  # still queued: the executor has not run them


def test_scale_down_after_idle_timeout(tmp_path):
    h = Harness(tmp_path)
    h.runtime.pending = [{"shape": {"CPU": 2}, "count": 2}]
    h.step()
    h.runtime.pending = []
    ids = sorted(node.id for node in h.workers())
    for node_id in ids:
        h.runtime.idle(node_id)
    h.clock.advance(59)
    assert h.step().to_terminate == ()
    h.clock.advance(2)
    plan = h.step()
    assert sorted(node_id for node_id, _ in plan.to_terminate) == ids
    assert h.workers() == [] and sorted(h.provider.terminated) == ids
    messages = [event["message"] for event in h.events() if event["kind"] == "terminated"]
    assert len(messages) == 2 and all("idle for 61 s (idle timeout 60 s)" in message
                                      for message in messages)


def test_capacity_error_backs_off_and_falls_back_to_another_type(tmp_path):
    config = make_config(cpu4={"resources": {"CPU": 4}, "min_workers": 0, "max_workers": 10},
                         cpu16={"resources": {"CPU": 16}, "min_workers": 0,
                                "max_workers": 10})
    h = Harness(tmp_path, config=config)
    h.provider.fail_types["cpu16"] = CapacityError("no cpu16 left in zone-a",
                                                   node_type="cpu16")
    h.runtime.pending = [{"shape": {"CPU": 1}, "count": 32}]
    h.step()
    assert [call[:2] for call in h.provider.create_calls] == [("cpu16", 2)]
    assert h.workers() == []
    backoff = h.state.backoffs["cpu16"]
    assert backoff.until_s == h.clock.now() + 30 and "CapacityError" in backoff.reason
    h.clock.advance(0.2)
    plan = h.step()
    assert dict(plan.to_launch) == {"cpu4": 5}  # paced: at most 5 pending at once
    assert dict(plan.target_launch) == {"cpu4": 8}
    assert any("cpu16 backing off until" in reason.message for reason in plan.reasons)
    events = h.events()
    assert any(event["kind"] == "launch-failed" and "no cpu16 left" in event["message"]
               for event in events)
    assert any(event["kind"] == "backoff" for event in events)
    # After the backoff, a second failure waits twice as long.
    h.clock.advance(31)
    h.runtime.pending = [{"shape": {"CPU": 16}, "count": 1}]
    h.step()
    assert h.state.backoffs["cpu16"].until_s == h.clock.now() + 60


def test_restart_mid_scale_up_launches_nothing_twice_and_adopts_bootstraps(tmp_path):
    h = Harness(tmp_path)
    h.runtime.pending = [{"shape": {"CPU": 2}, "count": 3}]
    h.step(bootstraps=False)  # the monitor dies before any bootstrap ran
    assert len(h.workers()) == 3
    h.monitor = h.new_monitor(state=MonitorState.load(tmp_path / "state.json"))
    h.clock.advance(5)
    plan = h.step()
    assert dict(plan.target_launch) == {}
    assert len(h.provider.create_calls) == 1 and len(h.workers()) == 3
    # The dead monitor's bootstrap commands may still run: wait until the stage stalls.
    assert h.bootstrap.calls == []
    h.clock.advance(29)
    h.step()
    assert h.bootstrap.calls == []
    h.clock.advance(1)
    h.step()
    assert sorted(h.bootstrap.calls) == sorted(node.id for node in h.workers())
    h.clock.advance(60)
    h.step()
    assert len(h.bootstrap.calls) == 3  # adopted once, not again


def test_nodes_started_by_corral_up_are_not_bootstrapped_by_the_monitor(tmp_path):
    h = Harness(tmp_path)
    h.provider.create_nodes("cpu2", {}, {TAG_NODE_KIND: "worker", TAG_NODE_TYPE: "cpu2",
                                         TAG_NODE_STATUS: "setting-up"}, 1)
    h.runtime.pending = [{"shape": {"CPU": 2}, "count": 1}]
    plan = h.step()
    assert dict(plan.target_launch) == {}  # the node coming up counts
    assert h.bootstrap.calls == []


def test_bootstrap_failures_replace_then_quarantine(tmp_path):
    h = Harness(tmp_path, failing={"cpu2"})
    h.runtime.pending = [{"shape": {"CPU": 2}, "count": 1}]
    for _ in range(4):
        h.step()
        h.clock.advance(0.2)
    assert h.state.bootstrap_failures() == {"cpu2": 3}
    assert len(h.provider.terminated) == 3  # each failed node was terminated, and replaced
    plan = h.step()
    assert plan.quarantined == ("cpu2",)
    assert dict(plan.target_launch) == {}
    assert any("cpu2 quarantined after 3 bootstrap failures" in event["message"]
               for event in h.events())
    # A restarted monitor remembers the quarantine; a changed config lifts it.
    assert MonitorState.load(tmp_path / "state.json").bootstrap_failures() == {"cpu2": 3}
    assert MonitorState.load(tmp_path / "state.json", "other").bootstrap_failures() == {}


def test_node_that_never_joins_the_runtime_is_replaced(tmp_path):
    h = Harness(tmp_path)
    h.runtime.pending = [{"shape": {"CPU": 2}, "count": 1}]
    h.step()
    (node,) = h.workers()
    del h.runtime.nodes[node.id]  # up to date, but its runtime never registered
    h.clock.advance(1)
    assert h.step().to_terminate == ()  # first seen up to date, not joined: wait
    h.clock.advance(59)
    assert h.step().to_terminate == ()
    h.clock.advance(1)
    plan = h.step()
    assert [node_id for node_id, _ in plan.to_terminate] == [node.id]
    assert "did not join the runtime within 60 s" in plan.to_terminate[0][1]


def test_errors_become_events_and_the_loop_goes_on(tmp_path):
    h = Harness(tmp_path)
    h.runtime.error = RuntimeConnectionError("127.0.0.1:1", "connection refused")
    assert h.step() is None and h.step() is None
    h.runtime.error = None
    h.provider.list_error = ProviderAuthError("credentials expired")
    assert h.step() is None
    h.provider.list_error = None
    h.runtime.pending = [{"shape": {"CPU": 2}, "count": 1}]
    assert dict(h.step().to_launch) == {"cpu2": 1}
    problems = [event["message"] for event in h.events() if event["kind"] == "observe-failed"]
    assert len(problems) == 2  # one event per distinct problem, not one per poll
    assert "connection refused" in problems[0] and "credentials expired" in problems[1]


def test_run_loop_survives_a_failing_step_and_stops_when_told(tmp_path):
    import threading
    h = Harness(tmp_path)
    stop = threading.Event()
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("a bug")
        if len(calls) == 3:
            stop.set()
        return {"now_s": 0, "nodes": [], "pending_demand": [], "request_resources": []}
    h.runtime.get_load = flaky
    h.monitor.run(stop)
    assert len(calls) == 3
    assert any("monitor step failed: RuntimeError: a bug" in event["message"]
               for event in h.events())


def test_no_action_while_the_head_is_gone(tmp_path):
    h = Harness(tmp_path)
    h.monitor.head_node_id = "head-1"
    h.runtime.pending = [{"shape": {"CPU": 2}, "count": 1}]
    del h.provider.nodes["head-1"]  # `corral down` took the head first
    assert h.step() is None and h.workers() == []
    assert any("head node head-1 is not among the cluster's nodes" in event["message"]
               for event in h.events())


def test_idle_nodes_are_terminated_only_once_the_runtime_confirms_them_drained(tmp_path):
    h = Harness(tmp_path)
    h.runtime.can_drain = True
    h.runtime.pending = [{"shape": {"CPU": 2}, "count": 2}]
    h.step()
    h.runtime.pending = []
    first, second = sorted(node.id for node in h.workers())
    h.runtime.idle(first)
    h.runtime.idle(second)
    h.clock.advance(61)

    def late_work(node_ids):  # work landed on `second` after the load was read
        h.runtime.busy(second)
        return FakeRuntime.drain(h.runtime, node_ids)
    h.runtime.drain = late_work
    h.step()
    assert h.provider.terminated == [first]
    assert [node.id for node in h.workers()] == [second]
    assert any(event["kind"] == "drain-refused" and second in event["message"]
               for event in h.events())
