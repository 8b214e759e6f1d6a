"""Bringing a node's runtime processes up (used by `corral start` and by the embedded
runtime of init()). Processes are detached (new session, stdio to session/logs) and
tracked by pid files in the session directory, so `corral stop` stops exactly them.
The node's GPUs are found here (runtime.node.gpus) and their ids given to its agent.
Given driver_pid (this process: init()'s embedded runtime), a keeper (runtime.node.fate)
stops the node's processes and removes its directories once that driver is gone,
however it ended.
Every start removes the ipc sockets of agents that are gone (runtime.node.ipc_dirs).

Autoscaler hook: on the head, when --autoscaling-config is given and the module
`autoscaler.monitor` is importable and defines `main`, the head also starts
`python3 -m autoscaler.monitor --config PATH --address HEAD_IP:PORT` (pid file
`monitor.pid`, log `logs/monitor.log`); otherwise it logs why it skipped it.
On a head started by `corral start` (not an embedded runtime) the control service and
the monitor run under the head's supervisor (runtime.node.supervisor), which restarts them
when they die."""
from __future__ import annotations

import importlib
import json
import logging
import os
import socket
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from runtime import scheduling
from runtime.node import gpus
from runtime.node import session
from runtime.agent import store_memory
from runtime.node import fate
from runtime.node import ipc_dirs
from runtime.node import supervision
from runtime.agent import worker_bound
from runtime.errors import RuntimeStartError
from runtime.node.keys import create_cluster_keys, has_cluster_keys, load_cluster_keys

log = logging.getLogger("corral.start")
REPO_ROOT = str(Path(__file__).resolve().parents[2])


@dataclass
class StartedNode:
    node_id: str
    address: str          # HEAD_IP:PORT of the control service
    session: Path
    pids: dict
    secure: bool
    monitor: str          # "started", or why not


def _env(node_dir: Path) -> dict:
    env = dict(os.environ)
    env["CORRAL_NODE_DIR"] = str(node_dir)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO_ROOT, env.get("PYTHONPATH")) if p)
    return env


def _wait_for(path: Path, pids: dict, session_dir: Path, timeout_s: float,
              field: str | None = None) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        data = session.read_json(path)
        if data and (field is None or data.get(field)):
            return data
        dead = [name for name, pid in pids.items() if not session.is_alive(pid)]
        if dead:
            log_path = session_dir / "logs" / f"{dead[0]}.log"
            tail = log_path.read_text()[-2000:] if log_path.exists() else ""
            raise RuntimeStartError(f"runtime process {dead[0]} exited during start-up; "
                                    f"log {log_path}:\n{tail}")
        time.sleep(0.05)
    raise RuntimeStartError(f"runtime did not come up within {timeout_s} s "
                            f"(see {session_dir / 'logs'})")


def start_node(**options) -> StartedNode:
    """Start this node's runtime processes; on failure, stop whatever was started."""
    node_dir = Path(options.get("node_dir") or session.node_dir())
    running = session.running_pids(session.session_dir(node_dir))
    if running:
        raise RuntimeStartError(f"the runtime already runs on this node (pids "
                                f"{sorted(running.values())}); run `corral stop` first")
    try:
        return _start_node(**options)
    except BaseException:
        session.stop_session(session.session_dir(node_dir))
        raise


