"""Malformed headers of every driver / agent / worker message kind (runtime.protocol
.codec), sent to a real node agent and a real actor worker over their ipc sockets,
as a local process of this user could: each is dropped, and both go on serving."""
from __future__ import annotations

import glob
import os
import pickle
import socket

import psutil
import pytest
import zmq

import runtime
from runtime import api
from runtime.protocol import frames as protocol
from runtime.protocol.kinds import Kind

pytestmark = pytest.mark.timeout(120)

# one header per kind that is not that kind's record
BAD_HEADERS = {
    Kind.SUBMIT: [["not a task"], (b"t",), [(b"t", "d", "task")]],
    Kind.TASK: [None, (b"t", "d"), {"task_id": b"t"}],
    Kind.DONE: [(b"t",), None],
    Kind.RESULTS: [None, (1, 2)],
    Kind.KILL_ACTOR: [None, 5],
    Kind.OBJECT: [(1,), "x"],
    Kind.FETCH: [None, (1,)],
    Kind.PUT: [(b"o",), None],
    Kind.PUT_BEGIN: [(b"o", "d"), None],
    Kind.PUT_PIECE: [(b"o",), None],
    Kind.FREE: [None, [1, 2]],
    Kind.RECLAIM: [None, ("d",)],
    Kind.STATS: [None, "1"],
    Kind.READY: ["pid"],
    Kind.BLOCKED: [1],
    Kind.UNBLOCKED: [1],
    Kind.RETURNED: [None],
    Kind.LOG: [("d",)],
    Kind.EXIT: [1],
}


@runtime.remote
def plus_one(x):
    return x + 1


@runtime.remote
class Counter:
    def __init__(self):
        self.count = 0

    def add(self):
        self.count += 1
        return self.count


def _send_all_bad(sock: zmq.Socket) -> int:
    sent = 0
    for kind, headers in BAD_HEADERS.items():
        for header in headers:
            protocol.send(sock, kind, header)
            sent += 1
    sock.send_multipart([b"\xff", b"not a pickle"])
    sock.send_multipart([Kind.SUBMIT])                       # no header frame
    return sent + 2


def test_malformed_headers_kill_neither_agent_nor_actor_worker(one_node):
    core = api.current_core()
    counter = Counter.remote()
    assert runtime.get(counter.add.remote(), timeout=60) == 1
    node = next(iter(core.nodes.values()))
    agent_endpoint = node["ipc"]
    ipc_dir = os.path.dirname(protocol.ipc_path(agent_endpoint))
    actor_sockets = glob.glob(os.path.join(ipc_dir, "actor-*.sock"))
    actor_syncs = glob.glob(os.path.join(ipc_dir, "actor-*.sync"))
    assert len(actor_sockets) == 1 and len(actor_syncs) == 1
    agent_pid = one_node.head.pids["agent"]
    workers_before = {p.pid for p in psutil.Process(agent_pid).children()}

    ctx = zmq.Context()
    try:
        for endpoint in (agent_endpoint, "ipc://" + actor_sockets[0]):
            sock = protocol.connect_dealer(ctx, endpoint, None, b"Dmalformed")
            _send_all_bad(sock)
            sock.close(linger=1000)
        with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as sync:
            sync.connect(actor_syncs[0])
            sync.send(pickle.dumps("not a task"))
            sync.send(pickle.dumps((b"t", "d")))
    finally:
        ctx.destroy(linger=1000)

    # the same agent and the same actor worker still serve
    assert runtime.get([plus_one.remote(i) for i in range(10)], timeout=60) == \
        list(range(1, 11))
    assert runtime.get(counter.add.remote(), timeout=60) == 2
    assert psutil.Process(agent_pid).is_running()
    assert workers_before <= {p.pid for p in psutil.Process(agent_pid).children()}
