"""Writing a wheel (PEP 427) byte for byte the same every time.

Both corral's own wheel and the wheels repacked from installed distributions are written
here. The same files give the same bytes: entries sorted by name, a fixed timestamp, modes
normalised to 0644/0755, one compression level, and a RECORD (PEP 376: path, sha256 in
urlsafe base64 without padding, size) generated from what was written, listed last.
"""
from __future__ import annotations

import base64
import hashlib
import os
import re
import zipfile
from pathlib import Path

# Zip cannot store times before 1980; every entry gets this one.
FIXED_ZIP_TIME = (1980, 1, 1, 0, 0, 0)
COMPRESS_LEVEL = 6


def escape_name(name: str) -> str:
    """A distribution name as wheel file names and dist-info directories spell it."""
    return re.sub(r"[-_.]+", "_", name).lower()


def escape_version(version: str) -> str:
    return version.replace("-", "_")


def compressed_tag(tags: list[str]) -> str:
    """["py2-none-any", "py3-none-any"] -> "py2.py3-none-any" (PEP 425 tag sets). The
    parts keep their first-seen order, so the same WHEEL file gives the same name."""
    columns: list[list[str]] = [[], [], []]
    for tag in tags:
        for column, part in zip(columns, tag.split("-")):
            if part not in column:
                column.append(part)
    return "-".join(".".join(column) for column in columns)


def wheel_file_name(name: str, version: str, tags: list[str]) -> str:
    return f"{escape_name(name)}-{escape_version(version)}-{compressed_tag(tags)}.whl"


def record_hash(data: bytes) -> str:
    digest = hashlib.sha256(data).digest()
    return "sha256=" + base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class WheelWriter:
    """Collects (archive name, bytes, executable) and writes them as a wheel whose RECORD
    lives at `<dist_info>/RECORD`. Nothing touches the disk before write()."""

    def __init__(self, dist_info: str):
        self.dist_info = dist_info.rstrip("/")
        self._entries: dict[str, tuple[bytes, bool]] = {}

    def add(self, arcname: str, data: bytes, executable: bool = False) -> None:
        if arcname in self._entries:
            raise ValueError(f"{arcname} is in the wheel twice")
        if arcname.startswith("/") or ".." in arcname.split("/"):
            raise ValueError(f"{arcname} would install outside the environment")
        self._entries[arcname] = (data, executable)

    def names(self) -> list[str]:
        return sorted(self._entries)

    def write(self, path: Path) -> Path:
        """Write the wheel to `path` (through a temporary name in the same directory, so a
        reader never sees half a file). The dist-info directory is written last, as PEP
        427 recommends, with RECORD its last entry."""
        record_name = f"{self.dist_info}/RECORD"
        ordered = sorted(self._entries, key=lambda name: (name.startswith(self.dist_info + "/"),
                                                          name))
        lines = [f"{_csv(name)},{record_hash(self._entries[name][0])},"
                 f"{len(self._entries[name][0])}" for name in ordered if name != record_name]
        lines.append(f"{_csv(record_name)},,")
        temp = path.with_name(f".{path.name}.{os.getpid()}.part")
        try:
            with zipfile.ZipFile(temp, "w", compression=zipfile.ZIP_DEFLATED,
                                 compresslevel=COMPRESS_LEVEL) as archive:
                for name in ordered:
                    if name != record_name:
                        _write_entry(archive, name, *self._entries[name])
                _write_entry(archive, record_name, ("\n".join(lines) + "\n").encode(), False)
            os.replace(temp, path)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
        return path


def _write_entry(archive: zipfile.ZipFile, name: str, data: bytes, executable: bool) -> None:
    info = zipfile.ZipInfo(name, date_time=FIXED_ZIP_TIME)
    info.compress_type = zipfile.ZIP_DEFLATED
    info.create_system = 3  # unix, so the mode below is honoured by installers
    info.external_attr = ((0o100755 if executable else 0o100644) & 0xFFFF) << 16
    archive.writestr(info, data, compress_type=zipfile.ZIP_DEFLATED,
                     compresslevel=COMPRESS_LEVEL)


def _csv(name: str) -> str:
    """RECORD is CSV: a path with a comma or quote is quoted."""
    if any(char in name for char in ',"\n'):
        return '"' + name.replace('"', '""') + '"'
    return name
