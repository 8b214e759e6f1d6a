"""The autoscaler monitor: runs on the head, started by
`corral start --head --autoscaling-config=PATH` as

    python3 -m autoscaler.monitor --config PATH --address HOST:PORT

Loop: observe (provider nodes and tags; the runtime's load) -> plan -> act (create,
bootstrap concurrently, terminate). It is the only part of the autoscaler that sleeps; it
reads the runtime's load every `poll_s` (0.2 s) and plans again at once when the demand
changes, so work that no node can run reaches the provider's create call well under a
second after it is queued. Provider, SSH and runtime errors become events and data for
the next plan; the loop never dies of them. After a restart it rebuilds its view from the
provider's tags and its saved state, so nodes are never launched twice.

Its own files never stop it either: when the head's disk is full, events wait in memory
and the status and state files keep their last whole content; every round tries again,
and all is written once space returns (see autoscaler.events).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import re
import signal
import threading
import time
import traceback

from autoscaler import events as ev
from autoscaler.act import Actuator, BootstrapFn
from autoscaler.decisions import Plan
from autoscaler.events import EventLog
from autoscaler.explain import summarize
from autoscaler.observe import (DEFAULT_JOIN_TIMEOUT_S, LoadSource, RuntimeLoadSource,
                                build_snapshot, demand_version, node_types_of)
from autoscaler.planner import plan as make_plan
from autoscaler.policy import Policy, policy_from_config
from autoscaler.snapshot import NODE_RUNNING
from autoscaler.tracker import MonitorState
from launcher.errors import ClusterError
from launcher.providers.base import NodeProvider, unreachable_hosts
from runtime.errors import RuntimeSystemError

log = logging.getLogger("corral.autoscaler")
STATE_FILE = "autoscaler.state.json"
STATUS_REFRESH_S = 10.0


class Clock:
    """Wall-clock time (the runtime's idle_since_s is wall-clock too) and waiting."""

    def now(self) -> float:
        return time.time()

    def wait(self, event: threading.Event, timeout_s: float) -> bool:
        return event.wait(timeout_s)


@dataclasses.dataclass(frozen=True)
class MonitorOptions:
    poll_s: float = 0.2  # how often the runtime's load is read
    provider_refresh_s: float = 5.0  # re-list provider nodes at least this often
    join_timeout_s: float = DEFAULT_JOIN_TIMEOUT_S
    adopt_after_s: float = 30.0  # adopt a predecessor's unfinished bootstraps after this


class Monitor:
    def __init__(self, config, provider: NodeProvider, load_source: LoadSource, *,
                 events: EventLog, state: MonitorState, bootstrap: BootstrapFn,
                 clock: Clock | None = None, options: MonitorOptions | None = None,
                 policy: Policy | None = None, executor=None,
                 head_node_id: str | None = None):
        self.config = config
        self.head_node_id = head_node_id  # when set: act only while this head exists
        self.provider = provider
        self.load_source = load_source
        self.events = events
        self.state = state
        self.clock = clock or Clock()
        self.options = options or MonitorOptions()
        self.policy = policy or policy_from_config(config)
        self._wake = threading.Event()
        self.actuator = Actuator(
            config, provider, state, events, bootstrap,
            {name: spec.launch_hash for name, spec in self.policy.node_types.items()},
            on_change=self._changed, executor=executor,
            adopt_after_s=self.options.adopt_after_s)
        self._nodes = None
        self._nodes_at_s = float("-inf")
        self._stale = True
        self._last_version = None
        self._last_problem: str | None = None
        self.last_plan: Plan | None = None
        self._status_content: str | None = None
        self._status_at_s = float("-inf")

    def _changed(self) -> None:
        """Something happened outside the loop (a bootstrap ended): look again now."""
        self._stale = True
        self._wake.set()

    def _problem(self, now_s: float, text: str) -> None:
        if text != self._last_problem:  # one event per distinct problem, not per poll
            self.events.write(now_s, ev.OBSERVE_FAILED, text)
            log.warning("%s", text)
        self._last_problem = text

    def observe(self, now_s: float):
        try:
            load = self.load_source.get_load()
        except (RuntimeSystemError, OSError) as error:
            self._problem(now_s, f"cannot read the runtime's load: {error}")
            return None
        version = demand_version(load)
        if (self._stale or self._nodes is None or version != self._last_version
                or now_s - self._nodes_at_s >= self.options.provider_refresh_s):
            try:
                self._nodes = self.provider.non_terminated_nodes()
            except ClusterError as error:
                self._problem(now_s, f"cannot list the cluster's nodes: {error}")
                return None
            self._nodes_at_s = now_s
            self._stale = False
        unreachable = unreachable_hosts(self.provider)
        if self.head_node_id and self.head_node_id not in unreachable and \
                not any(node.id == self.head_node_id for node in self._nodes):
            self._problem(now_s, f"head node {self.head_node_id} is not among the cluster's "
                                 "nodes (being taken down?); not acting")
            return None
        self._last_version = version
        self._last_problem = None
        return build_snapshot(now_s, self._nodes, load, self.state,
                              self.options.join_timeout_s)

    def step(self) -> Plan | None:
        """One observe -> plan -> act round; None when observing failed."""
        now_s = self.clock.now()
        self._retry_writes(now_s)
        if self.actuator.collect_bootstraps(now_s):
            self._stale = True
        snapshot = self.observe(now_s)
        if snapshot is None:
            return None
        plan = make_plan(snapshot, self.policy)
        self.events.record_plan(now_s, plan)
        self._write_status(now_s, plan, snapshot)
        self.last_plan = plan
        self.act(now_s, plan, snapshot)
        return plan

    def _retry_writes(self, now_s: float) -> None:
        """Write what a full disk refused before: waiting events, the state file (the
        status file is rewritten by _write_status, which remembers it failed)."""
        self.events.flush(now_s)
        self.state.save_if_changed()   # (waiting-to-join times change in observe)

    def _write_status(self, now_s: float, plan: Plan, snapshot) -> None:
        """Rewrite the status file when what it says changed (idle timers aside), and at
        least every STATUS_REFRESH_S so its idle times stay roughly current."""
        extra = {**summarize(snapshot), "backoffs": [dataclasses.asdict(backoff)
                                                     for backoff in snapshot.backoffs],
                 "refresh_s": STATUS_REFRESH_S}   # `corral health` judges staleness by it
        content = json.dumps([plan.to_dict(), extra], sort_keys=True, default=str)
        content = re.sub(r'"idle_for_s": [0-9.]+', "", content)
        if content != self._status_content or \
                now_s - self._status_at_s >= STATUS_REFRESH_S:
            if self.events.write_status(now_s, plan, extra):
                self._status_content, self._status_at_s = content, now_s

    def _drained(self, now_s: float, plan: Plan, snapshot) -> list[tuple[str, str]]:
        """The terminations to do now: running nodes only once the runtime confirms
        them drained and idle (when it can drain), so no work lands on a node going away."""
        running = {record.id for record in snapshot.nodes if record.status == NODE_RUNNING}
        asked = [node_id for node_id, _ in plan.to_terminate if node_id in running]
        confirmed = set(asked)
        if asked:
            answer = self.load_source.drain(asked)
            if answer is not None:
                confirmed = set(answer)
        decisions = []
        for node_id, why in plan.to_terminate:
            if node_id in running and node_id not in confirmed:
                self.events.write(now_s, ev.DRAIN_REFUSED, f"kept {node_id} for now: the "
                                  "runtime did not confirm it drained and idle",
                                  node_id=node_id)
                continue
            decisions.append((node_id, why))
        return decisions

    def act(self, now_s: float, plan: Plan, snapshot) -> None:
        decisions = self._drained(now_s, plan, snapshot) if plan.to_terminate else []
        if decisions:
            self.actuator.terminate(now_s, decisions)
            self._stale = True
        for node_type, count in sorted(plan.to_launch.items()):
            self.actuator.create(now_s, node_type, count)
            self._stale = True
        if self._stale:  # see the nodes just created before bootstrapping them
            try:
                self._nodes = self.provider.non_terminated_nodes()
                self._nodes_at_s = now_s
                self._stale = False
            except ClusterError as error:
                self._problem(now_s, f"cannot list the cluster's nodes: {error}")
                return
        self.actuator.start_bootstraps(now_s, self._nodes or [])

    def run(self, stop: threading.Event) -> None:
        self.events.write(self.clock.now(), ev.STARTED,
                          f"autoscaler monitor started for cluster {self.config.cluster_name}"
                          f" ({len(self.policy.node_types)} node types, max_workers "
                          f"{self.policy.max_workers})")
        while not stop.is_set():
            self._wake.clear()
            try:
                self.step()
            except Exception as error:  # noqa: BLE001 - the loop must outlive any bug
                log.error("monitor step failed:\n%s", traceback.format_exc())
                try:
                    self._problem(self.clock.now(), f"monitor step failed: "
                                                    f"{type(error).__name__}: {error}")
                except Exception:  # noqa: BLE001 - reporting must not end the loop either
                    log.error("could not record the failure:\n%s", traceback.format_exc())
            if stop.is_set():
                break
            self.clock.wait(self._wake, self.options.poll_s)

    def stop(self, stop: threading.Event) -> None:
        stop.set()
        self._wake.set()

    def close(self) -> None:
        self.actuator.close()
        self.load_source.close()
        self.provider.close()


def build_monitor(config_path: str, address: str, keys_dir: str | None,
                  node_dir: str | None, options: MonitorOptions) -> Monitor:
    from launcher.bootstrap.stages import ClusterContext, bootstrap_node
    from launcher.config.load import load_normalised_config
    from launcher.bootstrap.hashing import config_hash
    from launcher.providers import make_provider
    config = load_normalised_config(config_path)
    provider = make_provider(config)
    head_ip, _, port = address.rpartition(":")
    context = ClusterContext.build(config, head_ip, int(port), keys_dir)

    def bootstrap(provider_, node):
        return bootstrap_node(provider_, node, context)
    session = ev.session_dir(node_dir)
    session.mkdir(parents=True, exist_ok=True, mode=0o700)
    state = MonitorState.load(session / STATE_FILE, config_hash(config.to_dict()))
    policy = policy_from_config(config)
    # the control service learns the node types from here (it reads no cluster YAML)
    load_source = RuntimeLoadSource(address, keys_dir, node_types=node_types_of(policy))
    return Monitor(config, provider, load_source,
                   events=EventLog(session / ev.EVENTS_FILE), state=state,
                   bootstrap=bootstrap, options=options, policy=policy,
                   head_node_id=os.environ.get("CORRAL_NODE_ID"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m autoscaler.monitor",
                                     description="The corral autoscaler monitor (head only).")
    parser.add_argument("--config", required=True, help="the normalised cluster YAML")
    parser.add_argument("--address", required=True, help="the runtime head's HOST:PORT")
    parser.add_argument("--keys-dir", help="cluster keys (default $CORRAL_NODE_DIR/keys)")
    parser.add_argument("--node-dir", help="node state root (default $CORRAL_NODE_DIR)")
    parser.add_argument("--poll-s", type=float, default=MonitorOptions.poll_s)
    parser.add_argument("--adopt-after-s", type=float, default=MonitorOptions.adopt_after_s,
                        help="restart a previous monitor's unfinished bootstrap once its "
                             "stage has not moved for this long")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    node_dir = args.node_dir or os.environ.get("CORRAL_NODE_DIR") or ev.DEFAULT_NODE_DIR
    keys_dir = args.keys_dir or os.path.join(node_dir, "keys")
    try:
        monitor = build_monitor(args.config, args.address, keys_dir, node_dir,
                                MonitorOptions(poll_s=args.poll_s,
                                               adopt_after_s=args.adopt_after_s))
    except ClusterError as error:
        log.error("autoscaler monitor cannot start: %s", error)
        return 2
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: monitor.stop(stop))
    try:
        monitor.run(stop)
    finally:
        monitor.close()
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
