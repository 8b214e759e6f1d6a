"""Install corral from a source checkout: `python3 -m launcher.install [--test]`.

pip only installs projects that have a setup.py or pyproject.toml, and this repository's
top level is fixed to setup.cfg. So this module (standard library only) does what an
editable install does: it installs the dependencies that setup.cfg names, then lays down a
small dist-info (so `pip list`/`pip uninstall corral` and version lookups work), a .pth file
that puts this checkout on sys.path, and the `corral` console script.

With --test it also installs the test extras and, when run as root, the system packages
the SSH tests need (openssh-server, iproute2) through apt-get.
"""
from __future__ import annotations

import argparse
import configparser
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SYSTEM_TEST_PACKAGES = {"sshd": "openssh-server", "ssh-keygen": "openssh-client",
                        "ip": "iproute2", "unshare": "util-linux", "tmux": "tmux"}


def read_setup_cfg() -> configparser.ConfigParser:
    parser = configparser.ConfigParser()
    parser.read(REPO / "setup.cfg")
    return parser


def requirement_lines(value: str) -> list[str]:
    return [line.strip() for line in value.splitlines() if line.strip()]


def pip_install(requirements: list[str]) -> None:
    if requirements:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", *requirements], check=True)


def install_system_packages() -> None:
    """apt-get install what the SSH/namespace tests need, when root and something is missing."""
    missing = sorted({package for tool, package in SYSTEM_TEST_PACKAGES.items()
                      if not (shutil.which(tool) or Path(f"/usr/sbin/{tool}").exists())})
    if not missing:
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        print(f"note: not root (or no apt-get); tests needing {', '.join(missing)} will skip")
        return
    print(f"installing system packages: {', '.join(missing)}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=True, env=env,
                   stdout=subprocess.DEVNULL)


def write_editable_dist(metadata: configparser.SectionProxy, requires: list[str]) -> None:
    purelib = Path(sysconfig.get_paths()["purelib"])
    scripts = Path(sysconfig.get_paths()["scripts"])
    name, version = metadata["name"], metadata["version"]
    dist_info = purelib / f"{name}-{version}.dist-info"
    for old in purelib.glob(f"{name}-*.dist-info"):
        shutil.rmtree(old)
    dist_info.mkdir(parents=True)
    pth = purelib / f"__editable__.{name}.pth"
    pth.write_text(f"{REPO}\n")
    (dist_info / "METADATA").write_text(
        "Metadata-Version: 2.1\n"
        f"Name: {name}\nVersion: {version}\nSummary: {metadata.get('description', '')}\n"
        + "".join(f"Requires-Dist: {requirement}\n" for requirement in requires))
    (dist_info / "INSTALLER").write_text("launcher.install\n")
    (dist_info / "entry_points.txt").write_text(
        "[console_scripts]\ncorral = launcher.cli:main\n")
    script = scripts / "corral"
    script.write_text(f"#!{sys.executable}\nimport sys\nfrom launcher.cli import main\n"
                      "sys.exit(main())\n")
    script.chmod(0o755)
    files = [pth, script] + sorted(dist_info.iterdir())
    (dist_info / "RECORD").write_text(
        "".join(f"{os.path.relpath(path, purelib)},,\n" for path in files)
        + f"{name}-{version}.dist-info/RECORD,,\n")
    if shutil.which("pyenv"):  # pyenv only sees new scripts after a rehash
        subprocess.run(["pyenv", "rehash"], check=False)
    print(f"installed {name} {version} (editable, from {REPO}); command: {script}")


def precompile() -> None:
    """Byte-compile our packages once, as pip does for what it installs: every `corral`
    command and node process then starts without compiling them again (which it would do
    on every start where PYTHONDONTWRITEBYTECODE is set). Edited files are recompiled
    when imported, as usual."""
    import compileall
    for package in ("launcher", "runtime", "autoscaler"):
        compileall.compile_dir(str(REPO / package), quiet=1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m launcher.install", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--test", action="store_true",
                        help="also install what the test suite needs (extras, apt packages)")
    args = parser.parse_args(argv)
    setup = read_setup_cfg()
    requires = requirement_lines(setup["options"]["install_requires"])
    extras = requirement_lines(setup["options.extras_require"]["test"]) if args.test else []
    try:
        if args.test:
            install_system_packages()
        pip_install(requires + extras)
        write_editable_dist(setup["metadata"], requires)
        precompile()
    except subprocess.CalledProcessError as error:
        print(f"install failed: {' '.join(map(str, error.cmd))} exited {error.returncode}",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
