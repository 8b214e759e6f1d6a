"""A wheelhouse is complete: installed with real pip into a fresh venv, with no index and
nothing but the wheelhouse (pip's configuration switched off), corral and its runtime run
there. Also: the installed corral rebuilds the very same wheel of itself, repacked scripts
install, two processes building at once share one build, a node on another Python gets
wheels downloaded for it (and they install there), and a wheel that does not exist for a
node is named in the error."""
from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from launcher.errors import WheelhouseError
from launcher.ship.platform import NodePlatform
from launcher.ship.repack import repack
from launcher.ship.target_tags import this_machine
from launcher.ship.wheelhouse import Wheelhouse, build_wheelhouse, load_wheelhouse

pytestmark = pytest.mark.timeout(240)
REPO = Path(__file__).resolve().parents[2]
PLATFORM_PROBE = ("import json, platform, sys; libc, version = platform.libc_ver(); "
                  "print(json.dumps([sys.platform, platform.machine(), sys.executable, "
                  "list(sys.version_info[:3]), libc, version]))")


def pip_isolated_env() -> dict[str, str]:
    """No pip configuration (find-links, extra indexes) and no PYTHONPATH: what pip can
    install is what the wheelhouse holds."""
    env = {key: value for key, value in os.environ.items()
           if not key.startswith("PIP_") and key != "PYTHONPATH"}
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_DISABLE_PIP_VERSION_CHECK="1")
    return env


def run(command: list[str], cwd: Path, timeout_s: float = 180, **kwargs):
    result = subprocess.run(command, cwd=cwd, env=kwargs.pop("env", pip_isolated_env()),
                            capture_output=True, text=True, timeout=timeout_s, **kwargs)
    assert result.returncode == 0, f"{command}: {result.stdout}\n{result.stderr}"
    return result


def make_venv(python: str, path: Path) -> Path:
    run([python, "-m", "venv", str(path)], cwd=path.parent)
    return path


def install_offline(venv: Path, wheelhouse: Wheelhouse, requirement: str) -> None:
    run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-index",
         "--find-links", str(wheelhouse.path), requirement], cwd=venv.parent)


def find_python(minor: int) -> str | None:
    """An interpreter of Python 3.<minor> on this machine (pyenv's or the system's)."""
    candidates = [shutil.which(f"python3.{minor}"), f"/usr/bin/python3.{minor}",
                  *sorted(glob.glob(os.path.expanduser(
                      f"~/.pyenv/versions/3.{minor}.*/bin/python3")))]
    for candidate in filter(None, candidates):
        try:
            result = subprocess.run([candidate, "-c", "import sys, venv; "
                                     "print(sys.version_info[1])"],
                                    capture_output=True, text=True, timeout=30)
        except OSError:
            continue
        if result.returncode == 0 and result.stdout.strip() == str(minor):
            return candidate
    return None


def probe_platform(python: str) -> NodePlatform:
    output = subprocess.run([python, "-c", PLATFORM_PROBE], capture_output=True, text=True,
                            timeout=30, check=True).stdout
    system, machine, executable, version, libc, libc_version = json.loads(output)
    return NodePlatform(system, machine, executable, tuple(version), libc,
                        tuple(int(part) for part in libc_version.split(".")[:2]))


# Tests send traffic only to loopback and the test hosts, so downloading real wheels from
# the package index is opt-in (a developer's check of the download path against PyPI).
needs_index = pytest.mark.skipif(
    os.environ.get("CORRAL_TEST_PACKAGE_INDEX") != "1",
    reason="downloads wheels from the package index; set CORRAL_TEST_PACKAGE_INDEX=1 to run")


@pytest.fixture
def offline_pip(monkeypatch, tmp_path):
    """pip with no index and no configured links: `pip download` sees only an empty
    local directory, as on an air-gapped laptop."""
    links = tmp_path.parent / f"{tmp_path.name}-no-links"
    links.mkdir()
    for name, value in (("PIP_NO_INDEX", "1"), ("PIP_FIND_LINKS", str(links)),
                        ("PIP_CONFIG_FILE", os.devnull), ("PIP_EXTRA_INDEX_URL", ""),
                        ("PIP_CONSTRAINT", "")):
        monkeypatch.setenv(name, value)


