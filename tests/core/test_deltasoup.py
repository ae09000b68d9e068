"""Per-phase behaviour and laws of DeltaSoup, on the shipped real embeddings (no model)."""

from __future__ import annotations

import numpy as np
import pytest

from fai_core.deltasoup import DeltaSoup, DeltaSoupConfig, Drop, cosine_clusters
from fai_core.identity import NodeKey
from fai_eval import attacks
from fai_eval.scenario import NOW_MS


@pytest.fixture(scope="module")
def honest(scenario):
    return [b.batch for b in scenario.honest_batches()]


def test_phase1_refusals(scenario, embedder, honest):
    soup = DeltaSoup(embedder)
    b = honest[0]
    assert soup.verify(b, NOW_MS + 400_000) is Drop.STALE
    assert soup.verify(b, NOW_MS - 400_000) is Drop.FUTURE
    assert soup.verify(b, NOW_MS) is None
    assert soup.verify(b, NOW_MS) is Drop.REPLAY
    node = scenario.honest[0]
    other = attacks.signed_batch(
        node.key,
        node.texts[:2],
        node.vectors[:2],
        domain=node.domains[0],
        quality=[0.5, 0.5],
        seq=b.seq,
        timestamp_ms=NOW_MS,
        model=b.model,
    ).batch
    assert soup.verify(other, NOW_MS) is Drop.EQUIVOCATION
    wrong = attacks.signed_batch(
        node.key,
        node.texts[:2],
        node.vectors[:2],
        domain="coding",
        quality=[0.5, 0.5],
        seq=999,
        timestamp_ms=NOW_MS,
        model="all-mpnet-base-v2",
    ).batch
    assert soup.verify(wrong, NOW_MS) is Drop.WRONG_MODEL
    for _ in range(12):
        soup.reputation.record(node.key.public_key, passed=False)
    fresh = attacks.signed_batch(
        node.key,
        node.texts[:2],
        node.vectors[:2],
        domain="coding",
        quality=[0.5, 0.5],
        seq=1000,
        timestamp_ms=NOW_MS,
        model=b.model,
    ).batch
    assert soup.verify(fresh, NOW_MS) is Drop.LOW_REPUTATION


def test_merge_independent_of_arrival_order(embedder, honest):
    a = DeltaSoup(embedder).aggregate(honest, NOW_MS)
    shuffled = list(honest)
    np.random.default_rng(1).shuffle(shuffled)
    b = DeltaSoup(embedder).aggregate(shuffled, NOW_MS)
    assert a.texts == b.texts
    assert np.array_equal(a.embeddings, b.embeddings)
    assert np.array_equal(a.quality, b.quality)


def test_one_node_influence_bounded(scenario, embedder, honest):
    """A node sending 8x more rows keeps no more rows than the median node."""
    key = NodeKey(b"\x99" * 32)
    flood = scenario._node(0, scenario.honest_idx[:800], key)
    batches = [b.batch for b in flood.batches(ts=NOW_MS, seq0=1)]
    result = DeltaSoup(embedder).aggregate(honest + batches, NOW_MS)
    kept = sum(
        1
        for s, d in zip(result.row_sender, result.row_drop, strict=True)
        if s == key.public_key and d is None
    )
    assert kept <= scenario.per_node


def test_a_sender_alone_is_held_to_the_absolute_cap(scenario, embedder):
    """The median cap does not bind a sender that is alone in a round; max_cap does, and
    only capped rows are re-embedded (the rest wait in the backlog, not dropped)."""
    key = NodeKey(b"\x98" * 32)
    alone = scenario._node(0, scenario.honest_idx[:400], key)
    batches = [b.batch for b in alone.batches(ts=NOW_MS, seq0=1)]
    offered = sum(len(b) for b in batches)
    calls: list[int] = []

    class Counting:
        model_id, dimension = embedder.model_id, embedder.dimension

        def embed(self, texts):
            calls.append(len(texts))
            return embedder.embed(texts)

    soup = DeltaSoup(Counting(), config=DeltaSoupConfig(max_cap=32))
    result = soup.aggregate(batches, NOW_MS)
    evaluated = sum(1 for d in result.row_drop if d is not Drop.DEFERRED)
    assert offered > 32 and evaluated == 32
    assert sum(calls) <= 32
    assert soup.backlog_rows(key.public_key) == offered - 32
    unbounded = DeltaSoup(embedder).aggregate(batches, NOW_MS)
    assert sum(1 for d in unbounded.row_drop if d is not Drop.DEFERRED) == offered


