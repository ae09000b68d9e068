"""Property fuzzing of `decode_envelope`: hostile bytes only ever produce a WireError.

Every test runs its input through `outcome`, which lets exactly two things through: a
SignedBatch or a WireError with a Reject reason. Anything else (IndexError from numpy,
RecursionError, cbor2's own exceptions, ...) fails the test, and hypothesis' `deadline`
turns a hang or a pathological slowdown into a failure.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

import cbor2
import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings, target
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context

from fai_core import bitdelta, dagcbor, wire
from fai_core.errors import Reject, WireError
from fai_core.experience import MAX_DIMENSION, Experience
from tests.support.wire import (
    KEY,
    OTHER_KEY,
    encode,
    experiences,
    fields_of,
    resign,
    with_rows,
)

FUZZ = settings(
    max_examples=300,
    deadline=500,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

OP_SIG = bytes(range(100, 165))
#: The outcome label of a decoded batch; a refusal's label is its `Reject` value.
ACCEPTED = "accepted"


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
    _event(ACCEPTED)
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
    type, missing or extra field, a column a row off, or more than MAX_EXPERIENCES rows.
    Tuned so that a fair share is accepted and most content checks get reached; faults are
    independent, so the deepest checks come up only now and then. `structured_mutations`
    reaches each check on purpose (test_structured_mutations_reach_every_reason)."""
    dim = draw(_mostly(st.sampled_from([1, 7, 8, 9, 16, 20, 100]), 0, 4097, st.integers(0, 5000)))
    group = draw(_mostly(st.integers(1, max(1, dim)), 0, dim + 1))
    m = draw(_mostly(st.integers(1, 4), 0, wire.MAX_EXPERIENCES + 1))
    # Too many rows: refused for the count before any column is read, so the columns stay
    # empty (drawing them would overrun hypothesis' buffer, or the size limit).
    few = m <= 4
    dt = draw(_mostly(st.sampled_from(["f32", "f16"]), "f64", "F32"))
    small = dim <= 256 and few
    sb = bitdelta.sign_bytes(max(dim, 1))
    gc = bitdelta.group_count(max(dim, 1), max(group, 1))
    signs = bytearray(draw(st.binary(min_size=m * sb, max_size=m * sb)) if few else b"")
    spare = sb * 8 - dim
    if few and spare > 0 and draw(st.sampled_from([True, True, True, False])):
        for row in range(m):
            signs[row * sb + sb - 1] &= 0xFF ^ ((1 << spare) - 1)
    word = _mostly(_GOOD_WORDS, _BAD_WORDS)
    texts = (
        draw(st.lists(st.lists(word, min_size=1, max_size=4).map(" ".join), min_size=m, max_size=m))
        if few
        else [f"t {i}" for i in range(m)]
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
        else bytes(m * gc * (2 if dt == "f16" else 4) if few else 0),
        "quality": draw(st.binary(min_size=2 * m, max_size=2 * m)) if few else b"",
        "iteration": draw(st.binary(min_size=m, max_size=m)) if few else b"",
    }
    # Now and then a per-row column holds one row more or one fewer than there are texts.
    skewed = draw(_mostly(None, "signs", "scales", "quality", "iteration"))
    if skewed is not None:
        width = len(fields[skewed]) // m if m else 1
        if draw(st.booleans()) or not m:
            fields[skewed] += fields[skewed][:width] or bytes(width)
        else:
            fields[skewed] = fields[skewed][width:]
    for _ in range(draw(_mostly(0, 1, 2))):
        name = draw(st.sampled_from([*wire.BATCH_FIELDS, "extra"]))
        action = draw(st.sampled_from(["drop", "any", "resize"]))
        if action == "drop":
            fields.pop(name, None)
        elif action == "any":
            fields[name] = draw(_ANY)
        elif isinstance(fields.get(name), bytes):  # a column one to three bytes off its shape
            delta = draw(st.integers(-3, 3).filter(bool))
            raw = fields[name]
            fields[name] = (
                raw + draw(st.binary(min_size=delta, max_size=delta)) if delta > 0 else raw[:delta]
            )
    return fields


