"""What a node's Python accepts: its wheel tags and its environment-marker values.

A wheelhouse is built on the laptop for another machine, so nothing here may look at this
interpreter's own tags (`packaging.tags.sys_tags()` would): everything is computed from the
node's NodePlatform. Two uses:
- `platform_tags(platform)`: the `--platform` values handed to `pip download`, most specific
  first (pip does not expand `manylinux_2_X` to older glibcs by itself);
- `supports(platform, tag)`: whether a locally installed wheel's tag (from its WHEEL file)
  runs on the node, which decides between repacking it and downloading another build;
- `marker_environment(platform)`: the values PEP 508 markers are evaluated against, so a
  dependency like `tomli; python_version < "3.11"` is judged for the node, not for us.
"""
from __future__ import annotations

import functools
import glob
import platform as host_platform
import sys

from launcher.ship.platform import NodePlatform

# A glibc node whose version the probe could not learn is taken to be manylinux2014's
# baseline, which every current Linux meets; a musl one musllinux_1_1's.
DEFAULT_GLIBC = (2, 17)
DEFAULT_MUSL = (1, 1)
# NodePlatform carries no macOS version; 11.0 is the oldest release on Apple silicon and
# the floor most projects still publish wheels for on Intel too.
DEFAULT_MACOS = (11, 0)
# Legacy manylinux names and the glibc each stands for (PEP 600).
LEGACY_MANYLINUX = {"manylinux1": (2, 5), "manylinux2010": (2, 12), "manylinux2014": (2, 17)}
_OLDEST_GLIBC_MINOR = 5


def marker_environment(platform: NodePlatform) -> dict[str, str]:
    """PEP 508 marker values for the node's interpreter (CPython is assumed: corral's node
    environment runs on the node's `python3`). platform_release/platform_version are not
    known from the probe and are left empty, which no dependency of ours tests."""
    full = ".".join(str(part) for part in platform.python_version)
    return {
        "implementation_name": "cpython",
        "implementation_version": full,
        "os_name": "posix",
        "platform_machine": platform.machine,
        "platform_python_implementation": "CPython",
        "platform_release": "",
        "platform_system": {"linux": "Linux", "darwin": "Darwin"}.get(
            platform.system, platform.system.capitalize()),
        "platform_version": "",
        "python_full_version": full,
        "python_version": platform.python_minor,
        "sys_platform": platform.system,
    }


def _libc_version(platform: NodePlatform) -> tuple[int, int]:
    if platform.libc == "musl":
        default = DEFAULT_MUSL
    else:
        default = DEFAULT_GLIBC
    version = tuple(platform.libc_version[:2])
    return version if len(version) == 2 else default  # type: ignore[return-value]


def platform_tags(platform: NodePlatform) -> list[str]:
    """The platform tags the node accepts, newest first (for `pip download --platform`).
    Raises ValueError for systems corral does not ship to."""
    arch = platform.machine
    if platform.system == "linux" and platform.libc == "musl":
        major, minor = _libc_version(platform)
        return [f"musllinux_{major}_{m}_{arch}" for m in range(minor, -1, -1)]
    if platform.system == "linux":
        major, minor = _libc_version(platform)
        if major != 2:
            raise ValueError(f"glibc {major}.{minor} is not a glibc 2.x")
        tags = [f"manylinux_2_{m}_{arch}" for m in range(minor, _OLDEST_GLIBC_MINOR - 1, -1)]
        tags += [f"{legacy}_{arch}" for legacy, (_, needs) in sorted(
            LEGACY_MANYLINUX.items(), key=lambda item: item[1], reverse=True) if needs <= minor]
        return tags
    if platform.system == "darwin":
        return _macos_tags(arch)
    raise ValueError(f"corral ships only to linux and darwin nodes, not {platform.system!r}")


def _macos_tags(arch: str) -> list[str]:
    major, _ = DEFAULT_MACOS
    versions = [(m, 0) for m in range(major, 10, -1)] + [(10, m) for m in range(16, 8, -1)]
    arches = [arch, "universal2"] + (["intel", "universal"] if arch == "x86_64" else [])
    return [f"macosx_{x}_{y}_{a}" for x, y in versions for a in arches
            if not (a == "arm64" and (x, y) < (11, 0))]


def supports(platform: NodePlatform, tag: str) -> bool:
    """True when a wheel tagged `tag` ("cp311-cp311-manylinux_2_17_x86_64") installs and
    runs on the node. `linux_<arch>` (a wheel built on some machine, not portable) is
    never taken to run elsewhere."""
    try:
        interpreter, abi, plat = tag.split("-")
    except ValueError:
        return False
    return (_interpreter_ok(platform, interpreter, abi)
            and _platform_ok(platform, plat))


def _interpreter_ok(platform: NodePlatform, interpreter: str, abi: str) -> bool:
    major, minor = platform.python_version[0], platform.python_version[1]
    own = f"cp{major}{minor}"
    kind, digits = interpreter[:2], interpreter[2:]
    if kind not in ("py", "cp") or not digits.isdigit() or int(digits[0]) != major:
        return False
    wheel_minor = int(digits[1:]) if len(digits) > 1 else 0
    if abi == own.lower() and interpreter == own:
        return True
    if abi == "abi3":
        return kind == "cp" and wheel_minor <= minor
    if abi == "none":
        return interpreter == own if kind == "cp" else wheel_minor <= minor
    return False


def _platform_ok(platform: NodePlatform, plat: str) -> bool:
    if plat == "any":
        return True
    return plat in _accepted_platforms(platform)


@functools.lru_cache(maxsize=32)
def _accepted_platforms(platform: NodePlatform) -> frozenset[str]:
    try:
        return frozenset(platform_tags(platform))
    except ValueError:
        return frozenset()


def wheel_file_tags(file_name: str) -> list[str]:
    """The tags a wheel's file name claims: "a-1-cp311-cp311-x.y.whl" gives the product
    of its dotted parts (cp311-cp311-x, cp311-cp311-y)."""
    stem = file_name[:-4] if file_name.endswith(".whl") else file_name
    parts = stem.split("-")
    if len(parts) < 5:
        return []
    interpreters, abis, plats = (part.split(".") for part in parts[-3:])
    return [f"{i}-{a}-{p}" for i in interpreters for a in abis for p in plats]


def this_machine() -> NodePlatform:
    """This interpreter as a NodePlatform (the laptop; tests and the bench build for it)."""
    libc, libc_text = host_platform.libc_ver()
    if sys.platform == "linux" and not libc:
        libc = "musl" if glob.glob("/lib/ld-musl-*.so.1") else ""
    version = tuple(int(part) for part in libc_text.split(".")[:2] if part.isdigit())
    return NodePlatform(system=sys.platform, machine=host_platform.machine(),
                        python=sys.executable, python_version=tuple(sys.version_info[:3]),
                        libc=libc, libc_version=version)
