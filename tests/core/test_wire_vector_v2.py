"""The wire-format version 2 test vector (the same hex appears in docs/wire-format.md).

Built from the version 1 vector's inputs (tests/core/test_wire_vector.py): Ed25519 seed
bytes(range(32)), seq 1, timestamp 1700000000000, domain `coding`, d = 16, g = 8, the two
experiences, and a baseline block of the same baseline values (model `test-model`), attached.
Every value is dyadic and small, so float16 holds the baseline and the scales exactly. Any
change to these bytes is a change of the format: spec, version and vector change together.
"""

from __future__ import annotations

import numpy as np

from fai_core import dagcbor, wire
from fai_core.baseline_block import decode_baseline_block, make_baseline_block
from fai_core.experience import Experience
from fai_core.identity import NodeKey
from tests.core.test_wire_vector import BASELINE, EMBEDDINGS, SEED, TEXTS, TIMESTAMP_MS, D, G

BLOCK_HEX = (
    "a3616658200000002c003000320000002c003000320000002c003000320000002c00300032616d6a746573"
    "742d6d6f64656c617710"
)
BLOCK_CID = "bafyreiddh7srmc2qce7f6cw3diee4df2klupucl5dvlbpl4r5ttu44p2wi"
CID_TEXT = "bafyreib3jahxllvxqx5o74fxbq4braa7um2v6ejuyzqsrzh7g675dbmqam"
ENVELOPE_HEX = (
    "a361615835a3616658200000002c003000320000002c003000320000002c003000320000002c0030003261"
    "6d6a746573742d6d6f64656c617710616258b68d02582003a107bff3ce10be1d70dd18e74bc09967e4d630"
    "9ba50d5f1ddc8664125531b8011b0000018bcfe5680066636f64696e671008582401711220633fe5160b50"
    "113e5f0adb1a084e0cba52e8fa097d1d5617af91ece74e71fab282781e72657472792077697468206578706f"
    "6e656e7469616c206261636b6f6666782063616368652070617273656420636f6e666967206265747765656e"
    "2072756e7344ff00555548403980350035803a4400c0004042000361735840fdfcba0a7c5662a1baa0ac4eda"
    "3a966e5dbb9db95a7d425c2e74e42268c2a36bc6d337802f2777436b88789139d1b7e75d4bb2b4bdeb993a6a"
    "650c5d5bdbfa0a"
)


def build() -> wire.SignedBatch:
    key = NodeKey(SEED)
    exps = [
        Experience(TEXTS[0], EMBEDDINGS[0], 0.75, "coding", key.public_key, TIMESTAMP_MS, 0),
        Experience(TEXTS[1], EMBEDDINGS[1], 0.25, "coding", key.public_key, TIMESTAMP_MS, 3),
    ]
    block = make_baseline_block(BASELINE.astype(np.float64), "test-model")
    return wire.encode_batch_v2(
        exps,
        key=key,
        seq=1,
        timestamp_ms=TIMESTAMP_MS,
        baseline=block,
        attach_baseline=True,
        group=G,
    )


def test_encoding_reproduces_the_v2_vector_exactly() -> None:
    signed = build()
    assert signed.envelope.hex() == ENVELOPE_HEX and len(signed.envelope) == 312
    assert signed.batch.cid_text == CID_TEXT
    assert signed.baseline_block.data.hex() == BLOCK_HEX
    assert signed.baseline_block.cid_text == BLOCK_CID


def test_v2_vector_decodes_to_every_field() -> None:
    got = wire.decode_envelope(
        bytes.fromhex(ENVELOPE_HEX), expected_cid=dagcbor.cid_parse(CID_TEXT)
    )
    b = got.batch
    assert (b.version, b.seq, b.timestamp_ms, b.domain, b.model) == (
        2,
        1,
        TIMESTAMP_MS,
        "coding",
        "test-model",
    )
    assert (b.dim, b.group, b.scale_dtype, len(b)) == (D, G, "f16", 2)
    assert b.texts == TEXTS and b.baseline_cid == dagcbor.cid_parse(BLOCK_CID)
    np.testing.assert_array_equal(b.baseline, BASELINE)
    assert b.signs.tobytes() == bytes.fromhex("ff005555")
    np.testing.assert_array_equal(b.scales, [[0.65625, 0.34375], [0.3125, 0.8125]])
    np.testing.assert_array_equal(b.quality, [(49152 + 0.5) / 65536, (16384 + 0.5) / 65536])
    np.testing.assert_array_equal(b.iteration, [0, 3])
    # Same inputs, same reconstruction as the version 1 vector.
    from tests.core.test_wire_vector import ENVELOPE_HEX as V1_HEX

    v1 = wire.decode_envelope(bytes.fromhex(V1_HEX)).batch
    np.testing.assert_array_equal(b.embeddings(), v1.embeddings())


def test_v2_vector_raw_layout() -> None:
    """The raw envelope, batch array and block, as a non-Python implementation reads them."""
    envelope = dagcbor.decode(bytes.fromhex(ENVELOPE_HEX))
    assert sorted(envelope) == ["a", "b", "s"]
    items = dagcbor.decode(envelope["b"])
    assert [name for name, _ in wire.V2_ITEMS] == [
        "version", "sender", "seq", "timestamp_ms", "domain", "dim", "group", "baseline",
        "texts", "signs", "scales", "quality", "iteration",
    ]  # fmt: skip
    assert items[0] == 2 and items[5:7] == [D, G]
    assert items[7] == dagcbor.cid_parse(BLOCK_CID)
    assert items[10] == np.array([0.65625, 0.34375, 0.3125, 0.8125], "<f2").tobytes()
    assert items[11] == bytes.fromhex("00c00040") and items[12] == bytes([0, 3])
    block = dagcbor.decode(envelope["a"])
    assert block == {"m": "test-model", "w": D, "f": BASELINE.astype("<f2").tobytes()}
    assert decode_baseline_block(envelope["a"], items[7]).values.tolist() == BASELINE.tolist()
    # Without the attachment the same batch (same CID) is unresolved until completed.
    bare = dagcbor.encode({"b": envelope["b"], "s": envelope["s"]})
    assert wire.decode_envelope(bare).batch.cid_text == CID_TEXT


def test_the_spec_prints_this_vector() -> None:
    """docs/wire-format.md shows the same bytes: a second implementation builds from it."""
    from pathlib import Path

    doc = (Path(__file__).parents[2] / "docs" / "wire-format.md").read_text("utf-8")
    section = doc.split("### Test vector (version 2)", 1)[1]
    blocks = ["".join(b.split()) for b in section.split("```")[1::2]]
    assert blocks == [BLOCK_HEX, ENVELOPE_HEX]
    assert BLOCK_CID in section and CID_TEXT in section