@given(batch_maps())
@settings(FUZZ, max_examples=400)
def test_random_batch_maps_signed_by_sender(fields: dict[str, Any]) -> None:
    check_batch_map(fields)


def check_batch_map(fields: dict[str, Any]) -> list[str]:
    """Decode `fields` re-signed by the sender; return the outcome (for `reached`)."""
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
    got = ACCEPTED if isinstance(result, wire.SignedBatch) else result.reason.value
    return [got]


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
# Structure-aware mutations, re-signed: every refusal reason, on purpose
#
# Byte-level mutations and random maps mostly die in the CBOR, the schema or the signature,
# and they never produce a batch of more than MAX_EXPERIENCES rows or a column whose length
# disagrees with the others by design. Here each example takes a valid batch map, applies one
# mutation aimed at one check (more rows than the limit, a signs/scales/baseline column of the
# wrong shape, a NaN in the baseline, ...), re-signs it with the sender's key, and demands the
# exact outcome that mutation must produce. `STRUCTURED_REACHED` counts the outcomes, and
# `test_structured_mutations_reach_every_reason` proves, on a derandomized run, that every
# `Reject` reason is reached:
#
# - by a batch map mutated and validly re-signed by its sender (the content checks and the
#   checks before the signature): every reason except those below;
# - `bad_signature`: re-signed, but not by the claimed sender (another sender field, another
#   key, or another signing context), since a batch signed by its sender verifies by design;
# - `malformed_cbor`, `non_canonical`: `dagcbor.encode` of a map is always well-formed
#   canonical DAG-CBOR, so these re-sign a block made by hand (truncated, trailing bytes, a
#   negative integer, unsorted keys, a non-shortest integer head);
# - `cid_mismatch`: only a caller that asks for a CID checks it: the mutated batch is decoded
#   with `expected_cid` of the batch it came from;
# - `stale`, `future`: `decode_envelope` never checks time; the caller does, with
#   `wire.check_freshness`, which runs on the accepted batch with a mutated timestamp;
# - `oversize` needs an envelope over MAX_ENVELOPE_BYTES: a re-signed batch with a field
#   padded past the limit (cheap: one 1 MB byte string).

NOW_MS = 1_700_000_000_000
MAX_AGE_MS = 300_000


@dataclass(frozen=True)
class Case:
    """A mutated envelope and the only outcomes its mutation may produce."""

    kind: str
    envelope: bytes
    expected: frozenset[str]
    expected_cid: bytes | None = None
    #: Expected `check_freshness(batch, NOW_MS)` outcome, when the kind mutates time.
    freshness: str | None = None


def _case(kind: str, fields: Any, *expected: str, **extra: Any) -> Case:
    return Case(kind, resign(fields), frozenset(expected), **extra)


def _poke(raw: bytes, dtype: str, index: int, value: float) -> bytes:
    """`raw` as an array of `dtype` with element `index` (mod its length) set to `value`."""
    values = np.frombuffer(raw, dtype=dtype).copy()
    with np.errstate(over="ignore", invalid="ignore"):
        values[index % len(values)] = value
    return values.tobytes()


def _scale_type(fields: dict[str, Any]) -> str:
    return "<f2" if fields["scale_dtype"] == "f16" else "<f4"


def _rows(draw: st.DrawFn, f: dict[str, Any]) -> Case:
    """Change the number of experiences, around 1..8 and around MAX_EXPERIENCES; the columns
    grow with the texts (consistent) or stay as they were (a shape mismatch)."""
    limit = wire.MAX_EXPERIENCES
    n = draw(st.one_of(st.integers(1, 8), st.integers(limit - 2, limit + 40)))
    target(float(min(n, limit + 1)), label="experiences in a mutated batch")
    m = len(f["texts"])
    if draw(st.booleans()):
        g = with_rows(f, n)
        return _case("rows", g, ACCEPTED if n <= limit else Reject.TOO_MANY_EXPERIENCES)
    g = dict(f, texts=with_rows(f, n)["texts"])
    if n > limit:
        return _case("rows-only-texts", g, Reject.TOO_MANY_EXPERIENCES)
    return _case("rows-only-texts", g, ACCEPTED if n == m else Reject.SHAPE_MISMATCH)


