"""`python3 -m runtime.demo`: connect to this node's cluster (runtime.init("auto")), run
20 tasks and an actor across it, and print which nodes ran them."""
from __future__ import annotations

import collections
import os
import socket
import time

import runtime


@runtime.remote
def square(x):
    time.sleep(0.05)
    return x * x, os.environ.get("CORRAL_NODE_ID", socket.gethostname())


@runtime.remote
class Tally:
    def __init__(self):
        self.seen = collections.Counter()

    def add(self, node):
        self.seen[node] += 1
        return sum(self.seen.values())

    def where(self):
        return os.environ.get("CORRAL_NODE_ID", socket.gethostname()), dict(self.seen)


def main() -> None:
    runtime.init(address="auto")
    try:
        print(f"cluster resources: {runtime.cluster_resources()}")
        results = runtime.get([square.remote(i) for i in range(20)])
        tally = Tally.remote()
        runtime.get([tally.add.remote(node) for _, node in results])
        actor_node, per_node = runtime.get(tally.where.remote())
        print("tasks per node:", ", ".join(f"{n}={c}" for n, c in sorted(per_node.items())))
        print(f"actor ran on: {actor_node}")
        print(f"sum of squares 0..19 = {sum(v for v, _ in results)}")
    finally:
        runtime.shutdown()


if __name__ == "__main__":
    main()
