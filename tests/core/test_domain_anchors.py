"""Domain anchors: the built-in domains' centroids and margins, fixed before any peer speaks."""

from __future__ import annotations

import numpy as np
import pytest

from fai_core.corpus import CORPUS_DOMAINS, load_pattern_corpus
from fai_core.domain_anchors import (
    MIN_SEPARATION,
    DomainAnchors,
    anchored_mid,
    builtin_anchors,
    margins,
)
from fai_core.embedding import HashingEmbedder
from fai_eval.scenario import TableEmbedder


@pytest.fixture(scope="module")
def anchors() -> DomainAnchors:
    return builtin_anchors(TableEmbedder())


def test_every_built_in_domain_has_a_unit_centroid_its_own_sentences_sit_nearest(anchors):
    assert sorted(anchors.centroids) == sorted(CORPUS_DOMAINS)
    for dom, c in anchors.centroids.items():
        assert np.linalg.norm(c) == pytest.approx(1.0)
        # Measured: median margins 0.07-0.13, spreads 0.09-0.12 (all-MiniLM-L6-v2).
        assert 0.03 < anchors.margin_mid[dom] < 0.2
        assert 0.05 < anchors.margin_sigma[dom] < 0.2
    assert anchors.margin_of("not-a-built-in") is None


def test_a_domains_margins_separate_its_sentences_from_the_others(anchors):
    """The statistic the domain check sums: on the corpus, another domain's sentence under
    this domain's tag has a margin below zero far more often than the domain's own."""
    texts = [t for _, t in load_pattern_corpus()]
    domains = np.array([d for d, _ in load_pattern_corpus()])
    vecs = TableEmbedder().embed(texts).astype(np.float64)
    own = np.concatenate(
        [margins(vecs[domains == d], d, anchors.centroids) for d in CORPUS_DOMAINS]
    )
    spoofed = np.concatenate(
        [margins(vecs[domains != d], d, anchors.centroids) for d in CORPUS_DOMAINS]
    )
    assert (own < 0).mean() < 0.25 and (spoofed < 0).mean() > 0.9
    assert own.mean() - spoofed.mean() > 2.5 * own.std()


class RenamedTable(TableEmbedder):
    """The shipped vectors under another model's name: builtin_anchors must embed."""

    model_id = "another-model"

    def embed(self, texts):
        self.calls = getattr(self, "calls", 0) + len(texts)
        return super().embed(texts)


def test_another_model_embeds_the_corpus_and_a_model_without_topics_gets_none():
    model = RenamedTable()
    anchors = builtin_anchors(model)
    assert model.calls == len(load_pattern_corpus())
    assert anchors is not None and anchors.separation() >= MIN_SEPARATION
    # Bags of hashed words do not tell the domains apart: no anchors (measured ~0.25).
    assert builtin_anchors(HashingEmbedder(384)) is None


def test_anchors_need_two_domains():
    with pytest.raises(ValueError, match="at least two domains"):
        DomainAnchors.from_vectors({"coding": np.eye(3)})
    with pytest.raises(ValueError, match="at least two domains"):
        DomainAnchors.from_vectors({"coding": np.eye(3), "design": np.zeros((0, 3))})


def test_margins_need_the_domain_and_another_centroid():
    c = {"a": np.array([1.0, 0.0]), "b": np.array([0.0, 1.0])}
    rows = np.array([[0.8, 0.6], [0.6, 0.8]])
    assert margins(rows, "a", c).tolist() == pytest.approx([0.2, -0.2])
    assert margins(rows, "a", {"a": c["a"]}) is None
    assert margins(rows, "z", c) is None


def test_the_anchor_is_a_floor_under_the_senders_middle():
    assert anchored_mid(0.02, 0.1) == 0.1  # many senders pulled it down: the anchor holds
    assert anchored_mid(0.2, 0.1) == 0.2  # honest senders above the anchor keep theirs
    assert anchored_mid(None, 0.1) == 0.1 and anchored_mid(0.3, None) == 0.3
    assert anchored_mid(None, None) is None
