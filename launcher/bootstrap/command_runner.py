"""CommandRunner: run commands and move files on one node; every command returns a Result.

`SSHRunner` (launcher/ssh/runner.py) reaches remote hosts; `LocalRunner` here runs on this
machine for the `process` provider. Running on many nodes gives a per-node map of results,
so partial failure is ordinary data.
"""
from __future__ import annotations

import abc
import codecs
import dataclasses
import os
import shutil
import signal
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Mapping

from launcher.errors import CommandError


@dataclasses.dataclass(frozen=True)
class CommandResult:
    host: str
    command: str
    exit_code: int
    stdout: str
    stderr: str
    duration_s: float
    signal_name: str | None = None  # set when the command was killed by a signal (known)

    @property
    def ok(self) -> bool:
        return self.exit_code == 0

    def tail(self, lines: int = 20) -> str:
        """The last lines of output (stderr after stdout), for error messages."""
        text = (self.stdout or "") + (self.stderr or "")
        return "\n".join(text.strip().splitlines()[-lines:])


# on_output(stream, line): stream is "stdout" or "stderr", line one line of output
# (decoded, undecodable bytes replaced, without its newline), called as it arrives.
OutputCallback = Callable[[str, str], None]
INTERRUPTED_EXIT_CODE = 130  # a command stopped because `cancel` was set
KILL_GRACE_S = 2.0  # after SIGTERM to a command's process group, before SIGKILL


class CommandRunner(abc.ABC):
    host: str

    @abc.abstractmethod
    def run(self, cmd: str, *, timeout_s: float | None = None,
            env: Mapping[str, str] | None = None, check: bool = False,
            log_path: str | None = None, on_output: OutputCallback | None = None,
            cancel: threading.Event | None = None) -> CommandResult:
        """Run a shell command non-interactively. With check=True a non-zero exit raises
        CommandError carrying the result. Output is appended to log_path when given, and
        handed line by line to on_output as it arrives. When `cancel` is set while the
        command runs, the command is stopped (its process group killed, or its SSH
        channel closed) and the result has exit code 130.

        (on_output and cancel were added later: callers pass them only when they use
        them, so runners written against the first interface keep working.)"""

    @abc.abstractmethod
    def put(self, local: str, remote: str, *, exclude: list[str] | None = None) -> int:
        """Copy a file or directory to the node; skip files that are unchanged.
        Returns the number of files copied."""

    @abc.abstractmethod
    def get(self, remote: str, local: str) -> int:
        """Copy a file or directory from the node. Returns the number of files copied."""

    @abc.abstractmethod
    def interactive_shell(self, cmd: str | None = None) -> int:
        """Attach the caller's terminal to a shell (or cmd) on the node; returns its exit code."""

    def wait_ready(self, timeout_s: float, cancel: threading.Event | None = None) -> None:
        """Block until commands can run (SSH up), or until `cancel` is set. Local runners
        are always ready."""

    def close(self) -> None:
        """Release connections."""


def run_on_many(runners: Mapping[str, CommandRunner], cmd: str, *,
                timeout_s: float | None = None, env: Mapping[str, str] | None = None,
                envs: Mapping[str, Mapping[str, str]] | None = None,
                on_output: Callable[[str, str, str], None] | None = None,
                cancel: threading.Event | None = None,
                max_parallel: int = 32) -> dict[str, CommandResult]:
    """Run `cmd` on every runner at once; returns {key: CommandResult}. Never raises for a
    failing node: a runner error becomes a result with exit_code -1 and the error text.

    envs[key] adds per-node variables over `env`; on_output(key, stream, line) streams
    every node's output as it arrives. A KeyboardInterrupt while waiting sets `cancel`
    (so every running command is stopped), drops the commands not yet started, and is
    re-raised once the running ones have ended (at most a few seconds)."""
    cancel = cancel if cancel is not None else threading.Event()

    def one(item):
        key, runner = item
        started = time.monotonic()
        extra = {}
        if on_output is not None:
            extra["on_output"] = lambda stream, line: on_output(key, stream, line)
        if cancel is not None:
            extra["cancel"] = cancel
        merged = {**(env or {}), **((envs or {}).get(key) or {})}
        try:
            return key, runner.run(cmd, timeout_s=timeout_s, env=merged, **extra)
        except Exception as error:  # noqa: BLE001 - partial failure is data here
            return key, CommandResult(getattr(runner, "host", key), cmd, -1, "", str(error),
                                      time.monotonic() - started)
    if not runners:
        return {}
    pool = ThreadPoolExecutor(max_workers=min(max_parallel, len(runners)),
                              thread_name_prefix="run-on-many")
    futures = [pool.submit(one, item) for item in runners.items()]
    return dict(wait_interruptibly(pool, futures, cancel))


