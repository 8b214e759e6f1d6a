"""Actor calls on the driver's same-host paths (the sync channel for a lone small call,
ZeroMQ for batches and large messages): order, large values both ways, errors, and a
worker that dies under a sync call."""
from __future__ import annotations

import os
import signal

import numpy as np
import pytest

import runtime
from runtime.protocol import sync_channel

pytestmark = pytest.mark.timeout(60)


@runtime.remote
class Log:
    def __init__(self):
        self.items = []

    def add(self, item):
        self.items.append(item)
        return len(self.items)

    def items_so_far(self):
        return list(self.items)

    def echo(self, value):
        return value

    def blob(self, size_bytes):
        return b"x" * size_bytes

    def pid(self):
        return os.getpid()

    def fail(self):
        raise ValueError("bad input")

    def hang(self):
        import time
        time.sleep(60)


def test_sync_and_async_calls_keep_their_order(one_node):
    log = Log.remote()
    expected = []
    for round_ in range(20):
        batch = [log.add.remote(("async", round_, i)) for i in range(5)]
        expected += [("async", round_, i) for i in range(5)]
        assert runtime.get(log.add.remote(("sync", round_))) == len(expected) + 1
        expected.append(("sync", round_))
        assert runtime.get(batch)[-1] == len(expected) - 1
    assert runtime.get(log.items_so_far.remote()) == expected


def test_sync_calls_with_large_arguments_and_results(one_node):
    log = Log.remote()
    big = sync_channel.MAX_MESSAGE_BYTES * 2
    assert runtime.get(log.blob.remote(big)) == b"x" * big          # answer via ZeroMQ
    array = np.arange(big // 8, dtype=np.int64)
    assert np.array_equal(runtime.get(log.echo.remote(array)), array)
    text = "y" * big                                                  # in-band, large
    assert runtime.get(log.echo.remote(text)) == text
    assert runtime.get(log.echo.remote("small")) == "small"           # still fine after


def test_sync_call_error_reaches_get(one_node):
    log = Log.remote()
    with pytest.raises(runtime.TaskError, match="ValueError: bad input"):
        runtime.get(log.fail.remote())
    assert runtime.get(log.add.remote(1)) == 1


def test_worker_killed_under_a_sync_call(one_node):
    log = Log.remote()
    pid = runtime.get(log.pid.remote())
    pending = log.hang.remote()
    with pytest.raises(runtime.GetTimeoutError):
        runtime.get(pending, timeout=0.5)
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(runtime.ActorDiedError):
        runtime.get(pending, timeout=30)
    with pytest.raises(runtime.ActorDiedError):
        runtime.get(log.add.remote(1), timeout=30)
