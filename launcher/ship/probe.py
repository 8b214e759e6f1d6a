"""The first round trip of an SSH node's bootstrap: make the node dir, and learn what
shipping corral there needs to know, all in one shell script.

It prints `key=value` lines: the node dir (created 0700 with keys/ and session/, as
launcher.bootstrap always did), $HOME, `uname -s`/`-m`, the Python to use (the first of
python3.13, python3.12, python3.11, python3 on PATH that is >= 3.11, with its resolved
path, version and libc), every other Python it looked at, the environments already
installed under ~/.corral/envs (launcher.ship.layout) and the one `env` points to.
`parse_probe` turns them into a NodeProbe; `NodeProbe.require_platform()` raises
NoSuitablePythonError naming what was found when the node has no usable Python.
"""
from __future__ import annotations

import dataclasses

from launcher.errors import ClusterError
from launcher.ship import layout
from launcher.ship.platform import NodePlatform

PYTHON_CANDIDATES = ("python3.13", "python3.12", "python3.11", "python3")
MIN_PYTHON = (3, 11)

# Run by each candidate: version, resolved path, libc (glibc from confstr, musl from its
# loader's name and banner). One line: "3.11.2|/usr/bin/python3.11|glibc|2.36".
_PYTHON_FACTS = (
    "import glob, os, platform, subprocess, sys\n"
    "lib, version = platform.libc_ver()\n"
    "loaders = [] if lib else glob.glob('/lib/ld-musl-*.so.1')\n"
    "if loaders:\n"
    "    lib = 'musl'\n"
    "    banner = subprocess.run(loaders[:1], capture_output=True, text=True).stderr\n"
    "    version = next((line.split()[1] for line in banner.splitlines()\n"
    "                    if line.startswith('Version ')), '')\n"
    "print('%d.%d.%d|%s|%s|%s' % (*sys.version_info[:3], os.path.realpath(sys.executable),\n"
    "                             lib, version))\n")


def probe_command(default_node_dir: str) -> str:
    """The probe script (bash): one round trip; exits 3 when the node dir cannot be made."""
    facts = _PYTHON_FACTS.replace("'", "'\"'\"'")
    candidates = " ".join(PYTHON_CANDIDATES)
    minimum = ".".join(map(str, MIN_PYTHON))
    return f"""\
d="${{CORRAL_NODE_DIR:-{default_node_dir}}}"
mkdir -p "$d/keys" "$d/session" && chmod 700 "$d" "$d/keys" || \
  {{ echo "cannot create the node directory $d" >&2; exit 3; }}
echo "node_dir=$d"
[ -d "$HOME/{layout.CORRAL_DIR}" ] || mkdir -m 700 "$HOME/{layout.CORRAL_DIR}" 2>/dev/null
echo "home=$HOME"
echo "system=$(uname -s)"
echo "machine=$(uname -m)"
for p in {candidates}; do
  path=$(command -v "$p" 2>/dev/null) || continue
  facts=$("$path" -c '{facts}' 2>/dev/null) || {{ echo "seen=$path|?"; continue; }}
  case "$facts" in 3.1[1-9].*|3.[2-9][0-9].*|[4-9].*) echo "python=$facts"; break ;;
  *) echo "seen=$path|$facts (< {minimum})" ;; esac
done
for e in "$HOME/{layout.ENVS_DIR}"/*/; do
  [ -x "$e/bin/corral" ] && [ -f "$e/{layout.SHIP_RECORD}" ] && echo "env=$(basename "$e")"
done
echo "active=$(readlink "$HOME/{layout.ACTIVE_ENV}" 2>/dev/null)"
"""


class NoSuitablePythonError(ClusterError):
    """A node has no Python corral can run with. Carries what was found."""

    def __init__(self, host: str, seen: tuple[str, ...]):
        self.host = host
        self.seen = seen
        minimum = ".".join(map(str, MIN_PYTHON))
        found = "; ".join(seen) if seen else f"none of {', '.join(PYTHON_CANDIDATES)} on PATH"
        super().__init__(
            f"{host} has no Python >= {minimum} to run corral (found: {found}). Install "
            f"Python {minimum} or newer on the node (e.g. `sudo apt install python3.11`, "
            f"or a newer OS image) and run `corral up` again")


@dataclasses.dataclass(frozen=True)
class NodeProbe:
    host: str
    node_dir: str
    home: str
    platform: NodePlatform | None  # None: no suitable Python (see seen)
    seen: tuple[str, ...]          # other interpreters looked at, "path|what"
    envs: frozenset[str]           # installed environment hashes
    active: str                    # what ~/.corral/env points to ("" if nothing)

    def require_platform(self) -> NodePlatform:
        if self.platform is None:
            raise NoSuitablePythonError(self.host, self.seen)
        return self.platform

    def active_hash(self) -> str:
        return self.active.rstrip("/").rsplit("/", 1)[-1] if self.active else ""


class ProbeError(ClusterError):
    """The probe's output could not be read."""


def parse_probe(host: str, output: str) -> NodeProbe:
    values: dict[str, str] = {}
    seen: list[str] = []
    envs: set[str] = set()
    for line in output.splitlines():
        key, sep, value = line.partition("=")
        if not sep:
            continue
        if key == "seen":
            path, _, what = value.partition("|")
            seen.append(f"{path} ({what})" if what and what != "?" else
                        f"{path} (does not run)")
        elif key == "env":
            envs.add(value.strip())
        else:
            values.setdefault(key, value.strip())
    missing = [key for key in ("node_dir", "home", "system", "machine") if not values.get(key)]
    if missing:
        raise ProbeError(f"the probe of {host} printed no {', '.join(missing)}; "
                         f"output: {output.strip()[-300:] or '(none)'}")
    platform = None
    if values.get("python"):
        version, path, libc, libc_version = (values["python"].split("|") + ["", "", ""])[:4]
        platform = NodePlatform(
            system=values["system"].lower(), machine=values["machine"], python=path,
            python_version=_numbers(version), libc=libc,
            libc_version=_numbers(libc_version))
    return NodeProbe(host=host, node_dir=values["node_dir"], home=values["home"],
                     platform=platform, seen=tuple(seen), envs=frozenset(envs),
                     active=values.get("active", ""))


def _numbers(text: str) -> tuple[int, ...]:
    parts = []
    for part in text.strip().split("."):
        if not part.isdigit():
            break
        parts.append(int(part))
    return tuple(parts)
