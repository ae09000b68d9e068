"""Receive budgets: how much a sender, or the connection that forwards for it, may make this
node work per unit of time.

The expensive part of receiving is not the gate (decode and one Ed25519 check, well under
a millisecond for a typical batch) but what an accepted batch costs later: a row in the
store and, in the merge round, one re-embedding of its text (3-33 ms with MiniLM). Budgets
are therefore charged at the gate, before a batch is stored or queued, in the two units
that drive that cost: rows and bytes.

- **Per sender** (the Ed25519 key that signed the batch): token buckets of rows and bytes,
  refilled continuously. In registry mode the rate is weighted by the sender's stake
  (`Membership.stake_weight`), so buying more stake buys more bandwidth and Sybil keys
  need a bond each.
- **Per forwarder**, in open mode only: keys are free there, so a flood from 2,000 fresh
  keys is one connection's traffic. Its bucket of messages and bytes is charged before the
  envelope is even decoded, and its rows after.

A batch over budget is refused with a *temporary* reason (`sender_budget`,
`forwarder_budget`): nobody is charged reputation, the batch is not stored, and repair will
fetch it again later, when the bucket has refilled. Defaults are generous: an honest node
publishes at most `max_batch` (100) experiences per batch and one outbox flush per
`broadcast_interval_s` (60 s), far below them.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from fai_core.refusals import Refusal


@dataclass(frozen=True)
class Rate:
    """A sustained rate per second and the burst a full bucket allows."""

    per_s: float
    burst: float

    def __post_init__(self) -> None:
        if not (self.per_s > 0 and self.burst > 0):
            raise ValueError("a rate and its burst must be positive")


@dataclass(frozen=True)
class BudgetPolicy:
    sender_rows: Rate = Rate(per_s=50.0, burst=2_000.0)
    sender_bytes: Rate = Rate(per_s=256_000.0, burst=4_000_000.0)
    #: Open mode only: what one connection may forward, whatever keys signed it.
    forwarder_messages: Rate = Rate(per_s=20.0, burst=200.0)
    forwarder_bytes: Rate = Rate(per_s=512_000.0, burst=4_000_000.0)
    #: Sustained, what 2 cores re-embed of long texts under load (~25 rows/s measured);
    #: the burst absorbs a dev fleet's catch-up.
    forwarder_rows: Rate = Rate(per_s=25.0, burst=2_000.0)
    #: Buckets kept at most (least recently used forgotten): bounds memory under key churn.
    #: A forgotten key starts again with a full bucket, which is why open mode also budgets
    #: the forwarder, whose identity is a live connection.
    max_tracked: int = 20_000


class TokenBuckets:
    """One token bucket per key, at a common rate; `weight` scales a key's rate and burst."""

    def __init__(self, rate: Rate, max_tracked: int) -> None:
        self.rate = rate
        self.max_tracked = max_tracked
        self._buckets: OrderedDict[bytes | str, tuple[float, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def level(self, key: bytes | str, now_s: float, weight: float = 1.0) -> float:
        burst = self.rate.burst * weight
        tokens, stamp = self._buckets.get(key, (burst, now_s))
        return min(burst, tokens + max(0.0, now_s - stamp) * self.rate.per_s * weight)

    def allows(self, key: bytes | str, amount: float, now_s: float, weight: float = 1.0) -> bool:
        """Whether `amount` fits now. A request larger than a full bucket fits only when the
        bucket is full (it then goes into debt), so one legal large batch is never refused
        forever."""
        tokens = self.level(key, now_s, weight)
        return tokens >= min(amount, self.rate.burst * weight)

    def take(self, key: bytes | str, amount: float, now_s: float, weight: float = 1.0) -> None:
        tokens = self.level(key, now_s, weight)
        self._buckets[key] = (tokens - amount, now_s)
        self._buckets.move_to_end(key)
        while len(self._buckets) > self.max_tracked:
            self._buckets.popitem(last=False)


class ReceiveBudget:
    """The node's budgets. `forwarders` is False in registry mode (see the module doc)."""

    def __init__(self, policy: BudgetPolicy | None = None, *, forwarders: bool) -> None:
        self.policy = p = policy or BudgetPolicy()
        self.forwarders = forwarders
        self._sender_rows = TokenBuckets(p.sender_rows, p.max_tracked)
        self._sender_bytes = TokenBuckets(p.sender_bytes, p.max_tracked)
        self._fwd_messages = TokenBuckets(p.forwarder_messages, p.max_tracked)
        self._fwd_bytes = TokenBuckets(p.forwarder_bytes, p.max_tracked)
        self._fwd_rows = TokenBuckets(p.forwarder_rows, p.max_tracked)

    def before_decode(self, forwarder: str, size: int, now_s: float) -> Refusal | None:
        """Charge one message of `size` bytes to the connection; None if it may be decoded."""
        if not self.forwarders:
            return None
        if not (
            self._fwd_messages.allows(forwarder, 1, now_s)
            and self._fwd_bytes.allows(forwarder, size, now_s)
        ):
            return Refusal.FORWARDER_BUDGET
        self._fwd_messages.take(forwarder, 1, now_s)
        self._fwd_bytes.take(forwarder, size, now_s)
        return None

    def admit(
        self,
        sender: bytes,
        forwarder: str | None,
        rows: int,
        size: int,
        now_s: float,
        weight: float = 1.0,
    ) -> Refusal | None:
        """Charge a verified batch; None if it may be stored, else the temporary reason."""
        if not (
            self._sender_rows.allows(sender, rows, now_s, weight)
            and self._sender_bytes.allows(sender, size, now_s, weight)
        ):
            return Refusal.SENDER_BUDGET
        by_forwarder = self.forwarders and forwarder is not None
        if by_forwarder and not self._fwd_rows.allows(forwarder, rows, now_s):
            return Refusal.FORWARDER_BUDGET
        self._sender_rows.take(sender, rows, now_s, weight)
        self._sender_bytes.take(sender, size, now_s, weight)
        if by_forwarder:
            self._fwd_rows.take(forwarder, rows, now_s)
        return None
