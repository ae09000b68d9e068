"""DeltaSoup acceptance on real embeddings (shipped all-MiniLM-L6-v2 vectors of the corpus).

N = 12 nodes, f = 4 Byzantine, 1,000 honest texts over 8 domains, fixed seeds. Thresholds
are the issue's: honest retention >= 99% without attack and >= 97% under attack; >= 99% of
Byzantine experiences rejected for the listed attacks; flooding and copies keep the
Byzantine share of the merged set <= f/N.
"""

from __future__ import annotations

import numpy as np
import pytest

from fai_core.embedding import default_embedder
from fai_eval.scenario import (
    TableEmbedder,
    paper_filter_on_honest,
    run_attack,
    run_heterogeneous,
    shipped_embeddings,
)

REJECTED = [
    ("random_signs", {}),
    ("sign_flip", {}),
    ("ipm", {"eps": 1.0}),
    ("ipm", {"eps": 0.1}),
    ("alie", {"z": 1.0}),
    ("gaussian", {"sigma": 0.05}),
    ("scale_inflation", {"factor": 1.5}),
    ("mismatch", {}),
    ("replay", {}),
    ("domain_spoof", {}),
    ("confidence_inflation", {}),
]


class _NoModel:
    """Fallback that fails the test if a scenario text is missing from the shipped table."""

    model_id = "all-MiniLM-L6-v2"
    dimension = 384

    def embed(self, texts):
        raise AssertionError(f"text not in shipped embeddings: {texts[:1]}")


def _run(attack, **kw):
    return run_attack(attack, embedder=TableEmbedder(fallback=_NoModel()), **kw)


def test_no_attack_keeps_honest():
    r = _run("none")
    assert r["honest_sent"] >= 1000
    assert r["honest_retention"] >= 0.99


@pytest.mark.parametrize(("attack", "kw"), REJECTED, ids=[f"{a}{k}" for a, k in REJECTED])
def test_attack_rejected(attack, kw):
    r = _run(attack, **kw)
    assert r["honest_retention"] >= 0.97
    assert r["byzantine_rejection"] >= 0.99


@pytest.mark.parametrize("sigma", [0.002, 0.003])
def test_dp_noised_honest_batches_pass(sigma):
    """Every node adds privacy.py noise (clip 0.05, delta 1e-5; eps 121 / 81)."""
    r = _run("none", dp_sigma=sigma)
    assert r["honest_retention"] >= 0.99
    assert r["honest_drops"]["semantic_mismatch"] == 0


@pytest.mark.parametrize("factor", [1.5, 3.0])
def test_scale_inflation_rejected_under_dp_noise(factor):
    """Inflating senders that also add DP noise are still refused; honest DP rows kept."""
    r = _run("scale_inflation", factor=factor, dp_sigma=0.002)
    assert r["honest_retention"] >= 0.99
    assert r["byzantine_rejection"] >= 0.99
    assert r["byzantine_drop_reasons"] == {"scale_mismatch": r["byzantine_sent"]}


@pytest.mark.parametrize("attack", ["flooding", "copies"])
def test_flooding_and_copies_bounded_share(attack):
    r = _run(attack)
    assert r["honest_retention"] >= 0.97
    assert r["byzantine_row_share"] <= 4 / 12 + 1e-9
    assert r["byzantine_cluster_share"] <= 4 / 12


def test_alie_plausible_damage_bounded_by_cap():
    """Undetectable in embedding space; the per-node cap bounds how much it can place."""
    capped = _run("alie_plausible_nocap", z=0.0)
    assert capped["byzantine_row_share"] <= 4 / 12 + 1e-9
    assert capped["honest_retention"] >= 0.97


@pytest.mark.parametrize("flooding", [False, True], ids=["honest", "with_flooding"])
def test_heterogeneous_honest_rates_retained_once_backlogs_drain(flooding):
    """Honest rates 1x..3x over 4 rounds: over-cap rows are deferred, not lost."""
    r = run_heterogeneous(
        flooding=flooding, drain_rounds=20, embedder=TableEmbedder(fallback=_NoModel())
    )
    assert r["rounds"][-1]["honest_backlog"] == 0
    assert r["honest_retention"] >= 0.99
    # While sending, the cap holds each flooder to the median sender's new rows.
    for rnd in r["rounds"]:
        if not rnd["quiet"]:
            assert rnd["byzantine_row_share"] <= 0.41


def test_paper_filter_as_written_loses_honest_vectors():
    assert paper_filter_on_honest()["mad_scale=1.0"]["honest_retention"] < 0.9


def test_shipped_embeddings_are_current():
    texts, vectors = shipped_embeddings("patterns")
    pick = np.random.default_rng(0).choice(len(texts), 20, replace=False)
    fresh = default_embedder().embed([texts[i] for i in pick])
    cos = (fresh * vectors[pick]).sum(axis=1)
    assert cos.min() >= 0.999
