"""Where corral's data files are: the JSON schemas and the per-provider defaults.

In a source checkout (and an editable install) they sit at the repository's top level,
`schemas/` and `configs/defaults/`. An installed corral (`pip install .`, a wheel, or the
environment `corral up` ships to a node) carries them inside the `launcher` package, as
`launcher/schemas/` and `launcher/defaults/` (setup.cfg maps them there). Which one is
decided by whether `launcher` sits in a checkout (setup.cfg beside it), never by what
happens to exist beside site-packages.
"""
from __future__ import annotations

import configparser
from importlib import metadata
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
CHECKOUT_DIR = PACKAGE_DIR.parent


def schema_dir() -> Path:
    """The directory of `cluster.schema.json` and `provider-<type>.schema.json`."""
    return CHECKOUT_DIR / "schemas" if is_checkout() else PACKAGE_DIR / "schemas"


def defaults_dir() -> Path:
    """The directory of `common.yaml` and `<provider type>.yaml` defaults."""
    return (CHECKOUT_DIR / "configs" / "defaults" if is_checkout()
            else PACKAGE_DIR / "defaults")


def is_checkout() -> bool:
    """True when corral runs from a source checkout (editable), not an installed copy."""
    return (CHECKOUT_DIR / "setup.cfg").is_file() and (CHECKOUT_DIR / "schemas").is_dir()


def version() -> str:
    """The version of the corral that is running: setup.cfg's in a checkout (what an
    editable install runs), else the metadata installed beside the `launcher` package (not
    whichever `corral` metadata comes first on sys.path). "unknown" when neither exists."""
    if is_checkout():
        parser = configparser.ConfigParser()
        parser.read(CHECKOUT_DIR / "setup.cfg")
        return parser.get("metadata", "version", fallback="unknown")
    for dist in metadata.distributions(path=[str(PACKAGE_DIR.parent)]):
        if (dist.metadata["Name"] or "").lower() == "corral":
            return dist.version
    return "unknown"
