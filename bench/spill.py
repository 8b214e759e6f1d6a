"""Benchmark: spill and restore throughput of a node's object store (issue 10: "spill
and restore throughput (MB/s) for 1 GB of objects on a 512 MB store").

    python3 bench/spill.py [--total-mib 1024] [--store-mib 512] [--object-mib 64]

An embedded runtime whose store keeps --store-mib in memory. Tasks return --total-mib
of objects (--object-mib each); what does not fit spills to the node's disk. Then the
driver gets every object back, and tasks read every object as an argument. Printed:

- spill: the agent's own write time for what it spilled (store.stats: spill bytes /
  seconds in write(); page cache, as a spill never fsyncs) and the whole phase;
- restore, warm: get() of the spilled objects right after (their pages still cached)
  next to get() of the ones in memory, end to end through the driver;
- restore, cold: the same after the spill files were evicted from the page cache
  (fsync + POSIX_FADV_DONTNEED on each file), so they come from the disk itself;
- tasks reading the spilled objects as arguments (mapped at dispatch, sent to workers);
- a put larger than the store (--put-mib, sent in pieces straight to a spill file);
- the agent's peak resident memory in each phase, against the store's capacity
  (anonymous: its heap; file-backed: spill files mapped while they are sent).
"""
from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy  # noqa: E402

import runtime  # noqa: E402
from runtime import api  # noqa: E402
from runtime.node import session

MiB = 1 << 20


@runtime.remote
def make(seed: int, size_bytes: int):
    return numpy.full(size_bytes // 8, seed, dtype=numpy.int64)


@runtime.remote
def first_and_last(array) -> tuple:
    return int(array[0]), int(array[-1]), array.nbytes


class PeakRss(threading.Thread):
    """The agent's peak resident memory: anonymous (its heap: objects in memory,
    messages in flight) and file-backed (spill files it has mapped while sending)."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.status = Path(f"/proc/{pid}/status")
        self.peak = {"RssAnon": 0, "RssFile": 0}
        self.running = True

    def take(self) -> str:
        """The peaks since the last take, as text."""
        peak, self.peak = self.peak, {"RssAnon": 0, "RssFile": 0}
        return f"agent peak resident: {peak['RssAnon'] / 1024:.0f} MiB anonymous, " \
               f"{peak['RssFile'] / 1024:.0f} MiB of mapped files"

    def run(self) -> None:
        while self.running:
            for line in self.status.read_text().splitlines():
                name, _, value = line.partition(":")
                if name in self.peak:
                    self.peak[name] = max(self.peak[name], int(value.split()[0]))
            time.sleep(0.01)


def rate(size_bytes: int, seconds: float) -> str:
    return f"{size_bytes / MiB / seconds:8.0f} MB/s ({size_bytes / MiB:6.0f} MiB in " \
           f"{seconds:6.2f} s)" if seconds > 0 else "n/a"


def get_all(refs, seeds) -> tuple[int, float]:
    """get() each ref, check it, drop it; -> (bytes, seconds)."""
    size, started = 0, time.perf_counter()
    for ref, seed in zip(refs, seeds):
        value = runtime.get(ref)
        assert int(value[0]) == seed and int(value[-1]) == seed
        size += value.nbytes
        del value
    return size, time.perf_counter() - started


def evict(spill_dir: Path) -> int:
    """Push the spill files out of the page cache; -> how many."""
    count = 0
    for path in spill_dir.glob("*.obj"):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            count += 1
        finally:
            os.close(fd)
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--total-mib", type=int, default=1024)
    parser.add_argument("--store-mib", type=int, default=512)
    parser.add_argument("--object-mib", type=int, default=64)
    parser.add_argument("--put-mib", type=int, default=768)
    args = parser.parse_args()
    count = args.total_mib // args.object_mib
    runtime.init(num_cpus=2, object_store_memory=args.store_mib * MiB)
    try:
        agent = session.running_pids(api._embedded["session"])["agent"]
        spill_dir = Path(api._embedded["session"]) / "spill"
        peak = PeakRss(agent)
        peak.start()
        print(f"{count} objects of {args.object_mib} MiB ({args.total_mib} MiB) on a "
              f"{args.store_mib} MiB store, {os.cpu_count()} cores")

        started = time.perf_counter()
        refs = []
        for seed in range(count):     # one at a time: the oldest are the ones spilled
            refs.append(make.remote(seed, args.object_mib * MiB))
            runtime.wait(refs[-1:], timeout=600)
        phase_s = time.perf_counter() - started
        stats = api.node_stats("embedded")
        spilled = list(range(stats["spilled_objects"]))
        written = rate(stats["spill_written_bytes"], stats["spill_write_s"])
        print(f"spill    agent write  {written}"
              f"   {stats['spilled_objects']} objects spilled, "
              f"{stats['memory_bytes'] / MiB:.0f} MiB in memory")
        print(f"         whole phase  {rate(args.total_mib * MiB, phase_s)}   "
              "(tasks making the objects included)")

        in_memory = list(range(stats["spilled_objects"], count))
        print(f"         {peak.take()}")
        warm, cold = spilled[:len(spilled) // 2], spilled[len(spilled) // 2:]
        size_m, seconds_m = get_all([refs[s] for s in in_memory], in_memory)
        print(f"get()    in memory    {rate(size_m, seconds_m)}   (for comparison)")
        size, seconds = get_all([refs[s] for s in warm], warm)
        print(f"restore  warm get()   {rate(size, seconds)}   (spill files in the page "
              "cache)")
        evicted = evict(spill_dir)
        size, seconds = get_all([refs[s] for s in cold], cold)
        print(f"restore  cold get()   {rate(size, seconds)}   ({evicted} spill files "
              "evicted from the page cache first)")
        print(f"         {peak.take()}")

        evict(spill_dir)
        started = time.perf_counter()
        results = runtime.get([first_and_last.remote(refs[s]) for s in spilled],
                              timeout=600)
        seconds = time.perf_counter() - started
        assert [r[:2] for r in results] == [(s, s) for s in spilled]
        print(f"restore  task args    {rate(sum(r[2] for r in results), seconds)}   "
              "(cold, mapped at dispatch, sent to 2 workers)")
        print(f"         {peak.take()}")

        del refs, results
        started = time.perf_counter()
        big = runtime.put(numpy.ones(args.put_mib * MiB // 8, dtype=numpy.int64))
        first, last, size = runtime.get(first_and_last.remote(big), timeout=600)
        seconds = time.perf_counter() - started
        assert (first, last) == (1, 1)
        print(f"put      {args.put_mib} MiB > store  {rate(size, seconds)}   (in pieces "
              "straight to a spill file, then read by a task)")
        print(f"         {peak.take()}")
        peak.running = False
    finally:
        runtime.shutdown()


if __name__ == "__main__":
    main()
