"""Copy files and trees, skipping files whose content is unchanged (size + sha256).

One logic for every direction: `plan_local_source` walks a local tree with rsync_exclude
style patterns, and `sync_plan` decides what to copy from the destination's digests.
  - `copy_tree_local` copies on this machine (LocalRunner, the `process` provider);
  - `sftp_put` / `sftp_get` copy to/from an SSH host (SSHRunner). The remote side needs
    only GNU coreutils and findutils: one shell script lists the remote digests (and
    creates the directories) in a single round trip per sync, then changed files move over
    SFTP. No rsync binary needed anywhere.

Semantics (like `rsync -r SRC/ DST/` without --delete): a directory's contents land in
DST, nothing at DST is deleted; a file source is copied to the path DST (or into DST when
DST ends with "/"). File modes are preserved (also when only the mode changed).

Exclude patterns: fnmatch against the path relative to the source root and against the
basename; a pattern ending in "/" matches directories only (their whole subtree is skipped);
a pattern starting with "/" is anchored at the source root.
"""
from __future__ import annotations

import contextlib
import dataclasses
import fnmatch
import hashlib
import os
import posixpath
import shlex
import shutil
import stat
import uuid
from typing import Callable, ContextManager, Iterable

from launcher.errors import UsageError

CHUNK_BYTES = 1 << 20
PREFETCH_ABOVE_BYTES = 256 * 1024


class SyncSourceMissingError(UsageError, FileNotFoundError):
    """The file or directory to copy does not exist (locally or on the host). A
    ClusterError (exit code 2 in the CLI) that is also a FileNotFoundError."""

    def __init__(self, path: str, where: str = "here"):
        self.path = path
        self.where = where
        super().__init__(f"no such file or directory {where}: {path}")


@dataclasses.dataclass(frozen=True)
class SyncEntry:
    rel: str          # destination path relative to the destination root
    source: str       # where the bytes come from (a local or remote path)
    size_bytes: int
    mode: int         # permission bits, e.g. 0o644
    digest: str | None = None  # sha256 hex, when already known (remote sources)


@dataclasses.dataclass
class SyncPlan:
    root: str                     # destination root directory
    dirs: list[str]               # directories to create, relative to root
    files: list[SyncEntry]


def is_excluded(rel_path: str, is_dir: bool, patterns: Iterable[str]) -> bool:
    rel_path = rel_path.strip("/")
    base = posixpath.basename(rel_path)
    for pattern in patterns:
        if pattern.endswith("/"):
            if not is_dir:
                continue
            pattern = pattern.rstrip("/")
        if pattern.startswith("/"):
            if fnmatch.fnmatchcase(rel_path, pattern.lstrip("/")):
                return True
            continue
        if fnmatch.fnmatchcase(rel_path, pattern) or fnmatch.fnmatchcase(base, pattern):
            return True
    return False


def sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def plan_local_source(src: str, dst: str, exclude: Iterable[str] = ()) -> SyncPlan:
    """What copying local `src` to `dst` involves, before looking at the destination."""
    patterns = list(exclude or [])
    src = os.path.expanduser(src)
    if not os.path.exists(src):
        raise SyncSourceMissingError(src)
    if not os.path.isdir(src):
        info = os.stat(src)
        root, name = (dst.rstrip("/") or "/", os.path.basename(src)) if dst.endswith("/") \
            else (posixpath.dirname(dst) or ".", posixpath.basename(dst))
        return SyncPlan(root, [], [SyncEntry(name, src, info.st_size,
                                             stat.S_IMODE(info.st_mode))])
    dirs, files = [], []
    seen = {os.path.realpath(src)}  # symlinks are followed; a directory reached twice (a cycle) once
    for current, subdirs, names in os.walk(src, followlinks=True):
        rel_dir = os.path.relpath(current, src)
        rel_dir = "" if rel_dir == "." else rel_dir.replace(os.sep, "/")
        kept = []
        for name in sorted(subdirs):
            rel = posixpath.join(rel_dir, name)
            real = os.path.realpath(os.path.join(current, name))
            if real in seen:
                continue
            seen.add(real)
            if not is_excluded(rel, True, patterns):
                kept.append(name)
                dirs.append(rel)
        subdirs[:] = kept
        for name in sorted(names):
            rel = posixpath.join(rel_dir, name)
            path = os.path.join(current, name)
            if is_excluded(rel, False, patterns) or not os.path.isfile(path):
                continue
            info = os.stat(path)
            files.append(SyncEntry(rel, path, info.st_size, stat.S_IMODE(info.st_mode)))
    return SyncPlan(dst.rstrip("/") or "/", dirs, files)


