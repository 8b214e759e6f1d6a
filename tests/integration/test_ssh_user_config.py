"""The user's own SSH set-up against real sshd hosts (tests/testhosts.py): a ~/.ssh/config
alias (HostName, User, Port, IdentityFile), ProxyJump through other test hosts to a host
that accepts only the jump host, a key held only by an ssh-agent the test starts, a
passphrase-protected key, and a named key file that is missing (`corral validate`/`up`).

Each test gets its own HOME (so ssh's default keys ~/.ssh/id_* are not this machine's),
no SSH_AUTH_SOCK unless it starts an agent, and CORRAL_SSH_CONFIG pointing at a config
file it writes (so the user's real ~/.ssh/config never takes part)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from launcher import paths
from launcher.ssh import user_config as ssh_config
from launcher.ssh import pool as ssh_pool
from launcher.config.load import load_config
from launcher.errors import SSHKeyError, SSHUnreachableError
from launcher.providers.local import LocalProvider
from launcher.ssh.runner import SSHRunner
from launcher import tags as T
from tests.helpers import wait_for

pytestmark = pytest.mark.netns
CLUSTER = "usercfg"
CHECKOUT = Path(__file__).resolve().parents[2]


@pytest.fixture
def ssh_home(tmp_path, monkeypatch):
    """An empty HOME, no agent, and CORRAL_SSH_CONFIG = <tmp>/ssh_config (write it)."""
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    config = tmp_path / "ssh_config"
    config.write_text("")
    monkeypatch.setenv(ssh_config.CONFIG_ENV, str(config))
    return config


@pytest.fixture
def key_copy(test_hosts, tmp_path):
    """copy(name) -> a 0600 copy of the test hosts' client key (no .pub beside it)."""
    def copy(name: str) -> Path:
        path = tmp_path / "keys" / name
        path.parent.mkdir(exist_ok=True, mode=0o700)
        shutil.copyfile(test_hosts.ssh_private_key, path)
        os.chmod(path, 0o600)
        return path
    return copy


@pytest.fixture
def agent(tmp_path):
    """An ssh-agent of this test's own at <tmp>/agent.sock, stopped (by PID) at the end.
    agent.add(path) loads a key into it."""
    if not shutil.which("ssh-agent") or not shutil.which("ssh-add"):
        pytest.skip("ssh-agent/ssh-add are not installed")
    sock = tmp_path / "agent.sock"
    process = subprocess.Popen(["ssh-agent", "-D", "-a", str(sock)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: sock.exists() or process.poll() is not None, 10,
                 "ssh-agent to make its socket", interval_s=0.02)
        assert process.poll() is None, "ssh-agent exited at start"

        class Agent:
            socket = str(sock)

            @staticmethod
            def add(path) -> None:
                subprocess.run(["ssh-add", "-q", str(path)], check=True, capture_output=True,
                               env={**os.environ, "SSH_AUTH_SOCK": str(sock)}, timeout=30)
        yield Agent
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def ssh_connection(runner: SSHRunner) -> list[str]:
    """$SSH_CONNECTION on the host: client ip, client port, server ip, server port."""
    result = runner.run('echo "$SSH_CONNECTION"')
    assert result.ok, result.stderr
    return result.stdout.split()


def corral(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "launcher", *args], capture_output=True,
                          text=True, timeout=120, cwd=CHECKOUT, env=env or dict(os.environ))


@pytest.mark.timeout(90)
def test_alias_gives_the_address_port_user_and_identity_file(test_hosts, ssh_home, key_copy):
    host = test_hosts.hosts[1]
    # Port 2222 (and 22, as before); the client key also for users who cannot read the
    # root-only authorized_keys file (nobody, below).
    test_hosts.restart_host(host, sshd_options={
        "Port": "2222", "AuthorizedKeysCommandUser": "root",
        "AuthorizedKeysCommand": f"/bin/cat {host.directory / 'authorized_keys'}"})
    key_copy(f"{host.ip}.key")
    ssh_home.write_text(f"Host rack-a\n  HostName {host.ip}\n  Port 2222\n  User nobody\n"
                        f"  IdentityFile {ssh_home.parent}/keys/%h.key\n")
    runner = SSHRunner("rack-a", cluster_name=CLUSTER, user="root")  # the YAML's user wins
    try:
        assert (runner.spec.host, runner.spec.port, runner.user) == (host.ip, 2222, "root")
        _, _, server_ip, server_port = ssh_connection(runner)
        assert (server_ip, server_port) == (host.ip, "2222")
        assert runner.run("whoami").stdout == "root\n"
        assert runner.run("hostname").stdout.strip() == host.name
        result = runner.run("true")
        assert result.host == "rack-a"  # results and errors name the host as written
    finally:
        runner.close()
    known = paths.known_hosts_path(CLUSTER).read_text().splitlines()
    assert [line.split()[0] for line in known] == [f"[{host.ip}]:2222"]

    # Without a user in the YAML, ssh_config's User logs in (nobody: sshd accepts the key,
    # then nobody's shell, nologin, refuses to run the command).
    as_config_user = SSHRunner("rack-a", cluster_name=CLUSTER)
    try:
        assert as_config_user.user == "nobody"
        refused = as_config_user.run("true")
        assert refused.exit_code == 1 and "not available" in refused.stdout
    finally:
        as_config_user.close()
    assert "Accepted publickey for nobody" in host.sshd_log.read_text(errors="replace")


