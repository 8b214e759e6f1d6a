"""Find and stop every process a node started, by PID only.

A node's processes are recognised two ways:
- their environment carries `CORRAL_NODE_DIR=<node dir>` (every command the launcher runs
  on a node gets it, and children inherit it, so this also finds daemons that
  double-forked away from their parent), and
- the runtime's pid files under `<node dir>/session/**/*.pid`, accepted only when the
  process started no later than the pid file was written (a PID that the kernel re-used
  for an unrelated, newer process is never touched).

Nothing is ever matched by name. The caller's own process and its ancestors are never
signalled. This module uses the standard library only: the `local` provider runs it on
remote hosts as `python3 -c <this source>`.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

ENV_NODE_DIR = "CORRAL_NODE_DIR"
PROC = "/proc"


def _boot_time_s() -> float:
    with open(f"{PROC}/stat") as stat:
        for line in stat:
            if line.startswith("btime "):
                return float(line.split()[1])
    return 0.0


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (field 3 onwards), or None."""
    try:
        with open(f"{PROC}/{pid}/stat") as stat:
            text = stat.read()
    except OSError:
        return None
    return text[text.rfind(")") + 2:].split()


def is_alive(pid: int) -> bool:
    """True while the process exists and is not a zombie waiting to be reaped."""
    fields = _stat_fields(pid)
    return bool(fields) and fields[0] not in ("Z", "X")


def start_time_s(pid: int, boot_time_s: float | None = None) -> float | None:
    """When the process started (seconds since the epoch), or None if it is gone."""
    fields = _stat_fields(pid)
    if not fields:
        return None
    ticks = int(fields[19])  # field 22 of /proc/<pid>/stat: starttime in clock ticks
    boot = _boot_time_s() if boot_time_s is None else boot_time_s
    return boot + ticks / os.sysconf("SC_CLK_TCK")


def _parent(pid: int) -> int:
    fields = _stat_fields(pid)
    return int(fields[1]) if fields else 0


def protected_pids() -> set[int]:
    """This process and its ancestors: never signalled."""
    pids, pid = set(), os.getpid()
    while pid > 0 and pid not in pids:
        pids.add(pid)
        pid = _parent(pid)
    return pids


def _all_pids() -> list[int]:
    return [int(name) for name in os.listdir(PROC) if name.isdigit()]


def tagged_pids_by_dir(node_dirs) -> dict[str, set[int]]:
    """{node_dir: processes whose environment has CORRAL_NODE_DIR=node_dir}, in one scan
    of /proc however many node dirs are asked for."""
    wanted = {f"{ENV_NODE_DIR}={node_dir}".encode(): node_dir for node_dir in node_dirs}
    found: dict[str, set[int]] = {node_dir: set() for node_dir in node_dirs}
    for pid in _all_pids():
        try:
            with open(f"{PROC}/{pid}/environ", "rb") as environ:
                entries = environ.read().split(b"\0")
        except OSError:  # gone, or not ours to read
            continue
        for entry in entries:
            if entry in wanted and is_alive(pid):
                found[wanted[entry]].add(pid)
                break
    return found


def tagged_pids(node_dir: str) -> set[int]:
    """Processes whose environment has CORRAL_NODE_DIR equal to node_dir."""
    return tagged_pids_by_dir([node_dir])[node_dir]


def pid_file_pids(node_dir: str) -> set[int]:
    """PIDs named in <node_dir>/session/**/*.pid that still belong to the process that
    was running when the file was written."""
    session = os.path.join(node_dir, "session")
    found = set()
    boot = _boot_time_s()
    for root, _dirs, files in os.walk(session):
        for name in files:
            if not name.endswith(".pid"):
                continue
            path = os.path.join(root, name)
            try:
                with open(path) as handle:
                    pid = int(handle.read().split()[0])
                written_s = os.stat(path).st_mtime
            except (OSError, ValueError, IndexError):
                continue
            started = start_time_s(pid, boot)
            # btime is whole seconds (rounded down), so allow a little slack.
            if pid > 1 and started is not None and started <= written_s + 1.0 \
                    and is_alive(pid):
                found.add(pid)
    return found


def remember(pids) -> dict[int, float]:
    """{pid: start time} of live pids, to recognise exactly these processes later."""
    boot = _boot_time_s()
    return {pid: started for pid in pids
            if (started := start_time_s(pid, boot)) is not None}


def still_same(remembered: dict[int, float]) -> set[int]:
    """The remembered pids still running the same process (same start time)."""
    boot = _boot_time_s()
    return {pid for pid, started in remembered.items()
            if start_time_s(pid, boot) == started and is_alive(pid)}


