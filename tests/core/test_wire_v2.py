"""Wire format version 2: the baseline by reference, float16 scales, short keys.

What a receiver relies on: a v2 batch decodes with or without its baseline block, and
completes only with the block it names; a block swapped by a relay is refused before the
signature (charged to nobody but the relay), while a block the signer committed to that
breaks the rules is the signer's fault; a v1 block never passes as v2 nor the reverse; the
independent `dag_cbor` codec reads and re-encodes v2 envelopes byte for byte; and the sizes
the issue asked for hold (one experience <= 500 bytes all-in).
"""

from __future__ import annotations

import dag_cbor
import numpy as np
import pytest

from fai_core import bitdelta, dagcbor, wire
from fai_core.baseline_block import (
    BLOCK_FIELDS,
    BaselineBlock,
    BaselinePublisher,
    baseline_drift,
    decode_baseline_block,
    make_baseline_block,
    reference_block,
)
from fai_core.corpus import load_pattern_corpus
from fai_core.errors import Reject, WireError
from fai_core.experience import Experience
from tests.support.wire import KEY, experiences

MODEL = "all-MiniLM-L6-v2"
D = 20


def block(d: int = D, model: str = MODEL, seed: int = 1) -> BaselineBlock:
    mean = np.random.default_rng(seed).standard_normal(d) * 0.1
    return make_baseline_block(mean, model)


def encode_v2(exps=None, *, base=None, attach=True, seq=7, key=KEY, group=8, signer=None):
    exps = experiences() if exps is None else exps
    return wire.encode_batch_v2(
        exps,
        key=key,
        seq=seq,
        timestamp_ms=1_700_000_000_123,
        baseline=base or block(exps[0].dimension),
        attach_baseline=attach,
        group=group,
        operator_signer=signer,
    )


#: Position of each item in a version 2 batch array.
AT = {name: i for i, (name, _) in enumerate(wire.V2_ITEMS)}


def items_of(signed: wire.SignedBatch) -> list:
    return dagcbor.decode(dagcbor.decode(signed.envelope)["b"])


def resign_v2(items: list, *, attach: bytes | None = None, key=KEY) -> bytes:
    """A v2 envelope over the batch array `items`, validly signed by `key`."""
    raw = dagcbor.encode(items)
    env = {"b": raw, "s": key.sign(wire.BATCH_SIGNATURE_CONTEXT_V2, dagcbor.cid_of(raw))}
    if attach is not None:
        env["a"] = attach
    return dagcbor.encode(env)


# -- round trips ---------------------------------------------------------------------------


def test_attached_v2_batch_round_trips_and_reconstructs_against_the_block():
    base = block()
    signed = encode_v2(base=base)
    got = wire.decode_envelope(signed.envelope, expected_cid=signed.cid)
    batch = got.batch
    assert batch.version == 2 and batch.resolved and batch.baseline_cid == base.cid
    assert got.baseline_block is not None and got.baseline_block.data == base.data
    assert batch.scale_dtype == "f16" and batch.model == MODEL and batch.dim == D
    exps = experiences()
    code = bitdelta.encode(np.stack([e.embedding for e in exps]), base.values, 8, "f16")
    expected = bitdelta.decode(code, base.values)
    np.testing.assert_array_equal(batch.embeddings(), expected)
    assert batch.texts == tuple(e.text for e in exps)
    np.testing.assert_array_equal(batch.signs, signed.batch.signs)


def test_unattached_batch_is_unresolved_until_completed_with_its_block():
    base = block()
    signed = encode_v2(base=base, attach=False)
    got = wire.decode_envelope(signed.envelope)
    assert got.baseline_block is None and not got.batch.resolved
    with pytest.raises(ValueError, match="not resolved"):
        got.batch.embeddings()
    done = got.batch.with_baseline(base)
    np.testing.assert_array_equal(done.embeddings(), signed.batch.embeddings())
    assert done.cid == got.batch.cid


def test_attaching_changes_the_envelope_but_not_the_batch_or_its_cid():
    base = block()
    with_block, without = encode_v2(base=base), encode_v2(base=base, attach=False)
    assert with_block.cid == without.cid
    assert len(with_block.envelope) - len(without.envelope) >= len(base.data)


def test_completing_with_another_block_is_refused():
    signed = encode_v2(base=block(seed=1), attach=False)
    batch = wire.decode_envelope(signed.envelope).batch
    with pytest.raises(WireError, match="not this batch's baseline") as info:
        batch.with_baseline(block(seed=2))
    assert info.value.reason == Reject.CID_MISMATCH


