"""Byzantine batches for tests and the simulator: real signed envelopes, never mock objects.

Two kinds of attack. Experience-level ones choose texts, embeddings, qualities or domain
tags and encode them with `encode_batch` under the attacker's own key, exactly as an honest
node would: the receiver sees a well-formed, correctly signed batch. Wire-level ones take a
valid batch and change its signs or scales (`reseal`), then sign it again, which is what a
sender that controls its own key can always do. Everything the decoder refuses (NaN, Inf,
shapes) is out of scope: that is the decoder's job, tested with the wire format.

`load_harmful_texts` holds ~50 harmful or off-topic pattern texts for the text/embedding
mismatch attack (a harmful text behind a benign-looking embedding).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from importlib.resources import files

import numpy as np

from fai_core import bitdelta, dagcbor, wire
from fai_core.experience import Experience
from fai_core.identity import NodeKey


def load_harmful_texts() -> list[tuple[str, str]]:
    """(topic, text) pairs of data/harmful_patterns.jsonl, in file order."""
    lines = (files("fai_core") / "data" / "harmful_patterns.jsonl").read_text("utf-8")
    return [(r["domain"], r["text"]) for r in map(json.loads, lines.splitlines()) if r]


def signed_batch(
    key: NodeKey,
    texts: Sequence[str],
    embeddings: np.ndarray,
    *,
    domain: str,
    quality: Sequence[float] | np.ndarray,
    seq: int,
    timestamp_ms: int,
    model: str,
    baseline: np.ndarray | None = None,
    group: int = bitdelta.DEFAULT_GROUP_SIZE,
) -> wire.SignedBatch:
    """Encode and sign experiences as `key`; the baseline defaults to their mean (as honest)."""
    emb = np.asarray(embeddings, dtype=np.float32)
    exps = [
        Experience(t, emb[i], float(quality[i]), domain, key.public_key, timestamp_ms)
        for i, t in enumerate(texts)
    ]
    base = emb.mean(axis=0) if baseline is None else baseline
    return wire.encode_batch(
        exps, key=key, seq=seq, timestamp_ms=timestamp_ms, model=model, baseline=base, group=group
    )


def reseal(signed: wire.SignedBatch, key: NodeKey, **changes: object) -> wire.SignedBatch:
    """The batch with fields replaced (wire names and encodings), re-signed by `key`."""
    fields = dict(dagcbor.decode(dagcbor.decode(signed.envelope)["batch"]))
    fields.update(changes)
    block = dagcbor.encode(fields)
    sig = key.sign(wire.BATCH_SIGNATURE_CONTEXT, dagcbor.cid_of(block))
    return wire.decode_envelope(dagcbor.encode({"batch": block, "sig": sig}))


def _clean_padding(signs: np.ndarray, dim: int) -> np.ndarray:
    spare = bitdelta.sign_bytes(dim) * 8 - dim
    out = signs.copy()
    if spare:
        out[:, -1] &= np.uint8(0xFF ^ ((1 << spare) - 1))
    return out


def random_signs(signed: wire.SignedBatch, key: NodeKey, rng: np.random.Generator):
    """The paper's only Byzantine model: uniformly random signs, scales ~ U(0, 1)."""
    b = signed.batch
    signs = _clean_padding(rng.integers(0, 256, b.signs.shape, dtype=np.uint8), b.dim)
    scales = rng.uniform(0.0, 1.0, b.scales.shape).astype(np.float32)
    return reseal(signed, key, signs=signs.tobytes(), scales=_scale_bytes(b, scales))


def sign_flip(signed: wire.SignedBatch, key: NodeKey) -> wire.SignedBatch:
    """Every delta reversed: e_hat = b - delta_hat, same scales."""
    b = signed.batch
    return reseal(signed, key, signs=_clean_padding(~b.signs, b.dim).tobytes())


def scale_inflation(signed: wire.SignedBatch, key: NodeKey, factor: float) -> wire.SignedBatch:
    """Scales multiplied by `factor`: the same directions, pushed further from the baseline."""
    b = signed.batch
    return reseal(signed, key, scales=_scale_bytes(b, b.scales * np.float32(factor)))


def _scale_bytes(b: wire.Batch, scales: np.ndarray) -> bytes:
    return scales.astype(bitdelta.SCALE_DTYPES[b.scale_dtype]).tobytes()


def ipm_embeddings(honest_mean: np.ndarray, m: int, eps: float, rng: np.random.Generator):
    """Inner-product manipulation: -eps times the honest mean (plus tiny noise per row)."""
    noise = rng.standard_normal((m, honest_mean.shape[0])).astype(np.float32) * 1e-3
    return (-eps * honest_mean)[None, :] + noise


def alie_embeddings(
    honest_mean: np.ndarray, honest_std: np.ndarray, m: int, z: float, rng: np.random.Generator
):
    """A little is enough: mean + z * std per coordinate (plus tiny noise per row)."""
    noise = rng.standard_normal((m, honest_mean.shape[0])).astype(np.float32) * 1e-3
    return (honest_mean + z * honest_std)[None, :] + noise


def gaussian_embeddings(m: int, d: int, sigma: float, rng: np.random.Generator):
    return (rng.standard_normal((m, d)) * sigma).astype(np.float32)


def nearest_to(target: np.ndarray, pool: np.ndarray, m: int) -> np.ndarray:
    """Indices of the m pool rows of highest cosine to `target` (ALIE with plausible texts)."""
    unit = pool / np.linalg.norm(pool, axis=1, keepdims=True)
    sims = unit @ (target / np.linalg.norm(target))
    return np.argsort(-sims, kind="stable")[:m]
