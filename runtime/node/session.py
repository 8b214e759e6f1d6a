"""A node's runtime session directory: $CORRAL_NODE_DIR/session (pid files, logs,
address.json) and the environment defaults that `corral start` reads.

The node dir is $CORRAL_NODE_DIR, else a per-user default, `<tmp>/corral-<uid>` (made
0700). Not $XDG_RUNTIME_DIR: logind removes it when the user's last login ends, under a
running head, and daemons started over SSH and later shells would disagree on it; not
~/.corral: a home shared over NFS would give every machine the same pid files and
address. Whatever the node dir is, it, its session and keys dirs and the address.json
in it are used only when this user alone controls them (runtime.node.private_paths): a
planted one raises UnsafePathError (naming path, owner and mode) and is never adopted.

address.json (written by every node's agent once it is up; read by init("auto")):
    {"address": "HEAD_IP:PORT", "node_id": "...", "agent_ipc": "ipc://...",
     "secure": true, "keys_dir": "..."}
"""
from __future__ import annotations

import ipaddress
import json
import tempfile
import os
import subprocess
import sys
from pathlib import Path

from runtime.node import ipc_dirs
from runtime.node import private_paths
from runtime.node import processes
from runtime.node.private_paths import UnsafePathError
from runtime.node.processes import is_alive

# The per-user default node dir (see the module docstring).
DEFAULT_NODE_DIR = os.path.join(tempfile.gettempdir(), f"corral-{os.getuid()}")
# The node dir the launcher gives SSH nodes (launcher.bootstrap.node_context.DEFAULT_NODE_DIR):
# discovery also looks there when CORRAL_NODE_DIR is not set, so a program started by
# hand on such a node finds its runtime. Used only if this user alone controls it.
LAUNCHER_NODE_DIR = "/tmp/corral"
UnsafeDirectoryError = UnsafePathError   # the name callers of ipc_dir know
DEFAULT_HEAD_PORT = 6390


def is_loopback(host: str | None) -> bool:
    """The host is a loopback address (127.0.0.0/8, ::1, localhost)."""
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def bind_ip_for(node_ip: str | None) -> str:
    """Where a server with keys listens: the node's own IP if given; 127.0.0.1 when the
    node is reached over loopback (the demo cluster), so nothing listens on all
    interfaces for a cluster that lives on this machine; otherwise every interface."""
    if is_loopback(node_ip):
        return "127.0.0.1"
    return node_ip or "0.0.0.0"


def node_dir() -> Path:
    return Path(os.environ.get("CORRAL_NODE_DIR") or DEFAULT_NODE_DIR)


def session_dir(base: Path | None = None, create: bool = True) -> Path:
    """The node's session dir. create: the node and session dirs are made 0700 if
    missing. Either way, what exists of them must be this user's alone
    (UnsafePathError otherwise)."""
    base = Path(base or node_dir())
    path = base / "session"
    for directory in (base, path):
        if create:
            private_paths.ensure_dir(directory)
        elif os.path.lexists(directory):
            private_paths.check_dir(directory)
        else:
            break
    return path


def keys_dir(base: Path | None = None) -> Path:
    return (base or node_dir()) / "keys"


def ipc_dir(session: Path) -> str:
    """The node's directory of ipc sockets (agent, actor workers): short, so socket
    paths fit the 107-byte limit, private (0700), removed by stop_session (and by
    runtime.node.ipc_dirs.clean_stale once its agent is gone)."""
    return ipc_dirs.create(session)


def address_file(session: Path) -> Path:
    return session / "address.json"


def read_address(session: Path) -> dict | None:
    """The node's address.json, or None when there is none (or it is not JSON yet).
    The session dir and the file must be this user's alone (UnsafePathError)."""
    session = Path(session)
    if not os.path.lexists(session):
        return None
    private_paths.check_dir(session.parent)
    private_paths.check_dir(session)
    try:
        data = json.loads(private_paths.read_file(address_file(session)))
    except FileNotFoundError:
        return None
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def discovery_dirs() -> list[Path]:
    """Node dirs where this node's running runtime may be found: CORRAL_NODE_DIR if
    set; else the per-user default, then the launcher's node dir (if it exists)."""
    if os.environ.get("CORRAL_NODE_DIR"):
        return [node_dir()]
    found = [Path(DEFAULT_NODE_DIR)]
    if LAUNCHER_NODE_DIR != DEFAULT_NODE_DIR and os.path.lexists(LAUNCHER_NODE_DIR):
        found.append(Path(LAUNCHER_NODE_DIR))
    return found


