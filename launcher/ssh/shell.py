"""One command session per SSH connection: the user's shell starts once per node, not
once per command.

sshd runs every command as `$SHELL -c CMD`, and bash sources ~/.bashrc for sshd sessions;
on a host whose rc runs `pyenv init` or `conda init` (0.3-0.4 s) every command, tag write
and bootstrap stage paid that again. Instead, the first command on a connection opens one
channel whose shell (after its rc ran) execs a small stdlib-only Python server
(launcher/ssh/shell_server.py, sent over the channel: nothing is installed on the node),
which then runs every command of this process on that node as `bash -c CMD`, several at
once, multiplexed over the channel's stdin/stdout. What the rc set up (PATH, conda, pyenv;
its bash functions are exported before the exec) is in the server's environment, so every
command still sees it, and the rc runs once. When the rc files change (a setup command
edited ~/.bashrc) the server refuses new commands and a fresh one starts, so later
commands see the change as a new SSH command would.

A node without python3 (or whose shell will not start the server) is remembered per
connection, and its commands take the per-command channel path (SSHRunner._run_on_channel);
CORRAL_SSH_COMMAND_SESSION=0 in the environment sends every command that way.

A session's channel holds one of the connection's session slots (launcher.ssh.pool) for
its lifetime. It ends with its connection (runner.close of the last holder, close_all);
the server then sees EOF, stops the commands still running and exits.

A command whose session broke is started again on a new session only when it provably
never started: its request could not be sent, or the server refused it. Once sent it may
have run: it ends with exit code 255 (connection lost), like ssh(1).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import queue
import secrets
import select
import shlex
import struct
import threading
import time
import weakref
from pathlib import Path

import paramiko

from launcher.ssh import pool as ssh_pool
from launcher.ssh import shell_server as wire
from launcher.errors import ClusterError

log = logging.getLogger(__name__)

DISABLE_VARIABLE = "CORRAL_SSH_COMMAND_SESSION"  # "0": one SSH channel per command

SESSION_START_TIMEOUT_S = 60.0  # the user's rc plus the server's start-up
MAX_START_ATTEMPTS = 3  # sessions tried for one command before the per-command path
STDERR_TAIL_BYTES = 4096
EXIT_STATUS_WAIT_S = 1.0  # after the session's channel ends, for its exit status
# The node's own interpreter first (a pyenv shim or conda python on PATH may be slow or
# broken), then whatever python3 the user's PATH has.
NODE_PYTHONS = ("/usr/bin/python3", "/usr/local/bin/python3")
# Reads the server's source from stdin and runs it (nothing else is sent before the
# server's hello, so the buffered read takes exactly the source).
_BOOTSTRAP = "import sys;exec(sys.stdin.buffer.read({size}))"


class ShellStartError(ClusterError):
    """The node's shell did not start the command server (no python3, an rc that
    exits, ...). Its commands then go one SSH channel each."""

    def __init__(self, host: str, reason: str):
        self.host = host
        self.reason = reason
        super().__init__(f"{host}: the command session did not start: {reason}")


class SessionGone(ClusterError):
    """A request could not be sent: the session had ended, so the command never started
    (execute sends it to a new session; it never leaves this module)."""

    def __init__(self, host: str):
        self.host = host
        super().__init__(f"{host}: the command session had ended")


_SERVER_SOURCE: list[bytes] = []


def server_source() -> bytes:
    if not _SERVER_SOURCE:
        _SERVER_SOURCE.append(Path(wire.__file__).read_bytes())
    return _SERVER_SOURCE[0]


def startup_line(nonce: str, source_bytes: int) -> str:
    """The command sshd hands to the user's shell: export the rc's bash functions (bash
    only), pick a python3, exec the bootstrap. POSIX shell syntax."""
    functions = ('[ -z "$BASH_VERSION" ] || eval \'__corral_f=$(compgen -A function); '
                 '[ -z "$__corral_f" ] || export -f $__corral_f; unset __corral_f\'; ')
    python = ("__corral_py=python3; for __corral_p in " + " ".join(NODE_PYTHONS)
              + '; do [ -x "$__corral_p" ] && __corral_py=$__corral_p && break; done; ')
    bootstrap = _BOOTSTRAP.format(size=source_bytes)
    # -I -S: the user's PYTHONPATH, PYTHONSTARTUP or site-packages cannot shadow the
    # standard library the server uses (and it starts faster)
    return (functions + python + f'exec "$__corral_py" -I -S -c {shlex.quote(bootstrap)} '
            f"corral-shell {nonce}")


@dataclasses.dataclass
class Request:
    """One command sent to a session; its events arrive on `events` as (kind, value):
    ("started", pid), ("stdout", bytes), ("stderr", bytes), ("exit", info dict),
    ("refused", reason): never started, ("lost", text): the session ended."""
    id: int
    events: queue.SimpleQueue = dataclasses.field(default_factory=queue.SimpleQueue)


class ShellSession:
    def __init__(self, host: str, spec, client: paramiko.SSHClient,
                 channel: paramiko.Channel, slot: threading.BoundedSemaphore):
        self.host = host
        self.spec = spec
        self._client = client
        self._transport = channel.get_transport()
        self.channel = channel
        self._slot = slot
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._requests: dict[int, Request] = {}
        self._next_id = 0
        self._frames = wire.FrameReader()
        self._stderr_tail = b""
        self.dead = False
        self.retiring = False
        self.server_pid: int | None = None

    # -- start ---------------------------------------------------------------------------
    @classmethod
    def start(cls, runner, client: paramiko.SSHClient) -> "ShellSession":
        """A running session on `client`'s connection. Raises ShellStartError when the
        node will not run the server, SSHUnreachableError when no channel opens."""
        slot = ssh_pool.POOL.session_slot(runner.spec)
        slot.acquire()
        try:
            channel = runner._open_channel()
        except BaseException:
            slot.release()
            raise
        session = cls(runner.host, runner.spec, client, channel, slot)
        try:
            session._handshake()
        except (OSError, EOFError, paramiko.SSHException) as error:
            session.close()
            raise ShellStartError(runner.host, str(error) or type(error).__name__) from error
        except BaseException:
            session.close()
            raise
        threading.Thread(target=session._read_loop, name=f"ssh-shell-{runner.host}",
                         daemon=True).start()
        return session

    def _handshake(self) -> None:
        nonce = secrets.token_hex(8)
        source = server_source()
        self.channel.exec_command(startup_line(nonce, len(source)))
        self.channel.sendall(source)
        marker = f"@@corral-shell {nonce}@@\n".encode()
        seen, deadline = b"", time.monotonic() + SESSION_START_TIMEOUT_S
        while True:
            self._read_stderr()
            if self.channel.recv_ready():
                data = self.channel.recv(65536)
                if seen is not None:  # before the marker: what the rc printed, skipped
                    seen += data
                    index = seen.find(marker)
                    if index < 0:
                        seen = seen[-len(marker):]
                        continue
                    data, seen = seen[index + len(marker):], None
                for kind, _, payload in self._frames.feed(data):
                    if kind == wire.HELLO:
                        self.server_pid = json.loads(payload)["pid"]
                        return
                continue
            if self.channel.exit_status_ready() or self.channel.closed:
                self._read_stderr()
                status = self.channel.exit_status if self.channel.exit_status_ready() else -1
                tail = self._stderr_tail.decode(errors="replace").strip()
                raise ShellStartError(self.host, f"exit {status}"
                                      + (f": {tail[-500:]}" if tail else ""))
            if time.monotonic() > deadline:
                raise ShellStartError(self.host, f"no answer within "
                                                 f"{SESSION_START_TIMEOUT_S:g} s")
            select.select([self.channel], [], [], 0.1)

    # -- requests ------------------------------------------------------------------------
    def usable(self, transport) -> bool:
        return not self.dead and not self.retiring and transport is self._transport

    def submit(self, command: str, env: dict[str, str], expand: list[tuple[str, str]],
               timeout_s: float | None, stdin: bytes = b"") -> Request:
        """Send a command; raises SessionGone when it could not be sent (never started)."""
        with self._lock:
            if self.dead:
                raise SessionGone(self.host)
            self._next_id += 1
            request = Request(self._next_id)
            self._requests[request.id] = request
        spec = json.dumps({"command": command, "env": env, "expand": expand,
                           "timeout_s": timeout_s}).encode()
        try:
            self._send(wire.RUN, request.id, struct.pack(">I", len(spec)) + spec + stdin)
        except (OSError, EOFError, paramiko.SSHException) as error:
            self.forget(request)
            self._die(f"sending failed: {error}")
            raise SessionGone(self.host) from error
        return request

    def cancel(self, request: Request) -> None:
        """Ask the server to stop the command's process group (TERM, KILL after 2 s)."""
        try:
            self._send(wire.CANCEL, request.id)
        except (OSError, EOFError, paramiko.SSHException) as error:
            self._die(f"sending failed: {error}")

    def forget(self, request: Request) -> None:
        """The caller is done with `request` (it ended, or the caller gave up on it)."""
        with self._lock:
            self._requests.pop(request.id, None)
            idle = self.retiring and not self._requests
        if idle:
            self.close()

    def retire(self) -> None:
        """Take no new commands; close once the running ones have ended."""
        with self._lock:
            self.retiring = True
            idle = not self._requests
        if idle:
            self.close()

    def close(self) -> None:
        """End the session (the server stops what still runs and exits)."""
        self._die("the session was closed")

    def _send(self, kind: int, request_id: int, payload: bytes = b"") -> None:
        with self._write_lock:
            self.channel.sendall(wire.encode(kind, request_id, payload))

    # -- the reader thread ---------------------------------------------------------------
    def _read_loop(self) -> None:
        reason = "the channel closed"
        try:
            while True:
                got = self._read_stderr()
                if self.channel.recv_ready():
                    data = self.channel.recv(65536)
                    if not data:
                        break
                    for frame in self._frames.feed(data):
                        self._dispatch(*frame)
                    got = True
                if not got:
                    if self.channel.closed or self.channel.eof_received:
                        break
                    select.select([self.channel], [], [], 1.0)
        except (OSError, EOFError, paramiko.SSHException) as error:
            reason = str(error) or type(error).__name__
        self._die(reason, ended_by_itself=True)

    def _read_stderr(self) -> bool:
        """Keep the tail of the server's stderr (the rc's noise, a traceback)."""
        if not self.channel.recv_stderr_ready():
            return False
        data = self.channel.recv_stderr(65536)
        self._stderr_tail = (self._stderr_tail + data)[-STDERR_TAIL_BYTES:]
        return bool(data)

    def _dispatch(self, kind: int, request_id: int, payload: bytes) -> None:
        idle = False
        with self._lock:
            request = self._requests.get(request_id)
            if kind in (wire.EXIT, wire.REFUSED):
                self._requests.pop(request_id, None)
                if kind == wire.REFUSED:
                    self.retiring = True  # the rc changed: new commands go to a new session
                idle = self.retiring and not self._requests
        if idle:
            self.close()
        if request is None:
            return
        if kind == wire.STDOUT:
            request.events.put(("stdout", payload))
        elif kind == wire.STDERR:
            request.events.put(("stderr", payload))
        elif kind == wire.STARTED:
            request.events.put(("started", json.loads(payload)["pid"]))
        elif kind == wire.EXIT:
            request.events.put(("exit", json.loads(payload)))
        elif kind == wire.REFUSED:
            request.events.put(("refused", json.loads(payload)["reason"]))

    def _die(self, reason: str, ended_by_itself: bool = False) -> None:
        with self._lock:
            if self.dead:
                return
            self.dead = True
            pending = list(self._requests.values())
            self._requests.clear()
        # The channel's end comes before the server's exit status, and a lost connection
        # closes its channels before the transport says it is down: wait for either.
        deadline = time.monotonic() + EXIT_STATUS_WAIT_S
        while (ended_by_itself and pending and not self.channel.exit_status_ready()
               and self._transport.is_active() and time.monotonic() < deadline):
            self.channel.status_event.wait(0.02)
        if self.channel.exit_status_ready():  # the server (not the connection) ended
            tail = self._stderr_tail.decode(errors="replace").strip().splitlines()
            signal_name = getattr(self.channel, "exit_signal", None)
            how = (f"killed by SIG{signal_name}" if signal_name
                   else f"exit {self.channel.exit_status}")
            text = (f"the command session on {self.host} ended while the command ran "
                    f"({how}" + (f": {tail[-1]}" if tail else "") + ")")
        else:
            text = f"connection to {self.host} lost while the command ran: {reason}"
        for request in pending:
            request.events.put(("lost", text))
        self.channel.close()
        if not self._transport.is_active():
            ssh_pool.POOL.discard(self.spec, self._client)
        self._slot.release()


