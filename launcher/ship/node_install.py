"""Install a wheelhouse into an environment on a node, offline. Runs ON THE NODE.

Standard library only, Python >= 3.11, no pip and no venv module needed: the node may be
a stock VM or an air-gapped host. The launcher uploads this file next to the wheels and
runs it with the interpreter its probe chose:

    python3.11 node_install.py --wheelhouse DIR --hash H --corral-home ~/.corral \
        [--record JSON] [--keep 2]

It makes `<corral home>/envs/H` (launcher.ship.layout) the way a venv is made by hand:
pyvenv.cfg, bin/python3 -> the interpreter, lib/pythonX.Y/site-packages with every wheel
unpacked (purelib/platlib there, `*.data/scripts` into bin/, dist-info kept, RECORD
rewritten with the installed paths as pip writes it, so the env's distributions can be
repacked into wheels on the node: the head ships to new workers from its own env), a
console script for every entry point (corral's `bin/corral` among them), byte-compiled. All of it
is built in a temporary directory beside the target and renamed into place, under a lock,
so several hosts sharing one home can install the same hash at once: one builds, the
others find it done. Then `<corral home>/env` is repointed (an atomic rename of a new
symlink), environments beyond the newest `--keep` are removed (never one a process on
this host still runs from, nor one touched in the last minutes), and the wheelhouse
directory is deleted. The last line of output is a JSON summary.
"""
from __future__ import annotations

import argparse
import base64
import compileall
import configparser
import csv
import fcntl
import hashlib
import json
import os
import shutil
import sys
import time
import zipfile

RECENT_S = 900  # an env touched this recently may be in use by a host sharing this home
STALE_TMP_S = 3600  # a temporary build dir this old was left by an install that died
SHIP_RECORD = "corral-ship.json"

# Processed by site.py when the env's site-packages is added. With system site-packages
# visible, Python puts the user site (~/.local/lib/pythonX.Y/site-packages) before the
# env's; this moves the env's in front of it, so a `pip install --user` copy of corral
# or of its dependencies cannot shadow the shipped ones. System packages stay after it.
ENV_FIRST_PTH = (
    "import sys; _c = sys.prefix + '/lib/python%d.%d/site-packages' % sys.version_info[:2]; "
    "_u = getattr(sys.modules.get('site'), 'USER_SITE', None); "
    "(_u in sys.path and _c in sys.path and sys.path.index(_u) < sys.path.index(_c)) and "
    "(sys.path.remove(_c), sys.path.insert(sys.path.index(_u), _c))\n")

SCRIPT_TEMPLATE = """\
#!{python}
# Console script written by corral's node installer (entry point {spec}).
import sys
from {module} import {head}
if __name__ == "__main__":
    sys.argv[0] = sys.argv[0].removesuffix(".exe")
    sys.exit({call}())
"""


class InstallError(Exception):
    pass


def _safe_join(root: str, relative: str) -> str:
    """root/relative, refusing absolute names and `..` (a wheel must not write outside)."""
    parts = relative.replace("\\", "/").split("/")
    if relative.startswith("/") or ".." in parts:
        raise InstallError(f"unsafe path in wheel: {relative!r}")
    return os.path.join(root, *[part for part in parts if part])


