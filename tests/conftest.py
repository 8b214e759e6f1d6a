"""Fixtures shared by every test. Each test gets its own CORRAL_HOME, so nothing a test
writes (keys, known_hosts, logs, process-provider nodes) lands in the real ~/.corral."""
from __future__ import annotations

import compileall
import os
from pathlib import Path

import pytest

pytest_plugins = ["tests.testhosts"]

CHECKOUT = Path(__file__).resolve().parent.parent


def pytest_sessionstart(session):
    """Byte-compile our packages once, as pip does for an installed copy: the many
    `corral` and node processes the tests start then skip compiling them again, which
    they would do on every start where PYTHONDONTWRITEBYTECODE is set (CI)."""
    for package in ("launcher", "runtime", "autoscaler"):
        compileall.compile_dir(str(CHECKOUT / package), quiet=1)


@pytest.fixture(scope="session", autouse=True)
def wheelhouse_cache(tmp_path_factory):
    """One wheelhouse cache for the whole session: every test has its own CORRAL_HOME,
    and building corral's wheelhouse again for each test that ships would cost ~1.5 s."""
    cache = tmp_path_factory.mktemp("wheelhouses")
    saved = os.environ.get("CORRAL_WHEELHOUSE_CACHE")
    os.environ["CORRAL_WHEELHOUSE_CACHE"] = str(cache)
    yield cache
    if saved is None:
        os.environ.pop("CORRAL_WHEELHOUSE_CACHE", None)
    else:
        os.environ["CORRAL_WHEELHOUSE_CACHE"] = saved


@pytest.fixture(autouse=True)
def corral_home(tmp_path_factory, monkeypatch):
    home = tmp_path_factory.mktemp("corral_home")
    monkeypatch.setenv("CORRAL_HOME", str(home))
    return home
