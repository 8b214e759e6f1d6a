"""Cluster state for tools (the autoscaler): the load the control service aggregates,
as a runtime.protocol.load.LoadReport (`load_report`) or its wire form (`get_load`)."""
from __future__ import annotations

from typing import Mapping

from runtime.control.client import ControlClient
from runtime.protocol.load import LoadReport, NodeType, frozen_resources, node_types_to_wire


def _call(method: str, address: str | None, keys_dir: str | None, **kwargs):
    from runtime import api
    core = api.current_core()
    if core is not None and address is None:
        return core.call_control(method, **kwargs)
    with ControlClient(address, keys_dir) as client:
        return client.call(method, **kwargs)


def get_load(address: str | None = None, keys_dir: str | None = None) -> dict:
    """The load report as plain data (LoadReport.to_wire: its docstring has the
    structure): per-node resources (total/available), idle_since_s, pending demand,
    infeasible shapes, request_resources bundles, node types. address None = the
    connected driver's cluster, else this node's address.json ("auto") or HOST:PORT."""
    return _call("get_load", address, keys_dir)


def load_report(address: str | None = None, keys_dir: str | None = None) -> LoadReport:
    """get_load as a LoadReport."""
    return LoadReport.from_wire(get_load(address, keys_dir))


def set_node_types(node_types: Mapping[str, Mapping | NodeType],
                   address: str | None = None, keys_dir: str | None = None) -> None:
    """Tell the control service the node types the autoscaler may launch, {type:
    {"CPU": 2, ...}} or {type: NodeType}, so it can report shapes no node type fits as
    infeasible (the autoscaler monitor does this itself)."""
    types = {name: kind if isinstance(kind, NodeType) else NodeType(frozen_resources(kind))
             for name, kind in node_types.items()}
    resources, max_workers = node_types_to_wire(types)
    _call("set_node_types", address, keys_dir, node_types=resources,
          max_workers=max_workers)


def request_resources(bundles: list[dict], address: str | None = None,
                      keys_dir: str | None = None) -> None:
    _call("request_resources", address, keys_dir, bundles=bundles)


def drain_nodes(node_ids: list[str], address: str | None = None,
                keys_dir: str | None = None) -> list[str]:
    """Mark these nodes draining (no new work is placed there); returns the ids that are
    drained and idle, which are removed from the node table at once (safe to terminate).
    See runtime.control.drain."""
    return list(_call("drain_nodes", address, keys_dir, node_ids=list(node_ids)))


def remove_nodes(node_ids: list[str], address: str | None = None,
                 keys_dir: str | None = None) -> list[str]:
    """Drop these nodes from the node table now (they were terminated); their work is
    retried elsewhere. Returns the ids that were known."""
    return list(_call("remove_nodes", address, keys_dir, node_ids=list(node_ids)))
