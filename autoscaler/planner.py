"""`plan(snapshot, policy) -> Plan`: what to launch and terminate, and why. Pure: time
comes in the snapshot, nothing here does I/O, the same input gives the same plan.

Order of decisions (each small, each recording its reasons):
1. sort the nodes: failed nodes go; nodes with an outdated launch hash are replaced
   (busy ones only once idle); the rest offer capacity;
2. node types that are quarantined (too many bootstrap failures) or backing off (a failed
   launch) are not launched;
3. launch what `min_workers` asks for;
4. fit the `request_resources` bundles onto the total capacity of the nodes, launching
   nodes for what does not fit;
5. fit the pending demand onto free capacity (existing nodes, then nodes being launched),
   launching nodes for the rest; shapes that ask for scarce resources (GPU...) go first,
   larger shapes before smaller;
6. remove workers idle past their timeout unless min_workers or the demand needs them;
7. pace the launches by upscaling_speed.
When two rules disagree the safer one wins (launch less, terminate less) and a CAP, KEEP or
SKIP reason says so.
"""
from __future__ import annotations

import time

from autoscaler import decisions as d
from autoscaler.binpack import (RANK_BUSY, RANK_IDLE, RANK_NEW, RANK_PENDING, Bins, Need,
                                NodeOption, ResourceSpace, best_option, fit_count, scarce_of,
                                subtract)
from autoscaler.ordering import by_leftover_fit, by_size, smallest_needs
from autoscaler.policy import MIN_PENDING_NODES, Policy
from autoscaler.snapshot import NODE_FAILED, NODE_RUNNING, NodeRecord, Shape, Snapshot, shape_text


def plan(snapshot: Snapshot, policy: Policy) -> d.Plan:
    return _Planner(snapshot, policy).run()


def clock_text(at_s: float) -> str:
    """A time stamp (seconds since the epoch) as UTC wall-clock time; formats, reads no
    clock."""
    return time.strftime("%H:%M:%S UTC", time.gmtime(at_s))


