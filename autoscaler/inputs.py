"""Reading the JSON files `corral plan` and `corral simulate` take, with clear errors.

demands.json: [{"shape": {"CPU": 1, "GPU": 1}, "count": 100}, ...]
trace.json:   [{"at_s": 0, "shape": {...}, "count": n, "duration_s": 30}, ...]
"""
from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

from autoscaler.snapshot import Shape, make_shape
from launcher.errors import UsageError


@dataclasses.dataclass(frozen=True)
class TraceEntry:
    at_s: float
    shape: Shape
    count: int
    duration_s: float


def _read_list(path: str, what: str) -> list:
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except FileNotFoundError:
        raise UsageError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise UsageError(f"{path}: is a directory, not a JSON file") from None
    except json.JSONDecodeError as error:
        raise UsageError(f"{path}:{error.lineno}: not valid JSON: {error.msg}") from None
    except (OSError, UnicodeDecodeError) as error:
        raise UsageError(f"{path}: cannot read the file: {error}") from None
    if not isinstance(data, list):
        raise UsageError(f"{path}: expected a JSON list of {what}, got {type(data).__name__}")
    return data


def _number(path: str, where: str, entry: dict, key: str, *, integer: bool = False,
            default: Any = None) -> Any:
    if key not in entry:
        if default is not None:
            return default
        raise UsageError(f"{path}: {where}: missing {key!r}")
    value = entry[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not math.isfinite(value) or value < 0 \
            or (integer and not float(value).is_integer()):
        kind = "a whole number" if integer else "a number"
        raise UsageError(f"{path}: {where}: {key!r} must be {kind} >= 0, got {value!r}")
    return int(value) if integer else float(value)


def _shape(path: str, where: str, entry: dict) -> Shape:
    shape = entry.get("shape")
    if not isinstance(shape, dict):
        raise UsageError(f"{path}: {where}: 'shape' must be an object like "
                         f'{{"CPU": 1}}, got {shape!r}')
    try:
        return make_shape(shape)
    except ValueError as error:
        raise UsageError(f"{path}: {where}: shape: {error}") from None


def _entries(path: str, what: str, allowed: set[str]):
    for index, entry in enumerate(_read_list(path, what)):
        where = f"entry {index}"
        if not isinstance(entry, dict):
            raise UsageError(f"{path}: {where}: expected an object, got {entry!r}")
        unknown = sorted(set(entry) - allowed)
        if unknown:
            raise UsageError(f"{path}: {where}: unknown key(s) {', '.join(unknown)} "
                             f"(expected {', '.join(sorted(allowed))})")
        yield where, entry


def read_demands(path: str) -> dict[Shape, int]:
    """{shape: count} from a demands file; equal shapes are added up."""
    demand: dict[Shape, int] = {}
    for where, entry in _entries(path, "demands", {"shape", "count"}):
        shape = _shape(path, where, entry)
        count = _number(path, where, entry, "count", integer=True, default=1)
        if count:
            demand[shape] = demand.get(shape, 0) + count
    return demand


def read_trace(path: str) -> list[TraceEntry]:
    """Trace entries sorted by arrival time (stable for equal times)."""
    entries = []
    for where, entry in _entries(path, "trace entries", {"at_s", "shape", "count",
                                                          "duration_s"}):
        entries.append(TraceEntry(
            at_s=_number(path, where, entry, "at_s"),
            shape=_shape(path, where, entry),
            count=_number(path, where, entry, "count", integer=True, default=1),
            duration_s=_number(path, where, entry, "duration_s")))
    return sorted(entries, key=lambda item: item.at_s)
