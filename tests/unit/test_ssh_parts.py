"""The SSH layer's pure parts: host-key pinning, proxy-command substitution, the exact
remote command line (environment quoting, timeout wrapper). No network needed."""
from __future__ import annotations

import subprocess
import threading

import paramiko
import pytest

from launcher import paths
from launcher.errors import HostKeyMismatchError, SSHUnreachableError
from launcher.ssh.host_keys import HostKeyStore, PinningPolicy, fingerprint, host_entry_name
from launcher.ssh.pool import ConnectionSpec
from launcher.ssh.runner import SSHRunner, env_prefix


def generate_keys(tmp_path, count: int) -> list[paramiko.PKey]:
    keys = []
    for index in range(count):
        path = tmp_path / f"key{index}"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)],
                       check=True)
        keys.append(paramiko.PKey.from_path(str(path)))
    return keys


@pytest.fixture
def keys(tmp_path):
    try:
        return generate_keys(tmp_path, 3)
    except FileNotFoundError:
        pytest.skip("ssh-keygen is not installed")


def test_first_contact_pins_then_only_that_key_is_accepted(tmp_path, keys):
    store = HostKeyStore.for_cluster("pins")
    assert store.path == paths.known_hosts_path("pins")
    assert store.check_or_pin("10.0.0.5", keys[0]) is True
    assert store.check_or_pin("10.0.0.5", keys[0]) is False   # known: nothing written
    assert (store.path.stat().st_mode & 0o777) == 0o600
    with pytest.raises(HostKeyMismatchError) as raised:
        store.check_or_pin("10.0.0.5", keys[1])
    error = raised.value
    assert error.host == "10.0.0.5" and error.known_hosts_path == str(store.path)
    assert fingerprint(keys[0]) in str(error) and fingerprint(keys[1]) in str(error)
    assert str(store.path) in str(error)
    assert store.pinned("10.0.0.5") == {"ssh-ed25519": keys[0].get_base64()}
    store.forget("10.0.0.5")
    assert store.check_or_pin("10.0.0.5", keys[1]) is True


def test_known_hosts_file_is_openssh_format(tmp_path, keys):
    store = HostKeyStore(tmp_path / "known_hosts")
    store.check_or_pin(host_entry_name("10.0.0.6", 2222), keys[2])
    line = (tmp_path / "known_hosts").read_text().strip()
    assert line == f"[10.0.0.6]:2222 ssh-ed25519 {keys[2].get_base64()}"
    found = subprocess.run(["ssh-keygen", "-F", "[10.0.0.6]:2222", "-f",
                            str(tmp_path / "known_hosts")], capture_output=True, text=True)
    assert found.returncode == 0 and keys[2].get_base64() in found.stdout


def test_concurrent_pinning_keeps_every_host(tmp_path, keys):
    path = tmp_path / "known_hosts"

    def pin(index: int):
        HostKeyStore(path).check_or_pin(f"10.1.0.{index}", keys[index % 3])

    threads = [threading.Thread(target=pin, args=(index,)) for index in range(40)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    names = sorted(line.split()[0] for line in path.read_text().splitlines())
    assert names == sorted(f"10.1.0.{index}" for index in range(40))


def test_pinning_policy_raises_on_a_changed_key(tmp_path, keys):
    policy = PinningPolicy(HostKeyStore(tmp_path / "known_hosts"))
    policy.missing_host_key(None, "h", keys[0])
    with pytest.raises(HostKeyMismatchError):
        policy.missing_host_key(None, "h", keys[1])


def test_proxy_command_substitution():
    spec = ConnectionSpec(host="10.2.0.9", user="ubuntu", port=2200, private_key_path="k",
                          known_hosts_path="kh",
                          proxy_command="ssh -W %h:%p -l %r bastion # 100%% %x")
    assert spec.proxy_argv() == "ssh -W 10.2.0.9:2200 -l ubuntu bastion # 100% %x"
    assert ConnectionSpec("h", "u", 22, "k", "kh").proxy_argv() is None


def test_remote_command_exports_environment_and_wraps_timeout():
    runner = SSHRunner("10.3.0.1", user="u", private_key_path="/nonexistent",
                       cluster_name="cmdline", base_env={"CORRAL_NODE_ID": "n1", "A": "x"})
    line = runner.remote_command("echo $A", {"A": "it's"}, None)
    assert line == ("export CORRAL_NODE_ID=n1; export A='it'\"'\"'s'; "
                    "printf '@@corral-pid %s@@\\n' \"$$\" >&2; exec bash -c 'echo $A'")
    run = subprocess.run(["sh", "-c", line.replace("exec bash", "exec /bin/bash")],
                         capture_output=True, text=True)
    assert run.stdout == "it's\n"
    timed = runner.remote_command("sleep 1", None, 2.5)
    assert timed.endswith("exec timeout -k 5 2.500 bash -c 'sleep 1'")
    with pytest.raises(ValueError):
        env_prefix({"1BAD": "x"})
    runner.close()


@pytest.mark.timeout(30)
def test_failing_proxy_command_is_unreachable_naming_the_host(tmp_path, keys):
    key_path = tmp_path / "key0"  # written by the keys fixture
    runner = SSHRunner("10.4.0.7", user="u", private_key_path=str(key_path),
                       cluster_name="proxy", proxy_command="sh -c 'exit 1' %h %p")
    with pytest.raises(SSHUnreachableError) as raised:
        runner.wait_ready(0.5)
    assert raised.value.host == "10.4.0.7" and "10.4.0.7" in str(raised.value)
    runner.close()
