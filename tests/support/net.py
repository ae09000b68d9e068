"""Builders for the node tests: deterministic keys and real signed batches.

Batches are tiny (d = 8, a few experiences) so that building hundreds stays fast, but they
go through `fai_core.wire.encode_batch` and decode like anything off the wire.
"""

from __future__ import annotations

import numpy as np

from fai_core import wire
from fai_core.experience import Experience
from fai_core.identity import NodeKey

KEY = NodeKey(bytes(range(32)))
OTHER_KEY = NodeKey(bytes(range(32, 64)))
DIM = 8
T0 = 1_700_000_000_000


def key(n: int) -> NodeKey:
    """The n-th test key (distinct seeds, reproducible)."""
    return NodeKey(bytes((n + i) % 256 for i in range(32)))


def batch(
    seq: int,
    *,
    key: NodeKey = KEY,
    domain: str = "coding",
    timestamp_ms: int | None = None,
    texts: tuple[str, ...] = ("retry with backoff", "cache the config"),
    salt: int = 0,
) -> wire.SignedBatch:
    """A real signed batch; `salt` changes the content (hence the CID) for one (key, seq)."""
    rng = np.random.default_rng(seq * 1000 + salt)
    vecs = rng.standard_normal((len(texts), DIM)).astype(np.float32)
    exps = [
        Experience(
            text=f"{text} variant {salt}" if salt else text,
            embedding=vecs[i],
            quality=0.25 + 0.5 * i / len(texts),
            domain=domain,
            source=key.public_key,
            created_ms=T0,
        )
        for i, text in enumerate(texts)
    ]
    return wire.encode_batch(
        exps,
        key=key,
        seq=seq,
        timestamp_ms=T0 + seq if timestamp_ms is None else timestamp_ms,
        model="test-model",
        baseline=np.zeros(DIM, dtype=np.float32),
        group=4,
    )
