"""A bounded cache in front of an embedder, so a node never embeds the same text twice.

Re-embedding received texts is ~97% of a receiver's CPU (about 8 ms per text for
all-MiniLM-L6-v2 on one thread), and the same text arrives again and again: from every
peer that relays or re-distils it, again through repair, and again in a later round after
the per-sender cap deferred it. `CachingEmbedder` wraps any `Embedder` and serves a text
it has embedded before from memory.

What is cached: only vectors this node's inner embedder computed for exactly that text.
Entries are written in one place, from the inner embedder's output for the text that was
passed to it, and there is no way to insert a vector from outside, so nothing a peer sends
(vectors, ids, domains) can reach the cache: a peer controls texts only, and the worst a
flood of distinct texts can do is evict entries, which costs the embeddings the cache would
have saved and nothing more. Keys are a keyed BLAKE2b-256 digest (random key per cache) of
the text's exact UTF-8 bytes: no normalisation (texts differing by NFC/NFD or whitespace
are different keys, even where their experience ids unify), no collision anyone can aim
at, and 32 bytes per key whatever the text's length.

Why not the library: a stored row's embedding is not necessarily this node's embedding of
its text. DeltaSoup averages the members of a near-duplicate cluster into the row of the
cluster's representative (fai_core/deltasoup_merge.py), the received-space merge stores
senders' reconstructions, the CRDT keeps whichever record of an id is greatest (quality
first), and a local add embeds the text as the agent wrote it, before normalisation. The
library keeps no mark of which rows hold the node's own embedding of exactly their text,
so it is not used as a source.

Bound: at most `max_entries` vectors, least recently used evicted first; the default is
sized from a memory budget (`DEFAULT_BUDGET_BYTES`, 24 MiB of vectors: 16,384 entries at
d = 384, 8,192 at d = 768) in one preallocated float32 array whose pages the kernel maps
only as entries fill them. Keys and the LRU order add ~150 B per entry (~2.4 MiB at
16,384). A node's merge rounds take at most 64 rows (`round_rows`) per 2 s, so 16,384
texts span over eight minutes of a receiver working flat out, longer than gossip copies,
deferrals and repair of recent batches take to bring a text back; a repeat after that
costs one embedding, as every text did before.

Batch invariance: the cache returns a vector the inner embedder produced for that text,
but in whichever call first embedded it. Measured on 64 corpus texts, each alone against
all in one batch: the hashing embedder and the ONNX MiniLM backend (fai_core/
embedding_onnx.py) are bit-for-bit the same, so for them a hit is byte-identical to a fresh
embedding. sentence-transformers pads a batch to its longest text, and the differently
shaped matrix products change the last bits: max |diff| 1.5e-7 per coordinate, cosine >=
0.99999994 (4 of 64 rows bitwise equal). That is the jitter every receiver already has (the
sender embedded the text in its own batch), five orders of magnitude below the consistency
thresholds (direct cos >= 0.6, semantic cos >= 0.9; docs/deltasoup.md): the checks cannot
tell (a BitDelta sign can flip only where a delta is within 1.5e-7 of zero).
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from fai_core.embedding import Embedder

#: Memory for cached vectors when no entry count is given: 24 MiB (16,384 x 384 x 4 B).
DEFAULT_BUDGET_BYTES = 24 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class CacheStats:
    """Counts since the cache was made: a text occurrence is a hit (served from the cache,
    or a repeat within one call) or a miss (passed to the inner embedder)."""

    hits: int
    misses: int
    entries: int
    max_entries: int
    evictions: int

    @property
    def hit_rate(self) -> float:
        """hits / (hits + misses), 0 before any lookup."""
        total = self.hits + self.misses
        return self.hits / total if total else 0.0


class CachingEmbedder:
    """An `Embedder` that embeds each distinct text once while it stays in a bounded LRU.

    Thread-safe: the node embeds received texts in merge threads, its own texts and recall
    queries in others. The lock covers lookups and inserts only; the inner embedder runs
    outside it, so two threads missing the same text both embed it (both results are the
    inner embedder's own) rather than one waiting on the other's model call.
    """

    def __init__(self, inner: Embedder, max_entries: int | None = None) -> None:
        self.inner = inner
        self._model_id, self._dimension = inner.model_id, int(inner.dimension)
        if max_entries is None:
            max_entries = max(1, DEFAULT_BUDGET_BYTES // (4 * self._dimension))
        if isinstance(max_entries, bool) or not isinstance(max_entries, int) or max_entries < 1:
            raise ValueError(f"max_entries must be a positive integer, got {max_entries!r}")
        self.max_entries = max_entries
        # np.zeros maps pages lazily: memory is committed as entries fill the slab.
        self._slab = np.zeros((max_entries, self._dimension), dtype=np.float32)
        self._slots: OrderedDict[bytes, int] = OrderedDict()  # key -> row, LRU first
        self._free = list(range(max_entries - 1, -1, -1))
        self._key = os.urandom(32)
        self._lock = threading.Lock()
        self._hits = self._misses = self._evictions = 0

    @property
    def model_id(self) -> str:
        """The inner embedder's: cached vectors are that model's and no other's."""
        return self._model_id

    @property
    def dimension(self) -> int:
        """The inner embedder's dimension, read once at construction."""
        return self._dimension

    def key(self, text: str) -> bytes:
        """Keyed BLAKE2b-256 of the exact UTF-8 bytes (lone surrogates kept as they are, so
        the encoding stays injective): equal keys mean equal texts."""
        data = text.encode("utf-8", "surrogatepass")
        return hashlib.blake2b(data, digest_size=32, key=self._key).digest()

    def embed(self, texts: list[str]) -> np.ndarray:
        """The `Embedder` call: one unit row per text, in order; misses embedded together."""
        return self.embed_counted(texts)[0]

    def embed_counted(self, texts: list[str]) -> tuple[np.ndarray, int, int]:
        """(vectors, hits, misses) of this call, so a caller can attribute them (the node
        counts them per stage) without reading shared counters other threads move."""
        texts = list(texts)
        out = np.empty((len(texts), self._dimension), dtype=np.float32)
        keys = [self.key(t) for t in texts]
        todo: dict[bytes, list[int]] = {}  # missing key -> positions, first seen first
        with self._lock:
            for i, k in enumerate(keys):
                slot = self._slots.get(k)
                if slot is not None:
                    self._slots.move_to_end(k)
                    out[i] = self._slab[slot]
                else:
                    todo.setdefault(k, []).append(i)
        misses = len(todo)
        if todo:
            firsts = [pos[0] for pos in todo.values()]
            fresh = np.asarray(self.inner.embed([texts[i] for i in firsts]), dtype=np.float32)
            if fresh.shape != (misses, self._dimension):
                raise RuntimeError(
                    f"inner embedder returned shape {fresh.shape} for {misses} texts"
                )
            for row, positions in zip(fresh, todo.values(), strict=True):
                out[positions] = row
            self._insert(list(todo), fresh)
        hits = len(texts) - misses
        with self._lock:
            self._hits += hits
            self._misses += misses
        return out, hits, misses

    def _insert(self, keys: list[bytes], rows: np.ndarray) -> None:
        """Store the inner embedder's rows; past the bound, the least recently used go.
        Only the last `max_entries` of an oversized call are kept (the older ones would be
        evicted by the newer ones at once)."""
        start = max(0, len(keys) - self.max_entries)
        with self._lock:
            for k, row in zip(keys[start:], rows[start:], strict=True):
                slot = self._slots.get(k)
                if slot is None:  # another thread may have stored it meanwhile
                    if not self._free:
                        _, slot = self._slots.popitem(last=False)
                        self._evictions += 1
                    else:
                        slot = self._free.pop()
                    self._slots[k] = slot
                else:
                    self._slots.move_to_end(k)
                self._slab[slot] = row

    def stats(self) -> CacheStats:
        """Hits, misses, entries held, the bound and evictions so far."""
        with self._lock:
            return CacheStats(
                self._hits, self._misses, len(self._slots), self.max_entries, self._evictions
            )
