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

Implementation: one fused numba kernel per direction, one row at a time. Encode reads each
embedding once and writes its sign bytes and scales; decode reads signs and scales and writes
each output row once. The row's |delta| and sign flags live in scratch buffers of d elements
that stay in L1. Numpy needs four or five passes over every block (subtract, compare,
packbits, abs, reduce; take, multiply, add) plus temporaries, and no arrangement of them got
below ~1.1 us per 384-d embedding for encode + decode; the kernels take ~0.45 us, most of it
memory traffic: reading the input, and page-faulting in the freshly allocated output.

Float32 results are exactly reproducible: the kernels are compiled without fastmath (no
reassociation, no FMA contraction) and the group sum has a fixed order (`_encode_rows`), so
the same input gives the same scales bit for bit on every run and machine, whatever SIMD
width LLVM picks. Decoding computes baseline + (+/-scale) in float32, which is exactly
baseline + scale * sign.

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

    The sum of a group's |delta| has a fixed order. With c = n // 8 chunks of 8 lanes
    (n = group length): the n % 8 trailing elements are added to lanes 0, 1, ... of chunk
    0; then, while c > 1, chunk p += chunk p + ceil(c/2) for p < c // 2, and c becomes
    ceil(c/2); the lanes l of chunk 0 are finally added as ((l0 + l4) + (l2 + l6)) +
    ((l1 + l5) + (l3 + l7)). Groups shorter than 8 are summed left to right. Every step is
    an elementwise float32 add, which LLVM vectorises without changing its rounding, and the
    pairwise tree keeps the rounding error small. The scale is sum * float32(1 / n).
    """
    m, d = x.shape
    n_groups = scales.shape[1]
    n_bytes = signs.shape[1]
    mag = np.empty(d, np.float32)
    # Zero-initialised: the flags past d stay 0, so the padding bits come out 0.
    neg = np.zeros(n_bytes << 3, np.uint8)
    neg64 = neg.view(np.uint64)
    for i in range(m):
        xi = x[i]
        for k in range(d):
            dk = xi[k] - base[k]
            mag[k] = abs(dk)
            # delta < 0, not the float sign bit: -0.0 must encode as +1 like 0.0.
            neg[k] = dk < 0
        si = signs[i]
        for b in range(n_bytes):
            si[b] = np.uint8((neg64[b] * _PACK) >> np.uint64(56))
        for j in range(n_groups):
            lo = j * g
            n = min(g, d - lo)
            v = mag[lo : lo + n]  # used as scratch: overwritten by the partial sums
            c = n >> 3
            if c == 0:
                s = np.float32(0.0)
                for k in range(n):
                    s += v[k]
            else:
                rest = v[c << 3 :]
                for k in range(rest.shape[0]):
                    v[k] += rest[k]
                while c > 1:
                    h = c >> 1
                    keep = c - h
                    head = v[: h << 3]
                    tail = v[keep << 3 : (keep + h) << 3]
                    for k in range(h << 3):
                        head[k] += tail[k]
                    c = keep
                s = ((v[0] + v[4]) + (v[2] + v[6])) + ((v[1] + v[5]) + (v[3] + v[7]))
            scales[i, j] = s * (np.float32(1.0) / np.float32(n))


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
