"""Objects spilled to a node's local disk: one file per object in the node's private
spill directory ($CORRAL_NODE_DIR/session/spill, mode 700; files 0600), written when
the object store is over its memory capacity and read back (memory-mapped, so a
spilled object is sent from the page cache without being copied into the agent)
whenever it is asked for. A file is removed when its object is freed; the directory
when the node's agent stops, and a new agent of the session clears what a killed one
left.

File layout: the pickle bytes at offset 0, then each out-of-band buffer at the next
offset that is a multiple of 64; the offsets stay in memory (SpilledObject).

Room: at most `limit_bytes` of spilled objects (None: no limit of our own), and never
so much that the disk would have less than DISK_RESERVE_FRACTION of it free. Beyond
that, and on any error writing, ObjectStoreFullError (nothing half-written is kept)."""
from __future__ import annotations

import errno
import itertools
import logging
import mmap
import os
import shutil
import time
from pathlib import Path

from runtime.node import private_paths
from runtime.errors import ObjectStoreFullError
from runtime.protocol.frames import Serialized

ALIGN_BYTES = 64
DISK_RESERVE_FRACTION = 0.05
_NO_FALLOCATE = (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)
_OPEN_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_OPEN_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC


class SpilledObject:
    """Where a spilled object's parts are in its file."""

    __slots__ = ("path", "data_bytes", "spans", "size_bytes", "file_bytes")

    def __init__(self, path: Path, data_bytes: int, spans: list[tuple[int, int]]):
        self.path = path
        self.data_bytes = data_bytes
        self.spans = spans                      # [(offset, length)] of each buffer
        self.size_bytes = data_bytes + sum(length for _, length in spans)
        self.file_bytes = max([data_bytes] + [offset + length for offset, length in spans])


