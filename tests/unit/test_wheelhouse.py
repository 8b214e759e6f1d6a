"""launcher.ship wheelhouse parts: corral's own wheel (complete, deterministic, hashed by
content), the requirement closure (pinned to what is installed, markers judged for the
node), the node's tags, repacking, and the refusals. Installing a wheelhouse into a fresh
environment is in tests/integration/test_wheelhouse.py."""
from __future__ import annotations

import base64
import csv
import dataclasses
import hashlib
import importlib.metadata
import io
import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from launcher.errors import WheelhouseError
from launcher.ship.platform import NodePlatform
from launcher.ship.repack import CannotRepack, check_repackable, repack
from launcher.ship.requirements import Closure, InstalledIndex, corral_project
from launcher.ship.self_wheel import build_self_wheel, collect_sources, self_digest
from launcher.ship.target_tags import (marker_environment, platform_tags, supports,
                                       this_machine, wheel_file_tags)
from launcher.ship import wheelhouse as wheelhouse_module
from launcher.ship.wheelhouse import (KEEP_RECENT, PRUNE_UNUSED_S, build_wheelhouse,
                                      load_wheelhouse, plan_wheelhouse, prune)

pytestmark = pytest.mark.timeout(60)
REPO = Path(__file__).resolve().parents[2]
LINUX = NodePlatform("linux", "x86_64", "/usr/bin/python3", (3, 11, 2), "glibc", (2, 28))


@pytest.fixture
def frozen_sources(monkeypatch):
    """corral's sources as they are now, for tests that compare several plans: other work
    in the same checkout must not change the hash between two calls of one test."""
    snapshot = collect_sources()
    monkeypatch.setattr(wheelhouse_module, "corral_project", lambda: snapshot.project)
    monkeypatch.setattr(wheelhouse_module, "collect_sources", lambda project=None: snapshot)
    return snapshot


def fresh_dir(parent: Path, name: str) -> Path:
    path = parent / name
    path.mkdir()
    return path


def read_record(archive: zipfile.ZipFile, dist_info: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(archive.read(f"{dist_info}/RECORD").decode())))


def assert_record_matches(archive: zipfile.ZipFile, dist_info: str) -> None:
    """Every file is in RECORD with its sha256 and size, and nothing else is."""
    rows = read_record(archive, dist_info)
    listed = {row[0] for row in rows}
    assert listed == set(archive.namelist())
    for name, digest, size in rows:
        if name == f"{dist_info}/RECORD":
            assert digest == "" and size == ""
            continue
        data = archive.read(name)
        expected = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
        assert digest == f"sha256={expected.decode()}", name
        assert int(size) == len(data), name


def test_self_wheel_holds_the_running_code_data_and_metadata(tmp_path):
    project = corral_project()
    path = build_self_wheel(tmp_path)
    assert path.name == f"corral-{project.version}-py3-none-any.whl"
    dist_info = f"corral-{project.version}.dist-info"
    with zipfile.ZipFile(path) as archive:
        names = set(archive.namelist())
        assert_record_matches(archive, dist_info)
        for package in ("launcher", "runtime", "autoscaler"):
            sources = {p.relative_to(REPO).as_posix() for p in (REPO / package).rglob("*.py")
                       if "__pycache__" not in p.parts}
            assert sources <= names, sorted(sources - names)[:5]
        assert not [name for name in names if "__pycache__" in name or name.endswith(".pyc")]
        schemas = {f"launcher/schemas/{p.name}" for p in (REPO / "schemas").glob("*.json")}
        defaults = {f"launcher/defaults/{p.name}"
                    for p in (REPO / "configs/defaults").glob("*.yaml")}
        assert schemas and schemas <= names and defaults and defaults <= names
        assert archive.read("launcher/schemas/cluster.schema.json") == \
            (REPO / "schemas/cluster.schema.json").read_bytes()
        metadata = archive.read(f"{dist_info}/METADATA").decode()
        wheel = archive.read(f"{dist_info}/WHEEL").decode()
        entry_points = archive.read(f"{dist_info}/entry_points.txt").decode()
        modes = {info.filename: (info.external_attr >> 16) & 0o777
                 for info in archive.infolist()}
        times = {info.date_time for info in archive.infolist()}
    assert "Name: corral\n" in metadata and f"Version: {project.version}\n" in metadata
    for requirement in project.requires:
        assert f"Requires-Dist: {requirement}\n" in metadata
    for extra, requirements in project.extras:
        assert f"Provides-Extra: {extra}\n" in metadata
        for requirement in requirements:
            assert f'Requires-Dist: {requirement}; extra == "{extra}"\n' in metadata
    assert "Root-Is-Purelib: true" in wheel and "Tag: py3-none-any" in wheel
    assert "corral = launcher.cli:main" in entry_points
    assert set(modes.values()) == {0o644} and times == {(1980, 1, 1, 0, 0, 0)}


