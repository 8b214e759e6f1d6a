"""Limits on what a cluster YAML may cost to read, checked before anything is built.

A cluster file is a few kilobytes. Without limits a small hostile (or mistaken) file can
exhaust the machine: a "billion laughs" file of nine nested aliases expands to 10^9
nodes, `/dev/zero` never ends, and very deep nesting crashes libyaml's composer. So:

- the file is read up to MAX_CONFIG_BYTES (+1 byte, to know it is longer) and refused
  when longer (`read_config_bytes`);
- before the document is composed, one pass over libyaml's event stream (iterative, no
  recursion, memory in proportion to the anchors) counts the nodes aliases add and the
  nesting depth, and refuses the file past MAX_ALIAS_NODES or MAX_NESTING, or with an
  alias inside the node it names (`structure_problem`).

Each refusal is a ConfigError that says the cap, so the CLI exits 2 with one clear line.
"""
from __future__ import annotations

from pathlib import Path

import yaml

from launcher.errors import ConfigError

MAX_CONFIG_BYTES = 1 << 20      # 1 MiB: a hundred times the largest real cluster file
MAX_ALIAS_NODES = 10_000        # nodes that aliases (and `<<: *x` merges) may add
MAX_NESTING = 100               # collections inside collections; real files use < 10

_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_OPEN = (yaml.MappingStartEvent, yaml.SequenceStartEvent)
_CLOSE = (yaml.MappingEndEvent, yaml.SequenceEndEvent)


def read_config_bytes(path: str | Path, source: str) -> bytes:
    """The file's bytes, at most MAX_CONFIG_BYTES of them. Raises ConfigError for a
    longer file (read no further than one byte past the cap: `/dev/zero` included);
    OSError is the caller's to describe."""
    with open(path, "rb") as handle:
        data = handle.read(MAX_CONFIG_BYTES + 1)
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError("", None, f"the file is larger than {_size(MAX_CONFIG_BYTES)}, "
                                    f"the most corral reads as a cluster config; is it "
                                    f"the right file?", source)
    return data


def text_too_long(text: str, source: str | None) -> ConfigError | None:
    """The size cap for a document given as text (load_config_text)."""
    if len(text) > MAX_CONFIG_BYTES or len(text.encode("utf-8", "surrogatepass")) \
            > MAX_CONFIG_BYTES:
        return ConfigError("", None, f"the text is larger than {_size(MAX_CONFIG_BYTES)}, "
                                     f"the most corral reads as a cluster config", source)
    return None


def structure_problem(text: str, source: str | None) -> ConfigError | None:
    """A ConfigError when the document nests deeper than MAX_NESTING, when its aliases
    would add more than MAX_ALIAS_NODES nodes, or when an alias names a collection it
    is inside of (a recursive structure); None otherwise. Syntax errors are left to the
    parser that follows (None), which reports them with their line."""
    loader = _Loader(text)
    # One frame per open collection: [anchor, expanded node count so far].
    open_frames: list[list] = []
    sizes: dict[str, int] = {}  # anchor -> expanded node count of its node
    added = 0
    try:
        while loader.check_event():
            event = loader.get_event()
            line = event.start_mark.line + 1 if event.start_mark is not None else None
            if isinstance(event, _OPEN):
                if len(open_frames) >= MAX_NESTING:
                    return ConfigError("", line, f"collections nest more than {MAX_NESTING}"
                                                 f" deep, the most corral reads in a "
                                                 f"cluster config", source)
                open_frames.append([event.anchor, 1])
                continue
            if isinstance(event, _CLOSE):
                anchor, size = open_frames.pop()
                if anchor is not None:
                    sizes[anchor] = size
                if open_frames:
                    open_frames[-1][1] += size
                continue
            if isinstance(event, yaml.AliasEvent):
                if any(frame[0] == event.anchor for frame in open_frames):
                    return ConfigError("", line, f"the alias *{event.anchor} is inside the "
                                                 f"node &{event.anchor} it names (a "
                                                 f"recursive structure); corral does not "
                                                 f"read those", source)
                size = sizes.get(event.anchor, 1)  # undefined: the composer says so
                added += size
                if added > MAX_ALIAS_NODES:
                    return ConfigError("", line, f"aliases expand the document by more than "
                                                 f"{MAX_ALIAS_NODES} nodes (the alias "
                                                 f"*{event.anchor} here crosses the limit); "
                                                 f"corral refuses such alias bombs", source)
            elif isinstance(event, yaml.ScalarEvent):
                size = 1
                if event.anchor is not None:
                    sizes[event.anchor] = 1
            else:
                continue
            if open_frames:
                open_frames[-1][1] += size
    except yaml.YAMLError:
        return None
    finally:
        loader.dispose()
    return None


def _size(size_bytes: int) -> str:
    if size_bytes % (1 << 20) == 0:
        return f"{size_bytes >> 20} MiB"
    if size_bytes % (1 << 10) == 0:
        return f"{size_bytes >> 10} KiB"
    return f"{size_bytes} bytes"