@pytest.fixture(scope="module")
def installed_here(tmp_path_factory):
    """The base wheelhouse for this machine, installed offline into a fresh venv."""
    root = tmp_path_factory.mktemp("wheelhouse_here")
    try:
        wheelhouse = build_wheelhouse(this_machine(), cache_dir=root / "cache")
        venv = make_venv(sys.executable, root / "venv")
        install_offline(venv, wheelhouse, "corral")
        yield wheelhouse, venv
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_corral_runs_from_the_offline_install(installed_here):
    wheelhouse, venv = installed_here
    work = venv.parent
    help_text = run([str(venv / "bin" / "corral"), "--help"], cwd=work).stdout
    assert "Usage: corral" in help_text and "up" in help_text
    check = textwrap.dedent("""
        import importlib.metadata, json, sys
        import runtime, launcher.cli, autoscaler, zmq, yaml, cloudpickle, paramiko
        from launcher import resources
        import launcher.config.schema
        print(json.dumps({"launcher": launcher.__file__, "runtime": runtime.__file__,
                          "schemas": sorted(p.name for p in resources.schema_dir().iterdir()),
                          "schema_dir": str(resources.schema_dir()),
                          "defaults": sorted(p.name for p in resources.defaults_dir().iterdir()),
                          "version": importlib.metadata.version("corral")}))
    """)
    found = json.loads(run([str(venv / "bin" / "python"), "-c", check], cwd=work).stdout)
    assert found["launcher"].startswith(str(venv)) and found["runtime"].startswith(str(venv))
    assert found["schema_dir"].startswith(str(venv))
    assert "cluster.schema.json" in found["schemas"] and "common.yaml" in found["defaults"]
    assert found["version"] == wheelhouse.corral_version
    pip = [str(venv / "bin" / "python"), "-m", "pip"]
    assert "No broken requirements" in run(pip + ["check"], cwd=work).stdout
    installed = {entry["name"].lower().replace("_", "-") for entry in
                 json.loads(run(pip + ["list", "--format", "json"], cwd=work).stdout)}
    shipped = {entry["name"] for entry in
               json.loads(wheelhouse.manifest_path.read_text())["wheels"]}
    assert shipped <= installed  # every wheel was needed; pip and setuptools came with venv
    assert installed - shipped <= {"pip", "setuptools"}


def test_the_installed_corral_rebuilds_the_same_wheel_of_itself(installed_here):
    """"Built from the running code, wherever it is imported from": from site-packages
    (metadata from the installed dist-info, data from launcher/schemas) the wheel is
    byte-identical to the one built from the checkout."""
    wheelhouse, venv = installed_here
    out = venv.parent / "rebuilt"
    out.mkdir()
    code = ("import sys; from pathlib import Path; import launcher;"
            "from launcher.ship.self_wheel import build_self_wheel;"
            "print(launcher.__file__); print(build_self_wheel(Path(sys.argv[1])))")
    lines = run([str(venv / "bin" / "python"), "-c", code, str(out)],
                cwd=venv.parent).stdout.split()
    assert lines[0].startswith(str(venv))
    rebuilt = Path(lines[1])
    assert rebuilt.name in wheelhouse.wheels
    assert rebuilt.read_bytes() == (wheelhouse.path / rebuilt.name).read_bytes()


def test_a_repacked_script_installs_with_the_environments_python(installed_here, tmp_path):
    import importlib.metadata
    try:
        dist = importlib.metadata.distribution("jmespath")  # ships bin/jp.py (not an entry point)
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("jmespath is not installed here")
    _, venv = installed_here
    wheel = repack(dist, this_machine(), tmp_path)
    run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-index",
         "--no-deps", str(wheel)], cwd=tmp_path)
    script = venv / "bin" / "jp.py"
    assert script.read_text().splitlines()[0] == f"#!{venv}/bin/python"
    result = run([str(script), "a"], cwd=tmp_path, input='{"a": 41}')
    assert result.stdout.strip() == "41"


