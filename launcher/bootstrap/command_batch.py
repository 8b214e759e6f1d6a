"""Run the commands of one bootstrap stage in ONE remote shell, and still know which
command failed, its exit code and its own output.

Each command runs in its own subshell (so a `cd`, `export` or `exit` in one command does
not leak into the next, exactly as if each had its own SSH session). Before each command
the script prints a marker line with a per-batch nonce on stdout and stderr; after a
failing command it prints the index and exit code and stops. The output is split back
per command for the node log.
"""
from __future__ import annotations

import dataclasses
import re
import secrets
import time
from typing import Mapping, Sequence

from launcher.bootstrap.command_runner import CommandResult, CommandRunner, append_log


@dataclasses.dataclass(frozen=True)
class BatchFailure:
    """The command of a batch that failed (or, if the batch broke off, the last one
    started), with its exit code and its own output."""
    index: int
    command: str
    exit_code: int
    output_tail: str


def batch_script(commands: Sequence[str], nonce: str, prelude: str = "") -> str:
    lines = []
    if prelude:  # not a step: its failure is reported as the first command's
        lines.append(f"{{ {prelude}\n}} || exit $?")
    for index, command in enumerate(commands):
        marker = f"@@corral-{nonce}@@ step {index}"
        lines.append(f"printf '\\n%s %s\\n' '{marker}' \"$EPOCHREALTIME\"")
        lines.append(f"printf '\\n%s\\n' '{marker}' >&2")
        lines.append(f"(\n{command}\n)")
        lines.append("__corral_rc=$?")
        lines.append(f"if [ $__corral_rc -ne 0 ]; then printf '\\n%s %s\\n' "
                     f"'@@corral-{nonce}@@ failed {index}' \"$__corral_rc\" >&2; "
                     f"exit $__corral_rc; fi")
    lines.append(f"printf '\\n%s %s\\n' '@@corral-{nonce}@@ done' \"$EPOCHREALTIME\"")
    return "\n".join(lines) + "\n"


def _split(text: str, nonce: str) -> tuple[dict[int, str], dict[int, float], tuple | None,
                                            float | None]:
    """Output per step, the start time of each step (when the shell knows
    $EPOCHREALTIME), the (index, exit code) of a failure, and the end time."""
    pattern = re.compile(r"\n?@@corral-" + re.escape(nonce)
                         + r"@@ (step (\d+)|failed (\d+) (\d+)|done)(?: ([0-9.]*))?\n")
    per_step: dict[int, list[str]] = {}
    started: dict[int, float] = {}
    failure, done_at, current, position = None, None, None, 0
    for match in pattern.finditer(text):
        if current is not None:
            per_step.setdefault(current, []).append(text[position:match.start()])
        position = match.end()
        if match.group(2) is not None:
            current = int(match.group(2))
            if match.group(5):
                started[current] = float(match.group(5))
        elif match.group(3) is not None:
            failure, current = (int(match.group(3)), int(match.group(4))), None
        else:
            current = None
            done_at = float(match.group(5)) if match.group(5) else None
    if current is not None:
        per_step.setdefault(current, []).append(text[position:])
    return ({index: "".join(parts) for index, parts in per_step.items()}, started, failure,
            done_at)


def run_batch(runner: CommandRunner, commands: Sequence[str], *,
              env: Mapping[str, str], log_path: str | None = None,
              timeout_s: float | None = None, prelude: str = "",
              cancel=None) -> BatchFailure | None:
    """Run `commands` in order in one shell (after `prelude`, a preparation that is not
    a step of its own); None when all succeeded."""
    if not commands:
        return None
    nonce = secrets.token_hex(6)
    begun = time.monotonic()
    extra = {} if cancel is None else {"cancel": cancel}  # (older runners lack it)
    result = runner.run(batch_script(commands, nonce, prelude), timeout_s=timeout_s, env=env,
                        **extra)
    elapsed_s = time.monotonic() - begun
    stdout, started, _, done_at = _split(result.stdout or "", nonce)
    stderr, _, failure, _ = _split(result.stderr or "", nonce)
    last_started = max([*stdout, *stderr], default=0)
    if failure is None and not result.ok:
        # The shell itself broke off (timeout, lost connection): blame the last command.
        failure = (last_started, result.exit_code)
    if log_path:
        _log_steps(log_path, runner, commands, stdout, stderr, started, done_at, failure,
                   elapsed_s, result)
    if failure is None:
        return None
    index, exit_code = failure
    output = stdout.get(index, "") + stderr.get(index, "")
    if index not in stdout and index not in stderr:
        output = (result.stdout or "") + (result.stderr or "")
    tail = "\n".join(output.strip().splitlines()[-10:])
    return BatchFailure(index, commands[index], exit_code, tail)


def _log_steps(log_path, runner, commands, stdout, stderr, started, done_at, failure,
               elapsed_s, result) -> None:
    ran = sorted(set(stdout) | set(stderr)) or [0]
    for position, index in enumerate(ran):
        end = started.get(ran[position + 1]) if position + 1 < len(ran) else done_at
        duration_s = (end - started[index]) if end and index in started else \
            (elapsed_s if len(ran) == 1 else 0.0)
        exit_code = failure[1] if failure and failure[0] == index else 0
        out, err = stdout.get(index, ""), stderr.get(index, "")
        if not stdout and not stderr:
            out, err = result.stdout or "", result.stderr or ""
        append_log(log_path, CommandResult(getattr(runner, "host", "?"), commands[index],
                                           exit_code, out.strip("\n"), err.strip("\n"),
                                           max(duration_s, 0.0)))
