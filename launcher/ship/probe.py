"""The first round trip of an SSH node's bootstrap: make the node dir, and learn what
shipping corral there needs to know, all in one shell script.

It prints `key=value` lines: the node dir (created 0700 with keys/ and session/, as
launcher.bootstrap.stages always did), $HOME, the system and machine (uname), the Python to use
(the first of python3.13, python3.12, python3.11, python3 on PATH that is >= 3.11, with
its resolved path, version and libc), every other Python it looked at, the environments already
installed under ~/.corral/envs (launcher.ship.layout) and the one `env` points to; all
but the node dir from one Python process (the first candidate new enough).
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

# Run by each candidate, isolated and without site (only the interpreter's start-up is
# paid), with $HOME as argument: one Python process learns everything else. A Python
# older than MIN_PYTHON prints `seen=` and exits 3 (the shell tries the next one).
# Otherwise: `python=version|resolved path|libc|libc version`, uname, the installed envs
# (complete ones: bin/corral and the ship record) and where ~/.corral/env points.
_NODE_FACTS = (
    "import os, sys\n"
    "here = os.path.realpath(sys.executable)\n"
    "version = '%d.%d.%d' % sys.version_info[:3]\n"
    "if sys.version_info[:2] < MINIMUM:\n"
    "    print('seen=%s|%s (< %d.%d)' % (here, version, *MINIMUM))\n"
    "    sys.exit(3)\n"
    "lib = libc_version = ''\n"
    "try:\n"
    "    lib, libc_version = os.confstr('CS_GNU_LIBC_VERSION').split()\n"
    "except (ValueError, OSError, AttributeError):\n"
    "    pass\n"
    "if not lib and sys.platform == 'linux':\n"
    "    import glob, subprocess\n"
    "    loaders = glob.glob('/lib/ld-musl-*.so.1')\n"
    "    if loaders:\n"
    "        lib = 'musl'\n"
    "        banner = subprocess.run(loaders[:1], capture_output=True, text=True).stderr\n"
    "        libc_version = next((line.split()[1] for line in banner.splitlines()\n"
    "                             if line.startswith('Version ')), '')\n"
    "print('python=%s|%s|%s|%s' % (version, here, lib, libc_version))\n"
    "uname = os.uname()\n"
    "print('system=%s' % uname.sysname)\n"
    "print('machine=%s' % uname.machine)\n"
    "corral = os.path.join(sys.argv[1], CORRAL_DIR)\n"
    "envs = os.path.join(corral, 'envs')\n"
    "for name in sorted(os.listdir(envs)) if os.path.isdir(envs) else []:\n"
    "    env = os.path.join(envs, name)\n"
    "    if os.access(os.path.join(env, 'bin', 'corral'), os.X_OK) and \\\n"
    "            os.path.isfile(os.path.join(env, SHIP_RECORD)):\n"
    "        print('env=%s' % name)\n"
    "try:\n"
    "    print('active=%s' % os.readlink(os.path.join(corral, 'env')))\n"
    "except OSError:\n"
    "    pass\n"
).replace("MINIMUM", repr(MIN_PYTHON)).replace("CORRAL_DIR", repr(layout.CORRAL_DIR)) \
 .replace("SHIP_RECORD", repr(layout.SHIP_RECORD))


def probe_command(default_node_dir: str) -> str:
    """The probe script (bash): one round trip, three processes (mkdir, chmod, one
    Python); exits 3 when the node dir cannot be made."""
    facts = _NODE_FACTS.replace("'", "'\"'\"'")
    candidates = " ".join(PYTHON_CANDIDATES)
    return f"""\
d="${{CORRAL_NODE_DIR:-{default_node_dir}}}"
mkdir -p "$d/keys" "$d/session" && chmod 700 "$d" "$d/keys" "$d/session" || \\
  {{ echo "cannot create the node directory $d" >&2; exit 3; }}
echo "node_dir=$d"
echo "home=$HOME"
[ -d "$HOME/{layout.CORRAL_DIR}" ] || mkdir -m 700 "$HOME/{layout.CORRAL_DIR}" 2>/dev/null
for p in {candidates}; do
  command -v "$p" >/dev/null 2>&1 || continue
  "$p" -I -S -c '{facts}' "$HOME" 2>/dev/null
  case $? in 0) break ;; 3) ;; *) echo "seen=$p|" ;; esac
done
exit 0
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
            seen.append(f"{path} ({what})" if what else f"{path} (does not run)")
        elif key == "env":
            envs.add(value.strip())
        else:
            values.setdefault(key, value.strip())
    missing = [key for key in ("node_dir", "home") if not values.get(key)]
    if missing:
        raise ProbeError(f"the probe of {host} printed no {', '.join(missing)}; "
                         f"output: {output.strip()[-300:] or '(none)'}")
    platform = None
    if values.get("python") and values.get("system") and values.get("machine"):
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