def _checkout_copy(root: Path) -> Path:
    for part in ("launcher", "runtime", "autoscaler", "schemas", "configs"):
        shutil.copytree(REPO / part, root / part, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "setup.cfg", root / "setup.cfg")
    return root


def test_two_processes_building_at_once_share_one_build(tmp_path):
    checkout = _checkout_copy(tmp_path / "corral")  # sources nobody edits meanwhile
    cache = tmp_path / "cache"
    code = ("import sys; from pathlib import Path;"
            "from launcher.ship.wheelhouse import build_wheelhouse;"
            "from launcher.ship.target_tags import this_machine;"
            "w = build_wheelhouse(this_machine(), cache_dir=Path(sys.argv[1]),"
            " on_progress=lambda m: print('progress', m, flush=True));"
            "print('hash', w.hash, w.path)")
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    processes = [subprocess.Popen([sys.executable, "-c", code, str(cache)], cwd=checkout,
                                  env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True) for _ in range(2)]
    try:
        outputs = [process.communicate(timeout=180) for process in processes]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    for process, (stdout, stderr) in zip(processes, outputs):
        assert process.returncode == 0, stderr
    hashes = {line.split()[1] for stdout, _ in outputs for line in stdout.splitlines()
              if line.startswith("hash ")}
    assert len(hashes) == 1
    builds = [line for stdout, _ in outputs for line in stdout.splitlines()
              if line.startswith("progress") and "building corral" in line]
    assert len(builds) == 1, builds
    (digest,) = hashes
    assert load_wheelhouse(cache / digest) is not None
    assert sorted(p.name for p in cache.iterdir() if not p.name.endswith(".lock")) == [digest]


def _other_python() -> tuple[str, NodePlatform] | None:
    for minor in (12, 13):
        if minor == sys.version_info[1]:
            continue
        python = find_python(minor)
        if python:
            return python, probe_platform(python)
    return None


@needs_index
def test_a_node_on_another_python_gets_downloaded_wheels_that_install_there(tmp_path):
    found = _other_python()
    if found is None:
        pytest.skip("no Python 3.12 or 3.13 interpreter here to install the wheelhouse into")
    python, platform = found
    seen: list[str] = []
    wheelhouse = build_wheelhouse(platform, cache_dir=tmp_path / "cache",
                                  on_progress=seen.append)
    wheels = {entry["name"]: entry for entry in
              json.loads(wheelhouse.manifest_path.read_text())["wheels"]}
    zmq = wheels["pyzmq"]
    assert zmq["source"] == "downloaded" and f"-{platform.python_tag}-" in zmq["file"]
    assert wheels["pyyaml"]["source"] == "downloaded"
    assert wheels["click"]["source"] == "repacked"  # pure: the local install serves any Python
    assert any("downloading" in message for message in seen)
    venv = make_venv(python, tmp_path / "venv")
    install_offline(venv, wheelhouse, "corral")
    code = ("import sys, zmq, yaml, runtime, launcher.cli;"
            "print(sys.version_info[1], zmq.__version__)")
    minor, zmq_version = run([str(venv / "bin" / "python"), "-c", code],
                             cwd=tmp_path).stdout.split()
    assert int(minor) == platform.python_version[1] and zmq_version == zmq["version"]
    assert "Usage: corral" in run([str(venv / "bin" / "corral"), "--help"],
                                  cwd=tmp_path).stdout


def test_a_wheel_that_does_not_exist_for_the_node_is_named(tmp_path, offline_pip):
    sparc = NodePlatform("linux", "sparc64", "/usr/bin/python3", (3, 11, 2), "glibc", (2, 36))
    with pytest.raises(WheelhouseError) as raised:
        build_wheelhouse(sparc, cache_dir=tmp_path)
    error = raised.value
    assert error.platform == sparc
    name = error.requirement.split("==")[0]
    assert name in {"bcrypt", "cffi", "cryptography", "psutil", "pynacl", "pyyaml", "pyzmq",
                    "rpds-py"}
    assert "sparc64" in str(error) and "no wheel built for this node" in str(error)
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")] == []
