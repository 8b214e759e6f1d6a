"""Worker leases: a driver on the same host as a node agent takes task workers for a
resource shape, then sends them tasks itself (runtime.driver.leases); the agent is out
of the per-task path (runtime.agent.leases).

    Kind.LEASE          D -> A   LeaseRequest
    Kind.LEASED         A -> D   LeaseReply     grants: [LeaseGrant], [] = "not now"
    Kind.LEASE_RETURN   D -> A   LeaseReturn    the lease's resources go back
    Kind.LEASE_REVOKED  A -> D   LeaseRevoked   send the worker no more tasks

A leased worker takes Kind.TASK (a TaskMessage) on its direct socket and answers the
driver with Kind.RESULTS, as an actor's worker does; a result too large to travel
inline goes to the agent's store (Kind.DONE, as today) and reaches the driver as a
Stored entry from the agent.

Plain tuples on the wire, records on receipt (see runtime.protocol.tasks for why).
"""
from __future__ import annotations

import os
from typing import NamedTuple

from runtime.protocol.fields import record_of

ENV_SWITCH = "CORRAL_LEASES"


class LeaseRequest(NamedTuple):
    request_id: int
    driver: str
    shape: dict             # the resources each leased worker holds for the lease's life
    count: int              # how many workers the driver could use now


class LeaseGrant(NamedTuple):
    lease_id: bytes
    worker_id: str
    direct: str             # the worker's ZeroMQ ipc endpoint (a ROUTER)
    sync: str | None        # its sync channel (runtime.protocol.sync_channel) path


class LeaseReply(NamedTuple):
    request_id: int
    shape: dict
    grants: list            # [LeaseGrant as a tuple]; empty: not now, use the agent


class LeaseReturn(NamedTuple):
    lease_id: bytes


class LeaseRevoked(NamedTuple):
    """`worker_died`: the tasks in flight on it are lost (retried as when a worker
    dies under the agent); else (the node drains) they finish, then it is returned."""
    lease_id: bytes
    cause: str
    worker_died: bool


def request_of(header) -> LeaseRequest:
    request = record_of(LeaseRequest, header, "a lease request")
    if type(request.shape) is not dict or type(request.count) is not int:
        raise ValueError("a lease request's shape is not a dict or its count not an int")
    return request


def reply_of(header) -> LeaseReply:
    reply = record_of(LeaseReply, header, "a lease reply")
    if type(reply.grants) is not list:
        raise ValueError("a lease reply's grants are not a list")
    return reply._replace(grants=[record_of(LeaseGrant, grant, "a lease grant")
                                  for grant in reply.grants])


def return_of(header) -> LeaseReturn:
    return record_of(LeaseReturn, header, "a lease return")


def revoked_of(header) -> LeaseRevoked:
    return record_of(LeaseRevoked, header, "a lease revocation")


def enabled() -> bool:
    """Leases are on with CORRAL_LEASES=1 in the environment of the driver and the
    node agent (its workers inherit it); otherwise every task goes through the agent.
    Off by default for now: a print from a nested task run on a leased worker was once
    lost in CI (tests/runtime/test_nested.py), so the old path stays the default until
    that is understood. A driver whose agent has them off is granted none, and sends
    its tasks through that agent (runtime.driver.leases)."""
    return os.environ.get(ENV_SWITCH, "0") == "1"
