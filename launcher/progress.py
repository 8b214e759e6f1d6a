"""Showing long work: a live per-node progress view, and tables.

On a terminal the view is a rich Live table redrawn in place; otherwise (pipes, CI,
tests) each stage change is one plain line, so logs stay readable and greppable.
"""
from __future__ import annotations

import sys
import threading
import time
from typing import Sequence

import click

from launcher.tags import STATUS_SHIPPING_CORRAL, STATUS_UP_TO_DATE, STATUS_UPDATE_FAILED

# Stages whose details (what is being shipped, how it went) are shown, not only the stage.
_DETAILED = (STATUS_UPDATE_FAILED, STATUS_SHIPPING_CORRAL)


def stdout_is_terminal() -> bool:
    stream = click.get_text_stream("stdout")
    return bool(getattr(stream, "isatty", lambda: False)())


def print_table(headers: Sequence[str], rows: Sequence[Sequence[object]], *,
                title: str | None = None) -> None:
    """A table: rich on a terminal, aligned plain columns otherwise."""
    cells = [[("-" if cell is None or cell == "" else str(cell)) for cell in row]
             for row in rows]
    if stdout_is_terminal():
        from rich.console import Console
        from rich.table import Table
        table = Table(title=title, title_justify="left")
        for header in headers:
            table.add_column(header, overflow="fold")
        for row in cells:
            table.add_row(*[_styled(cell) for cell in row])
        Console().print(table)
        return
    if title:
        click.echo(title)
    widths = [max(len(header), *(len(row[index]) for row in cells)) if cells else len(header)
              for index, header in enumerate(headers)]
    click.echo("  ".join(header.upper().ljust(width) for header, width
                         in zip(headers, widths)).rstrip())
    for row in cells:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())


def _styled(cell: str) -> str:
    if cell == STATUS_UP_TO_DATE:
        return f"[green]{cell}[/green]"
    if cell == STATUS_UPDATE_FAILED:
        return f"[red]{cell}[/red]"
    return cell.replace("[", "\\[")


class ProgressView:
    """Per-node stages while nodes bootstrap. `stage(node_id, stage, detail)` is safe
    to call from any thread."""

    def __init__(self, *, live: bool | None = None):
        self.live = stdout_is_terminal() if live is None else live
        self._lock = threading.Lock()
        self._rows: dict[str, dict] = {}
        self._started = time.monotonic()
        self._live_display = None

    def add_nodes(self, nodes) -> None:
        with self._lock:
            for node in nodes:
                self._rows.setdefault(node.id, {
                    "kind": node.kind, "type": node.node_type,
                    "ip": node.internal_ip or node.external_ip or "-",
                    "stage": "queued", "since": time.monotonic()})

    def __enter__(self) -> "ProgressView":
        if self.live:
            from rich.live import Live
            self._live_display = Live(self, refresh_per_second=8, transient=True)
            self._live_display.__enter__()
        return self

    def __exit__(self, *exc_info) -> None:
        if self._live_display is not None:
            self._live_display.__exit__(*exc_info)
            self._live_display = None

    def stage(self, node_id: str, stage: str, detail: str = "") -> None:
        """A node entered `stage`, or (same stage, a detail) has news within it."""
        with self._lock:
            row = self._rows.setdefault(node_id, {"kind": "?", "type": "?", "ip": "-"})
            if row.get("stage") != stage:
                row["since"] = time.monotonic()
            row["stage"] = stage
            row["detail"] = detail.splitlines()[0] if detail and stage in _DETAILED else ""
            elapsed_s = time.monotonic() - self._started
            if not self.live:
                line = f"[{elapsed_s:6.1f}s] {node_id}: {stage}"
                if row["detail"]:
                    line += f" - {row['detail']}"
                click.echo(line)
                sys.stdout.flush()

    def __rich__(self):
        from rich.table import Table
        table = Table(title=f"bringing up nodes ({time.monotonic() - self._started:.1f} s)",
                      title_justify="left")
        for header in ("node", "kind", "type", "ip", "stage", "in stage"):
            table.add_column(header)
        now = time.monotonic()
        with self._lock:
            rows = list(self._rows.items())
        for node_id, row in rows:
            stage = _styled(row["stage"])
            if row.get("detail"):
                stage += " " + _styled(f"({row['detail']})")
            table.add_row(node_id, row["kind"], row["type"], row["ip"], stage,
                          f"{now - row.get('since', now):.1f} s")
        return table
