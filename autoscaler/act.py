"""Act: apply a plan through the provider. Create nodes (tagged at creation, so a
restarted monitor sees them and never launches twice), bootstrap them concurrently with
the launcher's bootstrap, terminate the ones the plan lets go.

Provider and SSH errors never escape: a failed launch becomes a backoff in MonitorState
(the next snapshot carries it), a failed bootstrap tags its node update-failed (the next
snapshot shows it failed), and each is an event.
"""
from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Mapping

from autoscaler import events as ev
from autoscaler.events import EventLog
from autoscaler.tracker import MonitorState
from launcher.errors import ClusterError
from launcher.node_states import bootstrap_finished
from launcher.providers.base import Node, NodeProvider, create_what_fits
from launcher.tags import (KIND_WORKER, STATUS_UNINITIALIZED, STATUS_UPDATE_FAILED,
                           TAG_LAUNCH_HASH, TAG_NODE_KIND,
                           TAG_NODE_STATUS, TAG_NODE_TYPE)

# Which monitor launched a node, so a restarted monitor adopts the bootstraps its
# predecessor left unfinished (and leaves alone those `corral up` runs from a laptop).
TAG_LAUNCHED_BY = "corral-launched-by"
LAUNCHED_BY_AUTOSCALER = "autoscaler"

# bootstrap(provider, node) -> outcome with .ok and .error (launcher.bootstrap.stages's
# BootstrapOutcome); it must not raise for a node failure.
BootstrapFn = Callable[[NodeProvider, Node], object]


