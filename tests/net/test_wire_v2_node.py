"""Wire v2 between real nodes: baselines by reference, both versions read, topics checked.

In-process nodes on real libp2p hosts (tests/support/inprocess.py). A batch delivered
without its baseline block waits in the node's park and is completed with the block fetched
over repair's `blocks` op; a node publishing version 1 and one publishing version 2 read each
other; a version 2 batch on a version 1 topic is refused and charged to the relay (old nodes
there could not read it, and would charge whoever forwarded it).
"""

from __future__ import annotations

import trio

from fai_core import wire
from fai_core.baseline_block import make_baseline_block, reference_block
from fai_core.clock import now_ms
from fai_core.embedding import HashingEmbedder
from fai_core.experience import Experience
from fai_core.identity import NodeKey
from fai_core.wire import encode_batch_v2
from fai_net.node.identity import NodeIdentity
from fai_net.p2p.topics import topic_for
from tests.support.inprocess import config, connect, start

MODEL = HashingEmbedder(384).model_id


class _Msg:
    """The two fields of a gossipsub message the node's validator reads."""

    def __init__(self, data: bytes, topic: str) -> None:
        self.data, self.topicIDs = data, [topic]


async def _publish(node, texts: list[str]) -> str:
    await node.add_experiences([{"text": t, "domain": "coding"} for t in texts])
    return (await node.broadcast("coding"))["batch_id"]


def _own_envelopes(node) -> list[bytes]:
    """The node's own batches as stored, oldest first."""
    return [
        bytes(row[0])
        for row in node.store._conn.execute(
            "SELECT envelope FROM batches WHERE origin = 'local' ORDER BY cursor"
        )
    ]


async def _until(predicate, seconds: float = 20.0) -> None:
    with trio.fail_after(seconds):
        while not await predicate():
            await trio.sleep(0.1)


def _v2_batch(node, texts: list[str], *, attach: bool, seed: int = 9, seq: int = 1, block=None):
    """A v2 batch of `texts` by a key that is no node's, valid for `node`'s fleet, and the
    block it names (by default the mean of its embeddings)."""
    key = NodeKey(bytes([seed]) * 32)
    vectors = node.embedder.embed(texts)
    created = now_ms()
    exps = [
        Experience.create(t, v, 0.7, "coding", key.public_key, created)
        for t, v in zip(texts, vectors, strict=True)
    ]
    block = block or make_baseline_block(vectors.mean(axis=0), node.embedder.model_id)
    signed = encode_batch_v2(
        exps, key=key, seq=seq, timestamp_ms=created, baseline=block, attach_baseline=attach
    )
    return signed, block


def test_a_batch_without_its_block_is_parked_then_completed_over_repair(tmp_path):
    """b receives from a a batch that names its baseline block without carrying it (the
    batch that carried it went elsewhere): b stores it, parks it, fetches the block from a
    over repair and merges the batch. Breaks if the park, the fetch or the `blocks` op
    fails."""

    async def main():
        async with trio.open_nursery() as n:
            a = await start(n, config(tmp_path, "a"))
            b = await start(n, config(tmp_path, "b"))
            texts = ["close files in a finally block", "pin the toolchain"]
            signed, block = _v2_batch(b, texts, attach=False)
            a.store.put_block(block.cid, block.data, now_ms())  # a holds it, b does not
            await connect(b, a)
            topic = topic_for("coding", 2)
            assert b._validator(a.peer_id, _Msg(signed.envelope, topic)), b.metrics.rejections()
            assert b.store.has(signed.cid)

            async def merged():
                return await _count(b, 2)

            await _until(merged)
            wire = (await b.status())["wire"]
            assert wire["fetched_blocks"] == 1 and wire["parked_batches"] == 0
            # The fetched block, beside the fleet's reference block every node stores.
            assert wire["stored_blocks"] == 2 and wire["publishes"] == 2
            assert b.store.unmerged() == []
            # The next batch against the same block needs no fetch: b holds it now.
            texts = ["retry flaky calls with backoff"]
            again, _ = _v2_batch(b, texts, attach=False, seq=2, block=block)
            assert b._validator(a.peer_id, _Msg(again.envelope, topic))
            await _until(lambda: _count(b, 3))
            assert (await b.status())["wire"]["fetched_blocks"] == 1
            n.cancel_scope.cancel()

    trio.run(main)


