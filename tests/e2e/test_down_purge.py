"""`corral down --purge` where there is nothing to purge (the `process` provider), and its
usage errors, through the real CLI. (Purging cloud resources is tested end to end in
tests/aws/test_e2e.py and tests/gcp/test_e2e_up.py.)"""
from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

pytestmark = pytest.mark.timeout(60)


def corral(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "launcher", *args], capture_output=True,
                          text=True, timeout=50, stdin=subprocess.DEVNULL)


@pytest.fixture
def process_config(tmp_path):
    path = tmp_path / "purge.yaml"
    path.write_text(yaml.safe_dump({"cluster_name": "purgeme", "provider": {"type": "process"},
                                    "max_workers": 0}))
    return path


def test_purge_with_workers_only_is_a_usage_error(process_config):
    done = corral("down", str(process_config), "--purge", "--workers-only", "-y")
    assert done.returncode == 2, done.stdout + done.stderr
    assert "--workers-only" in done.stderr and "Traceback" not in done.stderr


def test_purge_says_when_the_provider_has_nothing_to_purge(process_config):
    done = corral("down", str(process_config), "--purge", "-y")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Nothing to purge for provider process." in done.stdout
    assert "no nodes; nothing to do" in done.stdout