class _Planner:
    def __init__(self, snapshot: Snapshot, policy: Policy):
        self.snapshot = snapshot
        self.policy = policy
        self.types = {name: policy.node_types[name] for name in sorted(policy.node_types)}
        names: set[str] = set()
        for spec in self.types.values():
            names.update(spec.resources)
        for node in snapshot.nodes:
            names.update(node.resources_total)
            names.update(node.resources_used)
        for shapes in (snapshot.demand, snapshot.requested_bundles):
            for shape in shapes:
                names.update(name for name, _ in shape)
        self.space = ResourceSpace(names)
        self.capacity = {name: self.space.vector(spec.resources)
                         for name, spec in self.types.items()}
        self.reasons: list[d.Reason] = []
        self._reason_keys: set[tuple] = set()
        self.terminate: list[tuple[str, str]] = []
        self.launches: list[tuple[str, int]] = []  # in the order decided
        self.launched = {name: 0 for name in self.types}
        self.live = {name: 0 for name in self.types}  # workers counted against max_workers
        self.live_other = 0  # busy workers of types no longer configured (count globally)
        self.current: dict[str, list[NodeRecord]] = {name: [] for name in self.types}
        self.existing_totals: list = []
        self.unplaced: list[d.Unplaced] = []
        self.infeasible: list[Shape] = []
        self.blocked: dict[str, str] = {}
        self.quarantined: list[str] = []
        self.bundle_bins = Bins()
        self.demand_bins = Bins()
        self.touched_by_bundles: set[str] = set()
        self.touched_by_demand: set[str] = set()
        self._outlook: dict[frozenset, list[float]] = {}
        self._needs: dict[Shape, Need] = {}

    def _need(self, shape: Shape) -> Need:
        need = self._needs.get(shape)
        if need is None:
            need = self._needs[shape] = self.space.need(shape)
        return need

    # -- bookkeeping -------------------------------------------------------------------
    def _say(self, kind: str, message: str, node_type: str | None = None, count: int = 0,
             node_id: str | None = None, once: bool = False) -> None:
        if once:
            key = (kind, message, node_type)
            if key in self._reason_keys:
                return
            self._reason_keys.add(key)
        self.reasons.append(d.Reason(kind, message, node_type, count, node_id))

    def _terminate(self, node: NodeRecord, why: str) -> None:
        self.terminate.append((node.id, why))
        self._say(d.TERMINATE, why, node.node_type, 1, node.id)

    def _workers_total(self) -> int:
        return sum(self.live.values()) + self.live_other + sum(self.launched.values())

    def _slots(self, name: str) -> int:
        spec = self.types[name]
        by_type = spec.max_workers - self.live[name] - self.launched[name]
        overall = self.policy.max_workers - self._workers_total()
        return max(0, min(by_type, overall))

    def _why_no_slots(self, name: str) -> str:
        if name in self.blocked:
            return self.blocked[name]
        spec = self.types[name]
        if spec.max_workers - self.live[name] - self.launched[name] <= 0:
            return f"{name} at its max_workers {spec.max_workers}"
        return f"cluster at max_workers {self.policy.max_workers}"

    def _is_idle_expired(self, node: NodeRecord) -> bool:
        if node.status != NODE_RUNNING or node.idle_since_s is None:
            return False
        idle_s = self.snapshot.now_s - node.idle_since_s
        return idle_s >= self.policy.idle_timeout_for(node.node_type)

    # -- 1. nodes ----------------------------------------------------------------------
    def _sort_nodes(self) -> None:
        for node in self.snapshot.nodes:
            if node.is_head:
                self._offer(node, RANK_BUSY)
                continue
            spec = self.types.get(node.node_type)
            if node.status == NODE_FAILED:
                self._terminate(node, f"node {node.id} ({node.node_type}) failed: "
                                      f"{node.failure or 'bootstrap failed'}; replaced")
                continue
            outdated = None
            if spec is None:
                outdated = f"node type {node.node_type} is no longer in the config"
            elif spec.launch_hash and node.launch_hash and node.launch_hash != spec.launch_hash:
                outdated = (f"launch config of {node.node_type} changed "
                            f"({node.launch_hash} -> {spec.launch_hash})")
            if outdated:
                busy = node.status == NODE_RUNNING and node.idle_since_s is None
                if busy:
                    if spec is not None:
                        self.live[node.node_type] += 1
                    else:
                        self.live_other += 1
                    self._say(d.KEEP, f"kept {node.id} while it works: {outdated}; "
                                      "replaced once idle", node.node_type, 1, node.id)
                else:
                    self._terminate(node, f"{outdated}; replaced")
                continue
            self.live[node.node_type] += 1
            self.current[node.node_type].append(node)
            rank = RANK_PENDING if node.is_pending else (
                RANK_IDLE if self._is_idle_expired(node) else RANK_BUSY)
            self._offer(node, rank)

    def _offer(self, node: NodeRecord, rank: int) -> None:
        spec = self.types.get(node.node_type)
        total_map = node.resources_total or (spec.resources if spec else {})
        total = self.space.vector(total_map)
        used = self.space.vector(node.resources_used) if not node.is_pending else total
        free = tuple(max(0.0, have - busy) for have, busy in zip(total, used)) \
            if not node.is_pending else total
        scarce = scarce_of(name for name, amount in total_map.items() if amount)
        self.existing_totals.append(total)
        self.bundle_bins.add(node.node_type, total, 1, rank, scarce, [node.id])
        self.demand_bins.add(node.node_type, free, 1, rank, scarce, [node.id])

    # -- 2. blocked types ----------------------------------------------------------------
    def _block_types(self) -> None:
        now_s = self.snapshot.now_s
        for name in self.types:
            failures = self.snapshot.bootstrap_failures.get(name, 0)
            if failures >= self.policy.max_bootstrap_failures:
                why = (f"{name} quarantined after {failures} bootstrap failures "
                       f"(limit {self.policy.max_bootstrap_failures}); not launched until "
                       "the config changes")
                self.blocked[name] = why
                self.quarantined.append(name)
                self._say(d.QUARANTINE, why, name)
                continue
            backoff = self.snapshot.active_backoff(name)
            if backoff is not None:
                why = (f"{name} backing off until {clock_text(backoff.until_s)} "
                       f"({backoff.until_s - now_s:.0f} s more) after {backoff.reason}")
                self.blocked[name] = why
                self._say(d.BACKOFF, why, name)

    # -- launching -------------------------------------------------------------------------
    def _launch(self, name: str, count: int, purpose: str) -> None:
        self.launched[name] += count
        self.launches.append((name, count))
        self._say(d.LAUNCH, f"launch {count} x {name} for {purpose}", name, count)

    def _min_workers(self) -> None:
        for name, spec in self.types.items():
            deficit = spec.min_workers - len(self.current[name])
            if deficit <= 0:
                continue
            granted = 0 if name in self.blocked else min(deficit, self._slots(name))
            if granted < deficit:
                kind = d.SKIP if name in self.blocked else d.CAP
                self._say(kind, f"min_workers {spec.min_workers} of {name} wants {deficit} "
                                f"more; launching {granted}: {self._why_no_slots(name)}",
                          name, deficit - granted)
            if granted:
                self._launch(name, granted, f"min_workers {spec.min_workers}")
                capacity = self.capacity[name]
                scarce = self.types[name].scarce_resources
                self.bundle_bins.add(name, capacity, granted, RANK_NEW, scarce)
                self.demand_bins.add(name, capacity, granted, RANK_NEW, scarce)

    def _feasible(self, need: Need) -> bool:
        return any(fit_count(need, vector) > 0
                   for vector in list(self.capacity.values()) + self.existing_totals)

    def _place_all(self, counts, bins: Bins, touched: set[str], purpose: str,
                   also_offer: Bins | None) -> None:
        """Shapes asking for scarce resources are placed first, each on capacity and then
        on new nodes. The other shapes first fill the capacity left (in the order that
        uses the most plentiful leftover resources first), then open new nodes."""
        scarce_shapes, generic_shapes = [], []
        for shape in by_size(counts, self._need, list(self.capacity.values())
                             + self.existing_totals):
            need = self._need(shape)
            if not need:
                continue  # asks for nothing: runs anywhere
            if not self._feasible(need):
                self._infeasible(shape, counts[shape], purpose)
                continue
            (scarce_shapes if scarce_of(name for name, _ in shape) else generic_shapes
             ).append(shape)
        smallest = smallest_needs(scarce_shapes + generic_shapes, self._need,
                                  len(self.space.names))
        self._outlook = {}
        for shape in scarce_shapes:
            self._expect(shape, counts[shape], +1)
        for shape in scarce_shapes:
            self._place_one(shape, counts[shape], bins, touched, purpose, also_offer)
            self._expect(shape, counts[shape], -1)
            bins.prune(smallest)
        left = {}
        for shape in by_leftover_fit(generic_shapes, counts, self._need, len(self.space.names),
                                     bins.groups):
            remaining = bins.place(self._need(shape), counts[shape], frozenset(), touched)
            if remaining:
                left[shape] = remaining
                self._expect(shape, remaining, +1)
            bins.prune(smallest)
        for shape in generic_shapes:
            if shape in left:
                self._place_one(shape, left[shape], bins, touched, purpose, also_offer)
                self._expect(shape, left[shape], -1)
                bins.prune(smallest)

    def _expect(self, shape: Shape, count: int, sign: int) -> None:
        """Keep the total still to place per class of shapes (same scarce resources), so
        a node type is chosen for all that is coming, not only for the shape at hand."""
        key = scarce_of(name for name, _ in shape)
        totals = self._outlook.setdefault(key, [0.0] * len(self.space.names))
        for index, amount in self._need(shape):
            totals[index] = max(0.0, totals[index] + sign * amount * count)

    def _place_one(self, shape: Shape, count: int, bins: Bins, touched: set[str],
                   purpose: str, also_offer: Bins | None) -> None:
        need = self._need(shape)
        remaining = bins.place(need, count, scarce_of(name for name, _ in shape), touched)
        if remaining:
            remaining = self._open(shape, need, remaining, purpose, bins, also_offer)
        if remaining:
            why = self._why_unplaced(shape, need)
            self.unplaced.append(d.Unplaced(shape, remaining, why))
            self._say(d.UNPLACED, f"{remaining} x {shape_text(shape)} ({purpose}) wait: "
                                  f"{why}", count=remaining)

    def _infeasible(self, shape: Shape, count: int, purpose: str) -> None:
        self.infeasible.append(shape)
        why = f"no node type can hold {shape_text(shape)}"
        self.unplaced.append(d.Unplaced(shape, count, why))
        self._say(d.INFEASIBLE, f"{count} x {shape_text(shape)} ({purpose}): {why}",
                  count=count)

    def _candidates(self, shape: Shape, need: Need) -> list[str]:
        """Types that fit the shape; types with scarce resources the shape does not ask
        for only when no other type fits it."""
        fitting = [name for name in self.types if fit_count(need, self.capacity[name]) > 0]
        shape_scarce = scarce_of(name for name, _ in shape)
        clean = [name for name in fitting
                 if self.types[name].scarce_resources <= shape_scarce]
        if clean and len(clean) < len(fitting):
            kept = sorted(set(fitting) - set(clean))
            scarce = sorted(set().union(*(self.types[name].scarce_resources for name in kept))
                            - shape_scarce)
            self._say(d.SKIP, f"not launching {', '.join(kept)} for work that does not ask "
                              f"for {', '.join(scarce)}: kept for work that does", once=True)
        return clean or fitting

    def _open(self, shape: Shape, need: Need, count: int, purpose: str, bins: Bins,
              also_offer: Bins | None) -> int:
        remaining = count
        candidates = self._candidates(shape, need)
        while remaining > 0:
            options = [NodeOption(name, self.capacity[name],
                                  fit_count(need, self.capacity[name]), self._slots(name))
                       for name in candidates if name not in self.blocked]
            options = [option for option in options if option.slots > 0]
            if not options:
                break
            outlook = self._outlook.get(scarce_of(name for name, _ in shape))
            best = best_option(options, need, remaining, outlook)
            nodes = min(-(-remaining // best.per_node), best.slots)
            placed = min(remaining, nodes * best.per_node)
            remaining -= placed
            self._launch(best.node_type, nodes, f"{placed} x {shape_text(shape)} ({purpose})")
            scarce = self.types[best.node_type].scarce_resources
            full, rest = divmod(placed, best.per_node)
            bins.add(best.node_type, subtract(best.capacity, need, best.per_node), full,
                     RANK_NEW, scarce)
            if rest:
                bins.add(best.node_type, subtract(best.capacity, need, rest), 1, RANK_NEW,
                         scarce)
            if also_offer is not None:
                also_offer.add(best.node_type, best.capacity, nodes, RANK_NEW, scarce)
        return remaining

    def _why_unplaced(self, shape: Shape, need: Need) -> str:
        candidates = self._candidates(shape, need)
        if not candidates:
            return "only existing nodes can hold it; waiting for them to free up"
        whys = [self._why_no_slots(name) for name in candidates]
        for name in candidates:
            if name not in self.blocked:
                self._say(d.CAP, f"not launched: {self._why_no_slots(name)}", name, once=True)
        return "; ".join(whys)

    # -- 6. idle nodes ----------------------------------------------------------------------
    def _remove_idle(self) -> None:
        for name, nodes in self.current.items():
            spec = self.types[name]
            remaining = len(nodes)
            idle = sorted((node for node in nodes if self._is_idle_expired(node)),
                          key=lambda node: (node.idle_since_s, node.id))
            for node in idle:
                idle_s = self.snapshot.now_s - node.idle_since_s
                timeout_s = self.policy.idle_timeout_for(name)
                if node.id in self.touched_by_demand:
                    self._say(d.KEEP, f"kept {node.id}: pending demand needs it", name, 1,
                              node.id)
                elif node.id in self.touched_by_bundles:
                    self._say(d.KEEP, f"kept {node.id}: request_resources needs it", name, 1,
                              node.id)
                elif remaining <= spec.min_workers:
                    self._say(d.KEEP, f"kept {node.id}: min_workers {spec.min_workers}",
                              name, 1, node.id)
                else:
                    remaining -= 1
                    self._terminate(node, f"{node.id} idle for {idle_s:.0f} s "
                                          f"(idle timeout {timeout_s:.0f} s)")

    # -- 7. pacing -----------------------------------------------------------------------------
    def _pace(self) -> dict[str, int]:
        terminated = {node_id for node_id, _ in self.terminate}
        alive = [node for node in self.snapshot.nodes
                 if node.id not in terminated and node.status != NODE_FAILED]
        running = sum(1 for node in alive if node.status == NODE_RUNNING)
        pending = sum(1 for node in alive if node.is_pending)
        limit = max(MIN_PENDING_NODES, int(self.policy.upscaling_speed * running))
        budget = max(0, limit - pending)
        paced: dict[str, int] = {}
        deferred: dict[str, int] = {}
        for name, count in self.launches:
            granted = min(count, budget)
            budget -= granted
            if granted:
                paced[name] = paced.get(name, 0) + granted
            if granted < count:
                deferred[name] = deferred.get(name, 0) + count - granted
        for name, count in deferred.items():
            self._say(d.CAP, f"{count} x {name} deferred: upscaling_speed "
                             f"{self.policy.upscaling_speed:g} allows {limit} nodes pending "
                             f"at once ({pending} pending)", name, count)
        return paced

    def run(self) -> d.Plan:
        self._sort_nodes()
        self._block_types()
        self._min_workers()
        self._place_all(self.snapshot.requested_bundles, self.bundle_bins,
                        self.touched_by_bundles, "request_resources", self.demand_bins)
        self._place_all(self.snapshot.demand, self.demand_bins, self.touched_by_demand,
                        "pending demand", None)
        self._remove_idle()
        paced = self._pace()
        target = {name: count for name, count in self.launched.items() if count}
        return d.Plan(to_launch=paced, target_launch=target,
                      to_terminate=tuple(self.terminate), infeasible=tuple(self.infeasible),
                      unplaced=tuple(self.unplaced), reasons=tuple(self.reasons),
                      quarantined=tuple(self.quarantined))
