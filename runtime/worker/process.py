"""What ties a worker process to its node agent and to its task's driver: it dies with
the agent (die_with_parent), and what its task prints goes to that task's driver
(DriverOutput, through the worker's Kind.LOG messages)."""
from __future__ import annotations

import ctypes
import io
import os
import signal
import sys
import threading
import time

PR_SET_PDEATHSIG = 1
PARENT_POLL_S = 0.5  # where the kernel sends no death signal (not Linux)


def die_with_parent(parent_pid: int | None) -> None:
    """SIGKILL this worker when its node agent dies. An agent that died before this
    ran (while the worker was starting) sends nothing: the worker, reparented by now,
    exits here instead of waiting forever for an agent that is gone. The death signal
    is Linux's (prctl); elsewhere (macOS) a thread notices that the worker was
    reparented."""
    if sys.platform.startswith("linux"):
        try:  # the C library the process runs with (glibc or musl)
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        except (OSError, AttributeError):
            pass
    elif parent_pid is not None:
        threading.Thread(target=exit_when_reparented, args=(parent_pid,), daemon=True,
                         name="parent-watch").start()
    if parent_pid is not None and os.getppid() != parent_pid:
        os._exit(0)


def exit_when_reparented(parent_pid: int, poll_s: float = PARENT_POLL_S) -> None:
    """Exit the process once its parent is no longer parent_pid (the parent died)."""
    while os.getppid() == parent_pid:
        time.sleep(poll_s)
    os._exit(0)


class DriverOutput(io.TextIOBase):
    """stdout/stderr replacement: complete lines go to the current task's driver."""

    def __init__(self, worker, stream: str):    # worker: runtime.worker.main.Worker
        self.worker = worker
        self.stream = stream
        self.pending = ""

    def writable(self):
        return True

    def write(self, text: str) -> int:
        self.pending += text
        if "\n" in self.pending:
            lines, self.pending = self.pending.rsplit("\n", 1)
            self.worker.send_log(lines + "\n", self.stream)
        return len(text)

    def flush(self):
        if self.pending:
            text, self.pending = self.pending, ""
            self.worker.send_log(text, self.stream)

    def forward_log(self, node_id: str, pid: int, text: str) -> None:
        """Output of a task this worker's task submitted: passed on under its own origin
        (node, pid), so the driver prints it once with the right prefix."""
        self.flush()
        self.worker.send_log(text, self.stream, origin=(node_id, pid))
