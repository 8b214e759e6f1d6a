"""The control service (one per cluster, on the head): node table, resource view, actor
directory (named actors), KV, driver table and the aggregated pending demand.

Clients (node agents, drivers, tools) talk to it with Kind.RPC requests, answered by
Kind.REPLY (runtime.protocol.rpc: a failure is a RemoteFailure record, an unknown method
`rpc.unknown_method`). It pushes Kind.NODES (the node table) to drivers when it changes
and Kind.DRIVER_DEAD to agents. A node agent (`register_node`) or driver
(`register_driver`) that speaks another PROTOCOL_VERSION (runtime.protocol.version;
none said: version 1) is refused with ProtocolVersionError.

The load the autoscaler reads, `get_load`, is a runtime.protocol.load.LoadReport in its
wire form (client side: runtime.state.get_load() / load_report()). Its `infeasible`
shapes are those no live node and no node type fits, judged by runtime.scheduling's
fit_count, the planner's own test. The node types are pushed by the autoscaler monitor
(`set_node_types`, from the normalised cluster config: this service reads no cluster
YAML), at its start and whenever a report lacks them (after a fresh start of this
service); until then `infeasible` is judged against the live nodes alone. Nodes
removed by `drain_nodes`/`remove_nodes` (runtime.control.drain) are left out of it.

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

from runtime.control import persist as control_persist
from runtime.control.directory import DirectoryMixin
from runtime.control.drain import DrainMixin
from runtime.control.load import LoadMixin
from runtime.control.persist import PersistMixin
from runtime.control.records import DriverEntry, NodeEntry
from runtime.node.keys import ClusterKeys, load_cluster_keys
from runtime.protocol import frames as protocol
from runtime.protocol import rpc, version
from runtime.protocol.kinds import Kind
from runtime.protocol.load import node_types_from_wire

log = logging.getLogger("corral.control")
DEFAULT_HEARTBEAT_TIMEOUT_S = 10.0
SUPERVISOR_CHECK_S = 1.0
# Requests that change what control_persist keeps: a batch with one of them is saved
# before its replies are sent.
DURABLE_METHODS = frozenset({
    "register_node", "register_driver", "driver_exit", "request_resources",
    "set_node_types", "register_actor", "remove_actor", "actor_up", "kv_put",
    "drain_nodes", "remove_nodes"})


class ControlService(DrainMixin, PersistMixin, DirectoryMixin, LoadMixin):
    def __init__(self, bind_address: str, keys: ClusterKeys | None,
                 heartbeat_timeout_s: float = DEFAULT_HEARTBEAT_TIMEOUT_S,
                 node_types: dict | None = None, state_file: Path | None = None,
                 cluster_key: str = ""):
        self.ctx = zmq.Context()
        self.sock = protocol.bind_router(self.ctx, bind_address, keys)
        self.port = int(self.sock.last_endpoint.decode().rsplit(":", 1)[1])
        self.heartbeat_timeout_s = heartbeat_timeout_s
        self.nodes: dict[str, NodeEntry] = {}
        self.drivers: dict[str, DriverEntry] = {}
        self.dead_drivers: list[str] = []
        self.actors: dict[str, dict] = {}        # name -> actor handle info
        # actor id -> {"node_id", "epoch", "owner", "detached"}: where each live actor
        # runs, published by its owner once it is up (epoch: restarts so far), so
        # processes holding a passed-on handle follow a restart
        self.actor_nodes: dict[bytes, dict] = {}
        self.kv: dict[str, bytes] = {}
        # node types the autoscaler may launch, pushed by its monitor (set_node_types):
        # {type: resources} and {type: max_workers} (when the monitor said)
        self.node_types: dict[str, dict] = {name: dict(resources) for name, resources
                                            in (node_types or {}).items()}
        self.node_type_max_workers: dict[str, int] = {}
        self.request_bundles: list[dict] = []
        self.removed_nodes: set[str] = set()     # dropped by drain/remove: not let back
        self.running = True
        self.state_file = Path(state_file) if state_file else None
        self.cluster_key = cluster_key
        self.dirty = False            # changed since the state file was written
        self.held_replies: list = []  # (identity, RpcReply) sent once the change is saved
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
            self._send(identity, Kind.REPLY, tuple(reply))   # plain data on the wire

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
        id to answer), a failing method is answered with its error as a RemoteFailure."""
        if kind != Kind.RPC:
            log.warning("unknown message %r from %r", kind, identity)
            return
        try:
            request = rpc.request_of(header)
        except ValueError as error:
            log.warning("dropped an rpc from %r: %s", identity, error)
            return
        method = request.method
        handler = getattr(self, "rpc_" + method, None) if type(method) is str else None
        try:
            if handler is None:
                reply = rpc.RpcReply(request.request_id, False,
                                     tuple(rpc.unknown_method(method)))
            elif not isinstance(request.kwargs, dict):
                raise TypeError(f"arguments of {method} are not a dict")
            else:
                reply = rpc.RpcReply(request.request_id, True,
                                     handler(identity, **request.kwargs))
        except version.ProtocolVersionError as error:    # a refusal, not a fault here
            log.error("refused: %s", error)
            reply = rpc.RpcReply(request.request_id, False,
                                 tuple(rpc.RemoteFailure.of(error)))
        except Exception as error:  # reported to the caller, not swallowed
            log.exception("rpc %.100r failed", method)
            reply = rpc.RpcReply(request.request_id, False,
                                 tuple(rpc.RemoteFailure.of(error)))
        if type(method) is str and method in DURABLE_METHODS:
            self.dirty = True
        self.held_replies.append((identity, reply))

    def _send(self, identity: bytes, kind: bytes, header) -> None:
        try:
            protocol.send(self.sock, kind, header, identity=identity)
        except zmq.ZMQError as error:  # peer went away; liveness check handles it
            log.info("cannot send %s to %r: %s", kind, identity, error)

    # ------------------------------------------------------------------ liveness
    def _check_liveness(self, now: float) -> None:
        for node in self.nodes.values():
            if node.alive and now - node.last_heartbeat > self.heartbeat_timeout_s:
                node.alive, self.dirty = False, True
                log.warning("node %s missed heartbeats for %.1f s: dead",
                            node.node_id, self.heartbeat_timeout_s)
                self._broadcast_nodes()
        self._expire_drains(now)
        for driver_id, driver in list(self.drivers.items()):
            if now - driver.last_heartbeat > self.heartbeat_timeout_s:
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
            if node.alive:
                self._send(node.identity, Kind.DRIVER_DEAD, driver_id)

    def _node_table(self) -> list[dict]:
        return [node.table_row() for node in self.nodes.values()]

    def _broadcast_nodes(self) -> None:
        table = self._node_table()
        for driver in self.drivers.values():
            self._send(driver.identity, Kind.NODES, table)

    # ------------------------------------------------------------------ agents
    def rpc_register_node(self, identity, node_id, node_type, address, ipc, hostname,
                          resources_total, protocol_version=version.MISSING_VERSION):
        version.check(protocol_version, f"the node agent of {node_id!r:.100}")
        if node_id in self.removed_nodes:   # terminated by the autoscaler: stays out
            return {"removed": True, "nodes": []}
        self.nodes[node_id] = NodeEntry(
            node_id=node_id, node_type=node_type, address=address, ipc=ipc,
            hostname=hostname, identity=identity, resources_total=dict(resources_total),
            resources_available=dict(resources_total), idle_since_s=time.time())
        log.info("node %s joined (%s, %s)", node_id, address, resources_total)
        self._broadcast_nodes()
        return {"nodes": self._node_table()}

    def rpc_heartbeat(self, identity, node_id, resources_available, idle_since_s,
                      queued_demand, drained_idle=False):
        node = self.nodes.get(node_id)
        if node is None or not node.alive:
            return {"known": False, "draining": node_id in self.removed_nodes}
        node.last_heartbeat, node.identity = time.monotonic(), identity
        node.resources_available, node.idle_since_s = resources_available, idle_since_s
        node.queued_demand = queued_demand
        node.drained_idle = bool(drained_idle) and node.draining
        return {"known": True, "draining": node.draining, "nodes": self._node_table(),
                "dead_drivers": self.dead_drivers[-100:]}

    # ------------------------------------------------------------------ drivers
    def rpc_register_driver(self, identity, driver_id,
                            protocol_version=version.MISSING_VERSION):
        version.check(protocol_version, f"the driver {driver_id!r:.100}")
        self.drivers[driver_id] = DriverEntry(identity)
        return {"nodes": self._node_table()}

    def rpc_driver_heartbeat(self, identity, driver_id, pending_demand):
        driver = self.drivers.get(driver_id)
        if driver is None:       # new to this service (it restarted without its state;
            driver = self.drivers[driver_id] = DriverEntry(identity)  # it registered
            self.dirty = True                                 # with the one before)
        driver.last_heartbeat, driver.pending_demand = time.monotonic(), pending_demand
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

    def rpc_set_node_types(self, identity, node_types, max_workers=None):
        """The node types the autoscaler may launch: {type: resources}, and {type:
        max_workers} when the caller says (runtime.protocol.load.node_types_to_wire)."""
        types = node_types_from_wire(node_types, max_workers)
        self.node_types = {name: dict(kind.resources) for name, kind in types.items()}
        self.node_type_max_workers = {name: kind.max_workers for name, kind in
                                      types.items() if kind.max_workers is not None}
        return True


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="runtime.control.service")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--keys-dir")
    parser.add_argument("--heartbeat-timeout-s", type=float,
                        default=DEFAULT_HEARTBEAT_TIMEOUT_S)
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
    service = ControlService(f"tcp://{host}:{port}", keys, args.heartbeat_timeout_s,
                             state_file=state_file,
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