def test_a_block_no_peer_holds_leaves_the_batch_parked_and_unmerged(tmp_path):
    """Nobody is charged for a block nobody serves (an outage is no proof of fault); the
    batch stays unmerged in the store, so a restart tries again."""

    async def main():
        async with trio.open_nursery() as n:
            a = await start(n, config(tmp_path, "a"))
            b = await start(n, config(tmp_path, "b"))
            signed, _ = _v2_batch(b, ["close files in a finally block"], attach=False)
            await connect(b, a)
            sender = signed.batch.sender
            assert b._validator(a.peer_id, _Msg(signed.envelope, topic_for("coding", 2)))
            await trio.sleep(3)  # one fetch pass at least
            wire = (await b.status())["wire"]
            assert wire["parked_batches"] == 1 and wire["missing_blocks"] == 1
            assert wire["fetched_blocks"] == 0
            assert len(b.store.unmerged()) == 1
            assert b.reputation.score(sender) == 1.0
            assert b.reputation.score(a.identity.public_key) == 1.0
            n.cancel_scope.cancel()

    trio.run(main)


async def _count(node, expected: int) -> bool:
    return await trio.to_thread.run_sync(node.library.count) == expected


def test_v2_batch_on_a_v1_topic_is_refused_and_charged_to_the_relay(tmp_path):
    """Nodes that read only version 1 sit on v1 topics: a relay that forwards a v2 batch
    there is at fault (they would charge it), not the batch's sender."""

    async def main():
        async with trio.open_nursery() as n:
            a = await start(n, config(tmp_path, "a"))
            b = await start(n, config(tmp_path, "b"))
            await _publish(a, ["close files in a finally block"])
            (envelope,) = _own_envelopes(a)
            relay = NodeIdentity.from_seed(bytes([7]) * 32)
            sender_before = b.reputation.score(a.identity.public_key)
            relay_before = b.reputation.score(relay.public_key)
            assert not b._validator(relay.peer_id, _Msg(envelope, topic_for("coding", 1)))
            assert b.metrics.rejections().get("topic_mismatch") == 1
            assert b.reputation.score(relay.public_key) < relay_before
            assert b.reputation.score(a.identity.public_key) == sender_before
            assert b.store.count() == 0
            # The same bytes on the v2 topic pass.
            assert b._validator(relay.peer_id, _Msg(envelope, topic_for("coding", 2)))
            n.cancel_scope.cancel()

    trio.run(main)


def test_a_v1_publisher_and_a_v2_publisher_read_each_other(tmp_path):
    """The transition: nodes publish different versions and subscribe to both topics."""

    async def main():
        async with trio.open_nursery() as n:
            old = await start(n, config(tmp_path, "old", wire_version=1))
            new = await start(n, config(tmp_path, "new"))
            await connect(new, old)
            await _until(lambda: _meshed(old, new), 30)
            await _publish(old, ["pin the toolchain in ci"])
            await _publish(new, ["close files in a finally block"])
            await _until(lambda: _count(old, 2), 30)
            await _until(lambda: _count(new, 2), 30)
            old_status, new_status = await old.status(), await new.status()
            assert old_status["wire"]["publishes"] == 1 and new_status["wire"]["publishes"] == 2
            assert old_status["wire"]["reads"] == [1, 2]
            # A two-row library encodes against the fleet's reference block: never sent.
            assert new_status["wire"]["blocks_made"] == 0
            (sent,) = [wire.decode_envelope(e) for e in _own_envelopes(new)]
            assert sent.batch.version == 2 and sent.baseline_block is None
            assert sent.batch.baseline_cid == reference_block(MODEL, 384).cid
            (old_sent,) = [wire.decode_envelope(e).batch for e in _own_envelopes(old)]
            assert old_sent.version == 1
            n.cancel_scope.cancel()

    trio.run(main)


async def _meshed(x, y) -> bool:
    topics = (topic_for("coding", 1), topic_for("coding", 2))
    return all(
        y.peer_id in x.pubsub.peer_topics.get(t, ())
        and x.peer_id in y.pubsub.peer_topics.get(t, ())
        for t in topics
    )


def test_the_node_and_its_command_line_default_to_the_measured_drift_threshold():
    """NodeConfig and `fai node run` spell the default out (neither imports numpy)."""
    from fai_core.baseline_block import DEFAULT_DRIFT_THRESHOLD
    from fai_net.cli.entry import build_parser
    from fai_net.node.config import NodeConfig

    assert NodeConfig.baseline_drift == DEFAULT_DRIFT_THRESHOLD
    args = build_parser().parse_args(["node", "run"])
    assert args.baseline_drift == DEFAULT_DRIFT_THRESHOLD
