"""What a worker process says to its node agent, and the agent to it (besides tasks:
runtime.protocol.tasks).

    Kind.READY      W -> A   the worker's pid (int): it is up, send it tasks
    Kind.LOG        W -> A   WorkerLog: lines its task printed, for the task's driver
    Kind.BLOCKED    W -> A   None: its task waits in get(); lend its resources
    Kind.UNBLOCKED  W -> A   None: it runs again; take them back
    Kind.RETURNED   W -> A   a task id (bytes): a task queued at it early goes back
    Kind.EXIT       A -> W   None: leave

Plain tuples on the wire, records on receipt (see runtime.protocol.tasks for why).
"""
from __future__ import annotations

from typing import NamedTuple

from runtime.protocol.fields import record_of


class WorkerLog(NamedTuple):
    driver: str             # the driver of the task that printed it
    text: str
    stream: str             # "stdout" or "stderr"
    origin_node_id: str | None = None   # a nested task's output passed on: its node
    origin_pid: int | None = None       # and process


def log_of(header) -> WorkerLog:
    return record_of(WorkerLog, header, "a log header")
