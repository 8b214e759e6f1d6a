"""Benchmark: corral shipping itself to stock VMs. On 1 head + 3 fresh test hosts
(tests/hostnet.py fresh mode: empty home, only /usr/bin/python3, no corral) with a
`local` config and no setup_commands:

  - the first `corral up`, from an empty wheelhouse cache (a new CORRAL_HOME): building
    the wheelhouse, uploading it to every node, installing it offline there, starting
    the runtime; target under 20 s;
  - a second `corral up` with nothing changed (nothing is shipped); target under 2 s;
  - the wheelhouse's size, and per node the upload and install times (as `up` reports
    them).

    sudo python3 bench/ship_time.py [--runs 3]

Between runs the hosts are reset to fresh (processes killed, home and /tmp wiped) and
the cluster is taken down (not timed). corral runs from a copy of this checkout made at
the start, so edits in the checkout meanwhile do not count as a new corral.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.hostnet import fresh_problem, host_network, missing_requirements  # noqa: E402
from tests.integration.test_ship_fresh import copy_of_corral  # noqa: E402

TARGET_FIRST_S = 20.0
TARGET_SECOND_S = 2.0
SHIPPED = re.compile(r"shipped: ([0-9.]+) MB in ([0-9.]+) s, installed in ([0-9.]+) s")


def write_config(directory: Path, network) -> Path:
    import yaml
    hosts = network.hosts
    path = directory / "ship-bench.yaml"
    path.write_text(yaml.safe_dump({
        "cluster_name": "ship-bench",
        "provider": {"type": "local", "head_ip": hosts[0].ip,
                     "worker_ips": [host.ip for host in hosts[1:4]]},
        "auth": {"ssh_user": network.ssh_user,
                 "ssh_private_key": str(network.ssh_private_key), "ssh_timeout_s": 20},
    }, sort_keys=False))
    return path


def corral(args: list[str], env: dict, source: Path) -> subprocess.CompletedProcess:
    """The corral CLI of the copy at `source`."""
    return subprocess.run([sys.executable, "-m", "launcher", *args], capture_output=True,
                          text=True, env=env, stdin=subprocess.DEVNULL, timeout=600,
                          cwd=source)


def timed_up(config_path: Path, env: dict, source: Path) -> tuple[float, str]:
    started = time.monotonic()
    up = corral(["up", "-y", str(config_path)], env, source)
    elapsed_s = time.monotonic() - started
    if up.returncode != 0:
        raise SystemExit(f"corral up failed ({up.returncode}):\n{up.stdout}\n{up.stderr}")
    return elapsed_s, up.stdout


def wheelhouse_size_bytes(corral_home: Path) -> tuple[int, int]:
    """(bytes, wheel count) of the wheelhouse(s) built into this CORRAL_HOME."""
    total = count = 0
    for manifest in (corral_home / "wheelhouses").glob("*/manifest.json"):
        wheels = json.loads(manifest.read_text())["wheels"]
        total += sum(wheel["size_bytes"] for wheel in wheels)
        count += len(wheels)
    return total, count


def one_run(network, config_path: Path, source: Path) -> dict:
    for host in network.hosts:
        problem = fresh_problem(host)
        if problem:
            raise SystemExit(f"{host.name} is not fresh: {problem}")
    env = dict(os.environ)
    home = Path(tempfile.mkdtemp(prefix="corral-ship-bench-"))
    env["CORRAL_HOME"] = str(home)
    try:
        first_s, output = timed_up(config_path, env, source)
        shipped = [tuple(map(float, match)) for match in SHIPPED.findall(output)]
        if len(shipped) != 4:
            raise SystemExit(f"expected 4 nodes shipped, the output says:\n{output}")
        second_s, again = timed_up(config_path, env, source)
        if "nothing changed" not in again:
            raise SystemExit(f"the second up did something:\n{again}")
        size_bytes, wheel_count = wheelhouse_size_bytes(home)
        return {"first_s": first_s, "second_s": second_s, "size_bytes": size_bytes,
                "wheels": wheel_count, "upload_s": [item[1] for item in shipped],
                "install_s": [item[2] for item in shipped]}
    finally:
        down = corral(["down", "-y", str(config_path)], env, source)
        if down.returncode != 0:
            print(f"warning: corral down failed:\n{down.stdout}\n{down.stderr}",
                  file=sys.stderr)
        shutil.rmtree(home, ignore_errors=True)
        network.reset_hosts()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    reason = missing_requirements()
    if reason:
        raise SystemExit(f"cannot run: {reason}")
    with tempfile.TemporaryDirectory(prefix="corral-bench-") as directory, \
            host_network(4, fresh=True) as network:
        config_path = write_config(Path(directory), network)
        source = copy_of_corral(Path(directory) / "corral-src")
        runs = [one_run(network, config_path, source) for _ in range(args.runs)]
    first = [run["first_s"] for run in runs]
    second = [run["second_s"] for run in runs]
    uploads = [value for run in runs for value in run["upload_s"]]
    installs = [value for run in runs for value in run["install_s"]]
    first_median, second_median = statistics.median(first), statistics.median(second)
    print(f"first up, 1+3 fresh hosts, empty wheelhouse cache: median {first_median:.2f} s "
          f"(runs: {', '.join(f'{t:.2f}' for t in first)}); target < {TARGET_FIRST_S:g} s: "
          f"{'met' if first_median < TARGET_FIRST_S else 'MISSED'}")
    print(f"second up, nothing changed: median {second_median:.2f} s (runs: "
          f"{', '.join(f'{t:.2f}' for t in second)}); target < {TARGET_SECOND_S:g} s: "
          f"{'met' if second_median < TARGET_SECOND_S else 'MISSED'}")
    print(f"wheelhouse: {runs[0]['size_bytes'] / 1e6:.1f} MB in {runs[0]['wheels']} wheels")
    print(f"per node: upload median {statistics.median(uploads):.2f} s "
          f"(max {max(uploads):.2f}), install median {statistics.median(installs):.2f} s "
          f"(max {max(installs):.2f}); 4 nodes shipping at once")


if __name__ == "__main__":
    main()
