"""Pooled SSH connections: one paramiko transport per ConnectionSpec (everything that
decides a connection: the resolved host, port and user, the way in — direct, a proxy
command, or a ProxyJump chain — the keys to offer and the known_hosts file), shared by
every runner and thread of this process, with keepalive.

A transport carries many channels at once (sshd's MaxSessions bounds them), so 16 threads
bootstrapping one host, or a runner re-created per command, still cost one TCP connection
and one handshake. A transport found dead is dropped and replaced on the next request.

A ProxyJump hop is itself a pooled connection (its spec is `jump` of the next one): the
next hop's transport runs over a direct-tcpip channel of it, so ten workers behind one
bastion share one connection to the bastion. Holding a spec holds its whole chain.
Which keys are offered, in which order: launcher.ssh.auth. Specs are made from the
cluster YAML and ~/.ssh/config by launcher.ssh.user_config.resolve.
"""
from __future__ import annotations

import atexit
import dataclasses
import os
import socket
import threading

import paramiko
from paramiko.common import (MSG_CHANNEL_DATA, MSG_CHANNEL_EOF, MSG_CHANNEL_EXTENDED_DATA,
                             MSG_CHANNEL_REQUEST, MSG_CHANNEL_SUCCESS,
                             MSG_CHANNEL_WINDOW_ADJUST, MSG_GLOBAL_REQUEST, cMSG_IGNORE)

from launcher.ssh.host_keys import HostKeyStore, PinningPolicy
from launcher.ssh.auth import KeyStrategy

KEEPALIVE_INTERVAL_S = 15
# Channels open at once on one connection. OpenSSH's sshd allows MaxSessions (default 10)
# and, past it, refusing a new session can take running sessions down with it (seen with
# OpenSSH 9.2), so we never ask for more: extra commands wait for a free slot.
MAX_SESSIONS_PER_CONNECTION = 8


@dataclasses.dataclass(frozen=True)
class ConnectionSpec:
    """One connection, fully resolved. Every field but `name` is part of the pool key."""
    host: str  # the address connected to (ssh_config's HostName of what the user wrote)
    user: str
    port: int
    private_key_path: str | None  # the key the cluster YAML names (offered first)
    known_hosts_path: str
    proxy_command: str | None = None
    host_key_alias: str | None = None  # pin the host key under this name, not `host`
    identity_files: tuple[str, ...] = ()  # ssh_config IdentityFile (or ssh's defaults)
    agent_socket: str | None = None  # the ssh-agent to ask for keys (None: no agent)
    identities_only: bool = False  # ssh_config IdentitiesOnly: agent keys only if listed
    jump: "ConnectionSpec | None" = None  # the previous ProxyJump hop, reached first
    name: str = dataclasses.field(default="", compare=False)  # as written, for messages

    @property
    def label(self) -> str:
        """How messages name this connection: the name written, and where it leads."""
        where = f"{self.user}@{self.host}" + (f":{self.port}" if self.port != 22 else "")
        return where if not self.name or self.name == self.host else f"{self.name} ({where})"

    def chain(self) -> list["ConnectionSpec"]:
        """This spec, then its jump hops back to the first one."""
        specs, spec = [], self
        while spec is not None:
            specs.append(spec)
            spec = spec.jump
        return specs

    def proxy_argv(self) -> str | None:
        """The proxy command with %h (host), %p (port), %r (user) and %% filled in."""
        if not self.proxy_command:
            return None
        out, text, index = [], self.proxy_command, 0
        while index < len(text):
            char = text[index]
            if char == "%" and index + 1 < len(text):
                out.append({"h": self.host, "p": str(self.port), "r": self.user,
                            "%": "%"}.get(text[index + 1], text[index:index + 2]))
                index += 2
            else:
                out.append(char)
                index += 1
        return "".join(out)


