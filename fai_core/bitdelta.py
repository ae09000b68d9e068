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

Implementation: one fused numba kernel per direction. Encode reads each embedding once and
writes its sign bytes and scales (8 rows at a time, see `_encode_rows`); decode reads signs
and scales and writes each output row once. The |delta| and sign flags live in small scratch
buffers that stay in L1. Numpy needs four or five passes over every block (subtract,
compare, packbits, abs, reduce; take, multiply, add) plus temporaries, and no arrangement of
them got below ~1.1 us per 384-d embedding for encode + decode; encode takes ~0.15 us and
decode less, most of it memory traffic: reading the input, and page-faulting in the freshly
allocated output.

Results are exactly reproducible by any implementation: a scale is a float64 sum of the
group's float32 |delta| in coordinate order, divided by the group length and rounded once
to float32 (docs/wire-format.md specifies it; tests/core/test_bitdelta_spec.py recomputes
it with a plain Python loop). The kernels are compiled without fastmath (no reassociation,
no FMA contraction), so LLVM may not reorder that sum. The sum used to be a float32
pairwise tree over 8 lanes: exact to specify but not simple, and a second implementation's
plain float32 loop differed in the last bit, hence in the CID. Decoding computes baseline +
(+/-scale) in float32, which is exactly baseline + scale * sign.

