"""Loading the cluster YAML: read it, map Ray's aliases, fill defaults, validate against
schemas/, check what a schema cannot, and produce the frozen ClusterConfig.

    load_config(path) -> ClusterConfig
    load_config_with_notices(path) -> (ClusterConfig, [notice])
    load_config_text(text, source="<string>") -> ClusterConfig
    load_normalised_config(path) -> ClusterConfig   (the head's copy, from to_dict())
    normalize(document, source=None) -> ClusterConfig

Every problem found is collected and raised together as ConfigErrors, one ConfigError
(path, line, message, source) per problem. Notices are things worth telling the user that
are not errors (an alias key was read as ours); the CLI prints them.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from launcher.config.checks import check_document, resolve_local_path
from launcher.config.defaults import (apply_aliases, defaults_for, drop_ray_no_ops,
                                      merge_under, node_type_max_workers, synthesise_local)
from launcher.config.limits import read_config_bytes
from launcher.config.locate import LineMap, format_path, parse_yaml
from launcher.config.model import AuthConfig, ClusterConfig, NodeTypeConfig
from launcher.config.schema import (did_you_mean, known_provider_types, schema_problems,
                                    show)
from launcher.errors import ConfigError, ConfigErrors
from launcher.config.frozen import thaw

__all__ = ["ClusterConfig", "NodeTypeConfig", "AuthConfig", "load_config",
           "load_config_with_notices", "load_config_text", "load_normalised_config", "normalize",
           "normalize_with_notices"]


def load_config(path: str | Path) -> ClusterConfig:
    return load_config_with_notices(path)[0]


def load_config_with_notices(path: str | Path,
                             check_local_files: bool = True) -> tuple[ClusterConfig, list[str]]:
    source = str(path)
    try:
        text = read_config_bytes(path, source).decode("utf-8")
    except ConfigError as error:
        raise ConfigErrors([error]) from None
    except FileNotFoundError:
        raise ConfigErrors([ConfigError("", None, "no such file", source)]) from None
    except IsADirectoryError:
        raise ConfigErrors([ConfigError("", None, "is a directory, not a YAML file",
                                        source)]) from None
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigErrors([ConfigError("", None, f"cannot read the file: {error}",
                                        source)]) from None
    base_dir = Path(path).resolve().parent
    return _load_text(text, source, base_dir, str(Path(path).resolve()), check_local_files)


def load_normalised_config(path: str | Path) -> ClusterConfig:
    """A config written by `to_dict()` on another machine (the head's
    $CORRAL_NODE_DIR/cluster.yaml): validated the same way, but the laptop's file_mounts
    and key paths are not expected to exist here."""
    return load_config_with_notices(path, check_local_files=False)[0]


def load_config_text(text: str, source: str = "<string>") -> ClusterConfig:
    return _load_text(text, source, None, None, True)[0]


def normalize(document: Mapping[str, Any], source: str | None = None,
              check_local_files: bool = True) -> ClusterConfig:
    """A config from a plain dict (tests, the autoscaler re-reading `to_dict()` output:
    pass check_local_files=False where the laptop's file_mounts and key do not exist)."""
    return normalize_with_notices(document, source, check_local_files)[0]


def normalize_with_notices(document: Mapping[str, Any], source: str | None = None,
                           check_local_files: bool = True) -> tuple[ClusterConfig, list[str]]:
    base_dir = Path(source).resolve().parent if source and Path(source).is_file() else None
    return _Loading(source, LineMap(), base_dir, check_local_files).run(
        thaw(document), [], None)  # frozen mappings (e.g. a ClusterConfig's) become dicts


def _load_text(text: str, source: str, base_dir: Path | None, source_path: str | None,
               check_local_files: bool) -> tuple[ClusterConfig, list[str]]:
    data, lines, problems = parse_yaml(text, source)
    return _Loading(source, lines, base_dir, check_local_files).run(data, problems,
                                                                    source_path)


class _Loading:
    """One load: the document's line map and source, the problems and notices so far."""

    def __init__(self, source: str | None, lines: LineMap, base_dir: Path | None,
                 check_local_files: bool):
        self.source = source
        self.lines = lines
        self.base_dir = base_dir
        self.check_local_files = check_local_files
        self.aliases_used: dict[str, str] = {}
        self.problems: list[ConfigError] = []
        self.notices: list[tuple[int | None, str]] = []

    def run(self, data: Any, parse_problems: list[ConfigError],
            source_path: str | None) -> tuple[ClusterConfig, list[str]]:
        self.problems = list(parse_problems)
        if data is None and not parse_problems:
            self._raise_with(("", "the file is empty; expected a mapping with cluster_name, "
                                  "provider, available_node_types, ..."))
        if data is None:
            raise ConfigErrors(self.problems)
        if not isinstance(data, Mapping):
            self._raise_with(("", f"expected a mapping of keys (cluster_name: ..., "
                                  f"provider: ...) at the top level, got {show(data)}"))
        document = self._prepare(dict(data))
        if self.problems:
            self.problems.sort(key=lambda error: (error.line or 0, error.path))
            raise ConfigErrors(self.problems)
        notices = [f"{self.source or 'config'}:{line}: {text}" if line else text
                   for line, text in sorted(self.notices, key=lambda item: item[0] or 0)]
        return _build(document, self.base_dir, source_path), notices

    def _prepare(self, document: dict) -> dict:
        user_keys = set(document)
        document, self.aliases_used, conflicts = apply_aliases(document)
        for ours, alias in self.aliases_used.items():
            self.notices.append((self.lines.line_of((alias,)),
                                 f"{alias} is Ray's name for {ours}; read as {ours}"))
        document, dropped = drop_ray_no_ops(document)
        for key in dropped:
            self.notices.append((self.lines.line_of((key,)),
                                 f"{key} is a Ray key corral does not use; ignored"))
        for alias, ours in conflicts:
            self._problem((alias,), f"both {alias} (Ray's name) and {ours} are set; "
                                    f"keep only {ours}")
        provider_type = self._provider_type(document.get("provider"))
        if provider_type == "local":
            document = synthesise_local(document)
        document = merge_under(defaults_for(provider_type), document)
        for path, message in schema_problems(document, provider_type):
            if provider_type is None and path in (("available_node_types",),
                                                  ("head_node_type",)):
                continue  # the provider's defaults might have supplied them
            self._problem(path, message)
        problems, notices = check_document(document, self.base_dir, user_keys,
                                           self.check_local_files)
        for path, message in problems:
            self._problem(path, message)
        for path, message in notices:
            self.notices.append((self._line(path), message))
        return document

    def _provider_type(self, provider: Any) -> str | None:
        """The provider type if it is known; an unknown or missing one is reported here
        (a missing `provider` block is left to the schema's `required`)."""
        if not isinstance(provider, dict):
            return None
        provider_type = provider.get("type")
        known = known_provider_types()
        if provider_type in known:
            return provider_type
        if "type" not in provider:
            self._problem(("provider", "type"), f"missing required key 'type' (one of "
                                                f"{', '.join(known)})")
        else:
            self._problem(("provider", "type"),
                          f"unknown provider type {show(provider_type)}; known types: "
                          f"{', '.join(known)}" + did_you_mean(provider_type, known))
        return None

    def _line(self, path: tuple) -> int | None:
        if path and path[0] in self.aliases_used:
            path = (self.aliases_used[path[0]],) + tuple(path[1:])
        return self.lines.line_of(path)

    def _problem(self, path: tuple, message: str) -> None:
        shown = path
        if path and path[0] in self.aliases_used:
            shown = (self.aliases_used[path[0]],) + tuple(path[1:])
        error = ConfigError(format_path(shown), self._line(path), message, self.source)
        if all(str(error) != str(other) for other in self.problems):
            self.problems.append(error)

    def _raise_with(self, problem: tuple[str, str]) -> None:
        path, message = problem
        line = self.lines.line_of(())
        raise ConfigErrors(self.problems + [ConfigError(path, line, message, self.source)])


def _build(document: dict, base_dir: Path | None, source_path: str | None) -> ClusterConfig:
    """The ClusterConfig from a merged, validated document."""
    head = document["head_node_type"]
    global_max = document["max_workers"]
    node_types = {
        name: NodeTypeConfig(
            name=name, node_config=spec.get("node_config") or {},
            resources=spec.get("resources") or {},
            min_workers=int(spec.get("min_workers", 0)),  # JSON Schema lets 2.0 be an integer
            max_workers=int(node_type_max_workers(name, spec, head, global_max)),
            idle_timeout_s=(float(spec["idle_timeout_s"])
                            if spec.get("idle_timeout_s") is not None else None))
        for name, spec in document["available_node_types"].items()}
    auth = document.get("auth") or {}
    key = auth.get("ssh_private_key")
    return ClusterConfig(
        cluster_name=document["cluster_name"],
        provider=document["provider"],
        auth=AuthConfig(ssh_user=auth.get("ssh_user"),
                        ssh_private_key=str(resolve_local_path(key, base_dir)) if key else None,
                        ssh_proxy_command=auth.get("ssh_proxy_command"),
                        ssh_timeout_s=float(auth["ssh_timeout_s"])),
        available_node_types=node_types,
        head_node_type=head,
        max_workers=int(global_max),
        upscaling_speed=float(document["upscaling_speed"]),
        idle_timeout_minutes=float(document["idle_timeout_minutes"]),
        file_mounts={remote: str(resolve_local_path(local, base_dir))
                     for remote, local in document["file_mounts"].items()},
        rsync_exclude=document["rsync_exclude"],
        initialization_commands=document["initialization_commands"],
        setup_commands=document["setup_commands"],
        head_setup_commands=document["head_setup_commands"],
        worker_setup_commands=document["worker_setup_commands"],
        head_start_commands=document["head_start_commands"],
        worker_start_commands=document["worker_start_commands"],
        source_path=source_path)
