"""`corral monitor`: print the autoscaler's event log, and follow it."""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable

from autoscaler.events import events_path, format_event, parse_events, whole_lines
from launcher.errors import UsageError

FOLLOW_POLL_S = 0.5
REMOTE_EVENTS = '"${CORRAL_NODE_DIR:-/tmp/corral}/session/autoscaler.events"'


def follow_events(config_file: str | None, events_file: str | None, *, follow: bool,
                  lines: int, echo: Callable[[str], None]) -> None:
    if config_file and not events_file:
        _follow_on_head(config_file, follow=follow, lines=lines, echo=echo)
        return
    path = Path(events_file) if events_file else events_path()
    if not path.exists() and not follow:
        raise UsageError(f"no autoscaler event log at {path} (is the monitor running on "
                         "this head? give CLUSTER_YAML to read the head's from elsewhere)")
    _follow_local(path, follow=follow, lines=lines, echo=echo)


def _follow_local(path: Path, *, follow: bool, lines: int, echo) -> None:
    """Print the last `lines` events, then (with follow) each new one. Only whole lines
    are read: a line still being written waits for the next round, a torn one (a writer
    cut short by a full disk) is skipped. A log that shrank (replaced) is read anew."""
    position = 0
    if path.exists():
        complete = whole_lines(path.read_bytes())
        position = len(complete)
        events = parse_events(complete.decode("utf-8", "replace").splitlines())
        for event in events[-lines:] if lines else []:
            echo(format_event(event))
    while follow:
        time.sleep(FOLLOW_POLL_S)
        try:
            with open(path, "rb") as handle:
                if os.fstat(handle.fileno()).st_size < position:
                    position = 0
                handle.seek(position)
                chunk = whole_lines(handle.read())
        except FileNotFoundError:
            continue
        position += len(chunk)
        for event in parse_events(chunk.decode("utf-8", "replace").splitlines()):
            echo(format_event(event))


def _follow_on_head(config_file: str, *, follow: bool, lines: int, echo) -> None:
    """Run `corral monitor` on the head through its CommandRunner."""
    from launcher.commands.cluster import find_head, open_cluster
    from launcher.errors import ClusterError
    command = (f"corral monitor --events {REMOTE_EVENTS} --lines {int(lines)} "
               f"{'--follow' if follow else '--no-follow'}")
    with open_cluster(config_file) as (config, provider):
        head = find_head(provider, config)
        runner = provider.command_runner(head)
        if follow:
            code = runner.interactive_shell(command)
            if code not in (0, 130):
                raise ClusterError(f"following the head's event log ended with exit {code}")
            return
        result = runner.run(command, timeout_s=60)
        if not result.ok:
            raise ClusterError(f"could not read the head's event log: {result.tail(5)}")
        for line in result.stdout.splitlines():
            echo(line)