def test_dedup_and_eq19(embedder):
    x = np.random.default_rng(0).standard_normal((50, 16)).astype(np.float32)
    x = np.vstack([x, x[:5] + 1e-3])
    labels = cosine_clusters(x, 0.95)
    assert len(set(labels)) == 50
    assert all(labels[i] == labels[50 + i] for i in range(5))
    lsh = cosine_clusters(x, 0.95, exact_rows=10, bucket_rows=4)
    assert np.array_equal(
        np.unique(lsh, return_inverse=True)[1], np.unique(labels, return_inverse=True)[1]
    )


def test_duplicate_experience_merges_with_max_quality(scenario, embedder):
    n1, n2 = scenario.honest[0], scenario.honest[1]
    text, vec = n1.texts[0], n1.vectors[:1]
    batches = [
        attacks.signed_batch(
            n.key,
            [text],
            vec,
            domain=n1.domains[0],
            quality=[q],
            seq=1,
            timestamp_ms=NOW_MS,
            model="all-MiniLM-L6-v2",
        ).batch
        for n, q in ((n1, 0.3), (n2, 0.7))
    ]
    cfg = DeltaSoupConfig(min_cap=1, domain_min_senders=99)
    r = DeltaSoup(embedder, config=cfg).aggregate(batches, NOW_MS)
    assert len(r) == 1 and r.quality[0] == pytest.approx(0.7, abs=1e-4)
    assert r.sources[0] == n2.key.public_key
    assert r.experiences()[0].text == text


def test_reputation_falls_for_failing_sender(scenario, embedder, honest):
    soup = DeltaSoup(embedder)
    key = NodeKey(b"\x77" * 32)
    node = scenario._node(0, scenario.pool_idx[:40], key)
    for rnd in range(3):
        bad = [attacks.sign_flip(b, key).batch for b in node.batches(ts=NOW_MS, seq0=10 * rnd)]
        soup.aggregate(bad, NOW_MS)
    assert soup.reputation.score(key.public_key) < 0.3
    assert soup.reputation.score(honest[0].sender) == 1.0


def test_lsh_clusters_equal_exact_on_planted_duplicates():
    """LSH (numba union-find) gives the exact path's labels, numbering included, on data
    with planted near-duplicate groups (pairs at cos ~0.99, chains of up to 4)."""
    rng = np.random.default_rng(5)
    base = rng.standard_normal((3000, 96)).astype(np.float32)
    groups = [base]
    for size in (1, 2, 3):
        src = base[rng.choice(3000, 300, replace=False)]
        for _ in range(size):
            src = src + 0.08 * rng.standard_normal(src.shape).astype(np.float32)
            groups.append(src)
    x = np.vstack(groups)[rng.permutation(3000 + 300 * 6)]
    exact = cosine_clusters(x, 0.95)
    assert len(np.unique(exact)) < len(x) - 1000  # the planted groups did merge
    lsh = cosine_clusters(x, 0.95, exact_rows=100)
    assert np.array_equal(lsh, exact)


def _dp_batches(scenario, sigma, seed=0):
    from fai_eval.scenario import dp_noised

    rng = np.random.default_rng(seed)
    return [dp_noised(b, key, sigma, rng) for b, key in _signed_honest(scenario)]


def _signed_honest(scenario):
    return [(b, node.key) for node in scenario.honest for b in node.batches(ts=NOW_MS - 30_000)]


