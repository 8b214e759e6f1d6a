"""The per-host tag file of the `local` provider: the one source of truth for who uses a host.

Each on-prem host carries its own claim, like a cloud VM carries its tags: a small JSON
file `<state_dir>/tags.json` on the host itself (state_dir defaults to /tmp/corral-host;
on a real host it lives as long as that directory does — set `provider.state_dir` to a
persistent directory to keep claims across reboots). Whoever asks (the laptop's `corral
up`/`down`, the head's autoscaler) reads the same file over SSH, so there is no second
copy to drift (contrast ray-project/ray#43232).

Every change is a compare-and-swap run on the host under `flock` on `<state_dir>/.lock`:
the new content is written to a temporary file and renamed over the old one only if the
file still holds exactly what the caller read. Two launchers racing for one host: one
wins, the other sees a conflict and moves on.

Works through any CommandRunner (SSHRunner for hosts; LocalRunner in unit tests).
"""
from __future__ import annotations

import dataclasses
import json
import shlex
import time
from typing import Mapping

from launcher.command_runner import CommandRunner
from launcher.errors import CommandError

DEFAULT_STATE_DIR = "/tmp/corral-host"
TAGS_FILE = "tags.json"
STATE_CLAIMED = "running"
STATE_TERMINATED = "terminated"
LOCK_WAIT_S = 10
_CONFLICT_EXIT = 93
_NOT_OURS_EXIT = 94


@dataclasses.dataclass(frozen=True)
class HostTags:
    """What one host's tag file says. `raw` is the exact text read, for compare-and-swap."""
    raw: str
    claim: dict | None  # None: no file, or not a valid claim

    @property
    def cluster_name(self) -> str | None:
        name = (self.claim or {}).get("cluster_name")
        return name if isinstance(name, str) else None

    @property
    def terminated(self) -> bool:
        return (self.claim or {}).get("state") == STATE_TERMINATED

    @property
    def tags(self) -> dict[str, str]:
        """The node tags in the claim (as strings; anything malformed reads as none)."""
        found = (self.claim or {}).get("tags")
        if not isinstance(found, dict):
            return {}
        return {str(key): str(value) for key, value in found.items()}

    def is_free(self) -> bool:
        """No claim, a terminated one, or one that names no cluster."""
        return self.claim is None or self.terminated or not self.cluster_name

    def belongs_to(self, cluster_name: str) -> bool:
        return not self.is_free() and self.cluster_name == cluster_name


def make_claim(cluster_name: str, kind: str, node_type: str, tags: Mapping[str, str],
               claimed_by: str) -> dict:
    return {"cluster_name": cluster_name, "kind": kind, "node_type": node_type,
            "state": STATE_CLAIMED, "tags": dict(tags), "claimed_s": round(time.time(), 3),
            "claimed_by": claimed_by}


def encode(claim: dict) -> str:
    """The file's text: one line of JSON, no trailing newline (shell `$(cat)` strips it)."""
    return json.dumps(claim, sort_keys=True, separators=(",", ":"))


def parse(raw: str) -> HostTags:
    text = raw.rstrip("\n")
    if not text.strip():
        return HostTags("", None)
    try:
        claim = json.loads(text)
    except ValueError:
        return HostTags(text, None)
    return HostTags(text, claim if isinstance(claim, dict) else None)


def _path(state_dir: str) -> str:
    return f"{state_dir.rstrip('/')}/{TAGS_FILE}"


def _owned_check(folder: str) -> str:
    """Shell test: the state dir is a real directory of ours (not a symlink, not planted
    by another user of a shared /tmp)."""
    return f"[ -d {folder} ] && [ ! -L {folder} ] && [ -O {folder} ]"


def read_command(state_dir: str) -> str:
    folder = shlex.quote(state_dir.rstrip("/") or "/")
    return (f"if {_owned_check(folder)}; then cat {shlex.quote(_path(state_dir))} "
            "2>/dev/null; fi; true")


def read(runner: CommandRunner, state_dir: str, timeout_s: float = 30.0) -> HostTags:
    """The host's tag file. Raises whatever the runner raises when the host is unreachable,
    and CommandError if the shell itself fails."""
    result = runner.run(read_command(state_dir), timeout_s=timeout_s)
    if not result.ok:
        raise CommandError(result, f"could not read the tag file on {runner.host}")
    return parse(result.stdout)


def swap_command(state_dir: str, expected_raw: str, new_claim: dict | None) -> str:
    """Shell script: replace (or with new_claim=None, delete) the tag file if it still
    holds expected_raw. Exits 93 and prints the current content on conflict."""
    folder = shlex.quote(state_dir.rstrip("/") or "/")
    path = shlex.quote(_path(state_dir))
    if new_claim is None:
        write = f"rm -f {path}"
    else:
        write = (f"printf '%s' {shlex.quote(encode(new_claim))} > \"$tmp\" && "
                 f"mv -f \"$tmp\" {path}")
    return "\n".join([
        "umask 077",
        f"mkdir -p {folder} || exit 90",
        f"{_owned_check(folder)} || {{ echo 'not a directory owned by us: '{folder} >&2; "
        f"exit {_NOT_OURS_EXIT}; }}",
        "if command -v flock >/dev/null 2>&1; then",
        f"  exec 9>{folder}/.lock && flock -w {LOCK_WAIT_S} 9 || exit 91",
        "fi",
        f"current=$(cat {path} 2>/dev/null)",
        f"if [ \"$current\" != {shlex.quote(expected_raw)} ]; then",
        f"  printf '%s' \"$current\"; exit {_CONFLICT_EXIT}",
        "fi",
        f"tmp={folder}/.tags.$$.tmp",
        write,
    ])


def compare_and_swap(runner: CommandRunner, state_dir: str, expected: HostTags,
                     new_claim: dict | None, timeout_s: float = 30.0) -> HostTags | None:
    """Write new_claim if the file still holds `expected.raw`. Returns None on success,
    or the file's current HostTags when someone else changed it first."""
    result = runner.run(swap_command(state_dir, expected.raw, new_claim), timeout_s=timeout_s)
    if result.exit_code == _CONFLICT_EXIT:
        return parse(result.stdout)
    if not result.ok:
        raise CommandError(result, f"could not write the tag file on {runner.host}")
    return None
