"""The node state table (launcher.node_states): every stage change the bootstrap, `up` and
the monitor really make is one the table allows, a change it does not allow is refused
where it would be applied, and its mapping to the planner's status is the monitor's."""
from __future__ import annotations

import itertools

import pytest

from autoscaler import observe
from autoscaler.events import EventLog
from autoscaler.monitor import Monitor, MonitorOptions
from autoscaler.tracker import MonitorState
from launcher import node_states as S
from launcher.bootstrap import stages
from launcher.bootstrap.stages import ClusterContext, NodeBootstrap, bootstrap_node
from launcher.bootstrap.tag_writer import TagWriter
from launcher.config.load import normalize
from launcher.providers.base import STATE_DAMAGED, Node
from launcher.tags import (BOOTSTRAP_STAGES, KIND_WORKER, STATUS_SETTING_UP,
                           STATUS_STARTING, STATUS_SYNCING_FILES, STATUS_UNINITIALIZED,
                           STATUS_UP_TO_DATE, STATUS_UPDATE_FAILED, TAG_FAILURE,
                           TAG_NODE_KIND, TAG_NODE_STATUS)
from tests.autoscaler.fakes import FakeClock, FakeRuntime, StepExecutor
from tests.fake_provider import FakeProvider
from tests.unit.test_bootstrap import FAIL_ON_WORKER_2, make_config, up

pytestmark = pytest.mark.timeout(120)


def reachable(old: str | None, new: str) -> bool:
    """`new` follows `old` through one or more allowed changes."""
    seen, frontier = set(), {old}
    while frontier:
        stage = frontier.pop()
        following = S.STAGE_TRANSITIONS.get(stage, frozenset())
        if new in following:
            return True
        frontier |= set(following) - seen
        seen |= set(following)
    return False


@pytest.fixture
def performed(monkeypatch):
    """Every stage change the bootstrap state machine makes, as it makes it:
    (node_id, old, new). The tags show fewer (launcher.bootstrap.tag_writer merges
    stages shorter than one write)."""
    changes = []

    def recording(node_id, old, new):
        changes.append((node_id, old, new))
        S.check_stage_transition(node_id, old, new)
    monkeypatch.setattr(stages, "check_stage_transition", recording)
    return changes


def assert_allowed(provider: FakeProvider, performed) -> int:
    """The bootstrap's own changes are each in the table; every node's status as its
    tags show it (as created, then each write: the bootstrap's merged writes and those
    `up` and the monitor make themselves) moves only along the table. Returns how many
    changes were checked."""
    for node_id, old, new in performed:
        assert S.stage_transition_allowed(old, new), (node_id, old, new)
    assert performed, "no bootstrap ran"
    checked = len(performed)
    for node_id in provider.created_status:
        history = provider.status_history(node_id)
        for old, new in zip(history, history[1:]):
            assert reachable(old, new), (node_id, history)
            checked += 1
    return checked


def test_every_change_up_makes_is_allowed(tmp_path, keys_dir, performed):
    """Fresh nodes, a failing and an unreachable worker, and `up` again: after a change
    (from up-to-date), after the failure (from update-failed), restart only, config only."""
    config = make_config(tmp_path, worker_setup_commands=(FAIL_ON_WORKER_2,))
    provider = FakeProvider(config, str(tmp_path / "nodes"))
    provider.unreachable_ips.add("10.0.0.2")
    _, first = up(config, provider, keys_dir)
    assert sorted(outcome.status for outcome in first.outcomes) == \
        [STATUS_UP_TO_DATE, STATUS_UPDATE_FAILED, STATUS_UPDATE_FAILED]
    provider.unreachable_ips.clear()
    provider.runners.clear()
    fixed = make_config(tmp_path, setup_commands=("echo again",))
    _, second = up(fixed, provider, keys_dir)
    assert second.ok and len(second.outcomes) == 3
    _, third = up(fixed, provider, keys_dir, restart_only=True)
    assert third.ok and len(third.outcomes) == 3
    changed = make_config(tmp_path, setup_commands=("echo again",), max_workers=3)
    _, fourth = up(changed, provider, keys_dir)
    assert fourth.ok
    assert assert_allowed(provider, performed) >= 3 * 8


def test_every_change_the_monitor_makes_is_allowed(tmp_path, performed):
    """The monitor with the real bootstrap (commands run with bash): nodes that come up,
    a node type whose start command fails, and a bootstrap that raises (the actuator
    marks that node failed itself)."""
    config = normalize({
        "cluster_name": "states", "max_workers": 6, "idle_timeout_minutes": 1,
        "provider": {"type": "process"}, "head_node_type": "head",
        "available_node_types": {
            "head": {"resources": {"CPU": 1}, "min_workers": 0, "max_workers": 0},
            "cpu2": {"resources": {"CPU": 2}, "min_workers": 0, "max_workers": 2},
            "bad": {"resources": {"GPU": 1}, "min_workers": 0, "max_workers": 1},
            "buggy": {"resources": {"TPU": 1}, "min_workers": 0, "max_workers": 1}},
        "setup_commands": ["true"],
        "worker_start_commands": ['test "$CORRAL_NODE_TYPE" != bad']})
    provider = FakeProvider(config, str(tmp_path / "nodes"))
    head = provider.add_head()
    clock = FakeClock()
    runtime = FakeRuntime(clock)
    runtime.join(head.id, "head", {"CPU": 1})
    runtime.busy(head.id)
    context = ClusterContext.build(config, head.internal_ip, 6390, None)

    def bootstrap(provider_, node):
        if node.node_type == "buggy":
            raise RuntimeError("a bug in the bootstrap")
        outcome = bootstrap_node(provider_, node, context)
        if outcome.ok:
            runtime.join(node.id, node.node_type, config.available_node_types[
                node.node_type].resources)
        return outcome
    executor = StepExecutor()
    monitor = Monitor(config, provider, runtime,
                      events=EventLog(tmp_path / "autoscaler.events"),
                      state=MonitorState(path=tmp_path / "state.json"), bootstrap=bootstrap,
                      clock=clock, options=MonitorOptions(join_timeout_s=60),
                      executor=executor)
    runtime.pending = [{"shape": {"CPU": 2}, "count": 2}, {"shape": {"GPU": 1}, "count": 1},
                       {"shape": {"TPU": 1}, "count": 1}]
    monitor.step()
    assert executor.run_all() == 4
    monitor.step()  # sees the outcomes: tags the buggy one failed, replaces both
    last = {node_id: provider.status_history(node_id)[-1]
            for node_id in provider.created_status}
    failed = {node_id for node_id, status in last.items() if status == STATUS_UPDATE_FAILED}
    assert len(failed) == 2 and set(provider.terminated) == failed
    assert sum(status == STATUS_UP_TO_DATE for status in last.values()) == 3  # head too
    for _ in range(3):  # the replacements fail again, and are replaced again
        monitor.step()
        executor.run_all()
    assert provider.terminated
    assert assert_allowed(provider, performed) >= 4 * 2


