"""The user's own SSH set-up, read as ssh(1) reads it, turned into the ConnectionSpec
of a host: ~/.ssh/config and then /etc/ssh/ssh_config, through paramiko.SSHConfig, looked
up by the name the user wrote (head_ip / worker_ips may be Host aliases).

Precedence, setting by setting: what the cluster YAML (the caller) says explicitly, then
ssh_config, then ssh's defaults.

    address   HostName, else the name itself
    user      auth.ssh_user > User > the local login name
    port      the caller's port > Port > 22
    way in    auth.ssh_proxy_command > ProxyCommand > ProxyJump (one hop or a chain
              `a,b`; each hop is looked up in ssh_config too — user, port, keys, and for
              the first hop its own ProxyJump — and its host key pinned like any host)
    keys      auth.ssh_private_key, IdentityFile (~ and %-tokens expanded), ssh-agent
              ($SSH_AUTH_SOCK or IdentityAgent); the order is launcher.ssh.auth's
    host key  pinned under the caller's alias > HostKeyAlias > HostName (`[host]:port`)

CORRAL_SSH_CONFIG=<file> reads that file alone (like `ssh -F`); `none` reads no file.
Include is followed (globs; relative paths are under ~/.ssh, or /etc/ssh in the system
file). Limits (paramiko's): %-tokens in IdentityFile and ProxyCommand use ssh_config's own
User and Port, not the YAML's; `Match exec` needs the `invoke` package; when a host has
both ProxyCommand and ProxyJump, ProxyCommand is used.
"""
from __future__ import annotations

import getpass
import glob
import os
import re
import shlex
import threading

import paramiko
from paramiko.ssh_exception import ConfigParseError

from launcher.errors import SSHConfigError
from launcher.ssh.pool import ConnectionSpec

CONFIG_ENV = "CORRAL_SSH_CONFIG"
USER_CONFIG = "~/.ssh/config"
SYSTEM_CONFIG = "/etc/ssh/ssh_config"
DEFAULT_IDENTITY_FILES = ("~/.ssh/id_rsa", "~/.ssh/id_ecdsa", "~/.ssh/id_ed25519")
MAX_JUMP_DEPTH = 8  # ProxyJump hops (and jumps of jumps) before we call it a loop
MAX_INCLUDE_DEPTH = 16  # as OpenSSH's READCONF_MAX_DEPTH
_SETTING = re.compile(r"^\s*(\w+)(?:\s*=\s*|\s+)(.+?)\s*$")


def config_files() -> list[tuple[str, bool]]:
    """The ssh_config files to read, first wins: [(path, is the system file)]."""
    chosen = os.environ.get(CONFIG_ENV)
    if chosen is not None:
        return [] if chosen.strip().lower() in ("", "none") else \
            [(os.path.expanduser(chosen), False)]
    return [(os.path.expanduser(USER_CONFIG), False), (SYSTEM_CONFIG, True)]


class _Loaded:
    """One parse of the ssh_config files, with the lookups made in it. paramiko takes
    ~0.1 ms per Host block and lookup, so with a few hundred hosts configured, parsing
    for every runner would cost more than connecting."""

    def __init__(self, config: paramiko.SSHConfig, where: str, context: tuple,
                 watched: list[str]):
        self.config = config
        self.where = where
        self.context = context  # the files asked for, HOME and user: tokens depend on them
        self.watched = tuple(watched)
        self.signature = _signature(self.watched)
        self.lookups: dict[str, paramiko.SSHConfigDict] = {}

    def current(self, context: tuple) -> bool:
        return context == self.context and _signature(self.watched) == self.signature

    def lookup(self, name: str) -> paramiko.SSHConfigDict:
        """ssh_config's settings for `name` (a copy: callers may change it)."""
        with _loaded_lock:
            found = self.lookups.get(name)
        if found is None:
            found = _lookup(self.config, self.where, name)
            with _loaded_lock:
                self.lookups[name] = found
        copy = paramiko.SSHConfigDict()
        copy.update({key: list(value) if isinstance(value, list) else value
                     for key, value in found.items()})
        return copy


_loaded_lock = threading.Lock()
_loaded: list[_Loaded] = []  # the last parse, kept while its files are unchanged


