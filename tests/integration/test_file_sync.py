"""SSHRunner.put/get over SFTP against a real sshd host: trees, excludes, skip-unchanged,
modes, single files, `~/` paths, and the error for a missing remote path."""
from __future__ import annotations

import os
import shlex
import stat
import uuid

import pytest

from launcher.ssh.file_sync import SyncSourceMissingError
from launcher.ssh.runner import SSHRunner
from tests.helpers import make_tree

pytestmark = pytest.mark.netns


def make_runner(test_hosts, host) -> SSHRunner:
    return SSHRunner(host.ip, user=test_hosts.ssh_user,
                     private_key_path=test_hosts.ssh_private_key, cluster_name="sync")



def remote_listing(host, root: str) -> dict[str, str]:
    """{relative path: 'mode content'} of every file under root on the host."""
    out = host.run(f"cd {root} && find . -type f -printf '%P\\n' | sort").stdout.splitlines()
    return {rel: host.run(f"cd {root} && stat -c %a {shlex.quote(rel)}; cat {shlex.quote(rel)}")
            .stdout.replace("\n", " ", 1) for rel in out}


@pytest.mark.timeout(60)
def test_put_tree_with_excludes_then_skip_unchanged(test_hosts, tmp_path):
    host = test_hosts.hosts[1]
    runner = make_runner(test_hosts, host)
    src = make_tree(tmp_path / "src", {"app.py": "print(1)\n", "pkg/mod.py": "x = 1\n",
                                       "pkg/mod.pyc": "junk", ".git/HEAD": "ref",
                                       "with space/é.txt": "u\n"})
    os.chmod(src / "app.py", 0o750)
    exclude = ["*.pyc", ".git/"]
    assert runner.put(str(src), "/tmp/corral/app", exclude=exclude) == 3
    assert remote_listing(host, "/tmp/corral/app") == {
        "app.py": "750 print(1)\n", "pkg/mod.py": "644 x = 1\n",
        "with space/é.txt": "644 u\n"}
    assert runner.put(str(src), "/tmp/corral/app", exclude=exclude) == 0

    (src / "pkg/mod.py").write_text("x = 2\n")  # same size: only the checksum tells
    os.chmod(src / "app.py", 0o700)              # mode only: fixed without a copy
    assert runner.put(str(src), "/tmp/corral/app", exclude=exclude) == 1
    listing = remote_listing(host, "/tmp/corral/app")
    assert listing["pkg/mod.py"] == "644 x = 2\n" and listing["app.py"] == "700 print(1)\n"
    assert "partial" not in host.run("find /tmp/corral").stdout
    # Only this host got the files.
    assert test_hosts.hosts[2].run("ls /tmp").stdout == ""


@pytest.mark.timeout(60)
def test_get_tree_with_excludes_then_skip_unchanged(test_hosts, tmp_path):
    host = test_hosts.hosts[2]
    runner = make_runner(test_hosts, host)
    host.run("mkdir -p /tmp/out/logs /tmp/out/cache /tmp/out/empty && echo one > /tmp/out/a "
             "&& echo two > /tmp/out/logs/b.log && echo c > /tmp/out/cache/c "
             "&& chmod 600 /tmp/out/a")
    local = tmp_path / "back"
    assert runner.get("/tmp/out", str(local), exclude=["cache/"]) == 2
    assert (local / "a").read_text() == "one\n" and (local / "logs/b.log").read_text() == "two\n"
    assert stat.S_IMODE((local / "a").stat().st_mode) == 0o600
    assert (local / "empty").is_dir() and not (local / "cache").exists()
    assert runner.get("/tmp/out", str(local), exclude=["cache/"]) == 0
    host.run("echo ONE > /tmp/out/a")
    assert runner.get("/tmp/out", str(local)) == 2  # a changed; cache/c now included
    assert (local / "a").read_text() == "ONE\n" and (local / "cache/c").read_text() == "c\n"


@pytest.mark.timeout(60)
def test_single_files_both_ways_and_missing_remote(test_hosts, tmp_path):
    host = test_hosts.hosts[3]
    runner = make_runner(test_hosts, host)
    config = tmp_path / "cluster.yaml"
    config.write_text("cluster_name: x\n")
    assert runner.put(str(config), "/tmp/corral/deep/er/cluster.yaml") == 1
    assert runner.put(str(config), "/tmp/corral/deep/er/cluster.yaml") == 0
    assert host.run("cat /tmp/corral/deep/er/cluster.yaml").stdout == "cluster_name: x\n"
    assert runner.put(str(config), "/tmp/corral/into/") == 1
    assert host.run("cat /tmp/corral/into/cluster.yaml").stdout == "cluster_name: x\n"
    assert runner.get("/tmp/corral/into/cluster.yaml", str(tmp_path / "copy.yaml")) == 1
    assert (tmp_path / "copy.yaml").read_text() == "cluster_name: x\n"
    with pytest.raises(SyncSourceMissingError, match="remote host: /tmp/nothing-here"):
        runner.get("/tmp/nothing-here", str(tmp_path / "x"))


@pytest.mark.timeout(60)
def test_home_relative_paths_resolve_to_the_remote_home(test_hosts, tmp_path):
    host = test_hosts.hosts[0]
    runner = make_runner(test_hosts, host)
    name = f"corral-sync-test-{uuid.uuid4().hex[:8]}"  # hosts share this machine's /root
    src = make_tree(tmp_path / "src", {"f.txt": "home\n"})
    try:
        assert runner.put(str(src), f"~/{name}") == 1
        assert runner.run(f'cat "$HOME/{name}/f.txt"').stdout == "home\n"
        assert runner.get(f"~/{name}/f.txt", str(tmp_path / "f.txt")) == 1
        assert (tmp_path / "f.txt").read_text() == "home\n"
    finally:
        runner.run(f'rm -rf "$HOME/{name}"')
