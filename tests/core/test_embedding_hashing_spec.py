"""The hashing test embedder, recomputed from docs/wire-format.md's definition.

`spec_embed` follows the spec's words with the standard library only (hashlib's SHAKE-128,
math.sqrt, struct for the float32 rounding), so a second implementation that reproduces it
reproduces `HashingEmbedder` bit for bit; the SHA-256 pins are the spec's test vector.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import re
import struct

import numpy as np
import pytest

from fai_core.embedding import HashingEmbedder

#: docs/wire-format.md, "Hashing test embedder": the test vector's texts.
TEXTS = [
    "retry with exponential backoff",
    "Cache parsed config between runs",
    "\u0130stanbul 5\u212a \ufb01le \u2014 x86_64!",
    "...",
    "a a",
]
#: SHA-256 of the (5, d) float32 little-endian matrix, rows in TEXTS order.
SHA256 = {
    384: "ca98949e490e3ddf85cfa59bc8da7f7e2e73d3dcf5c9d9e2da0e319421a32768",
    16: "bb5adc8d414a1503f5c659cd093b055ee9bfd92b36717aa0b8612952b5965943",
}
#: The first 4 coordinates at d = 384, float32 little-endian hex, one row per text.
FIRST4_D384 = [
    "89a8a03c89a8a03ccdfc703d89a8a03c",
    "abeeb1bdcd84553d89588e3c89588ebc",
    "38bd85bc230bea3dd49b48bd38bd853c",
    "00000000000000000000000000000000",
    "34efbcbc34efbc3c34efbc3c34efbc3c",
]
_TOKEN = re.compile(r"[a-z0-9]+")
#: The only characters whose Unicode lowercase mapping contributes to a token (spec).
_LOWER = {**{chr(c): chr(c + 32) for c in range(0x41, 0x5B)}, "\u0130": "i\u0307", "\u212a": "k"}


def spec_tokens(text: str) -> list[str]:
    return _TOKEN.findall("".join(_LOWER.get(ch, ch) for ch in text))


def spec_embed(text: str, d: int) -> bytes:
    """One row as float32 little-endian bytes, from the spec alone."""
    words = spec_tokens(text)
    features = words + [f"{a} {b}" for a, b in itertools.pairwise(words)]
    v = [0] * d
    for feature in features:
        h = hashlib.shake_128(feature.encode("ascii")).digest((d + 7) // 8)
        for k in range(d):
            v[k] += 1 - 2 * ((h[k // 8] >> (7 - k % 8)) & 1)
    norm = math.sqrt(sum(x * x for x in v))
    return b"".join(struct.pack("<f", x / norm if norm else 0.0) for x in v)


def test_tokens_of_the_vector_texts() -> None:
    assert spec_tokens(TEXTS[2]) == ["i", "stanbul", "5k", "le", "x86", "64"]
    assert spec_tokens(TEXTS[3]) == []


@pytest.mark.parametrize("d", sorted(SHA256))
def test_spec_and_implementation_agree_with_the_vector(d: int) -> None:
    ours = HashingEmbedder(d).embed(TEXTS).astype("<f4").tobytes()
    spec = b"".join(spec_embed(t, d) for t in TEXTS)
    assert ours == spec
    assert hashlib.sha256(ours).hexdigest() == SHA256[d]
    if d == 384:
        rows = np.frombuffer(ours, "<f4").reshape(len(TEXTS), d)
        assert [r[:4].tobytes().hex() for r in rows] == FIRST4_D384


def test_lowercasing_matters_only_for_the_listed_characters() -> None:
    """Python's str.lower() (the implementation) and the spec's short table give the same
    tokens for every code point, so a client need not implement Unicode case mapping."""
    for cp in range(0x110000):
        if 0xD800 <= cp < 0xE000:
            continue
        ch = chr(cp)
        if _TOKEN.findall(ch.lower()) != _TOKEN.findall(_LOWER.get(ch, ch)):
            raise AssertionError(f"U+{cp:04X}")


@pytest.mark.parametrize("seed", range(3))
def test_random_texts(seed: int) -> None:
    rng = np.random.default_rng(seed)
    alphabet = list("abcXYZ019 -_.\u0130\u212a\u00e9")
    texts = ["".join(rng.choice(alphabet, int(rng.integers(0, 40)))) for _ in range(20)]
    ours = HashingEmbedder(64).embed(texts).astype("<f4")
    for text, row in zip(texts, ours, strict=True):
        assert row.tobytes() == spec_embed(text, 64)