def test_self_wheel_is_byte_identical_across_builds(tmp_path):
    sources = collect_sources()
    first = build_self_wheel(fresh_dir(tmp_path, "a"), sources)
    second = build_self_wheel(fresh_dir(tmp_path, "b"), sources)
    assert first.read_bytes() == second.read_bytes()
    assert self_digest(sources) == self_digest(dataclasses.replace(sources))


def _checkout_copy(root: Path) -> Path:
    for part in ("launcher", "runtime", "autoscaler", "schemas", "configs"):
        shutil.copytree(REPO / part, root / part,
                        ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "setup.cfg", root / "setup.cfg")
    return root


def _plan_hash_in(checkout: Path) -> str:
    """The wheelhouse hash a fresh process computes running from `checkout`."""
    code = ("from launcher.ship.wheelhouse import plan_wheelhouse;"
            "from launcher.ship.target_tags import this_machine;"
            "import launcher; assert launcher.__file__.startswith(%r);"
            "print(plan_wheelhouse(this_machine()).hash)" % str(checkout))
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    result = subprocess.run([sys.executable, "-c", code], cwd=checkout, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_hash_is_stable_and_one_source_byte_changes_it(tmp_path):
    checkout = _checkout_copy(tmp_path / "corral")
    first = _plan_hash_in(checkout)
    assert _plan_hash_in(checkout) == first  # another process, same sources
    module = checkout / "runtime" / "__init__.py"
    module.write_bytes(module.read_bytes() + b" ")
    changed = _plan_hash_in(checkout)
    assert changed != first
    schema = checkout / "schemas" / "cluster.schema.json"
    schema.write_bytes(schema.read_bytes() + b"\n")
    assert _plan_hash_in(checkout) not in (first, changed)


def test_hash_depends_on_platform_tags_and_extras(frozen_sources):
    here = this_machine()
    base = plan_wheelhouse(here).hash
    assert plan_wheelhouse(here).hash == base
    older = dataclasses.replace(here, libc_version=(2, 28)) if here.libc == "glibc" else \
        dataclasses.replace(here, machine="aarch64")
    assert plan_wheelhouse(older).hash != base
    newer_python = dataclasses.replace(here, python_version=(3, sys.version_info[1] + 1, 0))
    assert plan_wheelhouse(newer_python).hash != base
    if "aws" in corral_project().extra_names():
        assert plan_wheelhouse(here, frozenset({"aws"})).hash != base


def _fake_dist(site: Path, name: str, version: str, requires: list[str],
               extras: list[str] = ()) -> None:
    info = site / f"{name}-{version}.dist-info"
    info.mkdir(parents=True)
    lines = ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}"]
    lines += [f"Provides-Extra: {extra}" for extra in extras]
    lines += [f"Requires-Dist: {line}" for line in requires]
    (info / "METADATA").write_text("\n".join(lines) + "\n")


def test_markers_are_evaluated_for_the_node_not_this_machine(tmp_path):
    site = tmp_path / "site"
    _fake_dist(site, "demo", "1.0", [
        'alpha>=1; python_version >= "3.12"', 'beta; sys_platform == "darwin"',
        'gamma[fast]', 'delta; platform_machine == "aarch64"', 'eps; extra == "x"'],
        extras=["x"])
    _fake_dist(site, "alpha", "2.0", [])
    _fake_dist(site, "beta", "3.0", [])
    _fake_dist(site, "gamma", "4.0", ['zeta; extra == "fast"', 'eta; extra == "slow"'],
               extras=["fast", "slow"])
    _fake_dist(site, "delta", "5.0", [])
    _fake_dist(site, "zeta", "6.0", [])
    _fake_dist(site, "eta", "7.0", [])
    index = InstalledIndex(paths=[str(site)])

    def closure(platform: NodePlatform) -> dict[str, str | None]:
        resolved = Closure(marker_environment(platform), index)
        resolved.add(["demo"])
        return {pin.name: pin.version for pin in resolved.pins()}

    assert closure(LINUX) == {"demo": "1.0", "gamma": "4.0", "zeta": "6.0"}
    arm_mac_312 = NodePlatform("darwin", "arm64", "/usr/bin/python3", (3, 12, 0))
    assert closure(arm_mac_312) == {"demo": "1.0", "alpha": "2.0", "beta": "3.0",
                                    "gamma": "4.0", "zeta": "6.0"}
    arm_linux = dataclasses.replace(LINUX, machine="aarch64")
    assert closure(arm_linux) == {"demo": "1.0", "delta": "5.0", "gamma": "4.0",
                                  "zeta": "6.0"}


