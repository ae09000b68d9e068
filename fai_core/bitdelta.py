"""BitDelta: 1-bit sign + per-group scale compression of embedding deltas (paper section 4).

Each embedding e is sent as its delta from a baseline b (the sender's library mean, which
travels with the batch): per group of g coordinates one scale alpha = mean |delta| and one
sign bit per coordinate. The receiver reconstructs e_hat = b + alpha * sign(delta).

Layout, as fixed by docs/wire-format.md:
- groups: G = ceil(d / g); group j covers coordinates [j*g, min((j+1)*g, d)), so the last
  group may be shorter and its scale is the mean over its own length;
- sign bit 1 means delta < 0, bit 0 means delta >= 0 (sign(0) = +1, and -0.0 counts as 0);
- each embedding's d bits are packed most-significant-bit first (coordinate i is bit
  7 - i % 8 of byte i // 8), ceil(d / 8) bytes per embedding, unused trailing bits zero;
- scales are float32 by default, float16 optionally, little-endian on the wire.

Everything works on whole matrices, in row blocks small enough to stay in cache: the
per-embedding cost is a few passes over d floats, not a Python loop.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DEFAULT_GROUP_SIZE = 128
SCALE_DTYPES = {"f32": np.dtype("<f4"), "f16": np.dtype("<f2")}
#: Rows per block: small enough that the scratch buffers stay in L2 (128 x 768 x 4 = 384 KiB).
_BLOCK_ROWS = 128

# Row b of the table is the +1/-1 pattern of byte b, most significant bit first.
_SIGN_TABLE = np.where(
    np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1, bitorder="big") == 1,
    np.float32(-1.0),
    np.float32(1.0),
).astype(np.float32)


def group_count(d: int, g: int) -> int:
    return -(-d // g)


def sign_bytes(d: int) -> int:
    return -(-d // 8)


@dataclass(frozen=True, slots=True)
class Compressed:
    """Compressed deltas of M embeddings: `signs` (M, ceil(d/8)) uint8, `scales` (M, G)."""

    signs: np.ndarray
    scales: np.ndarray
    d: int
    g: int

    def __len__(self) -> int:
        return int(self.signs.shape[0])


def _group_starts(d: int, g: int) -> np.ndarray:
    return np.arange(0, d, g, dtype=np.intp)


def _group_sizes(d: int, g: int) -> np.ndarray:
    starts = _group_starts(d, g)
    return (np.minimum(starts + g, d) - starts).astype(np.float32)


def encode(
    embeddings: np.ndarray,
    baseline: np.ndarray,
    g: int = DEFAULT_GROUP_SIZE,
    scale_dtype: str = "f32",
) -> Compressed:
    """Compress the rows of `embeddings` (M, d) against `baseline` (d,)."""
    x = np.asarray(embeddings, dtype=np.float32)
    base = np.asarray(baseline, dtype=np.float32)
    if x.ndim != 2 or base.shape != (x.shape[1],):
        raise ValueError(f"embeddings {x.shape} and baseline {base.shape} do not match")
    m, d = x.shape
    if not 1 <= g <= d:
        raise ValueError(f"group size must be in [1, {d}], got {g}")
    n_groups = group_count(d, g)
    signs = np.empty((m, sign_bytes(d)), dtype=np.uint8)
    scales = np.empty((m, n_groups), dtype=SCALE_DTYPES[scale_dtype])
    even = d % g == 0
    starts = _group_starts(d, g)
    inv_sizes = np.float32(1.0) / _group_sizes(d, g)
    # Scratch buffers are reused across blocks: fresh large temporaries cost page faults.
    rows = min(m, _BLOCK_ROWS)
    delta = np.empty((rows, d), dtype=np.float32)
    negative = np.empty((rows, d), dtype=np.bool_)
    sums = np.empty((rows, n_groups), dtype=np.float32)
    for lo in range(0, m, _BLOCK_ROWS):
        n = min(lo + _BLOCK_ROWS, m) - lo
        blk, neg, tot = delta[:n], negative[:n], sums[:n]
        np.subtract(x[lo : lo + n], base, out=blk)
        # delta < 0, not signbit: -0.0 must encode as +1 like 0.0 (sign(0) = +1).
        np.less(blk, 0, out=neg)
        signs[lo : lo + n] = np.packbits(neg, axis=1, bitorder="big")
        np.abs(blk, out=blk)
        if even:
            np.einsum("rgk->rg", blk.reshape(n, n_groups, g), out=tot)
        else:
            np.add.reduceat(blk, starts, axis=1, out=tot)
        np.multiply(tot, inv_sizes, out=tot)
        scales[lo : lo + n] = tot
    return Compressed(signs=signs, scales=scales, d=d, g=g)


def decode(compressed: Compressed, baseline: np.ndarray) -> np.ndarray:
    """Reconstruct (M, d) float32 embeddings: baseline + scale * sign, group by group."""
    signs, d, g = compressed.signs, compressed.d, compressed.g
    base = np.asarray(baseline, dtype=np.float32)
    m = signs.shape[0]
    n_groups = group_count(d, g)
    n_bytes = sign_bytes(d)
    if base.shape != (d,) or signs.shape != (m, n_bytes):
        raise ValueError("signs/baseline shapes do not match d")
    if compressed.scales.shape != (m, n_groups):
        raise ValueError("scales shape does not match (M, ceil(d/g))")
    scales = compressed.scales.astype(np.float32, copy=False)
    out = np.empty((m, d), dtype=np.float32)
    even = d % g == 0 and d % 8 == 0
    group_of = np.repeat(np.arange(n_groups), _group_sizes(d, g).astype(np.intp))
    rows = min(m, _BLOCK_ROWS)
    unit = np.empty((rows, n_bytes, 8), dtype=np.float32)
    for lo in range(0, m, _BLOCK_ROWS):
        n = min(lo + _BLOCK_ROWS, m) - lo
        u = unit[:n]
        np.take(_SIGN_TABLE, signs[lo : lo + n], axis=0, out=u)
        if even:
            u3 = u.reshape(n, n_groups, g)
            np.multiply(u3, scales[lo : lo + n, :, None], out=u3)
            np.add(u.reshape(n, d), base, out=out[lo : lo + n])
        else:
            flat = u.reshape(n, n_bytes * 8)[:, :d]
            np.multiply(flat, scales[lo : lo + n][:, group_of], out=flat)
            np.add(flat, base, out=out[lo : lo + n])
    return out


def padding_is_clean(signs: np.ndarray, d: int) -> bool:
    """True if the unused low bits of each row's last sign byte are zero (strict decoding)."""
    spare = sign_bytes(d) * 8 - d
    if spare == 0 or signs.shape[0] == 0:
        return True
    mask = np.uint8((1 << spare) - 1)
    return not np.any(signs[:, -1] & mask)
