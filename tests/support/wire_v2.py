"""Builders for the wire version 2 tests: baseline blocks, v2 batches, and re-signed tampering.

The version 2 counterpart of tests/support/wire.py. A v2 batch block is a 13-item array
(`wire.V2_ITEMS`); the tests mutate it as a dict by item name (`fields_v2`) and turn it back
into the array with `items_v2`, or hand `resign_v2` a raw block. `resign_v2` signs under the
v2 context, so the decoder's content checks are what fire. `reencode_v2` rebuilds envelope
bytes from a decoded batch alone: a decoder that dropped or normalised anything would not
reproduce the bytes it was given.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fai_core import bitdelta, dagcbor, wire
from fai_core.baseline_block import BaselineBlock, make_baseline_block
from fai_core.experience import Experience
from fai_core.identity import NodeKey
from tests.support.wire import BASE_GROUP, KEY, experiences

MODEL = "all-MiniLM-L6-v2"
#: Item name -> position in a version 2 batch array.
AT = {name: i for i, (name, _) in enumerate(wire.V2_ITEMS)}
NAMES = tuple(name for name, _ in wire.V2_ITEMS)


def block(d: int = 20, model: str = MODEL, seed: int = 1) -> BaselineBlock:
    """A baseline block of small random values (each exactly a float16)."""
    mean = np.random.default_rng(seed).standard_normal(d) * 0.1
    return make_baseline_block(mean, model)


def raw_block(model: Any = MODEL, dim: Any = 20, values: Any = None, **extra: Any) -> bytes:
    """Block bytes built by hand (any model, width or value bytes: for tampering)."""
    if values is None:
        values = np.linspace(-0.5, 0.5, dim if isinstance(dim, int) else 1).astype("<f2")
    data = values.tobytes() if isinstance(values, np.ndarray) else values
    return dagcbor.encode({"m": model, "w": dim, "f": data, **extra})


def encode_v2(
    exps: list[Experience] | None = None,
    *,
    base: BaselineBlock | None = None,
    attach: bool = True,
    key: NodeKey = KEY,
    seq: int = 7,
    timestamp_ms: int = 1_700_000_000_123,
    group: int = BASE_GROUP,
    operator_signer: wire.OperatorSigner | None = None,
) -> wire.SignedBatch:
    exps = experiences() if exps is None else exps
    return wire.encode_batch_v2(
        exps,
        key=key,
        seq=seq,
        timestamp_ms=timestamp_ms,
        baseline=base or block(exps[0].dimension),
        attach_baseline=attach,
        group=group,
        operator_signer=operator_signer,
    )


def envelope_of(signed: wire.SignedBatch | bytes) -> dict[str, Any]:
    data = signed if isinstance(signed, bytes) else signed.envelope
    return dict(dagcbor.decode(data))


def fields_v2(signed: wire.SignedBatch) -> dict[str, Any]:
    """The items of a valid v2 envelope's batch, by name (a fresh dict each call)."""
    return dict(zip(NAMES, dagcbor.decode(envelope_of(signed)["b"]), strict=True))


def items_v2(fields: dict[str, Any]) -> list[Any]:
    """The batch array of `fields` (names missing from it are left out: a short array)."""
    return [fields[name] for name in NAMES if name in fields]


def envelope_v2(
    block_bytes: bytes,
    sig: bytes,
    *,
    operator_sig: bytes | None = None,
    attached: bytes | None = None,
    **extra: Any,
) -> bytes:
    env: dict[str, Any] = {"b": block_bytes, "s": sig, **extra}
    if operator_sig is not None:
        env["o"] = operator_sig
    if attached is not None:
        env["a"] = attached
    return dagcbor.encode(env)


def resign_v2(
    fields: dict[str, Any] | list[Any] | None,
    *,
    block: bytes | None = None,
    key: NodeKey = KEY,
    context: bytes = wire.BATCH_SIGNATURE_CONTEXT_V2,
    attached: bytes | None = None,
    operator_sig: bytes | None = None,
) -> bytes:
    """A v2 envelope over `fields` (a dict by name, or the array itself) or the raw `block`,
    with a fresh valid signature by `key` and the given attachment."""
    if block is None:
        block = dagcbor.encode(items_v2(fields) if isinstance(fields, dict) else fields)
    sig = key.sign(context, dagcbor.cid_of(block))
    return envelope_v2(block, sig, operator_sig=operator_sig, attached=attached)


def row_widths_v2(fields: dict[str, Any]) -> dict[str, int]:
    """Bytes per experience of each per-row column of a (well-formed) v2 batch."""
    dim, group = fields["dim"], fields["group"]
    return {
        "signs": bitdelta.sign_bytes(dim),
        "scales": 2 * bitdelta.group_count(dim, group),
        "quality": 2,
        "iteration": 1,
    }


def with_rows_v2(fields: dict[str, Any], n: int) -> dict[str, Any]:
    """`fields` holding `n` experiences, each a copy of the first row ("row 0", "row 1", ...)."""
    out = dict(fields)
    for name, width in row_widths_v2(fields).items():
        out[name] = fields[name][:width] * n
    out["texts"] = [f"row {i}" for i in range(n)]
    return out


def reencode_v2(signed: wire.SignedBatch) -> bytes:
    """The envelope bytes of a decoded v2 batch, rebuilt from the decoded values alone."""
    b = signed.batch
    items = [
        2,
        b.sender,
        b.seq,
        b.timestamp_ms,
        b.domain,
        b.dim,
        b.group,
        b.baseline_cid,
        list(b.texts),
        b.signs.tobytes(),
        b.scales.astype("<f2").tobytes(),
        wire.quantize_quality(b.quality.astype(np.float64)).tobytes(),
        b.iteration.astype("u1").tobytes(),
    ]
    attached = None if signed.baseline_block is None else signed.baseline_block.data
    return envelope_v2(
        dagcbor.encode(items),
        signed.signature,
        operator_sig=signed.operator_signature,
        attached=attached,
    )


def reencode_v1(signed: wire.SignedBatch) -> bytes:
    """The envelope bytes of a decoded v1 batch, rebuilt from the decoded values alone."""
    b = signed.batch
    assert b.baseline is not None
    fields = {
        "version": 1,
        "sender": b.sender,
        "seq": b.seq,
        "timestamp_ms": b.timestamp_ms,
        "domain": b.domain,
        "model": b.model,
        "dim": b.dim,
        "group": b.group,
        "scale_dtype": b.scale_dtype,
        "baseline": b.baseline.astype("<f4").tobytes(),
        "texts": list(b.texts),
        "signs": b.signs.tobytes(),
        "scales": b.scales.astype(bitdelta.SCALE_DTYPES[b.scale_dtype]).tobytes(),
        "quality": wire.quantize_quality(b.quality.astype(np.float64)).tobytes(),
        "iteration": b.iteration.astype("u1").tobytes(),
    }
    env: dict[str, Any] = {"batch": dagcbor.encode(fields), "sig": signed.signature}
    if signed.operator_signature is not None:
        env["operator_sig"] = signed.operator_signature
    return dagcbor.encode(env)