def _shape(draw: st.DrawFn, f: dict[str, Any]) -> Case:
    """Give one column a length its dim, group, scale_dtype and row count do not imply."""
    how = draw(st.sampled_from(["column", "dtype", "dim", "group"]))
    if how == "column":
        name = draw(st.sampled_from(["baseline", "signs", "scales", "quality", "iteration"]))
        raw = f[name]
        delta = draw(st.integers(-len(raw), 64).filter(bool))
        g = dict(f, **{name: raw[:delta] if delta < 0 else raw + bytes(delta)})
        return _case(f"shape-{name}", g, Reject.SHAPE_MISMATCH)
    if how == "dtype":  # scales of the other width: half or twice the bytes
        g = dict(f, scale_dtype="f32" if f["scale_dtype"] == "f16" else "f16")
        return _case("shape-dtype", g, Reject.SHAPE_MISMATCH)
    dim, group = f["dim"], f["group"]
    if how == "dim":  # columns stay: baseline no longer dim floats
        new = draw(st.integers(1, 2 * dim + 8).filter(lambda d: d != dim))
        bad = not group <= new <= MAX_DIMENSION
        g = dict(f, dim=new)
        return _case("shape-dim", g, Reject.BAD_DIMENSION if bad else Reject.SHAPE_MISMATCH)
    new = draw(st.integers(1, dim + 2).filter(lambda x: x != group))
    same = bitdelta.group_count(dim, new) == bitdelta.group_count(dim, group)
    expected = Reject.BAD_DIMENSION if new > dim else ACCEPTED if same else Reject.SHAPE_MISMATCH
    return _case("shape-group", dict(f, group=new), expected)


def _dimension(draw: st.DrawFn, f: dict[str, Any]) -> Case:
    dim = draw(st.sampled_from([0, MAX_DIMENSION + 1, 2**64 - 1]))
    if draw(st.booleans()):
        return _case("dim", dict(f, dim=dim), Reject.BAD_DIMENSION)
    group = draw(st.sampled_from([0, f["dim"] + 1, 2**64 - 1]))
    return _case("group", dict(f, group=group), Reject.BAD_DIMENSION)


def _values(draw: st.DrawFn, f: dict[str, Any]) -> Case:
    """A NaN, an infinity or an out-of-range value in the baseline or the scales."""
    i = draw(st.integers(0, 2**16))
    finite = draw(st.booleans())
    if draw(st.booleans()):
        value = draw(
            st.sampled_from([1.5e6, -1.5e6, 3e38, -3e38] if finite else [np.nan, np.inf, -np.inf])
        )
        g = dict(f, baseline=_poke(f["baseline"], "<f4", i, value))
    else:
        fit = [-1e-3, -2.0] + ([1.5e6, 3e38] if f["scale_dtype"] == "f32" else [])
        value = draw(st.sampled_from(fit if finite else [np.nan, np.inf, -np.inf]))
        g = dict(f, scales=_poke(f["scales"], _scale_type(f), i, value))
    return _case("values", g, Reject.OUT_OF_RANGE if finite else Reject.NON_FINITE)


def _padding(draw: st.DrawFn, f: dict[str, Any]) -> Case:
    width = bitdelta.sign_bytes(f["dim"])
    spare = width * 8 - f["dim"]
    assert spare, "every base batch has unused sign bits"
    signs = bytearray(f["signs"])
    row = draw(st.integers(0, len(f["texts"]) - 1))
    signs[row * width + width - 1] |= 1 << draw(st.integers(0, spare - 1))
    return _case("padding", dict(f, signs=bytes(signs)), Reject.BAD_PADDING)


_LONG_TEXTS = ["x" * 1025, "日" * 342, " ".join(["w"] * 33), " ".join(["word"] * 40)]
_BAD_TEXTS = ["", "a  b", " a", "a ", "a\tb", "a\x00", "e\u0301", "\ufeffx", 42, b"x", ["a"]]


