"""The per-host tag file of the `local` provider: the one source of truth for who uses a host.

Each on-prem host carries its own claim, like a cloud VM carries its tags: a small JSON
file `<state_dir>/tags.json` on the host itself (state_dir defaults to /tmp/corral-host;
on a real host it lives as long as that directory does — set `provider.state_dir` to a
persistent directory to keep claims across reboots). Whoever asks (the laptop's `corral
up`/`down`, the head's autoscaler) reads the same file over SSH, so there is no second
copy to drift (contrast ray-project/ray#43232).

Every change runs on the host under `flock` on `<state_dir>/.lock` and replaces the file
atomically (a temporary file renamed over it), in ONE remote command each:
- claim: a compare-and-swap against "no file" (the usual case: a free host has none),
  retried against the exact text read when the file holds a free (terminated or
  garbage) claim. Two launchers racing for one host: one wins, the other sees a
  conflict and moves on.
- tag merge and release: a small Python script run on the host reads the claim, checks
  it is still the cluster's, and merges the tags into it (or deletes it). A host without
  python3 gets the same change as read + compare-and-swap (two commands, retried).

Works through any CommandRunner (SSHRunner for hosts; LocalRunner in unit tests).
"""
from __future__ import annotations

import dataclasses
import inspect
import json
import shlex
import time
from typing import Mapping

from launcher.bootstrap.command_runner import CommandRunner
from launcher.errors import CommandError, ProviderError

DEFAULT_STATE_DIR = "/tmp/corral-host"
TAGS_FILE = "tags.json"
STATE_CLAIMED = "running"
STATE_TERMINATED = "terminated"
LOCK_WAIT_S = 10
CAS_ATTEMPTS = 5
_CONFLICT_EXIT = 93
_NOT_OURS_EXIT = 94  # the state dir is not a real directory of ours
_NOT_CLAIMED_EXIT = 95  # the host is not (or no longer) the cluster's
_NO_PYTHON_EXIT = 96


def claim_is_free(claim) -> bool:
    """No claim, a terminated one, or one that names no cluster. (Also run on the host by
    the update script, so it uses nothing but builtins.)"""
    if not isinstance(claim, dict) or claim.get("state") == "terminated":
        return True
    name = claim.get("cluster_name")
    return not (isinstance(name, str) and name)


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
        return claim_is_free(self.claim)

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


def _locked_prelude(folder: str) -> list[str]:
    """Shell lines: make the (quoted) state dir if needed, refuse one that is not ours, and
    take the host-side lock for the rest of the script."""
    return [
        "umask 077",
        f"mkdir -p {folder} || exit 90",
        f"{_owned_check(folder)} || {{ echo 'not a directory owned by us: '{folder} >&2; "
        f"exit {_NOT_OURS_EXIT}; }}",
        "if command -v flock >/dev/null 2>&1; then",
        f"  exec 9>{folder}/.lock && flock -w {LOCK_WAIT_S} 9 || exit 91",
        "fi",
    ]


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
        *_locked_prelude(folder),
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


def claim(runner: CommandRunner, state_dir: str, new_claim: dict,
          timeout_s: float = 30.0) -> HostTags | None:
    """Claim the host in one command when it has no tag file (a free host usually has
    none); when it holds a free claim (terminated, garbage), swap against that exact text.
    Returns None when claimed, or the current HostTags when the host is taken."""
    seen = HostTags("", None)
    for _ in range(CAS_ATTEMPTS):
        conflict = compare_and_swap(runner, state_dir, seen, new_claim, timeout_s)
        if conflict is None or not conflict.is_free():
            return conflict
        seen = conflict
    raise ProviderError(f"the tag file on {runner.host} kept changing; gave up after "
                        f"{CAS_ATTEMPTS} attempts")


def merged_claim(current: dict, updates: dict | None) -> dict | None:
    """`current` with `updates` merged into its tags (None: the claim is deleted). Used
    here and, shipped as source, by the host-side update script: one merge rule."""
    if updates is None:
        return None
    old = current.get("tags") if isinstance(current.get("tags"), dict) else {}
    return {**current, "tags": {**{str(k): str(v) for k, v in old.items()}, **updates}}


