"""A node's runtime session directory: $CORRAL_NODE_DIR/session (pid files, logs,
address.json) and the environment defaults that `corral start` reads.

address.json (written by every node's agent once it is up; read by init("auto")):
    {"address": "HEAD_IP:PORT", "node_id": "...", "agent_ipc": "ipc://...",
     "secure": true|false, "keys_dir": "..."}
"""
from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

DEFAULT_NODE_DIR = "/tmp/corral"
DEFAULT_HEAD_PORT = 6390


def node_dir() -> Path:
    return Path(os.environ.get("CORRAL_NODE_DIR") or DEFAULT_NODE_DIR)


def session_dir(base: Path | None = None, create: bool = True) -> Path:
    path = (base or node_dir()) / "session"
    if create:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


def keys_dir(base: Path | None = None) -> Path:
    return (base or node_dir()) / "keys"


def ipc_dir(session: Path) -> str:
    """The node's directory of ipc sockets (agent, actor workers): short, so socket
    paths fit the 107-byte limit, private (0700), removed by stop_session."""
    digest = hashlib.sha1(str(Path(session).resolve()).encode()).hexdigest()[:12]
    path = os.path.join(tempfile.gettempdir(), f"corral-ipc-{os.getuid()}", digest)
    os.makedirs(path, mode=0o700, exist_ok=True)
    os.chmod(os.path.dirname(path), 0o700)
    return path


def address_file(session: Path) -> Path:
    return session / "address.json"


def write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(data, handle)
    os.replace(tmp, path)


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


def _is_our_process(pid: int) -> bool:
    """The pid still runs one of our runtime modules (guards against pid reuse)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return any(part.startswith((b"runtime.", b"autoscaler.")) for part in cmdline)


def is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child of ours counts as gone
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state != "Z"
    except (OSError, IndexError):
        return False


def running_pids(session: Path) -> dict[str, int]:
    found = {}
    for path in session.glob("*.pid"):
        try:
            pid = int(path.read_text().strip())
        except (OSError, ValueError):
            continue
        if is_alive(pid) and _is_our_process(pid):
            found[path.stem] = pid
    return found


def stop_pids(pids: list[int], grace_s: float = 5.0) -> None:
    """SIGTERM each pid (and its process group, which it leads), then SIGKILL."""
    for pid in pids:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(is_alive(p) for p in pids):
        _reap(pids)
        time.sleep(0.05)
    for pid in pids:
        if is_alive(pid):
            _signal(pid, signal.SIGKILL)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(is_alive(p) for p in pids):
        _reap(pids)
        time.sleep(0.05)


def _signal(pid: int, sig: int) -> None:
    try:
        if os.getpgid(pid) == pid:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _reap(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass


def stop_session(session: Path) -> list[int]:
    """Stop exactly this node's runtime processes (by the pids in the session dir)."""
    if not session.is_dir():
        return []
    found = running_pids(session)
    pids = [found[name] for name in sorted(found, key=lambda n: n != "agent")]
    stop_pids(pids)
    for path in session.glob("*.pid"):
        path.unlink(missing_ok=True)
    address_file(session).unlink(missing_ok=True)
    shutil.rmtree(ipc_dir(session), ignore_errors=True)
    return pids