class Environment:
    def __init__(self, build_dir: str, final_dir: str):
        self.build_dir = build_dir
        self.final_dir = final_dir
        self.python = sys.executable
        self.minor = "python%d.%d" % sys.version_info[:2]
        self.site = os.path.join(build_dir, "lib", self.minor, "site-packages")
        self.bin = os.path.join(build_dir, "bin")
        # {dist-info dir: [(path relative to site-packages, sha256 digest, size)]}
        self.records: dict[str, list[tuple[str, str, int]]] = {}

    def create(self) -> None:
        os.makedirs(self.site)
        os.makedirs(self.bin)
        if sys.platlibdir != "lib":  # e.g. Fedora's lib64: site.py also reads lib/
            os.symlink("lib", os.path.join(self.build_dir, sys.platlibdir))
        version = ".".join(map(str, sys.version_info[:3]))
        with open(os.path.join(self.build_dir, "pyvenv.cfg"), "w") as handle:
            handle.write(f"home = {os.path.dirname(self.python)}\n"
                         "include-system-site-packages = true\n"
                         f"version = {version}\n"
                         f"executable = {self.python}\n")
        for name in ("python3", "python", self.minor):
            os.symlink(self.python, os.path.join(self.bin, name))
        with open(os.path.join(self.site, "_corral_env_first.pth"), "w") as handle:
            handle.write(ENV_FIRST_PTH)

    def unpack(self, wheel_path: str) -> None:
        with zipfile.ZipFile(wheel_path) as wheel:
            tops = {name.split("/", 1)[0] for name in wheel.namelist()}
            data_dir = next((top for top in tops if top.endswith(".data")), None)
            dist_info = next((top for top in tops if top.endswith(".dist-info")), None)
            if dist_info is None:
                raise InstallError(f"{os.path.basename(wheel_path)} has no .dist-info")
            rows = self.records.setdefault(dist_info, [])
            for info in wheel.infolist():
                if info.is_dir() or info.filename in (f"{dist_info}/RECORD",
                                                      f"{dist_info}/INSTALLER"):
                    continue
                target = self._target(info.filename, data_dir)
                if target is None:
                    continue
                os.makedirs(os.path.dirname(target), exist_ok=True)
                with wheel.open(info) as source:
                    data = source.read()
                mode = (info.external_attr >> 16) & 0o777
                if target.startswith(self.bin + os.sep):
                    data = self._fix_script(data)
                    mode = 0o755
                rows.append(self._write(target, data, mode))
            rows.append(self._write(os.path.join(self.site, dist_info, "INSTALLER"),
                                    b"corral\n", 0))

    def _write(self, path: str, data: bytes, mode: int) -> tuple[str, str, int]:
        """Write a file; its RECORD row."""
        with open(path, "wb") as handle:
            handle.write(data)
        if mode:
            os.chmod(path, mode | 0o600)
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
        return (os.path.relpath(path, self.site).replace(os.sep, "/"),
                "sha256=" + digest.decode(), len(data))

    def write_records(self) -> None:
        for dist_info, rows in self.records.items():
            with open(os.path.join(self.site, dist_info, "RECORD"), "w",
                      newline="") as handle:
                writer = csv.writer(handle, lineterminator="\n")
                writer.writerows(rows)
                writer.writerow((f"{dist_info}/RECORD", "", ""))

    def _target(self, name: str, data_dir: str | None) -> str | None:
        if data_dir and name.startswith(data_dir + "/"):
            kind, _, rest = name[len(data_dir) + 1:].partition("/")
            roots = {"purelib": self.site, "platlib": self.site, "scripts": self.bin,
                     "data": self.build_dir,
                     "headers": os.path.join(self.build_dir, "include", "site", self.minor)}
            if kind not in roots or not rest:
                return None
            return _safe_join(roots[kind], rest)
        return _safe_join(self.site, name)

    def _fix_script(self, content: bytes) -> bytes:
        """`#!python` (a wheel's placeholder) becomes this env's python3."""
        if content.startswith(b"#!python"):
            _, _, rest = content.partition(b"\n")
            content = self.shebang().encode() + b"\n" + rest
        return content

    def shebang(self) -> str:
        return f"#!{os.path.join(self.final_dir, 'bin', 'python3')}"

    def write_console_scripts(self) -> list[str]:
        written = []
        for name in sorted(os.listdir(self.site)):
            entry_points = os.path.join(self.site, name, "entry_points.txt")
            if not (name.endswith(".dist-info") and os.path.isfile(entry_points)):
                continue
            parser = configparser.ConfigParser(delimiters=("=",), interpolation=None)
            parser.optionxform = str  # script names keep their case
            parser.read(entry_points)
            if not parser.has_section("console_scripts"):
                continue
            for script, spec in parser.items("console_scripts"):
                module, _, attr = spec.split("[")[0].strip().partition(":")
                attr = attr.strip() or None
                if not attr:
                    continue
                text = SCRIPT_TEMPLATE.format(
                    python=self.shebang()[2:], spec=spec.strip(), module=module.strip(),
                    head=attr.split(".")[0], call=attr)
                row = self._write(_safe_join(self.bin, script), text.encode(), 0o755)
                self.records.setdefault(name, []).append(row)
                written.append(script)
        return written

    def compile(self) -> None:
        final_site = os.path.join(self.final_dir, "lib", self.minor, "site-packages")
        ok = compileall.compile_dir(self.site, quiet=2, ddir=final_site,
                                    workers=min(4, os.cpu_count() or 1))
        if not ok:
            # A module that does not compile (tests for other Python versions shipped in
            # a wheel) is left as source, as pip does.
            print("note: some modules were not byte-compiled", file=sys.stderr)


def _unique() -> str:
    return f"{os.getpid()}-{os.urandom(4).hex()}"


def _in_use(env_path: str) -> bool:
    """Whether a process on this host runs from `env_path` (Linux: /proc)."""
    needle = (env_path.rstrip("/") + "/").encode()
    if not os.path.isdir("/proc"):
        return False
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                if needle in handle.read():
                    return True
        except OSError:
            continue
    return False


