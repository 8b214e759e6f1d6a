"""One lease as its driver holds it (runtime.driver.leases): the channels to the leased
worker (a ZeroMQ DEALER to its direct socket, and its sync channel) and what is in
flight there. Runs on the driver's IO thread."""
from __future__ import annotations

import logging
import time

import zmq

from runtime.protocol import frames as protocol
from runtime.protocol import sync_channel
from runtime.protocol.frames import Packer
from runtime.protocol.kinds import Kind
from runtime.protocol.leases import LeaseGrant
from runtime.protocol.tasks import TASK

log = logging.getLogger("corral.driver")


class DriverLease:
    __slots__ = ("lease_id", "node_id", "key", "sock", "sync", "inflight", "blocked",
                 "revoked", "idle_since_s", "functions_sent")

    def __init__(self, lease_id: bytes, node_id: str, key: tuple, sock, sync):
        """key: (node id, shape key), as the queue of tasks it takes from."""
        self.lease_id, self.node_id, self.key = lease_id, node_id, key
        self.sock = sock            # DEALER to the worker's direct socket
        self.sync = sync            # its sync channel, or None
        self.inflight = 0
        self.blocked = False        # it sent tasks back: its task waits in get()
        self.revoked = False        # send no more; return once nothing is in flight
        self.idle_since_s = time.monotonic()
        self.functions_sent: set = set()   # the worker keeps functions by fn_id

    @classmethod
    def open(cls, core, grant: LeaseGrant, node_id: str, key: tuple) -> "DriverLease":
        """Connect to the granted worker; without its sync channel, ZeroMQ only."""
        sock = protocol.connect_dealer(core.ctx, grant.direct, None, core.identity)
        core.poller.register(sock, zmq.POLLIN)
        sync = None
        if grant.sync:
            try:
                sync = sync_channel.connect(grant.sync)
            except OSError as error:
                log.info("lease %s: no sync channel (%s)", grant.lease_id.hex(), error)
            else:
                core.poller.register(sync.fileno(), zmq.POLLIN)
        return cls(grant.lease_id, node_id, key, sock, sync)

    @property
    def usable(self) -> bool:
        return not self.blocked and not self.revoked

    def send(self, core, record, closing: list) -> bool:
        """Send the task (a TaskMessage; the function only the first time this worker
        gets it): over the sync channel when it is small (no out-of-band buffers; at
        most PIPELINE_DEPTH are in flight, so its buffers never fill, and tasks need
        no order among them), else over ZeroMQ. -> False when the sync channel failed
        (its socket on `closing`; the task went over ZeroMQ)."""
        packer = Packer()
        objects = core.objects

        def value(arg):
            kind, item = arg
            return packer.value(item if kind == "v" else objects[item.id].value)
        fn = None if record.fn_id in self.functions_sent else record.fn
        self.functions_sent.add(record.fn_id)
        args = [value(a) for a in record.args] if record.args else []
        kwargs = {k: value(v) for k, v in record.kwargs.items()} if record.kwargs else {}
        record.lease = self
        self.inflight += 1
        ok = True
        if self.sync is not None and not packer.frames:
            message = sync_channel.encode((record.task_id, core.driver_id, TASK, None,
                                           args, kwargs, fn, record.fn_id, (),
                                           core.identity))
            if message is not None:
                try:
                    self.sync.send(message)
                    return True
                except OSError as error:
                    log.warning("lease %s: sync channel failed (%s); tasks use ZeroMQ",
                                self.lease_id.hex(), error)
                    self.close_sync(core, closing)
                    ok = False
        protocol.send(self.sock, Kind.TASK, (record.task_id, core.driver_id, TASK, None,
                                             args, kwargs, fn, record.fn_id, (), None),
                      packer.frames)
        return ok

    def close(self, core, closing: list) -> None:
        """Out of the poller now; the sockets themselves go on `closing`, closed after
        this round of events (runtime.driver.leases.DriverLeases.pump): an event of
        this round may still name them, and a closed one would fail its receive."""
        self.close_sync(core, closing)
        if self.sock is not None:
            core.poller.unregister(self.sock)
            closing.append(self.sock)
            self.sock = None

    def close_sync(self, core, closing: list) -> None:
        if self.sync is not None:
            core.poller.unregister(self.sync.fileno())
            closing.append(self.sync)
            self.sync = None
