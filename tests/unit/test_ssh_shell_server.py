"""The command server (launcher/ssh/shell_server.py) and the line that starts it, run here
through a local shell with pipes in place of the SSH channel: framing, stdin, exit codes
and signals, refusing commands once an rc file changed, stopping what runs when the
channel closes, bash functions of the rc carried over."""
from __future__ import annotations

import glob
import json
import os
import select
import shutil
import struct
import subprocess

import pytest

from launcher.ssh import shell as ssh_shell
from launcher.ssh import shell_server as wire
from tests.helpers import alive, wait_for


class LocalServer:
    """The server started by `shell -c <startup line>`, as sshd would start it."""

    def __init__(self, shell: list[str], env: dict[str, str], prelude: str = "",
                 python: str | None = None):
        source = ssh_shell.server_source()
        line = ssh_shell.startup_line("t3st", len(source))
        if python is not None:  # this interpreter instead of the one the line picks
            line = line[line.index("exec "):].replace('"$__corral_py"', python)
        self.process = subprocess.Popen([*shell, prelude + line], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        env=env)
        self.process.stdin.write(source)
        self.process.stdin.flush()
        self.frames = wire.FrameReader()
        self.backlog: dict[int, list] = {}
        marker = b"@@corral-shell t3st@@\n"
        seen = b""
        while marker not in seen:
            data = self._read()
            assert data, self.process.stderr.read().decode()
            seen += data
        hello = self.frames.feed(seen.split(marker, 1)[1]) or self.next_frames()
        assert hello[0][0] == wire.HELLO

    def _read(self, timeout_s: float = 20.0) -> bytes:
        ready, _, _ = select.select([self.process.stdout], [], [], timeout_s)
        assert ready, "no output from the server"
        return os.read(self.process.stdout.fileno(), 65536)

    def next_frames(self):
        while True:
            frames = self.frames.feed(self._read())
            if frames:
                return frames

    def run(self, request_id: int, command: str, stdin: bytes = b"", **spec) -> None:
        body = json.dumps({"command": command, "env": {}, "timeout_s": None,
                           **spec}).encode()
        self.process.stdin.write(wire.encode(wire.RUN, request_id,
                                             struct.pack(">I", len(body)) + body + stdin))
        self.process.stdin.flush()

    def events(self, request_id: int, until=(wire.EXIT, wire.REFUSED)) -> list:
        """The frames (kind, payload) of one request, up to one of kind `until`; other
        requests' frames wait for their turn."""
        got = self.backlog.setdefault(request_id, [])
        while not any(kind in until for kind, _ in got):
            for kind, frame_id, payload in self.next_frames():
                self.backlog.setdefault(frame_id, []).append((kind, payload))
        return got

    def close(self) -> int:
        self.process.stdin.close()
        try:
            return self.process.wait(20)
        finally:
            self.process.stdout.close()
            self.process.stderr.close()


@pytest.fixture
def home(tmp_path):
    (tmp_path / ".bashrc").write_text("# rc\n")
    return tmp_path


def env_for(home) -> dict[str, str]:
    return {"HOME": str(home), "PATH": os.environ["PATH"], "SSH_CLIENT": "198.18.0.1 1 22"}


@pytest.mark.timeout(60)
def test_commands_stdin_exit_codes_and_signals(home):
    server = LocalServer(["sh", "-c"], env_for(home))
    try:
        server.run(1, "cat | wc -c; echo oops >&2; exit 3", stdin=b"x" * 300_000)
        server.run(2, "kill -TERM $$")
        server.run(3, 'echo "$A|$B"', env={"A": "a b"}, expand=[["B", "$HOME/x"]])
        events = server.events(1)
        assert events[0][0] == wire.STARTED
        assert (wire.STDOUT, b"300000\n") in events and (wire.STDERR, b"oops\n") in events
        assert json.loads(events[-1][1]) == {"code": 3, "signal": None,
                                             "signal_name": None, "stopped": None}
        killed = json.loads(server.events(2)[-1][1])
        assert (killed["signal"], killed["signal_name"]) == (15, "SIGTERM")
        assert (wire.STDOUT, f"a b|{home}/x\n".encode()) in server.events(3)
        server.run(4, "sleep 300", timeout_s=0.5)
        assert json.loads(server.events(4)[-1][1])["stopped"] == "timeout"
    finally:
        assert server.close() == 0


