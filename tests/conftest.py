"""Fixtures shared by every test. Each test gets its own CORRAL_HOME, so nothing a test
writes (keys, known_hosts, logs, process-provider nodes) lands in the real ~/.corral."""
from __future__ import annotations

import pytest

pytest_plugins = ["tests.testhosts"]


@pytest.fixture(autouse=True)
def corral_home(tmp_path_factory, monkeypatch):
    home = tmp_path_factory.mktemp("corral_home")
    monkeypatch.setenv("CORRAL_HOME", str(home))
    return home
