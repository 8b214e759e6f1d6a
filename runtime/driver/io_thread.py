"""The driver's IO-thread logic: node table, placement of tasks and actors, dependency
resolution, results, retries, actor restarts, fetches and frees. Runs only on the
DriverCore's IO thread; touches shared object entries under core.cv.

By responsibility: this module (node table, heartbeats), runtime.driver.place
(placement and sending), runtime.driver.results (results, failures, retries, actor
restarts), runtime.driver.objects (uploads, fetches, frees), runtime.driver.relocate
(where actors run, for passed-on handles; IO-thread timers), runtime.driver.bound
(actors waiting for a worker process). The loop that runs them, and what happens when
one of them raises: runtime.driver.loop."""
from __future__ import annotations

import collections
import itertools
import logging
import os
import time

import zmq

from runtime import scheduling
from runtime.protocol import frames as protocol
from runtime.protocol import rpc
from runtime.driver.bound import DriverBoundMixin
from runtime.driver.objects import ObjectsMixin
from runtime.driver.leases import DriverLeases
from runtime.driver.place import PlacementMixin
from runtime.driver.relocate import RelocateMixin
from runtime.driver.results import ResultsMixin
from runtime.driver.records import FAILED, READY
from runtime.errors import ActorDiedError, NodeDiedError, ObjectLostError


log = logging.getLogger("corral.driver")

# Work waiting this long for resources that no live node has is logged (once per shape).
UNFIT_WARNING_S = 10.0


class DriverIO(PlacementMixin, ResultsMixin, ObjectsMixin, RelocateMixin,
               DriverBoundMixin):
    def __init__(self, core):
        self.core = core
        self.waiting: dict[tuple, collections.deque] = {}     # shape key -> records
        self.demand_changed = False   # a shape began waiting since the last heartbeat
        self.fetch_ids = 0
        self.fetches: dict[int, bytes] = {}
        self.frees: dict[str, list] = collections.defaultdict(list)
        self.rpc_stats: dict[int, object] = {}
        self.waiting_since: dict[tuple, float] = {}   # shape key -> first seen waiting
        self.timers: list = []         # heap of (due, seq, action): later() / run_due()
        self.timer_ids = itertools.count()
        self.warned_unfit: set = set()
        self.full_nodes: dict[str, dict] = {}   # node id -> its agent's bound notice
        self.bound_waiting: collections.deque = collections.deque()  # actor creations
        self.bound_explained_s: float | None = None    # when that wait was explained
        self.leases = DriverLeases(self)       # tasks straight to leased workers

    # ------------------------------------------------------------ nodes
    def learn_nodes(self, table) -> None:
        core = self.core
        joined = []
        for node in table:
            node_id = node["node_id"]
            old = core.nodes.get(node_id)
            if node["alive"] and not node.get("draining") and \
                    (old is None or not old["alive"] or old.get("draining")):
                joined.append(node_id)
            if old is not None and old["alive"] and node["alive"] and \
                    (old["address"], old.get("ipc")) != (node["address"], node.get("ipc")):
                self._node_died(node_id)     # the same node id came back as a new agent
            core.nodes[node_id] = node
            if node["alive"] and node_id not in core.agents:
                core.agents[node_id] = self._connect(node)
            if not node["alive"] or node.get("draining"):
                self.forget_full(node_id)
            if not node["alive"] and old is not None and old["alive"]:
                self._node_died(node_id)
            elif not node["alive"] and node_id in core.agents:
                self._close_agent(node_id)
        if joined and len(core.agents) > len(joined):
            self.rebalance(joined)
        self._drain()
        if joined and self.bound_waiting:
            self.drain_bound()

    def _connect(self, node) -> zmq.Socket:
        core = self.core
        ipc = node.get("ipc") or ""
        if node.get("hostname") == core.hostname and os.path.exists(protocol.ipc_path(ipc)):
            endpoint = ipc
        else:
            endpoint = f"tcp://{node['address']}"
        sock = protocol.connect_dealer(core.ctx, endpoint, core.keys, core.identity)
        core.poller.register(sock, zmq.POLLIN)
        if core.home_node_id is None and endpoint == ipc:
            core.home_node_id = node["node_id"]
        if endpoint == ipc:
            self.leases.local_nodes.add(node["node_id"])
        return sock

    def _close_agent(self, node_id: str) -> None:
        sock = self.core.agents.pop(node_id, None)
        if sock is not None:
            self.core.poller.unregister(sock)
            sock.close(0)

    def _node_died(self, node_id: str) -> None:
        core = self.core
        self.leases.node_died(node_id)
        self._close_agent(node_id)
        core.inflight.pop(node_id, None)
        cause = f"node {node_id} died"
        for record in [r for r in core.tasks.values() if r.node_id == node_id]:
            del core.tasks[record.task_id]
            if record.kind == "task":
                self._retry(record, cause, NodeDiedError(node_id, record.name))
            elif record.kind == "actor_call":
                self._fail(record, ActorDiedError(record.actor_id.hex(), cause))
        for actor in core.actors.values():
            if actor.node_id == node_id and actor.state in ("creating", "alive"):
                self._actor_failed(actor, cause)
        with core.cv:
            for oid, entry in core.objects.items():
                if entry.node_id == node_id and entry.value is None and entry.state == READY:
                    entry.state = FAILED
                    entry.error = ObjectLostError(oid.hex(), cause)
            core.cv.notify_all()

    def heartbeat(self) -> None:
        self.demand_changed = False
        demand = collections.Counter()
        for key, queue in self.waiting.items():
            if queue:
                demand[key] += len(queue)
        demand.update(self.leases.queued_demand())
        self._warn_unfit(demand)
        demand.update(self.bound_demand())
        self.send_rpc("driver_heartbeat", {"driver_id": self.core.driver_id,
                                           "pending_demand": dict(demand)})

    def _warn_unfit(self, demand: collections.Counter) -> None:
        """Once per shape: work that has waited UNFIT_WARNING_S for resources no live
        node has in total is logged, so a program does not just hang in silence."""
        now = time.monotonic()
        for key in list(self.waiting_since):
            if key not in demand:
                del self.waiting_since[key]
        totals = [node["resources_total"] for node in self.core.nodes.values()
                  if node["alive"]]
        for key, count in demand.items():
            since = self.waiting_since.setdefault(key, now)
            shape = dict(key)
            if key in self.warned_unfit or now - since < UNFIT_WARNING_S or \
                    any(scheduling.fits(shape, total) for total in totals):
                continue
            self.warned_unfit.add(key)
            largest = max(totals, key=lambda total: total.get("CPU", 0.0), default={})
            log.warning("%d task(s) or actor(s) need %s, more than any node of the cluster "
                        "has (largest: %s); they wait until a node that fits joins (the "
                        "autoscaler launches one if a node type fits)", count, shape,
                        largest)

    def _rpc_id(self) -> int:
        return next(self.core.rpc_ids)

    def send_rpc(self, method: str, kwargs: dict, request_id=None) -> None:
        """A request to the control service (runtime.protocol.rpc); its reply is matched
        by request_id in ResultsMixin.handle when someone waits for it."""
        request_id = self._rpc_id() if request_id is None else request_id
        rpc.send_request(self.core.control, request_id, method, kwargs)
