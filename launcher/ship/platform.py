"""NodePlatform: what a node is, as far as installing Python wheels on it goes."""
from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class NodePlatform:
    """Learnt from a node by the first SSH round trip (or from this machine).

    `system` is `uname -s` lower-cased ("linux", "darwin"); `machine` is `uname -m`
    ("x86_64", "aarch64", "arm64"); `python` the absolute path of the interpreter corral
    will run with; `python_version` its (major, minor, micro); `libc` ("glibc", "musl" or
    "") and `libc_version` ((2, 36) for glibc 2.36; () when unknown).
    """
    system: str
    machine: str
    python: str
    python_version: tuple[int, ...]
    libc: str = ""
    libc_version: tuple[int, ...] = ()

    @property
    def python_tag(self) -> str:
        """"cp311" for CPython 3.11."""
        return f"cp{self.python_version[0]}{self.python_version[1]}"

    @property
    def python_minor(self) -> str:
        """"3.11"."""
        return f"{self.python_version[0]}.{self.python_version[1]}"

    def describe(self) -> str:
        libc = f" {self.libc} {'.'.join(map(str, self.libc_version))}" if self.libc else ""
        return f"{self.system} {self.machine}{libc}, Python {'.'.join(map(str, self.python_version))}"
