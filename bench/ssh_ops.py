"""Benchmark the SSH layer on real sshd test hosts (needs root): prints figures, asserts nothing.

    python3 bench/ssh_ops.py [--hosts 16]

Figures: time to create the test hosts; connecting to every host at once (wait_ready, cold
pool); one command per host at once; sequential command latency on a pooled connection;
`put` of a 200-file tree (first copy, then unchanged) and `get` of it back.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from launcher.ssh import pool as ssh_pool  # noqa: E402
from launcher.ssh.runner import SSHRunner  # noqa: E402
from tests.hostnet import host_network  # noqa: E402


def timed(function) -> float:
    started = time.monotonic()
    function()
    return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=16)
    args = parser.parse_args()
    os.environ["CORRAL_HOME"] = tempfile.mkdtemp(prefix="corral-bench-")
    try:
        measure(args.hosts)
    finally:  # the pinned host keys and pooled connections go with the run
        ssh_pool.close_all()
        shutil.rmtree(os.environ["CORRAL_HOME"], ignore_errors=True)


def measure(host_count: int) -> None:
    started = time.monotonic()
    with host_network(host_count) as network:
        print(f"create {host_count} test hosts: {time.monotonic() - started:.2f} s")
        for count in sorted({min(4, host_count), host_count}):
            ssh_pool.close_all()
            runners = [SSHRunner(host.ip, user=network.ssh_user, cluster_name=f"b{count}",
                                 private_key_path=network.ssh_private_key)
                       for host in network.all_hosts[:count]]
            with ThreadPoolExecutor(count) as pool:
                connect_s = timed(lambda: list(pool.map(lambda r: r.wait_ready(10), runners)))
                run_s = timed(lambda: list(pool.map(lambda r: r.run("true"), runners)))
            print(f"{count:2d} hosts: connect all {connect_s * 1000:.0f} ms, "
                  f"one command on each {run_s * 1000:.0f} ms")
        runner = runners[0]
        latencies = [timed(lambda: runner.run("true")) for _ in range(30)]
        print(f"command latency (pooled): median {statistics.median(latencies) * 1000:.1f} ms")
        with tempfile.TemporaryDirectory() as tree, tempfile.TemporaryDirectory() as back_dir:
            for index in range(200):
                sub = Path(tree, f"d{index % 10}")
                sub.mkdir(exist_ok=True)
                (sub / f"f{index}.py").write_text(f"value = {index}\n" * 50)
            first = timed(lambda: runner.put(tree, "/tmp/bench-tree"))
            again = timed(lambda: runner.put(tree, "/tmp/bench-tree"))
            back = timed(lambda: runner.get("/tmp/bench-tree", back_dir))
            print(f"put 200 files: first {first * 1000:.0f} ms, unchanged {again * 1000:.0f} ms;"
                  f" get back {back * 1000:.0f} ms")
        ssh_pool.close_all()


if __name__ == "__main__":
    main()
