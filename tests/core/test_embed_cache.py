"""The text cache in front of the embedder (fai_core/embed_cache.py): exact, bounded, counted."""

from __future__ import annotations

import hashlib
import threading
import unicodedata

import numpy as np
import pytest

from fai_core.deltasoup import DeltaSoup
from fai_core.embed_cache import DEFAULT_BUDGET_BYTES, CachingEmbedder
from fai_core.embedding import HashingEmbedder
from fai_core.experience import experience_id, normalize_text, text_problem
from fai_core.identity import NodeKey
from fai_eval import attacks
from fai_eval.scenario import NOW_MS


class Recording:
    """Wraps an embedder and records every text it is asked to embed, call by call."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.model_id, self.dimension = inner.model_id, inner.dimension
        self.calls: list[list[str]] = []

    def embed(self, texts):
        self.calls.append(list(texts))
        return self.inner.embed(texts)

    @property
    def texts(self) -> list[str]:
        return [t for call in self.calls for t in call]


class ByteEmbedder:
    """A vector from the exact bytes of the text: any two different texts, however alike
    (NFC/NFD, spacing), get unrelated vectors, so serving one's vector for the other shows."""

    model_id, dimension = "bytes-d16", 16

    def embed(self, texts):
        rows = []
        for t in texts:
            raw = hashlib.shake_128(t.encode("utf-8", "surrogatepass")).digest(16)
            v = np.frombuffer(raw, dtype=np.uint8).astype(np.float32) - 127.5
            rows.append(v / np.linalg.norm(v))
        return np.array(rows, dtype=np.float32).reshape(len(texts), 16)


TEXTS = [
    "validate inputs at the service boundary",
    "retry idempotent calls with jittered backoff",
    "pin dependency versions in the lock file",
    "cache compiled regular expressions at module level",
]


def test_a_hit_returns_the_inner_embedders_own_vector_without_calling_it():
    inner = Recording(HashingEmbedder(384))
    cache = CachingEmbedder(inner)
    first = cache.embed(TEXTS)
    again = cache.embed(list(reversed(TEXTS)))
    assert inner.texts == TEXTS  # the second call embedded nothing
    assert np.array_equal(again, first[::-1])
    assert np.array_equal(first, HashingEmbedder(384).embed(TEXTS))  # bit for bit
    assert first.dtype == np.float32 and first.flags.c_contiguous
    s = cache.stats()
    assert (s.hits, s.misses, s.entries) == (4, 4, 4) and s.hit_rate == 0.5
    assert (cache.model_id, cache.dimension) == (inner.model_id, 384)


def test_hits_are_copies_the_caller_cannot_corrupt():
    cache = CachingEmbedder(HashingEmbedder(64))
    out = cache.embed(TEXTS[:1])
    out[:] = 0.0
    assert np.array_equal(cache.embed(TEXTS[:1]), HashingEmbedder(64).embed(TEXTS[:1]))


def test_repeats_within_one_call_are_embedded_once():
    inner = Recording(HashingEmbedder(64))
    cache = CachingEmbedder(inner)
    texts = [TEXTS[0], TEXTS[1], TEXTS[0], TEXTS[2], TEXTS[1], TEXTS[0]]
    out = cache.embed(texts)
    assert inner.calls == [[TEXTS[0], TEXTS[1], TEXTS[2]]]
    assert np.array_equal(out, HashingEmbedder(64).embed(texts))
    s = cache.stats()
    assert (s.hits, s.misses) == (3, 3)
    assert cache.embed([]).shape == (0, 64) and inner.calls[1:] == []


def test_default_bound_comes_from_the_memory_budget():
    assert CachingEmbedder(HashingEmbedder(384)).max_entries == 16_384
    assert CachingEmbedder(HashingEmbedder(768)).max_entries == 8_192
    assert DEFAULT_BUDGET_BYTES == 16_384 * 384 * 4
    for bad in (0, -1, True, 2.5):
        with pytest.raises(ValueError, match="max_entries must be a positive integer"):
            CachingEmbedder(HashingEmbedder(64), max_entries=bad)


def test_a_flood_of_distinct_texts_never_exceeds_the_bound():
    inner = Recording(ByteEmbedder())
    cache = CachingEmbedder(inner, max_entries=50)
    slab_bytes = cache._slab.nbytes
    for start in range(0, 3000, 70):  # calls larger than the bound, too
        texts = [f"flood text number {i}" for i in range(start, start + 70)]
        out = cache.embed(texts)
        assert np.array_equal(out, ByteEmbedder().embed(texts))
        assert cache.stats().entries <= 50 and len(cache._slots) + len(cache._free) == 50
        assert cache._slab.nbytes == slab_bytes
    s = cache.stats()
    # Each call of 70 stores its last 50 only (the first 20 would be evicted by the rest).
    calls = len(range(0, 3000, 70))
    assert s.entries == 50 and s.misses == 70 * calls
    assert s.evictions == s.misses - 50 - 20 * calls


def test_least_recently_used_goes_first():
    inner = Recording(ByteEmbedder())
    cache = CachingEmbedder(inner, max_entries=3)
    cache.embed(["a", "b", "c"])
    cache.embed(["a"])  # a is now the most recently used
    cache.embed(["d"])  # evicts b
    inner.calls.clear()
    out = cache.embed(["a", "c", "d", "b"])
    assert inner.calls == [["b"]]
    assert np.array_equal(out, ByteEmbedder().embed(["a", "c", "d", "b"]))