def _start_node(*, head: bool, address: str | None = None, port: int | None = None,
               num_cpus: float | None = None, num_gpus: float | None = None,
               resources: dict | None = None, node_id: str | None = None,
               node_type: str | None = None, autoscaling_config: str | None = None,
               node_dir: str | Path | None = None, node_ip: str | None = None,
               heartbeat_timeout_s: float | None = None, generate_keys: bool = True,
               max_workers: int | None = None, driver_pid: int | None = None,
               discard_node_dir: bool = False,
               wait_registered: bool = False,
               object_store_memory: int | str | None = None,
               object_spill_limit: int | str | None = None,
               timeout_s: float = 60.0) -> StartedNode:
    store_sizes = {flag: store_memory.parse_bytes(size) for flag, size in (   # ValueError
        ("--object-store-memory", object_store_memory),
        ("--object-spill-limit", object_spill_limit)) if size is not None}
    node_dir = Path(node_dir) if node_dir else session.node_dir()
    session_dir = session.session_dir(node_dir)
    session.address_file(session_dir).unlink(missing_ok=True)
    ipc_dirs.clean_stale()        # sockets of agents that are gone (killed with -9)
    env = _env(node_dir)
    keys_dir = session.keys_dir(node_dir)
    if head and generate_keys and not has_cluster_keys(keys_dir):
        create_cluster_keys(keys_dir)
    load_cluster_keys(keys_dir)   # none: MissingKeysError; not ours alone: UnsafePathError
    secure = True                 # every runtime socket is authenticated (CurveZMQ)
    env_resources = json.loads(os.environ.get("CORRAL_NODE_RESOURCES") or "{}")
    gpu_offer = _gpu_offer(num_gpus, resources, env_resources)
    total = scheduling.node_resources(num_cpus, num_gpus, resources, env_resources,
                                      os.cpu_count() or 1, gpu_offer.resources)
    node_id = node_id or os.environ.get("CORRAL_NODE_ID") or \
        f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}"
    node_type = node_type or os.environ.get("CORRAL_NODE_TYPE")
    pids = {}
    if driver_pid is not None:    # an embedded runtime: it dies with its driver
        pids["fate"] = fate.start_keeper(driver_pid, session_dir,
                                         node_dir if discard_node_dir else None, env)
    monitor = "not requested (no --autoscaling-config)" if head else "not the head"
    if head:
        port = session.DEFAULT_HEAD_PORT if port is None else port
        port_file = session_dir / "control.json"
        port_file.unlink(missing_ok=True)
        argv = ["runtime.control.service", "--port", str(port), "--port-file", str(port_file),
                "--keys-dir", str(keys_dir)]
        if heartbeat_timeout_s is not None:
            argv += ["--heartbeat-timeout-s", str(heartbeat_timeout_s)]
        head_ip = node_ip or (os.environ.get("CORRAL_HEAD_IP") if secure else None) or \
            ("127.0.0.1" if not secure else _own_ip())
        if node_ip or session.is_loopback(head_ip):
            argv += ["--bind-ip", session.bind_ip_for(head_ip)]
        if autoscaling_config:   # (the monitor tells the control service the node types)
            (session_dir / "autoscaling_config").write_text(str(autoscaling_config))
        if driver_pid is None:    # corral start: the head's supervisor runs it
            supervision.start_service(session_dir, "control", argv, env, pids,
                                      restart_args=["--resume"], covers_supervisor=True)
        else:
            pids["control"] = session.spawn_daemon(session_dir, "control", argv, env)
        port = _wait_for(port_file, pids, session_dir, timeout_s)["port"]
        address = f"{head_ip}:{port}"
        control = f"{node_ip or '127.0.0.1'}:{port}"  # the control binds node_ip if given
    else:
        if not address:
            host, head_port = os.environ.get("CORRAL_HEAD_IP"), os.environ.get(
                "CORRAL_HEAD_PORT") or str(session.DEFAULT_HEAD_PORT)
            if not host:
                raise RuntimeStartError("no head address: give --address HOST:PORT or set "
                                        "CORRAL_HEAD_IP/CORRAL_HEAD_PORT")
            address = f"{host}:{head_port}"
        control = address
    argv = ["runtime.agent.main", "--control", control, "--head-address", address,
            "--node-id", node_id, "--resources", json.dumps(total),
            "--keys-dir", str(keys_dir), "--session", str(session_dir)]
    for flag, size in store_sizes.items():   # not given: the agent reads the env's
        argv += [flag, str(size)]
    try:                          # not given: the agent reads $CORRAL_MAX_WORKERS
        worker_bound.check_environment()
    except ValueError as error:
        raise RuntimeStartError(f"${worker_bound.ENV_MAX_WORKERS}: {error}") from None
    if max_workers is not None:
        argv += ["--max-workers", str(worker_bound.parse(max_workers))]
    if node_type:
        argv += ["--node-type", node_type]
    if total.get("GPU"):
        argv += ["--gpu-ids", ",".join(gpu_offer.ids)]
    if node_ip:
        argv += ["--node-ip", node_ip]
    elif head:   # other nodes reach the head's agent where they reach the head
        argv += ["--node-ip", head_ip, "--bind-ip",
                 "127.0.0.1" if session.is_loopback(head_ip) else "0.0.0.0"]
    pids["agent"] = session.spawn_daemon(session_dir, "agent", argv, env)
    _wait_for(session.address_file(session_dir), pids, session_dir, timeout_s,
              "registered" if head or wait_registered else None)
    if head and autoscaling_config:
        monitor = _start_monitor(session_dir, autoscaling_config, address, env, pids)
    return StartedNode(node_id, address, session_dir, pids, secure, monitor)


def _gpu_offer(num_gpus: float | None, resources: dict | None,
               env_resources: dict) -> gpus.GpuOffer:
    """The GPUs this node offers: those found here, or as many as --num-gpus,
    --resources or the node type's resources say (none found: ids 0..n-1)."""
    configured = scheduling.configured("GPU", num_gpus, resources, env_resources)
    found = [] if configured is not None and configured <= 0 else gpus.detect_gpus()
    offer = gpus.offer(found, configured)
    named = {**env_resources, **(resources or {})}
    if any(name.startswith(gpus.ACCELERATOR_TYPE_PREFIX) for name in named):
        offer = gpus.GpuOffer(offer.ids, {"GPU": offer.resources.get("GPU", 0.0)})
    if found:
        log.info("GPUs found: %s; offered ids %s",
                 ", ".join(f"{g.id} {g.name}" for g in found), offer.ids)
    return offer


def _own_ip() -> str:
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return "127.0.0.1"


def _start_monitor(session_dir: Path, config: str, address: str, env: dict,
                   pids: dict) -> str:
    try:
        module = importlib.import_module("autoscaler.monitor")
    except ImportError as error:
        log.info("autoscaler monitor not started: %s", error)
        return f"not started ({error})"
    if not hasattr(module, "main"):
        log.info("autoscaler monitor not started: autoscaler.monitor has no main()")
        return "not started (autoscaler.monitor has no main)"
    argv = ["autoscaler.monitor", "--config", str(config), "--address", address]
    if "supervisor" in pids:      # restarted by the head's supervisor when it dies
        supervision.start_service(session_dir, "monitor", argv, env, pids)
    else:
        pids["monitor"] = session.spawn_daemon(session_dir, "monitor", argv, env)
    return "started"