CANCEL_WAIT_S = 5.0  # after an interrupt: how long to wait for running work to stop


def wait_interruptibly(pool: ThreadPoolExecutor, futures: list, cancel: threading.Event,
                       cancel_wait_s: float = CANCEL_WAIT_S) -> list:
    """The results of `futures` in order, then the pool is shut down. On a
    KeyboardInterrupt (Ctrl-C) while waiting: set `cancel`, drop work not yet started,
    give running work `cancel_wait_s` to notice, and re-raise."""
    import concurrent.futures as cf
    try:
        pending = set(futures)
        while pending:  # short waits: the main thread stays responsive to SIGINT
            _, pending = cf.wait(pending, timeout=0.2)
        pool.shutdown(wait=True)
        return [future.result() for future in futures]
    except KeyboardInterrupt:
        cancel.set()
        pool.shutdown(wait=False, cancel_futures=True)
        cf.wait([future for future in futures if not future.cancelled()],
                timeout=cancel_wait_s)
        raise


class LocalRunner(CommandRunner):
    """Runs commands on this machine in `workdir` with an explicit environment."""

    def __init__(self, workdir: str, env: Mapping[str, str] | None = None,
                 host: str = "localhost"):
        self.workdir = workdir
        self.host = host
        self.base_env = dict(env or {})

    def _env(self, env: Mapping[str, str] | None) -> dict[str, str]:
        merged = dict(os.environ)
        merged.update(self.base_env)
        merged.update(env or {})
        return merged

    def run(self, cmd, *, timeout_s=None, env=None, check=False, log_path=None,
            on_output=None, cancel=None):
        """bash -c CMD in its own session (process group). On timeout or cancel the whole
        group gets SIGTERM, then SIGKILL after KILL_GRACE_S: children end too."""
        started = time.monotonic()
        os.makedirs(self.workdir, exist_ok=True)
        process = subprocess.Popen(
            ["bash", "-c", cmd], cwd=self.workdir, env=self._env(env),
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            start_new_session=True)
        readers = [_PipeReader(process.stdout, "stdout", on_output),
                   _PipeReader(process.stderr, "stderr", on_output)]
        exit_code, note = _wait_or_stop(process, timeout_s, cancel)
        for reader in readers:  # a daemon started by the command may hold the pipe open
            reader.join(EOF_GRACE_S)
        signal_name = None
        if exit_code < 0:  # killed by a signal: report it like a shell does (128 + n)
            signal_name = _signal_name(-exit_code)
            note = note or f"\nkilled by signal {signal_name}"
            exit_code = 128 - exit_code
        result = CommandResult(self.host, cmd, exit_code, readers[0].text(),
                               readers[1].text() + note, time.monotonic() - started,
                               signal_name)
        if log_path:
            append_log(log_path, result)
        if check and not result.ok:
            raise CommandError(result)
        return result

    def _resolve(self, path: str) -> str:
        if path == "~":  # the node's directory is its home, as for `~/x`
            return self.workdir
        path = os.path.expanduser(path) if not path.startswith("~/") else \
            os.path.join(self.workdir, path[2:])
        return path if os.path.isabs(path) else os.path.join(self.workdir, path)

    def put(self, local, remote, *, exclude=None):
        from launcher.ssh.file_sync import copy_tree_local
        return copy_tree_local(local, self._resolve(remote), exclude or [])

    def get(self, remote, local):
        from launcher.ssh.file_sync import copy_tree_local
        return copy_tree_local(self._resolve(remote), local, [])

    def interactive_shell(self, cmd=None):
        shell = shutil.which("bash") or "/bin/sh"
        argv = [shell] if cmd is None else [shell, "-c", cmd]
        return subprocess.call(argv, cwd=self.workdir, env=self._env(None))


