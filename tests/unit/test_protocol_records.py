"""The driver / node agent / worker messages (runtime.protocol.tasks, objects, workers,
codec): every record goes through frames.send and frames.recv on a real ZeroMQ socket
pair and comes back equal, as a plain tuple on the wire; a header that is not its
kind's record is MalformedMessageError, and the socket goes on with the next message."""
from __future__ import annotations

import pickle

import numpy as np
import pytest
import zmq

from runtime.protocol import codec, frames, objects, tasks, workers
from runtime.protocol.frames import MalformedMessageError, Packer, serialize, unpack_value
from runtime.protocol.kinds import Kind

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def pair():
    """A ROUTER bound on inproc and a DEALER connected to it (as an agent and a driver)."""
    ctx = zmq.Context()
    router = frames.bind_router(ctx, "inproc://protocol-records", None)
    dealer = frames.connect_dealer(ctx, "inproc://protocol-records", None, b"Dtest")
    try:
        yield router, dealer
    finally:
        ctx.destroy(linger=0)


def round_trip(pair, kind: Kind, header, message_frames=()):
    """Send header from the dealer; -> (kind, decoded record, frames) at the router."""
    router, dealer = pair
    frames.send(dealer, kind, header, message_frames)
    assert router.poll(5000)
    identity, received_kind, raw, received_frames = frames.recv(router, routed=True)
    assert identity == b"Dtest" and received_kind == kind
    return received_kind, codec.decode(identity, received_kind, raw), received_frames, raw


def packed_value(value):
    packer = Packer()
    return packer.value(serialize(value)), packer.frames


def test_a_kind_goes_out_as_its_bytes(pair):
    router, dealer = pair
    dealer.send_multipart([Kind.SUBMIT, b"x"])
    assert router.poll(5000)
    assert router.recv_multipart() == [b"Dtest", b"submit", b"x"]
    assert Kind.of(b"submit") is Kind.SUBMIT and Kind.of(b"nonsense") is None


def test_a_received_frame_finds_its_kind_in_a_dispatch_table():
    """The agent and codec dispatch on tables keyed by Kind members and look them up
    with the received bytes: equal, and hashed alike."""
    table = {kind: kind.name for kind in Kind}
    for kind in Kind:
        frame = bytes(kind.value)
        assert type(frame) is bytes and frame == kind and hash(frame) == hash(kind)
        assert table[frame] == kind.name


def test_a_task_spec_round_trips_with_its_arguments(pair):
    packed, value_frames = packed_value(np.arange(100_000))
    spec = tasks.TaskSpec(b"t" * 16, "driver1", tasks.TASK, b"fn", b"f" * 16, None,
                          {"CPU": 1.0}, None, False,
                          [tasks.ArgValue.of(packed), tasks.ArgRef.of(b"o" * 16, "node-b")],
                          {"key": tasks.ArgRef.of(b"p" * 16, "")})
    kind, specs, received, raw = round_trip(pair, Kind.SUBMIT, [tasks.spec_wire(spec)],
                                            value_frames)
    assert specs == [spec]
    assert type(raw[0]) is tuple and type(raw[0][9][0]) is tuple   # plain on the wire
    assert isinstance(specs[0].args[0], tasks.ArgValue)
    assert isinstance(specs[0].kwargs["key"], tasks.ArgRef)
    value = unpack_value(specs[0].args[0].packed, received).value()
    assert (value == np.arange(100_000)).all()


def test_a_hand_built_spec_by_field_name_is_read():
    spec = {"task_id": b"t", "driver": "d", "kind": "task", "fn": b"", "fn_id": b"",
            "method": None, "shape": {}, "actor_id": None, "detached": False,
            "args": [], "kwargs": {}}
    assert codec.decode(None, Kind.SUBMIT, [spec]) == [tasks.TaskSpec(**spec)]


def test_task_messages_and_done_round_trip(pair):
    packed, value_frames = packed_value("x" * 10)
    message = tasks.TaskMessage(b"t", "d", tasks.ACTOR_CALL, "method", [packed],
                                {"k": packed}, gpu_ids=("0",), reply_to=b"Dme")
    assert round_trip(pair, Kind.TASK, tuple(message), value_frames)[1] == message
    short = tasks.TaskMessage(b"t", "d", tasks.ACTOR_CALL, "m", [], {})
    assert round_trip(pair, Kind.TASK, tuple(short))[1].gpu_ids == ()
    done = tasks.TaskDone(b"t", True, packed)
    assert round_trip(pair, Kind.DONE, tuple(done), value_frames)[1] == done
    assert round_trip(pair, Kind.DONE, tuple(tasks.TaskDone(b"t", False, None)))[1] \
        .packed is None


