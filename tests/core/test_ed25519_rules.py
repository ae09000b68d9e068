"""The pinned Ed25519 rule (docs/wire-format.md, "Signatures"): edge-case vectors give the
same verdict in `fai_core.identity.verify`, in `decode_envelope`, and in the spec's
reference (`tests.support.ed25519ref.verify_strict`, pure Python, the rule written out
step by step).

A relay is charged for forwarding a batch whose signature fails, so every conforming node
must accept exactly the same signatures; each edge vector below is one a lax verifier
(`verify_lax`: reduced encodings, small orders allowed, cofactored equation) accepts.
"""

from __future__ import annotations

import hashlib
import random

import pytest

from fai_core import dagcbor, wire
from fai_core.errors import Reject, WireError
from fai_core.identity import SMALL_ORDER_Y, NodeKey, strict_encoding_ok, verify
from tests.support import ed25519ref as ref
from tests.support.wire import encode, fields_of, resign


def _message(public_key: bytes, i: int) -> bytes:
    return b"fai edge case " + hashlib.sha256(public_key).digest()[:4] + i.to_bytes(4, "big")


VECTORS = ref.build_vectors(_message)


def test_reference_passes_rfc8032_test_vectors():
    """RFC 8032 section 7.1, TEST 1-3 (the reference must accept what Ed25519 accepts)."""
    cases = [
        (
            "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
            "",
            "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc6"
            "1e39701cf9b46bd25bf5f0595bbe24655141438e7a100b",
        ),
        (
            "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
            "72",
            "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e45"
            "8f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00",
        ),
        (
            "fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025",
            "af82",
            "6291d657deec24024827e69c3abe01a30ce548a284743a445e3680d7db5ac3ac18ff9b538d16f290ae"
            "67f760984dc6594a7c15e9716ed28dc027beceea1ec40a",
        ),
    ]
    for pk, msg, sig in cases:
        args = bytes.fromhex(pk), bytes.fromhex(msg), bytes.fromhex(sig)
        assert ref.verify_strict(*args) and ref.verify_lax(*args)
        assert verify(args[0], b"", args[1], args[2])


def test_small_order_set_is_the_torsion_subgroup():
    t8 = ref.torsion_point_of_order_8()
    torsion = [ref.mul(k, t8) for k in range(8)]
    ys = {int.from_bytes(ref.encode_point(t), "little") & ((1 << 255) - 1) for t in torsion}
    assert ys == SMALL_ORDER_Y


@pytest.mark.parametrize("name", list(ref.EXPECTED))
def test_edge_vector_same_verdict_in_reference_and_verifier(name):
    (vector,) = [v for v in VECTORS if v[0] == name]
    _, pk, msg, sig = vector
    expected = ref.EXPECTED[name]
    assert ref.verify_strict(pk, msg, sig) is expected
    assert verify(pk, b"", msg, sig) is expected
    if "(both)" not in name:  # an edge case: some verifier that skips a pinned check accepts
        assert ref.verify_lax(pk, msg, sig)


def test_random_tampering_same_verdict():
    """Byte flips of valid signatures, keys and messages: verifier == reference."""
    rng = random.Random(7)
    seen = {True: 0, False: 0}
    for i in range(120):
        key = NodeKey(rng.randbytes(32))
        msg = rng.randbytes(rng.randrange(0, 64))
        pk, sig = key.public_key, key.sign(b"", msg)
        where = rng.randrange(4)
        if where == 0:
            pos = rng.randrange(64)
            sig = sig[:pos] + bytes([sig[pos] ^ (1 << rng.randrange(8))]) + sig[pos + 1 :]
        elif where == 1:
            pos = rng.randrange(32)
            pk = pk[:pos] + bytes([pk[pos] ^ (1 << rng.randrange(8))]) + pk[pos + 1 :]
        elif where == 2:
            msg = msg + b"x"
        verdict = verify(pk, b"", msg, sig)
        assert verdict is ref.verify_strict(pk, msg, sig), (i, where)
        seen[verdict] += 1
    assert seen[True] > 20 and seen[False] > 60


def _envelope(public_key: bytes, seq: int, signature: bytes | None = None) -> tuple[bytes, bytes]:
    """(envelope, signing message) of a well-formed batch claiming `public_key` as sender."""
    fields = fields_of(encode())
    fields["sender"], fields["seq"] = public_key, seq
    block = dagcbor.encode(fields)
    message = wire.BATCH_SIGNATURE_CONTEXT + dagcbor.cid_of(block)
    sig = signature if signature is not None else bytes(64)
    return dagcbor.encode({"batch": block, "sig": sig}), message


def test_decoder_verdict_equals_reference_on_batch_envelopes():
    """The same vectors built over real batch signing bytes (the message is the context and
    the CID of a batch with seq = i): decode_envelope refuses exactly the signatures the
    reference refuses, with bad_signature."""
    seq_of: dict[bytes, int] = {}

    def message_for(pk: bytes, i: int) -> bytes:
        message = _envelope(pk, i)[1]
        seq_of[message] = i
        return message

    for name, pk, msg, sig in ref.build_vectors(message_for):
        envelope, _ = _envelope(pk, seq_of[msg], sig)
        expected = ref.EXPECTED[name]
        assert ref.verify_strict(pk, msg, sig) is expected
        if expected:
            assert wire.decode_envelope(envelope).batch.sender == pk, name
        else:
            with pytest.raises(WireError) as info:
                wire.decode_envelope(envelope)
            assert info.value.reason is Reject.BAD_SIGNATURE and info.value.sender is None, name


def test_honest_signatures_still_verify():
    envelope = resign(fields_of(encode()))
    assert wire.decode_envelope(envelope).batch.sender == encode().batch.sender


def test_encoding_rules_do_not_rest_on_libsodium():
    """identity.py checks the S, A and R encodings itself, so a libsodium built without its
    strict checks (ED25519_COMPAT, or older than 1.0.16) would still give the pinned verdict;
    libsodium is left only the curve membership of A and the equation."""
    words = ("non-canonical", "small-order", "all-zero", "sign bit", "S >=")
    for name, pk, _msg, sig in VECTORS:
        assert strict_encoding_ok(pk, sig) is not any(w in name for w in words), name