class Actuator:
    def __init__(self, config, provider: NodeProvider, state: MonitorState, events: EventLog,
                 bootstrap: BootstrapFn, launch_hashes: Mapping[str, str | None],
                 max_parallel_bootstraps: int = 16, on_change: Callable[[], None] | None = None,
                 executor=None, adopt_after_s: float = 30.0):
        self.config = config
        self.provider = provider
        self.state = state
        self.events = events
        self.bootstrap = bootstrap
        self.launch_hashes = dict(launch_hashes)
        self.on_change = on_change
        # Bootstraps run in threads (tests pass an executor that runs them when told).
        self.pool = executor or ThreadPoolExecutor(max_workers=max_parallel_bootstraps,
                                                   thread_name_prefix="bootstrap")
        self.bootstrapping: dict[str, Future] = {}
        self.created: set[str] = set()  # nodes this actuator launched (bootstrapped at once)
        self.adopt_after_s = adopt_after_s
        self._stage_seen: dict[str, tuple[str | None, float]] = {}  # id -> (stage, since)

    # -- create ---------------------------------------------------------------------------
    def create(self, now_s: float, node_type: str, count: int) -> list[str]:
        spec = self.config.available_node_types[node_type]
        tags = {TAG_NODE_KIND: KIND_WORKER, TAG_NODE_TYPE: node_type,
                TAG_NODE_STATUS: STATUS_UNINITIALIZED, TAG_LAUNCHED_BY: LAUNCHED_BY_AUTOSCALER}
        if self.launch_hashes.get(node_type):
            tags[TAG_LAUNCH_HASH] = self.launch_hashes[node_type]
        try:
            outcome = create_what_fits(self.provider, node_type, spec.node_config, tags, count)
        except ClusterError as error:  # any other launcher error is a failed launch too
            backoff = self.state.launch_failed(node_type, error, now_s)
            self.events.write(now_s, ev.LAUNCH_FAILED, f"could not launch {count} x "
                              f"{node_type}: {error}; backing off for "
                              f"{backoff.until_s - now_s:.0f} s", node_type=node_type,
                              count=count)
            return []
        if outcome.error is not None:
            error, created = outcome.error, outcome.ids
            backoff = self.state.launch_failed(node_type, error, now_s)
            self.events.write(now_s, ev.LAUNCH_FAILED,
                              f"could not launch {count} x {node_type}: {error}; "
                              f"{node_type} backs off for {backoff.until_s - now_s:.0f} s"
                              + (f" (created {len(created)})" if created else ""),
                              node_type=node_type, count=count)
            return created
        ids = outcome.ids
        self.state.launch_succeeded(node_type)
        self.created.update(ids)
        self.events.write(now_s, ev.LAUNCHED, f"launched {len(ids)} x {node_type}: "
                          f"{', '.join(ids)}", node_type=node_type, count=len(ids))
        return ids

    # -- terminate --------------------------------------------------------------------------
    def terminate(self, now_s: float, decisions: list[tuple[str, str]]) -> list[str]:
        if not decisions:
            return []
        ids = [node_id for node_id, _ in decisions]
        try:
            self.provider.terminate_nodes(ids)
        except ClusterError as error:
            self.events.write(now_s, ev.TERMINATE_FAILED, f"could not terminate "
                              f"{', '.join(ids)}: {error}")
            return []
        for node_id, why in decisions:
            future = self.bootstrapping.pop(node_id, None)
            if future is not None:
                future.cancel()
            self.events.write(now_s, ev.TERMINATED, f"terminated {node_id}: {why}",
                              node_id=node_id)
        return ids

    # -- bootstrap ----------------------------------------------------------------------------
    def needs_bootstrap(self, now_s: float, node: Node) -> bool:
        """A worker an autoscaler launched, not yet up to date or failed, with an address,
        and no bootstrap of ours running for it. Nodes a previous monitor launched are
        adopted only once their stage has not moved for adopt_after_s: a bootstrap that
        monitor started may still be running its commands."""
        if node.kind != KIND_WORKER or node.id in self.bootstrapping:
            return False
        if node.tags.get(TAG_LAUNCHED_BY) != LAUNCHED_BY_AUTOSCALER:
            return False
        if bootstrap_finished(node.status):
            self._stage_seen.pop(node.id, None)
            return False
        if not (node.internal_ip or node.external_ip):
            return False
        if node.id in self.created:
            return True
        stage, since_s = self._stage_seen.get(node.id, (None, None))
        if since_s is None or stage != node.status:
            self._stage_seen[node.id] = (node.status, now_s)
            return self.adopt_after_s <= 0
        return now_s - since_s >= self.adopt_after_s

    def start_bootstraps(self, now_s: float, nodes: list[Node]) -> int:
        started = 0
        for node in nodes:
            if self.needs_bootstrap(now_s, node):
                self.created.add(node.id)  # ours from now on: never adopted twice
                self.bootstrapping[node.id] = self.pool.submit(self._bootstrap_one, node)
                started += 1
        return started

    def _bootstrap_one(self, node: Node):
        try:
            return self.bootstrap(self.provider, node)
        finally:
            if self.on_change is not None:
                self.on_change()

    def collect_bootstraps(self, now_s: float) -> int:
        """Log finished bootstraps; returns how many finished."""
        finished = 0
        for node_id, future in list(self.bootstrapping.items()):
            if not future.done():
                continue
            del self.bootstrapping[node_id]
            finished += 1
            if future.cancelled():
                continue
            error = future.exception()
            outcome = None if error is not None else future.result()
            problem = error or getattr(outcome, "error", None)
            if problem is None:
                self.events.write(now_s, ev.BOOTSTRAPPED, f"{node_id} is up to date",
                                  node_id=node_id)
            else:
                self.events.write(now_s, ev.BOOTSTRAP_FAILED, f"{node_id}: {problem}",
                                  node_id=node_id)
                if error is not None:  # a bug, not a node failure: tag it failed ourselves
                    self._tag_failed(node_id, f"bootstrap: {type(error).__name__}: {error}")
        return finished

    def _tag_failed(self, node_id: str, text: str) -> None:
        from launcher.tags import TAG_FAILURE
        try:
            self.provider.set_node_tags(node_id, {TAG_NODE_STATUS: STATUS_UPDATE_FAILED,
                                                  TAG_FAILURE: text[:200]})
        except ClusterError:
            pass  # the node may be gone; the next observation shows what it is

    def close(self, wait: bool = False) -> None:
        self.pool.shutdown(wait=wait, cancel_futures=True)
