"""Entry point of a node agent process (`python3 -m runtime.agent.main ...`), started detached
by `corral start`. Writes the node's address.json once the agent is listening."""
from __future__ import annotations

import argparse
import json
import logging
import signal
import socket

from runtime.node import ipc_dirs
from runtime.agent import worker_bound
from runtime.agent.service import NodeAgent
from runtime.node.keys import load_cluster_keys
from runtime.node.session import address_file, bind_ip_for, write_json_atomic
from runtime.agent.spill import open_store
from pathlib import Path


def local_ip_towards(host: str) -> str:
    """The address of this machine's interface that routes to `host` (UDP connect sends
    nothing)."""
    if host in ("127.0.0.1", "localhost"):
        return "127.0.0.1"
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.connect((host, 9))
        return probe.getsockname()[0]
    except OSError:
        return "127.0.0.1"
    finally:
        probe.close()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="runtime.agent.main")
    parser.add_argument("--control", required=True, help="HOST:PORT of the control service")
    parser.add_argument("--head-address", required=True, help="address others should use")
    parser.add_argument("--node-id", required=True)
    parser.add_argument("--node-type")
    parser.add_argument("--resources", required=True, help="JSON of the node's resources")
    parser.add_argument("--keys-dir")
    parser.add_argument("--session", required=True)
    parser.add_argument("--node-ip")
    parser.add_argument("--gpu-ids", help="comma-separated ids of the GPUs the node "
                        "offers (runtime.node.gpus); default 0..GPU-1")
    parser.add_argument("--bind-ip", help="listen address (default: --node-ip, "
                        "127.0.0.1 if that is loopback, else every interface)")
    parser.add_argument("--max-workers", type=worker_bound.parse,
                        help="worker processes at most (runtime.agent.worker_bound: default "
                        "$CORRAL_MAX_WORKERS, else derived from available memory)")
    parser.add_argument("--object-store-memory", help="bytes of objects kept in memory "
                        "(runtime.agent.store_memory: default $CORRAL_OBJECT_STORE_MEMORY, "
                        "else 30%% of the node's memory); more spill to disk")
    parser.add_argument("--object-spill-limit", help="bytes of spilled objects on disk "
                        "(default $CORRAL_OBJECT_SPILL_LIMIT, else the disk's room)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    keys = load_cluster_keys(args.keys_dir)   # no keys, no agent: MissingKeysError
    control_host = args.control.rsplit(":", 1)[0]
    node_ip = args.node_ip or local_ip_towards(control_host)
    if args.bind_ip:
        bind_ip = args.bind_ip
    else:
        bind_ip = bind_ip_for(node_ip)
    agent = NodeAgent(args.node_id, args.node_type, args.control, keys,
                      json.loads(args.resources), node_ip, bind_ip,
                      ipc_dirs.create_and_claim(args.session),  # before anything binds
                      gpu_ids=args.gpu_ids.split(",") if args.gpu_ids else None,
                      store=open_store(args.node_id, args.session, args.object_store_memory,
                                       args.object_spill_limit))
    def write_address(registered: bool) -> None:
        write_json_atomic(address_file(Path(args.session)), {
            "address": args.head_address, "node_id": args.node_id,
            "agent_ipc": agent.local_endpoint, "agent_address": agent.address,
            "secure": True, "keys_dir": args.keys_dir,
            "registered": registered})
    write_address(False)
    agent.on_registered = lambda: write_address(True)
    signal.signal(signal.SIGTERM, lambda *_: setattr(agent, "running", False))
    logging.getLogger("corral.agent").info("node %s agent on %s (%s)", args.node_id,
                                           agent.address, agent.total)
    agent.set_worker_bound(worker_bound.for_node(agent.total, args.max_workers))
    try:
        agent.serve_forever()
    finally:    # its sockets and its workers' (the workers died with it) go too
        ipc_dirs.remove_dir(agent.ipc_dir)
    if agent.refused is not None:    # another corral version on the head
        raise SystemExit(f"node agent not started: {agent.refused}")


if __name__ == "__main__":
    main()
