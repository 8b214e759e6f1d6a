"""Which of a node's GPU ids are in use, and how much of each: the node agent's
allocator behind a task's or actor's CUDA_VISIBLE_DEVICES (pure: no I/O, no clock).

A whole-GPU request (num_gpus=1, 2) takes ids nobody uses. A fraction (num_gpus=0.5)
shares an id: it goes to the fullest id that still has room, so fractions pack onto one
GPU before the next is touched and whole GPUs stay free for whole requests. A request
such as 1.5 takes one whole id and half of another. An allocation is a tuple of
(id, amount) pairs; giving it back frees exactly that."""
from __future__ import annotations

EPSILON = 1e-9


class GpuIds:
    def __init__(self, ids):
        self.used: dict[str, float] = {str(i): 0.0 for i in ids}   # in offer order

    def take(self, amount: float) -> tuple | None:
        """An allocation for `amount` GPUs, or None when the ids cannot give it now
        (though the node's GPU count might: fractions spread over several ids)."""
        chosen = self._choose(amount)
        for gpu_id, share in chosen or ():
            self.used[gpu_id] += share
        return chosen

    def _choose(self, amount: float) -> tuple | None:
        if amount <= EPSILON:
            return ()
        whole = int(amount + EPSILON)
        part = amount - whole if amount - whole > EPSILON else 0.0
        free = [i for i, used in self.used.items() if used <= EPSILON]
        if len(free) < whole:
            return None
        chosen = [(i, 1.0) for i in free[:whole]]
        if part:
            rest = [i for i in self.used if i not in free[:whole]
                    and self.used[i] + part <= 1.0 + EPSILON]
            if not rest:
                return None
            fullest = max(rest, key=lambda i: self.used[i])   # ties: the first id
            chosen.append((fullest, part))
        return tuple(chosen)

    def give_back(self, allocation) -> None:
        for gpu_id, share in allocation or ():
            left = self.used.get(gpu_id, 0.0) - share
            self.used[gpu_id] = left if left > EPSILON else 0.0

    def in_use(self) -> dict[str, float]:
        return {i: used for i, used in self.used.items() if used > EPSILON}


def ids_of(allocation) -> list[str]:
    """The ids of an allocation, for CUDA_VISIBLE_DEVICES."""
    return [gpu_id for gpu_id, _ in allocation or ()]


def default_ids(gpu_count: float) -> list[str]:
    """Ids for a node told its GPU count but not its ids: "0" .. "n-1"."""
    whole = int(gpu_count + EPSILON)
    return [str(i) for i in range(whole + (1 if gpu_count - whole > EPSILON else 0))]
