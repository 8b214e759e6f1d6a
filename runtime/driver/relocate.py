"""Actors across processes, on the driver's IO thread (a mixin of DriverIO; its state,
such as the timers, lives there): the owner publishes where each of its actors runs,
and a process that holds a passed-on ("borrowed") handle follows the actor when its
node or worker dies.

Owner: it publishes each actor's state with its node and epoch (the restarts so far):
"creating" when it is placed, "up" once it runs, "restarting" when a restart begins,
and removes it (`publish_actor_gone`) when it is dead for good. The control service
keeps the table (rpc actor_up / actor_location / remove_actor) and drops a driver's
entries when the driver exits.

Borrower: `relocate(actor, cause)` parks the actor (its calls wait, as during an
owner's restart) and asks the control where it runs, every RELOCATE_POLL_S, until the
entry says "up" on a live node at the epoch it knew or a newer one (the calls go
there), the entry is gone (ActorDiedError: no restart left, or its owner exited), or
RELOCATE_WAIT_S passes.
Calls already in flight when it died fail, as they do for the owner.
"""
from __future__ import annotations

import heapq
import time
from concurrent.futures import Future

from runtime.errors import ActorDiedError

RELOCATE_POLL_S = 0.2
RELOCATE_WAIT_S = 30.0


class RelocateMixin:
    # -- IO-thread helpers: control calls answered by callback, and timers -------------
    def ask_control(self, method: str, kwargs: dict, on_answer) -> None:
        """Send an rpc; on_answer(ok, result) runs on this thread when it is answered."""
        future: Future = Future()
        request_id = self._rpc_id()
        self.core.rpc_futures[request_id] = future
        future.add_done_callback(lambda done: on_answer(*done.result()))
        self.send_rpc(method, kwargs, request_id)

    def later(self, delay_s: float, action) -> None:
        heapq.heappush(self.timers, (time.monotonic() + delay_s, next(self.timer_ids),
                                     action))

    def run_due(self) -> None:
        now = time.monotonic()
        while self.timers and self.timers[0][0] <= now:
            heapq.heappop(self.timers)[2]()

    # -- owner ------------------------------------------------------------------------
    def publish_actor(self, actor, state: str) -> None:
        """state: "creating", "up" or "restarting" (an actor this process owns)."""
        self.send_rpc("actor_up", {
            "actor_id": actor.actor_id,
            "info": {"state": state, "node_id": actor.node_id, "epoch": actor.epoch,
                     "owner": self.core.driver_id, "detached": actor.create.detached}})

    def publish_actor_gone(self, actor) -> None:
        self.send_rpc("remove_actor", {"name": actor.name, "actor_id": actor.actor_id})

    # -- borrower ---------------------------------------------------------------------
    def relocate(self, actor, cause: str) -> None:
        self._close_direct(actor)
        actor.node_id, actor.state = None, "pending"
        deadline = time.monotonic() + RELOCATE_WAIT_S
        # the owner learns of the death about when we do: give its "restarting" a moment
        self.later(RELOCATE_POLL_S, lambda: self._ask_location(actor, cause, deadline))

    def _ask_location(self, actor, cause: str, deadline: float) -> None:
        def answer(ok, info):
            if actor.state != "pending":      # killed meanwhile
                return
            node = self.core.nodes.get((info or {}).get("node_id"))
            # "up" on a live node: restarted (a newer epoch), or never down (the call
            # that failed reached its node before the actor did)
            if ok and info is not None and info.get("state") == "up" and \
                    info.get("epoch", 0) >= actor.epoch and node is not None and \
                    node["alive"]:
                actor.node_id, actor.state = info["node_id"], "alive"
                actor.epoch = info["epoch"]
                calls, actor.waiting_calls = actor.waiting_calls, []
                for call in calls:
                    self.place(call)
            elif (ok and info is None) or time.monotonic() >= deadline:
                reason = "no restart left" if ok and info is None else \
                    f"not restarted within {RELOCATE_WAIT_S:g} s"
                self._actor_dead(actor, ActorDiedError(actor.actor_id.hex(),
                                                       f"{cause} ({reason})"))
            else:
                self.later(RELOCATE_POLL_S,
                           lambda: self._ask_location(actor, cause, deadline))
        self.ask_control("actor_location", {"actor_id": actor.actor_id}, answer)