@pytest.mark.timeout(120)
def test_proxyjump_reaches_a_host_that_accepts_only_the_jump_host(test_hosts, ssh_home,
                                                                 tmp_path):
    gate, inner, other = test_hosts.hosts[1], test_hosts.hosts[2], test_hosts.hosts[3]
    for target in (inner, other):
        test_hosts.restart_host(target, sshd_options={"AllowUsers": f"root@{gate.ip}"})
    direct = SSHRunner(inner.ip, cluster_name=CLUSTER, user="root",
                       private_key_path=test_hosts.ssh_private_key)
    try:
        with pytest.raises(SSHUnreachableError) as refused:
            direct.wait_ready(2)
        assert "refused every key" in refused.value.last_error
    finally:
        direct.close()
    ssh_pool.close_all()

    ssh_home.write_text(f"Host inner\n  HostName {inner.ip}\n  ProxyJump gate\n"
                        f"Host other\n  HostName {other.ip}\n  ProxyJump gate\n"
                        f"Host gate\n  HostName {gate.ip}\n"
                        f"Host *\n  User root\n  IdentityFile {test_hosts.ssh_private_key}\n")
    runners = [SSHRunner(name, cluster_name=CLUSTER) for name in ("inner", "other")]
    try:
        for runner, target in zip(runners, (inner, other)):
            client_ip, _, server_ip, _ = ssh_connection(runner)
            assert (client_ip, server_ip) == (gate.ip, target.ip)
            assert runner.run("hostname").stdout.strip() == target.name
        # Bulk output and SFTP through the jump host (each packet answered, see ssh_pool).
        assert runners[0].run("seq 1 200000").stdout.splitlines()[-1] == "200000"
        payload = tmp_path / "payload.bin"
        payload.write_bytes(os.urandom(3 << 20))
        runners[0].put(str(payload), "/tmp/payload.bin")
        runners[0].get("/tmp/payload.bin", str(tmp_path / "back.bin"))
        assert (tmp_path / "back.bin").read_bytes() == payload.read_bytes()
        # Both targets ride one pooled connection to the jump host: 3 connections.
        assert len(ssh_pool.POOL) == 3
        assert runners[0].spec.jump == runners[1].spec.jump
    finally:
        for runner in runners:
            runner.close()
    assert len(ssh_pool.POOL) == 0  # the last holder's close ends the jump host's too
    pinned = {line.split()[0]
              for line in paths.known_hosts_path(CLUSTER).read_text().splitlines()}
    assert pinned == {gate.ip, inner.ip, other.ip}


@pytest.mark.timeout(120)
def test_proxyjump_chain_of_two_hops(test_hosts, ssh_home):
    first, second, target = test_hosts.hosts[0], test_hosts.hosts[1], test_hosts.hosts[2]
    test_hosts.restart_host(second, sshd_options={"AllowUsers": f"root@{first.ip}"})
    test_hosts.restart_host(target, sshd_options={"AllowUsers": f"root@{second.ip}"})
    ssh_home.write_text(f"Host deep\n  HostName {target.ip}\n"
                        f"  ProxyJump root@{first.ip}:22,{second.ip}\n"
                        f"Host *\n  User root\n  IdentityFile {test_hosts.ssh_private_key}\n")
    runner = SSHRunner("deep", cluster_name=CLUSTER)
    try:
        assert [spec.host for spec in runner.spec.chain()] == [target.ip, second.ip,
                                                               first.ip]
        client_ip, _, server_ip, _ = ssh_connection(runner)
        assert (client_ip, server_ip) == (second.ip, target.ip)
        assert runner.run("hostname").stdout.strip() == target.name
    finally:
        runner.close()


@pytest.mark.timeout(90)
def test_key_only_in_ssh_agent_logs_in_without_a_key_file(test_hosts, ssh_home, key_copy,
                                                          agent, monkeypatch):
    host = test_hosts.hosts[0]
    no_agent = SSHRunner(host.ip, cluster_name=CLUSTER, user="root")
    try:
        with pytest.raises(SSHKeyError) as raised:  # nothing to offer: said, not retried
            no_agent.wait_ready(30)
        assert raised.value.key_path is None and "no SSH key to offer" in str(raised.value)
    finally:
        no_agent.close()
    loaded = key_copy("agent-only")
    agent.add(loaded)
    loaded.unlink()  # from now on the agent holds the only copy
    monkeypatch.setenv("SSH_AUTH_SOCK", agent.socket)
    runner = SSHRunner(host.ip, cluster_name=CLUSTER, user="root")
    try:
        assert runner.spec.private_key_path is None
        assert not any(os.path.exists(path) for path in runner.spec.identity_files)
        assert runner.spec.agent_socket == agent.socket
        assert runner.run("hostname").stdout.strip() == host.name
    finally:
        runner.close()


