"""A node embeds a received text once: the second sender's copy is served from its cache."""

from __future__ import annotations

import numpy as np
import pytest
import trio
from prometheus_client import generate_latest

from fai_core.corpus import load_pattern_corpus
from fai_core.embed_cache import CachingEmbedder
from fai_core.embedding import HashingEmbedder
from fai_net.api.metrics import NodeMetrics
from tests.net.test_node_inprocess import config, connect, start

TOPIC = "/fai/exp/1/coding"
TEXTS = [
    "validate inputs at the service boundary",
    "retry idempotent calls with jittered backoff",
    "pin dependency versions in the lock file",
]


class CountingEmbedder:
    """The hashing embedder, recording every text the node asks its model to embed."""

    def __init__(self) -> None:
        self.inner = HashingEmbedder(384)
        self.model_id, self.dimension = self.inner.model_id, self.inner.dimension
        self.texts: list[str] = []

    def embed(self, texts):
        self.texts.extend(texts)
        return self.inner.embed(texts)


async def _received(node, batches: int) -> None:
    """Until `batches` batches are stored and none waits for a merge round."""
    while node.store.count() < batches or node.store.unmerged():
        await trio.sleep(0.05)


def test_the_second_senders_copy_of_a_text_is_not_embedded_again():
    model = CountingEmbedder()

    async def main():
        async with trio.open_nursery() as n:
            receiver = await start(n, config("ec-receiver"), embedder=model)
            senders = [await start(n, config(name)) for name in ("ec-a", "ec-b")]
            assert isinstance(receiver.embedder.inner, CachingEmbedder)
            # With a model other than the default, the node embeds the built-in domains'
            # corpus once at start for its anchors (fai_core.domain_anchors).
            at_start = len(model.texts)
            assert at_start == len(load_pattern_corpus())
            base = receiver.embedder.inner.stats()
            base_totals = dict(receiver.metrics.embed_cache_totals()["embed"])
            for sender in senders:
                await connect(receiver, sender)
            with trio.fail_after(60):
                for sender in senders:
                    while not sender.pubsub.peer_topics.get(TOPIC):
                        await trio.sleep(0.1)
                await trio.sleep(1.5)
                # Gossip relays the first batch to the second sender too; its own records
                # (higher quality) stay greater than the relayed ones, so it still sends them.
                for sender, quality in zip(senders, (0.5, 0.6), strict=True):
                    items = [{"text": t, "domain": "coding", "quality": quality} for t in TEXTS]
                    await sender.add_experiences(items)
                for got, sender in enumerate(senders, start=1):
                    assert (await sender.broadcast("coding"))["experiences_sent"] == len(TEXTS)
                    await _received(receiver, got)
                    if got == 1:
                        first = model.texts[at_start:]
            # The first copy was embedded, text by text; the second copy not at all.
            assert sorted(first) == sorted(TEXTS)
            assert model.texts[at_start:] == first
            cache = receiver.metrics.embed_cache_totals()["embed"]
            assert cache["hits"] - base_totals.get("hits", 0) == len(TEXTS)
            assert cache["misses"] - base_totals.get("misses", 0) == len(TEXTS)
            stats = receiver.embedder.inner.stats()
            grown = (
                stats.hits - base.hits,
                stats.misses - base.misses,
                stats.entries - base.entries,
            )
            assert grown == (3, 3, 3)
            # What a hit serves is the model's own vector for that text.
            assert np.array_equal(receiver.embedder.embed(TEXTS), model.inner.embed(TEXTS))
            n.cancel_scope.cancel()

    trio.run(main)


def test_cache_counters_are_exported_per_stage():
    m = NodeMetrics()
    m.embed_cache("embed", 5, 2)
    m.embed_cache("embed", 1, 0)
    m.embed_cache("embed_local", 0, 4)
    assert m.embed_cache_totals() == {
        "embed": {"hits": 6, "misses": 2},
        "embed_local": {"hits": 0, "misses": 4},
    }
    text = generate_latest(m.registry).decode()
    assert 'fai_embed_cache_hits_total{stage="embed"} 6.0' in text
    assert 'fai_embed_cache_misses_total{stage="embed_local"} 4.0' in text
    for bad in ((-1, 0), (0, True), (1.5, 0)):
        with pytest.raises(ValueError, match="must be a non-negative integer"):
            m.embed_cache("embed", *bad)
