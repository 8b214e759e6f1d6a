"""Checks that JSON Schema cannot express: cross references between keys, worker counts
that cannot add up, files that must exist. They run on the merged document even when the
schema found problems, and skip any value that is not of the right type (the schema has
already reported it), so one pass reports everything.
"""
from __future__ import annotations

import os
import posixpath
from pathlib import Path
from typing import Any

from launcher.config.defaults import node_type_max_workers
from launcher.config.schema import did_you_mean

Problem = tuple[tuple, str]


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def check_document(document: dict, base_dir: Path | None, user_keys: set[str],
                   check_local_files: bool = True) -> tuple[list[Problem], list[Problem]]:
    """Returns (problems, notices), each as (path, message)."""
    problems: list[Problem] = []
    notices: list[Problem] = []
    node_types = document.get("available_node_types")
    head = document.get("head_node_type")
    if isinstance(node_types, dict) and node_types and isinstance(head, str) \
            and head not in node_types:
        problems.append((("head_node_type",),
                         f"{head!r} is not one of the node types in available_node_types "
                         f"({', '.join(node_types)})" + did_you_mean(head, list(node_types))))
    if isinstance(node_types, dict):
        problems += _check_worker_counts(document, node_types, head, user_keys)
    provider = document.get("provider")
    if isinstance(provider, dict) and provider.get("type") == "local":
        found, notes = _check_local(document, provider, check_local_files, base_dir)
        problems += found
        notices += notes
    if isinstance(provider, dict) and provider.get("type") != "process" and check_local_files:
        found, notes = _check_private_key(document, provider.get("type"), base_dir)
        problems += found
        notices += notes
    if check_local_files:
        problems += _check_file_mounts(document.get("file_mounts"), base_dir)
    found, notes = _check_mount_targets(
        document.get("file_mounts"),
        provider.get("type") if isinstance(provider, dict) else None)
    problems += found
    notices += notes
    return problems, notices


def _check_worker_counts(document: dict, node_types: dict, head: Any,
                         user_keys: set[str]) -> list[Problem]:
    problems: list[Problem] = []
    global_max = document.get("max_workers")
    total_min = 0
    for name, spec in node_types.items():
        if not isinstance(spec, dict):
            continue
        low = spec.get("min_workers", 0)
        high = node_type_max_workers(name, spec, head, global_max)
        if _is_count(low):
            total_min += low
        if _is_count(low) and _is_count(high) and low > high:
            why = "" if "max_workers" in spec else (
                " (the head type's default)" if name == head
                else " (the cluster's max_workers, as this type sets none)")
            problems.append((("available_node_types", name, "min_workers"),
                             f"min_workers {low} is more than max_workers {high}{why}"))
    if _is_count(global_max) and total_min > global_max:
        where = "" if "max_workers" in user_keys else " (the default)"
        problems.append((("max_workers",),
                         f"the node types' min_workers add up to {total_min}, more than "
                         f"max_workers {global_max}{where}; raise max_workers or lower "
                         f"min_workers"))
    return problems


def _check_local(document: dict, provider: dict, check_local_files: bool,
                 base_dir: Path | None) -> tuple[list[Problem], list[Problem]]:
    problems: list[Problem] = []
    notices: list[Problem] = []
    auth = document.get("auth") if isinstance(document.get("auth"), dict) else {}
    if check_local_files and not auth.get("ssh_private_key"):
        # ssh_user and ssh_private_key may be left to ~/.ssh/config, ssh-agent and ssh's
        # defaults (launcher.ssh.user_config); the head has none of those.
        notices.append((("auth", "ssh_private_key"),
                        "no auth.ssh_private_key: this machine logs in with ~/.ssh/config "
                        "and ssh-agent keys; the head gets the head host's first "
                        "IdentityFile (or ~/.ssh/id_*) without a passphrase, and no key "
                        "if there is none (keys only in ssh-agent), so it cannot restart "
                        "or add workers itself; name a key file to be sure"))
    head_ip = provider.get("head_ip")
    worker_ips = provider.get("worker_ips")
    if isinstance(worker_ips, list):
        seen: dict[str, int] = {}
        for index, host in enumerate(worker_ips):
            if not isinstance(host, str):
                continue
            if host == head_ip:
                problems.append((("provider", "worker_ips", index),
                                 f"{host!r} is the head_ip; a host is either the head or "
                                 f"a worker"))
            elif host in seen:
                problems.append((("provider", "worker_ips", index),
                                 f"{host!r} is listed twice (also worker_ips[{seen[host]}])"))
            else:
                seen[host] = index
        notices += _local_capacity_notices(document, len(worker_ips))
    return problems, notices