def encrypt(path: Path, passphrase: str = "correct horse") -> None:
    subprocess.run(["ssh-keygen", "-q", "-p", "-P", "", "-N", passphrase, "-f", str(path)],
                   check=True, capture_output=True, timeout=30)


@pytest.mark.timeout(90)
def test_passphrase_key_is_used_from_the_agent_or_named_in_a_clear_error(
        test_hosts, ssh_home, key_copy, agent, monkeypatch):
    host = test_hosts.hosts[1]
    locked = key_copy("locked")
    encrypt(locked)
    runner = SSHRunner(host.ip, cluster_name=CLUSTER, user="root", private_key_path=str(locked))
    try:
        for attempt in (lambda: runner.wait_ready(30), lambda: runner.run("true")):
            with pytest.raises(SSHKeyError) as raised:
                attempt()
            message = str(raised.value)
            assert raised.value.key_path == str(locked)
            assert "passphrase-protected" in message and f"ssh-add {locked}" in message
            assert "SSH_AUTH_SOCK is not set" in message
    finally:
        runner.close()

    agent.add(key_copy("unlocked"))  # the same key pair, loaded into the agent
    monkeypatch.setenv("SSH_AUTH_SOCK", agent.socket)
    with_agent = SSHRunner(host.ip, cluster_name=CLUSTER, user="root",
                           private_key_path=str(locked))
    try:
        assert with_agent.run("hostname").stdout.strip() == host.name
    finally:
        with_agent.close()


def local_yaml(path: Path, head: str, auth: str = "") -> Path:
    path.write_text(f"cluster_name: {CLUSTER}\nprovider:\n  type: local\n  head_ip: {head}\n"
                    + auth)
    return path


@pytest.mark.timeout(150)
def test_corral_exec_on_an_alias_with_only_ssh_config_and_the_agent(
        test_hosts, ssh_home, key_copy, agent, monkeypatch, tmp_path):
    host = test_hosts.hosts[2]
    test_hosts.restart_host(host, sshd_options={"Port": "2222"})
    ssh_home.write_text(f"Host rack-head\n  HostName {host.ip}\n  Port 2222\n  User root\n")
    agent.add(key_copy("agent-key"))
    monkeypatch.setenv("SSH_AUTH_SOCK", agent.socket)
    cluster_yaml = local_yaml(tmp_path / "cluster.yaml", "rack-head")  # no auth at all
    validated = corral("validate", str(cluster_yaml))
    assert validated.returncode == 0, validated.stderr
    assert "no auth.ssh_private_key" in validated.stderr  # the head gets no key: said
    provider = LocalProvider(load_config(cluster_yaml))
    try:
        assert provider.create_nodes("local.head", {}, {T.TAG_NODE_KIND: T.KIND_HEAD},
                                     1) == ["rack-head"]
        [head] = provider.non_terminated_nodes()
        assert (head.id, head.internal_ip) == ("rack-head", host.ip)
        result = corral("exec", str(cluster_yaml),
                        'echo "$SSH_CONNECTION|$CORRAL_HEAD_IP|$(whoami)"')
        assert result.returncode == 0, result.stderr
        connection, head_ip, user = result.stdout.strip().split("|")
        assert connection.split()[2:] == [host.ip, "2222"]
        assert (head_ip, user) == (host.ip, "root")  # the nodes get the address
    finally:
        provider.terminate_nodes(["rack-head"])
        provider.close()


@pytest.mark.timeout(120)
def test_corral_commands_on_a_passphrase_key_without_agent_say_ssh_add(
        test_hosts, ssh_home, key_copy, tmp_path):
    locked = key_copy("locked")
    encrypt(locked)
    cluster_yaml = local_yaml(tmp_path / "cluster.yaml", test_hosts.hosts[0].ip,
                              f"auth:\n  ssh_user: root\n  ssh_private_key: {locked}\n")
    validated = corral("validate", str(cluster_yaml))
    assert validated.returncode == 0, validated.stderr
    assert f"{locked} is passphrase-protected" in validated.stderr
    result = corral("exec", str(cluster_yaml), "true")
    assert result.returncode == 1
    assert f"ssh-add {locked}" in result.stderr and "Traceback" not in result.stderr
    assert "has no head node" not in result.stderr  # not mistaken for a cluster not up


@pytest.mark.timeout(120)
def test_missing_key_file_is_exit_2_at_validate_and_up(tmp_path, ssh_home):
    missing = tmp_path / "nowhere" / "key.pem"
    cluster_yaml = local_yaml(tmp_path / "cluster.yaml", "198.18.0.250",
                              f"auth:\n  ssh_user: root\n  ssh_private_key: {missing}\n")
    for command in ("validate", "up"):
        args = (command, str(cluster_yaml)) + (("--yes",) if command == "up" else ())
        result = corral(*args)
        assert result.returncode == 2, (command, result.stdout, result.stderr)
        assert (f"{cluster_yaml}:7: auth.ssh_private_key: no such file: {missing}"
                in result.stderr), result.stderr
        assert "Traceback" not in result.stderr
