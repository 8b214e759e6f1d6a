"""Which distributions a node needs, at which versions: corral's requirements and their
closure, pinned to what is installed here.

corral's own requirements come from the code that runs: setup.cfg when it runs from a
checkout (the checkout is the truth; an editable install's dist-info may be stale), the
installed metadata otherwise. The closure is walked through the installed distributions'
Requires-Dist, with every environment marker evaluated for the NODE (its Python, system,
machine) and the extras each requirement asks for. A requirement installed here is pinned
to its exact local version; one that is not (say `tomli; python_version < "3.11"` for an
older node) stays open (its specifier) and is resolved when its wheel is downloaded.
"""
from __future__ import annotations

import configparser
import dataclasses
import importlib.metadata
import re
from pathlib import Path
from typing import Iterable

try:
    from packaging.requirements import InvalidRequirement, Requirement
    from packaging.utils import canonicalize_name
except ImportError:  # pip vendors the same library; every Python that runs pip has it
    from pip._vendor.packaging.requirements import (  # type: ignore[no-redef]
        InvalidRequirement, Requirement)
    from pip._vendor.packaging.utils import canonicalize_name  # type: ignore[no-redef]

__all__ = ["CorralProject", "Pin", "Closure", "InstalledIndex", "RequirementProblem",
           "corral_project", "canonicalize_name", "Requirement"]


class RequirementProblem(Exception):
    """A requirement that cannot be pinned; wheelhouse.py turns it into a WheelhouseError
    naming the platform. Carries the requirement text and why."""

    def __init__(self, requirement: str, message: str):
        self.requirement = requirement
        self.message = message
        super().__init__(f"{requirement}: {message}")


@dataclasses.dataclass(frozen=True)
class CorralProject:
    """corral's own metadata, as its wheel states it."""
    name: str
    version: str
    summary: str
    requires_python: str
    requires: tuple[str, ...]
    extras: tuple[tuple[str, tuple[str, ...]], ...]   # (extra, its requirements), sorted
    console_scripts: tuple[tuple[str, str], ...]      # (name, "module:function"), sorted

    def extra_names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.extras)

    def requires_for(self, extras: Iterable[str]) -> list[str]:
        """The base requirements plus those of `extras`; an unknown extra raises
        RequirementProblem listing the known ones."""
        table = dict(self.extras)
        wanted = sorted(set(extras))
        unknown = [extra for extra in wanted if extra not in table]
        if unknown:
            raise RequirementProblem(
                f"{self.name}[{','.join(unknown)}]",
                f"no such extra; {self.name} {self.version} has "
                f"{', '.join(self.extra_names()) or 'none'}")
        return list(self.requires) + [line for extra in wanted for line in table[extra]]


def corral_project(package_dir: Path | None = None) -> CorralProject:
    """The metadata of the corral that runs: from <checkout>/setup.cfg when `launcher`
    is imported from a checkout, else from the installed `corral` distribution."""
    if package_dir is None:
        import launcher
        package_dir = Path(launcher.__file__).resolve().parent
    setup_cfg = package_dir.parent / "setup.cfg"
    if setup_cfg.is_file():
        project = _from_setup_cfg(setup_cfg)
        if project is not None:
            return project
    return _from_installed("corral")


def _lines(value: str) -> tuple[str, ...]:
    return tuple(line.strip() for line in value.splitlines()
                 if line.strip() and not line.strip().startswith("#"))


def _from_setup_cfg(path: Path) -> CorralProject | None:
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(path)
    metadata, options = parser["metadata"], parser["options"]
    version = metadata.get("version", "").strip()
    if not version or version.startswith(("attr:", "file:")):
        return None  # computed at build time; the installed metadata has the value
    extras = tuple(sorted((name, _lines(value)) for name, value
                          in parser.items("options.extras_require", raw=True)
                          if name not in parser.defaults())) \
        if parser.has_section("options.extras_require") else ()
    scripts = ()
    if parser.has_section("options.entry_points"):
        scripts = _scripts(parser["options.entry_points"].get("console_scripts", ""))
    return CorralProject(
        name=metadata["name"].strip(), version=version,
        summary=metadata.get("description", "").strip(),
        requires_python=options.get("python_requires", "").strip(),
        requires=_lines(options.get("install_requires", "")),
        extras=extras, console_scripts=scripts)


def _scripts(value: str) -> tuple[tuple[str, str], ...]:
    pairs = (line.split("=", 1) for line in _lines(value) if "=" in line)
    return tuple(sorted((name.strip(), target.strip()) for name, target in pairs))


def _from_installed(name: str) -> CorralProject:
    try:
        dist = importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError:
        raise RequirementProblem(name, "corral runs neither from a checkout with setup.cfg "
                                       "nor as an installed distribution") from None
    base: list[str] = []
    extras: dict[str, list[str]] = {extra: [] for extra in
                                    dist.metadata.get_all("Provides-Extra") or []}
    for line in dist.requires or []:
        requirement = Requirement(line)
        extra = _only_extra(requirement.marker)
        if extra is None:
            base.append(line)
        else:
            requirement.marker = None
            extras.setdefault(extra, []).append(str(requirement))
    scripts = tuple(sorted((entry.name, entry.value) for entry in dist.entry_points
                           if entry.group == "console_scripts"))
    return CorralProject(
        name=dist.metadata["Name"], version=dist.version,
        summary=dist.metadata.get("Summary", "") or "",
        requires_python=dist.metadata.get("Requires-Python", "") or "",
        requires=tuple(base), extras=tuple(sorted((k, tuple(v)) for k, v in extras.items())),
        console_scripts=scripts)