def load() -> _Loaded:
    """The parsed ssh_config (the last parse while none of the files it read, nor the
    directories its Includes looked in, changed: the user may edit it between runs)."""
    files = config_files()
    context = (tuple(files), os.path.expanduser("~"), getpass.getuser())
    with _loaded_lock:
        last = _loaded[0] if _loaded else None
    if last is not None and last.current(context):
        return last
    present = [(path, system) for path, system in files if os.path.isfile(path)]
    where = " + ".join(path for path, _ in present) or "no ssh_config"
    lines: list[str] = []
    watched = [path for path, _ in files]
    for path, system in present:
        lines += _lines_with_includes(path, system, 0, watched)
    try:
        config = paramiko.SSHConfig.from_text("\n".join(lines))
    except ConfigParseError as error:
        raise SSHConfigError(where, str(error)) from None
    loaded = _Loaded(config, where, context, watched)
    with _loaded_lock:
        _loaded[:] = [loaded]
    return loaded


def _signature(watched: tuple) -> tuple:
    """What the files and directories read say of themselves (None for a missing one)."""
    signature = []
    for path in watched:
        try:
            stat = os.stat(path)
            signature.append((stat.st_mtime_ns, stat.st_size, stat.st_ino))
        except OSError:
            signature.append(None)
    return tuple(signature)


def _lines_with_includes(path: str, system: bool, depth: int, watched: list[str],
                         block: str = "Host *") -> list[str]:
    """The file's lines with each Include replaced by the files it names. As in OpenSSH,
    an included file starts in the block (Host/Match line) in force at its Include and
    cannot end it: after each included file that line is repeated, so what follows stays
    in its own block."""
    if depth > MAX_INCLUDE_DEPTH:
        raise SSHConfigError(path, f"Include nested deeper than {MAX_INCLUDE_DEPTH} "
                                   f"(an Include loop?)")
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            text = handle.read()
    except OSError as error:
        raise SSHConfigError(path, f"cannot read: {error}") from None
    lines: list[str] = []
    for line in text.splitlines():
        match = _SETTING.match(line)
        keyword = match.group(1).lower() if match else ""
        if keyword in ("host", "match"):
            block = line.strip()
        if keyword != "include":
            lines.append(line)
            continue
        base = "/etc/ssh" if system else os.path.expanduser("~/.ssh")
        try:
            patterns = shlex.split(match.group(2))
        except ValueError as error:
            raise SSHConfigError(path, f"bad Include line {line.strip()!r}: {error}") from None
        for pattern in patterns:
            pattern = os.path.join(base, os.path.expanduser(pattern))
            watched.append(os.path.dirname(pattern))  # a file added there changes it
            for included in sorted(glob.glob(pattern)):
                if os.path.isfile(included):
                    watched.append(included)
                    lines += _lines_with_includes(included, system, depth + 1, watched,
                                                  block)
                    lines.append(block)
    return lines


def lookup(name: str) -> paramiko.SSHConfigDict:
    """ssh_config's settings for `name` (lower-case keys, tokens expanded)."""
    return load().lookup(name)


def address_of(name: str) -> str:
    """The address `name` stands for (its HostName), e.g. for a node's internal IP."""
    return lookup(name).get("hostname") or name


def resolve(name: str, *, known_hosts_path: str, user: str | None = None,
            port: int | None = None, private_key_path: str | None = None,
            proxy_command: str | None = None,
            host_key_alias: str | None = None) -> ConnectionSpec:
    """The ConnectionSpec for the host the user called `name` (an address or a Host
    alias); the keyword arguments are what the cluster YAML says (None: not said)."""
    return _Resolver(load(), known_hosts_path, private_key_path).spec(
        name, user=user, port=port, proxy_command=proxy_command,
        host_key_alias=host_key_alias, via=None, depth=0)