def _host_update():  # runs on the host (python3 -I -S): argv = path, cluster, tags JSON
    import os
    import sys
    path, cluster_name, updates = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    try:
        with open(path) as file:
            current = json.loads(file.read())
    except (OSError, ValueError):
        current = None
    if claim_is_free(current) or current.get("cluster_name") != cluster_name:
        sys.exit(95)
    new = merged_claim(current, updates)
    if new is None:  # release
        os.remove(path)
        return
    temporary = f"{path}.{os.getpid()}.tmp"
    with open(temporary, "w") as file:
        file.write(encode(new))
    os.replace(temporary, path)
    sys.stdout.write(encode(new))


def _updates(tags: Mapping[str, str] | None) -> dict | None:
    return None if tags is None else {str(key): str(value) for key, value in tags.items()}


def update_command(state_dir: str, cluster_name: str, tags: Mapping[str, str] | None,
                   known: HostTags | None = None) -> str:
    """Shell script: under the lock, merge `tags` into the cluster's claim (None: delete
    the claim). Fast path, plain shell: when the file still holds `known` (what the caller
    last read or wrote, if it is the cluster's), write the merge computed here. Otherwise
    the merge is done by python3 on the host, which prints the new content. Exits 95
    when the host is not the cluster's, 96 when it has no python3 (nothing changed)."""
    folder = shlex.quote(state_dir.rstrip("/") or "/")
    path = shlex.quote(_path(state_dir))
    updates = _updates(tags)
    script = "\n".join(["import json", *(inspect.getsource(function) for function in
                                          (claim_is_free, encode, merged_claim, _host_update)),
                        "_host_update()"])
    lines = [*_locked_prelude(folder)]
    if known is not None and known.belongs_to(cluster_name):
        new = merged_claim(dict(known.claim), updates)
        write = f"rm -f {path}" if new is None else (
            f"tmp={folder}/.tags.$$.tmp; printf '%s' {shlex.quote(encode(new))} > \"$tmp\" "
            f"&& mv -f \"$tmp\" {path}")
        lines += [f"if [ \"$(cat {path} 2>/dev/null)\" = {shlex.quote(known.raw)} ]; then",
                  f"  {write}; exit $?",
                  "fi"]
    return "\n".join([
        *lines,
        f"command -v python3 >/dev/null 2>&1 || exit {_NO_PYTHON_EXIT}",
        f"exec python3 -I -S -c {shlex.quote(script)} {path} {shlex.quote(cluster_name)} "
        f"{shlex.quote(json.dumps(updates))}",
    ])


def update_claim(runner: CommandRunner, state_dir: str, cluster_name: str,
                 tags: Mapping[str, str] | None, timeout_s: float = 30.0,
                 known: HostTags | None = None) -> HostTags | None:
    """Merge `tags` into the host's claim (tags=None: release the host), only if the host
    is `cluster_name`'s. One command (see update_command; `known`: what the caller last
    saw in the file, for the fast path); read + compare-and-swap, retried, on a host
    without python3. Returns the file's new content (empty after a release), or None
    when the host is not (or no longer) the cluster's."""
    updates = _updates(tags)
    result = runner.run(update_command(state_dir, cluster_name, tags, known),
                        timeout_s=timeout_s)
    if result.exit_code == _NOT_CLAIMED_EXIT:
        return None
    if result.exit_code == _NO_PYTHON_EXIT:
        return _update_by_swap(runner, state_dir, cluster_name, updates, timeout_s)
    if not result.ok:
        raise CommandError(result, f"could not update the tag file on {runner.host}")
    if updates is None:
        return HostTags("", None)
    if result.stdout.strip():  # the host merged: it printed the new content
        return parse(result.stdout)
    new = merged_claim(dict(known.claim), updates)  # the fast path wrote our merge
    return HostTags(encode(new), new)


def _update_by_swap(runner: CommandRunner, state_dir: str, cluster_name: str,
                    updates: dict | None, timeout_s: float) -> HostTags | None:
    tags = read(runner, state_dir, timeout_s)
    for _ in range(CAS_ATTEMPTS):
        if not tags.belongs_to(cluster_name):
            return None
        new = merged_claim(dict(tags.claim), updates)
        conflict = compare_and_swap(runner, state_dir, tags, new, timeout_s)
        if conflict is None:
            return HostTags("", None) if new is None else HostTags(encode(new), new)
        tags = conflict
    raise ProviderError(f"the tag file on {runner.host} kept changing; gave up after "
                        f"{CAS_ATTEMPTS} attempts")
