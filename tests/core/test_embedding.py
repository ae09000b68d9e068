"""Embedders: the real default model loads offline and means something; the stand-in is honest."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from fai_core.embedding import (
    DEFAULT_MODEL,
    Embedder,
    HashingEmbedder,
    SentenceTransformerEmbedder,
    default_embedder,
)


def test_importing_the_module_does_not_load_torch():
    code = "import sys, fai_core.embedding; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_hashing_embedder_is_deterministic_unit_norm_and_word_sensitive():
    emb = HashingEmbedder(64)
    assert isinstance(emb, Embedder)
    texts = ["run pytest before commit", "run pytest before commit", "rotate the api secret"]
    a = emb.embed(texts)
    b = HashingEmbedder(64).embed(texts)
    assert a.shape == (3, 64) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, rtol=1e-6)
    assert a[0] @ a[1] == pytest.approx(1.0)
    assert abs(float(a[0] @ a[2])) < 0.9
    assert emb.model_id == "fai-hashing-v1-d64"
    assert emb.embed([]).shape == (0, 64)


def test_the_default_is_the_real_model_not_the_stand_in():
    emb = default_embedder()
    assert isinstance(emb, SentenceTransformerEmbedder)
    assert emb.model_id == DEFAULT_MODEL


def test_real_model_loads_offline_and_ranks_paraphrases_first(monkeypatch):
    # Any attempt to reach a model hub would fail here: the model must come from site-packages.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    emb = SentenceTransformerEmbedder()
    texts = [
        "Rerun the failing unit test alone before editing code",
        "Before changing code, run only the test that fails",
        "Offer a refund when the customer reports a duplicate charge",
    ]
    vectors = emb.embed(texts)
    assert vectors.shape == (3, 384) and vectors.dtype == np.float32
    assert emb.dimension == 384
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    paraphrase, unrelated = vectors[0] @ vectors[1], vectors[0] @ vectors[2]
    assert paraphrase > 0.6 > unrelated
    np.testing.assert_allclose(emb.embed(texts[:1])[0], vectors[0], atol=1e-5)