class _Resolver:
    def __init__(self, loaded: _Loaded, known_hosts_path: str,
                 private_key_path: str | None):
        self.loaded = loaded
        self.where = loaded.where
        self.known_hosts_path = known_hosts_path
        self.private_key_path = os.path.expanduser(private_key_path) \
            if private_key_path else None

    def spec(self, name: str, *, user: str | None, port: int | None,
             proxy_command: str | None, host_key_alias: str | None,
             via: ConnectionSpec | None, depth: int, label: str | None = None
             ) -> ConnectionSpec:
        """One hop. `via`: the hop before it (a later hop of a ProxyJump list), whose
        choice of route wins over this host's own ProxyCommand/ProxyJump."""
        options = self.loaded.lookup(name)
        identity_files = tuple(os.path.expanduser(path)
                               for path in options.get("identityfile", ()))
        if not identity_files and not self.private_key_path:
            identity_files = tuple(os.path.expanduser(path)
                                   for path in DEFAULT_IDENTITY_FILES)
        jump, proxy = via, None
        if via is None:
            proxy = proxy_command or options.get("proxycommand")
            hops = options.get("proxyjump")
            if not proxy and hops and hops.strip().lower() != "none":
                jump = self.jumps(hops, depth + 1)
        return ConnectionSpec(
            host=options.get("hostname") or name,
            user=user or options.get("user") or getpass.getuser(),
            port=port or _port(options.get("port"), self.where, name),
            private_key_path=self.private_key_path,
            known_hosts_path=self.known_hosts_path, proxy_command=proxy,
            host_key_alias=host_key_alias or options.get("hostkeyalias"),
            identity_files=identity_files,
            agent_socket=_agent_socket(options.get("identityagent")),
            identities_only=str(options.get("identitiesonly", "no")).lower() == "yes",
            jump=jump, name=label or name)

    def jumps(self, value: str, depth: int) -> ConnectionSpec:
        """The last hop of a ProxyJump list (`[user@]host[:port],...`), chained back."""
        if depth > MAX_JUMP_DEPTH:
            raise SSHConfigError(self.where, f"ProxyJump chain longer than {MAX_JUMP_DEPTH}"
                                             f" hops (a loop?) at {value!r}")
        spec = None
        for hop in value.split(","):
            user, host, port = parse_jump(hop, self.where)
            spec = self.spec(host, user=user, port=port, proxy_command=None,
                             host_key_alias=None, via=spec, depth=depth,
                             label=f"jump host {host}")
        return spec


def parse_jump(hop: str, where: str = "ProxyJump") -> tuple[str | None, str, int | None]:
    """`[ssh://][user@]host[:port]` (IPv6 in brackets) -> (user, host, port)."""
    text = hop.strip()
    if text.startswith("ssh://"):
        text = text[len("ssh://"):].rstrip("/")
    user, _, host = text.rpartition("@")
    port = None
    if host.startswith("["):
        host, _, rest = host[1:].partition("]")
        if rest.startswith(":"):
            port = _port(rest[1:], where, hop)
    elif host.count(":") == 1:
        host, _, port_text = host.partition(":")
        port = _port(port_text, where, hop)
    if not host:
        raise SSHConfigError(where, f"bad ProxyJump hop {hop!r}")
    return user or None, host, port


def _lookup(config: paramiko.SSHConfig, where: str, name: str) -> paramiko.SSHConfigDict:
    try:
        return config.lookup(name)
    except (ConfigParseError, ImportError, OSError, ValueError) as error:
        raise SSHConfigError(where, f"looking up {name!r}: {error}") from None


def _port(value, where: str, name: str) -> int:
    if value is None or value == "":
        return 22
    try:
        port = int(value)
    except (TypeError, ValueError):
        port = 0
    if not 0 < port < 65536:
        raise SSHConfigError(where, f"bad port {value!r} for {name!r}")
    return port


def _agent_socket(identity_agent: str | None) -> str | None:
    """Which ssh-agent to ask: IdentityAgent (a path, $VAR, SSH_AUTH_SOCK or none),
    else $SSH_AUTH_SOCK; None for no agent."""
    value = (identity_agent or "SSH_AUTH_SOCK").strip()
    if value.lower() == "none":
        return None
    if value == "SSH_AUTH_SOCK":
        return os.environ.get("SSH_AUTH_SOCK") or None
    if value.startswith("$"):
        return os.environ.get(value[1:].strip("{}")) or None
    return os.path.expanduser(value)
