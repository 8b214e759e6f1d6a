"""Cluster state for tools (the autoscaler): the load the control service aggregates.
See runtime.control.service for the exact structure of get_load()."""
from __future__ import annotations

from runtime.control.client import ControlClient


def _call(method: str, address: str | None, keys_dir: str | None, **kwargs):
    from runtime import api
    core = api.current_core()
    if core is not None and address is None:
        return core.call_control(method, **kwargs)
    with ControlClient(address, keys_dir) as client:
        return client.call(method, **kwargs)


def get_load(address: str | None = None, keys_dir: str | None = None) -> dict:
    """Per-node resources (total/available), idle_since_s, pending demand {shape: count},
    infeasible shapes and request_resources bundles. address None = the connected
    driver's cluster, else this node's address.json ("auto") or HOST:PORT."""
    return _call("get_load", address, keys_dir)


def set_node_types(node_types: dict, address: str | None = None,
                   keys_dir: str | None = None) -> None:
    """Tell the control service the node types' resources {type: {"CPU": 2, ...}}, so
    it can report shapes no node type fits as infeasible."""
    _call("set_node_types", address, keys_dir, node_types=node_types)


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
