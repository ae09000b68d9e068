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
    make_embedder,
)
from fai_core.embedding_onnx import OnnxMiniLMEmbedder


def test_importing_the_module_does_not_load_torch():
    code = (
        "import sys, fai_core.embedding, fai_core.embedding_onnx; "
        "fai_core.embedding.default_embedder(); "
        "print(sorted({'torch', 'onnxruntime', 'tokenizers'} & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


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
    assert emb.model_id == "fai-hashing-v2-d64"
    assert emb.embed([]).shape == (0, 64)


def test_the_default_is_the_real_model_not_the_stand_in():
    emb = default_embedder()
    assert isinstance(emb, OnnxMiniLMEmbedder)
    assert emb.model_id == DEFAULT_MODEL


@pytest.mark.parametrize("name", ["minilm", "minilm-torch"])
def test_real_model_loads_offline_and_ranks_paraphrases_first(monkeypatch, name):
    # Any attempt to reach a model hub would fail here: the model must come from site-packages.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    if name == "minilm-torch":
        pytest.importorskip("sentence_transformers")
    emb = make_embedder(name)
    assert isinstance(emb, OnnxMiniLMEmbedder if name == "minilm" else SentenceTransformerEmbedder)
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


def test_hashing_embedder_honest_rows_pass_deltasoup_at_default_thresholds():
    """Honest corpus rows of a hashing fleet pass DeltaSoup at the MiniLM thresholds, so
    tests of reputation on hashing fleets mean something. v1 (sparse, one coordinate per
    feature) dropped 81% of these rows as semantic_mismatch even at direct_min_cos 0.45:
    median cos(e_hat, e) 0.41 against library means of ~200 rows."""
    from fai_core import bitdelta
    from fai_core.corpus import load_pattern_corpus
    from fai_core.deltasoup import DeltaSoup, DeltaSoupConfig, _rowwise_cos
    from fai_core.identity import NodeKey
    from fai_eval import attacks

    emb = HashingEmbedder(384)
    corpus = load_pattern_corpus()
    ts, batches = 1_700_000_000_000, []
    for k, idx in enumerate(np.array_split(np.random.default_rng(0).permutation(len(corpus)), 6)):
        key = NodeKey(bytes([k + 1]) * 32)
        texts, domains = [corpus[i][1] for i in idx], [corpus[i][0] for i in idx]
        vectors = emb.embed(texts)
        for seq, dom in enumerate(sorted(set(domains)), 1):
            sel = [i for i, d in enumerate(domains) if d == dom]
            batches.append(
                attacks.signed_batch(
                    key,
                    [texts[i] for i in sel],
                    vectors[sel],
                    domain=dom,
                    quality=np.full(len(sel), 0.6),
                    seq=seq,
                    timestamp_ms=ts,
                    model=emb.model_id,
                    baseline=vectors.mean(axis=0),  # the sender's library mean
                ).batch
            )
    result = DeltaSoup(emb, config=DeltaSoupConfig(min_cap=10_000)).aggregate(batches, ts)
    assert len(result.row_drop) == len(corpus) and set(result.row_drop) == {None}
    assert result.row_scores["direct_cos"].min() > 0.7
    # Small libraries too (a fleet test's node holds a handful of rows).
    texts = [t for _, t in corpus]
    rng = np.random.default_rng(1)
    for size in (2, 3, 5, 10, 30):
        for _ in range(20):
            v = emb.embed([texts[i] for i in rng.choice(len(texts), size, replace=False)])
            base = v.mean(axis=0)
            e_hat = bitdelta.decode(bitdelta.encode(v, base, 128), base)
            assert _rowwise_cos(e_hat, v).min() > 0.7
