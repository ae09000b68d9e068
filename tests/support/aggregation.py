"""Aggregators for tests that check a node or the simulator uses the one it is given."""

from __future__ import annotations

import numpy as np

from fai_core.deltasoup import BatchOutcome, RoundResult


class KeepNothing:
    """Sees every batch, merges nothing, holds nothing: the node learns only from itself."""

    def __init__(self) -> None:
        self.rounds = 0
        self.batches = 0

    def aggregate(self, batches, now_ms, *, max_age_ms=None) -> RoundResult:
        batches = list(batches)
        self.rounds += 1
        self.batches += len(batches)
        n = sum(len(b) for b in batches)
        return RoundResult(
            texts=[],
            domains=[],
            embeddings=np.zeros((0, 384), np.float32),
            quality=np.zeros(0),
            sources=[],
            created_ms=np.zeros(0, np.int64),
            iteration=np.zeros(0, np.int64),
            cluster_size=np.zeros(0, np.int64),
            outcomes=[BatchOutcome(b.cid, b.sender, len(b)) for b in batches],
            row_sender=[b.sender for b in batches for _ in range(len(b))],
            row_text=[t for b in batches for t in b.texts],
            row_domain=[b.domain for b in batches for _ in range(len(b))],
            row_drop=[None] * n,
            row_cluster=np.full(n, -1, dtype=np.int64),
            row_scores={},
        )

    def backlog_rows(self, sender=None) -> int:
        return 0
