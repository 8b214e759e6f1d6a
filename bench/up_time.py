"""Benchmark: time from `corral up` to every node up-to-date, on the real sshd test hosts
(tests/testhosts.py, local provider), for 1 head + 3 workers and for 1 head + 15 workers,
with trivial setup and start commands.

    sudo python3 bench/up_time.py [--runs 3]

Each run starts from nothing (a fresh CORRAL_HOME: new cluster keys, host keys pinned on
first contact, every host claimed), times the real `corral up` CLI until it exits with
every node up-to-date, checks that, and takes the cluster down again (not timed). corral
itself is already shipped: an untimed warm-up `up` per cluster size builds the wheelhouse
(kept for every run of the bench) and installs it on the hosts, which share this
machine's home; shipping to stock VMs is measured by bench/ship_time.py.
Targets: 1+3 under 2 s; 1+15 at most 1.5x the 1+3 figure (bootstrap is parallel).

Then, with the runtime's default start commands (`corral start`), the time from `corral
up` until every node of a 1+3 cluster is registered with the head's runtime (polled from
here with the cluster keys); target under 5 s. `--no-runtime` skips that part.
"""
from __future__ import annotations

import argparse
import os
import shutil
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


TARGET_RUNTIME_S = 5.0
RUNTIME_PORT = 6390  # the runtime's default head port (local provider)
RUNTIME_WAIT_S = 60.0

_POLL_REGISTERED = """
import sys, time, runtime
deadline = time.monotonic() + {wait_s}
runtime.init(address="{address}", keys_dir="{keys_dir}")
alive = []
while time.monotonic() < deadline:
    alive = [node for node in runtime.nodes() if node["alive"]]
    if len(alive) >= {count}:
        break
    time.sleep(0.02)
print(len(alive), time.monotonic())
"""


def write_config(directory: Path, network, worker_count: int,
                 runtime_start: bool = False) -> Path:
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
    if runtime_start:  # the defaults: `corral start` (head) / `corral start` (workers)
        del document["head_start_commands"], document["worker_start_commands"]
    path = directory / f"bench{worker_count}{'-runtime' if runtime_start else ''}.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def corral(args: list[str], env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "launcher", *args], capture_output=True,
                          text=True, env=env, stdin=subprocess.DEVNULL, timeout=300)


def _down_and_clean(config_path: Path, env: dict) -> None:
    """Take the cluster down (even after a failed or timed-out `up`), then remove the
    temporary CORRAL_HOME, which holds the cluster's keys."""
    try:
        down = corral(["down", "-y", str(config_path)], env)
        if down.returncode != 0:
            print(f"warning: corral down failed:\n{down.stdout}\n{down.stderr}",
                  file=sys.stderr)
    except subprocess.TimeoutExpired:
        print("warning: corral down timed out", file=sys.stderr)
    finally:
        shutil.rmtree(env["CORRAL_HOME"], ignore_errors=True)  # the shared cache stays


_WHEELHOUSES: list[Path] = []  # the bench's wheelhouse cache, made on first use


def shared_wheelhouses() -> Path:
    if not _WHEELHOUSES:
        _WHEELHOUSES.append(Path(tempfile.mkdtemp(prefix="corral-bench-wheelhouses-")))
    return _WHEELHOUSES[0]


def remove_shared_wheelhouses() -> None:
    while _WHEELHOUSES:
        shutil.rmtree(_WHEELHOUSES.pop(), ignore_errors=True)


def bench_env() -> dict:
    """This process's environment with a new CORRAL_HOME and the bench's one wheelhouse
    cache (CORRAL_WHEELHOUSE_CACHE), so runs after the first find it built."""
    env = dict(os.environ)
    env["CORRAL_HOME"] = tempfile.mkdtemp(prefix="corral-bench-home-")
    env["CORRAL_WHEELHOUSE_CACHE"] = str(shared_wheelhouses())
    return env


def one_run(config_path: Path, node_count: int) -> float:
    env = bench_env()
    try:
        started = time.monotonic()
        up = corral(["up", "-y", str(config_path)], env)
        elapsed_s = time.monotonic() - started
        if up.returncode != 0:
            raise SystemExit(f"corral up failed ({up.returncode}):\n{up.stdout}\n{up.stderr}")
        status = corral(["status", str(config_path)], env)
        ready = status.stdout.count("up-to-date")
        if ready != node_count:
            raise SystemExit(f"only {ready} of {node_count} nodes up-to-date:\n{status.stdout}")
    finally:
        _down_and_clean(config_path, env)
    return elapsed_s


def one_runtime_run(config_path: Path, head_ip: str, node_count: int) -> float:
    """Seconds from `corral up` until every node is registered with the head's runtime."""
    env = bench_env()
    keys_dir = Path(env["CORRAL_HOME"]) / "clusters" / config_path.stem.split("-")[0] / "keys"
    started = time.monotonic()
    try:
        up = corral(["up", "-y", str(config_path)], env)
        if up.returncode != 0:
            raise SystemExit(f"corral up failed ({up.returncode}):\n{up.stdout}\n{up.stderr}")
        code = _POLL_REGISTERED.format(wait_s=RUNTIME_WAIT_S, address=f"{head_ip}:{RUNTIME_PORT}",
                                       keys_dir=keys_dir, count=node_count)
        poll = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              env=env, timeout=RUNTIME_WAIT_S + 30)
        fields = poll.stdout.split()
        if poll.returncode != 0 or len(fields) != 2 or int(fields[0]) < node_count:
            raise SystemExit(f"the runtime did not register {node_count} nodes:\n"
                             f"{poll.stdout}\n{poll.stderr[-2000:]}")
        return float(fields[1]) - started
    finally:
        _down_and_clean(config_path, env)


def measure_runtime(worker_count: int, runs: int) -> list[float]:
    with tempfile.TemporaryDirectory(prefix="corral-bench-") as directory, \
            host_network(worker_count + 1) as network:
        config_path = write_config(Path(directory), network, worker_count, runtime_start=True)
        head_ip = network.all_hosts[0].ip
        one_runtime_run(config_path, head_ip, worker_count + 1)  # warm-up, as in measure
        return [one_runtime_run(config_path, head_ip, worker_count + 1) for _ in range(runs)]


def measure(worker_count: int, runs: int) -> list[float]:
    with tempfile.TemporaryDirectory(prefix="corral-bench-") as directory, \
            host_network(worker_count + 1) as network:
        config_path = write_config(Path(directory), network, worker_count)
        one_run(config_path, worker_count + 1)  # warm-up: wheelhouse built, corral shipped
        return [one_run(config_path, worker_count + 1) for _ in range(runs)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="runs per cluster size")
    parser.add_argument("--no-runtime", action="store_true",
                        help="skip the time-until-registered-with-the-runtime figure")
    args = parser.parse_args()
    reason = missing_requirements()
    if reason:
        raise SystemExit(f"cannot run: {reason}")
    try:
        report(args)
    finally:
        remove_shared_wheelhouses()


def report(args) -> None:
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
    if not args.no_runtime:
        times = measure_runtime(3, args.runs)
        median_s = statistics.median(times)
        print(f"1+3  corral up -> every node registered with the runtime: median "
              f"{median_s:.2f} s (runs: {', '.join(f'{t:.2f}' for t in times)}); "
              f"target < {TARGET_RUNTIME_S:g} s: "
              f"{'met' if median_s < TARGET_RUNTIME_S else 'MISSED'}")


if __name__ == "__main__":
    main()