# -- who is at fault -----------------------------------------------------------------------


def test_swapped_attachment_is_refused_before_the_signature_so_the_signer_is_not_charged():
    signed = encode_v2(base=block(seed=1))
    env = dagcbor.decode(signed.envelope)
    env["a"] = block(seed=2).data  # a relay swaps the attached block
    with pytest.raises(WireError, match="attached baseline") as info:
        wire.decode_envelope(dagcbor.encode(env))
    assert info.value.reason == Reject.CID_MISMATCH and info.value.sender is None


def test_block_of_another_model_or_dim_is_the_signers_fault():
    for bad, reason in ((block(model="bad model"), Reject.BAD_MODEL), (block(d=16), None)):
        items = items_of(encode_v2())
        items[AT["baseline"]] = bad.cid
        data = resign_v2(items, attach=bad.data)
        with pytest.raises(WireError, match="baseline") as info:
            wire.decode_envelope(data)
        assert info.value.sender == KEY.public_key
        assert info.value.reason == (reason or Reject.SHAPE_MISMATCH)


def test_the_model_id_travels_in_the_block_only():
    base = block(model="some-other-model")
    unresolved = wire.decode_envelope(encode_v2(base=base, attach=False).envelope).batch
    assert unresolved.model is None
    assert unresolved.with_baseline(base).model == "some-other-model"
    assert wire.decode_envelope(encode_v2(base=base).envelope).batch.model == "some-other-model"


def test_block_with_non_finite_values_is_the_signers_fault():
    raw = dagcbor.encode({"m": MODEL, "w": D, "f": np.full(D, np.inf, "<f2").tobytes()})
    items = items_of(encode_v2())
    items[AT["baseline"]] = dagcbor.cid_of(raw)
    with pytest.raises(WireError, match="NaN or Inf") as info:
        wire.decode_envelope(resign_v2(items, attach=raw))
    assert info.value.reason == Reject.NON_FINITE and info.value.sender == KEY.public_key


def test_baseline_reference_must_be_a_dag_cbor_sha256_cid():
    items = items_of(encode_v2(attach=False))
    items[AT["baseline"]] = b"\x01\x55\x12\x20" + bytes(32)  # raw codec, not dag-cbor
    with pytest.raises(WireError, match="CIDv1") as info:
        wire.decode_envelope(resign_v2(items))
    assert info.value.reason == Reject.SCHEMA and info.value.sender == KEY.public_key


# -- versions never mix ----------------------------------------------------------------------


def test_v1_block_in_a_v2_envelope_and_v2_block_in_a_v1_envelope_are_unknown_versions():
    v2 = dagcbor.decode(encode_v2(attach=False).envelope)
    v1_envelope = dagcbor.encode({"batch": v2["b"], "sig": v2["s"]})
    with pytest.raises(WireError, match="must be a map") as info:
        wire.decode_envelope(v1_envelope)
    assert info.value.reason == Reject.SCHEMA
    items = dagcbor.decode(v2["b"])
    items[0] = 1
    with pytest.raises(WireError, match="version") as info:
        wire.decode_envelope(resign_v2(items))
    assert info.value.reason == Reject.UNKNOWN_VERSION
    v1 = wire.encode_batch(
        experiences(), key=KEY, seq=1, timestamp_ms=1, model=MODEL, baseline=np.zeros(D), group=8
    )
    v1_block = dagcbor.decode(v1.envelope)["batch"]
    with pytest.raises(WireError, match="array") as info:
        wire.decode_envelope(dagcbor.encode({"b": v1_block, "s": v2["s"]}))
    assert info.value.reason == Reject.SCHEMA


def test_v1_signature_context_does_not_verify_a_v2_batch():
    v2 = dagcbor.decode(encode_v2(attach=False).envelope)
    v2["s"] = KEY.sign(wire.BATCH_SIGNATURE_CONTEXT, dagcbor.cid_of(v2["b"]))
    with pytest.raises(WireError, match="does not verify") as info:
        wire.decode_envelope(dagcbor.encode(v2))
    assert info.value.reason == Reject.BAD_SIGNATURE


