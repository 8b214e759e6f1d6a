"""CommandRunner: run commands and move files on one node; every command returns a Result.

`SSHRunner` (launcher/ssh_runner.py) reaches remote hosts; `LocalRunner` here runs on this
machine for the `process` provider. Running on many nodes gives a per-node map of results,
so partial failure is ordinary data.
"""
from __future__ import annotations

import abc
import dataclasses
import os
import shutil
import subprocess
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

    @property
    def ok(self) -> bool:
        return self.exit_code == 0

    def tail(self, lines: int = 20) -> str:
        """The last lines of output (stderr after stdout), for error messages."""
        text = (self.stdout or "") + (self.stderr or "")
        return "\n".join(text.strip().splitlines()[-lines:])


class CommandRunner(abc.ABC):
    host: str

    @abc.abstractmethod
    def run(self, cmd: str, *, timeout_s: float | None = None,
            env: Mapping[str, str] | None = None, check: bool = False,
            log_path: str | None = None) -> CommandResult:
        """Run a shell command non-interactively. With check=True a non-zero exit raises
        CommandError carrying the result. Output is appended to log_path when given."""

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

    def wait_ready(self, timeout_s: float) -> None:
        """Block until commands can run (SSH up). Local runners are always ready."""

    def close(self) -> None:
        """Release connections."""


def run_on_many(runners: Mapping[str, CommandRunner], cmd: str, *,
                timeout_s: float | None = None, env: Mapping[str, str] | None = None,
                max_parallel: int = 32) -> dict[str, CommandResult]:
    """Run `cmd` on every runner at once; returns {key: CommandResult}. Never raises for a
    failing node: a runner error becomes a result with exit_code -1 and the error text."""
    def one(item):
        key, runner = item
        started = time.monotonic()
        try:
            return key, runner.run(cmd, timeout_s=timeout_s, env=env)
        except Exception as error:  # noqa: BLE001 - partial failure is data here
            return key, CommandResult(getattr(runner, "host", key), cmd, -1, "", str(error),
                                      time.monotonic() - started)
    if not runners:
        return {}
    with ThreadPoolExecutor(max_workers=min(max_parallel, len(runners))) as pool:
        return dict(pool.map(one, runners.items()))


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

    def run(self, cmd, *, timeout_s=None, env=None, check=False, log_path=None):
        started = time.monotonic()
        os.makedirs(self.workdir, exist_ok=True)
        try:
            completed = subprocess.run(
                ["bash", "-c", cmd], cwd=self.workdir, env=self._env(env),
                stdin=subprocess.DEVNULL, capture_output=True, text=True,
                timeout=timeout_s, start_new_session=True)
            exit_code, stdout, stderr = completed.returncode, completed.stdout, completed.stderr
        except subprocess.TimeoutExpired as expired:
            exit_code = 124
            stdout = _text(expired.stdout)
            stderr = _text(expired.stderr) + f"\ntimed out after {timeout_s} s"
        result = CommandResult(self.host, cmd, exit_code, stdout, stderr,
                               time.monotonic() - started)
        if log_path:
            append_log(log_path, result)
        if check and not result.ok:
            raise CommandError(result)
        return result

    def _resolve(self, path: str) -> str:
        path = os.path.expanduser(path) if not path.startswith("~/") else \
            os.path.join(self.workdir, path[2:])
        return path if os.path.isabs(path) else os.path.join(self.workdir, path)

    def put(self, local, remote, *, exclude=None):
        from launcher.file_sync import copy_tree_local
        return copy_tree_local(local, self._resolve(remote), exclude or [])

    def get(self, remote, local):
        from launcher.file_sync import copy_tree_local
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


def _text(data) -> str:
    if data is None:
        return ""
    return data.decode(errors="replace") if isinstance(data, bytes) else data


ResultCallback = Callable[[CommandResult], None]
