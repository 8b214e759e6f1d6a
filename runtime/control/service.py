"""The control service (one per cluster, on the head): node table, resource view, actor
directory (named actors), KV, driver table and the aggregated pending demand.

Clients (node agents, drivers) talk to it with b"rpc" messages, header
(request_id, method, kwargs), answered by b"reply" (request_id, ok, result). It pushes
b"nodes" (the node table) to drivers when it changes and b"driver_dead" to agents.

The load the autoscaler reads, `get_load` (client side: runtime.state.get_load()):

    {"now_s": float,                               # wall clock (time.time())
     "nodes": [{"node_id": str, "node_type": str|None, "address": "ip:port",
                "alive": bool,
                "draining": bool,                  # drain_nodes: no new work goes there
                "resources_total": {"CPU": 2.0, ...},
                "resources_available": {"CPU": 1.0, ...},
                "idle_since_s": float|None,        # time.time() when the node last
                                                   # became idle; None while busy
                "idle_for_s": float}],             # 0.0 while busy
     "pending_demand": [{"shape": {"CPU": 1.0}, "count": 3}, ...],  # waiting work
     "infeasible": [{"GPU": 8.0}, ...],            # shapes no live node nor node type fits
     "request_resources": [{"CPU": 1.0}, ...],     # bundles from request_resources()
     "node_types": {"type": {"CPU": 2.0}, ...}}    # from --autoscaling-config/set_node_types

Nodes removed by `drain_nodes`/`remove_nodes` (runtime.control.drain) are left out of it.

Restarts: the head's supervisor (runtime.node.supervisor) restarts a service that died, with
`--resume`: it binds the port it had and takes back the state it saved
(runtime.control.persist) after every batch of requests that changed it, before
answering them. Agents and drivers keep their sockets: they reconnect by themselves, and
an agent the service does not know registers again on its next heartbeat. A service
started under a supervisor also starts the supervisor again when that one died, so the
two cover each other (a new supervisor adopts the services that run).
"""
from __future__ import annotations

import argparse
import logging
import os
import time
from pathlib import Path

import zmq

from runtime import scheduling
from runtime.control import persist as control_persist
from runtime.protocol import frames as protocol
from runtime.control.drain import DrainMixin
from runtime.control.persist import PersistMixin
from runtime.node.keys import ClusterKeys, load_cluster_keys

log = logging.getLogger("corral.control")
DEFAULT_HEARTBEAT_TIMEOUT_S = 10.0
SUPERVISOR_CHECK_S = 1.0
# Requests that change what control_persist keeps: a batch with one of them is saved
# before its replies are sent.
DURABLE_METHODS = frozenset({
    "register_node", "register_driver", "driver_exit", "request_resources",
    "set_node_types", "register_actor", "remove_actor", "actor_up", "kv_put",
    "drain_nodes", "remove_nodes"})


