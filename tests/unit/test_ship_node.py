"""The node side of shipping corral, on this machine with real wheels, real Python
processes and real files: the probe script, the offline installer (layout, RECORD,
console script, user site not shadowing, concurrent installs of one hash, pruning), and
the shipping stage through a LocalRunner whose HOME is a temporary directory. Over SSH on
stock-VM test hosts: tests/integration/test_ship_fresh.py."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from launcher.bootstrap.command_runner import LocalRunner
from launcher.bootstrap.hashing import RUNTIME_PARTS, changed_parts, encode_parts, runtime_parts
from launcher.ship import layout, node_install
from launcher.ship.probe import NoSuitablePythonError, parse_probe, probe_command
from launcher.ship.stage import Shipper, corral_digest
from launcher.ship.target_tags import this_machine
from launcher.ship.wheelhouse import build_wheelhouse
from launcher.ssh.runner import env_prefix

pytestmark = pytest.mark.timeout(120)

INSTALLER = node_install.__file__


@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory):
    """The real wheelhouse of this corral for this machine (built once for the module)."""
    cache = tmp_path_factory.mktemp("wheelhouses")
    return build_wheelhouse(this_machine(), frozenset(), cache_dir=cache)


def stage_upload(home: Path, wheelhouse, token: str = "t1") -> Path:
    """What the shipping stage uploads: the wheels and the installer, in incoming/."""
    incoming = home / layout.INCOMING_DIR / f"{wheelhouse.hash}-{token}"
    incoming.mkdir(parents=True)
    for name in wheelhouse.wheels:
        shutil.copyfile(wheelhouse.path / name, incoming / name)
    shutil.copyfile(INSTALLER, incoming / "node_install.py")
    return incoming


def install(home: Path, incoming: Path, digest: str, python: str = sys.executable):
    result = subprocess.run(
        [python, str(incoming / "node_install.py"), "--wheelhouse", str(incoming),
         "--hash", digest, "--corral-home", str(home / ".corral"), "--record",
         json.dumps({"corral_version": "test"})],
        capture_output=True, text=True, timeout=110, env={**os.environ, "HOME": str(home)})
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def run_in_env(home: Path, code: str) -> subprocess.CompletedProcess:
    env = {"HOME": str(home), "PATH": f"{home}/.corral/env/bin:/usr/bin:/bin"}
    return subprocess.run(["python3", "-c", code], capture_output=True, text=True, env=env,
                          cwd="/", timeout=60)


def test_install_makes_the_layout_and_the_env_runs_corral(tmp_path, wheelhouse):
    home = tmp_path / "home"
    incoming = stage_upload(home, wheelhouse)
    summary = install(home, incoming, wheelhouse.hash)
    env = home / layout.ENVS_DIR / wheelhouse.hash
    assert summary["installed"] and summary["env"] == str(env) and "corral" in summary["scripts"]
    assert not incoming.exists()  # the upload is deleted
    assert os.readlink(home / layout.ACTIVE_ENV) == f"envs/{wheelhouse.hash}"
    config = (env / "pyvenv.cfg").read_text()
    assert "include-system-site-packages = true" in config
    assert f"home = {os.path.dirname(sys.executable)}" in config
    assert os.readlink(env / "bin" / "python3") == sys.executable
    script = (env / "bin" / "corral").read_text()
    assert script.startswith(f"#!{env}/bin/python3\n")  # the hash dir, not the env link
    record = json.loads((env / layout.SHIP_RECORD).read_text())
    assert record["wheelhouse_hash"] == wheelhouse.hash and record["corral_version"] == "test"
    assert list(env.rglob("launcher/__pycache__/cli.*.pyc"))

    version = subprocess.run([str(home / ".corral/env/bin/corral"), "--version"],
                             capture_output=True, text=True, timeout=60, cwd="/")
    assert version.returncode == 0 and f"installed at {env}/lib/" in version.stdout
    found = run_in_env(home, "import sys, runtime, zmq; print(sys.prefix); "
                             "print(runtime.__file__)")
    assert found.returncode == 0, found.stderr
    prefix, runtime_file = found.stdout.split()
    assert prefix == str(home / layout.ACTIVE_ENV)
    assert runtime_file.startswith(f"{prefix}/lib/")
    # The head ships to new workers from its own env: RECORD names the installed files.
    repacked = run_in_env(home, "import importlib.metadata as m; d = m.distribution("
                                "'corral'); print(sum(1 for f in d.files "
                                "if f.locate().exists()), len(d.files))")
    present, listed = map(int, repacked.stdout.split())
    assert present == listed > 100
    assert (home / ".corral/env/bin/../lib").exists()


def test_a_user_site_copy_does_not_shadow_the_shipped_packages(tmp_path, wheelhouse):
    home = tmp_path / "home"
    install(home, stage_upload(home, wheelhouse), wheelhouse.hash)
    minor = "python%d.%d" % sys.version_info[:2]
    user_site = home / ".local" / "lib" / minor / "site-packages"
    (user_site / "runtime").mkdir(parents=True)
    (user_site / "runtime" / "__init__.py").write_text("OLD = True\n")
    (user_site / "only_in_user_site.py").write_text("VALUE = 7\n")
    found = run_in_env(home, "import runtime, only_in_user_site as u; "
                             "print(hasattr(runtime, 'OLD'), u.VALUE)")
    assert found.returncode == 0, found.stderr
    assert found.stdout.split() == ["False", "7"]  # ours first; the user's still visible


def test_the_same_hash_installed_twice_at_once_is_built_once(tmp_path, wheelhouse):
    home = tmp_path / "home"
    uploads = [stage_upload(home, wheelhouse, token) for token in ("a", "b")]
    processes = [subprocess.Popen(
        [sys.executable, str(upload / "node_install.py"), "--wheelhouse", str(upload),
         "--hash", wheelhouse.hash, "--corral-home", str(home / ".corral")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for upload in uploads]
    outputs = [process.communicate(timeout=110) for process in processes]
    assert [process.returncode for process in processes] == [0, 0], outputs
    summaries = [json.loads(out.strip().splitlines()[-1]) for out, _ in outputs]
    assert sorted(summary["installed"] for summary in summaries) == [False, True]
    assert os.listdir(home / layout.INCOMING_DIR) == []
    assert sorted(os.listdir(home / layout.ENVS_DIR)) == \
        sorted([wheelhouse.hash, f".lock-{wheelhouse.hash}"])


def test_old_environments_are_pruned_but_not_one_in_use_or_just_touched(tmp_path):
    envs = tmp_path / "envs"
    old = time.time() - 2 * node_install.RECENT_S
    for name in ("new", "previous", "old1", "old2", "recent", "used"):
        (envs / name / "bin").mkdir(parents=True)
        if name != "recent":
            os.utime(envs / name, (old, old))
    (envs / ".tmp-dead-1").mkdir()
    for name in (".tmp-dead-1", ".lock-gone", ".lock-new"):
        (envs / name).touch()
        os.utime(envs / name, (old - node_install.STALE_TMP_S,) * 2)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)",
                                str(envs / "used") + "/bin/x"])
    try:
        removed = node_install.remove_old_envs(str(envs), ["new", "previous"], 2)
    finally:
        sleeper.kill()
        sleeper.wait()
    assert sorted(removed) == ["old1", "old2"]
    assert sorted(os.listdir(envs)) == [".lock-new", "new", "previous", "recent", "used"]


def test_a_broken_wheel_fails_the_install_and_leaves_nothing_half_made(tmp_path, wheelhouse):
    home = tmp_path / "home"
    incoming = stage_upload(home, wheelhouse)
    (incoming / wheelhouse.wheels[0]).write_bytes(b"not a zip")
    result = subprocess.run([sys.executable, str(incoming / "node_install.py"),
                             "--wheelhouse", str(incoming), "--hash", wheelhouse.hash,
                             "--corral-home", str(home / ".corral")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and "corral install failed" in result.stderr
    assert os.listdir(home / layout.ENVS_DIR) == [f".lock-{wheelhouse.hash}"]
    assert not (home / layout.ACTIVE_ENV).exists() and not incoming.exists()


def run_probe(tmp_path: Path, path_dirs: list[Path], home: Path):
    result = subprocess.run([shutil.which("bash"), "-c", probe_command(str(tmp_path / "node"))],
                            capture_output=True, text=True, timeout=30,
                            env={"PATH": ":".join(map(str, path_dirs)), "HOME": str(home)})
    assert result.returncode == 0, result.stderr
    return parse_probe("node-x", result.stdout)


def tool_dir(tmp_path: Path, pythons: dict[str, str]) -> Path:
    """A PATH directory with the tools the probe uses, and the given `python*` scripts."""
    tools = tmp_path / "bin"
    tools.mkdir()
    for tool in ("mkdir", "chmod"):
        os.symlink(shutil.which(tool), tools / tool)
    for name, text in pythons.items():
        (tools / name).write_text(text)
        (tools / name).chmod(0o755)
    return tools


def test_the_probe_finds_the_first_python_new_enough(tmp_path, wheelhouse):
    home = tmp_path / "home"
    install(home, stage_upload(home, wheelhouse), wheelhouse.hash)
    old = "#!/bin/sh\necho 'seen=/opt/py39/bin/python3.9|3.9.2 (< 3.11)'; exit 3\n"
    tools = tool_dir(tmp_path, {"python3.13": "#!/bin/sh\nexit 1\n", "python3.12": old,
                                "python3.11": f"#!/bin/sh\nexec {sys.executable} \"$@\"\n"})
    probe = run_probe(tmp_path, [tools], home)
    assert probe.node_dir == str(tmp_path / "node") and (tmp_path / "node/keys").is_dir()
    assert probe.home == str(home) and probe.envs == {wheelhouse.hash}
    assert probe.active_hash() == wheelhouse.hash
    platform = probe.require_platform()
    assert platform.python == os.path.realpath(sys.executable)
    assert platform.python_version == tuple(sys.version_info[:3])
    assert platform.system == sys.platform and platform.machine == os.uname().machine
    assert any("python3.13 (does not run)" in seen for seen in probe.seen)
    assert any("3.9.2" in seen and "< 3.11" in seen for seen in probe.seen)


def test_a_node_without_a_new_enough_python_is_told_what_was_found(tmp_path):
    tools = tool_dir(tmp_path, {
        "python3": "#!/bin/sh\necho 'seen=/usr/bin/python3.8|3.8.10 (< 3.11)'; exit 3\n",
        "python3.12": "#!/bin/sh\nexit 1\n"})
    probe = run_probe(tmp_path, [tools], tmp_path / "home")
    assert probe.platform is None and probe.envs == frozenset() and probe.active == ""
    with pytest.raises(NoSuitablePythonError) as raised:
        probe.require_platform()
    message = str(raised.value)
    assert "node-x" in message and "3.8.10" in message and "Python >= 3.11" in message
    assert "python3.12 (does not run)" in message
    assert "install" in message.lower()


def test_a_python_older_than_the_minimum_reports_itself_and_steps_aside(tmp_path):
    from launcher.ship import probe as probe_module
    facts = probe_module._NODE_FACTS.replace(repr(probe_module.MIN_PYTHON), repr((3, 99)))
    result = subprocess.run([sys.executable, "-I", "-S", "-c", facts, str(tmp_path)],
                            capture_output=True, text=True, timeout=30)
    version = "%d.%d.%d" % sys.version_info[:3]
    assert result.returncode == 3
    assert result.stdout == f"seen={os.path.realpath(sys.executable)}|{version} (< 3.99)\n"


def test_the_stage_uploads_only_what_the_node_lacks(tmp_path, wheelhouse):
    """Shipper.ship through a LocalRunner (HOME: a temporary node home): the first ship
    uploads and installs; the next finds the hash; a node whose `env` points elsewhere
    is repointed without an upload."""
    home = tmp_path / "home"
    home.mkdir()
    runner = LocalRunner(str(tmp_path / "work"), env={"HOME": str(home)})
    shipper = Shipper("local", build=lambda platform, extras, notify: wheelhouse)
    notes: list[str] = []

    def probe():
        result = runner.run(probe_command(str(tmp_path / "node")))
        return parse_probe("node-y", result.stdout)

    first = shipper.ship(runner, probe(), "worker", notify=notes.append)
    assert first.uploaded_bytes == wheelhouse.size_bytes and first.install_s > 0
    assert first.env_dir == str(home / layout.ENVS_DIR / wheelhouse.hash)
    assert any("uploading" in note for note in notes)
    second = shipper.ship(runner, probe(), "worker")
    assert second.uploaded_bytes == 0 and "already installed" in second.describe()
    (home / layout.ACTIVE_ENV).unlink()
    os.symlink("envs/elsewhere", home / layout.ACTIVE_ENV)
    third = shipper.ship(runner, probe(), "worker")
    assert third.uploaded_bytes == 0
    assert os.readlink(home / layout.ACTIVE_ENV) == f"envs/{wheelhouse.hash}"


def test_heads_get_their_providers_extra_and_workers_the_base_set():
    assert Shipper("aws").extras_for("head") == {"aws"}
    assert Shipper("gcp").extras_for("head") == {"gcp"}
    assert Shipper("aws").extras_for("worker") == frozenset()
    assert Shipper("local").extras_for("head") == frozenset()


def test_commands_on_a_shipped_node_find_the_env_first(tmp_path):
    exact = layout.node_env_vars("/home/u/.corral/envs/abc")
    active = layout.node_env_vars()
    script = env_prefix({"CORRAL_NODE_DIR": "/tmp/corral", **active}) + \
        'echo "$CORRAL_ENV"; echo "$PATH"'
    result = subprocess.run(["bash", "-c", script], capture_output=True, text=True,
                            env={"HOME": "/home/u", "PATH": "/usr/bin:/bin"}, timeout=30)
    assert result.stdout.split() == ["/home/u/.corral/env",
                                     "/home/u/.corral/env/bin:/usr/bin:/bin"]
    assert exact["PATH"] == "/home/u/.corral/envs/abc/bin:$PATH"
    quoted = env_prefix(layout.node_env_vars('/x/$(touch pwned)"/env'))
    subprocess.run(["bash", "-c", quoted], cwd=tmp_path, timeout=30, check=True)
    assert not (tmp_path / "pwned").exists()


def test_the_corral_code_is_a_runtime_part_of_shipped_nodes_only(tmp_path):
    from tests.unit.test_bootstrap import make_config
    config = make_config(tmp_path)
    plain = runtime_parts(config, "worker", "w", head_ip="10.0.0.1", head_port=6390)
    shipped = runtime_parts(config, "worker", "w", head_ip="10.0.0.1", head_port=6390,
                            corral_digest=corral_digest())
    assert "corral" not in plain and set(shipped) - set(plain) == {"corral"}
    newer = dict(shipped, corral="0" * 8)
    assert changed_parts(encode_parts(shipped), newer) == [RUNTIME_PARTS["corral"]]
