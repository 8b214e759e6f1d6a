"""Find and stop every process a node started, by PID only.

A node's processes are recognised two ways:
- their environment carries `CORRAL_NODE_DIR=<node dir>` (every command the launcher runs
  on a node gets it, and children inherit it, so this also finds daemons that
  double-forked away from their parent), and
- the runtime's pid files under `<node dir>/session/**/*.pid`, accepted only when the
  process started no later than the pid file was written (a PID that the kernel re-used
  for an unrelated, newer process is never touched).

Nothing is ever matched by name. The caller's own process and its ancestors are never
signalled. Process inspection itself is runtime.node.processes (psutil). Besides that module
this one imports only the standard library: the `local` provider sends both sources to a
host (see launcher.providers.local.stop_script), whose Python may lack corral.
"""
from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys

from runtime.node.processes import (ENV_NODE_DIR, caller_and_ancestors, is_alive,
                               kill, pids_with_env, remember, started_by, still_same,
                               stop)

FIRST_COMMAND_TIMEOUT_S = 30.0
KILL_WAIT_S = 2.0
NO_PSUTIL_EXIT = 3  # exit status of remote_program when the Python running it lacks psutil


def pid_file_pids(node_dir: str) -> set[int]:
    """PIDs named in <node_dir>/session/**/*.pid that still belong to the process that
    was running when the file was written."""
    found = set()
    for root, _dirs, files in os.walk(os.path.join(node_dir, "session")):
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
            if pid > 1 and started_by(pid, written_s) and is_alive(pid):
                found.add(pid)
    return found


def pids_by_dir(node_dirs, remembered: dict[str, dict[int, float]] | None = None
                ) -> dict[str, set[int]]:
    """{node_dir: every process of that node} (tagged, pid files, remembered), without
    the caller and its ancestors."""
    tagged = pids_with_env(ENV_NODE_DIR, node_dirs)
    protected = caller_and_ancestors()
    remembered = remembered or {}
    return {node_dir: (tagged[node_dir] | pid_file_pids(node_dir)
                       | still_same(remembered.get(node_dir, {}))) - protected
            for node_dir in node_dirs}


def node_pids(node_dir: str, remembered: dict[int, float] | None = None) -> set[int]:
    return pids_by_dir([node_dir], {node_dir: remembered or {}})[node_dir]


def _union(by_dir: dict[str, set[int]]) -> set[int]:
    return set().union(*by_dir.values()) if by_dir else set()


def stop_processes_of(node_dirs, grace_s: float = 5.0, rounds: int = 5,
                      remembered: dict[str, dict[int, float]] | None = None
                      ) -> dict[str, dict[str, list[int]]]:
    """Stop every process of several nodes at once: SIGTERM, wait up to grace_s, SIGKILL
    what is left; search again (a dying parent may have started a child) and stop what
    appeared, up to `rounds` times, until nothing is found. `remembered`
    ({node_dir: {pid: start time}}, see runtime.node.processes.remember) adds processes found
    earlier, e.g. from pid files that an orderly `corral stop` removed since.
    Returns {node_dir: {"terminated": [...], "killed": [...], "left": [...]}}."""
    dirs = [os.path.abspath(node_dir) for node_dir in node_dirs]
    report = {node_dir: {"terminated": set(), "killed": set(), "left": set()}
              for node_dir in dirs}

    def note(by_dir, key, pids):
        for node_dir, found in by_dir.items():
            report[node_dir][key] |= found & pids

    found = pids_by_dir(dirs, remembered)
    if _union(found):
        outcome = stop(_union(found), grace_s, KILL_WAIT_S)
        note(found, "terminated", outcome.terminated)
        note(found, "killed", outcome.killed)
        for _ in range(rounds):
            found = pids_by_dir(dirs, remembered)
            if not _union(found):
                break
            # no second grace: these already had theirs, or were started by a process
            # that was being stopped
            note(found, "killed", kill(_union(found), KILL_WAIT_S).killed)
        else:
            found = pids_by_dir(dirs, remembered)
        note(found, "left", _union(found))
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
                           timeout=FIRST_COMMAND_TIMEOUT_S, start_new_session=True)
        except subprocess.TimeoutExpired:
            pass  # the reaping below takes over
    print(json.dumps(stop_node_processes(node_dir, grace_s, remembered=remembered)))
    return 0


_PROGRAM = """\
import sys, types
try:
    import psutil  # noqa: F401
except ImportError:
    sys.stderr.write("corral: %s has no psutil: no processes searched\\n" % sys.executable)
    sys.exit({no_psutil})
def load(name, source):
    module = types.ModuleType(name)
    sys.modules[name] = module
    exec(compile(source, "<corral %s>" % name, "exec"), module.__dict__)
    return module
load("runtime.node.processes", {processes!r})
sys.exit(load("corral_node_processes", {node_processes!r}).main(sys.argv[1:]))
"""


def remote_program() -> str:
    """Python source that runs `main` (same arguments) with only the standard library
    and psutil on the host: runtime.node.processes and this module travel as source, so a
    host's Python needs neither corral nor the same corral version as this launcher.
    Exits NO_PSUTIL_EXIT, after a line on stderr, when that Python lacks psutil."""
    from runtime.node import processes
    return _PROGRAM.format(no_psutil=NO_PSUTIL_EXIT,
                           processes=inspect.getsource(processes),
                           node_processes=inspect.getsource(sys.modules[__name__]))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
