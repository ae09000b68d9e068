"""The batch wire format: round trips, encoder refusals, and every Reject reason by construction.

Rejection cases are one table (`CASES`). Content errors are built by tampering with the batch
map of a valid batch and re-signing it with the same key (`tests.support.wire.resign`), so the
signature verifies and the content check is what fires; those errors must name the sender.
Errors raised before the signature verified must not. `test_every_reject_reason_is_covered`
fails when a new Reject member appears without a case here.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

import cbor2
import nacl.signing
import numpy as np
import pytest

from fai_core import bitdelta, dagcbor, wire
from fai_core.errors import Reject, WireError
from fai_core.experience import Experience, experience_id
from tests.support.wire import (
    BASE_DIM,
    BASE_GROUP,
    BASE_TEXTS,
    DROP,
    KEY,
    OTHER_KEY,
    encode,
    envelope_bytes,
    experiences,
    f32,
    fields_of,
    resign,
    tampered,
    vectors,
)


@cache
def base() -> wire.SignedBatch:
    return encode()


@cache
def base_f16() -> wire.SignedBatch:
    return encode(scale_dtype="f16")


def decode(data: bytes, **kwargs: Any) -> Callable[[], object]:
    return lambda: wire.decode_envelope(data, **kwargs)


# --------------------------------------------------------------------------------------------
# Round trips


def reference_embeddings(
    exps: list[Experience], baseline: np.ndarray, g: int, scale_dtype: str
) -> tuple[np.ndarray, np.ndarray]:
    matrix = np.stack([e.embedding for e in exps])
    base32 = np.asarray(baseline, dtype=np.float32)
    code = bitdelta.encode(matrix, base32, g, scale_dtype)
    return bitdelta.decode(code, base32), code.scales.astype(np.float32)


@pytest.mark.parametrize(
    ("d", "g", "scale_dtype"),
    [
        (20, 8, "f32"),
        (100, 30, "f32"),
        (100, 30, "f16"),
        (1, 1, "f32"),
        (8, 8, "f16"),
        (13, 13, "f32"),
        (384, 128, "f16"),
        (4096, 128, "f32"),
    ],
)
def test_round_trip_every_field(d: int, g: int, scale_dtype: str) -> None:
    texts = [f"pattern number {i} works" for i in range(5)]
    qualities = [1e-9, 0.25, 0.5, 0.999, 1 - 1e-9]
    exps = experiences(texts, d=d, seed=d, qualities=qualities)
    baseline = vectors(1, d, seed=99)[0] * 0.1
    signed = encode(
        exps,
        seq=2**64 - 1,
        timestamp_ms=123_456,
        model="org/model-v1.5:q8@rev+2",
        baseline=baseline,
        group=g,
        scale_dtype=scale_dtype,
    )
    got = wire.decode_envelope(signed.envelope)
    block = dagcbor.decode(signed.envelope)["batch"]
    b = got.batch

    assert got.envelope == signed.envelope
    assert got.signature == signed.signature and len(got.signature) == 64
    assert got.operator_signature is None
    assert b.cid == got.cid == signed.cid == dagcbor.cid_of(block)
    assert b.cid_text.startswith("bafyrei") and dagcbor.cid_parse(b.cid_text) == b.cid
    assert b.sender == KEY.public_key
    assert (b.seq, b.timestamp_ms, b.domain, b.model) == (
        2**64 - 1,
        123_456,
        "coding",
        "org/model-v1.5:q8@rev+2",
    )
    assert (b.dim, b.group, b.scale_dtype, len(b)) == (d, g, scale_dtype, 5)
    assert b.texts == tuple(texts)
    assert b.ids == tuple(e.id for e in exps) == tuple(experience_id("coding", t) for t in texts)
    np.testing.assert_array_equal(b.iteration, [e.iteration for e in exps])
    np.testing.assert_array_equal(b.baseline, baseline.astype(np.float32))

    q = b.quality.astype(np.float64)
    assert np.all(q > 0) and np.all(q < 1)
    assert np.all(np.abs(q - np.array(qualities)) <= 1 / 65536)

    want, want_scales = reference_embeddings(exps, baseline, g, scale_dtype)
    assert b.scales.dtype == np.float32
    np.testing.assert_array_equal(b.scales, want_scales)
    emb = b.embeddings()
    assert emb.dtype == np.float32 and emb.shape == (5, d)
    np.testing.assert_array_equal(emb, want)

    # What the encoder returns is what the decoder sees.
    enc = signed.batch
    for name in ("cid", "sender", "seq", "timestamp_ms", "domain", "model", "texts", "ids"):
        assert getattr(enc, name) == getattr(b, name), name
    for name in ("baseline", "signs", "scales", "quality", "iteration"):
        np.testing.assert_array_equal(getattr(enc, name), getattr(b, name), err_msg=name)


def test_decoded_experiences_are_valid_and_match() -> None:
    exps = experiences()
    signed = encode(exps)
    batch = wire.decode_envelope(signed.envelope).batch
    want, _ = reference_embeddings(exps, np.linspace(-0.5, 0.5, BASE_DIM), BASE_GROUP, "f32")
    got = batch.experiences()
    assert len(got) == len(exps)
    for i, (g, e) in enumerate(zip(got, exps, strict=True)):
        assert g.id == e.id and g.text == e.text and g.domain == e.domain
        assert g.source == KEY.public_key and g.created_ms == batch.timestamp_ms
        assert g.iteration == e.iteration
        assert abs(g.quality - e.quality) <= 1 / 65536
        np.testing.assert_array_equal(g.embedding, want[i])


@pytest.mark.parametrize("q", [1e-9, 1e-300, 5e-324, 1 / 65536, 0.5, 1 - 1 / 65536, 1 - 1e-9])
def test_quality_stays_strictly_inside_open_interval(q: float) -> None:
    signed = encode(experiences(BASE_TEXTS[:1], qualities=[q]))
    got = float(wire.decode_envelope(signed.envelope).batch.quality[0])
    assert 0.0 < got < 1.0
    assert abs(got - q) <= 1 / 65536


def test_decode_accepts_bytes_like() -> None:
    data = base().envelope
    for form in (bytearray(data), memoryview(data)):
        assert wire.decode_envelope(form).cid == base().cid


def test_expected_cid_match_is_accepted() -> None:
    assert wire.decode_envelope(base().envelope, expected_cid=base().cid).cid == base().cid


def test_batch_of_max_experiences_round_trips() -> None:
    texts = [f"pattern {i}" for i in range(wire.MAX_EXPERIENCES)]
    exps = experiences(texts, d=8, qualities=[0.5] * len(texts))
    signed = encode(exps, baseline=np.zeros(8), group=8)
    assert len(wire.decode_envelope(signed.envelope).batch) == wire.MAX_EXPERIENCES


def test_boundary_domain_and_model_lengths_round_trip() -> None:
    domain = "a-0" * 10 + "zz"  # 32 characters
    signed = encode(experiences(domain=domain), model="m" * 128)
    batch = wire.decode_envelope(signed.envelope).batch
    assert (batch.domain, batch.model) == (domain, "m" * 128)


def test_operator_signature_round_trip_and_header() -> None:
    seen: list[wire.BatchHeader] = []
    op_sig = bytes(range(65))

    def signer(header: wire.BatchHeader) -> bytes:
        seen.append(header)
        return op_sig

    signed = encode(seq=42, timestamp_ms=1_234_567, operator_signer=signer)
    block = dagcbor.decode(signed.envelope)["batch"]
    assert len(seen) == 1
    header = seen[0]
    assert header == wire.BatchHeader(KEY.public_key, 42, signed.cid, 1_234_567)
    assert header.cid == dagcbor.cid_of(block)
    assert header.cid_digest == hashlib.sha256(block).digest()
    assert signed.operator_signature == op_sig
    got = wire.decode_envelope(signed.envelope)
    assert got.operator_signature == op_sig
    assert got.batch.header == header
    # The operator signature sits in the envelope, outside the content address.
    assert got.cid == encode(seq=42, timestamp_ms=1_234_567).cid


@pytest.mark.parametrize("length", [0, 64, 66])
def test_encoder_refuses_operator_signature_of_wrong_length(length: int) -> None:
    with pytest.raises(ValueError, match="65 bytes"):
        encode(operator_signer=lambda _header: bytes(length))


# --------------------------------------------------------------------------------------------
# Encoder refusals


def _encode_with(**kwargs: Any) -> Callable[[], object]:
    return lambda: encode(**kwargs)


ENCODER_REFUSALS: list[tuple[str, Callable[[], object]]] = [
    ("no experiences", _encode_with(exps=[], baseline=np.zeros(BASE_DIM))),
    (
        "mixed domains",
        lambda: encode(experiences(BASE_TEXTS[:1]) + experiences(BASE_TEXTS[1:2], domain="ops")),
    ),
    ("foreign source", lambda: encode(experiences(key=OTHER_KEY))),
    ("foreign source among own", lambda: encode(experiences()[:1] + experiences(key=OTHER_KEY))),
    ("dim mismatch", lambda: encode(baseline=np.zeros(BASE_DIM + 1))),
    (
        "dim mismatch between experiences",
        lambda: encode(experiences(BASE_TEXTS[:1]) + experiences(BASE_TEXTS[1:2], d=BASE_DIM + 1)),
    ),
    ("duplicates", lambda: encode(experiences([BASE_TEXTS[0], BASE_TEXTS[0]]))),
    (
        "too many experiences",
        lambda: encode(
            experiences([f"p {i}" for i in range(wire.MAX_EXPERIENCES + 1)], d=8), group=8
        ),
    ),
    (
        "oversize envelope",
        # 400 x (512 sign bytes + 1024 f32 scales) is about 1.8 MB.
        lambda: encode(experiences([f"p {i}" for i in range(400)], d=4096), group=4),
    ),
    ("empty model", _encode_with(model="")),
    ("model with space", _encode_with(model="my model")),
    ("model too long", _encode_with(model="m" * 129)),
    ("non-ascii model", _encode_with(model="modèle")),
    ("negative seq", _encode_with(seq=-1)),
    ("seq beyond uint64", _encode_with(seq=2**64)),
    ("bool seq", _encode_with(seq=True)),
    ("negative timestamp", _encode_with(timestamp_ms=-1)),
    ("float timestamp", _encode_with(timestamp_ms=1.5)),
    ("unknown scale dtype", _encode_with(scale_dtype="f64")),
    ("group zero", _encode_with(group=0)),
    ("group above dim", _encode_with(group=BASE_DIM + 1)),
    ("baseline NaN", _encode_with(baseline=np.full(BASE_DIM, np.nan))),
    ("baseline out of range", _encode_with(baseline=np.full(BASE_DIM, 2e6))),
    ("baseline 2-D", _encode_with(baseline=np.zeros((1, BASE_DIM)))),
    (
        "f16 scale overflow",
        lambda: encode(
            [
                Experience("huge", np.full(16, 1e5), 0.5, "coding", KEY.public_key, 0),
            ],
            baseline=np.zeros(16),
            scale_dtype="f16",
        ),
    ),
    (
        "scale above MAX_ABS_VALUE",
        lambda: encode(
            [Experience("huge", np.full(16, 1e7), 0.5, "coding", KEY.public_key, 0)],
            baseline=np.zeros(16),
        ),
    ),
]


#: What the encoder says for each refusal above: the right ValueError, not any ValueError.
ENCODER_MESSAGES = {
    "no experiences": r"a batch holds 1\.\.1024 experiences",
    "mixed domains": r"all experiences in a batch share one domain",
    "foreign source": r"a node only publishes its own experiences",
    "foreign source among own": r"a node only publishes its own experiences",
    "dim mismatch": r"embedding dimension 20 != baseline 21",
    "dim mismatch between experiences": r"embedding dimension 21 != baseline 20",
    "duplicates": r"duplicate experiences \(same domain and text\) in one batch",
    "too many experiences": r"a batch holds 1\.\.1024 experiences",
    "oversize envelope": r"envelope is \d+ bytes, limit 1000000",
    "empty model": r"model id must match",
    "model with space": r"model id must match",
    "model too long": r"model id must match",
    "non-ascii model": r"model id must match",
    "negative seq": r"seq must be an unsigned 64-bit integer, got -1",
    "seq beyond uint64": r"seq must be an unsigned 64-bit integer, got 18446744073709551616",
    "bool seq": r"seq must be an unsigned 64-bit integer, got True",
    "negative timestamp": r"timestamp_ms must be an unsigned 64-bit integer, got -1",
    "float timestamp": r"timestamp_ms must be an unsigned 64-bit integer, got 1\.5",
    "unknown scale dtype": r"scale_dtype must be one of",
    "group zero": r"group size must be in \[1, 20\], got 0",
    "group above dim": r"group size must be in \[1, 20\], got 21",
    "baseline NaN": r"baseline has non-finite or out-of-range values",
    "baseline out of range": r"baseline has non-finite or out-of-range values",
    "baseline 2-D": r"baseline must be a vector",
    "f16 scale overflow": r"scales overflow",
    "scale above MAX_ABS_VALUE": r"scales overflow",
}


@pytest.mark.parametrize("name, build", ENCODER_REFUSALS, ids=[n for n, _ in ENCODER_REFUSALS])
def test_encoder_refuses(name: str, build: Callable[[], object]) -> None:
    with np.errstate(over="ignore"), pytest.raises(ValueError, match=ENCODER_MESSAGES[name]):
        build()


# --------------------------------------------------------------------------------------------
# Every Reject reason, by construction


@dataclass(frozen=True)
class Case:
    name: str
    reason: Reject
    #: True when the error comes after the signature verified (WireError.sender is set).
    attributable: bool
    run: Callable[[], object]


def _content(name: str, reason: Reject, make: Callable[[], bytes]) -> Case:
    return Case(name, reason, True, lambda: wire.decode_envelope(make()))


def _early(name: str, reason: Reject, make: Callable[[], bytes], **kwargs: Any) -> Case:
    return Case(name, reason, False, lambda: wire.decode_envelope(make(), **kwargs))


def _block() -> bytes:
    return dagcbor.decode(base().envelope)["batch"]


def _with_sig(sig: bytes) -> bytes:
    return envelope_bytes(_block(), sig)


def _flip(data: bytes, index: int, bit: int = 0) -> bytes:
    out = bytearray(data)
    out[index] ^= 1 << bit
    return bytes(out)


def _non_canonical_block() -> bytes:
    """The same batch map with its `seq` written with a non-shortest head (0x1b + 8 bytes)."""
    block = _block()
    needle = b"\x63seq\x07"
    assert block.count(needle) == 1
    return block.replace(needle, b"\x63seq\x1b" + (7).to_bytes(8, "big"))


def _fresh(ts: int, now: int, max_age: int | None = None) -> Callable[[], object]:
    def run() -> None:
        batch = encode(timestamp_ms=ts).batch
        if max_age is None:
            wire.check_freshness(batch, now)
        else:
            wire.check_freshness(batch, now, max_age)

    return run


def _sign_without_context() -> bytes:
    raw = nacl.signing.SigningKey(KEY.seed).sign(base().cid).signature
    return _with_sig(raw)


def _baseline(value: float, index: int = 3) -> bytes:
    vals = np.zeros(BASE_DIM, dtype="<f4")
    vals[index] = value
    return vals.tobytes()


def _scales(value: float, dtype: str = "<f4", index: int = 4) -> bytes:
    n = len(BASE_TEXTS) * bitdelta.group_count(BASE_DIM, BASE_GROUP)
    vals = np.full(n, 0.25, dtype=dtype)
    vals[index] = value
    return vals.tobytes()


def _dirty_padding(row: int) -> bytes:
    signs = bytearray(fields_of(base())["signs"])
    width = bitdelta.sign_bytes(BASE_DIM)
    signs[row * width + width - 1] |= 0x01  # 20 bits used: the low 4 bits of byte 3 are spare
    return bytes(signs)


def _texts(*replacement: Any) -> list[Any]:
    texts: list[Any] = list(BASE_TEXTS)
    texts[1 : 1 + len(replacement)] = replacement
    return texts


_NOW = 1_700_000_000_000
_T_MAX = 300_000
_M, _G, _SB = len(BASE_TEXTS), bitdelta.group_count(BASE_DIM, BASE_GROUP), 3

CASES: list[Case] = [
    # ---- size, CBOR, canonical form: before anything is trusted
    _early("oversize junk", Reject.OVERSIZE, lambda: bytes(wire.MAX_ENVELOPE_BYTES + 1)),
    _early(
        "oversize valid prefix",
        Reject.OVERSIZE,
        lambda: base().envelope + bytes(wire.MAX_ENVELOPE_BYTES),
    ),
    _early("empty input", Reject.MALFORMED_CBOR, lambda: b""),
    _early("not bytes", Reject.MALFORMED_CBOR, lambda: "an envelope"),  # type: ignore[arg-type,return-value]
    _early("truncated envelope", Reject.MALFORMED_CBOR, lambda: base().envelope[:-1]),
    _early("trailing byte", Reject.MALFORMED_CBOR, lambda: base().envelope + b"\x00"),
    _early("lone break", Reject.MALFORMED_CBOR, lambda: b"\xff"),
    _early("envelope is a float", Reject.MALFORMED_CBOR, lambda: cbor2.dumps(1.5)),
    _early("envelope is tagged", Reject.MALFORMED_CBOR, lambda: b"\xd8\x2a" + base().envelope),
    _early(
        "envelope with null operator_sig",
        Reject.MALFORMED_CBOR,
        lambda: cbor2.dumps({"batch": _block(), "sig": base().signature, "operator_sig": None}),
    ),
    _early("malformed batch block", Reject.MALFORMED_CBOR, lambda: resign(None, block=b"\xa1")),
    _early(
        "batch block with a float",
        Reject.MALFORMED_CBOR,
        lambda: resign(None, block=cbor2.dumps({**fields_of(base()), "seq": 7.0})),
    ),
    _early(
        "batch block with a negative int",
        Reject.MALFORMED_CBOR,
        lambda: resign(None, block=cbor2.dumps({**fields_of(base()), "seq": -7}, canonical=True)),
    ),
    _early(
        "envelope keys out of order",
        Reject.NON_CANONICAL,
        # Canonical order is length-first ("sig" < "batch"); insertion order puts batch first.
        lambda: cbor2.dumps({"batch": _block(), "sig": base().signature}),
    ),
    _early(
        "envelope non-shortest length head",
        Reject.NON_CANONICAL,
        lambda: base().envelope.replace(b"\x63sig\x58\x40", b"\x63sig\x59\x00\x40"),
    ),
    _early(
        "envelope with duplicate key",
        Reject.NON_CANONICAL,
        lambda: b"\xa3" + base().envelope[1:] + b"\x63sig\x58\x40" + base().signature,
    ),
    _early(
        "non-canonical batch block, validly signed",
        Reject.NON_CANONICAL,
        lambda: resign(None, block=_non_canonical_block()),
    ),
    # ---- envelope and batch schema (before the signature)
    _early("envelope is a list", Reject.SCHEMA, lambda: dagcbor.encode([_block(), b"s" * 64])),
    _early("envelope missing sig", Reject.SCHEMA, lambda: dagcbor.encode({"batch": _block()})),
    _early("envelope missing batch", Reject.SCHEMA, lambda: dagcbor.encode({"sig": bytes(64)})),
    _early(
        "envelope unknown field",
        Reject.SCHEMA,
        lambda: envelope_bytes(_block(), base().signature, note="hi"),
    ),
    _early(
        "sig is text",
        Reject.SCHEMA,
        lambda: dagcbor.encode({"batch": _block(), "sig": "x" * 64}),
    ),
    _early(
        "batch is a map, not bytes",
        Reject.SCHEMA,
        lambda: dagcbor.encode({"batch": fields_of(base()), "sig": base().signature}),
    ),
    _early("sig 63 bytes", Reject.SCHEMA, lambda: _with_sig(base().signature[:63])),
    _early("sig 65 bytes", Reject.SCHEMA, lambda: _with_sig(base().signature + b"\x00")),
    _early(
        "operator_sig 64 bytes",
        Reject.SCHEMA,
        lambda: envelope_bytes(_block(), base().signature, operator_sig=bytes(64)),
    ),
    _early(
        "operator_sig 66 bytes",
        Reject.SCHEMA,
        lambda: envelope_bytes(_block(), base().signature, operator_sig=bytes(66)),
    ),
    _early("batch is a list", Reject.SCHEMA, lambda: resign(None, block=dagcbor.encode([1]))),
    _early("batch missing texts", Reject.SCHEMA, lambda: tampered(texts=DROP)),
    _early("batch missing sender", Reject.SCHEMA, lambda: tampered(sender=DROP)),
    _early("batch unknown field", Reject.SCHEMA, lambda: tampered(extra=1)),
    _early("seq is text", Reject.SCHEMA, lambda: tampered(seq="7")),
    _early("texts is bytes", Reject.SCHEMA, lambda: tampered(texts=b"abc")),
    _early("domain is bytes", Reject.SCHEMA, lambda: tampered(domain=b"coding")),
    _early("baseline is a list", Reject.SCHEMA, lambda: tampered(baseline=[0] * BASE_DIM)),
    _content("zero experiences", Reject.SCHEMA, lambda: tampered(texts=[])),
    _content("scale_dtype f64", Reject.SCHEMA, lambda: tampered(scale_dtype="f64")),
    _content("scale_dtype uppercase", Reject.SCHEMA, lambda: tampered(scale_dtype="F32")),
    # ---- version
    _early("version 2", Reject.UNKNOWN_VERSION, lambda: tampered(version=2)),
    _early("version 0", Reject.UNKNOWN_VERSION, lambda: tampered(version=0)),
    _early("version missing", Reject.UNKNOWN_VERSION, lambda: tampered(version=DROP)),
    _early("version is text", Reject.UNKNOWN_VERSION, lambda: tampered(version="1")),
    # ---- content address
    _early(
        "expected cid of another batch",
        Reject.CID_MISMATCH,
        lambda: base().envelope,
        expected_cid=dagcbor.cid_of(b"\xa0"),
    ),
    _early(
        "expected cid differs in one bit",
        Reject.CID_MISMATCH,
        lambda: base().envelope,
        expected_cid=_flip(dagcbor.cid_of(_block()), 35),
    ),
    # ---- signature and key
    _early("sig bit flipped", Reject.BAD_SIGNATURE, lambda: _with_sig(_flip(base().signature, 0))),
    _early(
        "sig S bit flipped", Reject.BAD_SIGNATURE, lambda: _with_sig(_flip(base().signature, 40, 3))
    ),
    _early("sig all zero", Reject.BAD_SIGNATURE, lambda: _with_sig(bytes(64))),
    _early(
        "signed by another key",
        Reject.BAD_SIGNATURE,
        lambda: resign(fields_of(base()), key=OTHER_KEY),
    ),
    _early(
        "claims another sender",
        Reject.BAD_SIGNATURE,
        lambda: tampered(sender=OTHER_KEY.public_key),
    ),
    _early("signature without context prefix", Reject.BAD_SIGNATURE, _sign_without_context),
    _early(
        "signature under another context",
        Reject.BAD_SIGNATURE,
        lambda: resign(fields_of(base()), context=b"fai/batch/v2\x00"),
    ),
    _early(
        "signature over the block, not the CID",
        Reject.BAD_SIGNATURE,
        lambda: _with_sig(KEY.sign(wire.BATCH_SIGNATURE_CONTEXT, _block())),
    ),
    _early(
        "signature of another batch",
        Reject.BAD_SIGNATURE,
        lambda: _with_sig(encode(seq=8).signature),
    ),
    _early(
        "bad signature beats bad content",
        Reject.BAD_SIGNATURE,
        lambda: resign({**fields_of(base()), "dim": 0}, key=OTHER_KEY),
    ),
    _early("sender 31 bytes", Reject.BAD_KEY, lambda: tampered(sender=KEY.public_key[:31])),
    _early("sender 33 bytes", Reject.BAD_KEY, lambda: tampered(sender=KEY.public_key + b"\0")),
    _early("sender empty", Reject.BAD_KEY, lambda: tampered(sender=b"")),
    # ---- content (after the signature: attributable to the sender)
    _content(
        "1025 texts",
        Reject.TOO_MANY_EXPERIENCES,
        lambda: tampered(texts=[f"p {i}" for i in range(wire.MAX_EXPERIENCES + 1)]),
    ),
    _content("dim 0", Reject.BAD_DIMENSION, lambda: tampered(dim=0)),
    _content("dim 4097", Reject.BAD_DIMENSION, lambda: tampered(dim=4097)),
    _content("dim 2^64-1", Reject.BAD_DIMENSION, lambda: tampered(dim=2**64 - 1)),
    _content("group 0", Reject.BAD_DIMENSION, lambda: tampered(group=0)),
    _content("group above dim", Reject.BAD_DIMENSION, lambda: tampered(group=BASE_DIM + 1)),
    _content("baseline short", Reject.SHAPE_MISMATCH, lambda: tampered(baseline=f32(*[0] * 19))),
    _content("baseline long", Reject.SHAPE_MISMATCH, lambda: tampered(baseline=f32(*[0] * 21))),
    _content("signs short", Reject.SHAPE_MISMATCH, lambda: tampered(signs=bytes(_M * _SB - 1))),
    _content("signs long", Reject.SHAPE_MISMATCH, lambda: tampered(signs=bytes(_M * _SB + 1))),
    _content("scales short", Reject.SHAPE_MISMATCH, lambda: tampered(scales=f32(*[0] * 8))),
    _content("scales long", Reject.SHAPE_MISMATCH, lambda: tampered(scales=f32(*[0] * 10))),
    _content(
        "f32 scales declared f16",
        Reject.SHAPE_MISMATCH,
        lambda: tampered(scale_dtype="f16"),
    ),
    _content("quality short", Reject.SHAPE_MISMATCH, lambda: tampered(quality=bytes(2 * _M - 1))),
    _content("quality long", Reject.SHAPE_MISMATCH, lambda: tampered(quality=bytes(2 * _M + 2))),
    _content("iteration short", Reject.SHAPE_MISMATCH, lambda: tampered(iteration=bytes(_M - 1))),
    _content("iteration long", Reject.SHAPE_MISMATCH, lambda: tampered(iteration=bytes(_M + 1))),
    _content(
        "columns sized for another dim",
        Reject.SHAPE_MISMATCH,
        lambda: tampered(dim=BASE_DIM - 1),
    ),
    _content("baseline NaN", Reject.NON_FINITE, lambda: tampered(baseline=_baseline(np.nan))),
    _content("baseline +Inf", Reject.NON_FINITE, lambda: tampered(baseline=_baseline(np.inf))),
    _content("baseline -Inf", Reject.NON_FINITE, lambda: tampered(baseline=_baseline(-np.inf))),
    _content("scale NaN", Reject.NON_FINITE, lambda: tampered(scales=_scales(np.nan))),
    _content("scale +Inf", Reject.NON_FINITE, lambda: tampered(scales=_scales(np.inf))),
    _content(
        "f16 scale NaN",
        Reject.NON_FINITE,
        lambda: tampered(base_f16(), scales=_scales(np.nan, "<f2")),
    ),
    _content(
        "f16 scale Inf",
        Reject.NON_FINITE,
        lambda: tampered(base_f16(), scales=_scales(np.inf, "<f2")),
    ),
    _content("scale negative", Reject.OUT_OF_RANGE, lambda: tampered(scales=_scales(-0.5))),
    _content(
        "scale -Inf is non-finite", Reject.NON_FINITE, lambda: tampered(scales=_scales(-np.inf))
    ),
    _content(
        "f16 scale negative",
        Reject.OUT_OF_RANGE,
        lambda: tampered(base_f16(), scales=_scales(-1.0, "<f2")),
    ),
    _content("scale huge", Reject.OUT_OF_RANGE, lambda: tampered(scales=_scales(2e6))),
    _content("baseline huge", Reject.OUT_OF_RANGE, lambda: tampered(baseline=_baseline(1e7))),
    _content("baseline -huge", Reject.OUT_OF_RANGE, lambda: tampered(baseline=_baseline(-1e7))),
    _content("padding row 0", Reject.BAD_PADDING, lambda: tampered(signs=_dirty_padding(0))),
    _content("padding last row", Reject.BAD_PADDING, lambda: tampered(signs=_dirty_padding(2))),
    _content(
        "text 33 words", Reject.TEXT_TOO_LONG, lambda: tampered(texts=_texts("w " * 32 + "w"))
    ),
    _content("text 1025 bytes", Reject.TEXT_TOO_LONG, lambda: tampered(texts=_texts("x" * 1025))),
    _content("text empty", Reject.BAD_TEXT, lambda: tampered(texts=_texts(""))),
    _content("text double space", Reject.BAD_TEXT, lambda: tampered(texts=_texts("a  b"))),
    _content("text leading space", Reject.BAD_TEXT, lambda: tampered(texts=_texts(" a"))),
    _content("text trailing space", Reject.BAD_TEXT, lambda: tampered(texts=_texts("a "))),
    _content("text tab", Reject.BAD_TEXT, lambda: tampered(texts=_texts("a\tb"))),
    _content("text NUL", Reject.BAD_TEXT, lambda: tampered(texts=_texts("a\x00b"))),
    _content("text C1 control", Reject.BAD_TEXT, lambda: tampered(texts=_texts("a\x85b"))),
    _content("text not NFC", Reject.BAD_TEXT, lambda: tampered(texts=_texts("cafe\u0301"))),
    _content("text nbsp", Reject.BAD_TEXT, lambda: tampered(texts=_texts("a\u00a0b"))),
    _content("text BOM", Reject.BAD_TEXT, lambda: tampered(texts=_texts("\ufeffa b"))),
    _content("text ZWSP", Reject.BAD_TEXT, lambda: tampered(texts=_texts("a\u200bb"))),
    _content("text RLO", Reject.BAD_TEXT, lambda: tampered(texts=_texts("a \u202eb"))),
    _content("text ideographic sp", Reject.BAD_TEXT, lambda: tampered(texts=_texts("a\u3000b"))),
    _content("text is bytes", Reject.BAD_TEXT, lambda: tampered(texts=_texts(b"abc"))),
    _content("text is int", Reject.BAD_TEXT, lambda: tampered(texts=_texts(5))),
    _content("domain uppercase", Reject.BAD_DOMAIN, lambda: tampered(domain="Coding")),
    _content("domain empty", Reject.BAD_DOMAIN, lambda: tampered(domain="")),
    _content("domain 33 chars", Reject.BAD_DOMAIN, lambda: tampered(domain="a" * 33)),
    _content("domain underscore", Reject.BAD_DOMAIN, lambda: tampered(domain="co_ding")),
    _content("domain trailing newline", Reject.BAD_DOMAIN, lambda: tampered(domain="coding\n")),
    _content("model empty", Reject.BAD_MODEL, lambda: tampered(model="")),
    _content("model 129 chars", Reject.BAD_MODEL, lambda: tampered(model="m" * 129)),
    _content("model space", Reject.BAD_MODEL, lambda: tampered(model="a b")),
    _content("model trailing newline", Reject.BAD_MODEL, lambda: tampered(model="m\n")),
    _content(
        "duplicate text",
        Reject.DUPLICATE_EXPERIENCE,
        lambda: tampered(texts=_texts(BASE_TEXTS[0])),
    ),
    # ---- freshness (checked on a verified batch; not attributable: delay is not misconduct)
    Case("T_max+1 old", Reject.STALE, False, _fresh(_NOW - _T_MAX - 1, _NOW)),
    Case("T_max+1 ahead", Reject.FUTURE, False, _fresh(_NOW + _T_MAX + 1, _NOW)),
    Case("custom T_max stale", Reject.STALE, False, _fresh(_NOW - 11, _NOW, 10)),
    Case("custom T_max future", Reject.FUTURE, False, _fresh(_NOW + 11, _NOW, 10)),
    Case("far past", Reject.STALE, False, _fresh(0, _NOW)),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_reject(case: Case) -> None:
    with pytest.raises(WireError) as info:
        case.run()
    err = info.value
    assert err.reason == case.reason, err
    assert err.detail
    assert str(err).startswith(case.reason.value)
    if case.attributable:
        assert err.sender == KEY.public_key
    else:
        assert err.sender is None


def test_every_reject_reason_is_covered() -> None:
    missing = set(Reject) - {case.reason for case in CASES}
    assert not missing, f"Reject reasons without a test case: {sorted(missing)}"


def test_case_names_are_unique() -> None:
    assert len({c.name for c in CASES}) == len(CASES)


def test_tampering_helper_produces_a_valid_envelope_when_nothing_changes() -> None:
    """Guards the table: a re-signed, unchanged batch map is accepted as the same batch."""
    assert tampered() == base().envelope
    assert wire.decode_envelope(tampered()).cid == base().cid


@pytest.mark.parametrize(
    ("ts", "max_age"),
    [(_NOW - _T_MAX, None), (_NOW + _T_MAX, None), (_NOW, None), (_NOW - 10, 10), (_NOW + 10, 10)],
)
def test_freshness_accepts_up_to_t_max(ts: int, max_age: int | None) -> None:
    _fresh(ts, _NOW, max_age)()  # no exception
