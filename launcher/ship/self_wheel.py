"""corral's own wheel, made from the code that is running.

Wherever corral is imported from (a checkout, or site-packages after `pip install .`), its
packages `launcher`, `runtime` and `autoscaler` are zipped (every .py file, no bytecode),
with the data laid out as an installed corral has it: the JSON schemas as
`launcher/schemas/*.json` and the provider defaults as `launcher/defaults/*.yaml` (found
through launcher.resources, so a checkout's top-level copies are the ones shipped). The
dist-info is generated: METADATA (name, version, Requires-Dist with extras), WHEEL
(pure, py3-none-any), entry_points.txt and RECORD.

`self_digest()` hashes exactly what the wheel would hold without zipping it, so a cached
wheelhouse is found without building anything.
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
from pathlib import Path

from launcher.ship.requirements import CorralProject, corral_project
from launcher.ship.wheel_file import WheelWriter, escape_name, escape_version, wheel_file_name

PACKAGES = ("launcher", "runtime", "autoscaler")
SELF_TAG = "py3-none-any"
GENERATOR = "corral (launcher.ship.self_wheel)"


@dataclasses.dataclass(frozen=True)
class SelfSources:
    """What goes into corral's wheel: (archive name, contents) pairs, sorted, and the
    project metadata the dist-info is written from. The contents are read once, so the
    digest and the wheel are of the same bytes even while someone edits the checkout."""
    files: tuple[tuple[str, bytes], ...]
    project: CorralProject

    @property
    def dist_info(self) -> str:
        return f"{escape_name(self.project.name)}-{escape_version(self.project.version)}" \
               ".dist-info"

    @property
    def file_name(self) -> str:
        return wheel_file_name(self.project.name, self.project.version, [SELF_TAG])


def collect_sources(project: CorralProject | None = None) -> SelfSources:
    """The running corral's files, as the wheel names them."""
    from launcher import resources
    pairs: dict[str, bytes] = {}
    for package in PACKAGES:
        root = _package_dir(package)
        for path in sorted(root.rglob("*.py")):
            relative = path.relative_to(root)
            if "__pycache__" in relative.parts or any(
                    part.startswith(".") for part in relative.parts):
                continue
            pairs[f"{package}/{relative.as_posix()}"] = path.read_bytes()
    for source_dir, target, pattern in ((resources.schema_dir(), "launcher/schemas", "*.json"),
                                        (resources.defaults_dir(), "launcher/defaults",
                                         "*.yaml")):
        for path in sorted(source_dir.glob(pattern)):
            pairs[f"{target}/{path.name}"] = path.read_bytes()
    return SelfSources(tuple(sorted(pairs.items())), project or corral_project())


def _package_dir(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"corral's package {package!r} is not importable")
    return Path(next(iter(spec.submodule_search_locations))).resolve()


def metadata_files(sources: SelfSources) -> dict[str, bytes]:
    """The dist-info files other than RECORD, by archive name."""
    project = sources.project
    lines = ["Metadata-Version: 2.1", f"Name: {project.name}", f"Version: {project.version}"]
    if project.summary:
        lines.append(f"Summary: {project.summary}")
    if project.requires_python:
        lines.append(f"Requires-Python: {project.requires_python}")
    lines += [f"Requires-Dist: {requirement}" for requirement in project.requires]
    for extra, requirements in project.extras:
        lines.append(f"Provides-Extra: {extra}")
        lines += [f"Requires-Dist: {_with_extra(requirement, extra)}"
                  for requirement in requirements]
    wheel = ["Wheel-Version: 1.0", f"Generator: {GENERATOR}", "Root-Is-Purelib: true",
             f"Tag: {SELF_TAG}"]
    scripts = ["[console_scripts]"] + [f"{name} = {target}"
                                       for name, target in project.console_scripts]
    info = sources.dist_info
    return {f"{info}/METADATA": _text(lines), f"{info}/WHEEL": _text(wheel),
            f"{info}/entry_points.txt": _text(scripts)}


def _with_extra(requirement: str, extra: str) -> str:
    """"boto3>=1.28" -> 'boto3>=1.28; extra == "aws"' (an existing marker is kept, and'ed)."""
    if ";" in requirement:
        spec, marker = requirement.split(";", 1)
        return f'{spec.strip()}; ({marker.strip()}) and extra == "{extra}"'
    return f'{requirement}; extra == "{extra}"'


def _text(lines: list[str]) -> bytes:
    return ("\n".join(lines) + "\n").encode()


def self_digest(sources: SelfSources) -> str:
    """sha256 (hex) of everything the wheel holds: names, contents, metadata. Equal
    digests mean byte-identical wheels (the writer is deterministic)."""
    digest = hashlib.sha256(f"self-wheel 1\0{SELF_TAG}\0".encode())
    for arcname, data in sources.files:
        digest.update(arcname.encode() + b"\0" + hashlib.sha256(data).digest())
    for arcname, data in sorted(metadata_files(sources).items()):
        digest.update(arcname.encode() + b"\0" + hashlib.sha256(data).digest())
    return digest.hexdigest()


def build_self_wheel(dest_dir: Path, sources: SelfSources | None = None) -> Path:
    """Write corral's wheel into `dest_dir`; returns its path."""
    sources = sources or collect_sources()
    writer = WheelWriter(sources.dist_info)
    for arcname, data in sources.files:
        writer.add(arcname, data)
    for arcname, data in metadata_files(sources).items():
        writer.add(arcname, data)
    return writer.write(dest_dir / sources.file_name)