class _Sessions:
    """The live session of each connection (by ConnectionSpec), started on demand."""

    def __init__(self):
        self._lock = threading.Lock()
        self._sessions: dict = {}
        self._unsupported: dict = {}  # spec -> weakref to the transport where it failed
        self._start_locks: dict = {}

    def _current(self, spec, transport) -> ShellSession | None | bool:
        """The usable session, False when this connection runs none, else None."""
        session = self._sessions.get(spec)
        if session is not None and session.usable(transport):
            return session
        failed = self._unsupported.get(spec)
        if failed is not None and failed() is transport:
            return False
        return None

    def get(self, runner) -> ShellSession | None:
        """The session for `runner`'s connection (connecting and starting it if needed),
        or None when the node runs no session (its commands go one channel each)."""
        if os.environ.get(DISABLE_VARIABLE) == "0":
            return None
        client = runner._client()
        transport = client.get_transport()
        with self._lock:
            current = self._current(runner.spec, transport)
            start_lock = self._start_locks.setdefault(runner.spec, threading.Lock())
        if current is not None:
            return current or None
        with start_lock:  # one start per connection, however many threads ask
            with self._lock:
                current = self._current(runner.spec, transport)
                stale = None if current is not None else self._sessions.pop(runner.spec, None)
            if current is not None:
                return current or None
            if stale is not None:
                stale.retire()
            try:
                session = ShellSession.start(runner, client)
            except ShellStartError as error:
                log.info("%s; each command gets its own SSH channel", error)
                with self._lock:
                    self._unsupported[runner.spec] = weakref.ref(transport)
                return None
            with self._lock:
                self._sessions[runner.spec] = session
            return session

    def forget_all_after_fork(self) -> None:
        """In a forked child the parent's sessions (channels, reader threads) are not
        ours: drop them without closing."""
        self._lock = threading.Lock()
        self._sessions = {}
        self._unsupported = {}
        self._start_locks = {}


SESSIONS = _Sessions()
os.register_at_fork(after_in_child=SESSIONS.forget_all_after_fork)


def split_env(env: dict) -> tuple[dict[str, str], list[tuple[str, str]]]:
    """(plain values, [(name, text)] of values the node's shell expands)."""
    plain, expand = {}, []
    for name, value in env.items():
        if getattr(value, "expand_on_node", False):
            expand.append((name, str(value)))
        else:
            plain[name] = str(value)
    return plain, expand


def execute(runner, command: str, env: dict, timeout_s: float | None, consume,
            stdin: bytes = b""):
    """Run `command` on `runner`'s node session; `consume(session, request)` follows its
    events and returns the outcome, or REFUSED when the server did not start it. None
    when the node runs no session (the caller takes the per-command path)."""
    plain, expand = split_env(env)
    for _ in range(MAX_START_ATTEMPTS):
        session = SESSIONS.get(runner)
        if session is None:
            return None
        try:
            request = session.submit(command, plain, expand, timeout_s, stdin)
        except SessionGone:
            continue  # never started: try a new session
        try:
            outcome = consume(session, request)
        finally:
            session.forget(request)
        if outcome is not REFUSED:
            return outcome
    return None


REFUSED = object()
