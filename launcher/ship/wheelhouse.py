"""build_wheelhouse(platform, extras) -> Wheelhouse: every wheel a node needs to install
this corral offline, built once per content and cached.

A wheelhouse holds corral's own wheel (made from the running code, self_wheel.py) and one
wheel for each distribution in the closure of its requirements (requirements.py), pinned
to the versions installed here, with markers evaluated for the node. Each dependency is
repacked from its local installation when that build runs on the node (repack.py: offline,
fast) and downloaded for the node's tags otherwise (download.py: pip).

It lives in `~/.corral/wheelhouses/<hash>/` (0700) with a manifest.json. The hash is of
the inputs: corral's wheel contents, the pinned requirement list, the extras and the node's
tags; so a repeated call hashes the sources, walks the installed metadata and returns the
cached wheelhouse without building anything. Builds happen in a temporary directory that
is renamed into place, under a per-hash file lock: two processes never see half a
wheelhouse, and the second waits for the first instead of building it again.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import json
import os
import secrets
import shutil
import sys
import time
from pathlib import Path
from typing import Callable

from launcher.errors import WheelhouseError
from launcher.paths import corral_home, private_dir
from launcher.ship import download as pip_download
from launcher.ship.platform import NodePlatform
from launcher.ship.repack import CannotRepack, repack
from launcher.ship.requirements import (Closure, CorralProject, InstalledIndex, Pin,
                                        Requirement, RequirementProblem, corral_project)
from launcher.ship.self_wheel import SelfSources, build_self_wheel, collect_sources, \
    self_digest
from launcher.ship.target_tags import marker_environment, platform_tags
from launcher.ship.wheel_file import sha256_file

MANIFEST = "manifest.json"
FORMAT = 1
HASH_LENGTH = 16  # hex digits, as launcher.bootstrap.hashing keeps them
REPACK_THREADS = 4
# The cache keeps the wheelhouses used most recently; older ones go once unused for a
# while (every edit of corral's code makes a new one, 10-30 MB).
KEEP_RECENT = 8
PRUNE_UNUSED_S = 3600.0

Progress = Callable[[str], None]


@dataclasses.dataclass(frozen=True)
class Wheelhouse:
    """A built wheelhouse: `path` holds the wheels and manifest.json; `wheels` their file
    names (sorted); `hash` names it here and on the nodes. `requirement` is what to
    install from it ("corral[aws]==0.2.0")."""
    hash: str
    path: Path
    wheels: tuple[str, ...]
    size_bytes: int
    corral_version: str
    extras: tuple[str, ...] = ()

    @property
    def manifest_path(self) -> Path:
        return self.path / MANIFEST

    @property
    def requirement(self) -> str:
        extras = f"[{','.join(self.extras)}]" if self.extras else ""
        return f"corral{extras}=={self.corral_version}"


@dataclasses.dataclass(frozen=True)
class WheelhousePlan:
    """Everything a build needs, and its hash; computed without building anything."""
    platform: NodePlatform
    extras: tuple[str, ...]
    project: CorralProject
    sources: SelfSources
    closure: Closure
    tags: tuple[str, ...]
    hash: str


def plan_wheelhouse(platform: NodePlatform, extras: frozenset[str] = frozenset()
                    ) -> WheelhousePlan:
    """The inputs of a wheelhouse for `platform` and their content hash. Raises
    WheelhouseError when the node cannot run this corral or a requirement cannot be pinned."""
    project = corral_project()
    _check_python(platform, project)
    try:
        tags = tuple(platform_tags(platform))
    except ValueError as error:
        raise WheelhouseError(platform, project.name, str(error)) from None
    closure = Closure(marker_environment(platform), InstalledIndex(exclude=[project.name]))
    try:
        closure.add(project.requires_for(extras), parent=f"{project.name} {project.version}")
    except RequirementProblem as problem:
        raise WheelhouseError(platform, problem.requirement, problem.message) from None
    sources = collect_sources(project)
    key = {
        "format": FORMAT, "self": self_digest(sources), "extras": sorted(extras),
        "requirements": [_pin_text(pin) for pin in closure.pins()],
        "python": platform.python_tag, "platform_tags": list(tags),
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
    return WheelhousePlan(platform, tuple(sorted(extras)), project, sources, closure, tags,
                          digest[:HASH_LENGTH])


def _pin_text(pin: Pin) -> str:
    extras = f"[{','.join(sorted(pin.extras))}]" if pin.extras else ""
    return f"{pin.name}{extras}{'==' + pin.version if pin.version else pin.specifier}"


def _check_python(platform: NodePlatform, project: CorralProject) -> None:
    if not project.requires_python:
        return
    full = ".".join(str(part) for part in platform.python_version)
    if not Requirement(f"x{project.requires_python}").specifier.contains(full, True):
        raise WheelhouseError(platform, f"{project.name} {project.version}",
                              f"it needs Python {project.requires_python}, and the node's "
                              f"{platform.python or 'python3'} is {full}; install a newer "
                              "Python on the node (or point the node type at one)")


def wheelhouses_dir(cache_dir: Path | None = None) -> Path:
    """Where wheelhouses are kept (0700): `cache_dir`, else $CORRAL_WHEELHOUSE_CACHE (one
    cache for several homes, e.g. a test session's), else ~/.corral/wheelhouses."""
    if cache_dir is None and os.environ.get("CORRAL_WHEELHOUSE_CACHE"):
        cache_dir = Path(os.environ["CORRAL_WHEELHOUSE_CACHE"])
    if cache_dir is not None:
        return private_dir(Path(cache_dir))
    return private_dir(corral_home() / "wheelhouses", levels=2)


def build_wheelhouse(platform: NodePlatform, extras: frozenset[str] = frozenset(), *,
                     cache_dir: Path | None = None,
                     on_progress: Progress | None = None) -> Wheelhouse:
    """The wheelhouse for `platform` with corral's `extras`: the cached one when its inputs
    are unchanged, else built now. Raises WheelhouseError."""
    plan = plan_wheelhouse(platform, frozenset(extras))
    root = wheelhouses_dir(cache_dir)
    final = root / plan.hash
    cached = load_wheelhouse(final)
    if cached is not None:
        _mark_used(final)
        return cached
    from filelock import FileLock
    with FileLock(str(root / f".{plan.hash}.lock")):
        cached = load_wheelhouse(final)
        if cached is not None:
            return cached  # another process built it while we waited
        _clear_leftovers(root, plan.hash)
        temp = private_dir(root / f".build-{plan.hash}-{os.getpid()}-{secrets.token_hex(4)}")
        try:
            _build_into(temp, plan, on_progress or (lambda message: None))
            if final.exists():  # a broken wheelhouse (a wheel deleted by hand): replace it
                _remove(final, root)
            _rename_into_place(temp, final)
        except OSError as error:
            raise WheelhouseError(platform, "corral", f"cannot write the wheelhouse in "
                                  f"{root}: {error.strerror or error}") from error
        finally:
            if temp.exists():
                shutil.rmtree(temp, ignore_errors=True)
    prune(root, keep=final)
    built = load_wheelhouse(final)
    if built is None:
        raise WheelhouseError(platform, "corral", f"the wheelhouse written to {final} "
                                                  "cannot be read back")
    return built


def load_wheelhouse(path: Path) -> Wheelhouse | None:
    """The wheelhouse at `path` when its manifest is there and every wheel it lists is
    there at its size; None otherwise (not built, or damaged)."""
    try:
        manifest = json.loads((path / MANIFEST).read_text())
        if manifest.get("format") != FORMAT:
            return None
        wheels = manifest["wheels"]
        for wheel in wheels:
            if (path / wheel["file"]).stat().st_size != wheel["size_bytes"]:
                return None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return Wheelhouse(hash=manifest["hash"], path=path,
                      wheels=tuple(sorted(wheel["file"] for wheel in wheels)),
                      size_bytes=sum(wheel["size_bytes"] for wheel in wheels),
                      corral_version=manifest["corral_version"],
                      extras=tuple(manifest.get("extras", ())))


def _rename_into_place(temp: Path, final: Path) -> None:
    try:
        os.rename(temp, final)
    except OSError:
        if load_wheelhouse(final) is None:  # not a complete one that won a race: a failure
            raise


def _mark_used(path: Path) -> None:
    """Its mtime says when it was last used, for prune()."""
    try:
        os.utime(path)
    except OSError:
        pass  # a cache we may read but not write: it is simply never pruned by us


def prune(root: Path, keep: Path | None = None) -> list[Path]:
    """Remove wheelhouses beyond the KEEP_RECENT most recently used that have not been
    used for PRUNE_UNUSED_S (so none a running `up` just took); `keep` always stays.
    Returns what was removed."""
    entries = []
    for path in root.iterdir():
        if path.name.startswith(".") or not path.is_dir():
            continue
        try:
            entries.append((path.stat().st_mtime, path))
        except OSError:
            continue  # removed meanwhile by another process's prune
    entries.sort(reverse=True)
    cutoff = time.time() - PRUNE_UNUSED_S
    removed = []
    for mtime, path in entries[KEEP_RECENT:]:
        if path != keep and mtime < cutoff:
            try:
                _remove(path, root)
            except OSError:
                continue  # another prune took it first
            (root / f".{path.name}.lock").unlink(missing_ok=True)
            removed.append(path)
    return removed


def _clear_leftovers(root: Path, digest: str) -> None:
    """Temporary directories of this hash's builds that died (we hold its lock, so no
    live build owns one)."""
    for leftover in root.glob(f".build-{digest}-*"):
        shutil.rmtree(leftover, ignore_errors=True)


def _remove(path: Path, root: Path) -> None:
    trash = root / f".trash-{path.name}-{secrets.token_hex(4)}"
    os.rename(path, trash)
    shutil.rmtree(trash, ignore_errors=True)


def _build_into(temp: Path, plan: WheelhousePlan, progress: Progress) -> None:
    platform = plan.platform
    progress(f"wheelhouse {plan.hash}: building corral {plan.project.version} for "
             f"{platform.describe()}")
    entries = [_entry(build_self_wheel(temp, plan.sources), plan.project.name,
                      plan.project.version, "self")]
    installed = plan.closure.installed
    handled: set[str] = set()
    while True:
        pending = [pin for pin in plan.closure.pins() if pin.name not in handled]
        if not pending:
            break
        handled.update(pin.name for pin in pending)
        local = [pin for pin in pending if pin.version and installed.get(pin.name)]
        to_download = [pin for pin in pending if pin not in local]
        repacked, reasons = _repack_all(local, plan, temp, progress)
        entries += repacked
        to_download += [pin for pin in local if pin.name in reasons]
        entries += _download_all(to_download, reasons, plan, temp, progress)
    _write_manifest(temp, plan, entries)
    progress(f"wheelhouse {plan.hash}: {len(entries)} wheels, "
             f"{sum(entry['size_bytes'] for entry in entries) / 1e6:.1f} MB")


def _repack_all(pins: list[Pin], plan: WheelhousePlan, temp: Path, progress: Progress
                ) -> tuple[list[dict], dict[str, str]]:
    """Repack what can be (in threads: zlib works outside the GIL); returns the manifest
    entries and, for the rest, why each must be downloaded."""
    if not pins:
        return [], {}
    progress(f"wheelhouse {plan.hash}: repacking {len(pins)} installed distributions")
    installed = plan.closure.installed
    entries: list[dict] = []
    reasons: dict[str, str] = {}
    with concurrent.futures.ThreadPoolExecutor(REPACK_THREADS) as pool:
        futures = {pin.name: pool.submit(repack, installed.get(pin.name), plan.platform, temp)
                   for pin in pins}
        for pin in pins:
            try:
                path = futures[pin.name].result()
            except CannotRepack as reason:
                reasons[pin.name] = str(reason)  # kept in the manifest's note
                continue
            entries.append(_entry(path, pin.name, pin.version, "repacked"))
    if reasons:
        progress(f"wheelhouse {plan.hash}: {', '.join(sorted(reasons))} cannot be repacked "
                 "from this machine's installation (see manifest.json); downloading")
    return entries, reasons


def _download_all(pins: list[Pin], reasons: dict[str, str], plan: WheelhousePlan,
                  temp: Path, progress: Progress) -> list[dict]:
    if not pins:
        return []
    if not pip_download.pip_available():
        first = pins[0]
        raise WheelhouseError(plan.platform, first.requirement(), (
            f"it must be downloaded ({reasons.get(first.name, 'not installed here')}), and "
            f"this Python ({sys.executable}) has no pip to do it; install pip here "
            "(python3 -m ensurepip) and try again"))
    pip_dir = temp / ".pip"
    try:
        got = pip_download.download(plan.platform, [pin.requirement() for pin in pins],
                                    pip_dir, on_progress=progress)
    except pip_download.DownloadFailed as failed:
        first, *others = failed.failures
        also = (f". Not to be had either: {', '.join(f.requirement for f in others)}"
                if others else "")
        raise WheelhouseError(plan.platform, first.requirement, _advice(
            plan, first.requirement, first.message) + also) from None
    entries = []
    for pin in pins:
        wheel = got[pin.name]
        target = temp / wheel.path.name
        os.replace(wheel.path, target)
        if pin.version is None:  # an open requirement: pin it, follow its requirements
            try:
                plan.closure.pin(pin.name, wheel.version, list(wheel.requires))
            except RequirementProblem as problem:
                raise WheelhouseError(plan.platform, problem.requirement,
                                      problem.message) from None
        entries.append(_entry(target, pin.name, wheel.version, "downloaded",
                              reasons.get(pin.name, "not installed here")))
    shutil.rmtree(pip_dir, ignore_errors=True)
    return entries


def _advice(plan: WheelhousePlan, requirement: str, pip_message: str) -> str:
    name = Requirement(requirement).name
    wanted_by = ", ".join(plan.closure.required_by(name)) or "corral"
    return (f"pip download found no wheel built for this node ({pip_message}); it is "
            f"required by {wanted_by}. Check that this machine reaches its package index "
            "(pip config), that this release publishes a wheel for the node's Python and "
            "platform, or install a version here that does (the wheelhouse ships the "
            "versions installed on this machine)")


def _entry(path: Path, name: str, version: str | None, source: str, note: str = "") -> dict:
    entry = {"file": path.name, "name": name, "version": version, "source": source,
             "sha256": sha256_file(path), "size_bytes": path.stat().st_size}
    if note:
        entry["note"] = note
    return entry


def _write_manifest(temp: Path, plan: WheelhousePlan, entries: list[dict]) -> None:
    platform = plan.platform
    manifest = {
        "format": FORMAT, "hash": plan.hash, "corral_version": plan.project.version,
        "extras": list(plan.extras),
        "platform": {"system": platform.system, "machine": platform.machine,
                     "python_version": platform.python_minor, "libc": platform.libc,
                     "libc_version": ".".join(map(str, platform.libc_version))},
        "platform_tags": list(plan.tags),
        "requirements": [_pin_text(pin) for pin in plan.closure.pins()],
        "wheels": sorted(entries, key=lambda entry: entry["file"]),
    }
    (temp / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