def sync_plan(files: list[SyncEntry], dest_state: dict[str, tuple[int, str, int]],
              source_digest: Callable[[SyncEntry], str]
              ) -> tuple[list[SyncEntry], list[SyncEntry]]:
    """Split files into (to copy, mode fix only), given the destination's
    {rel: (size_bytes, sha256, mode)}. Digests of sources are computed only when sizes
    match, so new or resized files cost no hashing."""
    to_copy, to_chmod = [], []
    for entry in files:
        have = dest_state.get(entry.rel)
        if have is None or have[0] != entry.size_bytes or have[1] != source_digest(entry):
            to_copy.append(entry)
        elif have[2] != entry.mode:
            to_chmod.append(entry)
    return to_copy, to_chmod


def _local_state(root: str, rels: Iterable[str]) -> dict[str, tuple[int, str, int]]:
    state = {}
    for rel in rels:
        path = os.path.join(root, rel)
        if os.path.isfile(path):
            info = os.stat(path)
            state[rel] = (info.st_size, sha256_file(path), stat.S_IMODE(info.st_mode))
    return state


def _entry_digest(entry: SyncEntry) -> str:
    return entry.digest or sha256_file(entry.source)


def copy_tree_local(src: str, dst: str, exclude: list[str] | None = None) -> int:
    """Copy a file or tree on this machine; returns the number of files copied."""
    plan = plan_local_source(src, dst, exclude or [])
    return _apply_locally(plan)


def partial_name(target: str) -> str:
    """Where a file is written before it is renamed over `target`: unique per copy, so
    two copies to one path at once (nodes of the `process` provider share this
    machine's disk) never rename each other's half-written file."""
    return f"{target}.corral-partial-{uuid.uuid4().hex[:12]}"