class ControlService(DrainMixin, PersistMixin):
    def __init__(self, bind_address: str, keys: ClusterKeys | None,
                 heartbeat_timeout_s: float = DEFAULT_HEARTBEAT_TIMEOUT_S,
                 node_types: dict | None = None, state_file: Path | None = None,
                 cluster_key: str = ""):
        self.ctx = zmq.Context()
        self.sock = protocol.bind_router(self.ctx, bind_address, keys)
        self.port = int(self.sock.last_endpoint.decode().rsplit(":", 1)[1])
        self.heartbeat_timeout_s = heartbeat_timeout_s
        self.nodes: dict[str, dict] = {}
        self.drivers: dict[str, dict] = {}
        self.dead_drivers: list[str] = []
        self.actors: dict[str, dict] = {}        # name -> actor handle info
        # actor id -> {"node_id", "epoch", "owner", "detached"}: where each live actor
        # runs, published by its owner once it is up (epoch: restarts so far), so
        # processes holding a passed-on handle follow a restart
        self.actor_nodes: dict[bytes, dict] = {}
        self.kv: dict[str, bytes] = {}
        self.node_types: dict[str, dict] = dict(node_types or {})
        self.request_bundles: list[dict] = []
        self.removed_nodes: set[str] = set()     # dropped by drain/remove: not let back
        self.running = True
        self.state_file = Path(state_file) if state_file else None
        self.cluster_key = cluster_key
        self.dirty = False            # changed since the state file was written
        self.held_replies: list = []  # (identity, reply) sent once the change is saved
        self.save_failure: str | None = None
        # set by the head's supervisor for this process alone (not for what it starts)
        self.supervised_session = os.environ.pop("CORRAL_SUPERVISED_SESSION", None)

    # ------------------------------------------------------------------ loop
    def serve_forever(self) -> None:
        next_check = next_supervisor_check = 0.0
        while self.running:
            if self.sock.poll(200):
                while True:
                    try:
                        identity, kind, header, _ = protocol.recv(self.sock, routed=True)
                    except zmq.Again:
                        break
                    except protocol.MalformedMessageError as error:
                        log.warning("dropped: %s", error)
                    else:
                        self._handle(identity, kind, header)
                    if not self.sock.poll(0):
                        break
                self.save_state()
                self._send_held_replies()
            now = time.monotonic()
            if now >= next_check:
                self._check_liveness(now)
                self.save_state()
                next_check = now + 0.25
            if self.supervised_session and now >= next_supervisor_check and self.running:
                next_supervisor_check = now + SUPERVISOR_CHECK_S
                self._check_supervisor()
        self.save_state()
        self.sock.close()
        self.ctx.term()

    def _send_held_replies(self) -> None:
        replies, self.held_replies = self.held_replies, []
        for identity, reply in replies:
            self._send(identity, b"reply", reply)

    def _check_supervisor(self) -> None:
        """Start the head's supervisor again if it died (not while the node stops)."""
        from runtime.node import supervision
        try:
            supervision.ensure_supervisor(Path(self.supervised_session))
        except OSError as error:
            log.warning("cannot start the supervisor again: %s", error)

    def _handle(self, identity: bytes, kind: bytes, header) -> None:
        """One request. Whatever its header holds, the service goes on: a header that
        is not (request_id, method, kwargs) is logged and dropped (there is no request
        id to answer), a failing method is answered with its error."""
        if kind != b"rpc":
            log.warning("unknown message %r from %r", kind, identity)
            return
        try:
            request_id, method, kwargs = header
        except (TypeError, ValueError):
            log.warning("dropped an rpc from %r: header %.200r is not (request_id, "
                        "method, kwargs)", identity, header)
            return
        try:
            handler = getattr(self, "rpc_" + method, None) if type(method) is str \
                else None
            if handler is None:
                raise ValueError(f"unknown control method {method!r}")
            if not isinstance(kwargs, dict):
                raise TypeError(f"arguments of {method} are not a dict")
            result, ok = handler(identity, **kwargs), True
        except Exception as error:  # reported to the caller, not swallowed
            log.exception("rpc %.100r failed", method)
            result, ok = f"{type(error).__name__}: {error}", False
        if type(method) is str and method in DURABLE_METHODS:
            self.dirty = True
        self.held_replies.append((identity, (request_id, ok, result)))

    def _send(self, identity: bytes, kind: bytes, header) -> None:
        try:
            protocol.send(self.sock, kind, header, identity=identity)
        except zmq.ZMQError as error:  # peer went away; liveness check handles it
            log.info("cannot send %s to %r: %s", kind, identity, error)

    # ------------------------------------------------------------------ liveness
    def _check_liveness(self, now: float) -> None:
        for node in self.nodes.values():
            if node["alive"] and now - node["last_heartbeat"] > self.heartbeat_timeout_s:
                node["alive"], self.dirty = False, True
                log.warning("node %s missed heartbeats for %.1f s: dead",
                            node["node_id"], self.heartbeat_timeout_s)
                self._broadcast_nodes()
        self._expire_drains(now)
        for driver_id, driver in list(self.drivers.items()):
            if now - driver["last_heartbeat"] > self.heartbeat_timeout_s:
                log.warning("driver %s missed heartbeats: cleaning up", driver_id)
                self._driver_gone(driver_id)

    def _driver_gone(self, driver_id: str) -> None:
        self.dirty = True
        self.drivers.pop(driver_id, None)
        self.dead_drivers.append(driver_id)
        del self.dead_drivers[:-1000]
        for table in (self.actors, self.actor_nodes):   # by name; by actor id
            for key, info in list(table.items()):
                if info.get("owner") == driver_id and not info.get("detached"):
                    del table[key]
        for node in self.nodes.values():
            if node["alive"]:
                self._send(node["identity"], b"driver_dead", driver_id)

    def _node_table(self) -> list[dict]:
        keys = ("node_id", "node_type", "address", "ipc", "hostname", "alive",
                "draining", "resources_total")
        return [{k: n[k] for k in keys} for n in self.nodes.values()]

    def _broadcast_nodes(self) -> None:
        table = self._node_table()
        for driver in self.drivers.values():
            self._send(driver["identity"], b"nodes", table)

    # ------------------------------------------------------------------ agents
    def rpc_register_node(self, identity, node_id, node_type, address, ipc, hostname,
                          resources_total):
        if node_id in self.removed_nodes:   # terminated by the autoscaler: stays out
            return {"removed": True, "nodes": []}
        self.nodes[node_id] = {
            "node_id": node_id, "node_type": node_type, "address": address, "ipc": ipc,
            "hostname": hostname, "alive": True, "identity": identity,
            "resources_total": dict(resources_total),
            "resources_available": dict(resources_total), "idle_since_s": time.time(),
            "queued_demand": {}, "last_heartbeat": time.monotonic(),
            "draining": False, "drained_idle": False, "drain_since": 0.0, "drain_until": 0.0}
        log.info("node %s joined (%s, %s)", node_id, address, resources_total)
        self._broadcast_nodes()
        return {"nodes": self._node_table()}

    def rpc_heartbeat(self, identity, node_id, resources_available, idle_since_s,
                      queued_demand, drained_idle=False):
        node = self.nodes.get(node_id)
        if node is None or not node["alive"]:
            return {"known": False, "draining": node_id in self.removed_nodes}
        node.update(last_heartbeat=time.monotonic(), identity=identity,
                    resources_available=resources_available, idle_since_s=idle_since_s,
                    queued_demand=queued_demand,
                    drained_idle=bool(drained_idle) and node["draining"])
        return {"known": True, "draining": node["draining"], "nodes": self._node_table(),
                "dead_drivers": self.dead_drivers[-100:]}

    # ------------------------------------------------------------------ drivers
    def rpc_register_driver(self, identity, driver_id):
        self.drivers[driver_id] = {"identity": identity, "pending_demand": {},
                                   "last_heartbeat": time.monotonic()}
        return {"nodes": self._node_table()}

    def rpc_driver_heartbeat(self, identity, driver_id, pending_demand):
        driver = self.drivers.get(driver_id)
        if driver is None:       # new to this service (it restarted without its state)
            self.rpc_register_driver(identity, driver_id)
            driver, self.dirty = self.drivers[driver_id], True
        driver.update(last_heartbeat=time.monotonic(), pending_demand=pending_demand)
        return {"nodes": self._node_table()}

    def rpc_driver_exit(self, identity, driver_id):
        self._driver_gone(driver_id)
        return True

    def rpc_nodes(self, identity):
        return self._load()["nodes"]

    def rpc_get_load(self, identity):
        return self._load()

    def rpc_request_resources(self, identity, bundles):
        self.request_bundles = [dict(b) for b in bundles]
        return True

    def rpc_set_node_types(self, identity, node_types):
        self.node_types = {name: dict(res) for name, res in node_types.items()}
        return True

    # ------------------------------------------------------------------ actors and KV
    def rpc_register_actor(self, identity, name, info):
        """False when another actor has the name (the caller says so to the user)."""
        existing = self.actors.get(name)
        if existing is not None and existing["actor_id"] != info["actor_id"]:
            return False
        self.actors[name] = info
        return True

    def rpc_lookup_actor(self, identity, name):
        return self.actors.get(name)

    def rpc_remove_actor(self, identity, name, actor_id):
        if name in self.actors and self.actors[name]["actor_id"] == actor_id:
            del self.actors[name]
        self.actor_nodes.pop(actor_id, None)
        return True

    def rpc_actor_up(self, identity, actor_id, info):
        self.actor_nodes[actor_id] = info
        return True

    def rpc_actor_location(self, identity, actor_id):
        return self.actor_nodes.get(actor_id)

    def rpc_kv_put(self, identity, key, value):
        self.kv[key] = value
        return True

    def rpc_kv_get(self, identity, key):
        return self.kv.get(key)

    # ------------------------------------------------------------------ load
    def _load(self) -> dict:
        now = time.time()
        nodes, demand = [], {}
        for node in self.nodes.values():
            if node.get("removed"):
                continue
            idle = node["idle_since_s"]
            nodes.append({
                "node_id": node["node_id"], "node_type": node["node_type"],
                "address": node["address"], "alive": node["alive"],
                "draining": node["draining"],
                "resources_total": node["resources_total"],
                "resources_available": node["resources_available"],
                "idle_since_s": idle, "idle_for_s": max(0.0, now - idle) if idle else 0.0})
            if node["alive"]:
                scheduling.add_demand(demand, node["queued_demand"])
        for driver in self.drivers.values():
            scheduling.add_demand(demand, driver["pending_demand"])
        live_totals = [n["resources_total"] for n in self.nodes.values() if n["alive"]]
        shapes = live_totals + list(self.node_types.values())
        infeasible = [dict(shape) for shape in demand
                      if not any(scheduling.fits(dict(shape), t) for t in shapes)]
        return {"now_s": now, "nodes": nodes,
                "pending_demand": [{"shape": dict(s), "count": c} for s, c in demand.items()],
                "infeasible": infeasible, "request_resources": list(self.request_bundles),
                "node_types": dict(self.node_types)}


