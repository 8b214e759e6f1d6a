"""How many worker processes a node agent may run at once.

Actors take no CPU by default, so nothing else bounds them: each is a process of about
25 MB (RSS; 14 MB of it its own), and 10,000 actors would need some 250 GB. The bound:

    --max-workers N of `corral start`, else $CORRAL_MAX_WORKERS, else
    MEMORY_FRACTION of the memory available when the agent starts (the smaller of the
    machine's and its cgroup's) / WORKER_ESTIMATE_BYTES,

never below the node's task-worker pool + 1 (`reserved`: tasks always have workers, and
at least one actor can run), and a derived bound never below MIN_WORKERS. An actor that
would exceed it does not start: the agent hands its creation back to its driver, which
places it on a node with room or keeps it waiting, explains why, and counts it as
pending demand for the autoscaler (runtime.agent.bound, runtime.driver.bound).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import psutil

ENV_MAX_WORKERS = "CORRAL_MAX_WORKERS"
WORKER_ESTIMATE_BYTES = 64 << 20   # a worker's ~25 MB, and room for what it holds
MEMORY_FRACTION = 0.5              # the rest: the object store (30 %), the system
MIN_WORKERS = 4
CGROUP_V2 = "/sys/fs/cgroup"


@dataclass(frozen=True)
class WorkerBound:
    limit: int            # worker processes at most (task workers and actors)
    reserved: int         # task workers always allowed (the pool's size)
    source: str           # where the limit comes from, for the explanation
    estimate_bytes: int = WORKER_ESTIMATE_BYTES

    def notice(self) -> dict:
        """What an agent tells a driver whose actor it turned away."""
        return {"worker_bound": self.limit, "source": self.source,
                "estimate_bytes": self.estimate_bytes}


def parse(value) -> int:
    """A positive number of worker processes; ValueError otherwise."""
    try:
        number = int(str(value).strip())
    except ValueError:
        raise ValueError(f"{value!r} is not a number of worker processes") from None
    if number < 1:
        raise ValueError(f"{value!r}: the number of worker processes must be at least 1")
    return number


def reserved_for(total: dict) -> int:
    """The task workers a node keeps whatever actors it runs: one per CPU, at least 1."""
    return max(1, int(total.get("CPU", 1.0)))


def available_memory_bytes() -> int:
    """Memory available now: the machine's, or less when a cgroup (v2) limits us."""
    available = psutil.virtual_memory().available
    limit, used = _read_int(f"{CGROUP_V2}/memory.max"), \
        _read_int(f"{CGROUP_V2}/memory.current")
    if limit is not None and used is not None:
        available = min(available, max(0, limit - used))
    return available


def _read_int(path: str) -> int | None:
    try:
        with open(path) as handle:
            text = handle.read().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None   # "max": no limit


def derive(available_bytes: int, reserved: int,
           estimate_bytes: int = WORKER_ESTIMATE_BYTES) -> int:
    return max(MIN_WORKERS, reserved + 1,
               int(available_bytes * MEMORY_FRACTION) // estimate_bytes)


def for_node(total: dict, configured: int | str | None = None,
             environ: dict | None = None) -> WorkerBound:
    """The bound of a node with these resources: `configured` (--max-workers), else
    the environment's, else derived from memory (see the module docstring)."""
    environ = os.environ if environ is None else environ
    reserved = reserved_for(total)
    if configured is None and environ.get(ENV_MAX_WORKERS):
        configured, where = environ[ENV_MAX_WORKERS], f"${ENV_MAX_WORKERS}"
    else:
        where = "--max-workers"
    if configured is not None:
        limit = parse(configured)
        source = f"{where} {limit}"
        if limit < reserved + 1:
            source += f", raised to the {reserved} task worker(s) + 1 actor"
            limit = reserved + 1
        return WorkerBound(limit, reserved, source)
    available = available_memory_bytes()
    limit = derive(available, reserved)
    source = (f"{MEMORY_FRACTION:.0%} of {available / 2**30:.1f} GiB available memory / "
              f"{WORKER_ESTIMATE_BYTES >> 20} MiB per worker (floor {MIN_WORKERS}); set "
              f"it with `corral start --max-workers N` or ${ENV_MAX_WORKERS}")
    return WorkerBound(limit, reserved, source)


def check_environment(environ: dict | None = None) -> None:
    """ValueError when $CORRAL_MAX_WORKERS is set but is not a number of processes."""
    value = (os.environ if environ is None else environ).get(ENV_MAX_WORKERS)
    if value:
        parse(value)
