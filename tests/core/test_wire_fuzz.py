"""Property fuzzing of `decode_envelope`: hostile bytes only ever produce a WireError.

Every test runs its input through `outcome`, which lets exactly two things through: a
SignedBatch or a WireError with a Reject reason. Anything else (IndexError from numpy,
RecursionError, cbor2's own exceptions, ...) fails the test, and hypothesis' `deadline`
turns a hang or a pathological slowdown into a failure.
"""

from __future__ import annotations

import hashlib
from functools import cache
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context

from fai_core import bitdelta, dagcbor, wire
from fai_core.errors import Reject, WireError
from fai_core.experience import Experience
from tests.support.wire import KEY, encode, experiences, resign

FUZZ = settings(
    max_examples=300,
    deadline=500,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

OP_SIG = bytes(range(100, 165))


@cache
def valid_envelopes() -> tuple[wire.SignedBatch, ...]:
    return (
        encode(),
        encode(operator_signer=lambda _h: OP_SIG),
        encode(experiences(d=100), group=30, scale_dtype="f16", seq=0, timestamp_ms=0),
        encode(experiences(["x"], d=1), group=1, model="m"),
    )


def _known() -> dict[bytes, bytes]:
    """CID -> sender signature of every valid envelope the mutations start from."""
    return {s.cid: s.signature for s in valid_envelopes()}


def _event(label: str) -> None:
    if currently_in_test_context():  # `pytest --hypothesis-show-statistics` shows the mix
        event(label)


def outcome(data: Any, **kwargs: Any) -> wire.SignedBatch | WireError:
    try:
        result = wire.decode_envelope(data, **kwargs)
    except WireError as exc:
        assert isinstance(exc.reason, Reject)
        assert exc.sender is None or exc.sender == KEY.public_key
        _event(exc.reason.value)
        return exc
    _event("accepted")
    return result


def assert_sound(result: wire.SignedBatch) -> None:
    """What every accepted batch must satisfy, whatever bytes it came from."""
    batch = result.batch
    assert result.cid == dagcbor.cid_of(dagcbor.decode(result.envelope)["batch"])
    assert len(batch) == len(batch.ids) == batch.signs.shape[0] == batch.scales.shape[0] >= 1
    assert np.isfinite(batch.embeddings()).all()
    exps = batch.experiences()  # every accepted batch yields valid Experiences
    assert all(isinstance(e, Experience) and e.source == batch.sender for e in exps)


def assert_not_forged(result: wire.SignedBatch | WireError) -> None:
    """A mutation may be refused or may reproduce a known batch, never yield a new one."""
    if isinstance(result, wire.SignedBatch):
        known = _known()
        assert result.cid in known
        assert result.signature == known[result.cid]
        assert_sound(result)


# --------------------------------------------------------------------------------------------
# Unstructured input


@given(st.binary(max_size=3000))
@FUZZ
def test_random_bytes(data: bytes) -> None:
    assert isinstance(outcome(data), WireError)


@given(
    st.sampled_from([b"\xa2", b"\xa3", b"\xa2\x63sig\x58\x40", b"\xa1\x65batch", b"\xbf"]),
    st.binary(max_size=600),
)
@FUZZ
def test_random_bytes_after_plausible_prefix(prefix: bytes, rest: bytes) -> None:
    assert isinstance(outcome(prefix + rest), WireError)


@given(st.integers(wire.MAX_ENVELOPE_BYTES + 1, wire.MAX_ENVELOPE_BYTES + 200_000), st.binary())
@settings(FUZZ, max_examples=50)
def test_oversized_inputs_are_refused_by_size(size: int, seed: bytes) -> None:
    data = (valid_envelopes()[0].envelope + seed) * (size // 200)
    data = (data + bytes(size))[:size]
    result = outcome(data)
    assert isinstance(result, WireError) and result.reason == Reject.OVERSIZE


def test_size_limit_is_inclusive() -> None:
    result = outcome(bytes(wire.MAX_ENVELOPE_BYTES))
    assert isinstance(result, WireError) and result.reason != Reject.OVERSIZE


@pytest.mark.parametrize("index", range(len(valid_envelopes())))
def test_every_truncated_prefix_is_malformed(index: int) -> None:
    envelope = valid_envelopes()[index].envelope
    for cut in range(len(envelope)):
        result = outcome(envelope[:cut])
        assert isinstance(result, WireError) and result.reason == Reject.MALFORMED_CBOR, cut


# --------------------------------------------------------------------------------------------
# Mutations of valid envelopes


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    envs = valid_envelopes()
    data = bytearray(draw(st.sampled_from(envs)).envelope)
    for _ in range(draw(st.integers(1, 4))):
        n = len(data)
        op = draw(st.sampled_from(["flip", "set", "insert", "delete", "dup", "splice"]))
        i = draw(st.integers(0, max(0, n - 1)))
        if op == "flip" and n:
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and n:
            data[i] = draw(st.sampled_from([0x00, 0xFF, 0x18, 0x1B, 0x40, 0x5F, 0x9F, 0xBF, 0xF6]))
        elif op == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete" and n:
            del data[i : i + draw(st.integers(1, 16))]
        elif op == "dup" and n:
            j = draw(st.integers(i, min(n, i + 64)))
            data[j:j] = data[i:j]
        elif op == "splice":
            other = draw(st.sampled_from(envs)).envelope
            k = draw(st.integers(0, len(other)))
            data = data[:i] + bytearray(other[k:])
    return bytes(data)


@given(mutated())
@settings(FUZZ, max_examples=500)
def test_mutated_envelopes(data: bytes) -> None:
    assert_not_forged(outcome(data))


@given(st.sampled_from(range(4)), st.data())
@FUZZ
def test_mutated_batch_blocks_re_signed(index: int, data: st.DataObject) -> None:
    """Mutate the batch block itself and sign it properly: the content checks face the bytes."""
    block = bytearray(dagcbor.decode(valid_envelopes()[index].envelope)["batch"])
    for _ in range(data.draw(st.integers(1, 3))):
        i = data.draw(st.integers(0, len(block) - 1))
        op = data.draw(st.sampled_from(["flip", "insert", "delete"]))
        if op == "flip":
            block[i] ^= 1 << data.draw(st.integers(0, 7))
        elif op == "insert":
            block[i:i] = data.draw(st.binary(min_size=1, max_size=4))
        else:
            del block[i : i + data.draw(st.integers(1, 8))]
    result = outcome(resign(None, block=bytes(block)))
    if isinstance(result, wire.SignedBatch):
        assert_sound(result)


# --------------------------------------------------------------------------------------------
# Single-bit flips
#
# Why no single-bit flip of a valid envelope without operator_sig is ever accepted:
# - a flip in the envelope's own framing (map head, key text, length heads) breaks the CBOR
#   (truncation or trailing bytes), its canonical form, or the schema (unknown or missing key,
#   wrong type, a sig that is no longer 64 bytes);
# - a flip inside the batch bytes changes the block, hence its sha2-256 CID, and the sender's
#   signature is over the old CID (if the block is still canonical and schema-valid at all;
#   a flip inside `sender` would need a signature by a key nobody holds);
# - a flip inside the 64 signature bytes: libsodium's Ed25519 verification is strongly
#   unforgeable (it refuses a non-canonical S), so a modified signature never verifies.
# With operator_sig, a flip inside its 65 value bytes yields the same batch with another
# operator signature: decode_envelope only checks its length (the EIP-712 signature is checked
# against the registry elsewhere), so that is the one accepted case, and it is not a new batch.


def _value_span(envelope: bytes, value: bytes) -> range:
    start = envelope.index(value)
    assert envelope.count(value) == 1
    return range(start, start + len(value))


@pytest.mark.parametrize("index", range(len(valid_envelopes())))
def test_every_single_bit_flip_is_refused(index: int) -> None:
    signed = valid_envelopes()[index]
    envelope = signed.envelope
    op_span = _value_span(envelope, OP_SIG) if signed.operator_signature else range(0)
    for pos in range(len(envelope)):
        for bit in range(8):
            flipped = bytearray(envelope)
            flipped[pos] ^= 1 << bit
            result = outcome(bytes(flipped))
            if pos in op_span:
                assert isinstance(result, wire.SignedBatch), (pos, bit)
                assert result.cid == signed.cid and result.signature == signed.signature
                assert result.operator_signature != signed.operator_signature
            else:
                assert isinstance(result, WireError), (pos, bit)


# --------------------------------------------------------------------------------------------
# Random CBOR objects shaped like envelopes and batches

_ANY_LEAF = st.one_of(
    st.integers(0, 2**64 - 1), st.binary(max_size=40), st.text(max_size=20), st.just([])
)
_ANY = st.recursive(
    _ANY_LEAF,
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c, max_size=3),
    max_leaves=6,
)
_GOOD_FLOATS = st.sampled_from([0.0, -0.0, 0.25, 0.5, 2.0, 1e-3, 1e6, 65504.0])
_BAD_FLOATS = st.sampled_from([-0.5, -1e7, 1.1e6, 1e7, 3e38, np.inf, -np.inf, np.nan])
_GOOD_WORDS = st.sampled_from(["retry", "cache", "pin", "Ünïcode", "naïve", "x" * 40, "é"])
_BAD_WORDS = st.sampled_from(["", "a\tb", "x" * 1100, "e\u0301", "\x00", " "])


def _mostly(good: Any, *bad: Any) -> st.SearchStrategy[Any]:
    """`good` about 90% of the time, else one of `bad` (values or strategies)."""
    bad_strategies = [b if isinstance(b, st.SearchStrategy) else st.just(b) for b in bad]
    good_strategy = good if isinstance(good, st.SearchStrategy) else st.just(good)
    return st.integers(0, 9).flatmap(
        lambda r: good_strategy if r != 7 or not bad else st.one_of(*bad_strategies)
    )


def _floats(draw: st.DrawFn, n: int, dtype: str, signed: bool) -> bytes:
    values = np.array(draw(st.lists(_GOOD_FLOATS, min_size=n, max_size=n)), dtype=np.float64)
    if not signed:
        values = np.abs(values)
    if n and draw(st.integers(0, 4)) == 3:
        values[draw(st.integers(0, n - 1))] = draw(_BAD_FLOATS)
    with np.errstate(over="ignore"):
        return values.astype(dtype).tobytes()


@st.composite
def batch_maps(draw: st.DrawFn) -> dict[str, Any]:
    """Mostly well-formed batch maps with a few odd values; now and then a wrong size, wrong
    type, missing or extra field. Tuned so that a fair share is accepted and every content
    check gets reached."""
    dim = draw(_mostly(st.sampled_from([1, 7, 8, 9, 16, 20, 100]), 0, 4097, st.integers(0, 5000)))
    group = draw(_mostly(st.integers(1, max(1, dim)), 0, dim + 1))
    m = draw(_mostly(st.integers(1, 4), 0))
    dt = draw(_mostly(st.sampled_from(["f32", "f16"]), "f64", "F32"))
    small = dim <= 256
    sb = bitdelta.sign_bytes(max(dim, 1))
    gc = bitdelta.group_count(max(dim, 1), max(group, 1))
    signs = bytearray(draw(st.binary(min_size=m * sb, max_size=m * sb)))
    spare = sb * 8 - dim
    if spare > 0 and draw(_mostly(True, False)):
        for row in range(m):
            signs[row * sb + sb - 1] &= 0xFF ^ ((1 << spare) - 1)
    word = _mostly(_GOOD_WORDS, _BAD_WORDS)
    texts = draw(
        st.lists(st.lists(word, min_size=1, max_size=4).map(" ".join), min_size=m, max_size=m)
    )
    fields: dict[str, Any] = {
        "version": draw(_mostly(1, 0, 2)),
        "sender": draw(_mostly(KEY.public_key, bytes(32), b"k")),
        "seq": draw(st.integers(0, 2**64 - 1)),
        "timestamp_ms": draw(st.integers(0, 2**64 - 1)),
        "domain": draw(_mostly(st.sampled_from(["coding", "a", "0-9"]), "Coding", "", "a" * 33)),
        "model": draw(_mostly(st.sampled_from(["m", "org/model:1"]), "", "a b")),
        "dim": dim,
        "group": group,
        "scale_dtype": dt,
        "baseline": _floats(draw, dim, "<f4", True) if small else bytes(4 * dim),
        "texts": texts,
        "signs": bytes(signs),
        "scales": _floats(draw, m * gc, "<f2" if dt == "f16" else "<f4", False)
        if small
        else bytes(m * gc * (2 if dt == "f16" else 4)),
        "quality": draw(st.binary(min_size=2 * m, max_size=2 * m)),
        "iteration": draw(st.binary(min_size=m, max_size=m)),
    }
    for _ in range(draw(_mostly(0, 1, 2))):
        name = draw(st.sampled_from([*wire.BATCH_FIELDS, "extra"]))
        action = draw(st.sampled_from(["drop", "any", "resize"]))
        if action == "drop":
            fields.pop(name, None)
        elif action == "any":
            fields[name] = draw(_ANY)
        elif isinstance(fields.get(name), bytes):
            fields[name] = fields[name] + draw(st.binary(min_size=1, max_size=3))
    return fields


@given(batch_maps())
@settings(FUZZ, max_examples=400)
def test_random_batch_maps_signed_by_sender(fields: dict[str, Any]) -> None:
    result = outcome(resign(fields))
    if isinstance(result, wire.SignedBatch):
        assert_sound(result)
        assert result.batch.sender == KEY.public_key
    elif result.reason not in {
        Reject.MALFORMED_CBOR,
        Reject.SCHEMA,
        Reject.UNKNOWN_VERSION,
        Reject.BAD_KEY,
        Reject.BAD_SIGNATURE,
    }:
        assert result.sender == KEY.public_key  # content errors are attributable


@given(
    st.dictionaries(
        st.sampled_from(["batch", "sig", "operator_sig", "extra", ""]),
        st.one_of(
            _ANY,
            st.binary(min_size=64, max_size=64),
            st.binary(min_size=65, max_size=65),
            batch_maps().map(dagcbor.encode),
        ),
        max_size=4,
    )
)
@settings(FUZZ, max_examples=200)
def test_random_envelope_shaped_objects(env: dict[str, Any]) -> None:
    result = outcome(dagcbor.encode(env))
    assert isinstance(result, WireError)  # no valid signature by anyone: never accepted
    assert result.sender is None


@given(_ANY)
@FUZZ
def test_random_cbor_objects(obj: Any) -> None:
    assert isinstance(outcome(dagcbor.encode(obj)), WireError)


# --------------------------------------------------------------------------------------------
# Valid batches always decode

_TEXT = st.lists(
    st.sampled_from(["retry", "cache", "the", "build", "naïve", "日本", "x-1", "42"]),
    min_size=1,
    max_size=32,
).map(" ".join)


@st.composite
def valid_batches(draw: st.DrawFn) -> tuple[list[Experience], dict[str, Any]]:
    d = draw(st.integers(1, 300))
    g = draw(st.integers(1, d))
    texts = draw(st.lists(_TEXT, min_size=1, max_size=8, unique=True))
    domain = draw(st.from_regex(r"[a-z0-9-]{1,32}", fullmatch=True))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    scale = draw(st.sampled_from([1e-3, 1.0, 100.0]))
    exps = [
        Experience(
            text=t,
            embedding=rng.standard_normal(d) * scale,
            quality=draw(st.floats(0, 1, exclude_min=True, exclude_max=True)),
            domain=domain,
            source=KEY.public_key,
            created_ms=0,
            iteration=draw(st.integers(0, 255)),
        )
        for t in texts
    ]
    kwargs = {
        "seq": draw(st.integers(0, 2**64 - 1)),
        "timestamp_ms": draw(st.integers(0, 2**64 - 1)),
        "model": draw(st.from_regex(r"[A-Za-z0-9._/:@+-]{1,128}", fullmatch=True)),
        "baseline": rng.standard_normal(d) * draw(st.sampled_from([0.0, 1.0, 1e3])),
        "group": g,
        "scale_dtype": draw(st.sampled_from(["f32", "f16"])),
        "operator_signer": draw(st.sampled_from([None, lambda _h: OP_SIG])),
    }
    return exps, kwargs


@given(valid_batches())
@settings(FUZZ, max_examples=200)
def test_valid_envelope_always_decodes(case: tuple[list[Experience], dict[str, Any]]) -> None:
    exps, kwargs = case
    signed = encode(exps, **kwargs)
    result = outcome(signed.envelope, expected_cid=signed.cid)
    assert isinstance(result, wire.SignedBatch), result
    batch = result.batch
    assert batch.texts == tuple(e.text for e in exps)
    assert batch.ids == tuple(e.id for e in exps)
    assert (batch.seq, batch.timestamp_ms, batch.model) == (
        kwargs["seq"],
        kwargs["timestamp_ms"],
        kwargs["model"],
    )
    assert result.operator_signature == (OP_SIG if kwargs["operator_signer"] else None)
    q = batch.quality.astype(np.float64)
    assert np.all((q > 0) & (q < 1))
    assert np.all(np.abs(q - [e.quality for e in exps]) <= 1 / 65536)
    base = np.asarray(kwargs["baseline"], dtype=np.float32)
    code = bitdelta.encode(
        np.stack([e.embedding for e in exps]), base, kwargs["group"], kwargs["scale_dtype"]
    )
    np.testing.assert_array_equal(batch.embeddings(), bitdelta.decode(code, base))
    assert_sound(result)
    assert (
        result.batch.header.cid_digest
        == hashlib.sha256(dagcbor.decode(signed.envelope)["batch"]).digest()
    )
