"""Turning an installed distribution back into a wheel, offline, from its RECORD.

pip records every file it installs (RECORD: path relative to site-packages, sha256, size)
and keeps the WHEEL file with the tags the wheel was built for. So when those tags run on
the node, the installed files ARE the wheel: we zip them again (bytecode and the
installer's own files left out, RECORD regenerated) instead of downloading anything.

Files pip put outside site-packages are mapped back into the wheel's `.data` directory:
scripts (`bin/`) to `<name>.data/scripts/` with their `#!python` line restored, other
files under the prefix to `<name>.data/data/`. Console-script launchers pip generated from
entry points are dropped (the installer on the node makes them again).

A distribution that cannot be repacked faithfully (no RECORD or WHEEL, an editable
install, a file missing or changed since it was installed) is reported with the reason,
and the caller downloads it instead.
"""
from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import os
import sysconfig
from pathlib import Path

from launcher.ship.platform import NodePlatform
from launcher.ship.target_tags import supports
from launcher.ship.wheel_file import WheelWriter, record_hash, wheel_file_name

# Written by the installer about this one installation; a wheel never carries them, and
# signatures of the old RECORD would be wrong for the new one.
INSTALLER_FILES = {"RECORD", "INSTALLER", "REQUESTED", "direct_url.json", "RECORD.jws",
                   "RECORD.p7s"}


class CannotRepack(Exception):
    """Why an installed distribution must be downloaded instead (carries the reason)."""


@dataclasses.dataclass(frozen=True)
class InstalledWheel:
    """What the installed distribution's WHEEL file says."""
    tags: tuple[str, ...]
    root_is_purelib: bool


def installed_wheel(dist: importlib.metadata.Distribution) -> InstalledWheel:
    text = dist.read_text("WHEEL")
    if text is None:
        raise CannotRepack("it has no WHEEL file (not installed from a wheel)")
    tags: list[str] = []
    purelib = True
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "Tag":
            tags.append(value.strip())
        elif key.strip() == "Root-Is-Purelib":
            purelib = value.strip().lower() == "true"
    if not tags:
        raise CannotRepack("its WHEEL file names no tag")
    return InstalledWheel(tuple(tags), purelib)


def check_repackable(dist: importlib.metadata.Distribution,
                     platform: NodePlatform) -> InstalledWheel:
    """The installed WHEEL when this distribution can be repacked for `platform`; else
    CannotRepack saying why."""
    if dist.read_text("RECORD") is None:
        raise CannotRepack("it has no RECORD (e.g. a system package's egg-info)")
    wheel = installed_wheel(dist)
    if not any(supports(platform, tag) for tag in wheel.tags):
        raise CannotRepack(f"its build ({', '.join(wheel.tags)}) does not run on "
                           f"{platform.describe()}")
    direct = dist.read_text("direct_url.json")
    if direct:
        try:
            editable = json.loads(direct).get("dir_info", {}).get("editable", False)
        except ValueError:
            editable = False
        if editable:
            raise CannotRepack("it is an editable install (its code is not in site-packages)")
    return wheel


def repack(dist: importlib.metadata.Distribution, platform: NodePlatform,
           dest_dir: Path) -> Path:
    """Write `dist` as a wheel into `dest_dir`; returns its path. Raises CannotRepack."""
    wheel = check_repackable(dist, platform)
    site_dir = Path(dist.locate_file("")).resolve()
    dist_info = _dist_info_name(dist)
    data_dir = dist_info[:-len(".dist-info")] + ".data"
    generated = {entry.name for entry in dist.entry_points
                 if entry.group in ("console_scripts", "gui_scripts")}
    layout = _scheme_for(site_dir)
    writer = WheelWriter(dist_info)
    for record in dist.files or []:
        parts = record.parts
        if "__pycache__" in parts or record.suffix == ".pyc":
            continue
        if len(parts) == 2 and parts[0] == dist_info and parts[1] in INSTALLER_FILES:
            continue
        source = Path(record.locate())
        data = _verified_bytes(record, source)
        if parts[0] != "..":
            arcname = record.as_posix()
        else:
            arcname = _outside_name(source.resolve(), layout, data_dir, generated)
            if arcname is None:
                continue
            if arcname.startswith(f"{data_dir}/scripts/"):
                data = _restore_shebang(data)
        try:
            writer.add(arcname, data, executable=os.access(source, os.X_OK))
        except ValueError as error:  # RECORD lists a file twice, or one outside the tree
            raise CannotRepack(str(error)) from None
    name = dist.metadata["Name"]
    return writer.write(dest_dir / wheel_file_name(name, dist.version, list(wheel.tags)))


def _dist_info_name(dist: importlib.metadata.Distribution) -> str:
    for record in dist.files or []:
        if len(record.parts) == 2 and record.parts[0].endswith(".dist-info") \
                and record.parts[1] == "METADATA":
            return record.parts[0]
    raise CannotRepack("its RECORD lists no <name>.dist-info/METADATA")


def _verified_bytes(record, source: Path) -> bytes:
    try:
        data = source.read_bytes()
    except OSError as error:
        raise CannotRepack(f"{record} cannot be read: {error.strerror or error}") from None
    if record.hash is not None and record.hash.mode == "sha256":
        if record_hash(data) != f"sha256={record.hash.value}":
            raise CannotRepack(f"{record} changed since it was installed")
    return data


@dataclasses.dataclass(frozen=True)
class _Layout:
    scripts: Path
    lib_dirs: tuple[Path, ...]
    prefix: Path


def _scheme_for(site_dir: Path) -> _Layout:
    """The install scheme whose purelib or platlib is `site_dir` (the interpreter's own,
    a venv's, or the user site), so files outside it can be told apart."""
    for scheme in (sysconfig.get_default_scheme(), *sysconfig.get_scheme_names()):
        try:
            paths = sysconfig.get_paths(scheme)
        except KeyError:
            continue
        libs = tuple(Path(paths[key]).resolve() for key in ("purelib", "platlib"))
        if site_dir in libs:
            return _Layout(Path(paths["scripts"]).resolve(), libs,
                           Path(paths["data"]).resolve())
    raise CannotRepack(f"its site directory {site_dir} belongs to no install scheme "
                       "this Python knows")


def _outside_name(path: Path, layout: _Layout, data_dir: str,
                  generated: set[str]) -> str | None:
    """Where a file installed outside site-packages goes in the wheel; None to drop it
    (an entry-point launcher); CannotRepack if it cannot be placed."""
    for lib in layout.lib_dirs:
        if path.is_relative_to(lib):
            return path.relative_to(lib).as_posix()
    if path.is_relative_to(layout.scripts):
        name = path.relative_to(layout.scripts).as_posix()
        if name in generated or name.removesuffix(".exe") in generated:
            return None
        return f"{data_dir}/scripts/{name}"
    if path.is_relative_to(layout.prefix):
        return f"{data_dir}/data/{path.relative_to(layout.prefix).as_posix()}"
    raise CannotRepack(f"{path} lies outside the environment it was installed into")


def _restore_shebang(data: bytes) -> bytes:
    """pip rewrote a script's `#!python` to this interpreter's path; put it back so the
    node's installer writes its own."""
    if not data.startswith(b"#!"):
        return data
    first, newline, rest = data.partition(b"\n")
    if b"python" not in first:
        return data
    return b"#!python" + newline + rest