RESULT_ENTRIES = [
    tasks.ResultValue.of(b"t1", True, (b"data", 0, 0)),
    tasks.ResultValue.of(b"t2", False, (b"data", 0, 1), base=3),
    tasks.Stored.of(b"t3", "node", 123),
    tasks.Returned.of(b"t4", "node", True),
    tasks.Returned.of(b"t5", "node", False, {"worker_bound": 4}),
    tasks.Printed.of("node", 42, "hello\n", "stdout"),
    tasks.WorkerRoom.of("node", 2),
    tasks.Lost.of(b"t6", b"o", "node"),
    tasks.StoreFull.of(b"t7", "node", "no room"),
    tasks.ActorDied.of(b"t8", b"a", "it died"),
    tasks.WorkerDied.of(b"t9", "signal 9"),
]


def test_a_task_message_built_for_a_spec_is_that_spec_s_message(pair):
    spec = tasks.TaskSpec(b"t", "d", tasks.TASK, b"fn", b"id", None, {"CPU": 1.0}, None,
                          False, [], {})
    packed, value_frames = packed_value(3)
    wire = tasks.message_wire(spec, [packed], {"k": packed}, ["1"])
    assert type(wire) is tuple
    assert round_trip(pair, Kind.TASK, wire, value_frames)[1] == tasks.TaskMessage(
        b"t", "d", tasks.TASK, None, [packed], {"k": packed}, fn=b"fn", fn_id=b"id",
        gpu_ids=["1"], reply_to=None)


def test_every_result_entry_round_trips(pair):
    wire = [tuple(entry) for entry in RESULT_ENTRIES]
    _, header, _, raw = round_trip(pair, Kind.RESULTS, wire)
    assert all(type(entry) is tuple for entry in raw)
    decoded = [tasks.result_of(entry) for entry in header]
    assert decoded == RESULT_ENTRIES
    assert [type(entry) for entry in decoded] == [type(entry) for entry in RESULT_ENTRIES]
    assert decoded[1].status == tasks.ERROR and decoded[1].base == 3
    assert decoded[4].notice == {"worker_bound": 4} and decoded[3].notice is None


def test_result_entries_keep_their_wire_size():
    """A result entry is the tuple it was before the records: no class on the wire."""
    entry = tasks.ResultValue.of(b"t" * 16, True, (b"x" * 20, 0, 0))
    assert pickle.dumps(tuple(entry), protocol=5) == \
        pickle.dumps((b"t" * 16, "ok", (b"x" * 20, 0, 0), 0), protocol=5)
    assert b"runtime" not in pickle.dumps([tasks.spec_wire(tasks.TaskSpec(
        b"t", "d", "task", b"", b"", None, {}, None, False,
        [tasks.ArgValue.of((b"", 0, 0))], {}))], protocol=5)


def test_object_records_round_trip(pair):
    packed, value_frames = packed_value(b"v" * 100_000)
    cases = [
        (Kind.FETCH, objects.FetchRequest(7, b"o", 1 << 20)),
        (Kind.FETCH, objects.FetchRequest(8, b"o")),
        (Kind.PUT, objects.PutValue(b"o", packed, "driver1")),
        (Kind.PUT_BEGIN, objects.PutBegin(b"o", "driver1", b"pickle", [10, 20])),
        (Kind.PUT_PIECE, objects.PutPiece(b"o", 1, 16 << 20)),
        (Kind.RECLAIM, objects.Reclaim("driver1", 3)),
        (Kind.OBJECT, objects.ObjectReply(1, True, packed)),
        (Kind.OBJECT, objects.ObjectReply(2, False, None)),
        (Kind.OBJECT, objects.ObjectReply(3, True, {"objects": 1})),   # a stats answer
    ]
    for kind, record in cases:
        extra = value_frames if kind in (Kind.PUT, Kind.OBJECT) else ()
        assert round_trip(pair, kind, tuple(record), extra)[1] == record, kind
    for failure in (objects.ObjectFull.of("node", "no room"),
                    objects.ObjectTooLarge.of(1 << 30)):
        reply = objects.ObjectReply(4, False, tuple(failure))
        decoded = round_trip(pair, Kind.OBJECT, tuple(reply))[1]
        assert decoded.payload == failure and type(decoded.payload) is type(failure)
    for kind, header in ((Kind.FREE, [b"a", b"b"]), (Kind.STATS, 5),
                         (Kind.KILL_ACTOR, b"actor")):
        assert round_trip(pair, kind, header)[1] == header


