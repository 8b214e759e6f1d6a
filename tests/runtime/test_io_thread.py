"""The driver's IO thread never dies of one bad event (runtime.driver.loop), on a real
one-node cluster: what depended on the event fails with DriverIOError at once, and the
thread goes on; when it truly cannot go on, every pending and later call fails at once
instead of waiting for timeouts."""
from __future__ import annotations

import threading
import time
from concurrent.futures import Future

import pytest
import zmq

import runtime
from runtime import api
from runtime.driver.loop import Call
from runtime.errors import DriverIOError
from tests.runtime.conftest import wait_until

pytestmark = pytest.mark.timeout(90)


@runtime.remote
def double(x):
    return 2 * x


@runtime.remote
def sleepy(seconds):
    import time
    time.sleep(seconds)
    return seconds


def test_node_stats_for_an_unknown_node_fails_and_the_thread_goes_on(one_node):
    core = api.current_core()
    # the error itself, not concurrent.futures' TimeoutError after timeout_s
    with pytest.raises(DriverIOError, match="node_stats\\('no-such-node'\\).*KeyError"):
        api.node_stats("no-such-node", timeout_s=3600)
    assert core.thread.is_alive()
    assert runtime.get([double.remote(i) for i in range(20)], timeout=60) == \
        [2 * i for i in range(20)]
    assert api.node_stats(next(iter(core.nodes)))["workers"] >= 1


def test_a_failing_command_fails_only_its_caller(one_node):
    core = api.current_core()

    def broken():
        raise RuntimeError("boom")
    future: Future = Future()
    core._run(Call(broken, future, "a broken command"))
    with pytest.raises(DriverIOError, match="a broken command: RuntimeError: boom"):
        future.result(30)
    core._run(lambda: 1 / 0)          # no caller waits on it: logged, nothing else
    assert runtime.get(double.remote(21), timeout=60) == 42
    assert core.thread.is_alive()


def test_a_result_that_cannot_be_handled_fails_its_object_only(one_node):
    core = api.current_core()
    ref = sleepy.remote(3)
    other = sleepy.remote(0)
    wait_until(lambda: ref.id in core.tasks)      # sent to its node
    # an entry whose value part is not (data, base, count): handling it raises
    core._run(lambda: core.io.handle(None, b"results", [(ref.id, "ok", None)], []))
    with pytest.raises(DriverIOError, match="the result of"):
        runtime.get(ref, timeout=30)
    assert runtime.get(other, timeout=60) == 0
    assert runtime.get(double.remote(5), timeout=60) == 10


def _pending_get(ref):
    """get() in a thread: -> (thread, outcome list filled when it returns or raises)."""
    outcome = []

    def wait():
        try:        # a get that were not failed would wait far longer than the test
            outcome.append(("value", runtime.get(ref, timeout=3600)))
        except BaseException as error:   # what the test looks at
            outcome.append(("error", error))
    thread = threading.Thread(target=wait)
    thread.start()
    return thread, outcome


class BrokenPoller:
    """Stands in for the IO thread's zmq.Poller, as a libzmq failure would."""

    def poll(self, timeout=None):
        raise zmq.ZMQError(zmq.ETERM)


def test_an_io_thread_that_cannot_go_on_fails_everything_at_once(one_node):
    core = api.current_core()
    ref = sleepy.remote(60)
    time.sleep(0.5)                               # it runs now
    thread, outcome = _pending_get(ref)
    core.poller = BrokenPoller()
    thread.join(60)
    assert not thread.is_alive()
    kind, error = outcome[0]
    assert kind == "error" and isinstance(error, DriverIOError) and error.fatal, outcome
    assert "runtime.shutdown() and runtime.init() again" in str(error)
    wait_until(lambda: not core.thread.is_alive(), timeout_s=30)
    with pytest.raises(DriverIOError):            # later calls: at once
        double.remote(1)
    with pytest.raises(DriverIOError):
        runtime.available_resources()
    runtime.shutdown()                            # does not hang or raise
    one_node.connect()                            # a new driver works
    assert runtime.get(double.remote(4), timeout=60) == 8


def test_a_step_that_keeps_failing_gives_up(one_node, monkeypatch):
    """The heartbeat raising every time: after GIVE_UP_AFTER_S the thread gives up
    and the pending get fails, rather than everything hanging on a silent driver."""
    from runtime.driver import loop as driver_loop
    monkeypatch.setattr(driver_loop, "GIVE_UP_AFTER_S", 1.0)
    core = api.current_core()
    ref = sleepy.remote(60)
    thread, outcome = _pending_get(ref)

    def broken_heartbeat():
        raise OSError("the control socket is gone")
    core.io.heartbeat = broken_heartbeat
    thread.join(60)
    assert not thread.is_alive()
    kind, error = outcome[0]
    assert kind == "error" and isinstance(error, DriverIOError) and error.fatal
    assert "the heartbeat" in str(error) and "OSError" in str(error)
    runtime.shutdown()
