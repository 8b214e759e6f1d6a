"""Reading the cluster YAML while remembering where every key and list item sits, so a
config error can name the line. Also: syntax errors and duplicate keys become ConfigErrors.

Paths are tuples of keys (str) and list indices (int); `format_path` renders them the way
users see them: `available_node_types.cpu4.resources.CPU`, `setup_commands[2]`.
"""
from __future__ import annotations

import re
from typing import Any

import yaml

from launcher.config.limits import structure_problem, text_too_long
from launcher.errors import ConfigError

_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_MERGE_TAG = "tag:yaml.org,2002:merge"
_STR_TAG = "tag:yaml.org,2002:str"
_PLAIN_KEY = re.compile(r"^[A-Za-z0-9_-]+$")

Path = tuple  # of str | int


def format_path(path: Path) -> str:
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        elif _PLAIN_KEY.match(part):
            text += f".{part}" if text else part
        else:
            text += f"[{part!r}]"
    return text


class LineMap:
    """Maps document paths to 1-based line numbers. A path missing from the file (a
    required key nobody wrote, a value that came from defaults) maps to the line of the
    nearest enclosing key that is in the file."""

    def __init__(self):
        self._lines: dict[Path, int] = {}

    def add(self, path: Path, line: int) -> None:
        self._lines.setdefault(path, line)

    def __contains__(self, path: Path) -> bool:
        return tuple(path) in self._lines

    def line_of(self, path: Path) -> int | None:
        path = tuple(path)
        while True:
            if path in self._lines:
                return self._lines[path]
            if not path:
                return None
            path = path[:-1]


def parse_yaml(text: str, source: str | None) -> tuple[Any, LineMap, list[ConfigError]]:
    """Returns (data, line map, problems). Syntax errors leave data None with one problem,
    and so does a document past launcher.config.limits' caps (size, aliases, nesting),
    which is refused before it is composed."""
    lines = LineMap()
    refused = text_too_long(text, source) or structure_problem(text, source)
    if refused is not None:
        return None, lines, [refused]
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, lines, []
        problems: list[ConfigError] = []
        _index(node, (), lines, problems, source)
        data = loader.construct_document(node)
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        line = mark.line + 1 if mark is not None else None
        what = ": ".join(part for part in (error.context, error.problem) if part)
        text_lines = text.splitlines()
        if line is not None and 0 < line <= len(text_lines) and "\t" in text_lines[line - 1]:
            what += " (a tab: YAML indents with spaces only)"
        return None, lines, [ConfigError("", line, f"invalid YAML: {what}", source)]
    except yaml.YAMLError as error:  # e.g. a reader error on a control character
        return None, lines, [ConfigError("", None, f"invalid YAML: {error}", source)]
    finally:
        loader.dispose()
    return _string_keys(data), lines, problems


def _index(node, path: Path, lines: LineMap, problems: list[ConfigError], source) -> None:
    lines.add(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG or not isinstance(key_node, yaml.ScalarNode):
                continue
            key = key_node.value
            line = key_node.start_mark.line + 1
            if key_node.tag not in (_STR_TAG, "tag:yaml.org,2002:int"):
                problems.append(ConfigError(
                    format_path(path + (key,)), line,
                    f"the key {key!r} is read as a {key_node.tag.rsplit(':', 1)[-1]}, "
                    f"not text; put it in quotes", source))
            if key in seen:
                problems.append(ConfigError(
                    format_path(path + (key,)), line,
                    f"duplicate key {key!r} (first on line {seen[key]})", source))
                continue
            seen[key] = line
            lines.add(path + (key,), line)
            _index(value_node, path + (key,), lines, problems, source)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _index(item, path + (index,), lines, problems, source)


def _string_keys(value: Any) -> Any:
    """JSON Schema only knows text keys; `1: x` or `yes: x` keys become '1' / 'True' after
    being reported (booleans, nulls) or accepted (integers, e.g. resource counts)."""
    if isinstance(value, dict):
        return {key if isinstance(key, str) else _key_text(key): _string_keys(item)
                for key, item in value.items()}
    if isinstance(value, list):
        return [_string_keys(item) for item in value]
    return value


def _key_text(key: Any) -> str:
    if isinstance(key, bool):
        return "true" if key else "false"
    if key is None:
        return "null"
    return str(key)