def remove_old_envs(envs_dir: str, keep: list[str], keep_count: int) -> list[str]:
    """Remove environments beyond the newest `keep_count` (those in `keep` always stay),
    sparing one a process here runs from or one touched within RECENT_S."""
    now = time.time()
    removed = []
    entries = []
    names = os.listdir(envs_dir)
    for name in names:
        path = os.path.join(envs_dir, name)
        if name.startswith((".tmp-", ".lock-")):
            # A build that died; a lock of an env long gone (a lock is never removed
            # while an install may still want it: it would no longer exclude anyone).
            stale = now - os.lstat(path).st_mtime > STALE_TMP_S
            if stale and name.startswith(".tmp-"):
                shutil.rmtree(path, ignore_errors=True)
            elif stale and name[len(".lock-"):] not in names:
                os.unlink(path)
            continue
        if name.startswith(".") or not os.path.isdir(path) or os.path.islink(path):
            continue
        entries.append((os.stat(path).st_mtime, name, path))
    entries.sort(reverse=True)
    kept = [name for name in keep if name]
    for mtime, name, path in entries:
        if name in kept:
            continue
        if len(kept) < keep_count or now - mtime < RECENT_S or _in_use(path):
            kept.append(name)
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(name)
    return removed


def activate(corral_home: str, wheelhouse_hash: str) -> str | None:
    """Point `<corral home>/env` at envs/<hash> (atomically); returns the previous hash."""
    link = os.path.join(corral_home, "env")
    previous = None
    if os.path.islink(link):
        previous = os.path.basename(os.readlink(link).rstrip("/"))
    elif os.path.exists(link):
        raise InstallError(f"{link} exists and is not a symlink; move it away so corral "
                           f"can manage it")
    # Hosts sharing this home have PID namespaces of their own: a PID is not unique.
    temporary = f"{link}.tmp-{_unique()}"
    os.symlink(os.path.join("envs", wheelhouse_hash), temporary)
    os.replace(temporary, link)
    return previous


def install(wheelhouse: str, wheelhouse_hash: str, corral_home: str,
            record: dict, keep_count: int) -> dict:
    started = time.monotonic()
    envs_dir = os.path.join(corral_home, "envs")
    os.makedirs(corral_home, mode=0o700, exist_ok=True)
    os.makedirs(envs_dir, exist_ok=True)
    final_dir = os.path.join(envs_dir, wheelhouse_hash)
    installed = False
    scripts: list[str] = []
    with open(os.path.join(envs_dir, f".lock-{wheelhouse_hash}"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not os.path.isdir(final_dir):
            build_dir = os.path.join(envs_dir, f".tmp-{wheelhouse_hash}-{_unique()}")
            try:
                environment = Environment(build_dir, final_dir)
                environment.create()
                wheels = sorted(name for name in os.listdir(wheelhouse)
                                if name.endswith(".whl"))
                if not wheels:
                    raise InstallError(f"no wheels in {wheelhouse}")
                for name in wheels:
                    environment.unpack(os.path.join(wheelhouse, name))
                scripts = environment.write_console_scripts()
                environment.write_records()
                if "corral" not in scripts:
                    raise InstallError("the wheelhouse has no `corral` console script")
                environment.compile()
                record = dict(record, wheelhouse_hash=wheelhouse_hash, wheels=wheels,
                              python=environment.python,
                              python_version=list(sys.version_info[:3]),
                              installed_at=time.time())
                with open(os.path.join(build_dir, SHIP_RECORD), "w") as handle:
                    json.dump(record, handle, indent=1, sort_keys=True)
                try:
                    os.rename(build_dir, final_dir)
                    installed = True
                except OSError:
                    if not os.path.isdir(final_dir):
                        raise
                    shutil.rmtree(build_dir, ignore_errors=True)  # another host won
            except BaseException:
                shutil.rmtree(build_dir, ignore_errors=True)
                raise
        os.utime(final_dir)
    previous = activate(corral_home, wheelhouse_hash)
    removed = remove_old_envs(envs_dir, [wheelhouse_hash, previous or ""], keep_count)
    return {"env": final_dir, "installed": installed, "previous": previous,
            "removed": removed, "scripts": scripts,
            "seconds": round(time.monotonic() - started, 3)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wheelhouse", required=True)
    parser.add_argument("--hash", required=True, dest="wheelhouse_hash")
    parser.add_argument("--corral-home", required=True)
    parser.add_argument("--record", default="{}", help="JSON written to corral-ship.json")
    parser.add_argument("--keep", type=int, default=2)
    args = parser.parse_args(argv)
    wheelhouse = os.path.abspath(args.wheelhouse)
    try:
        summary = install(wheelhouse, args.wheelhouse_hash,
                          os.path.abspath(os.path.expanduser(args.corral_home)),
                          json.loads(args.record), max(1, args.keep))
    except (InstallError, OSError, zipfile.BadZipFile, ValueError) as error:
        print(f"corral install failed: {error}", file=sys.stderr)
        return 1
    finally:
        incoming = os.path.dirname(wheelhouse)
        if os.path.basename(incoming) == "incoming":  # only ever our staging dirs
            shutil.rmtree(wheelhouse, ignore_errors=True)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
