"""Benchmark: memory stays flat over a long loop of tasks (objects are freed when no
reference to them is left), for small results and for large ones kept on the node.

    python3 bench/memory.py [--tasks 100000]

Prints the driver's and the node agent's resident memory every fifth of the run, the
objects the driver still holds and the node's store size. Target (issue "Runtime"): a
loop of 100,000 tasks does not grow memory without bound.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import runtime  # noqa: E402


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def agent_pid() -> int:
    """The embedded runtime's node agent, from its session's pid files."""
    from runtime.node import session
    return session.running_pids(runtime.api._embedded["session"])["agent"]


def report(label: str, done: int, started: float, agent: int) -> None:
    stats = runtime.api.node_stats("embedded") if runtime.nodes() else {}
    print(f"  {label:6} {done:>9,} tasks  driver {rss_mib(os.getpid()):6.1f} MiB  "
          f"agent {rss_mib(agent):6.1f} MiB  objects held {runtime.api.object_count():>4}  "
          f"node store {stats.get('objects', '?'):>4}  {time.monotonic() - started:6.1f} s",
          flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=100_000)
    args = parser.parse_args()
    runtime.init(num_cpus=2)

    @runtime.remote
    def small(i):
        return i

    @runtime.remote
    def large(i):
        import numpy
        return numpy.full(250_000, i, dtype=numpy.float64)   # 2 MB: kept on the node

    agent = agent_pid()
    batch = 1000
    print(f"{args.tasks:,} small tasks, in batches of {batch:,} in flight:")
    started = time.monotonic()
    report("start", 0, started, agent)
    step = max(batch, args.tasks // 5)
    for done in range(batch, args.tasks + 1, batch):
        assert sum(runtime.get([small.remote(i) for i in range(batch)])) == \
            batch * (batch - 1) // 2
        if done % step == 0:
            report("", done, started, agent)
    large_count = max(100, args.tasks // 100)
    print(f"{large_count:,} tasks with 2 MB results (stored on the node, fetched, "
          f"dropped):")
    started = time.monotonic()
    for done in range(1, large_count + 1):
        assert float(runtime.get(large.remote(done))[0]) == done
        if done % max(1, large_count // 5) == 0:
            report("", done, started, agent)
    runtime.shutdown()


if __name__ == "__main__":
    main()
