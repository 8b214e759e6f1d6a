"""Writing a node's stage tags without holding up its bootstrap.

A tag write can cost as much as a stage (on the `local` provider it is two SSH commands;
on a cloud, an API call). `TagWriter` writes in the background, in order, one write at a
time. A change waits up to DEBOUNCE_S for the next one, and changes made meanwhile (or
while a write is in flight) are merged, latest value wins. So the tags always move
forward through the stages, lag the truth by about DEBOUNCE_S plus one write, end at
the final state, and a stage shorter than that may be skipped in the tags, never
reordered. A stage that lasts (a real setup, a cloud VM booting) always shows.
`finish(final_tags)` queues the final tags, waits until everything is written, and raises
if the last write (the one carrying the final tags) failed.
"""
from __future__ import annotations

import threading
import time
from typing import Mapping

from launcher.errors import ClusterError

DEBOUNCE_S = 0.5


class TagWriter:
    def __init__(self, provider, node_id: str):
        self.provider = provider
        self.node_id = node_id
        self._pending: dict[str, str] = {}
        self._closed = False
        self._condition = threading.Condition()
        self.errors: list[str] = []  # failed background writes (the final write decides)
        self._last_error: BaseException | None = None
        self._pending_since = 0.0
        self._thread = threading.Thread(target=self._loop, name=f"tags-{node_id}",
                                        daemon=True)
        self._thread.start()

    def set(self, tags: Mapping[str, str]) -> None:
        with self._condition:
            if not self._pending:
                self._pending_since = time.monotonic()
            self._pending.update(tags)
            self._condition.notify()

    def _loop(self) -> None:
        while True:
            with self._condition:
                while not self._pending and not self._closed:
                    self._condition.wait()
                if not self._pending:
                    return
                deadline = self._pending_since + DEBOUNCE_S
                while not self._closed and time.monotonic() < deadline:
                    self._condition.wait(deadline - time.monotonic())
                tags, self._pending = self._pending, {}
            try:
                self.provider.set_node_tags(self.node_id, tags)
                self._last_error = None
            except (ClusterError, OSError) as error:
                self.errors.append(str(error))
                self._last_error = error

    def finish(self, final_tags: Mapping[str, str] | None = None) -> None:
        """Write `final_tags` after (or merged into) whatever is pending, wait until all
        is written, and raise the error of the last write if it failed. After the first
        call the writer is closed: later final tags are written directly."""
        if not self._thread.is_alive():
            if final_tags:
                self.provider.set_node_tags(self.node_id, dict(final_tags))
            return
        with self._condition:
            if final_tags:
                self._pending.update(final_tags)
            self._closed = True
            self._condition.notify()
        self._thread.join()
        if self._last_error is not None:
            error, self._last_error = self._last_error, None
            raise error
