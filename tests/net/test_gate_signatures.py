"""The gate's verdict on Ed25519 edge cases equals the spec's reference, and what a relay
is charged for.

The issue: a signature with a small-order R passes some libraries' default check and
fails PyNaCl/OpenSSL; since `bad_signature` is charged to the forwarder, an honest relay
could be framed by a sender it never met. With the rule pinned (docs/wire-format.md,
"Signatures") every conforming relay runs this same gate before forwarding, so it refuses
exactly what the node refuses; these tests pin the gate to the reference.
"""

from __future__ import annotations

import time

import pytest

from fai_core import dagcbor, wire
from fai_core.embedding import HashingEmbedder
from fai_core.experience import Experience
from fai_core.identity import NodeKey
from fai_core.reputation import ReputationBook
from fai_net.admission.gate import BatchGate, GatePolicy, Verdict
from fai_net.admission.membership import OpenMembership
from fai_net.admission.store import BatchStore
from tests.support import ed25519ref as ref

EMB = HashingEmbedder(384)
KEY = NodeKey(bytes([9]) * 32)
RELAY = NodeKey(bytes([10]) * 32).public_key


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@pytest.fixture
def gate(tmp_path):
    store = BatchStore.open(tmp_path / "store")
    g = BatchGate(store, OpenMembership(), ReputationBook(), GatePolicy(EMB.model_id, 384))
    g.domains = {"coding"}
    yield g
    store.close()


def _base_fields(stamp: int) -> dict:
    texts = ["retry flaky calls with backoff"]
    vectors = EMB.embed(texts)
    exps = [Experience.create(texts[0], vectors[0], 0.6, "coding", KEY.public_key, stamp)]
    signed = wire.encode_batch(
        exps, key=KEY, seq=0, timestamp_ms=stamp, model=EMB.model_id, baseline=vectors[0] * 0.5
    )
    return dict(dagcbor.decode(dagcbor.decode(signed.envelope)["batch"]))


def test_gate_verdict_equals_reference_on_edge_vectors(gate):
    base = _base_fields(now_ms())
    blocks: dict[bytes, bytes] = {}

    def message_for(pk: bytes, i: int) -> bytes:
        fields = dict(base, sender=pk, seq=i)
        block = dagcbor.encode(fields)
        message = wire.BATCH_SIGNATURE_CONTEXT + dagcbor.cid_of(block)
        blocks[message] = block
        return message

    accepted = 0
    for name, pk, msg, sig in ref.build_vectors(message_for):
        envelope = dagcbor.encode({"batch": blocks[msg], "sig": sig})
        r = gate.admit(envelope, now_ms(), origin="gossip", topic_domain="coding", forwarder=RELAY)
        expected = ref.verify_strict(pk, msg, sig)
        assert expected is ref.EXPECTED[name]
        if expected:
            assert r.verdict is Verdict.ACCEPT, (name, r.reason)
            accepted += 1
        else:
            assert (r.verdict, r.reason) == (Verdict.REJECT, "bad_signature"), name
            assert gate.reputation.score(pk) == 1.0  # an unverified sender is never charged
    assert accepted == 2


def test_relay_of_pinned_invalid_signatures_is_charged_not_the_claimed_sender(gate):
    """12 small-order-R batches (what a lax verifier accepts): their forwarder broke the
    pinned rule its own gate applies, so it is charged; the key they name is not."""
    base = _base_fields(now_ms())
    a, big_a = ref.secret_point(3)
    pk = ref.encode_point(big_a)
    identity = ref.encode_point(ref.IDENTITY)
    for seq in range(12):
        block = dagcbor.encode(dict(base, sender=pk, seq=seq))
        message = wire.BATCH_SIGNATURE_CONTEXT + dagcbor.cid_of(block)
        k = ref.challenge(identity, pk, message)
        sig = identity + (k * a % ref.L).to_bytes(32, "little")
        assert ref.verify_lax(pk, message, sig) and not ref.verify_strict(pk, message, sig)
        envelope = dagcbor.encode({"batch": block, "sig": sig})
        r = gate.admit(envelope, now_ms(), origin="gossip", topic_domain="coding", forwarder=RELAY)
        assert r.reason == "bad_signature"
    assert gate.reputation.deprioritised(RELAY)
    assert gate.reputation.score(pk) == 1.0


def test_bad_text_is_charged_to_its_signer_not_to_the_relay(gate):
    """NFC follows the Unicode version of the relay's Python, which the spec does not pin:
    an honest relay may pass a text this node finds unnormalised."""
    base = _base_fields(now_ms())
    fields = dict(base, texts=["cafe\u0301 au lait"])  # NFD: not normalised here
    block = dagcbor.encode(fields)
    sig = KEY.sign(wire.BATCH_SIGNATURE_CONTEXT, dagcbor.cid_of(block))
    envelope = dagcbor.encode({"batch": block, "sig": sig})
    for _ in range(12):
        r = gate.admit(envelope, now_ms(), origin="gossip", topic_domain="coding", forwarder=RELAY)
        assert r.reason == "bad_text"
    assert gate.reputation.score(RELAY) == 1.0
    assert gate.reputation.deprioritised(KEY.public_key)
