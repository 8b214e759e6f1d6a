"""corral's command server: runs on a node, started ONCE per SSH connection through the
user's shell, and then runs many commands, several at once, for launcher.ssh.shell.

Why: sshd starts the user's shell for every command (`$SHELL -c CMD`), and bash sources
~/.bashrc for sshd sessions, so on a host whose rc runs `pyenv init` or `conda init`
every command paid that start-up again (0.3-0.4 s each). This server is exec'd by the
shell once the rc has run, so its environment is what the rc set up (PATH, conda, pyenv;
the rc's bash functions too, exported by the start-up line), and every command it runs
inherits it.

Protocol, over the channel's stdin/stdout: first the line `@@corral-shell <nonce>@@`
(anything the rc printed before it is skipped by the client), then frames both ways:
a header (kind: 1 byte, request id: 4 bytes, payload length: 4 bytes, big-endian) and
the payload.
  client -> server  RUN     4-byte JSON length, JSON {command, env, expand, timeout_s},
                            then the command's stdin bytes
                    CANCEL  (empty)
  server -> client  HELLO   JSON {pid, python}           (once, after the line)
                    STARTED JSON {pid}                   (the command's process group)
                    STDOUT / STDERR  output bytes, as they arrive
                    EXIT    JSON {code, signal, signal_name, stopped}   (stopped: None,
                            "timeout" or "cancel"; the request's last frame)
                    REFUSED JSON {reason}  the command was NOT started (the user's rc files
                            changed since this server started: the client starts a fresh
                            server so the command sees them, as a new SSH command would)

Each command runs as `bash -c COMMAND` in its own session (process group) with stdin
from the request (or /dev/null), its environment ours plus `env`; `expand` lists
[name, text] pairs whose text the node's shell expands (corral's own `$HOME/...` values):
those are exported by a bash that then execs `bash -c COMMAND`. A timeout or a cancel sends SIGTERM to the group and
SIGKILL after a grace (5 s, as coreutils `timeout -k 5`; 2 s for a cancel). A command is
over when its shell exits; output still in flight gets OUTPUT_GRACE_S (a background
process may hold the pipes open). When the channel closes (stdin EOF), or on SIGTERM or
SIGHUP, the commands still running are stopped the same way and the server exits.

Runs on the node's own python3 with the standard library only, and stays compatible with
Python 3.6 (no annotations, no walrus): this file is sent as it is.
"""
import json
import os
import select
import selectors
import signal
import struct
import subprocess
import sys
import time

HEADER = struct.Struct(">BII")
RUN, CANCEL = 1, 2
HELLO, STARTED, STDOUT, STDERR, EXIT, REFUSED = 10, 11, 12, 13, 14, 15
OUTPUT_GRACE_S = 0.3  # after a command's shell exits, for output still in its pipes
TIMEOUT_KILL_AFTER_S = 5.0
CANCEL_KILL_AFTER_S = 2.0
GROUP_CHECK_S = 0.2  # how often a group being stopped is checked for being gone
CHUNK_BYTES = 65536
# What sshd and the user's shell read before a command: a change means a new SSH command
# would see another environment.
RC_FILES = ("~/.bashrc", "~/.bash_profile", "~/.bash_login", "~/.profile", "~/.zshenv",
            "~/.zshrc", "~/.ssh/environment", "/etc/bash.bashrc", "/etc/profile",
            "/etc/environment", "/etc/zsh/zshenv")


def encode(kind, request_id, payload=b""):
    return HEADER.pack(kind, request_id, len(payload)) + payload


class FrameReader:
    """Bytes in, complete frames (kind, request id, payload) out."""

    def __init__(self):
        self.buffer = bytearray()  # appended to in place: a large stdin stays linear

    def feed(self, data):
        self.buffer += data
        frames = []
        while len(self.buffer) >= HEADER.size:
            kind, request_id, length = HEADER.unpack_from(self.buffer)
            end = HEADER.size + length
            if len(self.buffer) < end:
                break
            frames.append((kind, request_id, bytes(self.buffer[HEADER.size:end])))
            del self.buffer[:end]
        return frames


def rc_state():
    """(path, inode, size, mtime) of each rc file that exists."""
    state = []
    for name in RC_FILES:
        path = os.path.expanduser(name)
        try:
            info = os.stat(path)
        except OSError:
            continue
        state.append((path, info.st_ino, info.st_size, info.st_mtime_ns))
    return state


