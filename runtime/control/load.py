"""The load report, on the control service (runtime.control.service): the
runtime.protocol.load.LoadReport the autoscaler reads with rpc `get_load`, built from the
node table, the demand agents and drivers report, the request_resources bundles and the
node types the monitor pushed."""
from __future__ import annotations

import time
from types import MappingProxyType

from runtime import scheduling
from runtime.protocol.load import DemandEntry, LoadReport, frozen_resources, \
    node_types_from_wire


class LoadMixin:
    """Part of ControlService (runtime.control.service)."""

    nodes: dict
    drivers: dict
    node_types: dict              # {type: resources}
    node_type_max_workers: dict   # {type: max_workers}
    request_bundles: list

    def load_report(self) -> LoadReport:
        demand: dict = {}
        for node in self.nodes.values():
            if node.alive and not node.removed:
                scheduling.add_demand(demand, node.queued_demand)
        for driver in self.drivers.values():
            scheduling.add_demand(demand, driver.pending_demand)
        now = time.time()
        return LoadReport(
            now_s=now,
            nodes=tuple(node.load(now) for node in self.nodes.values() if not node.removed),
            pending_demand=tuple(DemandEntry(frozen_resources(shape), count)
                                 for shape, count in demand.items()),
            infeasible=tuple(frozen_resources(shape) for shape in demand
                             if not self._feasible(shape)),
            request_resources=tuple(frozen_resources(b) for b in self.request_bundles),
            node_types=MappingProxyType(node_types_from_wire(
                self.node_types, self.node_type_max_workers)))

    def _feasible(self, shape_key: tuple) -> bool:
        """Some live node or node type holds the shape (fit_count, as the planner)."""
        need = tuple(shape_key)
        capacities = [node.resources_total for node in self.nodes.values() if node.alive]
        capacities += self.node_types.values()
        return any(scheduling.fit_count(need, scheduling.capacity_for(need, total)) > 0
                   for total in capacities)

    def _load(self) -> dict:
        """The load report as it goes on the wire (LoadReport.to_wire)."""
        return self.load_report().to_wire()
