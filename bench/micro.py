"""Runtime microbenchmark: the cases of `ray microbenchmark`, printed as per-second
figures. `--compare-ray` runs the same cases on Ray (if installed) in the same run and
prints the ratios. Not a test: figures depend on the machine.

    python3 bench/micro.py [--duration-s 2] [--compare-ray]

Two reference figures come with it (issue 13): a raw pyzmq REQ/REP round trip on
loopback TCP between two processes, the floor any sync call is compared with; and the
CPU each runtime process (driver, node agent, task workers) spends per async no-op
task, from psutil's cpu_times of those processes.
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

RAY_REFERENCE = {  # Ray 2.60 on the project's 2-core machine (issue 3)
    "tasks sync": 287, "tasks async": 912, "actor calls sync": 834,
    "actor calls async": 2296, "put+get small": 644, "put+get 100 MB": 15,
    "wait 1,000 ready": 1972}


def measure(step, duration_s: float) -> float:
    """Calls step() until duration_s passes; step returns how many operations it did."""
    step()  # warm-up
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < duration_s:
        count += step()
    return count / (time.perf_counter() - start)


def _echo(endpoint: str, ready) -> None:
    """A REP socket that answers every message with itself, in its own process."""
    import zmq
    ctx = zmq.Context()
    sock = ctx.socket(zmq.REP)
    sock.bind(endpoint)
    ready.put(sock.last_endpoint.decode())
    while True:
        message = sock.recv()
        if message == b"stop":
            sock.send(b"")
            break
        sock.send(message)
    ctx.destroy(linger=0)


def raw_zmq_round_trip(duration_s: float) -> float:
    """Round trips per second of a small message over pyzmq REQ/REP on loopback TCP,
    with the REP in another process (as a worker is to its driver)."""
    import zmq
    spawn = multiprocessing.get_context("spawn")
    ready = spawn.Queue()
    server = spawn.Process(target=_echo, args=("tcp://127.0.0.1:*", ready), daemon=True)
    server.start()
    ctx = zmq.Context()
    sock = ctx.socket(zmq.REQ)
    sock.linger = 0
    try:
        sock.connect(ready.get(timeout=30))
        payload = b"x" * 64

        def round_trip():
            sock.send(payload)
            sock.recv()
            return 1
        return measure(round_trip, duration_s)
    finally:
        sock.send(b"stop")
        sock.poll(2000)
        ctx.destroy(linger=0)
        server.join(5)
        if server.is_alive():
            server.kill()


def cpu_per_task(api, count: int = 5000) -> dict | None:
    """CPU µs per async no-op task of the driver (this process), the node agent and the
    task workers (its children that are not actors), over `count` tasks. None when the
    runtime's processes cannot be found (not the embedded corral runtime)."""
    import psutil
    if api.__name__ != "runtime":
        return None
    from pathlib import Path
    from runtime import api as runtime_api
    from runtime.node import session
    embedded = runtime_api._embedded
    if not embedded:
        return None
    agent_pid = session.running_pids(Path(embedded["session"])).get("agent")
    if agent_pid is None:
        return None

    @api.remote
    def noop():
        return None

    api.get([noop.remote() for _ in range(200)])      # warm-up: workers started
    driver, agent = psutil.Process(), psutil.Process(agent_pid)
    workers = [child for child in agent.children()
               if "--direct" not in child.cmdline()]
    processes = {"driver": [driver], "agent": [agent], "workers": workers}

    def cpu_s() -> dict:
        return {name: sum(sum(p.cpu_times()[:2]) for p in group)
                for name, group in processes.items()}
    before = cpu_s()
    api.get([noop.remote() for _ in range(count)])
    after = cpu_s()
    return {name: (after[name] - before[name]) / count * 1e6 for name in before}


def cases(api, duration_s: float) -> dict:
    @api.remote
    def small():
        return b"ok"

    @api.remote
    class Actor:
        def small(self):
            return b"ok"

    actor = Actor.remote()
    api.get(actor.small.remote())
    big = np.zeros(100 * 1024 * 1024, dtype=np.uint8)
    ready = [api.put(i) for i in range(1000)]
    results = {}

    def tasks_sync():
        api.get(small.remote())
        return 1

    def tasks_async():
        api.get([small.remote() for _ in range(1000)])
        return 1000

    def actor_sync():
        api.get(actor.small.remote())
        return 1

    def actor_async():
        api.get([actor.small.remote() for _ in range(1000)])
        return 1000

    def put_get_small():
        api.get(api.put(b"x" * 100))
        return 1

    def put_get_big():
        api.get(api.put(big))
        return 1

    def wait_ready():
        api.wait(ready, num_returns=len(ready))
        return 1

    for name, step in [("tasks sync", tasks_sync), ("tasks async", tasks_async),
                       ("actor calls sync", actor_sync), ("actor calls async", actor_async),
                       ("put+get small", put_get_small), ("put+get 100 MB", put_get_big),
                       ("wait 1,000 ready", wait_ready)]:
        results[name] = measure(step, duration_s)
        unit = "ops/s" if name.startswith("put+get") or name.startswith("wait") else "calls/s"
        print(f"  {name:<20} {results[name]:>12,.1f} {unit}", flush=True)
    cpu = cpu_per_task(api)
    if cpu is not None:
        print("  CPU per async no-op task: " + ", ".join(
            f"{name} {value:.0f} µs" for name, value in cpu.items()), flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration-s", type=float, default=2.0)
    parser.add_argument("--num-cpus", type=int, default=2)
    parser.add_argument("--compare-ray", action="store_true")
    args = parser.parse_args()

    import runtime
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"machine: {os.cpu_count()} CPUs, load average {load} (figures drop under load)")
    raw = raw_zmq_round_trip(args.duration_s)
    print(f"raw pyzmq REQ/REP round trip (loopback TCP, two processes): {raw:,.1f}/s "
          f"= {1e6 / raw:.0f} µs", flush=True)
    print(f"corral runtime (embedded, {args.num_cpus} CPUs):")
    runtime.init(num_cpus=args.num_cpus, log_to_driver=False)
    try:
        ours = cases(runtime, args.duration_s)
    finally:
        runtime.shutdown()

    reference, label = RAY_REFERENCE, "Ray 2.60 reference figures from the issue"
    if args.compare_ray:
        try:
            import ray
        except ImportError:
            print("Ray is not installed: comparing with the issue's reference figures")
        else:
            print(f"ray {ray.__version__} ({args.num_cpus} CPUs):")
            ray.init(num_cpus=args.num_cpus, include_dashboard=False,
                     log_to_driver=False)
            try:
                reference, label = cases(ray, args.duration_s), "Ray, same run"
            finally:
                ray.shutdown()
    for name in ("tasks sync", "actor calls sync"):
        print(f"  {name}: {raw / ours[name]:.1f} raw round trips' time "
              f"({1e6 / ours[name]:.0f} µs)")
    print(f"\nratio corral / {label}:")
    for name, value in ours.items():
        target = 1.0 if "100 MB" in name else 3.0
        ratio = value / reference[name]
        mark = "ok" if ratio >= target else f"below target {target:.0f}x"
        print(f"  {name:<20} {ratio:>8.2f}x  ({mark})")


if __name__ == "__main__":
    main()