def find_address(running: bool = False,
                 refuse_foreign_fallback: bool = True) -> tuple[Path, dict] | None:
    """(session dir, address.json) of this node's runtime: the first of discovery_dirs
    that has an address (running: and live runtime processes). The node dir (first of
    discovery_dirs) not being this user's alone raises UnsafePathError, so a planted
    address is never followed. The launcher's dir not being ours is another user's
    business (a shared machine); it is skipped, and its refusal raised only when
    nothing was found and refuse_foreign_fallback."""
    refused = None
    for index, base in enumerate(discovery_dirs()):
        try:
            session = session_dir(base, create=False)
            info = read_address(session)
        except UnsafePathError as error:
            if index == 0:
                raise
            refused = error
            continue
        if info and (not running or running_pids(session)):
            return session, info
    if refused is not None and refuse_foreign_fallback:
        raise refused
    return None


def write_json_atomic(path: Path, data: dict) -> None:
    """Readers see the old file or the whole new one, never a part (0600, fsync-ed)."""
    private_paths.write_private_atomic(path, json.dumps(data).encode("utf-8"), fsync=True)


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


# ---------------------------------------------------------------- processes by pid

def pid_file(session: Path, name: str) -> Path:
    return session / f"{name}.pid"


def spawn_daemon(session: Path, name: str, argv: list[str], env: dict | None = None) -> int:
    """Start `python3 -m <argv>` detached (new session, stdio to session/logs/<name>.log)
    and record its pid in session/<name>.pid."""
    logs = session / "logs"
    logs.mkdir(exist_ok=True, mode=0o700)
    log = open(logs / f"{name}.log", "ab")
    try:
        proc = subprocess.Popen([sys.executable, "-m", *argv], stdin=subprocess.DEVNULL,
                                stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, env=env, close_fds=True)
    finally:
        log.close()
    pid_file(session, name).write_text(f"{proc.pid}\n")
    return proc.pid


process_start_time_s = processes.start_time_s  # the name the runtime's callers know


def _is_our_process(pid: int, pid_path: Path, session: Path) -> bool:
    """The pid is still the process this pid file recorded (guards against pid reuse):
    it started no later than the pid file was written, runs one of our modules, and
    belongs to this node (its argv names this session dir, or its CORRAL_NODE_DIR is
    this node's dir)."""
    argv = processes.cmdline(pid)
    try:
        written_s = pid_path.stat().st_mtime
    except OSError:
        return False
    if not argv or not any(part.startswith(("runtime.", "autoscaler.")) for part in argv):
        return False
    if not processes.started_by(pid, written_s):
        return False
    session = Path(session)
    names = {str(session), str(session.resolve())}
    if any(part == name or part.startswith(name + "/") for part in argv for name in names):
        return True
    node_dir_of = (processes.environ(pid) or {}).get(processes.ENV_NODE_DIR)
    return node_dir_of in {str(session.parent), str(session.resolve().parent)}


def running_pids(session: Path) -> dict[str, int]:
    found = {}
    for path in session.glob("*.pid"):
        try:
            pid = int(path.read_text().strip())
        except (OSError, ValueError):
            continue
        if is_alive(pid) and _is_our_process(pid, path, session):
            found[path.stem] = pid
    return found


def stop_pids(pids: list[int], grace_s: float = 5.0) -> None:
    """SIGTERM each pid (and its process group, which it leads), then SIGKILL; the ones
    that are children of ours are reaped."""
    processes.stop(pids, grace_s, grace_s, groups=True, reap=True)


def stop_session(session: Path) -> list[int]:
    """Stop exactly this node's runtime processes (by the pids in the session dir). The
    head's supervisor goes first, and a marker naming this process (runtime.node.supervision
    .STOP_MARKER) keeps anything from being started again meanwhile; a process started
    just before (the control service starting the supervisor again) is found in a
    second round."""
    if not session.is_dir():
        return []
    marker = session / "stopping"
    try:
        marker.write_text(f"{os.getpid()}\n")
    except OSError:               # (a full disk) the supervisor still goes first
        pass
    pids = []
    try:
        for _ in range(3):
            found = running_pids(session)
            if not found:
                break
            names = sorted(found, key=lambda n: (n != "supervisor", n != "agent"))
            stop_pids([found[name] for name in names])
            pids += [found[name] for name in names]
    finally:
        marker.unlink(missing_ok=True)
    for path in session.glob("*.pid"):
        path.unlink(missing_ok=True)
    address_file(session).unlink(missing_ok=True)
    ipc_dirs.remove(session)
    return pids
