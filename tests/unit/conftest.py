"""Fixtures the unit tests share."""
import os

import pytest


@pytest.fixture
def keys_dir(tmp_path):
    """A cluster keys directory as `up` makes it (0700, files 0600), with dummy keys:
    enough for a bootstrap that only copies them."""
    path = tmp_path / "keys"
    path.mkdir(mode=0o700)
    for name in ("cluster.public", "cluster.secret"):
        (path / name).write_text("k" * 40)
        os.chmod(path / name, 0o600)
    return str(path)
