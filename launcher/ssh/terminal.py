"""An interactive terminal over an SSH channel (`corral attach`): remote PTY, raw mode,
the local window size and its changes."""
from __future__ import annotations

import os
import select
import signal
import sys
import termios
import threading
import tty

import paramiko


def _terminal_size(fd: int) -> tuple[int, int]:
    try:
        size = os.get_terminal_size(fd)
        return size.columns, size.lines
    except OSError:
        return 80, 24


def attach_terminal(channel: paramiko.Channel, command: str) -> int:
    """Connect this process's terminal to `command` in a remote PTY: raw mode, the local
    window size (and its changes, via SIGWINCH), until the remote side exits."""
    stdin_fd, stdout_fd = sys.stdin.fileno(), sys.stdout.fileno()
    is_tty = os.isatty(stdin_fd)
    columns, lines = _terminal_size(stdout_fd if os.isatty(stdout_fd) else stdin_fd)
    channel.get_pty(term=os.environ.get("TERM", "xterm"), width=columns, height=lines)
    channel.exec_command(command)
    saved_mode = termios.tcgetattr(stdin_fd) if is_tty else None
    previous_handler = None
    if threading.current_thread() is threading.main_thread():
        previous_handler = signal.signal(
            signal.SIGWINCH, lambda *_: channel.resize_pty(*_terminal_size(stdin_fd)))
    try:
        if is_tty:
            tty.setraw(stdin_fd, termios.TCSANOW)  # keep typeahead (TCSAFLUSH drops it)
        reading_stdin = True
        while True:
            watched = [channel, stdin_fd] if reading_stdin else [channel]
            ready, _, _ = select.select(watched, [], [], 0.5)
            if channel in ready or channel.recv_ready():
                while channel.recv_ready():
                    os.write(stdout_fd, channel.recv(65536))
                while channel.recv_stderr_ready():
                    os.write(stdout_fd, channel.recv_stderr(65536))
            if (channel.eof_received or channel.closed) and not channel.recv_ready():
                break
            if stdin_fd in ready:
                data = os.read(stdin_fd, 4096)
                if data:
                    channel.sendall(data)
                else:
                    channel.shutdown_write()
                    reading_stdin = False
    finally:
        if saved_mode is not None:
            termios.tcsetattr(stdin_fd, termios.TCSADRAIN, saved_mode)
        if previous_handler is not None:
            signal.signal(signal.SIGWINCH, previous_handler)
    status = channel.recv_exit_status()
    return 255 if status == -1 else status
