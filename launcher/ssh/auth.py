"""Which keys log in to a host, in which order, and what to tell the user when none can.

The keys offered for a ConnectionSpec, in this order (OpenSSH's, with the cluster YAML's
key first):

  1. auth.ssh_private_key, the key the user named, from its file; when the file is
     passphrase-protected, the copy ssh-agent holds. Missing, unreadable, or protected and
     not in the agent: SSHKeyError at once, naming the file and the fix (`ssh-add KEY`).
     A key the user named and we cannot use is a set-up mistake, not something to retry.
  2. The host's IdentityFile entries from ~/.ssh/config, in their order (ssh's defaults
     ~/.ssh/id_rsa, id_ecdsa, id_ed25519 when neither 1 nor the config names a key).
     A protected one is used through the agent when it holds it; otherwise it is skipped,
     and named in the error should nothing else work. A missing file is skipped, as ssh
     does.
  3. Every other key ssh-agent holds ($SSH_AUTH_SOCK, or IdentityAgent), unless the
     config says IdentitiesOnly yes.

Named and host-specific keys go before the rest of the agent's, so that an agent holding
many keys does not use up sshd's MaxAuthTries (6 by default) before the right key is
offered. A key is offered once, however many ways it was found. We never ask for a
passphrase: corral runs unattended (the head, the autoscaler), so ssh-agent is the way
to use a protected key.
"""
from __future__ import annotations

import os
import socket
import threading
from typing import TYPE_CHECKING, Iterator

import paramiko
from paramiko.agent import AgentSSH
from paramiko.auth_strategy import AuthStrategy

from launcher.errors import SSHKeyError
from launcher.ssh.host_keys import fingerprint
from launcher.ssh.keyfile import read_key_facts

if TYPE_CHECKING:
    from launcher.ssh.pool import ConnectionSpec

AGENT_TIMEOUT_S = 10.0


class AuthenticationRefused(paramiko.AuthenticationException):
    """The host refused every key offered. A paramiko error, so that waiting for SSH
    retries it: a new cloud VM refuses keys until its first boot has installed them."""

    def __init__(self, where: str, tried: list[str], skipped: list[str]):
        self.tried = list(tried)
        self.skipped = list(skipped)
        text = f"{where} refused every key offered ({'; '.join(tried)})"
        if skipped:
            text += "; not offered: " + "; ".join(skipped)
        super().__init__(text)


class _Agent(AgentSSH):
    """ssh-agent at a given socket (paramiko.Agent only reads $SSH_AUTH_SOCK). Keys are
    listed on connect; an unreachable agent has none, and `problem` says why."""

    def __init__(self, socket_path: str | None):
        super().__init__()
        self.problem = None
        if not socket_path:
            return
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        conn.settimeout(AGENT_TIMEOUT_S)
        try:
            conn.connect(socket_path)
            self._connect(conn)
        except (OSError, paramiko.SSHException) as error:
            conn.close()
            self._close()
            self.problem = f"ssh-agent at {socket_path} not reachable ({error})"

    def close(self) -> None:
        self._close()


_keys_lock = threading.Lock()
_keys: dict[tuple, paramiko.PKey] = {}


def load_private_key(path: str) -> paramiko.PKey:
    """The key in a file (cached while the file is unchanged). Raises
    paramiko.PasswordRequiredException for a protected key, OSError, or SSHException /
    ValueError for a file that is not a key paramiko knows."""
    stat = os.stat(path)
    cache_key = (path, stat.st_mtime_ns, stat.st_size)
    with _keys_lock:
        key = _keys.get(cache_key)
    if key is None:
        if read_key_facts(path).encrypted:
            raise paramiko.PasswordRequiredException(f"{path} is passphrase-protected")
        try:
            key = paramiko.PKey.from_path(path)
        except TypeError as error:  # paramiko 3+ lets cryptography's "no password" through
            raise paramiko.PasswordRequiredException(str(error)) from error
        with _keys_lock:
            _keys[cache_key] = key
    return key