class _AckingTransport(paramiko.Transport):
    """Right after authentication OpenSSH's sshd sends a global request that wants no
    reply (hostkeys-00@openssh.com). sshd does not set TCP_NODELAY on non-interactive
    sessions, so its answer to our first channel open then waits (Nagle) for our ACK of
    that request, which the kernel delays by ~40 ms. Answering the first global request
    with an SSH_MSG_IGNORE carries the ACK at once. (paramiko keeps its handler table per
    instance for this kind of adjustment.)"""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        original = self._handler_table[MSG_GLOBAL_REQUEST]

        def first_global_request(message):
            original(message)
            self._handler_table[MSG_GLOBAL_REQUEST] = original
            ignore = paramiko.Message()
            ignore.add_byte(cMSG_IGNORE)
            ignore.add_string(b"")
            self._send_message(ignore)

        self._handler_table[MSG_GLOBAL_REQUEST] = first_global_request

    # paramiko ignores "exit-signal" (a command killed by a signal has no exit status):
    # record the signal's name on the channel (`exit_signal`, e.g. "TERM") and wake the
    # waiters; every other request goes to paramiko's own handler.
    _channel_handler_table = {**paramiko.Transport._channel_handler_table,
                              MSG_CHANNEL_REQUEST: lambda chan, message:
                              _channel_request(chan, message)}


def _ignore_message() -> paramiko.Message:
    ignore = paramiko.Message()
    ignore.add_byte(cMSG_IGNORE)
    ignore.add_string(b"")
    return ignore


def _answering(handler):
    """A channel packet handler that also sends an SSH_MSG_IGNORE back (see below)."""
    def handle(channel: paramiko.Channel, message: paramiko.Message) -> None:
        handler(channel, message)
        transport = channel.transport
        if transport is not None and transport.is_active():
            transport._send_message(_ignore_message())
    return handle


class _RelayedTransport(_AckingTransport):
    """A transport through a jump host's direct-tcpip channel. The jump host's sshd
    writes to the target only what we send, so its kernel ACKs the target's packets
    ~40 ms late (delayed ACK); meanwhile the target's sshd, Nagle on, holds its next small
    packet (the exit status after an exec's success, the rest of a command's output).
    Every command then took 44 ms instead of 2. Answering each channel packet with an
    SSH_MSG_IGNORE gives the jump host something to write, which carries the ACK at
    once; a few dozen bytes per packet received."""

    _channel_handler_table = {
        **_AckingTransport._channel_handler_table,
        **{kind: _answering(handler) for kind, handler in
           _AckingTransport._channel_handler_table.items()
           if kind in (MSG_CHANNEL_SUCCESS, MSG_CHANNEL_DATA, MSG_CHANNEL_EXTENDED_DATA,
                       MSG_CHANNEL_REQUEST, MSG_CHANNEL_EOF, MSG_CHANNEL_WINDOW_ADJUST)}}


def _channel_request(channel: paramiko.Channel, message: paramiko.Message) -> None:
    position = message.packet.tell()
    if message.get_text() == "exit-signal":
        message.get_boolean()  # want reply: never for exit-signal
        channel.exit_signal = message.get_text()
        channel.status_event.set()
        return
    message.packet.seek(position)
    paramiko.Channel._handle_request(channel, message)


def open_client(spec: ConnectionSpec, timeout_s: float,
                via: paramiko.Transport | None = None) -> paramiko.SSHClient:
    """A new authenticated client (host key checked or pinned), reached directly, through
    the proxy command, or — `via`, the previous hop's transport — over a direct-tcpip
    channel. Raises paramiko/socket errors as they are (retryable), HostKeyMismatchError
    for a changed key and SSHKeyError when no key can be offered (not retryable)."""
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(PinningPolicy(HostKeyStore(spec.known_hosts_path),
                                                     alias=spec.host_key_alias))
    proxy_cmd = spec.proxy_argv()
    if via is not None:
        try:
            sock = via.open_channel("direct-tcpip", (spec.host, spec.port), ("127.0.0.1", 0),
                                    timeout=timeout_s)
        except paramiko.ChannelException as error:
            raise paramiko.SSHException(
                f"jump host {spec.jump.label if spec.jump else '?'} could not connect to "
                f"{spec.host}:{spec.port}: {error.text or error}") from error
    elif proxy_cmd:
        sock = paramiko.ProxyCommand(proxy_cmd)
    else:
        sock = socket.create_connection((spec.host, spec.port), timeout=timeout_s)
        # Small request/reply messages (handshake, open channel, exec): without this, Nagle
        # plus the server's delayed ACK add ~40 ms to every command.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        client.connect(spec.host, port=spec.port, username=spec.user, sock=sock,
                       timeout=timeout_s, banner_timeout=timeout_s, auth_timeout=timeout_s,
                       transport_factory=_AckingTransport if via is None
                       else _RelayedTransport,
                       auth_strategy=KeyStrategy(spec))
    except BaseException:
        client.close()
        sock.close()
        raise
    client.get_transport().set_keepalive(KEEPALIVE_INTERVAL_S)
    return client


