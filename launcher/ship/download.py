"""Fetching wheels built for the node with `pip download`.

One pip run fetches every requirement (pip starts once; its HTTP cache and this machine's
pip configuration, indexes and find-links included, apply as for any pip command):

    python -m pip download --only-binary=:all: --no-deps --platform <tag>... \
        --python-version X.Y --implementation cp --abi cpXY -d DIR req...

`--no-deps` because the closure is ours (pinned to what runs here, markers evaluated for
the node); `--only-binary` because the node cannot build anything. When that run fails,
each requirement is tried alone to name the ones that cannot be had, with pip's reason.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import subprocess
import sys
import zipfile
from email.parser import BytesHeaderParser
from pathlib import Path
from typing import Callable, Sequence

from launcher.ship.platform import NodePlatform
from launcher.ship.requirements import Requirement, canonicalize_name
from launcher.ship.target_tags import platform_tags

PIP_TIMEOUT_S = 900.0
_TAIL_LINES = 6


@dataclasses.dataclass(frozen=True)
class DownloadFailure:
    requirement: str
    message: str


class DownloadFailed(Exception):
    """Some requirements could not be downloaded for the platform; one failure each."""

    def __init__(self, failures: Sequence[DownloadFailure]):
        self.failures = tuple(failures)
        super().__init__("; ".join(f"{f.requirement}: {f.message}" for f in self.failures))


@dataclasses.dataclass(frozen=True)
class Downloaded:
    """A wheel pip saved: its path, and the name, version and Requires-Dist its METADATA
    states (an open requirement's closure continues from them)."""
    path: Path
    name: str
    version: str
    requires: tuple[str, ...]


def pip_available() -> bool:
    """Whether this interpreter can run `python -m pip` (a venv made --without-pip cannot)."""
    return importlib.util.find_spec("pip") is not None


def pip_command(platform: NodePlatform, dest_dir: Path,
                requirements: Sequence[str]) -> list[str]:
    command = [sys.executable, "-m", "pip", "download", "--disable-pip-version-check",
               "--no-input", "--only-binary=:all:", "--no-deps"]
    for tag in platform_tags(platform):
        command += ["--platform", tag]
    command += ["--python-version", platform.python_minor, "--implementation", "cp",
                "--abi", platform.python_tag, "-d", str(dest_dir), *requirements]
    return command


def download(platform: NodePlatform, requirements: Sequence[str], dest_dir: Path,
             on_progress: Callable[[str], None] | None = None) -> dict[str, Downloaded]:
    """Download one wheel per requirement into `dest_dir` (empty or holding only earlier
    downloads); returns {canonical name: Downloaded}. Raises DownloadFailed."""
    if not requirements:
        return {}
    dest_dir.mkdir(parents=True, exist_ok=True)
    if on_progress:
        on_progress(f"downloading {len(requirements)} wheel(s) for {platform.describe()}")
    result = _run(pip_command(platform, dest_dir, requirements))
    if result.returncode != 0:
        if len(requirements) == 1:
            raise DownloadFailed([DownloadFailure(requirements[0], _reason(result))])
        failures = []
        for requirement in requirements:
            alone = _run(pip_command(platform, dest_dir, [requirement]))
            if alone.returncode != 0:
                failures.append(DownloadFailure(requirement, _reason(alone)))
        if failures:
            raise DownloadFailed(failures)
    return _match(requirements, dest_dir)


def _run(command: list[str]) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(command, capture_output=True, text=True,
                              timeout=PIP_TIMEOUT_S, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as error:
        return subprocess.CompletedProcess(command, -1, error.stdout or "",
                                           f"pip did not finish in {PIP_TIMEOUT_S:g} s")


def _reason(result: subprocess.CompletedProcess) -> str:
    """pip's own words: its first ERROR line, else the tail of its output."""
    lines = [line.strip() for line in (result.stderr or "").splitlines() if line.strip()]
    errors = [line.removeprefix("ERROR:").strip() for line in lines
              if line.startswith("ERROR:")]
    chosen = errors[:1] or lines[-_TAIL_LINES:] or \
        (result.stdout or "").strip().splitlines()[-_TAIL_LINES:]
    return " / ".join(chosen) or f"pip exited {result.returncode}"


def _match(requirements: Sequence[str], dest_dir: Path) -> dict[str, Downloaded]:
    """Pair each requirement with the wheel pip saved for it (read from the wheel, so a
    name spelt differently in the file name still matches)."""
    found: dict[str, Downloaded] = {}
    for path in sorted(dest_dir.glob("*.whl")):
        wheel = read_wheel(path)
        found[canonicalize_name(wheel.name)] = wheel
    wanted = {canonicalize_name(Requirement(line).name): line for line in requirements}
    missing = [line for name, line in wanted.items() if name not in found]
    if missing:
        raise DownloadFailed([DownloadFailure(line, "pip reported success but saved no "
                                                    "wheel for it") for line in missing])
    return {name: found[name] for name in wanted}


def read_wheel(path: Path) -> Downloaded:
    """Name, version and Requires-Dist from a wheel's METADATA."""
    with zipfile.ZipFile(path) as archive:
        metadata_name = next((name for name in archive.namelist()
                              if name.count("/") == 1 and name.endswith(".dist-info/METADATA")),
                             None)
        if metadata_name is None:
            raise DownloadFailed([DownloadFailure(path.name, "the wheel has no METADATA")])
        headers = BytesHeaderParser().parsebytes(archive.read(metadata_name))
    return Downloaded(path, headers["Name"], headers["Version"],
                      tuple(headers.get_all("Requires-Dist") or ()))
