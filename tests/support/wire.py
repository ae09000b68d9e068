"""Shared builders for the wire tests: deterministic keys, experiences, batches, and tampering.

`resign` is the workhorse of the rejection tests: it re-encodes a (possibly tampered) batch
map, recomputes its CID and signs it again with the same key, so the envelope signature is
valid and the decoder's content check is what fires.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fai_core import bitdelta, dagcbor, wire
from fai_core.experience import Experience
from fai_core.identity import NodeKey

KEY = NodeKey(bytes(range(32)))
OTHER_KEY = NodeKey(bytes(range(32, 64)))

#: Deleting a field in `tampered(...)`.
DROP = object()

BASE_DIM = 20  # not a multiple of 8 (4 padding bits) nor of the group size
BASE_GROUP = 8
BASE_TEXTS = ("retry with backoff after timeouts", "cache the parsed config", "pin the compiler")


def vectors(m: int, d: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((m, d)).astype(np.float32)


def experiences(
    texts: tuple[str, ...] | list[str] = BASE_TEXTS,
    *,
    d: int = BASE_DIM,
    domain: str = "coding",
    key: NodeKey = KEY,
    seed: int = 0,
    qualities: list[float] | None = None,
) -> list[Experience]:
    vecs = vectors(len(texts), d, seed)
    qualities = qualities or [0.1 + 0.8 * i / max(1, len(texts)) for i in range(len(texts))]
    return [
        Experience(
            text=text,
            embedding=vecs[i],
            quality=qualities[i],
            domain=domain,
            source=key.public_key,
            created_ms=1_700_000_000_000,
            iteration=i % 256,
        )
        for i, text in enumerate(texts)
    ]


def encode(
    exps: list[Experience] | None = None,
    *,
    key: NodeKey = KEY,
    seq: int = 7,
    timestamp_ms: int = 1_700_000_000_123,
    model: str = "all-MiniLM-L6-v2",
    baseline: np.ndarray | None = None,
    group: int = BASE_GROUP,
    scale_dtype: str = "f32",
    operator_signer: wire.OperatorSigner | None = None,
) -> wire.SignedBatch:
    exps = experiences() if exps is None else exps
    if baseline is None:
        baseline = np.linspace(-0.5, 0.5, exps[0].dimension, dtype=np.float32)
    return wire.encode_batch(
        exps,
        key=key,
        seq=seq,
        timestamp_ms=timestamp_ms,
        model=model,
        baseline=baseline,
        group=group,
        scale_dtype=scale_dtype,
        operator_signer=operator_signer,
    )


def fields_of(signed: wire.SignedBatch) -> dict[str, Any]:
    """The batch map inside a valid envelope (a fresh dict each call)."""
    return dict(dagcbor.decode(dagcbor.decode(signed.envelope)["batch"]))


def envelope_bytes(
    block: bytes, sig: bytes, operator_sig: bytes | None = None, **extra: Any
) -> bytes:
    env: dict[str, Any] = {"batch": block, "sig": sig, **extra}
    if operator_sig is not None:
        env["operator_sig"] = operator_sig
    return dagcbor.encode(env)


def resign(
    fields: Any,
    *,
    key: NodeKey = KEY,
    block: bytes | None = None,
    context: bytes = wire.BATCH_SIGNATURE_CONTEXT,
    operator_sig: bytes | None = None,
) -> bytes:
    """Envelope of `fields` (or of the raw `block`) with a fresh valid signature by `key`."""
    if block is None:
        block = dagcbor.encode(fields)
    cid = dagcbor.cid_of(block)
    return envelope_bytes(block, key.sign(context, cid), operator_sig)


def tampered(base: wire.SignedBatch | None = None, **changes: Any) -> bytes:
    """Re-signed envelope of the base batch map with fields replaced (or DROPped)."""
    fields = fields_of(base or encode())
    for name, value in changes.items():
        if value is DROP:
            del fields[name]
        else:
            fields[name] = value
    return resign(fields)


def f32(*values: float) -> bytes:
    return np.array(values, dtype="<f4").tobytes()


def f16(*values: float) -> bytes:
    return np.array(values, dtype="<f2").tobytes()


def row_widths(fields: dict[str, Any]) -> dict[str, int]:
    """Bytes per experience of each per-row column of a (well-formed) batch map."""
    dim, group = fields["dim"], fields["group"]
    item = 2 if fields["scale_dtype"] == "f16" else 4
    return {
        "signs": bitdelta.sign_bytes(dim),
        "scales": bitdelta.group_count(dim, group) * item,
        "quality": 2,
        "iteration": 1,
    }


def with_rows(fields: dict[str, Any], n: int) -> dict[str, Any]:
    """A copy of a well-formed batch map holding `n` experiences: every row repeats the first
    row's columns, and the texts are fresh and distinct ("row 0", "row 1", ...)."""
    out = dict(fields)
    for name, width in row_widths(fields).items():
        out[name] = fields[name][:width] * n
    out["texts"] = [f"row {i}" for i in range(n)]
    return out
