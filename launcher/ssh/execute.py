"""Running one command on a node: collect (and stream, and log) its output until it
exits, times out or is cancelled; its exit code (a signal counts as 128 + n). `drive`
follows a command on an SSH channel of its own, `drive_request` one on the connection's
command session (launcher.ssh.shell). Used by launcher.ssh.runner.SSHRunner.run."""
from __future__ import annotations

import os
import queue
import re
import select
import signal
import threading
import time

import paramiko

from launcher.bootstrap.command_runner import INTERRUPTED_EXIT_CODE, LineDecoder
from launcher.ssh.shell import REFUSED, Request, ShellSession

LOCAL_TIMEOUT_GRACE_S = 5.0  # beyond the remote `timeout`, when the local side gives up
# A command session stops a timed-out command itself (SIGKILL 5 s after SIGTERM); the
# local side gives up only when the node does not answer well after that.
SESSION_TIMEOUT_GRACE_S = 15.0
SESSION_STOP_WAIT_S = 10.0  # after a cancel: how long to wait for the node's answer
INTERRUPTED_NOTE = "interrupted (channel closed)"
EOF_GRACE_S = 0.3  # after the exit status, how long to wait for output still in flight
# The first stderr line of every command names its process group (see remote_command).
PID_HEADER_COMMAND = "printf '@@corral-pid %s@@\\n' \"$$\" >&2; "
_PID_HEADER = re.compile(rb"^@@corral-pid (\d+)@@$")


class Collected:
    """One output stream of a command: its bytes, decoded at the end; with a callback,
    also decoded line by line as they arrive."""

    def __init__(self, stream: str, on_output, pid_header: bool = False):
        self.chunks: list[bytes] = []
        self._lines = None if on_output is None else LineDecoder(
            lambda line: on_output(stream, line))
        self._header: bytes | None = b"" if pid_header else None
        self.remote_pid: int | None = None

    def append(self, data: bytes) -> bytes:
        """Take a chunk; returns what of it is the command's output (for the log)."""
        if self._header is not None:
            self._header += data
            if b"\n" not in self._header and len(self._header) < 64:
                return b""
            line, newline, rest = self._header.partition(b"\n")
            self._header = None
            match = _PID_HEADER.match(line)
            if match:
                self.remote_pid = int(match.group(1))
                data = rest
            else:
                data = line + newline + rest
        if data:
            self.chunks.append(data)
            if self._lines is not None:
                self._lines.feed(data)
        return data

    def note(self, text: str) -> bytes:
        """Add a line of our own (why the command ended) on a line of its own; returns
        the bytes added (for the log)."""
        last = self.chunks[-1] if self.chunks else b"\n"
        data = (text if last.endswith(b"\n") else "\n" + text).encode() + b"\n"
        return self.append(data)

    def text(self) -> str:
        if self._header:  # a header never completed: it was output after all
            self.chunks.append(self._header)
        self._header = None
        if self._lines is not None:
            self._lines.feed(b"", final=True)
            self._lines = None
        return _decode(self.chunks)


def drive(channel: paramiko.Channel, command: str, timeout_s: float | None, log,
           out: Collected, err: Collected, cancel: threading.Event | None = None) -> int:
    """Run `command` on `channel`; collect (into out/err, and the log) its output until it
    exits; returns the exit code."""
    channel.exec_command(command)
    channel.shutdown_write()  # no stdin: a command that reads it sees EOF at once
    deadline = time.monotonic() + timeout_s + LOCAL_TIMEOUT_GRACE_S if timeout_s else None
    exited_at = None
    while True:
        drain(channel, out, err, log)
        now = time.monotonic()
        if channel.exit_status_ready():
            exited_at = exited_at or now
            if channel.eof_received or channel.closed or now - exited_at > EOF_GRACE_S:
                break  # (a background process may keep the output open: don't wait for it)
        if cancel is not None and cancel.is_set() and exited_at is None:
            drain(channel, out, err, log)  # keep what already arrived
            channel.close()
            log_write(log, err.note("interrupted (channel closed)"))
            return INTERRUPTED_EXIT_CODE
        if deadline is not None and now > deadline:
            channel.close()
            log_write(log, err.note(f"timed out after {timeout_s:g} s (channel closed)"))
            return 124
        # The exit status alone does not wake select (only output, EOF and close do), so
        # poll at 10 Hz for it: a background process may keep the output open.
        wait_s = 0.1 if exited_at is None else 0.05
        if deadline is not None:
            wait_s = min(wait_s, max(0.0, deadline - now))
        if channel.eof_received:  # output done; the exit status is on its way
            channel.status_event.wait(wait_s)
        else:
            select.select([channel], [], [], wait_s)
    drain(channel, out, err, log)
    status = channel.exit_status
    signal_name = getattr(channel, "exit_signal", None)
    if status == -1 and signal_name:  # like a shell: 128 + the signal's number
        number = getattr(signal, f"SIG{signal_name}", None)
        err.note(f"killed by signal SIG{signal_name}")
        status = 128 + int(number) if number is not None else 255
    elif status == -1:
        err.note("remote command ended without an exit status (killed by a signal?)")
        status = 255
    if timeout_s and status == 124:
        err.note(f"timed out after {timeout_s:g} s")
    return status