class KeyStrategy(AuthStrategy):
    """paramiko's auth_strategy hook for SSHClient.connect: offers the spec's keys in the
    order above and turns every failure into a message that says what was tried."""

    def __init__(self, spec: "ConnectionSpec"):
        super().__init__(ssh_config=None)
        self.spec = spec

    def authenticate(self, transport: paramiko.Transport):
        agent = _Agent(self.spec.agent_socket)
        tried: list[str] = []
        skipped: list[str] = []
        try:
            for label, key in self._keys(agent, skipped):
                try:
                    remaining = transport.auth_publickey(self.spec.user, key)
                except paramiko.BadAuthenticationType as error:
                    raise AuthenticationRefused(
                        self.spec.label, [f"keys not accepted at all: the server allows "
                                          f"only {', '.join(error.allowed_types)}"],
                        skipped) from error
                except paramiko.AuthenticationException:
                    tried.append(label)
                    continue
                if remaining:
                    raise AuthenticationRefused(
                        self.spec.label, [f"{label} accepted, but the server also wants "
                                          f"{', '.join(remaining)}"], skipped)
                return remaining
        finally:
            agent.close()
        if not tried:
            raise _nothing_to_offer(self.spec, skipped, agent.problem)
        if agent.problem:
            skipped.append(agent.problem)
        raise AuthenticationRefused(self.spec.label, tried, skipped)

    def _keys(self, agent: _Agent, skipped: list[str]) -> Iterator[tuple[str, paramiko.PKey]]:
        """(label, key) in the order to offer them, each key once."""
        agent_keys = {key.asbytes(): key for key in agent.get_keys()}
        offered: set[bytes] = set()
        listed: set[bytes] = set()  # public keys of the files (for IdentitiesOnly)
        spec = self.spec
        if spec.private_key_path:
            label, key = self._named_key(spec.private_key_path, agent_keys, agent.problem)
            listed.add(key.asbytes())
            offered.add(key.asbytes())
            yield label, key
        for path in spec.identity_files:
            found = self._identity_file(path, agent_keys, skipped)
            if found is None or found[1].asbytes() in offered:
                continue
            listed.add(found[1].asbytes())
            offered.add(found[1].asbytes())
            yield found
        for blob, key in agent_keys.items():
            if blob in offered or (spec.identities_only and blob not in listed):
                continue
            offered.add(blob)
            yield f"ssh-agent key {key.comment or fingerprint(key)}", key

    def _named_key(self, path: str, agent_keys: dict, agent_problem: str | None):
        host = self.spec.label
        if not os.path.exists(path):
            raise SSHKeyError(host, path, "does not exist",
                              "fix auth.ssh_private_key, or remove it to log in with "
                              "ssh-agent and ~/.ssh/config keys")
        try:
            return _file_or_agent_key(path, agent_keys)
        except paramiko.PasswordRequiredException:
            where = (f"; {agent_problem}" if agent_problem else "" if self.spec.agent_socket
                     else "; no ssh-agent is running (SSH_AUTH_SOCK is not set)")
            raise SSHKeyError(host, path, "is passphrase-protected and ssh-agent does not "
                              f"hold it{where}",
                              f"load it into ssh-agent with `ssh-add {path}` (corral never "
                              f"asks for passphrases), or name a key without one") from None
        except (OSError, ValueError, paramiko.SSHException) as error:
            raise SSHKeyError(host, path, f"cannot be read as a private key ({error})",
                              "point auth.ssh_private_key at an OpenSSH or PEM private "
                              "key file") from None

    @staticmethod
    def _identity_file(path: str, agent_keys: dict, skipped: list[str]):
        if not os.path.isfile(path):
            return None  # ssh skips missing IdentityFile entries (and its defaults) too
        try:
            return _file_or_agent_key(path, agent_keys)
        except paramiko.PasswordRequiredException:
            skipped.append(f"{path} is passphrase-protected and not in ssh-agent "
                           f"(run `ssh-add {path}`)")
        except (OSError, ValueError, paramiko.SSHException) as error:
            skipped.append(f"{path} cannot be read as a private key ({error})")
        return None


def _file_or_agent_key(path: str, agent_keys: dict) -> tuple[str, paramiko.PKey]:
    """(how to name it, the key) from the file, or the agent's copy of a key whose file
    needs a passphrase. Raises PasswordRequiredException when the agent has no copy,
    and what load_private_key raises for a file it cannot read."""
    try:
        return f"key {path}", load_private_key(path)
    except paramiko.PasswordRequiredException:
        held = _agent_copy(path, agent_keys)
        if held is None:
            raise
        return f"key {path} (from ssh-agent)", held


def _agent_copy(path: str, agent_keys: dict) -> paramiko.PKey | None:
    """The agent's copy of the key in `path` (found by its public half), if it has one."""
    try:
        blob = read_key_facts(path).public_blob
    except (OSError, ValueError):
        return None
    return agent_keys.get(blob) if blob else None


def _nothing_to_offer(spec: "ConnectionSpec", skipped: list[str],
                      agent_problem: str | None) -> SSHKeyError:
    protected = [note for note in skipped if "passphrase-protected" in note]
    if len(skipped) == 1 and protected:
        path = protected[0].split(" is passphrase-protected")[0]
        return SSHKeyError(spec.label, path, "is passphrase-protected and not in ssh-agent",
                           f"load it into ssh-agent with `ssh-add {path}` (corral never "
                           f"asks for passphrases)")
    why = "; ".join(skipped + ([agent_problem] if agent_problem else []))
    return SSHKeyError(spec.label, None, "no SSH key to offer" + (f" ({why})" if why else ""),
                       "name one in auth.ssh_private_key, load one into ssh-agent "
                       "(`ssh-add KEY`), or give the host an IdentityFile in ~/.ssh/config")
