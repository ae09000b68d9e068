"""Baseline blocks: a sender's BitDelta baseline as its own content-addressed block (wire v2).

In wire version 1 every batch carried its sender's d float32 baseline (1,536 bytes at
d = 384): at the rate agents produce experiences (about one per batch) that was more than
the compressed experience itself. In version 2 a batch names its baseline by CID, and the
baseline travels once: attached to the sender's first batch on each topic after it changes,
and fetched over repair by any node that missed that batch. The CID authenticates the block
(the signed batch commits to it), so the block itself needs no signature.

A block is the DAG-CBOR map {"m": model id, "w": d, "f": d float16 values, little-endian}.
Float16 keeps the block at ~800 bytes; the sender encodes its deltas against the values as
rounded (`BaselineBlock.values`), so the receiver's reconstruction is exactly the one the
sender computed, whatever the rounding cost the baseline. docs/wire-format.md specifies the
block; `baseline_drift` is the rule for when a sender makes a new one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from importlib.resources import files
from typing import Any

import numpy as np

from fai_core import dagcbor
from fai_core.errors import Reject, WireError
from fai_core.experience import MAX_DIMENSION

#: Keys and types of a baseline block; nothing else may appear.
BLOCK_FIELDS: dict[str, type] = {"m": str, "w": int, "f": bytes}
#: The largest finite float16; a mean of unit embeddings is nowhere near it.
MAX_ABS_BASELINE = 65504.0
#: A block is d float16 values plus a model id: at d = 4096 under 8.5 KB.
MAX_BLOCK_BYTES = 2 * MAX_DIMENSION + 256
#: A sender makes a new block once its library mean is this far (L2, the embeddings being
#: unit vectors) from its current block. Measured (bench/baseline_drift.py: libraries
#: growing to the whole corpus and to each domain alone, one experience per batch, 3 seeds):
#: at 0.3, 3.5 blocks per 1,000 experiences and a mean reconstruction cosine of 0.8242,
#: minimum 0.757 (at 0.2: 5.6 blocks, 0.8269, 0.755; with the reference only: 0.8187,
#: 0.757; a fresh float32 mean every batch, what version 1 sent: 0.8404), all far above the
#: receivers' 0.6. In the simulated fleet (seed 42, 100 rounds; 20 at N = 500) bytes per
#: experience, 0.2 -> 0.3 -> reference only: N = 100 395 -> 353 -> 341, N = 200 418 -> 364
#: -> 342, N = 500 505 -> 377 -> 342, retrieval and honest retention identical: agents
#: publish about one experience per batch, so a block rides on few of a sender's batches
#: and weighs on each of them. 0.3 still makes blocks when a library moves well away from
#: the reference (a domain far from the shipped corpus), which 0.4 and above did not in
#: the simulator. docs/wire-format.md, "Baseline blocks".
DEFAULT_DRIFT_THRESHOLD = 0.3
#: A sender keeps the fleet's reference block until its library holds this many rows: the
#: mean of a few rows is a poor baseline (one row as the baseline dropped 9 % of honest
#: rows, docs/wire-format.md) and would change with nearly every new row.
MIN_LIBRARY_ROWS = 64


@dataclass(frozen=True, slots=True)
class BaselineBlock:
    """One baseline: its block bytes and CID, and the float32 values the block stands for
    (each exactly a float16), which both sender and receiver encode and decode against."""

    cid: bytes
    data: bytes
    model: str
    values: np.ndarray

    @property
    def dim(self) -> int:
        """d, the embedding dimension of the fleet the block belongs to."""
        return int(self.values.shape[0])

    @property
    def cid_text(self) -> str:
        """The CID in its text form, for logs and APIs."""
        return dagcbor.cid_text(self.cid)


def make_baseline_block(mean: np.ndarray, model: str) -> BaselineBlock:
    """The block of a library mean: each value rounded to the nearest float16 (ties to even).

    Raises ValueError for a mean this node must not publish (wrong shape, non-finite, too
    large for float16): every receiver would refuse it.
    """
    values = np.asarray(mean, dtype=np.float64)
    if values.ndim != 1 or not 1 <= values.shape[0] <= MAX_DIMENSION:
        raise ValueError(f"a baseline is a vector of 1..{MAX_DIMENSION} values")
    if not np.isfinite(values).all() or np.abs(values).max() > MAX_ABS_BASELINE:
        raise ValueError("baseline has non-finite values or values beyond float16's range")
    half = values.astype(np.float32).astype("<f2")
    data = dagcbor.encode({"m": model, "w": int(values.shape[0]), "f": half.tobytes()})
    return BaselineBlock(dagcbor.cid_of(data), data, model, half.astype(np.float32))


def decode_baseline_block(data: bytes, expected_cid: bytes) -> BaselineBlock:
    """Check untrusted block bytes fetched or received for `expected_cid`; raise WireError.

    A wrong hash is CID_MISMATCH (whoever handed us the bytes is at fault). Past that, the
    block is the one the batch's signer committed to, so every other refusal is the signer's.
    """
    if len(data) > MAX_BLOCK_BYTES:
        raise WireError(Reject.OVERSIZE, f"baseline block of {len(data)} bytes")
    if dagcbor.cid_of(data) != expected_cid:
        raise WireError(Reject.CID_MISMATCH, "baseline block does not hash to its CID")
    fields = dagcbor.decode(data)
    _check_block_fields(fields)
    dim = fields["w"]
    if not 1 <= dim <= MAX_DIMENSION:
        raise WireError(Reject.BAD_DIMENSION, f"baseline dim {dim} outside 1..{MAX_DIMENSION}")
    if len(fields["f"]) != 2 * dim:
        raise WireError(Reject.SHAPE_MISMATCH, f"baseline has {len(fields['f'])} bytes for {dim}")
    values = np.frombuffer(fields["f"], dtype="<f2").astype(np.float32)
    if not np.isfinite(values).all():
        raise WireError(Reject.NON_FINITE, "baseline contains NaN or Inf")
    return BaselineBlock(expected_cid, bytes(data), fields["m"], values)


def _check_block_fields(fields: Any) -> None:
    if not isinstance(fields, dict) or fields.keys() != BLOCK_FIELDS.keys():
        raise WireError(Reject.SCHEMA, f"baseline block keys must be {sorted(BLOCK_FIELDS)}")
    for name, kind in BLOCK_FIELDS.items():
        if isinstance(fields[name], bool) or not isinstance(fields[name], kind):
            raise WireError(Reject.SCHEMA, f"baseline.{name} must be {kind.__name__}")


def baseline_drift(published: BaselineBlock, mean: np.ndarray) -> float:
    """L2 distance from the published baseline to the library mean now: a sender makes a new
    block when it exceeds its threshold (`DEFAULT_DRIFT_THRESHOLD`)."""
    current = np.asarray(mean, dtype=np.float64)
    if current.shape != published.values.shape:
        return float("inf")
    return float(np.linalg.norm(current - published.values.astype(np.float64)))


def reference_block(model: str, dim: int) -> BaselineBlock:
    """The fleet's well-known baseline: every node derives it, so it is never sent.

    For the default model (all-MiniLM-L6-v2, d = 384) the mean of the 1,279 shipped corpus
    embeddings (fai_core/data; each a float16, so their float64 sum is exact and the block
    is the same on every platform); for any other model the zero vector. A sender encodes
    against it until its own library is large enough to have a mean worth sending.
    """
    return _reference_block(model, dim)


@lru_cache(maxsize=8)
def _reference_block(model: str, dim: int) -> BaselineBlock:
    data = files("fai_core") / "data"
    meta = json.loads((data / "embeddings.meta.json").read_text("utf-8"))
    if (meta["model"], meta["dim"]) != (model, dim):
        return make_baseline_block(np.zeros(dim), model)
    with (data / meta["files"]["patterns"]["npy"]).open("rb") as f:
        vectors = np.load(f)
    total = vectors.astype(np.float64).sum(axis=0)  # exact: float16 terms, 1,279 of them
    return make_baseline_block(total / vectors.shape[0], model)


class BaselinePublisher:
    """A sender's current block and the topics it went out on.

    It starts with the fleet's reference block (`reference_block`, known to every node,
    never attached). Once the library holds `min_rows` rows and its mean has drifted past
    `drift` from the current block, it makes a block of the mean; each new block is
    attached to the first batch on every domain's topic after the change."""

    def __init__(
        self,
        reference: BaselineBlock,
        drift: float = DEFAULT_DRIFT_THRESHOLD,
        min_rows: int = MIN_LIBRARY_ROWS,
    ) -> None:
        self.block, self.drift, self.min_rows = reference, drift, min_rows
        self._attached: set[str] | None = None  # None: every topic has it (the reference)
        self.blocks_made = 0

    def for_batch(self, mean: np.ndarray, rows: int, domain: str) -> tuple[BaselineBlock, bool]:
        """The block to encode a `domain` batch against, and whether to attach it, for a
        library of `rows` rows with this mean."""
        if rows >= self.min_rows and baseline_drift(self.block, mean) > self.drift:
            self.block = make_baseline_block(mean, self.block.model)
            self._attached = set()
            self.blocks_made += 1
        return self.block, self._attached is not None and domain not in self._attached

    def attached(self, domain: str) -> None:
        """The block went out with a batch on `domain`'s topic (call after publishing)."""
        if self._attached is not None:
            self._attached.add(domain)