def test_requirement_not_installed_here_stays_open_and_is_pinned_from_its_wheel(tmp_path):
    site = tmp_path / "site"
    _fake_dist(site, "demo", "1.0", ['backport>=2; python_version < "3.12"'])
    _fake_dist(site, "leaf", "9.0", [])
    resolved = Closure(marker_environment(LINUX), InstalledIndex(paths=[str(site)]))
    resolved.add(["demo"])
    assert [pin.requirement() for pin in resolved.open_pins()] == ["backport>=2"]
    resolved.pin("backport", "2.5", ["leaf"])  # as read from the downloaded wheel
    assert {pin.name: pin.version for pin in resolved.pins()} == \
        {"demo": "1.0", "backport": "2.5", "leaf": "9.0"}
    assert resolved.open_pins() == []


def test_installed_version_that_violates_a_requirement_is_refused(tmp_path):
    site = tmp_path / "site"
    _fake_dist(site, "demo", "1.0", ["leaf>=10"])
    _fake_dist(site, "leaf", "9.0", [])
    resolved = Closure(marker_environment(LINUX), InstalledIndex(paths=[str(site)]))
    with pytest.raises(Exception) as raised:
        resolved.add(["demo"])
    assert "leaf>=10" in str(raised.value) and "9.0 is installed" in str(raised.value)


def test_closure_pins_exactly_the_installed_versions_and_extras_add_theirs():
    project = corral_project()
    here = this_machine()
    base = plan_wheelhouse(here).closure.pins()
    names = {pin.name for pin in base}
    for requirement in project.requires:
        name = requirement.split(">")[0].split("=")[0].split("<")[0].strip().lower()
        assert name.replace("_", "-") in names, name
    for pin in base:
        if pin.version is not None:
            assert pin.version == importlib.metadata.version(pin.name), pin
    if "aws" not in project.extra_names():
        pytest.skip("setup.cfg has no aws extra yet")
    assert "boto3" not in names
    aws = {pin.name: pin.version for pin in plan_wheelhouse(here, frozenset({"aws"}))
           .closure.pins()}
    assert {"boto3", "botocore", "s3transfer", "jmespath"} <= set(aws)
    assert aws["boto3"] == importlib.metadata.version("boto3")