def _text(draw: st.DrawFn, f: dict[str, Any]) -> Case:
    texts = list(f["texts"])
    i = draw(st.integers(0, len(texts) - 1))
    if draw(st.booleans()):
        texts[i] = draw(st.sampled_from(_LONG_TEXTS))
        return _case("text-long", dict(f, texts=texts), Reject.TEXT_TOO_LONG)
    texts[i] = draw(st.sampled_from(_BAD_TEXTS))
    return _case("text-bad", dict(f, texts=texts), Reject.BAD_TEXT)


def _duplicate(draw: st.DrawFn, f: dict[str, Any]) -> Case:
    g = with_rows(f, draw(st.integers(2, 5)))
    i, j = draw(st.lists(st.integers(0, len(g["texts"]) - 1), min_size=2, max_size=2, unique=True))
    g["texts"][i] = g["texts"][j]
    return _case("duplicate", g, Reject.DUPLICATE_EXPERIENCE)


def _labels(draw: st.DrawFn, f: dict[str, Any]) -> Case:
    if draw(st.booleans()):
        domain = draw(st.sampled_from(["", "Coding", "a b", "a" * 33, "ü", "a_b", "a\n"]))
        return _case("domain", dict(f, domain=domain), Reject.BAD_DOMAIN)
    model = draw(st.sampled_from(["", "a b", "m" * 129, "ü", "a\x00", "m\n"]))
    return _case("model", dict(f, model=model), Reject.BAD_MODEL)


_WRONG_TYPE: dict[type, list[Any]] = {
    int: ["1", b"\x01", [1]],
    bytes: ["ab", [b"a"], 3],
    str: [b"coding", 3, ["coding"]],
    list: ["retry", b"x", 3],
}


def _schema(draw: st.DrawFn, f: dict[str, Any]) -> Case:
    how = draw(st.sampled_from(["drop", "extra", "type", "dtype", "empty"]))
    names = sorted(set(wire.BATCH_FIELDS) - {"version"})  # version first: unknown_version
    g = dict(f)
    if how == "drop":
        del g[draw(st.sampled_from(names))]
    elif how == "extra":
        key = draw(st.sampled_from(["extra", "", "Version", "text"]))
        g[key] = draw(st.sampled_from([0, b"", "x", [], {"a": 1}]))
    elif how == "type":
        name = draw(st.sampled_from(names))
        g[name] = draw(st.sampled_from(_WRONG_TYPE[wire.BATCH_FIELDS[name]]))
    elif how == "dtype":
        g["scale_dtype"] = draw(st.sampled_from(["f64", "F32", "", "bf16"]))
    else:
        g = dict(with_rows(f, 0))
    return _case(f"schema-{how}", g, Reject.SCHEMA)


def _version(draw: st.DrawFn, f: dict[str, Any]) -> Case:
    g = dict(f)
    if draw(st.booleans()):
        del g["version"]
    else:
        g["version"] = draw(st.sampled_from([0, 2, 2**64 - 1, "1", b"\x01"]))
    return _case("version", g, Reject.UNKNOWN_VERSION)


def _bad_key(draw: st.DrawFn, f: dict[str, Any]) -> Case:
    sender = draw(st.sampled_from([0, 1, 31, 33, 64]).map(lambda n: KEY.public_key[:1] * n))
    return _case("bad-key", dict(f, sender=sender), Reject.BAD_KEY)


def _signer(draw: st.DrawFn, f: dict[str, Any]) -> Case:
    """Validly signed, but not by the sender the batch names (or not for a batch)."""
    how = draw(st.sampled_from(["claimed", "key", "context"]))
    if how == "claimed":
        return _case("signer-claimed", dict(f, sender=OTHER_KEY.public_key), Reject.BAD_SIGNATURE)
    if how == "key":
        envelope = resign(f, key=OTHER_KEY)
    else:
        envelope = resign(f, context=draw(st.sampled_from([b"", b"fai/batch/v2\x00"])))
    return Case(f"signer-{how}", envelope, frozenset({Reject.BAD_SIGNATURE}))