def node_types_from_config(path: str) -> dict:
    """Node types' resources from a cluster YAML (`available_node_types` or
    `node_types`: {name: {resources: {...}}}); {} when unreadable."""
    try:
        import yaml
        with open(path) as handle:
            config = yaml.safe_load(handle) or {}
    except (OSError, ImportError, ValueError) as error:
        log.warning("cannot read node types from %s: %s", path, error)
        return {}
    types = config.get("available_node_types") or config.get("node_types") or {}
    result = {}
    if isinstance(types, dict):
        for name, spec in types.items():
            resources = (spec or {}).get("resources") if isinstance(spec, dict) else None
            if isinstance(resources, dict):
                result[name] = {k: float(v) for k, v in resources.items()}
    return result


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="runtime.control.service")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--keys-dir")
    parser.add_argument("--heartbeat-timeout-s", type=float,
                        default=DEFAULT_HEARTBEAT_TIMEOUT_S)
    parser.add_argument("--autoscaling-config")
    parser.add_argument("--bind-ip")
    parser.add_argument("--port-file", required=True)
    parser.add_argument("--state-file", help="where the state is kept (default: "
                        f"{control_persist.STATE_FILE} beside the port file)")
    parser.add_argument("--resume", action="store_true",
                        help="a restart: bind the port of the port file and take back "
                        "the state file's state (a fresh start discards it)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    keys = load_cluster_keys(args.keys_dir)   # no keys, no service: MissingKeysError
    from runtime.node.session import bind_ip_for, read_json, write_json_atomic
    host = bind_ip_for(args.bind_ip)
    port_file = Path(args.port_file)
    state_file = Path(args.state_file) if args.state_file else \
        port_file.with_name(control_persist.STATE_FILE)
    port = args.port
    previous = read_json(port_file) if args.resume else None
    previous = previous if isinstance(previous, dict) else None
    if previous and isinstance(previous.get("port"), int) and previous["port"] > 0:
        port = previous["port"]       # where agents and drivers reconnect
    node_types = node_types_from_config(args.autoscaling_config) \
        if args.autoscaling_config else {}
    service = ControlService(f"tcp://{host}:{port}", keys, args.heartbeat_timeout_s,
                             node_types, state_file=state_file,
                             cluster_key=keys.public.decode("ascii"))
    if args.resume:
        service.resume()
    service.dirty = True              # a fresh start replaces an older cluster's file
    service.save_state()
    if not previous or previous.get("port") != service.port:   # (a full disk: as it was)
        write_json_atomic(port_file, {"port": service.port, "secure": True})
    log.info("control service on %s:%d (CurveZMQ)%s", host, service.port,
             " resumed" if args.resume else "")
    import signal
    signal.signal(signal.SIGTERM, lambda *_: setattr(service, "running", False))
    service.serve_forever()


if __name__ == "__main__":
    main()