Kernels are compiled on first use (`_kernels`) and cached on disk (`cache=True`: in
__pycache__ next to this file, or numba's user-wide cache when that is read-only). The first
process compiles (~2 s); later ones pay numba's import and start-up on their first call
(~0.5 s), then ~5 us per call.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

DEFAULT_GROUP_SIZE = 128
SCALE_DTYPES = {"f32": np.dtype("<f4"), "f16": np.dtype("<f2")}

# Packing 8 sign flags (one 0/1 byte each, coordinate t in byte t of a uint64 read on a
# little-endian host, as every platform numba supports is) into one MSB-first byte: the
# product puts flag t at bit 63 - t, and nothing else lands in, or carries into, the top
# byte (each term of the product has a bit position of its own).
_PACK = np.uint64(0x8040201008040201)
# Unpacking: multiplying a byte by _SPREAD copies it into all 8 bytes; masking with _PICK
# keeps bit 7 - t in byte t, so byte t is nonzero exactly when coordinate t is negative.
_SPREAD = np.uint64(0x0101010101010101)
_PICK = np.uint64(0x0102040810204080)


def group_count(d: int, g: int) -> int:
    """Scale groups per embedding, ceil(d / g): the width of the scales column, which the
    encoder allocates and the wire decoder checks (the last group may be shorter)."""
    return -(-d // g)


def sign_bytes(d: int) -> int:
    """Bytes of packed sign bits per embedding, ceil(d / 8): the width of the signs column,
    which the encoder allocates and the wire decoder checks."""
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


# The kernels below are plain Python until `_kernels()` compiles them on first use. Their
# loops index with `range(n)` counters over slices that start at 0: numba adds a
# negative-index wraparound check to every signed index it cannot prove non-negative, and
# that check alone keeps LLVM from vectorising a loop over `range(lo, hi)`.


def _encode_rows(x, base, g, signs, scales):
    """Write the sign bytes and float32 scales of every row of x (M, d) minus base (d,).

    A group's scale has a simple specification (docs/wire-format.md, "BitDelta"), so that a
    second implementation reproduces it bit for bit with one plain loop: the float32 |delta|
    of the group's coordinates, each widened to float64 and added one after another in
    coordinate order to a float64 sum starting at 0.0; that sum divided by the group's
    length in float64; the quotient rounded once to float32.

    A sequential sum is a chain of dependent adds that SIMD cannot shorten within a row, so
    the kernel sums 8 rows side by side: their |delta| sit in `mag` (8, d), and a0..a7 are
    8 independent chains, each exactly one row's own sequential sum. Running rows together
    changes no bit of any row's result, and the 8 chains keep the adder busy (~0.07 us per
    384-d row for the scales, about what the earlier float32 pairwise tree cost).
    """
    m, d = x.shape
    n_groups = scales.shape[1]
    n_bytes = signs.shape[1]
    mag = np.zeros((8, d), np.float32)
    # Zero-initialised: the flags past d stay 0, so the padding bits come out 0.
    neg = np.zeros(n_bytes << 3, np.uint8)
    neg64 = neg.view(np.uint64)
    for i0 in range(0, m, 8):
        rows = min(8, m - i0)
        for r in range(rows):
            xi = x[i0 + r]
            mr = mag[r]
            for k in range(d):
                dk = xi[k] - base[k]  # float32, rounded once
                mr[k] = abs(dk)
                # delta < 0, not the float sign bit: -0.0 must encode as +1 like 0.0.
                neg[k] = dk < 0
            si = signs[i0 + r]
            for b in range(n_bytes):
                si[b] = np.uint8((neg64[b] * _PACK) >> np.uint64(56))
        # Lanes r >= rows (a last block of fewer than 8 rows) hold stale values, unused.
        for j in range(n_groups):
            lo = j * g
            n = min(g, d - lo)
            blk = mag[:, lo : lo + n]
            a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = np.float64(0.0)
            for k in range(n):
                a0 += np.float64(blk[0, k])
                a1 += np.float64(blk[1, k])
                a2 += np.float64(blk[2, k])
                a3 += np.float64(blk[3, k])
                a4 += np.float64(blk[4, k])
                a5 += np.float64(blk[5, k])
                a6 += np.float64(blk[6, k])
                a7 += np.float64(blk[7, k])
            length = np.float64(n)
            sums = (a0, a1, a2, a3, a4, a5, a6, a7)
            for r in range(rows):
                scales[i0 + r, j] = np.float32(sums[r] / length)


def _decode_rows(signs, scales, base, g, out):
    """Write out[i] = base + (+/- scales[i, group]) for every row; sign bit 1 means minus."""
    m, d = out.shape
    n_groups = scales.shape[1]
    n_bytes = signs.shape[1]
    neg = np.empty(n_bytes << 3, np.uint8)
    neg64 = neg.view(np.uint64)
    for i in range(m):
        si = signs[i]
        for b in range(n_bytes):
            neg64[b] = (np.uint64(si[b]) * _SPREAD) & _PICK
        oi = out[i]
        for j in range(n_groups):
            lo = j * g
            hi = min(lo + g, d)
            s = scales[i, j]
            minus_s = -s
            o = oi[lo:hi]
            bj = base[lo:hi]
            nj = neg[lo:hi]
            for k in range(hi - lo):
                o[k] = bj[k] + (minus_s if nj[k] else s)


_compiled: tuple | None = None
_compile_lock = threading.Lock()


def _kernels() -> tuple:
    """(encode, decode) kernels, compiled or loaded from numba's disk cache on first use.

    numba is imported here rather than at module level: importing it takes ~0.3 s, which
    every CLI command would otherwise pay just for importing fai_core, BitDelta or not.
    """
    global _compiled
    if _compiled is None:
        with _compile_lock:
            if _compiled is None:
                from numba import njit

                jit = njit(cache=True, nogil=True)
                _compiled = (jit(_encode_rows), jit(_decode_rows))
    return _compiled


def _readonly(a: np.ndarray) -> np.ndarray:
    """A read-only view: kernel inputs always have the same numba type whether the caller's
    array is writable or (like np.frombuffer of wire bytes) not, so each kernel is compiled
    and cached once instead of once per writability."""
    view = a.view()
    view.flags.writeable = False
    return view


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
    dtype = SCALE_DTYPES[scale_dtype]
    signs = np.empty((m, sign_bytes(d)), dtype=np.uint8)
    scales = np.empty((m, group_count(d, g)), dtype=np.float32)
    encode_rows, _ = _kernels()
    encode_rows(
        _readonly(np.ascontiguousarray(x)),
        _readonly(np.ascontiguousarray(base)),
        int(g),
        signs,
        scales,
    )
    if dtype != scales.dtype:
        # Round-to-nearest-even from the float32 mean, as numpy casts.
        scales = scales.astype(dtype)
    return Compressed(signs=signs, scales=scales, d=d, g=g)


def decode(compressed: Compressed, baseline: np.ndarray) -> np.ndarray:
    """Reconstruct (M, d) float32 embeddings: baseline + scale * sign, group by group."""
    signs, d, g = compressed.signs, compressed.d, compressed.g
    base = np.asarray(baseline, dtype=np.float32)
    m = signs.shape[0]
    if base.shape != (d,) or signs.shape != (m, sign_bytes(d)):
        raise ValueError("signs/baseline shapes do not match d")
    if compressed.scales.shape != (m, group_count(d, g)):
        raise ValueError("scales shape does not match (M, ceil(d/g))")
    out = np.empty((m, d), dtype=np.float32)
    _, decode_rows = _kernels()
    decode_rows(
        _readonly(np.ascontiguousarray(signs, dtype=np.uint8)),
        _readonly(np.ascontiguousarray(compressed.scales, dtype=np.float32)),
        _readonly(np.ascontiguousarray(base)),
        int(g),
        out,
    )
    return out


def padding_is_clean(signs: np.ndarray, d: int) -> bool:
    """True if the unused low bits of each row's last sign byte are zero (strict decoding)."""
    spare = sign_bytes(d) * 8 - d
    if spare == 0 or signs.shape[0] == 0:
        return True
    mask = np.uint8((1 << spare) - 1)
    return not np.any(signs[:, -1] & mask)