def _set(name, value):
    return lambda items: items.__setitem__(AT[name], value)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda f: f.__setitem__(AT["scales"], f[AT["scales"]][:-2]), Reject.SHAPE_MISMATCH),
        (_set("scales", np.full(3 * 3, np.nan, "<f2").tobytes()), Reject.NON_FINITE),
        (_set("texts", []), Reject.SCHEMA),
        (_set("domain", "Bad Domain"), Reject.BAD_DOMAIN),
        (_set("dim", 0), Reject.BAD_DIMENSION),
        (_set("group", 21), Reject.BAD_DIMENSION),
        (_set("texts", ["a  b", "c", "d"]), Reject.BAD_TEXT),
        (_set("quality", b"\x00"), Reject.SHAPE_MISMATCH),
    ],
    ids=["short scales", "NaN scale", "no texts", "domain", "dim 0", "group", "text", "quality"],
)
def test_v2_content_rules_are_v1_rules_charged_to_the_signer(change, reason):
    items = items_of(encode_v2(attach=False))
    change(items)
    with pytest.raises(WireError) as info:
        wire.decode_envelope(resign_v2(items))
    assert info.value.reason == reason, info.value
    assert info.value.sender == KEY.public_key


@pytest.mark.parametrize(
    "change",
    [lambda f: f.append(1), lambda f: f.pop(), _set("seq", "7"), _set("texts", "x")],
    ids=["extra item", "missing item", "seq as text", "texts as text"],
)
def test_v2_arity_and_types_are_schema_errors_before_the_signature(change):
    items = items_of(encode_v2(attach=False))
    change(items)
    with pytest.raises(WireError, match="batch") as info:
        wire.decode_envelope(resign_v2(items))
    assert info.value.reason == Reject.SCHEMA and info.value.sender is None


def test_envelope_version_reads_the_keys_only():
    assert wire.envelope_version(encode_v2().envelope) == 2
    v1 = wire.encode_batch(
        experiences(), key=KEY, seq=1, timestamp_ms=1, model=MODEL, baseline=np.zeros(D), group=8
    )
    assert wire.envelope_version(v1.envelope) == 1
    assert wire.envelope_version(b"\xff") is None
    assert wire.envelope_version(dagcbor.encode([1])) is None


# -- the block itself ------------------------------------------------------------------------


def test_block_rounds_to_float16_and_refuses_what_float16_cannot_hold():
    mean = np.array([0.1, -0.2, 1 / 3, 0.0], dtype=np.float64)
    b = make_baseline_block(mean, MODEL)
    np.testing.assert_array_equal(b.values, mean.astype(np.float32).astype(np.float16))
    assert set(dagcbor.decode(b.data)) == set(BLOCK_FIELDS) and len(b.data) < 2 * 4 + 40
    with pytest.raises(ValueError, match="float16"):
        make_baseline_block(np.array([70000.0]), MODEL)
    with pytest.raises(ValueError, match="non-finite"):
        make_baseline_block(np.array([np.nan]), MODEL)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (dagcbor.encode({"m": MODEL, "w": 2, "f": b"\x00" * 3}), Reject.SHAPE_MISMATCH),
        (dagcbor.encode({"m": MODEL, "w": 0, "f": b""}), Reject.BAD_DIMENSION),
        (dagcbor.encode({"m": MODEL, "w": 1}), Reject.SCHEMA),
        (dagcbor.encode({"m": MODEL, "w": 1, "f": b"\x00\x00", "x": 1}), Reject.SCHEMA),
        (dagcbor.encode({"m": 1, "w": 1, "f": b"\x00\x00"}), Reject.SCHEMA),
        (dagcbor.encode([1, 2]), Reject.SCHEMA),
        (b"\xa1\x61", Reject.MALFORMED_CBOR),
    ],
    ids=["shape", "dim 0", "missing", "extra", "type", "not a map", "truncated"],
)
def test_block_decoding_refuses_with_a_reason(raw, reason):
    with pytest.raises(WireError) as info:
        decode_baseline_block(raw, dagcbor.cid_of(raw))
    assert info.value.reason == reason, info.value


def test_block_with_wrong_hash_or_oversize_is_refused_first():
    good = block()
    with pytest.raises(WireError, match="hash") as info:
        decode_baseline_block(good.data, block(seed=9).cid)
    assert info.value.reason == Reject.CID_MISMATCH
    with pytest.raises(WireError, match="bytes") as info:
        decode_baseline_block(bytes(20_000), good.cid)
    assert info.value.reason == Reject.OVERSIZE