def _apply_locally(plan: SyncPlan, fetch: Callable[[SyncEntry, str], None] | None = None
                   ) -> int:
    """Bring local plan.root up to date; `fetch(entry, path)` writes one file (default: a
    local copy from entry.source). Writes go to a temporary name, then rename."""
    os.makedirs(plan.root, exist_ok=True)
    for rel in plan.dirs:
        os.makedirs(os.path.join(plan.root, rel), exist_ok=True)
    to_copy, to_chmod = sync_plan(plan.files, _local_state(plan.root, [f.rel for f in plan.files]),
                                  _entry_digest)
    for entry in to_copy:
        target = os.path.join(plan.root, entry.rel)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        partial = partial_name(target)
        try:
            if fetch is None:
                shutil.copyfile(entry.source, partial)
            else:
                fetch(entry, partial)
            os.chmod(partial, entry.mode)
            os.replace(partial, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(partial)
            raise
    for entry in to_chmod:
        os.chmod(os.path.join(plan.root, entry.rel), entry.mode)
    return len(to_copy)


# -- remote side (SSH): one listing script per sync, then SFTP ---------------------------

RunScript = Callable[[str, bytes], bytes]
"""Runs a bash script on the remote host with the given stdin; returns its stdout."""
OpenSFTP = Callable[[], ContextManager]
"""Returns a context manager giving a paramiko SFTPClient (closed on exit)."""

# Few processes (each one costs the host a fork and exec): the listing is split with bash
# builtins, and each tool runs once through xargs (which keeps within the argument limit).
_PUT_STATE_SCRIPT = r"""
mkdir -p -- {root} && cd -- {root} || exit 3
dirs=() files=()
while IFS= read -r -d '' entry; do
  case $entry in
    d/*) dirs+=("${{entry:2}}") ;;
    f/*) files+=("${{entry:2}}") ;;
  esac
done
if [ ${{#dirs[@]}} -gt 0 ]; then printf '%s\0' "${{dirs[@]}}" | xargs -0 mkdir -p --; fi
printf 'HASHES\0'
if [ ${{#files[@]}} -gt 0 ]; then
  printf '%s\0' "${{files[@]}}" | xargs -0 sha256sum -z -- 2>/dev/null
  printf 'MODES\0'
  printf '%s\0' "${{files[@]}}" | xargs -0 stat --printf '%a %s %n\0' -- 2>/dev/null
else
  printf 'MODES\0'
fi
exit 0
"""

_GET_LISTING_SCRIPT = r"""
root={root}
if [ -d "$root" ]; then
  cd -- "$root" || exit 3
  printf 'DIR\0'
  find . -mindepth 1 -type d -printf '%P\0'
  printf 'HASHES\0'
  find . -type f -printf '%P\0' | xargs -0 -r sha256sum -z -- 2>/dev/null
  printf 'MODES\0'
  find . -type f -printf '%m %s %P\0'
elif [ -f "$root" ]; then
  printf 'FILE\0HASHES\0'
  sha256sum -z -- "$root"
  printf 'MODES\0'
  stat --printf '%a %s %n\0' -- "$root"
else
  printf 'MISSING\0'
fi
"""


def remote_path(path: str) -> str:
    """`~/x` -> `x`: SFTP and remote shells both start in the home directory."""
    if path in ("~", "~/"):
        return "."
    return path[2:] if path.startswith("~/") else path


def _parse_state(output: bytes) -> tuple[list[str], dict[str, tuple[int, str, int]]]:
    """Parse the listing scripts' output into (header words, {rel: (size, sha, mode)})."""
    records = output.decode(errors="surrogateescape").split("\0")
    header, hashes, modes, section = [], {}, {}, "header"
    for record in records:
        if record in ("HASHES", "MODES"):
            section = record
        elif not record:
            continue
        elif section == "header":
            header.append(record)
        elif section == "HASHES":
            digest, _, name = record.partition("  ")
            hashes[name] = digest
        else:
            mode, size, name = record.split(" ", 2)
            modes[name] = (int(size), int(mode, 8))
    state = {name: (size, hashes.get(name, ""), mode) for name, (size, mode) in modes.items()}
    return header, state


def sftp_put(open_sftp: OpenSFTP, run_script: RunScript, src: str, dst: str,
             exclude: list[str] | None = None) -> int:
    """Copy local `src` to remote `dst` over SFTP; returns the number of files copied.
    SFTP is opened only when something is to be copied (an unchanged tree costs one
    round trip)."""
    plan = plan_local_source(src, remote_path(dst), exclude or [])
    listing = b"".join(b"d/" + rel.encode() + b"\0" for rel in plan.dirs)
    listing += b"".join(b"f/" + entry.rel.encode() + b"\0" for entry in plan.files)
    output = run_script(_PUT_STATE_SCRIPT.format(root=shlex.quote(plan.root)), listing)
    _, state = _parse_state(output)
    to_copy, to_chmod = sync_plan(plan.files, state, _entry_digest)
    if not to_copy and not to_chmod:
        return 0
    with open_sftp() as sftp:
        for entry in to_copy:
            target = posixpath.join(plan.root, entry.rel)
            partial = partial_name(target)
            try:
                sftp.put(entry.source, partial, confirm=False)
                sftp.chmod(partial, entry.mode)
                sftp.posix_rename(partial, target)
            except OSError:   # e.g. the host's disk is full: leave no partial file
                with contextlib.suppress(OSError):
                    sftp.remove(partial)
                raise
        for entry in to_chmod:
            sftp.chmod(posixpath.join(plan.root, entry.rel), entry.mode)
    return len(to_copy)


def sftp_get(open_sftp: OpenSFTP, run_script: RunScript, src: str, dst: str,
             exclude: list[str] | None = None) -> int:
    """Copy remote `src` (file or tree) to local `dst`; returns the number of files copied."""
    src = remote_path(src)
    output = run_script(_GET_LISTING_SCRIPT.format(root=shlex.quote(src)), b"")
    header, state = _parse_state(output)
    if not header or header[0] == "MISSING":
        raise SyncSourceMissingError(src, "on the remote host")
    patterns = list(exclude or [])
    if header[0] == "FILE":
        (size, digest, mode), = state.values()
        if dst.endswith("/"):
            dst = os.path.join(dst, posixpath.basename(src))
        plan = SyncPlan(os.path.dirname(os.path.abspath(dst)), [],
                        [SyncEntry(os.path.basename(dst), src, size, mode, digest)])
    else:
        dirs = [rel for rel in header[1:] if not _under_excluded(rel, True, patterns)]
        files = [SyncEntry(rel, posixpath.join(src, rel), size, mode, digest)
                 for rel, (size, digest, mode) in sorted(state.items())
                 if not _under_excluded(rel, False, patterns)]
        plan = SyncPlan(dst.rstrip("/") or "/", dirs, files)
    with contextlib.ExitStack() as stack:
        sftp_once: list = []

        def fetch(entry: SyncEntry, path: str) -> None:
            if not sftp_once:  # opened on the first file that needs copying
                sftp_once.append(stack.enter_context(open_sftp()))
            _sftp_fetch(sftp_once[0], entry, path)

        return _apply_locally(plan, fetch)


def _sftp_fetch(sftp, entry: SyncEntry, local_path: str) -> None:
    """Download one file whose size is known from the listing. paramiko's `get` stats the
    file again and starts a prefetch thread per file; small files need neither."""
    with sftp.open(entry.source, "rb") as remote, open(local_path, "wb") as local:
        if entry.size_bytes > PREFETCH_ABOVE_BYTES:
            remote.prefetch(entry.size_bytes)
        # The size is the listing's: a file changing while it is copied is copied as it
        # was then (reading to EOF would cost one more round trip per file).
        remaining = entry.size_bytes
        while remaining > 0:
            chunk = remote.read(min(remaining, CHUNK_BYTES))
            if not chunk:
                break
            local.write(chunk)
            remaining -= len(chunk)


def _under_excluded(rel: str, is_dir: bool, patterns: list[str]) -> bool:
    """Excluded itself, or inside an excluded directory."""
    if not patterns:
        return False
    parts = rel.split("/")
    for depth in range(1, len(parts)):
        if is_excluded("/".join(parts[:depth]), True, patterns):
            return True
    return is_excluded(rel, is_dir, patterns)
