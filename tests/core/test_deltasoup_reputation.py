"""What costs reputation in DeltaSoup: only what the receiver verifies itself.

The relative checks (scale_outlier, quality_outlier, domain_mismatch) compare a sender with
the round's other senders; Sybils choose those statistics, so they may drop rows but never
cost reputation. Replays and late copies cost nobody: anyone can re-publish a signed batch.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from fai_core.deltasoup import CHARGED, UNCHARGED, DeltaSoup, Drop
from fai_core.identity import NodeKey
from fai_eval import attacks
from fai_eval.scenario import NOW_MS

ROUND_MS = 10_000


def test_every_drop_is_classified_once():
    assert set(Drop) == CHARGED | UNCHARGED and not CHARGED & UNCHARGED
    assert {
        Drop.WRONG_MODEL,
        Drop.EQUIVOCATION,
        Drop.SEMANTIC_MISMATCH,
        Drop.SCALE_MISMATCH,
    } == CHARGED


def _sybils(scenario, n: int, quality: float):
    pool = np.array_split(scenario.pool_idx, n)
    nodes = [scenario._node(0, idx, NodeKey(bytes([90 + i]) * 32)) for i, idx in enumerate(pool)]
    return [dataclasses.replace(node, quality=np.full(len(node.texts), quality)) for node in nodes]


def test_sybil_majority_of_low_qualities_costs_honest_senders_nothing(scenario, embedder):
    """The issue's scenario: 4 Sybils claiming the legal quality 0.05 against 3 honest
    senders. The Sybils own the middle of the quality claims, so with the one-round check
    every honest row was a quality_outlier; before that, honest reputation fell below the
    floor in 12 rounds and the gate refused them. Reputation, which gates all later
    rounds, must never be lost; and the sender histories judge only mean claims above 0.8,
    so no honest row is lost either."""
    honest = scenario.honest[:3]
    sybils = _sybils(scenario, 4, 0.05)
    soup = DeltaSoup(embedder)
    outliers = evaluated = 0
    for rnd in range(15):
        ts = NOW_MS + rnd * ROUND_MS
        batches = [
            b.batch for node in honest + sybils for b in node.batches(ts=ts, seq0=10 * rnd + 1)
        ]
        result = soup.aggregate(batches, ts)
        honest_keys = {n.key.public_key for n in honest}
        drops = [
            d for s, d in zip(result.row_sender, result.row_drop, strict=True) if s in honest_keys
        ]
        outliers += drops.count(Drop.QUALITY_OUTLIER)
        evaluated += len(drops) - drops.count(Drop.DEFERRED)
        assert all(o.drop is None for o in result.outcomes), "no batch is refused outright"
    # The attack no longer bites: the sender histories never take a mean claim of at most
    # 0.8 for an inflation (with the one-round check over 90% of honest rows were lost).
    assert evaluated > 0 and outliers == 0
    for node in honest + sybils:
        assert soup.reputation.score(node.key.public_key) == 1.0


def test_inflated_qualities_are_dropped_every_round_without_charge(scenario, embedder):
    """The other side of the trade: a confidence-inflating sender (quality_outlier, a
    relative check) keeps its reputation, and its rows are filtered in every round."""
    honest = scenario.honest[:5]
    inflator = _sybils(scenario, 1, 0.99)[0]
    soup = DeltaSoup(embedder)
    for rnd in range(15):
        ts = NOW_MS + rnd * ROUND_MS
        batches = [
            b.batch for node in [*honest, inflator] for b in node.batches(ts=ts, seq0=10 * rnd + 1)
        ]
        result = soup.aggregate(batches, ts)
        mine = [
            d
            for s, d in zip(result.row_sender, result.row_drop, strict=True)
            if s == inflator.key.public_key
        ]
        assert mine and all(d in (Drop.QUALITY_OUTLIER, Drop.DEFERRED) for d in mine)
        assert Drop.QUALITY_OUTLIER in mine
    assert soup.reputation.score(inflator.key.public_key) == 1.0


def test_replays_and_late_copies_charge_nobody(scenario, embedder):
    """Anyone can re-publish a signed batch: a replay or a stale copy proves nothing about
    its sender."""
    node = scenario.honest[0]
    soup = DeltaSoup(embedder)
    first = node.batches(ts=NOW_MS, seq0=5000)
    soup.aggregate([b.batch for b in first], NOW_MS)
    for _ in range(20):
        r = soup.aggregate([first[0].batch], NOW_MS)
        assert r.outcomes[0].drop is Drop.REPLAY and not r.outcomes[0].charged
    for k in range(20):
        late = node.batches(ts=NOW_MS - 400_000, seq0=100 + k)[0].batch
        assert soup.aggregate([late], NOW_MS).outcomes[0].drop is Drop.STALE
    assert soup.reputation.score(node.key.public_key) == 1.0


def test_provable_faults_still_charge(scenario, embedder):
    """Equivocation (two signed batches, one seq) and rows that fail the receiver's own
    re-embedding (semantic_mismatch) are the sender's doing and cost it reputation."""
    node = scenario._node(0, scenario.pool_idx[:40], NodeKey(b"\x66" * 32))
    soup = DeltaSoup(embedder)
    soup.aggregate([b.batch for b in node.batches(ts=NOW_MS, seq0=1)], NOW_MS)
    twin = dataclasses.replace(node, quality=node.quality * 0.5)
    r = soup.aggregate([twin.batches(ts=NOW_MS + 1, seq0=1)[0].batch], NOW_MS)
    assert r.outcomes[0].drop is Drop.EQUIVOCATION and r.outcomes[0].charged
    assert soup.reputation.score(node.key.public_key) < 1.0
    bad = [attacks.sign_flip(b, node.key).batch for b in node.batches(ts=NOW_MS, seq0=20)]
    r = soup.aggregate(bad, NOW_MS)
    assert all(o.charged and not o.passed for o in r.outcomes)
    assert set(r.row_drop) == {Drop.SEMANTIC_MISMATCH}


