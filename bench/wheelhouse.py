"""Benchmark building the wheelhouse corral ships to nodes: prints figures, asserts nothing.

    python3 bench/wheelhouse.py [--python-version 3.12] [--repeat 5]

For the base set and for extras `aws`, for this machine's platform (or the same platform
with another Python, which sends the binary wheels through `pip download`): the cold build
into an empty cache (pip's own HTTP cache is left as it is, so downloads may be local),
the warm call that finds it cached (median of --repeat), the wheelhouse size in MB and its
wheel count, and how many wheels were repacked, downloaded or built (corral's own).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from launcher.ship.target_tags import this_machine  # noqa: E402
from launcher.ship.wheelhouse import build_wheelhouse  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python-version", help="the node's Python, e.g. 3.12 "
                                                 "(default: this interpreter's)")
    parser.add_argument("--repeat", type=int, default=5, help="warm calls to time")
    args = parser.parse_args()
    platform = this_machine()
    if args.python_version:
        major, minor = (int(part) for part in args.python_version.split("."))
        platform = dataclasses.replace(platform, python_version=(major, minor, 0))
    print(f"target: {platform.describe()}")
    print(f"{'set':<6} {'cold s':>7} {'warm ms':>8} {'MB':>6} {'wheels':>6}  sources")
    cache = Path(tempfile.mkdtemp(prefix="corral-bench-wheelhouse-"))
    try:
        for label, extras in (("base", frozenset()), ("aws", frozenset({"aws"}))):
            measure(label, platform, extras, cache, args.repeat)
    finally:
        shutil.rmtree(cache, ignore_errors=True)


def measure(label, platform, extras, cache: Path, repeat: int) -> None:
    started = time.perf_counter()
    built = build_wheelhouse(platform, extras, cache_dir=cache)
    cold_s = time.perf_counter() - started
    warm = []
    rebuilt = 0
    for _ in range(repeat):
        started = time.perf_counter()
        again = build_wheelhouse(platform, extras, cache_dir=cache)
        warm.append(time.perf_counter() - started)
        rebuilt += again.hash != built.hash
        built = again
    if rebuilt:
        print(f"  note: the sources changed during the run (someone edits the checkout); "
              f"{rebuilt} of the warm calls rebuilt")
    sources: dict[str, int] = {}
    for entry in json.loads(built.manifest_path.read_text())["wheels"]:
        sources[entry["source"]] = sources.get(entry["source"], 0) + 1
    print(f"{label:<6} {cold_s:7.2f} {statistics.median(warm) * 1000:8.0f} "
          f"{built.size_bytes / 1e6:6.1f} {len(built.wheels):6d}  "
          + ", ".join(f"{count} {source}" for source, count in sorted(sources.items())))


if __name__ == "__main__":
    main()