def _check_private_key(document: dict, provider_type: str | None,
                       base_dir: Path | None) -> tuple[list[Problem], list[Problem]]:
    """A key file the user named must be there when SSH is used: a missing one is an
    error now rather than every host "unreachable" later. One that only ssh-agent can
    unlock is worth a notice."""
    auth = document.get("auth")
    key = auth.get("ssh_private_key") if isinstance(auth, dict) else None
    if not isinstance(key, str) or not key:
        return [], []  # none named: ssh-agent, ~/.ssh/config, or a key the cloud makes
    path = resolve_local_path(key, base_dir)
    instead = ("to log in with ssh-agent and ~/.ssh/config keys" if provider_type == "local"
               else "to let corral make a key for this cluster")
    if not path.exists():
        return [(("auth", "ssh_private_key"),
                 f"no such file: {path}; fix the path, or remove auth.ssh_private_key "
                 f"{instead}")], []
    if path.is_dir():
        return [(("auth", "ssh_private_key"), f"{path} is a directory; name a private key "
                                              f"file")], []
    from launcher.ssh.keyfile import read_key_facts
    try:
        facts = read_key_facts(str(path))
    except OSError as error:
        return [(("auth", "ssh_private_key"), f"cannot read {path}: {error.strerror}")], []
    except ValueError:
        if _is_public_key(path):
            return [(("auth", "ssh_private_key"),
                     f"{path} is a public key; name its private half (the file without "
                     f".pub)")], []
        return [], []  # not a format we know: connecting says so, with paramiko's reason
    if facts.encrypted:
        return [], [(("auth", "ssh_private_key"),
                     f"{path} is passphrase-protected: corral uses it from ssh-agent, so "
                     f"run `ssh-add {path}` before `corral up`")]
    return [], []


def _is_public_key(path: Path) -> bool:
    try:
        with open(path, "rb") as handle:
            start = handle.read(64)
    except OSError:
        return False
    return start.startswith((b"ssh-", b"ecdsa-sha2-", b"sk-ssh-", b"sk-ecdsa-"))


def _local_capacity_notices(document: dict, host_count: int) -> list[Problem]:
    global_max = document.get("max_workers")
    if _is_count(global_max) and global_max > host_count:
        return [(("max_workers",),
                 f"max_workers {global_max} is more than the {host_count} hosts in "
                 f"worker_ips; at most {host_count} workers can run")]
    return []


def _check_file_mounts(file_mounts: Any, base_dir: Path | None) -> list[Problem]:
    if not isinstance(file_mounts, dict):
        return []
    problems: list[Problem] = []
    for remote, local in file_mounts.items():
        if isinstance(local, str) and local and not resolve_local_path(local, base_dir).exists():
            problems.append((("file_mounts", remote),
                             f"local path {local!r} does not exist "
                             f"(looked for {resolve_local_path(local, base_dir)})"))
    return problems


def mount_target_place(remote: str) -> str:
    """The target as the runners read it: `~` and `~/x` are the node's directory (process
    provider) or the login's home (SSH), the same as a relative `x`; what remains is
    either absolute or relative to that directory (launcher.bootstrap.command_runner and
    launcher.ssh.file_sync.remote_path read targets the same way)."""
    if remote in ("~", "~/"):
        return "."
    return remote[2:] if remote.startswith("~/") else remote


def mount_target_escape(remote: str) -> str | None:
    """Why a file_mounts target would write outside the directory it is relative to (the
    node's directory on the process provider, the login's home over SSH), or None when
    it stays inside (or is absolute, which names its place outright). `~user/...`
    (another account's home) is refused too."""
    if remote.startswith("~") and remote != "~" and not remote.startswith("~/"):
        return (f"{remote!r} names another account's home directory; write ~/... for the "
                f"login's own home, or an absolute path")
    place = mount_target_place(remote)
    if posixpath.isabs(place):
        return None
    normalised = posixpath.normpath(place)
    if normalised == ".." or normalised.startswith("../"):
        return (f"{remote!r} leads outside the node's directory (the home directory over "
                f"SSH): it normalises to {normalised!r}; a relative target must stay "
                f"inside it")
    return None


def _check_mount_targets(file_mounts: Any, provider_type: str | None
                         ) -> tuple[list[Problem], list[Problem]]:
    """Targets that climb out with `..` are errors; on the process provider an absolute
    target is a path on this machine outside every node's directory, worth a notice
    (`down` cannot remove it with the node, and lists it)."""
    if not isinstance(file_mounts, dict):
        return [], []
    problems: list[Problem] = []
    notices: list[Problem] = []
    for remote in file_mounts:
        if not isinstance(remote, str):
            continue
        escape = mount_target_escape(remote)
        if escape:
            problems.append((("file_mounts", remote), escape))
        elif provider_type == "process" and posixpath.isabs(mount_target_place(remote)):
            notices.append((("file_mounts", remote),
                            f"{remote!r} is absolute: on the process provider it is that "
                            f"path on this machine, outside the node's directory, and "
                            f"`corral down` leaves it (a relative target lives and goes "
                            f"with the node)"))
    return problems, notices


def resolve_local_path(path: str, base_dir: Path | None) -> Path:
    """~ expanded; a relative path is relative to the YAML file's directory (or the
    current directory for a document that came from no file)."""
    expanded = Path(os.path.expanduser(path))
    if expanded.is_absolute():
        return expanded
    return ((base_dir or Path.cwd()) / expanded).resolve()
