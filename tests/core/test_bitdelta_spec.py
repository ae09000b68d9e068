"""BitDelta scales, recomputed from docs/wire-format.md's words with a plain Python loop.

A second implementation must produce the same scale bits as ours, or the same batch gets
another CID. The loop below follows the spec literally and uses only Python floats
(IEEE float64) and `struct` for rounding to float32/float16, as a client in another
language would (JavaScript: `Math.fround`): delta = f32(e - b); S = 0.0 (float64); S += |delta|
for each coordinate of the group in order; scale = f32(S / n).
"""

from __future__ import annotations

import struct

import numpy as np
import pytest

from fai_core import bitdelta


def f32(x: float) -> float:
    """Round a float64 to the nearest float32 (ties to even), as the spec's f32()."""
    return struct.unpack("<f", struct.pack("<f", x))[0]


def f16(x: float) -> float:
    """Round to the nearest float16 (ties to even)."""
    return struct.unpack("<e", struct.pack("<e", x))[0]


def spec_scales(e: list[float], b: list[float], g: int) -> list[float]:
    """One row's scales, written from the spec and nothing else."""
    d = len(e)
    out = []
    for lo in range(0, d, g):
        n = min(g, d - lo)
        total = 0.0
        for i in range(lo, lo + n):
            # f32(e - b): the float64 difference of two float32 values rounded to float32
            # equals the float32 subtraction (float64 has more than 2 x 24 + 2 bits).
            total += abs(f32(e[i] - b[i]))
        out.append(f32(total / n))
    return out


def _inputs(rng: np.random.Generator, m: int, d: int, spread: float):
    x = (rng.standard_normal((m, d)) * np.exp(rng.uniform(-spread, spread, (m, d)))).astype(
        np.float32
    )
    base = (rng.standard_normal(d) * 0.1).astype(np.float32)
    return x, base


@pytest.mark.parametrize("seed", range(12))
def test_scales_equal_the_spec_loop_bit_for_bit(seed: int) -> None:
    rng = np.random.default_rng(seed)
    d = int(rng.integers(1, 400))
    g = int(rng.integers(1, d + 1)) if seed % 3 else min(d, 128)
    m = int(rng.integers(1, 20))  # not a multiple of the kernel's 8-row blocks, mostly
    x, base = _inputs(rng, m, d, spread=[0.0, 3.0, 12.0][seed % 3])
    code = bitdelta.encode(x, base, g)
    b = [float(v) for v in base]
    for i in range(m):
        want = np.array(spec_scales([float(v) for v in x[i]], b, g), dtype=np.float32)
        got = code.scales[i]
        assert got.tobytes() == want.tobytes(), (seed, i)
    half = bitdelta.encode(x, base, g, "f16")
    want16 = [f16(float(s)) for s in code.scales.ravel()]
    assert half.scales.astype(np.float64).ravel().tolist() == want16


def test_fleet_shape_many_rows() -> None:
    """d = 384, g = 128 (the fleet's), unit-norm rows against a mean baseline."""
    rng = np.random.default_rng(99)
    x = rng.standard_normal((37, 384)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    base = x.mean(axis=0).astype(np.float32)
    code = bitdelta.encode(x, base, 128)
    b = [float(v) for v in base]
    for i in range(len(x)):
        want = np.array(spec_scales([float(v) for v in x[i]], b, 128), dtype=np.float32)
        assert code.scales[i].tobytes() == want.tobytes()


def test_the_order_matters_so_the_spec_pins_it() -> None:
    """A float32 accumulation (what a careless port does) differs in the last bit on some of
    these rows: the reason the spec names float64, coordinate order and one rounding."""
    rng = np.random.default_rng(7)
    x, base = _inputs(rng, 64, 384, spread=3.0)
    code = bitdelta.encode(x, base, 128)
    differs = 0
    for i in range(len(x)):
        for j, lo in enumerate(range(0, 384, 128)):
            acc = np.float32(0.0)
            for k in range(lo, lo + 128):
                acc = np.float32(acc + abs(x[i, k] - base[k]))
            differs += np.float32(acc / np.float32(128)) != code.scales[i, j]
    assert differs > 0