def drive_request(session: ShellSession, request: Request, timeout_s: float | None, log,
                  out: Collected, err: Collected, cancel: threading.Event | None = None):
    """Follow a command sent to a command session until it ends; collect its output (into
    out/err, and the log). Returns (exit code, signal name or None), or REFUSED when the
    node did not start it (the caller sends it to a new session)."""
    deadline = time.monotonic() + timeout_s + SESSION_TIMEOUT_GRACE_S if timeout_s else None
    stop_by = None
    while True:
        try:
            kind, value = request.events.get(timeout=0.1)
        except queue.Empty:
            kind = value = None
        if kind == "refused":
            return REFUSED
        if kind == "stdout":
            log_write(log, out.append(value))
        elif kind == "stderr":
            log_write(log, err.append(value))
        elif kind == "started":
            err.remote_pid = value
        elif kind == "exit":
            return _session_exit(value, timeout_s, log, err)
        elif kind == "lost":  # like ssh(1): a connection lost mid-command is 255
            log_write(log, err.note(value))
            return 255, None
        now = time.monotonic()
        if cancel is not None and cancel.is_set() and stop_by is None:
            session.cancel(request)  # the node stops the group and then says so
            stop_by = now + SESSION_STOP_WAIT_S
        if stop_by is not None and now > stop_by:
            log_write(log, err.note(INTERRUPTED_NOTE))
            return INTERRUPTED_EXIT_CODE, None
        if deadline is not None and now > deadline:
            session.cancel(request)
            log_write(log, err.note(f"timed out after {timeout_s:g} s (the node did not "
                                    f"answer)"))
            return 124, None


def _session_exit(info: dict, timeout_s: float | None, log, err: Collected):
    if info.get("stopped") == "cancel":
        log_write(log, err.note(INTERRUPTED_NOTE))
        return INTERRUPTED_EXIT_CODE, None
    if info.get("stopped") == "timeout":
        log_write(log, err.note(f"timed out after {timeout_s:g} s"))
        return 124, None
    if info.get("signal"):  # like a shell: 128 + the signal's number
        name = info.get("signal_name")
        log_write(log, err.note(f"killed by signal {name or info['signal']}"))
        return 128 + int(info["signal"]), name
    return int(info["code"]), None


def drain(channel: paramiko.Channel, out: Collected, err: Collected, log) -> None:
    """Read whatever output is buffered, until both streams are empty."""
    while True:
        got = False
        if channel.recv_ready():
            log_write(log, out.append(channel.recv(65536)))
            got = True
        if channel.recv_stderr_ready():
            log_write(log, err.append(channel.recv_stderr(65536)))
            got = True
        if not got:
            return


def _decode(chunks: list[bytes]) -> str:
    return b"".join(chunks).decode(errors="replace")


class NodeLog:
    """One command's part of a node log (0600), opened once the command is under way,
    so a command that never reached the node leaves no entry."""

    def __init__(self, path: str | None, cmd: str):
        self.path = path
        self.cmd = cmd
        self.file = None

    def open(self) -> None:
        if self.path and self.file is None:
            self.file = open_log(self.path, self.cmd)

    def write(self, data: bytes) -> None:
        if self.file is not None and data:
            self.file.write(data)

    def close(self, exit_code: int | None = None, duration_s: float = 0.0) -> None:
        """With the exit code: the closing line; without: just close (run raised)."""
        if self.file is not None:
            if exit_code is None:
                self.file.close()
            else:
                close_log(self.file, exit_code, duration_s)
            self.file = None


def open_log(log_path: str, cmd: str):
    os.makedirs(os.path.dirname(log_path) or ".", exist_ok=True)
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    log = os.fdopen(fd, "ab", buffering=0)
    log.write(f"$ {cmd}\n".encode())
    return log


def log_write(log, data: bytes) -> None:
    if log is not None and data:
        log.write(data)


def close_log(log, exit_code: int, duration_s: float) -> None:
    log.write(f"\n[exit {exit_code} after {duration_s:.2f} s]\n".encode())
    log.close()
