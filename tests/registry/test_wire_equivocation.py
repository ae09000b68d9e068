"""End to end: two real wire batches with one sequence number become on-chain slashing evidence.

The core only carries the operator's EIP-712 header signature; the registry only sees
headers. This test is the seam between them: if the header the core signs and the struct the
contract verifies ever drift apart (field order, digest, timestamp), it fails.
"""

from __future__ import annotations

import numpy as np
import pytest

from fai_core.experience import Experience
from fai_core.identity import NodeKey
from fai_core.wire import BatchHeader, decode_envelope, encode_batch
from fai_net.registry import errors
from fai_net.registry.client import SignedBatchHeader
from fai_net.registry.deploy import DEFAULT_MIN_BOND as MIN

from .conftest import Env


def _batch(env: Env, op, key: NodeKey, seq: int, text: str, ts: int) -> bytes:
    rng = np.random.default_rng(seq + len(text))
    vector = rng.standard_normal(16).astype(np.float32)
    exp = Experience.create(text, vector, 0.8, "coding", key.public_key, ts)

    def operator_signer(header: BatchHeader) -> bytes:
        signed = env.reg.sign_batch_header(
            op, header.sender, header.seq, header.cid_digest, header.timestamp_ms
        )
        return signed.signature

    signed = encode_batch(
        [exp],
        key=key,
        seq=seq,
        timestamp_ms=ts,
        model="test-model",
        baseline=np.zeros(16, np.float32),
        group=8,
        operator_signer=operator_signer,
    )
    return signed.envelope


def _evidence(envelope: bytes) -> SignedBatchHeader:
    """What a receiving node keeps from a batch it accepted: the header and its signature."""
    received = decode_envelope(envelope)
    header = received.batch.header
    return SignedBatchHeader(
        header.sender,
        header.seq,
        header.cid_digest,
        header.timestamp_ms,
        received.operator_signature,
    )


def test_two_wire_batches_with_one_seq_slash_their_operator(env: Env):
    op, reporter = env.ops[0], env.outsider
    node = NodeKey(bytes(range(32)))
    env.reg.register(op, 20 * MIN)
    env.reg.advertise(op, node, ["/ip4/127.0.0.1/tcp/4001"])

    first = _evidence(_batch(env, op, node, 9, "retry flaky network calls with backoff", 1000))
    second = _evidence(_batch(env, op, node, 9, "pin dependencies before upgrading", 1000))
    assert first.cid_digest != second.cid_digest and first.seq == second.seq

    # What a receiver checks before keeping a header as evidence.
    assert env.reg.header_signer_operator(first) == op.address
    assert env.reg.header_signer_operator(second) == op.address

    env.reg.slash_equivocation(reporter, first, second)
    info = env.reg.operator(op.address)
    assert info.jailed and not env.reg.is_live(op.address)
    assert env.reg.contract.functions.isEquivocationSlashed(op.address, node.public_key, 9).call()


def test_a_batch_republished_unchanged_is_not_equivocation(env: Env):
    op = env.ops[1]
    node = NodeKey(bytes(range(1, 33)))
    env.reg.register(op, 20 * MIN)
    env.reg.advertise(op, node, ["/ip4/127.0.0.1/tcp/4002"])
    envelope = _batch(env, op, node, 4, "read the traceback before editing", 2000)
    # Gossip redelivers the same bytes; submitted as "evidence" they prove nothing.
    with pytest.raises(errors.NotEquivocation):
        env.reg.slash_equivocation(env.outsider, _evidence(envelope), _evidence(envelope))
    assert env.reg.is_live(op.address)