def test_scale_check_robust_to_dp_noise(scenario, embedder):
    """Zero-mean DP noise: the batch noise estimate widens the per-group bound, the row and
    batch medians stay near 0, so honest DP rows pass; the pre-DP rule refused most."""
    noised = [s.batch for s in _dp_batches(scenario, 0.002)]
    r = DeltaSoup(embedder).aggregate(noised, NOW_MS)
    assert np.mean([d is None for d in r.row_drop]) >= 0.99
    scores = r.row_scores
    assert np.median(scores["scale_noise"]) > 0.02  # the noise is seen ...
    assert np.mean(scores["scale_log_ratio"] > 0.05) > 0.5  # ... and broke the old rule
    assert np.abs(scores["scale_batch_median"]).max() < 0.05
    plain = DeltaSoup(embedder).aggregate([b.batch for b, _ in _signed_honest(scenario)], NOW_MS)
    assert plain.row_scores["scale_noise"].max() < 1e-6  # wire rounding only


def test_scale_check_without_noise_unchanged(scenario, embedder):
    """No noise: one group of one row inflated x1.1 is refused (bound scale_ratio_tol)."""
    signed, key = _signed_honest(scenario)[0]
    scales = signed.batch.scales.copy()
    scales[0, 1] *= np.float32(1.1)
    bad = attacks.reseal(signed, key, scales=attacks._scale_bytes(signed.batch, scales)).batch
    r = DeltaSoup(embedder).aggregate([bad], NOW_MS)
    assert r.row_drop[0] is Drop.SCALE_MISMATCH
    assert all(d is None for d in r.row_drop[1:])


def test_inflated_row_inside_dp_batch_refused(scenario, embedder):
    """A x1.5 row hidden in an honest DP batch: its row median exposes it."""
    signed = _dp_batches(scenario, 0.002)[0]
    key = _signed_honest(scenario)[0][1]
    scales = signed.batch.scales.copy()
    scales[0] *= np.float32(1.5)
    bad = attacks.reseal(signed, key, scales=attacks._scale_bytes(signed.batch, scales)).batch
    r = DeltaSoup(embedder).aggregate([bad], NOW_MS)
    assert r.row_drop[0] is Drop.SCALE_MISMATCH


def test_too_noisy_batch_refused(scenario, embedder):
    """Noise beyond scale_noise_max (eps <= 1 territory): scales cannot be checked."""
    noised = [s.batch for s in _dp_batches(scenario, 0.02)]
    r = DeltaSoup(embedder).aggregate(noised, NOW_MS)
    assert np.mean([d is None for d in r.row_drop]) < 0.05


def test_repair_window_admits_an_old_batch_once(embedder, honest):
    """Repair passes a wider T_max for batches the fleet accepted while they were fresh."""
    soup = DeltaSoup(embedder)
    b = honest[1]
    late = NOW_MS + 3_600_000
    assert soup.verify(b, late) is Drop.STALE
    assert soup.verify(b, late, max_age_ms=7_200_000) is None
    assert soup.verify(b, late, max_age_ms=7_200_000) is Drop.REPLAY
    result = DeltaSoup(embedder).aggregate([honest[2]], late, max_age_ms=7_200_000)
    assert result.outcomes[0].drop is None and len(result) > 0
    assert DeltaSoup(embedder).aggregate([honest[2]], late).outcomes[0].drop is Drop.STALE


def test_a_batch_with_another_group_size_is_wrong_model_not_a_crash(scenario, embedder, honest):
    """Mixed group sizes in one round used to raise in the scale checks (found in review)."""
    node = scenario.honest[0]
    odd = attacks.signed_batch(
        node.key,
        node.texts[:4],
        node.vectors[:4],
        domain=node.domains[0],
        quality=[0.5] * 4,
        seq=10_000,
        timestamp_ms=NOW_MS,
        model=honest[0].model,
        group=64,
    ).batch
    assert odd.group != honest[0].group
    soup = DeltaSoup(embedder)
    result = soup.aggregate([odd, *honest[:3]], NOW_MS)
    by_cid = {o.cid: o for o in result.outcomes}
    assert by_cid[odd.cid].drop is Drop.WRONG_MODEL
    assert all(by_cid[b.cid].drop is None for b in honest[:3])
