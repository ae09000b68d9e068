"""The queue of accepted batches waiting for a merge round: bounded, and fair across whoever
fills it.

An unbounded queue let one flooding peer grow the node's memory without limit and made
every honest batch wait behind thousands of hostile ones, since a round took everything
pending. Here:
- each *principal* (the sender key in registry mode; the forwarding connection in open
  mode, where keys are free) has its own FIFO;
- the queue holds at most `max_batches` batches and `max_rows` rows, and one principal at
  most `share` of either: a batch that does not fit is refused at the gate (`busy`, a
  temporary reason: not stored, fetched again by repair later);
- `take(row_budget)` serves principals round-robin, one batch at a time, until the round's
  row budget is spent, so a principal with one batch waiting is served in the next round
  whatever the others have queued.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class QueueLimits:
    max_batches: int = 1_024
    max_rows: int = 16_384
    #: Fraction of either limit one principal may hold (here 128 batches, 2,048 rows: a
    #: flooder's share drains in under two minutes at the ~25 rows/s 2 cores re-embed).
    share: float = 0.125


class FairQueue(Generic[T]):
    def __init__(self, limits: QueueLimits | None = None) -> None:
        self.limits = limits or QueueLimits()
        self._queues: OrderedDict[object, deque[tuple[T, int]]] = OrderedDict()
        self._rows_of: dict[object, int] = {}
        self.batches = 0
        self.rows = 0

    def __len__(self) -> int:
        return self.batches

    def fits(self, principal: object, rows: int) -> bool:
        lim = self.limits
        if self.batches + 1 > lim.max_batches or self.rows + rows > lim.max_rows:
            return False
        mine = self._queues.get(principal)
        held_batches = len(mine) if mine else 0
        held_rows = self._rows_of.get(principal, 0)
        # A principal with nothing queued may always queue one batch (if the totals allow):
        # a share smaller than one large batch must not lock a sender out for good.
        if held_batches == 0:
            return True
        return (
            held_batches + 1 <= lim.share * lim.max_batches
            and held_rows + rows <= lim.share * lim.max_rows
        )

    def put(self, principal: object, item: T, rows: int) -> None:
        """Queue `item` (check `fits` first; `put` itself never refuses: requeues after a
        restart must not be lost)."""
        self._queues.setdefault(principal, deque()).append((item, rows))
        self._rows_of[principal] = self._rows_of.get(principal, 0) + rows
        self.batches += 1
        self.rows += rows

    def take(self, row_budget: int) -> list[T]:
        """Round-robin over principals, a batch at a time, until `row_budget` rows are taken
        (always at least one batch when anything waits)."""
        out: list[T] = []
        taken = 0
        while self._queues and (not out or taken < row_budget):
            principal, queue = next(iter(self._queues.items()))
            item, rows = queue.popleft()
            out.append(item)
            taken += rows
            self.batches -= 1
            self.rows -= rows
            self._rows_of[principal] -= rows
            if queue:
                self._queues.move_to_end(principal)  # next principal's turn
            else:
                del self._queues[principal]
                del self._rows_of[principal]
        return out

    def principals(self) -> int:
        return len(self._queues)
