"""Trusting a node's files only when this user alone controls them.

A node's runtime state (its node dir, session dir, keys, address.json) decides which
keys a server uses and which head a driver talks to, so a copy another local user could
have planted or can still change is never adopted. A directory is trusted when:

- it is owned by this uid and is not group- or world-writable (a symlink in its place is
  refused unless this uid made it; always for `private` directories of sockets);
- every directory above it (after symlinks are resolved) is owned by this uid or root and
  is not group/world-writable, unless sticky (like /tmp): otherwise its owner, or anyone
  who may write there, could rename ours away and put theirs in its place.

A file is trusted when it is a regular file (not a symlink), owned by this uid and not
group/world-writable; it is checked on the descriptor it is read through (fstat), so
there is no window between the check and the read.

Anything else raises UnsafePathError naming the path, its owner and its mode.
"""
from __future__ import annotations

import errno
import os
import stat
import tempfile
from pathlib import Path

from runtime.errors import RuntimeSystemError

_WRITABLE_BY_OTHERS = stat.S_IWGRP | stat.S_IWOTH
_ANY_ACCESS_BY_OTHERS = 0o077
MAX_FILE_BYTES = 1 << 20      # address.json, keys: small; a bigger one is not ours


def owner_name(uid: int) -> str:
    try:
        import pwd
        return pwd.getpwuid(uid).pw_name
    except (ImportError, KeyError):
        return "?"


class UnsafePathError(RuntimeSystemError):
    """A node file or directory that another user owns or may change: refused, never
    adopted. Carries the path, the reason, and its owner uid and mode when known."""

    def __init__(self, path, reason: str, owner_uid: int | None = None,
                 mode: int | None = None):
        details = []
        if owner_uid is not None:
            details.append(f"owner uid {owner_uid} ({owner_name(owner_uid)})")
        if mode is not None:
            details.append(f"mode {mode:o}")
        text = f"refusing {path}: {reason}"
        if details:
            text += f" [{', '.join(details)}]"
        text += (f"; runtime state is used only when uid {os.getuid()} alone controls "
                 "it: remove it, or set CORRAL_NODE_DIR to a directory only you can write")
        super().__init__(text)
        self.path = str(path)
        self.reason = reason
        self.owner_uid = owner_uid
        self.mode = mode

    def __reduce__(self):
        return (type(self), (self.path, self.reason, self.owner_uid, self.mode))


def _refuse(path, reason: str, info: os.stat_result | None = None):
    raise UnsafePathError(path, reason, info.st_uid if info else None,
                          stat.S_IMODE(info.st_mode) if info else None)


def check_dir(path, private: bool = False) -> Path:
    """Raise UnsafePathError unless `path` is a directory this user alone controls (see
    the module docstring). private: no group/other access at all (mode 700), for
    directories of sockets. Returns the path."""
    path = Path(path)
    uid = os.getuid()
    info = os.lstat(path)     # FileNotFoundError: the caller decides what none means
    if stat.S_ISLNK(info.st_mode):
        if private or info.st_uid != uid:
            _refuse(path, "not a directory (a symlink stands in its place)", info)
        try:
            info = os.stat(path)
        except OSError as error:
            _refuse(path, f"a symlink to nowhere ({error.strerror or error})")
    if not stat.S_ISDIR(info.st_mode):
        _refuse(path, "not a directory (a symlink or file is in its place)", info)
    if info.st_uid != uid:
        _refuse(path, f"owned by another user, not uid {uid}", info)
    mask = _ANY_ACCESS_BY_OTHERS if private else _WRITABLE_BY_OTHERS
    if info.st_mode & mask:
        _refuse(path, "group/other may " + ("access it (expected mode 700)" if private
                                            else "write to it"), info)
    _check_ancestors(Path(os.path.realpath(path)), uid)
    return path


def _check_ancestors(real: Path, uid: int) -> None:
    for ancestor in real.parents:
        try:
            info = os.stat(ancestor)
        except OSError as error:
            _refuse(ancestor, error.strerror or str(error))
        if info.st_uid not in (uid, 0):
            _refuse(ancestor, "a directory above the runtime's state is owned by "
                    "another user (who could swap what is inside)", info)
        if info.st_mode & _WRITABLE_BY_OTHERS and not info.st_mode & stat.S_ISVTX:
            _refuse(ancestor, "a directory above the runtime's state is writable by "
                    "group/other and not sticky (anyone could swap what is inside)", info)


def ensure_dir(path, private: bool = False) -> Path:
    """Create `path` (mode 700; missing parents with the default mode) unless it
    exists, then check_dir it. A directory made here is chmod-ed 700 whatever the
    umask; one that already existed is only checked, never fixed up."""
    path = Path(path)
    if not os.path.lexists(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.mkdir(path, 0o700)
            os.chmod(path, 0o700)
        except FileExistsError:   # made meanwhile: checked below like any other
            pass
    return check_dir(path, private)


def read_file(path, max_bytes: int = MAX_FILE_BYTES) -> bytes:
    """The content of a file this user alone controls; UnsafePathError otherwise,
    FileNotFoundError when there is none. Checked on the open descriptor."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as error:
        if error.errno == errno.ELOOP:
            info = os.lstat(path)
            _refuse(path, "a symlink stands in place of the file", info)
        raise
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            _refuse(path, "not a regular file", info)
        if info.st_uid != os.getuid():
            _refuse(path, f"owned by another user, not uid {os.getuid()}", info)
        if info.st_mode & _WRITABLE_BY_OTHERS:
            _refuse(path, "group/other may write to it", info)
        if info.st_size > max_bytes:
            _refuse(path, f"larger than {max_bytes} bytes", info)
        chunks, left = [], max_bytes + 1
        while left > 0:
            chunk = os.read(fd, left)
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def write_private_atomic(path: Path, data: bytes, *, fsync: bool = False) -> None:
    """Replace `path` with `data` (mode 0600): readers see the old file or the new one
    whole, never a part, and two writers never share a temporary file (each gets its own
    name in the same directory). `fsync` also survives a power cut, at its cost."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            if fsync:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
