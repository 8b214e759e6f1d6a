"""Every kind of message runtime processes send: frame 0 of a message (frames.py).

A Kind is a bytes Enum, so a member is the frame itself (`sock.send(Kind.TASK)` sends
b"task") and a received frame compares equal to its member (`kind == Kind.TASK`) without
a lookup on the hot path. `Kind.of(frame)` names an unknown frame with None.

Who sends what (D driver, A node agent, W worker, C control service):
"""
from __future__ import annotations

import enum


class Kind(bytes, enum.Enum):
    # request/reply with the control service (rpc.py holds their records)
    RPC = b"rpc"                  # D, A, tools -> C: RpcRequest
    REPLY = b"reply"              # C -> D, A, tools: RpcReply
    NODES = b"nodes"              # C -> D: the node table, when it changes
    DRIVER_DEAD = b"driver_dead"  # C -> A: a driver is gone; free what it owned
    # tasks and actors
    SUBMIT = b"submit"            # D -> A: a batch of task specs
    TASK = b"task"                # A -> W (and D -> actor W): one task to run
    DONE = b"done"                # W -> A, A -> D: a task finished
    RESULTS = b"results"          # W -> D, A -> D: result entries
    KILL_ACTOR = b"kill_actor"    # D -> A: end an actor's process
    # objects
    OBJECT = b"object"            # A -> D, A -> A: a fetched object's value
    FETCH = b"fetch"              # D -> A, A -> A: ask for an object's value
    PUT = b"put"                  # D -> A: store a value in one message
    PUT_BEGIN = b"put_begin"      # D/W -> A: a large value in pieces begins
    PUT_PIECE = b"put_piece"      # D/W -> A: one piece of it
    FREE = b"free"                # D -> A: objects nobody refers to any more
    RECLAIM = b"reclaim"          # D -> A: give back what a task held
    STATS = b"stats"              # D -> A: the node's store statistics
    # a worker and its agent
    READY = b"ready"              # W -> A: the worker process is up
    BLOCKED = b"blocked"          # W -> A: its task waits in get(); lend its resources
    UNBLOCKED = b"unblocked"      # W -> A: it runs again
    RETURNED = b"returned"        # W -> A: an actor call's resources go back
    LOG = b"log"                  # W -> A: a line the task printed
    EXIT = b"exit"                # W -> A: the worker is leaving
    # worker leases (runtime.protocol.leases): tasks straight from driver to worker
    LEASE = b"lease"              # D -> A: LeaseRequest, task workers for a shape
    LEASED = b"leased"            # A -> D: LeaseReply, the leases granted (maybe none)
    LEASE_RETURN = b"lease_return"    # D -> A: LeaseReturn, a lease given back
    LEASE_REVOKED = b"lease_revoked"  # A -> D: LeaseRevoked, send it no more tasks

    @classmethod
    def of(cls, frame: bytes) -> "Kind | None":
        """The Kind of a received frame, or None for a frame no version of corral sends."""
        return _BY_FRAME.get(bytes(frame))


_BY_FRAME = {member.value: member for member in Kind}
