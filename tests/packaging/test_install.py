"""corral installs the way every Python tool does: `pip install .`, `pip install -e .`
and `pip wheel .` on a copy of this checkout, into fresh virtualenvs.

corral goes in with --no-deps, and corral's commands then find the dependencies in this
interpreter's site-packages through PYTHONPATH (a plain path entry: the .pth files there,
such as this checkout's own editable install, are not read). pip builds in its usual
isolated environment, but with no index: the build backend (setuptools, wheel) comes as
wheels repacked from this interpreter's own installs (launcher.ship.repack), so the test
touches no network. What is checked is corral's own packaging: the packages and data files land
where `launcher.resources` looks, the `corral` console script works, and
`corral --version` says which kind of install it is.
"""
from __future__ import annotations

import configparser
import importlib.metadata
import os
import platform as host_platform
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from launcher.ship.platform import NodePlatform
from launcher.ship.repack import CannotRepack, repack

CHECKOUT = Path(__file__).resolve().parent.parent.parent
pytestmark = pytest.mark.timeout(300)


def _copy_checkout(target: Path) -> Path:
    """The tracked and new files of this checkout (what a clone would have), without
    build leftovers, so building never writes into the real checkout."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=CHECKOUT,
                            capture_output=True, text=True, check=True).stdout.split("\n")
    for name in filter(None, listed):
        source = CHECKOUT / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            (target / name).write_bytes(source.read_bytes())
    return target


def _venv(path: Path) -> Path:
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
    return path / "bin"


@pytest.fixture(scope="module")
def build_backend(tmp_path_factory) -> Path:
    """setuptools and wheel (with what wheel needs) as wheels, repacked from this
    interpreter's installs."""
    target = tmp_path_factory.mktemp("build-backend")
    libc, libc_version = host_platform.libc_ver()
    here = NodePlatform(sys.platform, host_platform.machine(), sys.executable,
                        tuple(sys.version_info[:3]), libc,
                        tuple(int(part) for part in libc_version.split(".") if part.isdigit()))
    for name in ("setuptools", "wheel", "packaging"):  # wheel needs packaging
        try:
            repack(importlib.metadata.distribution(name), here, target)
        except (importlib.metadata.PackageNotFoundError, CannotRepack) as error:
            pytest.skip(f"cannot offer {name} to pip's build offline: {error} "
                        f"(pip install -e '.[test]' installs it)")
    return target


def _pip(bin_dir: Path, *args: str, cwd: Path, backend: Path) -> None:
    # No index at all (the machine's pip config may name some): only `backend`.
    env = dict(os.environ, PIP_NO_INDEX="1", PIP_FIND_LINKS=str(backend),
               PIP_CONFIG_FILE=os.devnull, PIP_CONSTRAINT="", PIP_EXTRA_INDEX_URL="")
    result = subprocess.run([str(bin_dir / "python"), "-m", "pip", "-q", *args,
                             "--no-deps"], cwd=cwd, env=env,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def _dependencies_env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=sysconfig.get_paths()["purelib"])


def _run(argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=60,
                          env=_dependencies_env())


def _corral(bin_dir: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return _run([str(bin_dir / "corral"), *args], cwd)


TEST_VERSION = "0.0.1.dev7"


@pytest.fixture
def source(tmp_path) -> Path:
    """A copy of the checkout with a version of its own: an editable install names its
    import hook module after name and version, and this interpreter's own editable corral
    (seen through PYTHONPATH) must not answer for the copy's."""
    copy = _copy_checkout(tmp_path / "src")
    setup_cfg = copy / "setup.cfg"
    parser = configparser.ConfigParser()
    parser.read(setup_cfg)
    text = setup_cfg.read_text()
    setup_cfg.write_text(text.replace(f"version = {parser['metadata']['version']}",
                                      f"version = {TEST_VERSION}", 1))
    return copy


def test_pip_install_dot_gives_a_working_installed_corral(source, tmp_path, build_backend):
    bin_dir = _venv(tmp_path / "venv")
    _pip(bin_dir, "install", ".", cwd=source, backend=build_backend)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    version = _corral(bin_dir, "--version", cwd=elsewhere)
    assert version.returncode == 0, version.stderr
    assert f"corral {TEST_VERSION} (installed at " in version.stdout
    assert str(tmp_path / "venv") in version.stdout
    # The schemas and provider defaults travel inside the package: validate needs both.
    checked = _corral(bin_dir, "validate", str(source / "configs" / "demo.yaml"),
                      cwd=elsewhere)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    where = _run([str(bin_dir / "python"), "-c",
                  "import launcher.resources as r; print(r.schema_dir())"], elsewhere)
    assert where.stdout.strip().startswith(str(tmp_path / "venv"))


def test_pip_install_editable_runs_the_checkout(source, tmp_path, build_backend):
    bin_dir = _venv(tmp_path / "venv")
    _pip(bin_dir, "install", "-e", ".", cwd=source, backend=build_backend)
    version = _corral(bin_dir, "--version", cwd=tmp_path)
    assert version.returncode == 0, version.stderr
    assert f"corral {TEST_VERSION} (editable checkout {source};" in version.stdout
    # An edit in the checkout is what runs, with no reinstall.
    schema = source / "schemas" / "cluster.schema.json"
    schema.write_text(schema.read_text().replace('"cluster_name"', '"cluster_name"', 1))
    where = _run([str(bin_dir / "python"), "-c", "import launcher; print(launcher.__file__)"],
                 tmp_path)
    assert where.stdout.strip() == str(source / "launcher" / "__init__.py")


def test_pip_wheel_holds_every_package_and_the_data(source, tmp_path, build_backend):
    bin_dir = _venv(tmp_path / "venv")
    wheels = tmp_path / "wheels"
    _pip(bin_dir, "wheel", "-w", str(wheels), ".", cwd=source, backend=build_backend)
    [wheel] = list(wheels.glob("corral-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    packages = {str(path.parent.relative_to(source))
                for root in ("launcher", "runtime", "autoscaler")
                for path in (source / root).rglob("__init__.py")}
    for package in packages:
        assert f"{package}/__init__.py" in names, f"{package} is missing from the wheel"
    for schema in (source / "schemas").glob("*.json"):
        assert f"launcher/schemas/{schema.name}" in names
    for default in (source / "configs" / "defaults").glob("*.yaml"):
        assert f"launcher/defaults/{default.name}" in names
    assert not any(name.startswith("tests/") for name in names)