def append_log(log_path: str, result: CommandResult) -> None:
    """Append one command and its output to a node's log file (0600)."""
    os.makedirs(os.path.dirname(log_path) or ".", exist_ok=True)
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(fd, "a") as log:
        log.write(f"$ {result.command}\n")
        if result.stdout:
            log.write(result.stdout if result.stdout.endswith("\n") else result.stdout + "\n")
        if result.stderr:
            log.write(result.stderr if result.stderr.endswith("\n") else result.stderr + "\n")
        log.write(f"[exit {result.exit_code} after {result.duration_s:.2f} s]\n")


EOF_GRACE_S = 1.0  # after a command exits: how long to wait for output still in its pipes


class LineDecoder:
    """Bytes in, lines out: decodes incrementally as UTF-8 (undecodable bytes become
    U+FFFD, never an error) and hands each complete line to `on_line`."""

    def __init__(self, on_line: Callable[[str], None] | None):
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._on_line = on_line
        self._partial = ""
        self.parts: list[str] = []

    def feed(self, data: bytes, final: bool = False) -> None:
        text = self._decoder.decode(data, final)
        self.parts.append(text)
        if self._on_line is None:
            return
        lines = (self._partial + text).split("\n")
        self._partial = lines.pop()
        for line in lines:
            self._on_line(line)
        if final and self._partial:
            self._on_line(self._partial)
            self._partial = ""

    def text(self) -> str:
        return "".join(self.parts)


class _PipeReader:
    """Reads one pipe of a child process in a thread, decoding as it goes."""

    def __init__(self, pipe, stream: str, on_output: OutputCallback | None):
        self._pipe = pipe
        self._decoder = LineDecoder(
            None if on_output is None else lambda line: on_output(stream, line))
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            while True:
                data = os.read(self._pipe.fileno(), 65536)
                with self._lock:
                    self._decoder.feed(data, final=not data)
                if not data:
                    return
        except OSError:
            return
        finally:
            self._pipe.close()

    def join(self, timeout_s: float) -> None:
        self._thread.join(timeout_s)

    def text(self) -> str:
        with self._lock:
            return self._decoder.text()


def _wait_or_stop(process: subprocess.Popen, timeout_s: float | None,
                  cancel: threading.Event | None) -> tuple[int, str]:
    """Wait for the process; on timeout (exit 124) or cancel (exit 130) stop its
    process group. Returns (exit code, note for stderr)."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        wait_s = 0.1 if cancel is not None else None
        if deadline is not None:
            wait_s = max(0.0, min(wait_s or 0.1, deadline - time.monotonic()))
        try:
            return process.wait(wait_s), ""
        except subprocess.TimeoutExpired:
            pass
        if cancel is not None and cancel.is_set():
            stop_process_group(process)
            return INTERRUPTED_EXIT_CODE, "\ninterrupted (command stopped)"
        if deadline is not None and time.monotonic() >= deadline:
            stop_process_group(process)
            return 124, f"\ntimed out after {timeout_s:g} s"


def stop_process_group(process: subprocess.Popen, grace_s: float = KILL_GRACE_S) -> None:
    """SIGTERM to the process's group (it leads its own session), SIGKILL to the group
    if the leader has not exited after `grace_s`."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            pass
        try:
            process.wait(grace_s if sig == signal.SIGTERM else None)
            if sig == signal.SIGTERM:
                try:  # the leader is gone; its children of the group go too
                    os.killpg(process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            return
        except subprocess.TimeoutExpired:
            continue


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


ResultCallback = Callable[[CommandResult], None]