def test_a_stage_out_of_order_is_refused_before_it_is_written(tmp_path):
    config = make_config(tmp_path)
    provider = FakeProvider(config, str(tmp_path / "nodes"))
    [node_id] = provider.create_nodes("w", {}, {TAG_NODE_KIND: KIND_WORKER,
                                                TAG_NODE_STATUS: STATUS_UNINITIALIZED}, 1)
    machine = NodeBootstrap(provider, provider.nodes[node_id],
                            ClusterContext.build(config, "10.0.0.1", 6390, None))
    machine.tags = TagWriter(provider, node_id)
    try:
        with pytest.raises(S.NodeStateError, match="from uninitialized to setting-up"):
            machine._enter(STATUS_SETTING_UP)  # skipped waiting-for-ssh: never reached it
        machine._enter(S.STATUS_WAITING_FOR_SSH)
        machine._enter(STATUS_STARTING)
        with pytest.raises(S.NodeStateError, match="from starting to syncing-files"):
            machine._enter(STATUS_SYNCING_FILES)  # backwards within a run
    finally:
        machine.tags.finish()
    assert provider.statuses(node_id) == [STATUS_STARTING] or \
        provider.statuses(node_id) == [S.STATUS_WAITING_FOR_SSH, STATUS_STARTING]


def test_the_tables_cover_every_stage_and_provider_state():
    assert set(BOOTSTRAP_STAGES) | {STATUS_UNINITIALIZED, STATUS_UPDATE_FAILED, None,
                                    STATE_DAMAGED} == set(S.STAGE_TRANSITIONS)
    for stage in BOOTSTRAP_STAGES:  # a run can end from anywhere, and start over
        assert S.stage_transition_allowed(stage, STATUS_UPDATE_FAILED)
        assert S.stage_transition_allowed(stage, S.STATUS_WAITING_FOR_SSH)
    later = list(BOOTSTRAP_STAGES[1:])
    for index, stage in enumerate(BOOTSTRAP_STAGES[:-1]):  # forward only, skips allowed
        for other in later:
            assert S.stage_transition_allowed(stage, other) == \
                (BOOTSTRAP_STAGES.index(other) > index)
    assert not S.stage_transition_allowed(STATE_DAMAGED, S.STATUS_WAITING_FOR_SSH)
    assert S.stage_transition_allowed("some-future-stage", S.STATUS_WAITING_FOR_SSH)
    assert set(S.PROVIDER_STATES) | {STATE_DAMAGED} == set(S.PROVIDER_TRANSITIONS)
    assert S.provider_transition_allowed(None, "pending")
    assert S.provider_transition_allowed("running", "running")  # a repeated write
    with pytest.raises(S.NodeStateError):
        S.check_provider_transition("n1", "terminated", "running")


RUNTIME_ITEMS = [None, {"alive": True}, {"alive": False},
                 {"alive": True, "draining": True}, {"alive": False, "draining": True}]


@pytest.mark.parametrize("stage", [None, STATUS_UNINITIALIZED, *BOOTSTRAP_STAGES,
                                   STATUS_UPDATE_FAILED, STATE_DAMAGED])
def test_planner_status_is_the_monitors_mapping(stage, tmp_path):
    """Every stage x provider state x runtime report x join wait maps as the monitor's
    observe step maps it (the same status and the same failure text)."""
    for provider_state, item, waited_s, failure in itertools.product(
            [*S.PROVIDER_STATES, STATE_DAMAGED], RUNTIME_ITEMS, (0.0, 59.0, 60.0),
            (None, "setting-up: exit 1")):
        tags = {TAG_NODE_STATUS: stage} if stage else {}
        if failure:
            tags[TAG_FAILURE] = failure
        node = Node("n1", KIND_WORKER, "cpu2", provider_state, "10.0.0.2", None, tags)
        state = MonitorState()
        state.waiting_to_join_since["n1"] = 1000.0 - waited_s
        live = dict(item, node_id="n1") if item is not None else None
        expected = observe._status_of(1000.0, node, live, state, 60.0)
        got = S.planner_status(stage, provider_state, S.RuntimeFlags.from_report(live),
                               waited_to_join_s=waited_s, join_timeout_s=60.0,
                               failure=failure)
        assert got == expected, (provider_state, item, waited_s)
