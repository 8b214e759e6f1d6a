"""SSHRunner: a CommandRunner for a host reached over SSH (paramiko).

- Connections come from the process-wide pool (launcher.ssh.pool): one transport per
  resolved connection (host, port, user, way in, keys), keepalive 15 s, reused across
  runners and threads. What the caller (the cluster YAML) leaves unsaid comes from the
  user's ~/.ssh/config (HostName, User, Port, IdentityFile, ProxyJump, ProxyCommand) and
  ssh-agent: launcher.ssh.user_config, launcher.ssh.auth.
- Host keys are pinned on first contact in the cluster's known_hosts (launcher.ssh.host_keys);
  a changed key raises HostKeyMismatchError.
- Commands run without a PTY as `bash -c CMD` (not a login shell: no profile files, so
  what runs is what the config says), with the environment given explicitly, because
  sshd's AcceptEnv cannot be relied on. They go through the connection's command session
  (launcher.ssh.shell): the user's shell (and its ~/.bashrc) starts once per connection
  and a small server it execs runs every command, each in its own process group. On a
  node without python3 each command gets a channel of its own instead, its variables
  exported by the command line itself (`export K='v'; ...`, see remote_command). A
  timeout kills the command's whole process group (SIGTERM, SIGKILL 5 s later) and the
  result has exit code 124.
- Output is appended to `log_path` (0600) as it arrives. A command that leaves a
  background process holding its output open returns once it exits (after a 0.3 s grace
  for output in flight). A connection lost mid-command gives exit code 255, like ssh(1).
- At most 8 channels are open at once per connection (sshd's MaxSessions is 10 by
  default; the command session holds one for all commands); more concurrent SFTP copies
  (or commands, on a node without a command session) wait their turn.
"""
from __future__ import annotations

import contextlib
import re
import shlex
import socket
import threading
import time
from typing import Mapping

import paramiko

from launcher import paths
from launcher.ssh import file_sync
from launcher.ssh import user_config as ssh_config
from launcher.ssh import pool as ssh_pool
from launcher.ssh import shell as ssh_shell
from launcher.bootstrap.command_runner import INTERRUPTED_EXIT_CODE, CommandResult, CommandRunner
from launcher.ssh.execute import (PID_HEADER_COMMAND, Collected, NodeLog, drive, drive_request,
                               log_write)
from launcher.ssh.terminal import attach_terminal
from launcher.errors import ClusterError, CommandError, HostKeyMismatchError, \
    SSHUnreachableError

DEFAULT_SSH_TIMEOUT_S = 120.0
CONNECT_ATTEMPT_TIMEOUT_S = 10.0
BACKOFF_START_S = 0.1
BACKOFF_CAP_S = 2.0
CHANNEL_WAIT_S = 120.0  # how long a command waits for the server to allow a new session
SCRIPT_TIMEOUT_S = 600.0  # file sync listings (hashing a large tree takes a while)
STOP_GROUP_TIMEOUT_S = 10.0  # stopping an interrupted command's process group
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def env_prefix(env: Mapping[str, str]) -> str:
    """`export K='v'; ...` for each variable, quoted for any POSIX shell. A value marked
    `expand_on_node` (launcher.ship.layout.NodeShellValue: `$HOME/...`, `...:$PATH`,
    built by corral, never user text) goes in double quotes, so the node expands it."""
    parts = []
    for name, value in env.items():
        if not _ENV_NAME.match(name):
            raise ValueError(f"not a valid environment variable name: {name!r}")
        text = (f'"{value}"' if getattr(value, "expand_on_node", False)
                else shlex.quote(str(value)))
        parts.append(f"export {name}={text}; ")
    return "".join(parts)