@pytest.mark.timeout(60)
def test_a_changed_rc_file_refuses_new_commands(home):
    server = LocalServer(["sh", "-c"], env_for(home))
    try:
        server.run(1, "echo one")
        assert server.events(1)[-1][0] == wire.EXIT
        (home / ".bashrc").write_text("# rc\nexport LATER=1\n")
        server.run(2, "echo two")
        assert server.events(2) == [(wire.REFUSED, b'{"reason": "rc files changed"}')]
    finally:
        server.close()


@pytest.mark.timeout(60)
def test_closing_the_channel_stops_running_commands_and_ends_the_server(home, tmp_path):
    server = LocalServer(["sh", "-c"], env_for(home))
    pid_file = tmp_path / "child.pid"
    server.run(1, f"sleep 300 & echo $! > {pid_file}; wait")
    started = server.events(1, until=(wire.STARTED,))
    group = json.loads(started[0][1])["pid"]
    child = int(wait_for(lambda: pid_file.exists() and pid_file.read_text().strip(),
                         what="the command's child"))
    try:
        assert server.close() == 0
        wait_for(lambda: not alive(child) and not alive(group),
                 what="the command's group to be stopped")
    finally:
        for pid in (child, group):
            if alive(pid):
                os.kill(pid, 9)


@pytest.mark.timeout(60)
def test_bash_functions_of_the_rc_reach_commands_and_nested_bash_skips_the_rc(home):
    (home / ".bashrc").write_text('echo x >> "$HOME/rc-runs"\n')
    prelude = 'rc_function() { echo "from the rc"; }; '
    server = LocalServer(["bash", "-c"], env_for(home), prelude=prelude)
    try:
        server.run(1, "rc_function; bash -c rc_function")
        events = server.events(1)
        output = b"".join(payload for kind, payload in events if kind == wire.STDOUT)
        assert output == b"from the rc\nfrom the rc\n"
        # The rc ran once, in the shell that started the server: SHLVL keeps the
        # commands' `bash -c` off it.
        assert (home / "rc-runs").read_text() == "x\n"
    finally:
        server.close()


def oldest_python() -> str | None:
    """The oldest Python 3 (>= 3.6) found here that runs, for the compatibility test."""
    candidates = [shutil.which(f"python3.{minor}") for minor in range(6, 11)]
    candidates += sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.*/bin/python3")),
                         key=lambda path: [int(part) for part in
                                           path.split("/versions/")[1].split("/")[0]
                                           .split(".") if part.isdigit()])
    for path in candidates:
        if path and subprocess.run([path, "-c", "import sys; assert sys.version_info >= "
                                    "(3, 6)"], capture_output=True).returncode == 0:
            return path
    return None


@pytest.mark.timeout(60)
def test_the_server_runs_on_an_old_python3(home):
    """Nodes bring their own python3: the server keeps to Python 3.6's language."""
    python = oldest_python()
    if python is None:
        pytest.skip("no Python 3.6-3.10 interpreter on this machine")
    server = LocalServer(["sh", "-c"], env_for(home), python=python)
    try:
        server.run(1, "echo $((6 * 7)); cat", stdin=b"in")
        events = server.events(1)
        assert b"".join(payload for kind, payload in events
                        if kind == wire.STDOUT) == b"42\nin"
        assert json.loads(events[-1][1])["code"] == 0
    finally:
        assert server.close() == 0


def test_the_startup_line_parses_in_a_posix_shell():
    line = ssh_shell.startup_line("n0nce", 123)
    assert line.endswith("corral-shell n0nce")
    checked = subprocess.run(["sh", "-n", "-c", line], capture_output=True, text=True,
                             timeout=10)
    assert checked.returncode == 0, checked.stderr
    frames = wire.FrameReader()
    split = wire.encode(wire.STDOUT, 8, b"x")
    assert frames.feed(wire.encode(wire.EXIT, 7, b"{}") + split[:5]) == [(wire.EXIT, 7, b"{}")]
    assert frames.feed(split[5:]) == [(wire.STDOUT, 8, b"x")]
