"""Small helpers shared by tests of every part: polling for a condition, checking a
process, laying out a file tree."""
from __future__ import annotations

import time
from typing import Callable


def wait_for(predicate: Callable, timeout_s: float = 30.0, what: str = "condition",
             interval_s: float = 0.05, describe: Callable[[], str] | None = None):
    """Poll `predicate` until it returns something truthy (returned); on timeout raise
    AssertionError naming `what` (and `describe()` for context, e.g. an event log)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval_s)
    detail = f"; {describe()}" if describe is not None else ""
    raise AssertionError(f"timed out waiting for {what}{detail}")


def alive(pid: int) -> bool:
    """True while `pid` is a live (not zombie) process."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def make_tree(root, files: dict[str, str]):
    """Write {relative path: text} under `root` (a pathlib.Path); returns root."""
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root