def pids_by_dir(node_dirs, remembered: dict[str, dict[int, float]] | None = None
                ) -> dict[str, set[int]]:
    """{node_dir: every process of that node} (tagged, pid files, remembered)."""
    tagged = tagged_pids_by_dir(node_dirs)
    protected = protected_pids()
    remembered = remembered or {}
    return {node_dir: (tagged[node_dir] | pid_file_pids(node_dir)
                       | still_same(remembered.get(node_dir, {}))) - protected
            for node_dir in node_dirs}


def node_pids(node_dir: str, remembered: dict[int, float] | None = None) -> set[int]:
    return pids_by_dir([node_dir], {node_dir: remembered or {}})[node_dir]


def _signal(pids, signum) -> None:
    for pid in pids:
        try:
            os.kill(pid, signum)
        except (ProcessLookupError, PermissionError):
            pass


def _wait_gone(pids: set[int], timeout_s: float) -> set[int]:
    deadline = time.monotonic() + timeout_s
    alive = {pid for pid in pids if is_alive(pid)}
    while alive and time.monotonic() < deadline:
        time.sleep(0.02)
        alive = {pid for pid in alive if is_alive(pid)}
    return alive


def _union(by_dir: dict[str, set[int]]) -> set[int]:
    return set().union(*by_dir.values()) if by_dir else set()


def stop_processes_of(node_dirs, grace_s: float = 5.0, rounds: int = 5,
                      remembered: dict[str, dict[int, float]] | None = None
                      ) -> dict[str, dict[str, list[int]]]:
    """Stop every process of several nodes at once: SIGTERM, wait up to grace_s, SIGKILL
    what is left; search again (a dying parent may have started a child) until nothing
    is found. `remembered` ({node_dir: {pid: start time}}, see `remember`) adds processes
    found earlier, e.g. from pid files that an orderly `corral stop` removed since.
    Returns {node_dir: {"terminated": [...], "killed": [...], "left": [...]}}."""
    dirs = [os.path.abspath(node_dir) for node_dir in node_dirs]
    report = {node_dir: {"terminated": set(), "killed": set(), "left": set()}
              for node_dir in dirs}

    def note(by_dir, key):
        for node_dir, pids in by_dir.items():
            report[node_dir][key] |= pids

    found = pids_by_dir(dirs, remembered)
    if _union(found):
        _signal(_union(found), signal.SIGTERM)
        note(found, "terminated")
        stubborn = _wait_gone(_union(found), grace_s)
        if stubborn:
            _signal(stubborn, signal.SIGKILL)
            note({d: pids & stubborn for d, pids in found.items()}, "killed")
            _wait_gone(stubborn, 2.0)
        for _ in range(rounds):
            found = pids_by_dir(dirs, remembered)
            if not _union(found):
                break
            _signal(_union(found), signal.SIGKILL)
            note(found, "killed")
            _wait_gone(_union(found), 2.0)
        else:
            found = pids_by_dir(dirs, remembered)
        note(found, "left")
    return {node_dir: {key: sorted(pids) for key, pids in entry.items()}
            for node_dir, entry in report.items()}


def stop_node_processes(node_dir: str, grace_s: float = 5.0, rounds: int = 5,
                        remembered: dict[int, float] | None = None) -> dict:
    """stop_processes_of for one node: {"terminated": [...], "killed": [...], "left": [...]}."""
    node_dir = os.path.abspath(node_dir)
    return stop_processes_of([node_dir], grace_s, rounds,
                             {node_dir: remembered or {}})[node_dir]


def main(argv: list[str]) -> int:
    """`NODE_DIR [GRACE_S [FIRST_COMMAND]]`: remember the node's processes, run
    FIRST_COMMAND (the runtime's orderly `corral stop`, which may delete pid files) with a
    30 s limit, then stop whatever of the node is still running. Prints a JSON summary."""
    node_dir = os.path.abspath(argv[0])
    grace_s = float(argv[1]) if len(argv) > 1 else 5.0
    remembered = remember(node_pids(node_dir))
    if len(argv) > 2 and argv[2]:
        env = dict(os.environ, **{ENV_NODE_DIR: node_dir})
        try:
            subprocess.run(["sh", "-c", argv[2]], env=env, stdin=subprocess.DEVNULL,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           timeout=30, start_new_session=True)
        except subprocess.TimeoutExpired:
            pass  # the reaping below takes over
    print(json.dumps(stop_node_processes(node_dir, grace_s, remembered=remembered)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