def command_environment():
    """The environment commands start from: ours, as the user's shell left it. SHLVL at
    least 1, so that a command's `bash -c` does not take itself for the shell sshd
    started and source ~/.bashrc again (bash does that below SHLVL 2 when SSH_CLIENT is
    set): the rc ran once, here."""
    env = dict(os.environ)
    try:
        level = int(env.get("SHLVL", "0"))
    except ValueError:
        level = 0
    env["SHLVL"] = str(max(level, 1))
    return env


def _group_alive(pgid):
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def _signal_group(pgid, sig):
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


class Command:
    def __init__(self, server, request_id, spec, stdin_data):
        self.server = server
        self.id = request_id
        self.stopped = None  # "timeout" or "cancel" once we stopped it
        self.exited_at = None
        self.pipes = {}  # fd -> (frame kind, pipe file)
        self.stdin_fd, self.stdin_data, self.stdin_sent = None, stdin_data, 0
        env = dict(server.base_env)
        env.update(spec.get("env") or {})
        timeout_s = spec.get("timeout_s")
        self.deadline = time.monotonic() + float(timeout_s) if timeout_s else None
        argv = ["bash", "-c", spec["command"]]
        if spec.get("expand"):
            exports = "".join('export %s="%s"; ' % (name, text)
                              for name, text in spec["expand"])
            argv = ["bash", "-c", exports + 'exec bash -c "$0"', spec["command"]]
        self.proc = subprocess.Popen(
            argv, env=env,
            stdin=subprocess.PIPE if stdin_data else subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
            close_fds=True)
        self.pgid = self.proc.pid  # a session leader leads its process group
        for pipe, kind in ((self.proc.stdout, STDOUT), (self.proc.stderr, STDERR)):
            fd = pipe.fileno()
            os.set_blocking(fd, False)
            self.pipes[fd] = (kind, pipe)
            server.selector.register(fd, selectors.EVENT_READ, (self, kind))
        if stdin_data:
            self.stdin_fd = self.proc.stdin.fileno()
            os.set_blocking(self.stdin_fd, False)
            server.selector.register(self.stdin_fd, selectors.EVENT_WRITE, (self, RUN))

    def read(self, fd):
        """Forward one chunk of output; False when there was none to read."""
        try:
            data = os.read(fd, CHUNK_BYTES)
        except BlockingIOError:
            return False
        except OSError:
            data = b""
        if data:
            self.server.send(self.pipes[fd][0], self.id, data)
        else:
            self.close_pipe(fd)
        return bool(data)

    def write_stdin(self):
        try:
            self.stdin_sent += os.write(
                self.stdin_fd, self.stdin_data[self.stdin_sent:self.stdin_sent + CHUNK_BYTES])
        except BlockingIOError:
            return
        except OSError:  # the command closed its stdin: what is left is not wanted
            self.stdin_sent = len(self.stdin_data)
        if self.stdin_sent >= len(self.stdin_data):
            self.server.selector.unregister(self.stdin_fd)
            self.proc.stdin.close()
            self.stdin_fd = None

    def close_pipe(self, fd):
        self.server.selector.unregister(fd)
        self.pipes.pop(fd)[1].close()

    def stop(self, reason, kill_after_s):
        if self.stopped is not None or self.exited_at is not None:
            return
        self.stopped = reason
        _signal_group(self.pgid, signal.SIGTERM)
        self.server.kills[self.pgid] = time.monotonic() + kill_after_s

    def tick(self, now):
        """Check for exit and the deadline; True once the command is over (EXIT sent)."""
        if self.exited_at is None:
            if self.proc.poll() is not None:
                self.exited_at = now
            elif self.deadline is not None and now >= self.deadline:
                self.stop("timeout", TIMEOUT_KILL_AFTER_S)
        if self.exited_at is None:
            return False
        if self.pipes and now < self.exited_at + OUTPUT_GRACE_S:
            return False
        for fd in list(self.pipes):  # what is already there, then let go of the pipes
            while fd in self.pipes and self.read(fd):
                pass
            if fd in self.pipes:
                self.close_pipe(fd)
        if self.stdin_fd is not None:
            self.server.selector.unregister(self.stdin_fd)
            self.proc.stdin.close()
        code = self.proc.returncode
        info = {"code": code if code >= 0 else None, "signal": -code if code < 0 else None,
                "signal_name": None, "stopped": self.stopped}
        if code < 0:
            try:
                info["signal_name"] = signal.Signals(-code).name
            except ValueError:
                pass
        self.server.send(EXIT, self.id, json.dumps(info).encode())
        return True

    def next_wake(self):
        if self.exited_at is not None:
            return self.exited_at + OUTPUT_GRACE_S
        return self.deadline


