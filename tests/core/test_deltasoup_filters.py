"""DeltaSoup's filters and merge rules as objects: each in isolation, and composed."""

from __future__ import annotations

import numpy as np
import pytest

from fai_core.aggregation import Aggregator, NaiveAverage
from fai_core.deltasoup import _CODE, DeltaSoup, DeltaSoupConfig, Drop
from fai_core.deltasoup_filters import (
    DEFAULT_FILTERS,
    ONE_ROUND_FILTERS,
    CapDeferral,
    ConfidenceInflation,
    OverCap,
    RoundRows,
    ScaleConsistency,
    SemanticConsistency,
    Stage,
)
from fai_core.deltasoup_merge import OwnSpaceMerge, ReceivedSpaceMerge
from fai_eval import attacks
from fai_eval.scenario import NOW_MS


@pytest.fixture(scope="module")
def honest(scenario):
    return [b.batch for b in scenario.honest_batches()]


def _rows(batches, embedder, n_backlog=0) -> RoundRows:
    return RoundRows.collect(batches, embedder.dimension, n_backlog)


def test_default_order_and_reasons():
    """The documented order: budgets, the CHARGED checks, the steering screen, the relative
    ones."""
    names = [(f.name, f.drop, f.stage) for f in ONE_ROUND_FILTERS]
    assert names == [
        ("over_cap", Drop.OVER_CAP, Stage.BUDGET),
        ("cap_deferral", Drop.DEFERRED, Stage.BUDGET),
        ("semantic", Drop.SEMANTIC_MISMATCH, Stage.VERIFIED),
        ("scale_ratio", Drop.SCALE_MISMATCH, Stage.VERIFIED),
        ("steering", Drop.STEERING, Stage.CONTENT),
        ("scale_outlier", Drop.SCALE_OUTLIER, Stage.RELATIVE),
        ("confidence_inflation", Drop.QUALITY_OUTLIER, Stage.RELATIVE),
        ("domain_tag", Drop.DOMAIN_MISMATCH, Stage.RELATIVE),
    ]
    # The default replaces the one-round quality and domain checks by the sender histories'.
    assert [(f.name, f.drop, f.stage) for f in DEFAULT_FILTERS] == [
        *names[:-2],
        ("quality_history", Drop.QUALITY_OUTLIER, Stage.RELATIVE),
        ("domain_history", Drop.DOMAIN_MISMATCH, Stage.RELATIVE),
        ("history_wait", Drop.DEFERRED, Stage.RELATIVE),
    ]


def test_cap_filters_in_isolation(embedder, honest):
    """Cap 8 and backlog room 5: per sender the first 8 offered rows pass, the next 5 are
    deferred, the rest over the cap; the filters are pure (rows and drops untouched)."""
    cfg = DeltaSoupConfig(min_cap=8, max_cap=8, max_backlog_rows=5)
    rows = _rows(honest, embedder)
    over = OverCap().refuse(rows, cfg).refused
    deferred = CapDeferral().refuse(rows, cfg).refused
    assert not rows.drop.any()
    assert (over <= deferred).all()  # every row over the cap is past the cap
    for k in range(rows.n_senders):
        mine = rows.node == k
        n = int(mine.sum())
        assert int((mine & ~deferred).sum()) == min(n, 8)
        assert int((mine & deferred & ~over).sum()) == min(max(n - 8, 0), 5)
        assert int((mine & over).sum()) == max(n - 13, 0)


def test_semantic_filter_in_isolation(scenario, embedder, honest):
    """Honest rows pass; the same texts behind another pattern's vectors are refused, and
    the verdict scores them; the scale check is a separate filter with its own reason."""
    node = scenario.honest[0]
    lie = attacks.signed_batch(
        node.key,
        node.texts[:6],
        node.vectors[6:12],
        domain=node.domains[0],
        quality=np.full(6, 0.5),
        seq=999,
        timestamp_ms=NOW_MS,
        model=honest[0].model,
    ).batch
    rows = _rows([honest[0], lie], embedder)
    rows.decompress_and_embed(embedder)
    cfg = DeltaSoupConfig()
    verdict = SemanticConsistency().refuse(rows, cfg)
    m = len(honest[0])
    assert not verdict.refused[:m].any()
    assert verdict.refused[m:].all()
    assert set(verdict.scores) == {"semantic_cos", "direct_cos"}
    assert (verdict.scores["semantic_cos"][:m] > 0.9).all()
    scale = ScaleConsistency().refuse(rows, cfg)
    assert not scale.refused[:m].any()
    assert not rows.drop.any()


