"""Recovery from a killed control service: how long from `kill -9` of the head's control
service until the cluster works again, i.e. a new driver connects (registers with the
control service) and a task round trip succeeds. Each kill is on a fresh head (a head
and one worker node on loopback, started like `corral start`), so every figure is a
first kill: later kills within a minute wait longer on purpose (the supervisor's
backoff doubles, runtime.node.supervisor). Also: how long the control service takes to save
its state (runtime.control.persist) for a cluster of a given size, which it does after
each batch of requests that changed it. Not a test: figures depend on the machine.

    python3 bench/recovery.py [--kills 10] [--nodes 100 --actors 1000]
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import runtime  # noqa: E402
from runtime.control import persist as control_persist  # noqa: E402
from runtime.node import session
from runtime.errors import RuntimeConnectionError  # noqa: E402
from runtime.node.startup import start_node  # noqa: E402


@runtime.remote(max_retries=3)
def echo(value):
    return value


def one_kill(base: Path) -> dict:
    """Start a head and a worker, kill -9 the control service, time the recovery."""
    head = start_node(head=True, port=0, num_cpus=1, node_id="head",
                      node_dir=base / "head", node_ip="127.0.0.1")
    shutil.copytree(base / "head" / "keys", base / "worker" / "keys")
    worker = start_node(head=False, address=head.address, num_cpus=1, node_id="worker",
                        node_dir=base / "worker", node_ip="127.0.0.1",
                        wait_registered=True)
    keys = str(base / "head" / "keys")
    try:
        old_pid = session.running_pids(head.session)["control"]
        os.kill(old_pid, signal.SIGKILL)
        killed = time.perf_counter()
        while session.running_pids(head.session).get("control") in (None, old_pid):
            time.sleep(0.002)
        restarted = time.perf_counter()
        while True:
            try:
                runtime.init(address=head.address, keys_dir=keys)
                break
            except RuntimeConnectionError:
                time.sleep(0.01)
        try:
            assert runtime.get(echo.remote("ok"), timeout=60) == "ok"
            working = time.perf_counter()
        finally:
            runtime.shutdown()
        return {"restarted_s": restarted - killed, "working_s": working - killed}
    finally:
        session.stop_session(worker.session)
        session.stop_session(head.session)


class _Service:
    """What control_persist.snapshot reads of a ControlService, filled to a size."""

    def __init__(self, nodes: int, actors: int):
        self.nodes = {f"node-{i}": {
            "node_id": f"node-{i}", "node_type": "cpu4", "address": f"10.0.{i // 250}."
            f"{i % 250}:41234", "ipc": f"ipc:///tmp/corral-ipc-0/{i:012x}/agent",
            "hostname": f"host-{i}", "alive": True, "identity": os.urandom(21),
            "resources_total": {"CPU": 4.0, "memory": 16e9}, "draining": False}
            for i in range(nodes)}
        self.drivers = {os.urandom(8).hex(): {"identity": os.urandom(17)}
                        for _ in range(10)}
        self.dead_drivers = [os.urandom(8).hex() for _ in range(100)]
        self.actor_nodes = {os.urandom(16): {
            "state": "up", "node_id": f"node-{i % max(1, nodes)}", "epoch": 0,
            "owner": "d" * 16, "detached": False} for i in range(actors)}
        self.actors = {f"actor-{i}": {"actor_id": actor_id, "node_id": "node-0",
                                      "owner": "d" * 16, "detached": True,
                                      "class_name": "Counter", "epoch": 0}
                       for i, actor_id in enumerate(list(self.actor_nodes)[:actors // 10])}
        self.kv, self.node_types = {}, {"cpu4": {"CPU": 4.0}}
        self.request_bundles, self.removed_nodes = [], set()


def save_cost(nodes: int, actors: int, directory: Path, rounds: int = 20) -> dict:
    service = _Service(nodes, actors)
    path = directory / control_persist.STATE_FILE
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        control_persist.save(service, path, "key")
        times.append(time.perf_counter() - started)
    started = time.perf_counter()
    control_persist.restore(_Service(0, 0), control_persist.load(path, "key"))
    return {"save_s": statistics.median(times), "restore_s": time.perf_counter() - started,
            "size_bytes": path.stat().st_size}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--nodes", type=int, default=100)
    parser.add_argument("--actors", type=int, default=1000)
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="corral-recovery-") as tmp:
        for index in range(args.kills):
            results.append(one_kill(Path(tmp) / f"run{index}"))
        cost = save_cost(args.nodes, args.actors, Path(tmp))
    for key, what in (("restarted_s", "kill -9 -> new control service running"),
                      ("working_s", "kill -9 -> new driver connected + task round trip")):
        values = sorted(result[key] for result in results)
        print(f"{what}: median {statistics.median(values) * 1000:.0f} ms "
              f"(min {values[0] * 1000:.0f}, max {values[-1] * 1000:.0f}; "
              f"{len(values)} kills)")
    print("  (the supervisor waits 0.5 s before a first restart; it sees an exit within "
          "0.1 s)")
    print(f"state save with {args.nodes} nodes, {args.actors} actors: "
          f"{cost['save_s'] * 1000:.2f} ms median, file {cost['size_bytes'] / 1024:.0f} KiB;"
          f" restore {cost['restore_s'] * 1000:.1f} ms")


if __name__ == "__main__":
    main()