def test_worker_messages_round_trip(pair):
    line = workers.WorkerLog("driver1", "text\n", "stderr")
    assert round_trip(pair, Kind.LOG, tuple(line))[1] == line
    nested = workers.WorkerLog("driver1", "text\n", "stdout", "node-b", 99)
    decoded = round_trip(pair, Kind.LOG, tuple(nested))[1]
    assert (decoded.origin_node_id, decoded.origin_pid) == ("node-b", 99)
    assert round_trip(pair, Kind.LOG, ("driver1", "text\n", "stdout"))[1] == \
        workers.WorkerLog("driver1", "text\n", "stdout")      # three fields: no origin
    for kind, header in ((Kind.READY, 1234), (Kind.BLOCKED, None), (Kind.UNBLOCKED, None),
                         (Kind.RETURNED, b"task"), (Kind.EXIT, None)):
        assert round_trip(pair, kind, header)[1] == header


MALFORMED = [
    (Kind.SUBMIT, ["not a task"]),
    (Kind.SUBMIT, "not a list"),
    (Kind.SUBMIT, [(b"t", "d")]),
    (Kind.SUBMIT, [(b"t", "d", "task", b"", b"", None, {}, None, False, [("x", 1)], {})]),
    (Kind.SUBMIT, [(b"t", "d", "task", b"", b"", None, {}, None, False, [], ["k"])]),
    (Kind.SUBMIT, [{"task_id": b"t", "no such field": 1}]),
    (Kind.TASK, None),
    (Kind.TASK, (b"t", "d", "task", None, [], "not a dict")),
    (Kind.DONE, (b"t", True)),
    (Kind.RESULTS, (("t", "ok", (b"", 0, 0)),)),
    (Kind.FETCH, 7),
    (Kind.OBJECT, (1, False, ("full", "only the node"))),
    (Kind.PUT, (b"o", (b"", 0, 0))),
    (Kind.PUT_BEGIN, {"object_id": b"o"}),
    (Kind.PUT_PIECE, (b"o", 1, 2, 3)),
    (Kind.FREE, [1, 2]),
    (Kind.RECLAIM, None),
    (Kind.STATS, "5"),
    (Kind.KILL_ACTOR, None),
    (Kind.READY, "pid"),
    (Kind.BLOCKED, 1),
    (Kind.RETURNED, None),
    (Kind.LOG, ("only the driver",)),
    (Kind.EXIT, ()),
]


@pytest.mark.parametrize("kind,header", MALFORMED, ids=[f"{k.name}-{i}" for i, (k, _) in
                                                          enumerate(MALFORMED)])
def test_a_malformed_header_is_malformed_and_the_socket_goes_on(pair, kind, header):
    router, dealer = pair
    frames.send(dealer, kind, header)
    frames.send(dealer, Kind.READY, 1)
    assert router.poll(5000)
    identity, received_kind, raw, _ = frames.recv(router, routed=True)
    with pytest.raises(MalformedMessageError) as caught:
        codec.decode(identity, received_kind, raw)
    assert caught.value.identity == b"Dtest" and caught.value.kind == kind
    assert router.poll(5000)                       # the next message is whole
    identity, received_kind, raw, _ = frames.recv(router, routed=True)
    assert codec.decode(identity, received_kind, raw) == 1


def test_an_unknown_kind_is_malformed_and_control_kinds_pass_through():
    with pytest.raises(MalformedMessageError, match="no such message kind"):
        codec.decode(b"D", b"\xff", None)
    header = (1, "nodes", {})
    for kind in (Kind.RPC, Kind.REPLY, Kind.NODES, Kind.DRIVER_DEAD):
        assert codec.decode(b"D", kind, header) is header


def test_a_bad_result_entry_is_refused_alone():
    """Entries are decoded one by one (runtime.driver.results): the list passes, the
    bad entry raises ValueError, the good ones decode."""
    header = codec.decode(None, Kind.RESULTS, [("t", "ok", None), ("t", "nonsense"),
                                                tuple(RESULT_ENTRIES[2])])
    with pytest.raises(ValueError):
        tasks.result_of(header[0])
    with pytest.raises(ValueError, match="not one of"):
        tasks.result_of(header[1])
    assert tasks.result_of(header[2]) == RESULT_ENTRIES[2]