def test_drift_is_the_l2_distance_to_the_published_values():
    b = make_baseline_block(np.zeros(4), MODEL)
    assert baseline_drift(b, np.array([0.3, 0.4, 0.0, 0.0])) == pytest.approx(0.5)
    assert baseline_drift(b, np.zeros(5)) == float("inf")


# -- independent codec and sizes -------------------------------------------------------------


@pytest.mark.parametrize("attach", [True, False])
def test_independent_implementation_reads_v2_envelope_batch_and_block(attach):
    signed = encode_v2(attach=attach, signer=lambda h: b"\x1c" * 65)
    env = dag_cbor.decode(signed.envelope)
    assert dag_cbor.encode(env) == signed.envelope
    assert set(env) == {"b", "s", "o"} | ({"a"} if attach else set())
    fields = dag_cbor.decode(env["b"])
    assert dag_cbor.encode(fields) == env["b"] and len(fields) == len(wire.V2_ITEMS)
    assert fields[0] == 2 and fields[1] == KEY.public_key
    if attach:
        blk = dag_cbor.decode(env["a"])
        assert dag_cbor.encode(blk) == env["a"] and set(blk) == set(BLOCK_FIELDS)


def test_one_experience_batch_is_at_most_500_bytes_all_in_at_d384():
    """The issue's target, with the longest text of the shipped 1,279-pattern corpus (220
    bytes; the median is 113) and a time-based seq and timestamp (9 bytes each)."""
    text = max((t for _, t in load_pattern_corpus()), key=lambda t: len(t.encode()))
    assert len(text.encode()) == 220
    rng = np.random.default_rng(3)
    vec = rng.standard_normal(384).astype(np.float32)
    exp = Experience(text, vec / np.linalg.norm(vec), 0.8, "coding", KEY.public_key, 0, 0)
    base = make_baseline_block(rng.standard_normal(384) * 0.05, MODEL)
    signed = wire.encode_batch_v2(
        [exp], key=KEY, seq=2**40, timestamp_ms=2**42, baseline=base, attach_baseline=False
    )
    assert len(signed.envelope) <= 500, len(signed.envelope)
    v1 = wire.encode_batch(
        [exp], key=KEY, seq=2**40, timestamp_ms=2**42, model=MODEL, baseline=base.values
    )
    assert len(v1.envelope) - len(signed.envelope) > 1500
    attached = wire.encode_batch_v2(
        [exp], key=KEY, seq=2**40, timestamp_ms=2**42, baseline=base, attach_baseline=True
    )
    assert len(attached.envelope) == len(signed.envelope) + 2 + 3 + len(base.data)


# -- when a sender makes a new block ---------------------------------------------------------


def test_reference_blocks_are_pinned():
    """Every node derives the fleet's reference block; a different CID anywhere would make
    batches against it unresolvable there. The MiniLM one is the shipped corpus mean."""
    minilm = reference_block("all-MiniLM-L6-v2", 384)
    assert minilm.cid_text == "bafyreiba43bssn4st34fezfriwur674cju4obpejgra4cojfbiy5spwsuu"
    assert 0.3 < float(np.linalg.norm(minilm.values)) < 0.35
    hashing = reference_block("fai-hashing-v2-d384", 384)
    assert not hashing.values.any() and hashing.model == "fai-hashing-v2-d384"
    assert reference_block("all-MiniLM-L6-v2", 16).dim == 16  # other shapes: zeros


def test_publisher_keeps_the_reference_until_the_library_is_large_enough():
    ref = make_baseline_block(np.zeros(4), MODEL)
    pub = BaselinePublisher(ref, drift=0.2, min_rows=64)
    far = np.array([0.5, 0.0, 0.0, 0.0])
    assert pub.for_batch(far, 63, "coding") == (ref, False)  # never attached: well known
    block, attach = pub.for_batch(far, 64, "coding")
    assert block.cid != ref.cid and attach and pub.blocks_made == 1
    pub.attached("coding")
    assert pub.for_batch(far, 65, "coding") == (block, False)
    assert pub.for_batch(far, 65, "writing") == (block, True)  # each topic gets it once
    pub.attached("writing")
    assert pub.for_batch(np.array([0.5, 0.19, 0, 0]), 66, "writing") == (block, False)
    moved, attach = pub.for_batch(np.array([0.5, 0.21, 0, 0]), 66, "writing")
    assert moved.cid != block.cid and attach and pub.blocks_made == 2
    assert pub.for_batch(far, 67, "coding")[1]  # a new block goes out on every topic again
