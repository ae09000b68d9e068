"""A fixed wire-format test vector (the same hex appears in docs/wire-format.md).

Everything in it is deterministic: the Ed25519 seed is bytes(range(32)) and Ed25519
signatures are deterministic; the embeddings, baseline and deltas are dyadic rationals, so
every BitDelta scale (mean |delta| over a group of 8) is exact in float32 whatever the
summation order. Any change to the encoding changes these bytes: then the format changed,
and the spec, its version and this vector must change together.
"""

from __future__ import annotations

import numpy as np

from fai_core import dagcbor, wire
from fai_core.experience import Experience
from fai_core.identity import NodeKey

ENVELOPE_HEX = (
    "a2637369675840a3e2ce67496159c06e4b8c8a03f9dd8388bd9bf202f62426bb7e5774a132dc83df9d2fb25a"
    "9a7042a214cf4111449a5078435f31bbbae338f139941821d7f50a65626174636859015aaf6364696d106373"
    "6571016567726f757008656d6f64656c6a746573742d6d6f64656c657369676e7344ff005555657465787473"
    "82781e72657472792077697468206578706f6e656e7469616c206261636b6f66667820636163686520706172"
    "73656420636f6e666967206265747765656e2072756e7366646f6d61696e66636f64696e67667363616c6573"
    "500000283f0000b03e0000a03e0000503f6673656e646572582003a107bff3ce10be1d70dd18e74bc09967e4"
    "d6309ba50d5f1ddc8664125531b8677175616c6974794400c000406776657273696f6e0168626173656c696e"
    "655840000000000000803d0000003e0000403e000000000000803d0000003e0000403e000000000000803d00"
    "00003e0000403e000000000000803d0000003e0000403e69697465726174696f6e4200036b7363616c655f64"
    "74797065636633326c74696d657374616d705f6d731b0000018bcfe56800"
)
CID_TEXT = "bafyreianv664vnazfltnod4bvk24qle5qh5zffr7wjazwjq36zsntjg6t4"
SENDER_HEX = "03a107bff3ce10be1d70dd18e74bc09967e4d6309ba50d5f1ddc8664125531b8"
SIGNATURE_HEX = (
    "a3e2ce67496159c06e4b8c8a03f9dd8388bd9bf202f62426bb7e5774a132dc83"
    "df9d2fb25a9a7042a214cf4111449a5078435f31bbbae338f139941821d7f50a"
)
ID_TEXTS = (
    "bafyreibrtwtf5llxceosv6452m3yriqncmjlvqkirgfaoq6quty6zitgum",
    "bafyreiglvnkkqgfol7yhgtlpzfaib353pncigjd5cl7oyb3wle6ie4a4py",
)

SEED = bytes(range(32))
D, G = 16, 8
TEXTS = ("retry with exponential backoff", "cache parsed config between runs")
TIMESTAMP_MS = 1_700_000_000_000
BASELINE = np.array([(i % 4) / 16 for i in range(D)], dtype=np.float32)
EMBEDDINGS = np.array(
    [[(i - 8) / 8 for i in range(D)], [(-1) ** i * (i + 1) / 16 for i in range(D)]],
    dtype=np.float32,
)


def build() -> wire.SignedBatch:
    key = NodeKey(SEED)
    exps = [
        Experience(TEXTS[0], EMBEDDINGS[0], 0.75, "coding", key.public_key, TIMESTAMP_MS, 0),
        Experience(TEXTS[1], EMBEDDINGS[1], 0.25, "coding", key.public_key, TIMESTAMP_MS, 3),
    ]
    return wire.encode_batch(
        exps,
        key=key,
        seq=1,
        timestamp_ms=TIMESTAMP_MS,
        model="test-model",
        baseline=BASELINE,
        group=G,
        scale_dtype="f32",
    )


def test_encoding_reproduces_the_vector_exactly() -> None:
    signed = build()
    assert signed.envelope.hex() == ENVELOPE_HEX
    assert signed.batch.cid_text == CID_TEXT
    assert signed.signature.hex() == SIGNATURE_HEX


def test_vector_decodes_to_every_field() -> None:
    envelope = bytes.fromhex(ENVELOPE_HEX)
    cid = dagcbor.cid_parse(CID_TEXT)
    got = wire.decode_envelope(envelope, expected_cid=cid)
    b = got.batch
    assert got.envelope == envelope
    assert got.signature.hex() == SIGNATURE_HEX
    assert got.operator_signature is None
    assert b.cid == cid and b.cid_text == CID_TEXT
    assert b.sender.hex() == SENDER_HEX == NodeKey(SEED).public_key.hex()
    assert (b.seq, b.timestamp_ms, b.domain, b.model) == (1, TIMESTAMP_MS, "coding", "test-model")
    assert (b.dim, b.group, b.scale_dtype, len(b)) == (D, G, "f32", 2)
    assert b.texts == TEXTS
    assert tuple(dagcbor.cid_text(i) for i in b.ids) == ID_TEXTS
    np.testing.assert_array_equal(b.baseline, BASELINE)
    # Row 0: coordinates 0..7 below the baseline, 8..15 at or above it (delta 0 is +1).
    # Row 1: odd coordinates below. Bits are MSB first.
    assert b.signs.tobytes() == bytes.fromhex("ff005555")
    np.testing.assert_array_equal(b.scales, [[0.65625, 0.34375], [0.3125, 0.8125]])
    # Quality buckets floor(q * 65536) = 49152 and 16384, sent as (k + 0.5) / 65536.
    np.testing.assert_array_equal(b.quality, [(49152 + 0.5) / 65536, (16384 + 0.5) / 65536])
    np.testing.assert_array_equal(b.iteration, [0, 3])
    emb = b.embeddings()
    np.testing.assert_array_equal(
        emb[0], BASELINE + np.repeat([0.65625, 0.34375], 8) * np.where(np.arange(D) < 8, -1, 1)
    )
    np.testing.assert_array_equal(
        emb[1], BASELINE + np.repeat([0.3125, 0.8125], 8) * np.where(np.arange(D) % 2, -1, 1)
    )


def test_vector_raw_layout() -> None:
    """The raw batch map, as a non-Python implementation would read it."""
    envelope = dagcbor.decode(bytes.fromhex(ENVELOPE_HEX))
    assert sorted(envelope) == ["batch", "sig"]
    fields = dagcbor.decode(envelope["batch"])
    assert fields["version"] == 1
    assert fields["quality"] == bytes.fromhex("00c00040")  # uint16 LE: 49152, 16384
    assert fields["iteration"] == bytes([0, 3])
    assert fields["scales"] == np.array([0.65625, 0.34375, 0.3125, 0.8125], "<f4").tobytes()
    assert fields["baseline"] == BASELINE.astype("<f4").tobytes()