def _only_extra(marker) -> str | None:
    """The extra of a marker that is exactly `extra == "name"` (how wheels state extras)."""
    if marker is None:
        return None
    match = re.fullmatch(r'extra == "([^"]+)"', str(marker))
    return match.group(1) if match else None


class InstalledIndex:
    """The distributions importable here, by canonical name; the first on sys.path (or
    `paths`) wins, as it does for imports. `exclude` leaves out corral itself (it ships as
    its own wheel)."""

    def __init__(self, exclude: Iterable[str] = (), paths: list[str] | None = None):
        skipped = {canonicalize_name(name) for name in exclude}
        self._dists: dict[str, importlib.metadata.Distribution] = {}
        found = importlib.metadata.distributions() if paths is None else \
            importlib.metadata.distributions(path=list(paths))
        for dist in found:
            name = dist.metadata["Name"]
            if not name:
                continue
            key = canonicalize_name(name)
            if key not in skipped:
                self._dists.setdefault(key, dist)

    def get(self, name: str) -> importlib.metadata.Distribution | None:
        return self._dists.get(canonicalize_name(name))


@dataclasses.dataclass(frozen=True)
class Pin:
    """One distribution of the closure. `version` is the exact version when pinned (the
    local one, or the downloaded wheel's); `specifier` the constraint otherwise."""
    name: str                 # canonical
    version: str | None
    specifier: str = ""
    extras: frozenset[str] = frozenset()

    def requirement(self) -> str:
        """What `pip download` is asked for."""
        return f"{self.name}=={self.version}" if self.version else f"{self.name}{self.specifier}"


class Closure:
    """The transitive requirements of a set of root requirements, for one node.

    add() takes requirement lines; a requirement installed here is pinned and its own
    requirements followed at once; one that is not is kept open until pin() is told the
    version a download found, with that wheel's Requires-Dist.
    """

    def __init__(self, environment: dict[str, str], installed: InstalledIndex):
        self.environment = environment
        self.installed = installed
        self._pins: dict[str, Pin] = {}
        self._constraints: dict[str, list[str]] = {}

    def required_by(self, name: str) -> list[str]:
        """Who asked for `name`, with which specifier ("requests 2.31.0 (<3,>=2)")."""
        return list(self._constraints.get(canonicalize_name(name), []))

    def pins(self) -> list[Pin]:
        return [self._pins[name] for name in sorted(self._pins)]

    def open_pins(self) -> list[Pin]:
        return [pin for pin in self.pins() if pin.version is None]

    def add(self, lines: Iterable[str], extras: frozenset[str] = frozenset(),
            parent: str = "corral") -> None:
        """Follow each requirement whose marker holds on the node (with `extras` being the
        extras the parent was asked for)."""
        for line in lines:
            try:
                requirement = Requirement(line)
            except InvalidRequirement as error:
                raise RequirementProblem(line, f"required by {parent}, not understood: "
                                               f"{error}") from None
            if requirement.marker is not None and not self._holds(requirement.marker, extras):
                continue
            if requirement.url:
                raise RequirementProblem(line, f"required by {parent} as a URL; a wheelhouse "
                                               "needs a released version")
            self._add_one(requirement, parent)

    def _holds(self, marker, extras: frozenset[str]) -> bool:
        if not extras:
            return marker.evaluate({**self.environment, "extra": ""})
        return any(marker.evaluate({**self.environment, "extra": extra}) for extra in extras)

    def _add_one(self, requirement, parent: str) -> None:
        name = canonicalize_name(requirement.name)
        wanted = frozenset(requirement.extras)
        self._constraints.setdefault(name, []).append(
            f"{parent} ({requirement.specifier or 'any version'})")
        known = self._pins.get(name)
        if known is not None:
            if known.version is not None:
                self._check(requirement, known.version, parent)
            if wanted <= known.extras:
                return
            wanted |= known.extras
        dist = self.installed.get(name)
        if dist is None:
            if known is not None and known.version is not None:
                # downloaded earlier; its requirements were followed for the old extras
                self._pins[name] = dataclasses.replace(known, extras=wanted)
                return
            specifier = str(requirement.specifier)
            if known is not None and known.specifier and known.specifier != specifier:
                specifier = ",".join(filter(None, (known.specifier, specifier)))
            self._pins[name] = Pin(name, None, specifier, wanted)
            return
        self._check(requirement, dist.version, parent)
        self._pins[name] = Pin(name, dist.version, "", wanted)
        self.add(dist.requires or [], wanted, parent=f"{name} {dist.version}")

    def pin(self, name: str, version: str, requires: list[str]) -> None:
        """An open requirement was downloaded as `version`: pin it and follow the wheel's
        own requirements."""
        key = canonicalize_name(name)
        pin = self._pins[key]
        self._pins[key] = dataclasses.replace(pin, version=version, specifier="")
        self.add(requires, pin.extras, parent=f"{key} {version}")

    def _check(self, requirement, version: str, parent: str) -> None:
        try:
            satisfied = requirement.specifier.contains(version, prereleases=True)
        except ValueError:  # a legacy, non-PEP 440 version: nothing to compare
            satisfied = True
        if not satisfied:
            raise RequirementProblem(
                str(requirement),
                f"required by {parent}, but {version} is installed here; install a "
                f"matching version (pip install '{requirement.name}{requirement.specifier}') "
                "so the wheelhouse ships what you run")
