"""Requests to a real control service as records (runtime.protocol.rpc): failures come
back as typed errors with the remote type, message and traceback as fields; a method the
service lacks is UnknownMethodError; on the wire every reply is plain tuples (a peer
needs none of corral's classes to read it)."""
from __future__ import annotations

import pickle
import pickletools

import pytest
import zmq

import runtime
from runtime.api import current_core
from runtime.control.client import ControlClient
from runtime.node.keys import load_cluster_keys
from runtime.protocol import frames as protocol
from runtime.protocol.kinds import Kind
from runtime.protocol.rpc import RemoteCallError, UnknownMethodError

pytestmark = pytest.mark.timeout(90)


def test_a_tool_gets_typed_errors(local_cluster):
    head = local_cluster.start_head(num_cpus=1)
    with ControlClient(head.address, str(local_cluster.keys_dir)) as client:
        with pytest.raises(UnknownMethodError) as unknown:
            client.call("no_such_method")
        assert unknown.value.type_name == "UnknownMethod"
        assert unknown.value.method == "no_such_method"
        with pytest.raises(RemoteCallError) as failed:
            client.call("heartbeat", node_id="x")         # arguments missing
        assert not isinstance(failed.value, UnknownMethodError)
        assert failed.value.type_name == "TypeError"
        assert "resources_available" in failed.value.remote_message
        assert "Traceback" in failed.value.remote_traceback
        assert isinstance(failed.value, runtime.errors.RuntimeConnectionError)
        assert [node["node_id"] for node in client.call("nodes")] == ["head"]


def test_a_driver_gets_typed_errors(local_cluster):
    local_cluster.start_head(num_cpus=1)
    local_cluster.connect()
    core = current_core()
    with pytest.raises(UnknownMethodError):
        core.call_control("no_such_method")
    with pytest.raises(RemoteCallError) as failed:
        core.call_control("kv_put", key="k")
    assert failed.value.type_name == "TypeError"
    assert core.call_control("kv_put", key="k", value=b"v") is True
    assert core.call_control("kv_get", key="k") == b"v"


def _global_refs(data: bytes) -> list[str]:
    """The classes and functions a pickle refers to (what a reader must import)."""
    return [str(arg) for op, arg, _ in pickletools.genops(data)
            if op.name in ("GLOBAL", "STACK_GLOBAL", "INST")] + \
        [str(arg) for op, arg, _ in pickletools.genops(data)
         if op.name in ("SHORT_BINUNICODE", "BINUNICODE") and str(arg).startswith("runtime")]


def test_replies_are_plain_data_on_the_wire(local_cluster):
    head = local_cluster.start_head(num_cpus=1)
    keys = load_cluster_keys(local_cluster.keys_dir)
    ctx = zmq.Context()
    try:
        sock = protocol.connect_authenticated(ctx, f"tcp://{head.address}", keys,
                                              b"Dwire", 10.0)
        for request in ((1, "no_such_method", {}), (2, "kv_put", {}), (3, "get_load", {})):
            protocol.send(sock, Kind.RPC, request)
            assert sock.poll(10_000)
            kind, raw = sock.recv_multipart()
            assert kind == Kind.REPLY
            assert _global_refs(raw) == []
            reply = pickle.loads(raw)
            assert type(reply) is tuple and reply[0] == request[0]
            if not reply[1]:
                assert type(reply[2]) is tuple and reply[2][0] in ("UnknownMethod",
                                                                   "TypeError")
        sock.close(0)
    finally:
        protocol.destroy_context(ctx)


def test_an_older_services_text_failure_still_reads_as_a_typed_error():
    from runtime.protocol import rpc
    older = rpc.RpcReply(4, False, "ValueError: unknown control method 'drain_nodes'")
    with pytest.raises(RemoteCallError) as failed:
        rpc.outcome(older, "head:1", "drain_nodes")
    assert (failed.value.type_name, failed.value.remote_message) == \
        ("ValueError", "unknown control method 'drain_nodes'")
    current = rpc.RpcReply(5, False, tuple(rpc.unknown_method("drain_nodes")))
    with pytest.raises(UnknownMethodError):
        rpc.outcome(current, "head:1", "drain_nodes")
    assert rpc.outcome(rpc.RpcReply(6, True, [1]), "head:1", "nodes") == [1]
    with pytest.raises(ValueError):
        rpc.request_of("not a request")
