"""How much memory a node's object store may use, and how large a value this process
can take in at once: from the machine's RAM (psutil), a cgroup (v2 or v1) memory limit
and the process's address-space limit (RLIMIT_AS, e.g. set with `prlimit --as`),
whichever is smallest. Also the parsing of sizes given on the command line or in the
environment ("536870912", "512M", "2GiB").

Settings (a `corral start` option or init() argument wins over the environment):
    CORRAL_OBJECT_STORE_MEMORY   bytes of objects kept in memory (default 30 % of the
                                 memory limit); beyond it objects spill to disk
    CORRAL_OBJECT_SPILL_LIMIT    bytes of spilled objects on disk (default: no limit
                                 but the disk's own, keeping 5 % of it free)
"""
from __future__ import annotations

import os
import re
import resource
import time

import psutil

ENV_STORE_MEMORY = "CORRAL_OBJECT_STORE_MEMORY"
ENV_SPILL_LIMIT = "CORRAL_OBJECT_SPILL_LIMIT"
DEFAULT_STORE_FRACTION = 0.3
RECEIVE_MARGIN_BYTES = 64 << 20      # kept back for the process's own allocations
CGROUP_FILES = ("/sys/fs/cgroup/memory.max",                    # v2 (own namespace)
                "/sys/fs/cgroup/memory/memory.limit_in_bytes")  # v1
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:I?B)?\s*$", re.IGNORECASE)


def parse_bytes(text: str | int) -> int:
    """'536870912', '512M', '512MiB', '1.5G' -> bytes (binary units); ValueError else."""
    if isinstance(text, int):
        if text < 0:
            raise ValueError(f"{text} is not a size in bytes")
        return text
    match = _SIZE.match(str(text))
    if not match:
        raise ValueError(f"{text!r} is not a size (e.g. 536870912, 512M, 2GiB)")
    return int(float(match.group(1)) * _UNITS[match.group(2).upper()])


def configured_bytes(value, env_name: str) -> int | None:
    """An explicit size, else the environment's (parsed), else None."""
    if value is None:
        value = os.environ.get(env_name) or None
    return None if value is None else parse_bytes(value)


def _cgroup_limit_bytes() -> int | None:
    for path in CGROUP_FILES:
        try:
            with open(path) as handle:
                text = handle.read().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < (1 << 60):   # v1 says "no limit" with ~2**63
            return int(text)
        return None
    return None


def _address_space_limit_bytes() -> int | None:
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    return None if soft == resource.RLIM_INFINITY else soft


def memory_limit_bytes() -> int:
    """The memory this process may use at most: RAM, a cgroup's limit, RLIMIT_AS."""
    limits = [psutil.virtual_memory().total, _cgroup_limit_bytes(),
              _address_space_limit_bytes()]
    return min(limit for limit in limits if limit is not None)


def default_capacity_bytes(fraction: float = DEFAULT_STORE_FRACTION) -> int:
    return int(memory_limit_bytes() * fraction)


class ReceiveLimit:
    """The largest value this process can likely allocate now (RAM available, room
    left under RLIMIT_AS and under a cgroup limit, less a margin); re-measured at most
    every `every_s`, since a fetch asks it for every object it requests."""

    def __init__(self, every_s: float = 0.2):
        self.every_s = every_s
        self._value = 0
        self._measured_s = float("-inf")
        self._process = psutil.Process()

    def bytes(self) -> int:
        now = time.monotonic()
        if now - self._measured_s >= self.every_s:
            self._value = self._measure()
            self._measured_s = now
        return self._value

    def _measure(self) -> int:
        room = [psutil.virtual_memory().available]
        address_space = _address_space_limit_bytes()
        if address_space is not None:
            room.append(address_space - self._process.memory_info().vms)
        cgroup = _cgroup_limit_bytes()
        if cgroup is not None:
            room.append(cgroup - self._process.memory_info().rss)
        return max(0, min(room) - RECEIVE_MARGIN_BYTES)


M_MMAP_THRESHOLD = -3     # glibc mallopt parameters (malloc.h)
M_ARENA_MAX = -8
MMAP_THRESHOLD_BYTES = 1 << 20
ARENA_MAX = 2


def return_large_buffers() -> bool:
    """glibc only (elsewhere nothing changes, -> False): allocations of 1 MiB or more
    get pages of their own, given back to the system when freed, and threads share at
    most two malloc arenas. By default glibc raises its mmap threshold to the size of
    the last large block freed (up to 32 MiB), after which a node agent's received
    objects come from arenas that keep freed space, and spilling would not give
    memory back: for the same 600 MiB of objects through a 48 MiB store, an agent's
    address space peaked 393 MiB above its start (resident 188 MiB after), and 240
    MiB (resident 52 MiB) with these settings."""
    import ctypes
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and \
        bool(mallopt(M_ARENA_MAX, ARENA_MAX))