class Server:
    def __init__(self, nonce):
        self.nonce = nonce
        self.selector = selectors.DefaultSelector()
        self.commands = {}
        self.kills = {}  # pgid -> when to send SIGKILL if the group is still there
        self.frames = FrameReader()
        self.base_env = command_environment()
        self.rc_state = rc_state()
        self.refusing = None  # why new commands are refused
        self.closing = False
        self.output_open = True
        wake_read, wake_write = os.pipe()
        for fd in (wake_read, wake_write):
            os.set_blocking(fd, False)
        self.wake_read = wake_read
        signal.set_wakeup_fd(wake_write)
        signal.signal(signal.SIGCHLD, lambda number, frame: None)  # wakes the loop
        for number in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(number, self._on_stop_signal)
        # (fd 0 stays blocking: sshd may give us one socket as stdin and stdout, and a
        # read after select() returns at once anyway)
        self.selector.register(0, selectors.EVENT_READ, None)
        self.selector.register(wake_read, selectors.EVENT_READ, "wake")

    def _on_stop_signal(self, number, frame):
        self.closing = True

    def send(self, kind, request_id, payload=b""):
        if not self.output_open:
            return
        data = encode(kind, request_id, payload)
        try:
            while data:
                try:
                    data = data[os.write(1, data):]
                except BlockingIOError:
                    select.select([], [1], [])
        except OSError:  # the client is gone
            self.output_open = False
            self.closing = True

    def handle(self, kind, request_id, payload):
        if kind == RUN:
            length = struct.unpack_from(">I", payload)[0]
            spec = json.loads(payload[4:4 + length].decode())
            if not self.refusing and rc_state() != self.rc_state:
                self.refusing = "rc files changed"
            if self.closing or self.refusing:
                reason = self.refusing or "the server is stopping"
                self.send(REFUSED, request_id, json.dumps({"reason": reason}).encode())
                return
            try:
                command = Command(self, request_id, spec, payload[4 + length:])
            except (OSError, ValueError) as error:
                self.send(STDERR, request_id, ("cannot start bash: %s\n" % error).encode())
                code = 127 if isinstance(error, FileNotFoundError) else 126
                self.send(EXIT, request_id, json.dumps(
                    {"code": code, "signal": None, "signal_name": None, "stopped": None})
                    .encode())
                return
            self.commands[request_id] = command
            self.send(STARTED, request_id, json.dumps({"pid": command.pgid}).encode())
        elif kind == CANCEL and request_id in self.commands:
            self.commands[request_id].stop("cancel", CANCEL_KILL_AFTER_S)

    def read_requests(self):
        try:
            data = os.read(0, CHUNK_BYTES)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:  # the channel closed
            self.selector.unregister(0)
            self.closing = True
            return
        for frame in self.frames.feed(data):
            self.handle(*frame)

    def timers(self, now):
        for pgid, kill_at in list(self.kills.items()):
            if not _group_alive(pgid):
                del self.kills[pgid]
            elif now >= kill_at:
                _signal_group(pgid, signal.SIGKILL)
                del self.kills[pgid]
        for request_id, command in list(self.commands.items()):
            if command.tick(now):
                del self.commands[request_id]

    def run(self):
        os.write(1, ("@@corral-shell %s@@\n" % self.nonce).encode())
        self.send(HELLO, 0, json.dumps({"pid": os.getpid(),
                                        "python": sys.version.split()[0]}).encode())
        stopping = False
        while True:
            now = time.monotonic()
            if self.closing and not stopping:
                stopping = True
                for command in self.commands.values():
                    command.stop("cancel", CANCEL_KILL_AFTER_S)
            if stopping and not self.commands and not self.kills:
                return
            wakes = [wake for wake in (command.next_wake()
                                       for command in self.commands.values()) if wake]
            if self.kills:
                wakes.append(now + GROUP_CHECK_S)
            timeout_s = max(0.0, min(wakes) - now) if wakes else None
            for key, _ in self.selector.select(timeout_s):
                if key.data is None:
                    self.read_requests()
                elif key.data == "wake":
                    try:
                        os.read(self.wake_read, 4096)
                    except BlockingIOError:
                        pass
                elif key.data[1] == RUN:
                    key.data[0].write_stdin()
                elif key.fd in key.data[0].pipes:
                    key.data[0].read(key.fd)
            self.timers(time.monotonic())


if __name__ == "__main__":
    Server(sys.argv[2] if len(sys.argv) > 2 else "-").run()