def _oversize(draw: st.DrawFn, f: dict[str, Any]) -> Case:
    name = draw(st.sampled_from(["baseline", "signs", "texts"]))
    pad = wire.MAX_ENVELOPE_BYTES + draw(st.integers(-200, 200))
    # Under the limit, the padded batch is still refused: a column (or the texts) no longer
    # has the rows' shape.
    g = dict(f, **{name: f[name] + (["x" * pad] if name == "texts" else bytes(pad))})
    envelope = resign(g)
    if len(envelope) > wire.MAX_ENVELOPE_BYTES:
        return Case("oversize", envelope, frozenset({Reject.OVERSIZE}))
    return Case("oversize-just-under", envelope, frozenset({Reject.SHAPE_MISMATCH}))


def _malformed(draw: st.DrawFn, f: dict[str, Any]) -> Case:
    """A block that is not DAG-CBOR of FAI's subset, re-signed."""
    block = dagcbor.encode(f)
    how = draw(st.sampled_from(["truncated", "trailing", "negative"]))
    if how == "truncated":
        raw = block[: draw(st.integers(0, len(block) - 1))]
    elif how == "trailing":
        raw = block + draw(st.binary(min_size=1, max_size=4))
    else:
        name = draw(st.sampled_from(["seq", "timestamp_ms", "dim", "group"]))
        raw = cbor2.dumps(dict(f, **{name: -1}), canonical=True)
    return Case(f"malformed-{how}", resign(None, block=raw), frozenset({Reject.MALFORMED_CBOR}))


def _non_canonical(draw: st.DrawFn, f: dict[str, Any]) -> Case:
    """Valid CBOR of the same map, but not its canonical encoding, re-signed."""
    if draw(st.booleans()):
        raw = cbor2.dumps(dict(reversed(f.items())))  # keys out of order
    else:  # version 1 as a one-byte-argument integer (0x18 0x01) instead of 0x01
        block = dagcbor.encode(f)
        head = dagcbor.encode("version") + b"\x01"
        assert block.count(head) == 1
        raw = block.replace(head, head[:-1] + b"\x18\x01")
    return Case("non-canonical", resign(None, block=raw), frozenset({Reject.NON_CANONICAL}))


def _asked_for(draw: st.DrawFn, f: dict[str, Any]) -> Case:
    """A valid batch, decoded by a caller that asked for the CID of another (or of itself)."""
    g = dict(f, seq=(f["seq"] + draw(st.integers(1, 2**32))) % 2**64)
    own = draw(st.booleans())
    asked = dagcbor.cid_of(dagcbor.encode(g if own else f))
    expected = ACCEPTED if own else Reject.CID_MISMATCH
    return _case("asked-for-cid", g, expected, expected_cid=asked)


def _time(draw: st.DrawFn, f: dict[str, Any]) -> Case:
    """A valid batch with a timestamp around NOW_MS, then checked for freshness."""
    side = draw(st.sampled_from([Reject.STALE, Reject.FUTURE, ACCEPTED]))
    if side == ACCEPTED:
        offset = draw(st.integers(-MAX_AGE_MS, MAX_AGE_MS))
    else:
        offset = draw(st.integers(MAX_AGE_MS + 1, 10 * MAX_AGE_MS))
        offset = -offset if side == Reject.STALE else offset
    return _case("time", dict(f, timestamp_ms=NOW_MS + offset), ACCEPTED, freshness=side)


def _harmless(draw: st.DrawFn, f: dict[str, Any]) -> Case:
    """Values any sender may choose: the batch stays valid (the control group)."""
    m = len(f["texts"])
    g = dict(
        f,
        seq=draw(st.integers(0, 2**64 - 1)),
        domain=draw(st.from_regex(r"[a-z0-9-]{1,32}", fullmatch=True)),
        model=draw(st.sampled_from(["m", "org/model:1", "a" * 128])),
        quality=draw(st.binary(min_size=2 * m, max_size=2 * m)),
        iteration=draw(st.binary(min_size=m, max_size=m)),
    )
    return _case("harmless", g, ACCEPTED)