class SSHRunner(CommandRunner):
    def __init__(self, host: str, *, cluster_name: str, user: str | None = None,
                 private_key_path: str | None = None, port: int | None = None,
                 proxy_command: str | None = None,
                 timeout_s: float = DEFAULT_SSH_TIMEOUT_S,
                 base_env: Mapping[str, str] | None = None, log_path: str | None = None,
                 known_hosts_path: str | None = None, host_key_alias: str | None = None):
        """host: an address or a ~/.ssh/config Host alias. user, private_key_path, port,
        proxy_command: what the cluster YAML says; None leaves it to ~/.ssh/config and
        ssh's defaults. host_key_alias: the name the host key is pinned under instead of
        `host` (cloud providers pass the node id: clouds reuse private IPs for new
        machines). Raises SSHConfigError for an unusable ~/.ssh/config."""
        self.host = host
        self.timeout_s = timeout_s
        self.base_env = dict(base_env or {})
        self.log_path = log_path
        self.spec = ssh_config.resolve(
            host, user=user, port=port, private_key_path=private_key_path,
            known_hosts_path=str(known_hosts_path or paths.known_hosts_path(cluster_name)),
            proxy_command=proxy_command, host_key_alias=host_key_alias)
        self.user = self.spec.user
        self.port = self.spec.port
        self._holding = True
        ssh_pool.POOL.hold(self.spec)

    def __repr__(self) -> str:
        return f"SSHRunner({self.user}@{self.host}:{self.port})"

    # -- connections ---------------------------------------------------------------------
    def _client(self, timeout_s: float | None = None) -> paramiko.SSHClient:
        try:
            return ssh_pool.POOL.client(self.spec, timeout_s or CONNECT_ATTEMPT_TIMEOUT_S)
        except HostKeyMismatchError:
            raise
        except (OSError, EOFError, paramiko.SSHException) as error:
            raise SSHUnreachableError(self.host, timeout_s or CONNECT_ATTEMPT_TIMEOUT_S,
                                      _describe(error)) from error

    def wait_ready(self, timeout_s: float | None = None,
                   cancel: threading.Event | None = None) -> None:
        """Connect, retrying with backoff (0.1 s doubling to 2 s) until `timeout_s`; then
        raise SSHUnreachableError naming the host and the last error. A changed host key
        is not retried: it raises HostKeyMismatchError at once. Setting `cancel` stops
        the retries (SSHUnreachableError "interrupted")."""
        timeout_s = self.timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + timeout_s
        delay_s, last_error = BACKOFF_START_S, "no attempt made"
        while True:
            remaining_s = deadline - time.monotonic()
            if cancel is not None and cancel.is_set():
                raise SSHUnreachableError(self.host, timeout_s, "interrupted")
            if remaining_s <= 0:
                raise SSHUnreachableError(self.host, timeout_s, last_error)
            try:
                ssh_pool.POOL.client(self.spec, min(CONNECT_ATTEMPT_TIMEOUT_S,
                                                    max(remaining_s, 0.05)))
                return
            except HostKeyMismatchError:
                raise
            except (OSError, EOFError, paramiko.SSHException) as error:
                last_error = _describe(error)
            pause_s = max(0.0, min(delay_s, deadline - time.monotonic()))
            if cancel is not None:
                cancel.wait(pause_s)
            else:
                time.sleep(pause_s)
            delay_s = min(delay_s * 2, BACKOFF_CAP_S)

    def _open_channel(self) -> paramiko.Channel:
        """A new session channel on the pooled transport (call with a session slot held).

        A refusal on a live connection (sshd's MaxSessions momentarily reached while it
        frees a session we just closed) is retried with backoff; the connection is kept,
        since closing it would kill every command running on it. A dead or unresponsive
        transport (the host was restarted) is replaced once."""
        deadline = time.monotonic() + CHANNEL_WAIT_S
        delay_s, reconnected = BACKOFF_START_S / 4, False
        while True:
            client = self._client()
            transport = client.get_transport()
            try:
                return transport.open_session(timeout=CONNECT_ATTEMPT_TIMEOUT_S)
            except (OSError, EOFError, paramiko.SSHException) as error:
                # paramiko keeps one "last exception" per transport, so under concurrency
                # a refusal may surface as a plain SSHException rather than a
                # ChannelException: judge by the transport, not by the exception type.
                refused = (isinstance(error, paramiko.SSHException) and transport.is_active()
                           and "Timeout" not in str(error))
                if refused:
                    if time.monotonic() > deadline:
                        raise SSHUnreachableError(self.host, CHANNEL_WAIT_S,
                                                  f"no new session allowed: {error}") from error
                    time.sleep(delay_s)
                    delay_s = min(delay_s * 2, 1.0)
                    continue
                ssh_pool.POOL.discard(self.spec, client)
                if reconnected:
                    raise SSHUnreachableError(self.host, CONNECT_ATTEMPT_TIMEOUT_S,
                                              _describe(error)) from error
                reconnected = True

    @contextlib.contextmanager
    def _session(self):
        """An open session channel, within the connection's session limit."""
        with ssh_pool.POOL.session_slot(self.spec):
            channel = self._open_channel()
            try:
                yield channel
            finally:
                channel.close()

    def close(self) -> None:
        """Release this runner's hold on the pooled connection (closed with the last)."""
        if self._holding:
            self._holding = False
            ssh_pool.POOL.release(self.spec)

    # -- commands ------------------------------------------------------------------------
    def remote_command(self, cmd: str, env: Mapping[str, str] | None,
                       timeout_s: float | None) -> str:
        """The exact command line sent to sshd for `cmd`."""
        merged = dict(self.base_env)
        merged.update(env or {})
        runner = f"timeout -k 5 {timeout_s:.3f} bash -c " if timeout_s else "bash -c "
        # The first stderr line names the process group (sshd makes the command's shell a
        # session leader), so an interrupted command can be stopped, children included.
        return (env_prefix(merged) + PID_HEADER_COMMAND + "exec " + runner
                + shlex.quote(cmd))

    def run(self, cmd, *, timeout_s=None, env=None, check=False, log_path=None,
            on_output=None, cancel=None):
        """See CommandRunner.run. On the connection's command session when the node runs
        one, else on a channel of its own. A set `cancel` stops the command's process
        group and gives exit code 130."""
        merged = {**self.base_env, **(env or {})}
        env_prefix(merged)  # refuses a bad variable name before anything runs
        log = NodeLog(log_path or self.log_path, cmd)
        started = time.monotonic()
        out = Collected("stdout", on_output)
        err = Collected("stderr", on_output)

        def follow(session, request):
            log.open()
            return drive_request(session, request, timeout_s, log, out, err, cancel)
        try:
            outcome = ssh_shell.execute(self, cmd, merged, timeout_s, follow)
            if outcome is None:  # the node runs no command session (no python3)
                err = Collected("stderr", on_output, pid_header=True)
                outcome = self._run_on_channel(cmd, env, timeout_s, log, out, err, cancel)
        except BaseException:
            log.close()
            raise
        exit_code, signal_name = outcome
        duration_s = time.monotonic() - started
        log.close(exit_code, duration_s)
        result = CommandResult(self.host, cmd, exit_code, out.text(), err.text(), duration_s,
                               signal_name)
        if check and not result.ok:
            raise CommandError(result)
        return result

    def _run_on_channel(self, cmd, env, timeout_s, log, out, err, cancel):
        """`cmd` on an SSH channel of its own (`remote_command`); (exit code, signal name).
        A set `cancel` closes the channel and stops the command's process group."""
        with self._session() as channel:
            log.open()
            try:
                exit_code = drive(channel, self.remote_command(cmd, env, timeout_s),
                                   timeout_s, log, out, err, cancel)
            except (OSError, EOFError, paramiko.SSHException) as error:
                # Like ssh(1): a connection lost mid-command is exit code 255, with why.
                ssh_pool.POOL.discard(self.spec)
                exit_code = 255
                log_write(log, err.note(f"connection to {self.host} lost while the "
                                        f"command ran: {_describe(error)}"))
        if exit_code == INTERRUPTED_EXIT_CODE and cancel is not None and cancel.is_set():
            self._stop_group(err.remote_pid)
        signal_name = getattr(channel, "exit_signal", None)
        return exit_code, f"SIG{signal_name}" if signal_name else None

    def _stop_group(self, pid: int | None) -> None:
        """Stop an interrupted command's process group on the host: sshd does not end a
        command without a terminal when its channel closes. TERM, then KILL after 2 s."""
        if not pid:
            return
        script = (f"kill -TERM -- -{pid} 2>/dev/null || exit 0; "
                  f"for i in 1 2 3 4 5 6 7 8 9 10; do kill -0 -- -{pid} 2>/dev/null "
                  f"|| exit 0; sleep 0.2; done; kill -KILL -- -{pid} 2>/dev/null; exit 0")
        try:
            with self._session() as channel:
                channel.settimeout(STOP_GROUP_TIMEOUT_S)
                channel.exec_command("exec bash -c " + shlex.quote(script))
                channel.recv_exit_status()
        except (OSError, EOFError, paramiko.SSHException, ClusterError):
            pass  # the host went away: so did the command  # noqa: E501

    def _run_script(self, script: str, stdin: bytes) -> bytes:
        """Run a bash script with `stdin`; its stdout (bytes). For file sync listings."""
        out, err = Collected("stdout", None), Collected("stderr", None)
        outcome = ssh_shell.execute(
            self, script, {}, SCRIPT_TIMEOUT_S, stdin=stdin,
            consume=lambda session, request: drive_request(session, request,
                                                           SCRIPT_TIMEOUT_S, None, out, err))
        if outcome is not None:
            if outcome[0] == 124:
                raise ClusterError(f"file listing on {self.host} did not finish within "
                                   f"{SCRIPT_TIMEOUT_S:g} s")
            if outcome[0] != 0:
                raise ClusterError(f"file listing on {self.host} failed ({outcome[0]}): "
                                   f"{err.text()}")
            return b"".join(out.chunks)
        with self._session() as channel:
            channel.settimeout(SCRIPT_TIMEOUT_S)
            try:
                channel.exec_command("exec bash -c " + shlex.quote(script))
                channel.sendall(stdin)
                channel.shutdown_write()
                chunks = []
                while True:
                    data = channel.recv(65536)
                    if not data:
                        break
                    chunks.append(data)
                status = channel.recv_exit_status()
            except socket.timeout as error:
                raise ClusterError(f"file listing on {self.host} did not finish within "
                                   f"{SCRIPT_TIMEOUT_S:g} s") from error
            if status != 0:
                error = channel.recv_stderr(65536).decode(errors="replace")
                raise ClusterError(f"file listing on {self.host} failed ({status}): {error}")
            return b"".join(chunks)

    # -- files ---------------------------------------------------------------------------
    @contextlib.contextmanager
    def _sftp(self):
        """An SFTP client on its own channel (within the session limit)."""
        with self._session() as channel:
            channel.invoke_subsystem("sftp")
            sftp = paramiko.SFTPClient(channel)
            try:
                yield sftp
            finally:
                sftp.close()

    def put(self, local, remote, *, exclude=None):
        return file_sync.sftp_put(self._sftp, self._run_script, local, remote, exclude)

    def get(self, remote, local, *, exclude=None):
        return file_sync.sftp_get(self._sftp, self._run_script, remote, local, exclude)

    # -- interactive ---------------------------------------------------------------------
    def interactive_shell(self, cmd=None):
        command = cmd if cmd is not None else 'exec "${SHELL:-bash}" -l'
        with self._session() as channel:
            return attach_terminal(channel, env_prefix(self.base_env) + command)


def close_all() -> None:
    """Close every pooled SSH connection of this process."""
    ssh_pool.close_all()


def _describe(error: BaseException) -> str:
    if isinstance(error, socket.timeout):
        return "connection timed out"
    if isinstance(error, paramiko.ssh_exception.NoValidConnectionsError):
        reasons = {str(inner) for inner in error.errors.values()}
        return "; ".join(sorted(reasons)) or "connection failed"
    text = str(error) or type(error).__name__
    return f"{type(error).__name__}: {text}" if not isinstance(error, OSError) else text


