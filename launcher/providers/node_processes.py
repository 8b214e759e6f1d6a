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


def tagged_pids(node_dir: str) -> set[int]:
    """Processes whose environment has CORRAL_NODE_DIR equal to node_dir."""
    wanted = f"{ENV_NODE_DIR}={node_dir}".encode()
    found = set()
    for pid in _all_pids():
        try:
            with open(f"{PROC}/{pid}/environ", "rb") as environ:
                entries = environ.read().split(b"\0")
        except OSError:  # gone, or not ours to read
            continue
        if wanted in entries and is_alive(pid):
            found.add(pid)
    return found


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


def node_pids(node_dir: str, remembered: dict[int, float] | None = None) -> set[int]:
    found = tagged_pids(node_dir) | pid_file_pids(node_dir) | still_same(remembered or {})
    return found - protected_pids()


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


def stop_node_processes(node_dir: str, grace_s: float = 5.0, rounds: int = 5,
                        remembered: dict[int, float] | None = None) -> dict:
    """SIGTERM every process of the node, wait up to grace_s, SIGKILL what is left; repeat
    the search (a dying parent may have started a child) until none is found.
    `remembered` ({pid: start time}, from `remember`) adds processes found earlier, e.g.
    from pid files that an orderly `corral stop` has removed since.
    Returns {"terminated": [...pids], "killed": [...pids], "left": [...pids]}."""
    node_dir = os.path.abspath(node_dir)
    terminated, killed = set(), set()
    pids = node_pids(node_dir, remembered)
    if pids:
        _signal(pids, signal.SIGTERM)
        terminated |= pids
        stubborn = _wait_gone(pids, grace_s)
        if stubborn:
            _signal(stubborn, signal.SIGKILL)
            killed |= stubborn
            _wait_gone(stubborn, 2.0)
    for _ in range(rounds):
        pids = node_pids(node_dir, remembered)
        if not pids:
            break
        _signal(pids, signal.SIGKILL)
        killed |= pids
        _wait_gone(pids, 2.0)
    left = node_pids(node_dir, remembered)
    return {"terminated": sorted(terminated), "killed": sorted(killed), "left": sorted(left)}


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