# Texts that look alike and that experience ids or normalisation may unify.
LOOKALIKES = [
    "café au lait",
    unicodedata.normalize("NFD", "café au lait"),
    "café  au lait",
    " café au lait",
    "café au lait ",
    "café\tau lait",
    "Café au lait",
    "café\u00a0au lait",
    "café au lait\u200b",
    "ｃａｆé au lait",  # fullwidth: NFKC would fold it, NFC does not
]


def test_a_text_is_only_ever_served_its_own_vector():
    """Keys are the exact bytes: whatever normalisation or ids would unify stays apart."""
    inner = Recording(ByteEmbedder())
    cache = CachingEmbedder(inner)
    assert len(set(LOOKALIKES)) == len(LOOKALIKES)
    for order in (LOOKALIKES, LOOKALIKES[::-1], LOOKALIKES[3:] + LOOKALIKES[:3]):
        for t in order:
            assert np.array_equal(cache.embed([t])[0], ByteEmbedder().embed([t])[0]), repr(t)
        out = cache.embed(order)
        assert np.array_equal(out, ByteEmbedder().embed(order))
    assert sorted(inner.texts) == sorted(LOOKALIKES)  # each embedded once, none shared
    # Ids unify some of these (normalize_text before experience_id), the cache does not;
    # and only normalised texts are valid on the wire, so received texts are already NFC.
    unified = {experience_id("coding", normalize_text(t)) for t in LOOKALIKES}
    assert len(unified) < len(LOOKALIKES)
    assert text_problem(LOOKALIKES[1]) is not None and text_problem(LOOKALIKES[0]) is None


def test_lone_surrogates_and_empty_texts_have_their_own_keys():
    cache = CachingEmbedder(ByteEmbedder())
    texts = ["", " ", "\ud800", "\udc00", "x"]
    assert len({cache.key(t) for t in texts}) == len(texts)
    assert np.array_equal(cache.embed(texts), ByteEmbedder().embed(texts))


def test_keys_are_per_cache():
    """A random key per cache: nobody can precompute colliding texts for a node's cache."""
    assert CachingEmbedder(ByteEmbedder()).key("x") != CachingEmbedder(ByteEmbedder()).key("x")


def test_an_inner_embedder_returning_the_wrong_shape_is_refused():
    class Short(ByteEmbedder):
        def embed(self, texts):
            return super().embed(texts)[:-1]

    cache = CachingEmbedder(Short())
    with pytest.raises(RuntimeError, match=r"inner embedder returned shape \(1, 16\) for 2"):
        cache.embed(["a", "b"])
    assert cache.stats().entries == 0


def test_threads_sharing_a_cache_each_get_the_right_vectors():
    cache = CachingEmbedder(ByteEmbedder(), max_entries=40)
    texts = [f"shared text {i}" for i in range(120)]
    want = ByteEmbedder().embed(texts)
    errors: list[str] = []

    def worker(seed: int) -> None:
        rng = np.random.default_rng(seed)
        for _ in range(60):
            idx = rng.integers(0, len(texts), 17)
            out = cache.embed([texts[i] for i in idx])
            if not np.array_equal(out, want[idx]):
                errors.append(f"worker {seed}")

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and cache.stats().entries <= 40


def _duplicated_batches(texts, senders: int, seq: int):
    emb = HashingEmbedder(384)
    vectors = emb.embed(texts)
    return [
        attacks.signed_batch(
            NodeKey(bytes([s + 1]) * 32),
            texts,
            vectors,
            domain="coding",
            quality=[0.6] * len(texts),
            seq=seq,
            timestamp_ms=NOW_MS,
            model=emb.model_id,
        ).batch
        for s in range(senders)
    ]


def test_a_round_over_duplicated_batches_embeds_each_distinct_text_once():
    """Three senders with the same texts in one round, then two more in the next: the
    model sees each text once, and DeltaSoup decides exactly as without the cache."""
    texts = [f"{t} in case {i}" for i in range(6) for t in TEXTS]
    inner = Recording(HashingEmbedder(384))
    cached = DeltaSoup(CachingEmbedder(inner))
    plain = DeltaSoup(HashingEmbedder(384))
    first = _duplicated_batches(texts, 3, seq=1)
    second = _duplicated_batches(texts, 5, seq=2)[3:]
    for batches in (first, second):
        a = cached.aggregate(batches, NOW_MS)
        b = plain.aggregate(batches, NOW_MS)
        assert a.texts == b.texts and np.array_equal(a.embeddings, b.embeddings)
        assert [o.dropped_rows for o in a.outcomes] == [o.dropped_rows for o in b.outcomes]
        assert len(a.texts) > 0
    assert sorted(inner.texts) == sorted(texts)
    assert cached.embedder.stats().misses == len(texts)


@pytest.mark.slow
def test_the_real_model_differs_across_batches_by_jitter_only():
    """sentence-transformers is not batch-invariant bit for bit (padding changes the matrix
    shapes); a cached vector differs from a fresh one by float rounding only."""
    from fai_core.embedding import default_embedder

    model = default_embedder()
    texts = [*TEXTS, "a much longer text that pads every other row of its batch " * 3]
    cache = CachingEmbedder(model)
    batched = cache.embed(texts)
    for i, t in enumerate(texts):
        alone = model.embed([t])[0]
        assert float(batched[i] @ alone) > 0.99999
        assert float(np.abs(batched[i] - alone).max()) < 1e-5
        assert np.array_equal(cache.embed([t])[0], batched[i])
