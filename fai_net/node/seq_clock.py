"""Own sequence numbers that carry time, so that losing the store cannot reuse one.

A seq signed twice with different content is equivocation: peers write evidence that
anyone can submit for a slash. The batch store's counter is durable (fsynced before a seq
is used), but a node whose store is lost, or restored from an older backup, while its
`node.key` survives would count from an old value again and equivocate against its own
operator. So the node never reserves a seq below `floor(now)`:

    seq >= now_ms << SHIFT          (the low SHIFT bits count batches within a millisecond)

and it never *uses* a seq whose time part is ahead of its clock (`usable`). Together:
every seq the node ever signed satisfies `seq >> SHIFT <= the wall clock when it was
signed`, and every seq it reserves later is >= `later_now_ms << SHIFT`, which is larger
as soon as the clock has moved on by one millisecond. A wiped or rolled-back store
therefore starts above everything already signed, with no coordination.

What this rests on is stated, not hidden: the wall clock must not step back past the last
publish across a store loss. With the store intact a clock stepped back is caught
(`usable` is False, and the node holds its outbox until the clock has caught up); with
the store lost *and* the clock stepped back, nothing local can know. The node also raises
its counter above any of its own batches that come back from peers (gossip or repair).

SHIFT = 12 allows 4,096 batches per millisecond (the node publishes at most one per 20 ms)
and keeps seqs below 2**53 until the year 2248, exact in every JSON number and in SQLite.
"""

from __future__ import annotations

SHIFT = 12


def floor(now_ms: int) -> int:
    """The smallest seq the node may reserve at wall-clock time `now_ms`."""
    return max(0, now_ms) << SHIFT


def usable(seq: int, now_ms: int) -> bool:
    """Whether signing `seq` now keeps the invariant `seq >> SHIFT <= now_ms`."""
    return seq >> SHIFT <= now_ms
