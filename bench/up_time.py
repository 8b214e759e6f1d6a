"""Benchmark: time from `corral up` to every node up-to-date, on the real sshd test hosts
(tests/testhosts.py, local provider), for 1 head + 3 workers and for 1 head + 15 workers,
with trivial setup and start commands.

    sudo python3 bench/up_time.py [--runs 3]

Each run starts from nothing (a fresh CORRAL_HOME: new cluster keys, host keys pinned on
first contact, every host claimed), times the real `corral up` CLI until it exits with
every node up-to-date, checks that, and takes the cluster down again (not timed).
Targets: 1+3 under 2 s; 1+15 at most 1.5x the 1+3 figure (bootstrap is parallel).
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.testhosts import host_network, missing_requirements  # noqa: E402

TARGET_SMALL_S = 2.0
TARGET_RATIO = 1.5


def write_config(directory: Path, network, worker_count: int) -> Path:
    import yaml
    hosts = network.all_hosts
    document = {
        "cluster_name": f"bench{worker_count}",
        "provider": {"type": "local", "head_ip": hosts[0].ip,
                     "worker_ips": [host.ip for host in hosts[1:worker_count + 1]]},
        "auth": {"ssh_user": network.ssh_user, "ssh_private_key": str(network.ssh_private_key),
                 "ssh_timeout_s": 20},
        "setup_commands": ["echo setting up > /dev/null"],
        "head_start_commands": ["echo started > $CORRAL_NODE_DIR/started"],
        "worker_start_commands": ["echo started > $CORRAL_NODE_DIR/started"],
    }
    path = directory / f"bench{worker_count}.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def corral(args: list[str], env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "launcher", *args], capture_output=True,
                          text=True, env=env, stdin=subprocess.DEVNULL, timeout=300)


def one_run(config_path: Path, node_count: int) -> float:
    env = dict(os.environ)
    env["CORRAL_HOME"] = tempfile.mkdtemp(prefix="corral-bench-home-")
    started = time.monotonic()
    up = corral(["up", "-y", str(config_path)], env)
    elapsed_s = time.monotonic() - started
    try:
        if up.returncode != 0:
            raise SystemExit(f"corral up failed ({up.returncode}):\n{up.stdout}\n{up.stderr}")
        status = corral(["status", str(config_path)], env)
        ready = status.stdout.count("up-to-date")
        if ready != node_count:
            raise SystemExit(f"only {ready} of {node_count} nodes up-to-date:\n{status.stdout}")
    finally:
        down = corral(["down", "-y", str(config_path)], env)
        if down.returncode != 0:
            print(f"warning: corral down failed:\n{down.stdout}\n{down.stderr}",
                  file=sys.stderr)
    return elapsed_s


def measure(worker_count: int, runs: int) -> list[float]:
    with tempfile.TemporaryDirectory(prefix="corral-bench-") as directory, \
            host_network(worker_count + 1) as network:
        config_path = write_config(Path(directory), network, worker_count)
        return [one_run(config_path, worker_count + 1) for _ in range(runs)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="runs per cluster size")
    args = parser.parse_args()
    reason = missing_requirements()
    if reason:
        raise SystemExit(f"cannot run: {reason}")
    figures = {}
    for worker_count in (3, 15):
        times = measure(worker_count, args.runs)
        figures[worker_count] = statistics.median(times)
        print(f"1+{worker_count:<2} corral up -> all up-to-date: median "
              f"{figures[worker_count]:.2f} s (runs: "
              f"{', '.join(f'{t:.2f}' for t in times)})", flush=True)
    ratio = figures[15] / figures[3]
    print(f"ratio 1+15 / 1+3: {ratio:.2f}x")
    print(f"targets: 1+3 < {TARGET_SMALL_S:g} s: "
          f"{'met' if figures[3] < TARGET_SMALL_S else 'MISSED'}; "
          f"ratio <= {TARGET_RATIO:g}x: {'met' if ratio <= TARGET_RATIO else 'MISSED'}")


if __name__ == "__main__":
    main()