def test_confidence_filter_in_isolation(scenario, embedder, honest):
    """A sender claiming 0.97-0.999 on every row is refused as a whole; honest ones pass."""
    node = scenario.honest[1]
    inflated = attacks.signed_batch(
        scenario.byz_keys[0],
        node.texts[:12],
        node.vectors[:12],
        domain=node.domains[0],
        quality=np.linspace(0.97, 0.999, 12),
        seq=5,
        timestamp_ms=NOW_MS,
        model=honest[0].model,
    ).batch
    rows = _rows([*honest, inflated], embedder)
    rows.decompress_and_embed(embedder)
    rows.fix_reference()
    refused = ConfidenceInflation().refuse(rows, DeltaSoupConfig()).refused
    last = rows.batch == len(honest)
    assert refused[last].all()
    assert not refused[~last].any()


def test_composed_filters_and_merge_rule(embedder, honest):
    """DeltaSoup runs exactly the filters it is given; without the cap nothing is deferred;
    the merge rule object decides the space (received = e_hat)."""
    cfg = DeltaSoupConfig(min_cap=2, max_cap=2)
    capped = DeltaSoup(embedder, config=cfg).aggregate(honest, NOW_MS)
    assert Drop.DEFERRED in capped.row_drop
    uncapped = DeltaSoup(embedder, config=cfg, filters=DEFAULT_FILTERS[2:]).aggregate(
        honest, NOW_MS
    )
    assert Drop.DEFERRED not in uncapped.row_drop and Drop.OVER_CAP not in uncapped.row_drop
    own = DeltaSoup(embedder).aggregate(honest, NOW_MS)
    received = DeltaSoup(embedder, merge=ReceivedSpaceMerge()).aggregate(honest, NOW_MS)
    paper = DeltaSoup(embedder, config=DeltaSoupConfig(merge_space="received"))
    assert isinstance(DeltaSoup(embedder).merge, OwnSpaceMerge)
    np.testing.assert_array_equal(received.embeddings, paper.aggregate(honest, NOW_MS).embeddings)
    assert not np.array_equal(own.embeddings, received.embeddings)


def test_codes_follow_the_filters_reasons(embedder, honest):
    """Each row's reason is the first refusing filter's `drop` (one reason per row)."""
    cfg = DeltaSoupConfig(min_cap=3, max_cap=3, max_backlog_rows=2)
    result = DeltaSoup(embedder, config=cfg).aggregate(honest, NOW_MS)
    reasons = {d for d in result.row_drop if d is not None}
    assert reasons <= {f.drop for f in DEFAULT_FILTERS}
    assert {Drop.DEFERRED, Drop.OVER_CAP} <= reasons
    assert all(_CODE[f.drop] > 0 for f in DEFAULT_FILTERS)


def test_deltasoup_and_naive_average_are_aggregators(embedder, honest):
    """Both implement the protocol; naive averaging keeps every row and averages copies."""
    naive = NaiveAverage()
    assert isinstance(DeltaSoup(embedder), Aggregator) and isinstance(naive, Aggregator)
    first = naive.aggregate(honest[:1], NOW_MS)
    b = honest[0]
    assert len(first) == len(b) and first.row_drop == [None] * len(b)
    np.testing.assert_allclose(first.embeddings, b.embeddings(), atol=1e-6)
    again = naive.aggregate(honest[:1], NOW_MS)  # a second copy of every id: same average
    np.testing.assert_allclose(again.embeddings, first.embeddings, atol=1e-6)
    assert (again.cluster_size == 2).all() and naive.backlog_rows() == 0