class ConnectionPool:
    def __init__(self):
        self._lock = threading.Lock()
        self._clients: dict[ConnectionSpec, paramiko.SSHClient] = {}
        self._connect_locks: dict[ConnectionSpec, threading.Lock] = {}
        self._holders: dict[ConnectionSpec, int] = {}
        self._session_slots: dict[ConnectionSpec, threading.BoundedSemaphore] = {}

    def session_slot(self, spec: ConnectionSpec) -> threading.BoundedSemaphore:
        """Hold this (`with`) while a channel to `spec` is open."""
        with self._lock:
            return self._session_slots.setdefault(
                spec, threading.BoundedSemaphore(MAX_SESSIONS_PER_CONNECTION))

    def hold(self, spec: ConnectionSpec) -> None:
        """A runner for `spec` exists; its connection (and those of its jump hops) stays
        until every holder releases."""
        with self._lock:
            for hop in spec.chain():
                self._holders[hop] = self._holders.get(hop, 0) + 1

    def release(self, spec: ConnectionSpec) -> None:
        """A runner is done. The last holder's release closes the connection; commands of
        other runners on the same host are never cut by one runner's close()."""
        unheld = []
        with self._lock:
            for hop in spec.chain():  # the target first, then the hops it went through
                left = self._holders.get(hop, 0) - 1
                if left > 0:
                    self._holders[hop] = left
                else:
                    self._holders.pop(hop, None)
                    unheld.append(hop)
        for hop in unheld:
            self.discard(hop)

    def _alive(self, spec: ConnectionSpec) -> paramiko.SSHClient | None:
        client = self._clients.get(spec)
        transport = client.get_transport() if client is not None else None
        if transport is not None and transport.is_active():
            return client
        return None

    def client(self, spec: ConnectionSpec, timeout_s: float) -> paramiko.SSHClient:
        """The pooled live client for `spec`, connecting if there is none."""
        with self._lock:
            alive = self._alive(spec)
            if alive is not None:
                return alive
            connect_lock = self._connect_locks.setdefault(spec, threading.Lock())
        with connect_lock:  # one handshake per spec, even when 16 threads ask at once
            with self._lock:
                alive = self._alive(spec)
                if alive is not None:
                    return alive
                stale = self._clients.pop(spec, None)
            if stale is not None:
                stale.close()
            via = self.client(spec.jump, timeout_s).get_transport() if spec.jump else None
            client = open_client(spec, timeout_s, via)
            with self._lock:
                self._clients[spec] = client
            return client

    def discard(self, spec: ConnectionSpec, client: paramiko.SSHClient | None = None) -> None:
        """Forget (and close) the pooled client, e.g. after opening a channel failed."""
        with self._lock:
            current = self._clients.get(spec)
            if client is None or current is client:
                self._clients.pop(spec, None)
            else:
                current = None
        if current is not None:
            current.close()

    def forget_all_after_fork(self) -> None:
        """In a forked child: the parent's transports (and their threads) are not ours;
        drop them without closing (closing would talk over the parent's sockets)."""
        self._lock = threading.Lock()
        self._clients = {}
        self._connect_locks = {}
        self._holders = {}
        self._session_slots = {}

    def close_all(self) -> None:
        with self._lock:
            # Connections through jump hosts first, then the hops (the longest chain first).
            specs = sorted(self._clients, key=lambda spec: -len(spec.chain()))
            clients = [self._clients[spec] for spec in specs]
            self._clients.clear()
        for client in clients:
            client.close()

    def __len__(self) -> int:
        with self._lock:
            return sum(1 for spec in self._clients if self._alive(spec) is not None)


POOL = ConnectionPool()
atexit.register(POOL.close_all)  # end proxy-command processes and sessions cleanly
os.register_at_fork(after_in_child=POOL.forget_all_after_fork)


def close_all() -> None:
    """Close every pooled connection of this process (tests call it between tests)."""
    POOL.close_all()
