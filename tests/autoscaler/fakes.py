"""Fakes of our interfaces for monitor tests (plain classes): a runtime load report, a
clock moved by hand, and an executor that runs bootstraps only when told. The fake
provider is the tests' one (tests/fake_provider.py)."""
from __future__ import annotations

from concurrent.futures import Future
from typing import Mapping

from launcher.errors import ClusterError
from launcher.tags import STATUS_UP_TO_DATE, STATUS_UPDATE_FAILED, TAG_FAILURE, TAG_NODE_STATUS


class FakeClock:
    def __init__(self, now_s: float = 1_000_000.0):
        self.now_s = now_s

    def now(self) -> float:
        return self.now_s

    def advance(self, seconds: float) -> None:
        self.now_s += seconds

    def wait(self, event, timeout_s):
        self.now_s += timeout_s
        return event.is_set()


class FakeRuntime:
    """The control service's load report: joined nodes, pending demand, bundles."""

    def __init__(self, clock: FakeClock):
        self.clock = clock
        self.nodes: dict[str, dict] = {}
        self.pending: list[dict] = []
        self.bundles: list[dict] = []
        self.error: Exception | None = None
        self.can_drain = False
        self.drained: list[str] = []

    def join(self, node_id: str, node_type: str, resources: Mapping[str, float]) -> None:
        self.nodes[node_id] = {"node_id": node_id, "node_type": node_type, "alive": True,
                               "resources_total": dict(resources),
                               "resources_available": dict(resources),
                               "idle_since_s": self.clock.now()}

    def busy(self, node_id: str) -> None:
        node = self.nodes[node_id]
        node["resources_available"] = {name: 0.0 for name in node["resources_total"]}
        node["idle_since_s"] = None

    def idle(self, node_id: str) -> None:
        node = self.nodes[node_id]
        node["resources_available"] = dict(node["resources_total"])
        node["idle_since_s"] = self.clock.now()

    def get_load(self) -> dict:
        if self.error is not None:
            raise self.error
        return {"now_s": self.clock.now(), "nodes": [dict(node) for node in
                                                      self.nodes.values()],
                "pending_demand": list(self.pending), "infeasible": [],
                "request_resources": list(self.bundles), "node_types": {}}

    def drain(self, node_ids):
        """Like a runtime with drain_nodes: confirms only nodes with nothing running."""
        if not self.can_drain:
            return None
        idle = [node_id for node_id in node_ids
                if self.nodes.get(node_id, {}).get("idle_since_s") is not None]
        self.drained.extend(idle)
        return idle

    def close(self) -> None:
        pass


class FakeBootstrap:
    """Brings a node up to date in the fake provider and joins it to the fake runtime;
    types in `failing` fail at setting-up instead."""

    def __init__(self, runtime: FakeRuntime, config, failing: set[str] | None = None):
        self.runtime = runtime
        self.config = config
        self.failing = set(failing or ())
        self.calls: list[str] = []

    def __call__(self, provider, node):
        self.calls.append(node.id)
        if node.node_type in self.failing:
            provider.set_node_tags(node.id, {TAG_NODE_STATUS: STATUS_UPDATE_FAILED,
                                             TAG_FAILURE: "setting-up: pip exited 1"})
            return _Outcome(ClusterError(f"node {node.id} failed in setting-up"))
        provider.set_node_tags(node.id, {TAG_NODE_STATUS: STATUS_UP_TO_DATE})
        resources = self.config.available_node_types[node.node_type].resources
        self.runtime.join(node.id, node.node_type, resources)
        return _Outcome(None)


class _Outcome:
    def __init__(self, error):
        self.error = error
        self.ok = error is None


class StepExecutor:
    """Runs submitted bootstraps only on run_all() (or never: a monitor killed mid-way)."""

    def __init__(self):
        self.queue: list[tuple[Future, object, tuple]] = []

    def submit(self, fn, *args):
        future = Future()
        self.queue.append((future, fn, args))
        return future

    def run_all(self) -> int:
        done = 0
        while self.queue:
            future, fn, args = self.queue.pop(0)
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn(*args))
                except Exception as error:  # noqa: BLE001 - delivered through the future
                    future.set_exception(error)
                done += 1
        return done

    def shutdown(self, wait=True, cancel_futures=False):
        for future, _, _ in self.queue:
            future.cancel()
        self.queue.clear()
