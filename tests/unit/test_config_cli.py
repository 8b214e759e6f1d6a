"""`corral validate` as a user runs it: a real subprocess, exit codes 0 and 2, messages
without tracebacks, nothing created."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from launcher.config.load import load_config

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.timeout(60)


def corral(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "launcher", *args], capture_output=True,
                          text=True, timeout=50, cwd=cwd, env=dict(os.environ))


def test_validate_ok_prints_a_summary_and_touches_nothing(corral_home):
    result = corral("validate", "configs/demo.yaml")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ("configs/demo.yaml: ok (provider process, 2 node types "
                                     "(head, cpu1), head 'head', workers 1..3)")
    assert list(Path(corral_home).iterdir()) == []


def test_validate_show_prints_the_normalised_config():
    result = corral("validate", "--show", "configs/local.yaml")
    assert result.returncode == 0, result.stderr
    shown = yaml.safe_load(result.stdout.rsplit("\n", 2)[0])
    assert shown == load_config(ROOT / "configs" / "local.yaml").to_dict()
    assert result.stdout.rstrip().endswith("workers 3..3)")


def test_validate_bad_file_exits_2_with_one_line_per_problem(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("cluster_name: b\nprovider: {type: process}\nmax_worker: 2\n"
                    "upscaling_speed: fast\n")
    result = corral("validate", str(path))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.strip().splitlines()
    assert lines == [
        f"Error: {path}:3: max_worker: unknown key 'max_worker'; did you mean 'max_workers'?",
        f"{path}:4: upscaling_speed: expected a number > 0, got 'fast'"]


@pytest.mark.parametrize("content", [None, "", "a: [1\n", "- 1\n", "\tx: 1\n", "\xff\xfe"])
def test_validate_never_shows_a_traceback(tmp_path, content):
    path = tmp_path / "cluster.yaml"
    if content is not None:
        path.write_bytes(content.encode("latin-1"))
    result = corral("validate", str(path))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr + result.stdout
    assert result.stderr.startswith(f"Error: {path}")


def test_validate_a_directory_is_a_clear_error(tmp_path):
    result = corral("validate", str(tmp_path))
    assert result.returncode == 2
    assert "is a directory" in result.stderr and "Traceback" not in result.stderr


def test_validate_prints_alias_notices(tmp_path):
    path = tmp_path / "ray.yaml"
    path.write_text("cluster_name: r\nprovider: {type: process}\n"
                    "head_start_ray_commands: [ray start --head]\n")
    result = corral("validate", str(path))
    assert result.returncode == 0, result.stderr
    assert (f"note: {path}:3: head_start_ray_commands is Ray's name for head_start_commands"
            in result.stderr)


def test_validate_help_explains_itself():
    result = corral("validate", "--help")
    assert result.returncode == 0
    assert "Nothing is created" in result.stdout and "--show" in result.stdout
