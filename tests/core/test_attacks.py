"""Attacks produce real, decodable, correctly signed batches that differ where they claim to."""

from __future__ import annotations

import numpy as np

from fai_core import bitdelta, wire
from fai_eval import attacks
from tests.support import wire as kit


def test_harmful_texts_load():
    texts = attacks.load_harmful_texts()
    assert len(texts) >= 50 and all(wire.text_problem(t) is None for _, t in texts)


def test_wire_level_attacks_are_signed_batches():
    signed = kit.encode()
    rng = np.random.default_rng(0)
    for forged in (
        attacks.random_signs(signed, kit.KEY, rng),
        attacks.sign_flip(signed, kit.KEY),
        attacks.scale_inflation(signed, kit.KEY, 3.0),
    ):
        again = wire.decode_envelope(forged.envelope)
        assert again.batch.sender == kit.KEY.public_key and again.cid != signed.cid
    flipped = attacks.sign_flip(signed, kit.KEY).batch
    b = signed.batch
    assert np.allclose(flipped.embeddings() - b.baseline, -(b.embeddings() - b.baseline))
    inflated = attacks.scale_inflation(signed, kit.KEY, 3.0).batch
    assert np.allclose(inflated.scales, 3 * b.scales)


def test_embedding_attacks_shapes():
    rng = np.random.default_rng(0)
    mean, std = np.full(8, 0.1, np.float32), np.full(8, 0.2, np.float32)
    assert np.allclose(attacks.alie_embeddings(mean, std, 3, 2.0, rng), 0.5, atol=0.01)
    assert np.allclose(attacks.ipm_embeddings(mean, 3, 1.0, rng), -0.1, atol=0.01)
    assert attacks.gaussian_embeddings(4, 8, 1.0, rng).shape == (4, 8)
    pool = np.eye(4, dtype=np.float32)
    assert list(attacks.nearest_to(np.array([0, 1, 0.5, 0], np.float32), pool, 2)) == [1, 2]
    assert bitdelta.sign_bytes(8) == 1
