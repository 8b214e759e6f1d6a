"""Benchmark: `corral up` of 1 head + 3 workers on hosts whose ~/.bashrc sleeps 0.3 s (as a
user's `pyenv init` or `conda init` does), next to the same cluster on bare hosts.

    sudo python3 bench/slow_shell.py [--runs 3]

sshd starts the user's shell, and bash its ~/.bashrc, for every SSH command; corral's
command session (launcher.ssh.shell) pays that once per node and connection instead of
once per host claim, tag write and bootstrap stage. Target: under 1.5 s on the slow hosts.
For comparison, the slow hosts once more with one SSH channel per command
(CORRAL_SSH_COMMAND_SESSION=0, as before the command session: 4.7 s). Runs as
bench/up_time.py does (fresh CORRAL_HOME each run, the real CLI, an untimed warm-up, down
afterwards).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import up_time  # noqa: E402  (puts the checkout on sys.path)
from launcher.ssh import shell as ssh_shell  # noqa: E402
from tests.testhosts import host_network, missing_requirements  # noqa: E402

TARGET_SLOW_RC_S = 1.5
SLOW_RC = "sleep 0.3\n"
WORKERS = 3


def measure(network, directory: Path, bashrc: str | None, runs: int) -> list[float]:
    for host in network.all_hosts:
        network.restart_host(host, bashrc=bashrc)
    config_path = up_time.write_config(directory, network, WORKERS)
    up_time.one_run(config_path, WORKERS + 1)  # warm-up: corral built and shipped
    return [up_time.one_run(config_path, WORKERS + 1) for _ in range(runs)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    reason = missing_requirements()
    if reason:
        raise SystemExit(f"cannot run: {reason}")
    try:
        with tempfile.TemporaryDirectory(prefix="corral-bench-") as directory, \
                host_network(WORKERS + 1) as network:
            figures = {}
            for name, bashrc, session in (
                    ("bare hosts", None, True),
                    ("hosts whose ~/.bashrc sleeps 0.3 s", SLOW_RC, True),
                    ("the same, one SSH channel per command", SLOW_RC, False)):
                if session:
                    os.environ.pop(ssh_shell.DISABLE_VARIABLE, None)
                else:
                    os.environ[ssh_shell.DISABLE_VARIABLE] = "0"
                times = measure(network, Path(directory), bashrc, args.runs)
                figures[name] = statistics.median(times)
                print(f"1+{WORKERS} corral up on {name}: median {figures[name]:.2f} s "
                      f"(runs: {', '.join(f'{t:.2f}' for t in times)})", flush=True)
    finally:
        os.environ.pop(ssh_shell.DISABLE_VARIABLE, None)
        up_time.remove_shared_wheelhouses()
    slow_s = figures["hosts whose ~/.bashrc sleeps 0.3 s"]
    print(f"target: slow-rc 1+{WORKERS} < {TARGET_SLOW_RC_S:g} s: "
          f"{'met' if slow_s < TARGET_SLOW_RC_S else 'MISSED'}")


if __name__ == "__main__":
    main()
