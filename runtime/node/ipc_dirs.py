"""The directories of a node's ipc sockets, and removing them when nobody uses them.

Each node session has one: `<tmp>/corral-ipc-<uid>/<digest of the session path>`
(short, so socket paths fit the 107-byte limit; private, 0700). Its node agent binds
`agent.sock` there, its actor workers `actor-*.sock` and `actor-*.sync` (leasable
task workers: `task-*`). The agent
claims the directory before it binds anything: `owner.json` names its pid and start
time (runtime.node.processes identifies a process by both). Then:

- the agent removes the directory when it stops (runtime.agent.main), as `corral stop` does
  (runtime.node.session.stop_session) - its workers die with it;
- a directory whose owner is gone (an agent killed with -9, a node the autoscaler took
  away) and none of whose sockets accepts a connection is stale: `clean_stale` removes
  it, at every start of a node on this machine; one without an owner file (an older
  corral) is stale when it is older than UNCLAIMED_GRACE_S and no socket answers;
- the parent directory goes once it is empty.

Creating, claiming and removing hold an flock on the parent directory, so a cleaner
never removes a directory between its creation and its claim, and a directory is never
created inside a parent that is being removed.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import shutil
import socket
import stat
import tempfile
import time
from pathlib import Path

from runtime.node import private_paths
from runtime.node import processes

log = logging.getLogger("corral.ipc")

OWNER_FILE = "owner.json"
UNCLAIMED_GRACE_S = 60.0
PROBE_TIMEOUT_S = 0.2


def parent_dir() -> str:
    return os.path.join(tempfile.gettempdir(), f"corral-ipc-{os.getuid()}")


def path_for(session) -> str:
    """The ipc directory of a session (not created)."""
    digest = hashlib.sha1(str(Path(session).resolve()).encode()).hexdigest()[:12]
    return os.path.join(parent_dir(), digest)


@contextlib.contextmanager
def _locked_parent(create: bool):
    """Hold an exclusive flock on the parent dir (made private if `create`). Yields its
    path, or None when it does not exist and `create` is false. A parent removed while
    we waited for the lock is made again (or given up)."""
    parent = parent_dir()
    while True:
        if create:
            private_paths.ensure_dir(parent, private=True)
        try:
            fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
                         | os.O_CLOEXEC)
        except FileNotFoundError:
            if create:
                continue
            yield None
            return
        except OSError as error:
            if error.errno != errno.ELOOP:
                raise
            private_paths.check_dir(parent, private=True)   # raises UnsafePathError
            raise
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            held, now = os.fstat(fd), _lstat(parent)
            if now is None or (now.st_dev, now.st_ino) != (held.st_dev, held.st_ino):
                continue        # removed (or replaced) while we waited
            private_paths.check_dir(parent, private=True)
            yield parent
            return
        finally:
            os.close(fd)


def _lstat(path: str) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None


def create(session) -> str:
    """The session's ipc directory, made private if missing (and its parent)."""
    with _locked_parent(create=True):
        path = path_for(session)
        private_paths.ensure_dir(path, private=True)
        return path


def create_and_claim(session, pid: int | None = None) -> str:
    """Create the session's ipc directory and claim it for `pid` (default: this
    process), in one step no cleaner can come between."""
    with _locked_parent(create=True):
        path = path_for(session)
        private_paths.ensure_dir(path, private=True)
        _write_owner(path, os.getpid() if pid is None else pid)
        return path


def _write_owner(path: str, pid: int) -> None:
    owner = {"pid": pid, "start_time_s": processes.start_time_s(pid)}
    tmp = os.path.join(path, f".{OWNER_FILE}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(owner, handle)
    os.replace(tmp, os.path.join(path, OWNER_FILE))


def owner_of(path: str) -> dict | None:
    """The owner.json of an ipc directory ({"pid", "start_time_s"}), None if none."""
    try:
        data = json.loads(private_paths.read_file(os.path.join(path, OWNER_FILE)))
    except (FileNotFoundError, ValueError, private_paths.UnsafePathError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("pid"), int) else None


def _owner_runs(owner: dict) -> bool:
    started = owner.get("start_time_s")
    if not isinstance(started, (int, float)):
        return processes.is_alive(owner["pid"])
    return bool(processes.still_same({owner["pid"]: started}))


def remove(session) -> None:
    """Remove the session's ipc directory and, if that leaves it empty, the parent."""
    remove_dir(path_for(session))


def remove_dir(path: str) -> None:
    with _locked_parent(create=False) as parent:
        if parent is None:
            return
        _rmtree(path)
        _remove_if_empty(parent)


def _rmtree(path: str) -> None:
    info = _lstat(path)
    if info is None:
        return
    if not stat.S_ISDIR(info.st_mode):   # not ours to guess about: leave it
        log.warning("not removing %s: not a directory", path)
        return
    shutil.rmtree(path, onerror=_report)


def _report(function, path, exc_info) -> None:
    if not isinstance(exc_info[1], FileNotFoundError):
        log.warning("cannot remove %s: %s", path, exc_info[1])


def _remove_if_empty(parent: str) -> None:
    try:
        os.rmdir(parent)
    except OSError as error:
        if error.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOENT):
            log.warning("cannot remove %s: %s", parent, error)


def is_stale(path: str, now_s: float | None = None) -> bool:
    """No live process uses this ipc directory (see the module docstring). Whatever
    its owner file says, a socket in it that accepts a connection keeps it: an owner
    in another PID namespace sharing this /tmp (a container) looks dead from here."""
    owner = owner_of(path)
    if owner is not None and _owner_runs(owner):
        return False
    if owner is None:
        info = _lstat(path)
        if info is None:
            return False
        if (now_s if now_s is not None else time.time()) - info.st_mtime < \
                UNCLAIMED_GRACE_S:
            return False    # being set up, perhaps
    return not any(_accepts(entry.path) for entry in _sockets(path))


def _sockets(path: str):
    try:
        with os.scandir(path) as entries:
            return [entry for entry in entries
                    if stat.S_ISSOCK(entry.stat(follow_symlinks=False).st_mode)]
    except OSError:
        return []


def _accepts(path: str) -> bool:
    """A process listens on this unix socket (a stale one refuses the connection)."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(PROBE_TIMEOUT_S)
    try:
        probe.connect(path)
        return True
    except OSError:
        return False
    finally:
        probe.close()


def clean_stale() -> list[str]:
    """Remove this user's ipc directories that no live process uses, and the parent if
    nothing else is left. Returns the directories removed."""
    removed = []
    with _locked_parent(create=False) as parent:
        if parent is None:
            return removed
        try:
            names = os.listdir(parent)
        except OSError as error:
            log.warning("cannot list %s: %s", parent, error)
            return removed
        now_s = time.time()
        for name in names:
            path = os.path.join(parent, name)
            info = _lstat(path)
            if info is None or not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
                continue
            if is_stale(path, now_s):
                _rmtree(path)
                removed.append(path)
        _remove_if_empty(parent)
    if removed:
        log.info("removed %d stale ipc dir(s): %s", len(removed), ", ".join(removed))
    return removed