MUTATIONS = {
    fn.__name__.strip("_"): fn
    for fn in (
        _rows,
        _shape,
        _dimension,
        _values,
        _padding,
        _text,
        _duplicate,
        _labels,
        _schema,
        _version,
        _bad_key,
        _signer,
        _oversize,
        _malformed,
        _non_canonical,
        _asked_for,
        _time,
        _harmless,
    )
}


@st.composite
def structured_mutations(draw: st.DrawFn) -> Case:
    fields = fields_of(draw(st.sampled_from(valid_envelopes())))
    return MUTATIONS[draw(st.sampled_from(sorted(MUTATIONS)))](draw, fields)


def check_structured(case: Case) -> list[str]:
    """Decode the case; check it ended as its mutation must; return the outcomes (for
    `reached`): the decoder's, and the freshness check's refusal when there was one."""
    result = outcome(case.envelope, expected_cid=case.expected_cid)
    got = ACCEPTED if isinstance(result, wire.SignedBatch) else result.reason.value
    _event(f"{case.kind} -> {got}")
    assert got in {str(e) for e in case.expected}, (case.kind, got, result)
    if isinstance(result, wire.SignedBatch):
        assert_sound(result)
        assert result.batch.sender == KEY.public_key
        if case.freshness is not None:
            try:
                wire.check_freshness(result.batch, NOW_MS, MAX_AGE_MS)
                fresh = ACCEPTED
            except WireError as exc:
                fresh = exc.reason.value
                _event(fresh)
            assert fresh == str(case.freshness), (case.kind, fresh)
            if fresh != ACCEPTED:
                return [got, fresh]
    elif result.reason in _BEFORE_SIGNATURE or case.kind in _SCHEMA_BEFORE_SIGNATURE:
        assert result.sender is None
    else:
        assert result.sender == KEY.public_key  # content errors are attributable
    return [got]


#: Refused before the signature is checked: nobody is provably to blame.
_BEFORE_SIGNATURE = frozenset(
    {
        Reject.OVERSIZE,
        Reject.MALFORMED_CBOR,
        Reject.NON_CANONICAL,
        Reject.UNKNOWN_VERSION,
        Reject.CID_MISMATCH,
        Reject.BAD_KEY,
        Reject.BAD_SIGNATURE,
    }
)
#: `schema` is both: a field missing, unknown or of the wrong type is found before the
#: signature; an unknown scale_dtype or an empty batch after it, as content of the signer's.
_SCHEMA_BEFORE_SIGNATURE = frozenset({"schema-drop", "schema-extra", "schema-type"})


@given(structured_mutations())
@settings(FUZZ, max_examples=200)
def test_structured_mutations_re_signed(case: Case) -> None:
    check_structured(case)


def reached(strategy: st.SearchStrategy[Any], check: Callable[[Any], list[str]]) -> Counter[str]:
    """Outcome label -> count over a derandomized run of `check`: the same examples on every
    machine and every run (for one hypothesis version), so a coverage check cannot flake."""
    seen: Counter[str] = Counter()

    @settings(FUZZ, max_examples=COVERAGE_EXAMPLES, derandomize=True, database=None)
    @given(strategy)
    def run(value: Any) -> None:
        seen.update(check(value))

    run()
    assert seen.total() >= COVERAGE_EXAMPLES  # the run happened, with every example counted
    return seen


COVERAGE_EXAMPLES = 300


def test_structured_mutations_reach_every_reason() -> None:
    """Every Reject reason, and an accepted batch, comes out of the structured mutations."""
    seen = reached(structured_mutations(), check_structured)
    missing = {r.value for r in Reject} | {ACCEPTED}
    assert not missing - seen.keys(), (sorted(missing - seen.keys()), seen)


def test_batch_maps_reach_rows_and_shapes() -> None:
    """The audit's finding, fixed: random batch maps now and then hold too many experiences
    or a column of the wrong shape, and a fair share of them is accepted."""
    seen = reached(batch_maps(), check_batch_map)
    for label in (Reject.TOO_MANY_EXPERIENCES, Reject.SHAPE_MISMATCH, ACCEPTED):
        assert seen[str(label)] >= 3, (label, seen)


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
