"""Aggregation as a swappable object: what a receiver calls, whatever rule it runs.

A receiver (the node's merge round, each simulated receiver) hands every round's verified
batches to an `Aggregator` and merges what comes back into its library; it never needs to
know which rule produced it. So a baseline, an ablation or a new robust rule is one class,
not a branch in the node or the simulator (as a Flower `Strategy` is for federated
learning). Implementations:

- `fai_core.deltasoup.DeltaSoup`: the Byzantine-robust pipeline (phase-1 verification,
  the row filters of `fai_core.deltasoup_filters`, a merge rule of
  `fai_core.deltasoup_merge`, reputation).
- `NaiveAverage`: no filter at all, per experience id the plain average of every copy
  received so far; the simulator's "naive" baseline.

Reputation is not part of the protocol: the node owns its `ReputationBook` and passes it
to the aggregator that uses one (DeltaSoup), and its admission gate charges the same book.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol, runtime_checkable

import numpy as np

from fai_core.deltasoup import BatchOutcome, RoundResult
from fai_core.wire import Batch


@runtime_checkable
class Aggregator(Protocol):
    """One receiver's aggregation rule and state, called once per merge round."""

    def aggregate(
        self, batches: Iterable[Batch], now_ms: int, *, max_age_ms: int | None = None
    ) -> RoundResult:
        """Decide on this round's verified `batches` (and anything held from earlier rounds)
        at time `now_ms`; `max_age_ms` widens the freshness bound for repaired batches.
        Returns the merged experiences and the fate of every row."""
        ...

    def backlog_rows(self, sender: bytes | None = None) -> int:
        """Rows held for a later round (of `sender`, of everyone when None). A receiver
        runs a round even without new batches while this is not 0."""
        ...


class NaiveAverage:
    """Averaging without a robust filter: the baseline that shows what filtering buys.

    Every row of every batch it is given counts (no freshness, replay, cap or content
    check). Per experience id it keeps the sum of every copy's reconstruction e_hat and of
    its claimed quality, and the number of copies; a round returns, for each id it touched,
    the average over all copies so far (`cluster_size` = copies averaged), text and domain
    from the first copy seen, provenance from the first copy this round. Nothing is held
    back, so `backlog_rows` is 0.
    """

    def __init__(self) -> None:
        #: id -> [sum of embeddings (float64), sum of qualities, copies, text, domain]
        self.table: dict[bytes, list] = {}

    def add(self, ident: bytes, vec: np.ndarray, quality: float, text: str, domain: str) -> None:
        """One more copy of `ident`."""
        acc = self.table.get(ident)
        if acc is None:
            acc = self.table[ident] = [np.zeros(len(vec)), 0.0, 0, text, domain]
        acc[0] += vec
        acc[1] += quality
        acc[2] += 1

    def aggregate(
        self, batches: Iterable[Batch], now_ms: int, *, max_age_ms: int | None = None
    ) -> RoundResult:
        """Add every row of `batches`; the running averages of the ids they carried."""
        batches = list(batches)
        touched: dict[bytes, tuple[Batch, int]] = {}
        outcomes = []
        for b in batches:
            emb = b.embeddings()
            for j, (ident, text) in enumerate(zip(b.ids, b.texts, strict=True)):
                self.add(ident, emb[j], float(b.quality[j]), text, b.domain)
                touched.setdefault(ident, (b, j))
            outcomes.append(BatchOutcome(b.cid, b.sender, len(b)))
        return self._result(batches, touched, outcomes)

    def _result(
        self,
        batches: list[Batch],
        touched: dict[bytes, tuple[Batch, int]],
        outcomes: list[BatchOutcome],
    ) -> RoundResult:
        ids = list(touched)
        where = {ident: k for k, ident in enumerate(ids)}
        accs = [self.table[i] for i in ids]
        dim = batches[0].dim if batches else 0
        emb = (
            np.array([a[0] / a[2] for a in accs], dtype=np.float32)
            if accs
            else np.zeros((0, dim), np.float32)
        )
        return RoundResult(
            texts=[a[3] for a in accs],
            domains=[a[4] for a in accs],
            embeddings=emb,
            quality=np.array([a[1] / a[2] for a in accs], dtype=np.float64),
            sources=[touched[i][0].sender for i in ids],
            created_ms=np.array([touched[i][0].timestamp_ms for i in ids], dtype=np.int64),
            iteration=np.array([int(touched[i][0].iteration[touched[i][1]]) for i in ids]),
            cluster_size=np.array([a[2] for a in accs], dtype=np.int64),
            outcomes=outcomes,
            row_sender=[b.sender for b in batches for _ in range(len(b))],
            row_text=[t for b in batches for t in b.texts],
            row_domain=[b.domain for b in batches for _ in range(len(b))],
            row_drop=[None] * sum(len(b) for b in batches),
            row_cluster=np.array([where[i] for b in batches for i in b.ids], dtype=np.int64),
            row_scores={},
        )

    def backlog_rows(self, sender: bytes | None = None) -> int:
        """Nothing is ever held back."""
        return 0
