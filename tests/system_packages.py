"""Install the system packages the test suite needs: `python3 -m tests.system_packages`.

The SSH tests run real sshd hosts in network namespaces (openssh-server, iproute2,
util-linux's unshare/nsenter), the attach tests drive tmux, and the agent tests need
ssh-agent (openssh-client). Run as root this installs whatever is missing through
apt-get; otherwise it says which tests will skip. Python packages come from pip:
`python3 -m pip install -e '.[all,test]'`.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

# command the tests run -> the Debian package that has it
SYSTEM_TEST_PACKAGES = {"sshd": "openssh-server", "ssh-keygen": "openssh-client",
                        "ssh-agent": "openssh-client", "ip": "iproute2",
                        "unshare": "util-linux", "tmux": "tmux"}


def missing_packages() -> list[str]:
    return sorted({package for tool, package in SYSTEM_TEST_PACKAGES.items()
                   if not (shutil.which(tool) or Path(f"/usr/sbin/{tool}").exists())})


def install_system_packages() -> int:
    """apt-get install what is missing, when root; 0 unless apt-get failed."""
    missing = missing_packages()
    if not missing:
        return 0
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        print(f"note: not root (or no apt-get); tests needing {', '.join(missing)} will skip")
        return 0
    print(f"installing system packages: {', '.join(missing)}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    try:
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=True, env=env,
                       stdout=subprocess.DEVNULL)
    except subprocess.CalledProcessError as error:
        print(f"install failed: {' '.join(map(str, error.cmd))} exited {error.returncode}",
              file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m tests.system_packages",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.parse_args(argv)
    return install_system_packages()


if __name__ == "__main__":
    sys.exit(main())
