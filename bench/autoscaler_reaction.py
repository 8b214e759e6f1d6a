"""Autoscaler reaction time on the `process` provider: from a task queued that no node can
run to the planner deciding the launch (the provider's create call follows at once), and
to the new worker running the task. Ray's monitor polls every 5 s.

    python3 bench/autoscaler_reaction.py [--rounds 3]

Brings up a throwaway process cluster under a temporary CORRAL_HOME (head with 0 CPUs,
one-CPU workers with a 3 s idle timeout), runs one task per round through `corral exec`,
reads the head's autoscaler event log, and takes the cluster down. Figures only.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

JOB = """
import time, runtime
runtime.init(address="auto")

@runtime.remote(num_cpus=1)
def ping():
    return time.time()

submitted = time.time()
ran = runtime.get(ping.remote(), timeout=120)
print("TIMES", submitted, ran)
"""


def corral(home: str, *args: str, timeout_s: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "CORRAL_HOME": home}
    return subprocess.run([sys.executable, "-m", "launcher", *args], capture_output=True,
                          text=True, timeout=timeout_s, env=env, stdin=subprocess.DEVNULL)


def events(home: str, name: str) -> list[dict]:
    nodes = Path(home) / "clusters" / name / "nodes"
    (head,) = [path for path in nodes.iterdir() if "-head-" in path.name]
    path = head / "session" / "autoscaler.events"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def workers_alive(home: str, name: str) -> int:
    count = 0
    for path in (Path(home) / "clusters" / name / "nodes").iterdir():
        record = path / "node.json"
        if "-worker-" in path.name and record.exists() and \
                json.loads(record.read_text()).get("state") == "running":
            count += 1
    return count


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="corral-reaction-") as home:
        name = "reaction"
        config = Path(home) / "cluster.yaml"
        config.write_text(yaml.safe_dump({
            "cluster_name": name, "max_workers": 2, "provider": {"type": "process"},
            "available_node_types": {
                "head": {"resources": {"CPU": 0}, "min_workers": 0, "max_workers": 0},
                "cpu1": {"resources": {"CPU": 1}, "min_workers": 0, "max_workers": 2,
                         "idle_timeout_s": 3}},
            "head_node_type": "head"}))
        script = Path(home) / "job.py"
        script.write_text(JOB)
        up = corral(home, "up", "-y", str(config))
        if up.returncode != 0:
            sys.exit(f"corral up failed:\n{up.stdout}{up.stderr}")
        try:
            for round_number in range(1, args.rounds + 1):
                seen = len(events(home, name))
                job = corral(home, "exec", str(config), f"{sys.executable} {script}")
                line = next((line for line in job.stdout.splitlines()
                             if line.startswith("TIMES")), None)
                if job.returncode != 0 or line is None:
                    sys.exit(f"job failed:\n{job.stdout}{job.stderr}")
                submitted, ran = (float(value) for value in line.split()[1:])
                new = events(home, name)[seen:]
                decided = next(event["at_s"] for event in new if event["kind"] == "launch")
                launched = next(event["at_s"] for event in new if event["kind"] == "launched")
                print(f"round {round_number}: queued -> launch decided "
                      f"{(decided - submitted) * 1000:6.0f} ms, -> create returned "
                      f"{(launched - submitted) * 1000:6.0f} ms, -> task ran on the new "
                      f"worker {(ran - submitted):5.2f} s")
                deadline = time.monotonic() + 60
                while workers_alive(home, name) and time.monotonic() < deadline:
                    time.sleep(0.5)
        finally:
            corral(home, "down", "-y", str(config))


if __name__ == "__main__":
    main()