def test_rows_that_fail_a_verified_check_do_not_set_the_relative_statistics(scenario, embedder):
    """The flood benchmark's finding: 2,000 fresh keys sending random vectors (every row a
    semantic_mismatch) outvoted one honest sender in the scale distribution, and every
    honest row became a scale_outlier. Only rows that passed the receiver's own checks
    may set the medians the relative checks compare against."""
    rng = np.random.default_rng(5)
    honest = scenario.honest[:1]
    pool = np.array_split(scenario.pool_idx, 12)
    mine_batches = [b.batch for b in honest[0].batches(ts=NOW_MS, seq0=1)]
    model, dim = mine_batches[0].model, mine_batches[0].dim
    flood = []
    for i, idx in enumerate(pool):
        node = scenario._node(0, idx, NodeKey(bytes([150 + i]) * 32))
        texts = list(node.texts[:16])
        flood.append(
            attacks.signed_batch(
                node.key,
                texts,
                attacks.gaussian_embeddings(len(texts), dim, 1.0, rng),
                domain=mine_batches[0].domain,
                quality=np.full(len(texts), 0.6),
                seq=1,
                timestamp_ms=NOW_MS,
                model=model,
                baseline=np.zeros(dim, dtype=np.float32),
            ).batch
        )
    batches = mine_batches + flood
    result = DeltaSoup(embedder).aggregate(batches, NOW_MS)
    key = honest[0].key.public_key
    mine = [
        d
        for s, d in zip(result.row_sender, result.row_drop, strict=True)
        if s == key and d is not Drop.DEFERRED
    ]
    theirs = [d for s, d in zip(result.row_sender, result.row_drop, strict=True) if s != key]
    assert theirs and all(d in (Drop.SEMANTIC_MISMATCH, Drop.DEFERRED) for d in theirs)
    assert mine and all(d is None for d in mine), mine