def test_an_unknown_extra_and_an_old_python_are_refused(tmp_path):
    with pytest.raises(WheelhouseError) as raised:
        build_wheelhouse(this_machine(), frozenset({"nonesuch"}), cache_dir=tmp_path)
    assert "nonesuch" in str(raised.value) and "no such extra" in str(raised.value)
    old = dataclasses.replace(this_machine(), python_version=(3, 9, 18))
    with pytest.raises(WheelhouseError) as raised:
        build_wheelhouse(old, cache_dir=tmp_path)
    assert raised.value.platform == old and "3.9.18" in str(raised.value)
    windows = NodePlatform("windows", "AMD64", "C:/Python/python.exe", (3, 11, 2))
    with pytest.raises(WheelhouseError):
        build_wheelhouse(windows, cache_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []  # nothing was built


def test_platform_tags_and_what_runs_where():
    tags = platform_tags(LINUX)
    assert tags[0] == "manylinux_2_28_x86_64" and "manylinux_2_17_x86_64" in tags
    assert "manylinux2014_x86_64" in tags and "manylinux1_x86_64" in tags
    assert "manylinux_2_29_x86_64" not in tags
    musl = NodePlatform("linux", "aarch64", "/usr/bin/python3", (3, 12, 1), "musl", (1, 2))
    assert platform_tags(musl) == ["musllinux_1_2_aarch64", "musllinux_1_1_aarch64",
                                   "musllinux_1_0_aarch64"]
    mac = NodePlatform("darwin", "arm64", "/usr/bin/python3", (3, 11, 2))
    assert "macosx_11_0_arm64" in platform_tags(mac)
    assert not [tag for tag in platform_tags(mac) if tag.startswith("macosx_10_")
                and tag.endswith("_arm64")]
    assert supports(LINUX, "py3-none-any") and supports(LINUX, "py311-none-any")
    assert supports(LINUX, "cp311-cp311-manylinux_2_17_x86_64")
    assert supports(LINUX, "cp39-abi3-manylinux_2_28_x86_64")
    assert not supports(LINUX, "cp311-cp311-manylinux_2_34_x86_64")  # needs a newer glibc
    assert not supports(LINUX, "cp312-cp312-manylinux_2_17_x86_64")  # another Python
    assert not supports(LINUX, "cp312-abi3-manylinux_2_17_x86_64")   # abi3 from 3.12 on
    assert not supports(LINUX, "cp311-cp311-manylinux_2_17_aarch64")
    assert not supports(LINUX, "cp311-cp311-linux_x86_64")  # built somewhere, not portable
    assert not supports(LINUX, "py2-none-any")
    assert supports(mac, "cp311-cp311-macosx_10_9_universal2")
    assert wheel_file_tags("a-1-py2.py3-none-any.whl") == ["py2-none-any", "py3-none-any"]


def test_repack_of_an_installed_distribution_is_faithful_and_deterministic(tmp_path):
    dist = importlib.metadata.distribution("click")
    first = repack(dist, this_machine(), fresh_dir(tmp_path, "a"))
    second = repack(dist, this_machine(), fresh_dir(tmp_path, "b"))
    assert first.read_bytes() == second.read_bytes()
    dist_info = next(record.parts[0] for record in dist.files
                     if record.parts[0].endswith(".dist-info"))
    with zipfile.ZipFile(first) as archive:
        assert_record_matches(archive, dist_info)
        names = set(archive.namelist())
        for record in dist.files:
            if record.suffix == ".py":
                assert archive.read(record.as_posix()) == record.locate().read_bytes()
        assert archive.read(f"{dist_info}/WHEEL") == (Path(dist.locate_file(dist_info))
                                                      / "WHEEL").read_bytes()
    assert f"{dist_info}/INSTALLER" not in names
    assert not [name for name in names if name.endswith(".pyc")]
    assert first.name == f"click-{dist.version}-py3-none-any.whl"


def test_repack_refuses_what_does_not_run_on_the_node():
    binary = importlib.metadata.distribution("pyzmq")  # built for this Python (or abi3 from it)
    older_python = (3, sys.version_info[1] - 1, 0)
    other_python = dataclasses.replace(this_machine(), python_version=older_python)
    with pytest.raises(CannotRepack) as raised:
        check_repackable(binary, other_python)
    assert "does not run on" in str(raised.value)


def test_a_damaged_cache_entry_is_rebuilt(tmp_path, frozen_sources):
    here = this_machine()
    built = build_wheelhouse(here, cache_dir=tmp_path)
    seen: list[str] = []
    assert build_wheelhouse(here, cache_dir=tmp_path, on_progress=seen.append) == built
    assert seen == []  # found in the cache: nothing built
    manifest = json.loads(built.manifest_path.read_text())
    assert {entry["source"] for entry in manifest["wheels"]} >= {"self", "repacked"}
    assert sorted(entry["file"] for entry in manifest["wheels"]) == list(built.wheels)
    victim = built.path / built.wheels[0]
    victim.write_bytes(victim.read_bytes()[:100])
    assert load_wheelhouse(built.path) is None
    rebuilt = build_wheelhouse(here, cache_dir=tmp_path, on_progress=seen.append)
    assert rebuilt == built and seen  # same content, built again
    assert (built.path / built.wheels[0]).stat().st_size == manifest["wheels"][0]["size_bytes"]
    assert oct(built.path.stat().st_mode & 0o777) == oct(0o700)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith((".build-", ".trash-"))]


def test_prune_keeps_the_recently_used_and_drops_old_unused_wheelhouses(tmp_path):
    now = time.time()
    old = now - PRUNE_UNUSED_S - 60
    ages = {f"{index:016x}": old - index for index in range(KEEP_RECENT + 3)}
    ages["fresh"] = now - 10  # used a moment ago by someone
    for name, mtime in ages.items():
        (tmp_path / name).mkdir()
        (tmp_path / f".{name}.lock").touch()
        os.utime(tmp_path / name, (mtime, mtime))
    kept_on_purpose = tmp_path / f"{KEEP_RECENT + 2:016x}"  # the oldest, but just built
    removed = prune(tmp_path, keep=kept_on_purpose)
    # the KEEP_RECENT most recent stay ("fresh" and 0..6); of the rest all but `keep` go
    expected = [f"{index:016x}" for index in (KEEP_RECENT - 1, KEEP_RECENT, KEEP_RECENT + 1)]
    assert sorted(path.name for path in removed) == expected
    left = sorted(path.name for path in tmp_path.iterdir() if not path.name.startswith("."))
    assert len(left) == len(ages) - 3 and "fresh" in left and kept_on_purpose.name in left
    assert not (tmp_path / f".{expected[0]}.lock").exists()
    assert (tmp_path / f".{kept_on_purpose.name}.lock").exists()
    assert not [path for path in tmp_path.iterdir() if path.name.startswith(".trash-")]
