"""Reading the user's ssh_config into a ConnectionSpec (launcher.ssh.user_config) and what a
key file says about itself (launcher.ssh.keyfile). No network: the specs are checked,
the connections are made in tests/integration/test_ssh_user_config.py."""
from __future__ import annotations

import base64
import subprocess

import pytest

from launcher.ssh import user_config as ssh_config
from launcher.errors import SSHConfigError
from launcher.ssh.keyfile import read_key_facts


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A HOME of our own (ssh's default key paths and ~ live there) and no ssh-agent."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    (tmp_path / "home" / ".ssh").mkdir(parents=True)
    return tmp_path / "home"


def use_config(monkeypatch, path, text: str) -> None:
    path.write_text(text)
    monkeypatch.setenv(ssh_config.CONFIG_ENV, str(path))


def resolve(name, **kwargs):
    return ssh_config.resolve(name, known_hosts_path="/kh", **kwargs)


def test_alias_gives_hostname_user_port_and_identity_files_with_tokens(home, monkeypatch):
    use_config(monkeypatch, home / "cfg", "Host rack1\n  HostName 10.9.0.1\n  User ops\n"
               "  Port 2200\n  IdentityFile ~/.ssh/%h.key\n  IdentityFile %d/second\n"
               "  IdentitiesOnly yes\n  HostKeyAlias rack1-key\n"
               "Host *\n  IdentityFile ~/.ssh/everywhere\n  User fallback\n")
    spec = resolve("rack1")
    assert (spec.host, spec.user, spec.port) == ("10.9.0.1", "ops", 2200)
    assert spec.identity_files == (f"{home}/.ssh/10.9.0.1.key", f"{home}/second",
                                   f"{home}/.ssh/everywhere")
    assert spec.identities_only and spec.host_key_alias == "rack1-key"
    assert spec.private_key_path is None and spec.jump is None and spec.name == "rack1"
    other = resolve("10.9.0.7")  # only `Host *` applies
    assert (other.host, other.user, other.port) == ("10.9.0.7", "fallback", 22)


def test_what_the_yaml_says_wins_over_ssh_config(home, monkeypatch):
    use_config(monkeypatch, home / "cfg", "Host rack1\n  HostName 10.9.0.1\n  User ops\n"
               "  Port 2200\n  ProxyJump bastion\n")
    spec = resolve("rack1", user="root", port=22, private_key_path="~/k",
                   proxy_command="nc %h %p", host_key_alias="node-1")
    assert (spec.host, spec.user, spec.port) == ("10.9.0.1", "root", 22)
    assert spec.private_key_path == f"{home}/k"
    assert spec.proxy_command == "nc %h %p" and spec.jump is None  # not the ProxyJump
    assert spec.host_key_alias == "node-1"


def test_without_any_key_named_ssh_default_files_are_offered(home, monkeypatch):
    monkeypatch.setenv(ssh_config.CONFIG_ENV, "none")
    spec = resolve("10.0.0.1")
    assert spec.identity_files == tuple(f"{home}/.ssh/{name}"
                                        for name in ("id_rsa", "id_ecdsa", "id_ed25519"))
    assert resolve("10.0.0.1", private_key_path="/k").identity_files == ()


def test_proxyjump_chain_each_hop_looked_up(home, monkeypatch):
    use_config(monkeypatch, home / "cfg",
               "Host target\n  HostName 10.0.2.9\n  ProxyJump ops@gw1:2201,gw2\n"
               "Host gw1\n  HostName 10.0.0.1\n  ProxyJump outer\n  IdentityFile ~/gw1\n"
               "Host gw2\n  HostName 10.0.1.1\n  User hop2\n  ProxyJump ignored\n"
               "Host outer\n  HostName 192.0.2.1\n")
    spec = resolve("target", private_key_path="/named")
    gw2, gw1, outer = spec.jump, spec.jump.jump, spec.jump.jump.jump
    assert [hop.host for hop in spec.chain()] == ["10.0.2.9", "10.0.1.1", "10.0.0.1",
                                                 "192.0.2.1"]
    assert (gw2.user, gw2.port) == ("hop2", 22)
    assert (gw1.user, gw1.port, gw1.identity_files) == ("ops", 2201, (f"{home}/gw1",))
    assert outer.jump is None  # the first hop's own ProxyJump was followed; gw2's was not
    assert all(hop.private_key_path == "/named" for hop in spec.chain())
    assert gw1.name == "jump host gw1" and "jump host gw1 (ops@10.0.0.1:2201)" == gw1.label
    # Everything that decides a connection is in the pool key, the jump chain included.
    assert spec != resolve("target", private_key_path="/other")
    assert hash(spec) == hash(resolve("target", private_key_path="/named"))


def test_proxyjump_loop_is_an_error_not_a_hang(home, monkeypatch):
    use_config(monkeypatch, home / "cfg", "Host a\n  ProxyJump b\nHost b\n  ProxyJump a\n")
    with pytest.raises(SSHConfigError, match="ProxyJump chain longer than"):
        resolve("a")


def test_include_follows_globs_and_keeps_the_enclosing_block(home, monkeypatch):
    (home / ".ssh" / "conf.d").mkdir()
    (home / ".ssh" / "conf.d" / "a.conf").write_text("Host inc\n  HostName 10.5.0.1\n")
    (home / ".ssh" / "conf.d" / "b.conf").write_text("Port 2022\n")
    use_config(monkeypatch, home / "cfg",
               "Host rack\n  Include conf.d/*.conf\n  User after-include\n"
               "Host *\n  User everyone\n")
    inc, rack = resolve("inc"), resolve("rack")
    assert (inc.host, inc.port) == ("10.5.0.1", 22)
    assert inc.user == "everyone"  # `User after-include` stays in rack's block
    # Each included file starts in the including block (b.conf's Port is rack's).
    assert (rack.user, rack.port) == ("after-include", 2022)


def test_proxycommand_and_agent_settings(home, monkeypatch):
    use_config(monkeypatch, home / "cfg",
               "Host p\n  HostName 10.0.0.3\n  User u\n  ProxyCommand nc -X 5 %h %p # %r\n"
               "  IdentityAgent ~/agent.sock\nHost q\n  IdentityAgent none\n")
    monkeypatch.setenv("SSH_AUTH_SOCK", "/run/agent")
    spec = resolve("p")
    assert spec.proxy_command == "nc -X 5 10.0.0.3 22 # u" and spec.jump is None
    assert spec.agent_socket == f"{home}/agent.sock"
    assert resolve("q").agent_socket is None
    assert resolve("other").agent_socket == "/run/agent"


@pytest.mark.parametrize("hop,expected", [
    ("gw", (None, "gw", None)), ("me@gw:2022", ("me", "gw", 2022)),
    ("ssh://me@gw:22/", ("me", "gw", 22)), ("[fd00::1]:2200", (None, "fd00::1", 2200)),
    ("u@h@ost", ("u@h", "ost", None))])
def test_jump_hop_syntax(hop, expected):
    assert ssh_config.parse_jump(hop) == expected


def test_bad_port_and_unparsable_config_are_ssh_config_errors(home, monkeypatch):
    use_config(monkeypatch, home / "cfg", "Host x\n  Port twenty\n")
    with pytest.raises(SSHConfigError, match="bad port 'twenty'"):
        resolve("x")
    use_config(monkeypatch, home / "cfg", "Host\n")
    with pytest.raises(SSHConfigError) as raised:
        resolve("x")
    assert raised.value.exit_code == 2 and str(home / "cfg") in str(raised.value)


def _keygen(path, passphrase: str = "", key_type: str = "ed25519", *extra: str):
    try:
        subprocess.run(["ssh-keygen", "-q", "-t", key_type, "-N", passphrase, *extra,
                        "-f", str(path)], check=True, capture_output=True)
    except FileNotFoundError:
        pytest.skip("ssh-keygen is not installed")


@pytest.mark.parametrize("key_type,extra", [("ed25519", ()), ("rsa", ("-b", "2048", "-m",
                                                                     "PEM"))])
def test_key_facts_without_the_passphrase(tmp_path, key_type, extra):
    plain, locked = tmp_path / "plain", tmp_path / "locked"
    _keygen(plain, "", key_type, *extra)
    _keygen(locked, "secret words", key_type, *extra)
    for path, encrypted in ((plain, False), (locked, True)):
        public = base64.b64decode((tmp_path / f"{path.name}.pub").read_text().split()[1])
        facts = read_key_facts(str(path))
        assert facts.encrypted is encrypted and facts.public_blob == public
        (tmp_path / f"{path.name}.pub").unlink()
        # OpenSSH's format carries the public key in its clear header; PEM does not.
        assert read_key_facts(str(path)).public_blob == (public if key_type == "ed25519"
                                                          else None)
    (tmp_path / "not-a-key").write_text("hello\n")
    with pytest.raises(ValueError):
        read_key_facts(str(tmp_path / "not-a-key"))


def test_an_edited_config_or_a_new_included_file_is_read_again(home, monkeypatch):
    (home / ".ssh" / "conf.d").mkdir()
    config = home / "cfg"
    use_config(monkeypatch, config, "Include conf.d/*\nHost a\n  HostName 10.0.0.1\n")
    assert resolve("a").host == "10.0.0.1" and resolve("b").host == "b"
    config.write_text("Include conf.d/*\nHost a\n  HostName 10.0.0.2\n  Port 2200\n")
    assert (resolve("a").host, resolve("a").port) == ("10.0.0.2", 2200)
    (home / ".ssh" / "conf.d" / "b").write_text("Host b\n  HostName 10.0.0.3\n")
    assert resolve("b").host == "10.0.0.3"