def layout(data_bytes: int, sizes: list[int]) -> list[tuple[int, int]]:
    spans, offset = [], data_bytes
    for size in sizes:
        offset = -(-offset // ALIGN_BYTES) * ALIGN_BYTES
        spans.append((offset, size))
        offset += size
    return spans


class SpillDir:
    def __init__(self, path, node_id: str, limit_bytes: int | None = None):
        self.path = Path(path)
        self.node_id = node_id
        self.limit_bytes = limit_bytes
        self.used_bytes = 0          # file bytes of spilled objects (and ones arriving)
        self.files = 0
        self.written_bytes = 0       # totals, for stats and the benchmark
        self.write_s = 0.0
        self.read_bytes = 0
        self._names = itertools.count()
        private_paths.ensure_dir(self.path, private=True)
        for entry in os.scandir(self.path):   # a killed agent's files: nobody owns them
            if entry.is_file(follow_symlinks=False) or entry.is_symlink():
                os.unlink(entry.path)

    # ------------------------------------------------------------------ writing
    def write(self, value: Serialized) -> SpilledObject:
        """Spill a whole value; ObjectStoreFullError when there is no room."""
        started_s = time.monotonic()
        views = [memoryview(buffer).cast("B") for buffer in value.buffers]
        writer = self.create(value.data, [view.nbytes for view in views])
        try:
            for index, view in enumerate(views):
                writer.write(index, 0, view)
        except BaseException:
            writer.abort()
            raise
        spilled = writer.finish()
        self.write_s += time.monotonic() - started_s
        return spilled

    def create(self, data: bytes, sizes: list[int]) -> "SpillWriter":
        """A file for an object whose buffers arrive in pieces (SpillWriter.write);
        its room is taken now, so a full disk is known before any piece is kept."""
        spilled = SpilledObject(self.path / f"{next(self._names)}.obj", len(data),
                                layout(len(data), sizes))
        self._check_room(spilled.file_bytes)
        try:
            fd = os.open(spilled.path, _OPEN_NEW, 0o600)
        except OSError as error:
            raise self._full(f"cannot create {spilled.path}: {error.strerror}",
                             spilled.size_bytes) from None
        self.used_bytes += spilled.file_bytes
        self.files += 1
        writer = SpillWriter(self, fd, spilled)
        try:
            _reserve(fd, spilled.file_bytes)
        except OSError as error:
            writer.abort()
            raise self._full(f"cannot take {spilled.file_bytes} bytes for "
                             f"{spilled.path}: {error.strerror}",
                             spilled.size_bytes) from None
        try:
            writer.pwrite(memoryview(data), 0)
        except BaseException:
            writer.abort()
            raise
        return writer

    def _check_room(self, file_bytes: int) -> None:
        if self.limit_bytes is not None and self.used_bytes + file_bytes > self.limit_bytes:
            raise self._full(f"{file_bytes} bytes more would pass the spill limit of "
                             f"{self.limit_bytes} bytes ({self.used_bytes} in use)",
                             file_bytes)
        try:
            disk = os.statvfs(self.path)
        except OSError as error:
            raise self._full(f"cannot read the spill disk's free space: "
                             f"{error.strerror}", file_bytes) from None
        free_bytes = disk.f_bavail * disk.f_frsize
        reserve_bytes = int(disk.f_blocks * disk.f_frsize * DISK_RESERVE_FRACTION)
        if free_bytes - file_bytes < reserve_bytes:
            raise self._full(f"the disk of {self.path} has {free_bytes} bytes free; "
                             f"{file_bytes} more would leave less than "
                             f"{DISK_RESERVE_FRACTION:.0%} of it", file_bytes)

    def _full(self, reason: str, size_bytes: int) -> ObjectStoreFullError:
        return ObjectStoreFullError(self.node_id, f"cannot spill to disk: {reason}",
                                    size_bytes)

    # ------------------------------------------------------------------ reading
    def read(self, spilled: SpilledObject) -> Serialized:
        """The object, its buffers memory-mapped from its file (read-only): nothing is
        copied into the process but the pickle bytes. ObjectStoreFullError when the
        file cannot be read or mapped (no address space left)."""
        if spilled.file_bytes == 0:
            return Serialized(b"", [])
        try:
            fd = os.open(spilled.path, _OPEN_READ)
            try:
                mapped = mmap.mmap(fd, spilled.file_bytes, prot=mmap.PROT_READ)
            finally:
                os.close(fd)
        except (OSError, ValueError, MemoryError) as error:
            reason = getattr(error, "strerror", None) or str(error) or type(error).__name__
            raise ObjectStoreFullError(self.node_id, f"cannot read spilled object "
                                       f"{spilled.path.name}: {reason}",
                                       spilled.size_bytes) from None
        mapped.madvise(mmap.MADV_SEQUENTIAL)
        view = memoryview(mapped)
        data = bytes(view[:spilled.data_bytes])
        buffers = [view[offset:offset + length] for offset, length in spilled.spans]
        view.release()
        self.read_bytes += spilled.size_bytes
        return Serialized(data, buffers)

    # ------------------------------------------------------------------ removing
    def remove(self, spilled: SpilledObject) -> None:
        """Remove a freed object's file (a mapping still being sent stays valid)."""
        try:
            os.unlink(spilled.path)
        except FileNotFoundError:
            pass
        self.used_bytes -= spilled.file_bytes
        self.files -= 1

    def close(self) -> None:
        """The node stops: every spilled object goes, and the directory."""
        shutil.rmtree(self.path, ignore_errors=True)
        self.used_bytes = 0
        self.files = 0


class SpillWriter:
    """One spill file being written: the value's buffers, whole or in pieces."""

    def __init__(self, spill: SpillDir, fd: int, spilled: SpilledObject):
        self.spill = spill
        self.fd = fd
        self.spilled = spilled

    def write(self, index: int, offset: int, piece) -> None:
        """`piece` of buffer `index`, starting `offset` bytes into that buffer."""
        start, length = self.spilled.spans[index]
        view = memoryview(piece).cast("B")
        if offset < 0 or offset + view.nbytes > length:
            raise ValueError(f"piece [{offset}, {offset + view.nbytes}) is outside "
                             f"buffer {index} of {length} bytes")
        self.pwrite(view, start + offset)

    def pwrite(self, view: memoryview, position: int) -> None:
        done = 0
        try:
            while done < view.nbytes:
                done += os.pwrite(self.fd, view[done:], position + done)
        except OSError as error:
            raise self.spill._full(f"writing {self.spilled.path}: {error.strerror}",
                                   self.spilled.size_bytes) from None
        self.spill.written_bytes += view.nbytes

    def finish(self) -> SpilledObject:
        os.close(self.fd)
        self.fd = -1
        return self.spilled

    def abort(self) -> None:
        """Nothing half-written stays: the file goes and its room is given back."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        self.spill.remove(self.spilled)


def _reserve(fd: int, size_bytes: int) -> None:
    """Take the file's blocks now (a full disk fails here, not halfway through)."""
    if size_bytes <= 0:
        return
    try:
        os.posix_fallocate(fd, 0, size_bytes)
    except OSError as error:
        if error.errno not in _NO_FALLOCATE:
            raise


def open_store(node_id: str, session, memory_bytes=None, spill_limit_bytes=None):
    """The node agent's object store: capacity from the argument, else
    $CORRAL_OBJECT_STORE_MEMORY, else a share of the node's memory (see
    runtime.agent.store_memory); spilling to <session>/spill, at most the spill limit
    (argument, else $CORRAL_OBJECT_SPILL_LIMIT, else the disk's room)."""
    from runtime.agent import store_memory
    from runtime.agent.store import ObjectStore
    store_memory.return_large_buffers()     # (before the agent starts its threads)
    capacity = store_memory.configured_bytes(memory_bytes, store_memory.ENV_STORE_MEMORY)
    if capacity is None:
        capacity = store_memory.default_capacity_bytes()
    limit = store_memory.configured_bytes(spill_limit_bytes, store_memory.ENV_SPILL_LIMIT)
    spill = SpillDir(Path(session) / "spill", node_id, limit)
    logging.getLogger("corral.agent").info(
        "object store: %d bytes in memory, spilling to %s (limit %s)", capacity,
        spill.path, "the disk's room" if limit is None else f"{limit} bytes")
    return ObjectStore(capacity, spill, node_id, store_memory.ReceiveLimit())
