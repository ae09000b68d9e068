"""Driving real in-process nodes (tests/support/inprocess.py) with wire-v2 batches.

`deliver` hands an envelope to a node's gossip validator as if `forwarder` had relayed it on
`topic` (the node's real receive path: refusal cache, budgets, gate, store, resolver);
`v2_batch` makes a batch that is valid for the node's fleet (its embedder, its model) by a
key that is no node's, against any block; `until` polls a condition.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import trio
from libp2p.peer.id import ID

from fai_core import wire
from fai_core.baseline_block import BaselineBlock, make_baseline_block
from fai_core.clock import now_ms
from fai_core.experience import Experience
from fai_core.identity import NodeKey
from fai_net.node.identity import NodeIdentity
from fai_net.p2p.topics import topic_for


class Msg:
    """The two fields of a gossipsub message the node's validator reads."""

    def __init__(self, data: bytes, topic: str) -> None:
        self.data, self.topicIDs = data, [topic]


def relay(seed: int) -> NodeIdentity:
    """A peer identity that is no running node's (a relay, a flooder, a liar)."""
    return NodeIdentity.from_seed(bytes([seed]) * 32)


def deliver(node, envelope: bytes, forwarder: ID, *, version: int = 2) -> bool:
    """The node's verdict on `envelope` relayed by `forwarder` on the coding topic."""
    return node._validator(forwarder, Msg(envelope, topic_for("coding", version)))


def fleet_block(node, seed: int) -> BaselineBlock:
    """A block a sender of the node's fleet could make: the mean of a few texts' embeddings."""
    vectors = node.embedder.embed([f"a lesson about topic {seed} number {i}" for i in range(4)])
    return make_baseline_block(vectors.mean(axis=0), node.embedder.model_id)


def v2_batch(
    node,
    texts: list[str],
    *,
    seed: int,
    block: BaselineBlock,
    attach: bool = False,
    seq: int = 1,
) -> wire.SignedBatch:
    """A v2 batch of `texts` by the seed's key (no node's), valid for `node`'s fleet,
    encoded against `block` (which must have the fleet's dimension)."""
    key = NodeKey(bytes([seed]) * 32)
    vectors = node.embedder.embed(texts)
    created = now_ms()
    exps = [
        Experience.create(t, v, 0.7, "coding", key.public_key, created)
        for t, v in zip(texts, vectors, strict=True)
    ]
    return wire.encode_batch_v2(
        exps, key=key, seq=seq, timestamp_ms=created, baseline=block, attach_baseline=attach
    )


async def until(predicate: Callable[[], Awaitable[bool]], seconds: float = 20.0) -> None:
    with trio.fail_after(seconds):
        while not await predicate():
            await trio.sleep(0.05)


async def library_count(node) -> int:
    return await trio.to_thread.run_sync(node.library.count)


def wire_status(node) -> dict:
    """`status.wire` without the round trip: the resolver's counters."""
    return node.parts.resolver.status()
