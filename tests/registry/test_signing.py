"""Off-chain halves of the protocol: EIP-712 batch headers, advertisements, Ed25519 proofs."""

from __future__ import annotations

import os

import pytest
from eth_account import Account
from nacl.signing import SigningKey

from fai_net.registry import (
    PossessionRefused,
    PossessionResponder,
    multiaddrs_hash,
    prove_possession,
    recover_batch_header_signer,
    sign_batch_header,
    verify_possession,
)
from fai_net.registry.client import SignedBatchHeader
from fai_net.registry.errors import ErrorDecoder, UnknownRevert

from .conftest import Env

REGISTRY = "0x" + "ab" * 20
ACCOUNT = Account.from_key(b"\x07" * 32)
HEADER = dict(
    peer_key=b"\x11" * 32, seq=42, cid_digest=b"\x22" * 32, timestamp_ms=1_700_000_000_123
)


def test_batch_header_sign_and_recover():
    sig = sign_batch_header(ACCOUNT, 31337, REGISTRY, **HEADER)
    assert len(sig) == 65 and sig[64] in (27, 28)
    assert recover_batch_header_signer(sig, 31337, REGISTRY, **HEADER) == ACCOUNT.address
    assert sign_batch_header(ACCOUNT.key, 31337, REGISTRY, **HEADER) == sig  # key or account


@pytest.mark.parametrize(
    "change",
    [
        {"chain_id": 1},
        {"registry_address": "0x" + "cd" * 20},
        {"seq": 43},
        {"cid_digest": b"\x23" * 32},
        {"timestamp_ms": 1},
        {"peer_key": b"\x12" * 32},
    ],
)
def test_recovery_binds_every_field(change):
    sig = sign_batch_header(ACCOUNT, 31337, REGISTRY, **HEADER)
    args = {"chain_id": 31337, "registry_address": REGISTRY, **HEADER, **change}
    assert recover_batch_header_signer(sig, **args) != ACCOUNT.address


@pytest.mark.parametrize(
    ("bad", "why"),
    [
        ({"peer_key": b"\x11" * 31}, r"^peer_key must be 32 bytes, got "),
        ({"cid_digest": "00" * 32}, r"^cid_digest must be 32 bytes, got "),
        ({"seq": -1}, r"^seq must be an unsigned 64-bit integer, got -1$"),
        (
            {"timestamp_ms": 2**64},
            rf"^timestamp_ms must be an unsigned 64-bit integer, got {2**64}$",
        ),
    ],
)
def test_batch_header_rejects_malformed_values(bad, why):
    with pytest.raises(ValueError, match=why):
        sign_batch_header(ACCOUNT, 31337, REGISTRY, **{**HEADER, **bad})


def test_digests_match_the_contract(env: Env):
    """eth-account and the contract agree on the EIP-712 digest for both message types."""
    from eth_account.messages import _hash_eip191_message, encode_typed_data
    from eth_utils import keccak

    from fai_net.registry import eip712

    reg = env.reg
    msg = eip712.batch_header_message(**HEADER)
    ours = _hash_eip191_message(
        encode_typed_data(eip712.domain(reg.chain_id, reg.address), eip712.BATCH_HEADER_TYPES, msg)
    )
    struct = (HEADER["peer_key"], HEADER["seq"], HEADER["cid_digest"], HEADER["timestamp_ms"])
    assert reg.contract.functions.hashBatchHeader(struct).call() == ours
    assert eip712.batch_header_digest(reg.chain_id, reg.address, *struct) == ours
    ours_header = ours

    addrs = ["/ip4/127.1.2.3/tcp/1", "/dns6/x.example/udp/2/quic-v1"]
    proof = bytes(range(64))
    ad = eip712.advertisement_message(ACCOUNT.address, b"\x11" * 32, addrs, 1000, 3, proof)
    ours = _hash_eip191_message(
        encode_typed_data(eip712.domain(reg.chain_id, reg.address), eip712.ADVERTISEMENT_TYPES, ad)
    )
    theirs = reg.contract.functions.hashAdvertisement(
        ACCOUNT.address, b"\x11" * 32, multiaddrs_hash(addrs), keccak(proof), 1000, 3
    ).call()
    assert theirs == ours

    # The equivocation commitment: header digests and the beneficiary.
    other = (b"\x11" * 32, 7, b"\x23" * 32, 1_700_000_000_000)
    digest_b = eip712.batch_header_digest(reg.chain_id, reg.address, *other)
    assert reg.contract.functions.hashBatchHeader(other).call() == digest_b
    assert reg.contract.functions.equivocationCommitment(
        struct, other, ACCOUNT.address
    ).call() == eip712.equivocation_commitment(ours_header, digest_b, ACCOUNT.address)


def test_client_header_signature_recovers(env: Env):
    op = env.ops[0]
    h: SignedBatchHeader = env.reg.sign_batch_header(op, b"\x01" * 32, 1, b"\x02" * 32, 5)
    signer = recover_batch_header_signer(
        h.signature, env.reg.chain_id, env.reg.address, h.peer_key, h.seq, h.cid_digest, 5
    )
    assert signer == op.address


def test_possession_proof():
    node_key = SigningKey(b"\x05" * 32)
    peer_key = bytes(node_key.verify_key)
    nonce = os.urandom(16)
    ctx = (31337, REGISTRY, ACCOUNT.address)
    sig = prove_possession(node_key, *ctx, nonce)
    assert verify_possession(peer_key, sig, *ctx, nonce)
    assert not verify_possession(peer_key, sig, 1, REGISTRY, ACCOUNT.address, nonce)
    assert not verify_possession(peer_key, sig, 31337, "0x" + "cd" * 20, ACCOUNT.address, nonce)
    assert not verify_possession(peer_key, sig, 31337, REGISTRY, "0x" + "01" * 20, nonce)
    assert not verify_possession(peer_key, sig, *ctx, os.urandom(16))
    other = bytes(SigningKey(b"\x06" * 32).verify_key)
    assert not verify_possession(other, sig, *ctx, nonce)
    assert not verify_possession(peer_key, sig[:63] + bytes([sig[63] ^ 1]), *ctx, nonce)
    with pytest.raises(ValueError, match="nonce"):
        prove_possession(node_key, *ctx, b"short")


def test_decoder_reports_unknown_selector():
    err = ErrorDecoder([]).from_revert_data("0xdeadbeef")
    assert isinstance(err, UnknownRevert)
    assert "0xdeadbeef" in str(err)


@pytest.mark.parametrize(
    "args",
    [
        {"peer_key": b"\x01" * 31},  # wrong key length
        {"peer_key": "not bytes"},
        {"signature": b"\x00" * 10},  # short signature
        {"signature": None},
        {"operator": "0x1234"},  # malformed address
        {"registry_address": "nope"},
        {"nonce": b"short"},
        {"chain_id": -1},
    ],
)
def test_verify_possession_is_false_on_malformed_input(args):
    node_key = SigningKey(b"\x05" * 32)
    nonce = b"\x09" * 16
    good = {
        "peer_key": bytes(node_key.verify_key),
        "signature": prove_possession(node_key, 31337, REGISTRY, ACCOUNT.address, nonce),
        "chain_id": 31337,
        "registry_address": REGISTRY,
        "operator": ACCOUNT.address,
        "nonce": nonce,
    }
    assert verify_possession(**good)
    assert verify_possession(**{**good, **args}) is False


def test_responder_signs_only_for_its_own_operator():
    """Relay attack: M advertises H's peer key and forwards a verifier's challenge for M to H.
    H's responder refuses, and a proof H gives for itself does not verify for M."""
    h_key = SigningKey(b"\x05" * 32)
    mallory = "0x" + "01" * 20
    responder = PossessionResponder(h_key, 31337, REGISTRY, ACCOUNT.address)
    nonce = os.urandom(16)
    with pytest.raises(PossessionRefused, match="refusing"):
        responder.respond(nonce, operator=mallory)
    operator, sig = responder.respond(nonce, operator=ACCOUNT.address.lower())
    assert operator == ACCOUNT.address
    assert verify_possession(responder.peer_key, sig, 31337, REGISTRY, operator, nonce)
    assert not verify_possession(responder.peer_key, sig, 31337, REGISTRY, mallory, nonce)


def test_verifier_checks_the_on_chain_owner_of_the_key(env: Env):
    h, m = env.ops[:2]
    h_key = SigningKey(b"\x05" * 32)
    peer_key = bytes(h_key.verify_key)
    env.reg.register(h)
    env.reg.register(m)
    env.reg.advertise(h, h_key, ["/ip4/127.0.0.1/tcp/1"])
    responder = PossessionResponder(h_key, env.reg.chain_id, env.reg.address, h.address)
    # M squats H's key, reusing H's binding proof from H's advertisement (it names H).
    env.reg.advertise(m, peer_key, ["/ip4/127.0.0.9/tcp/1"], key_proof=responder.binding_proof())
    nonce = os.urandom(16)
    operator, sig = responder.respond(nonce)
    assert env.reg.verify_peer_possession(operator, peer_key, sig, nonce)
    # A valid Ed25519 proof for M over H's key is not enough: the key is attributed to H.
    forged = prove_possession(h_key, env.reg.chain_id, env.reg.address, m.address, nonce)
    assert not env.reg.verify_peer_possession(m.address, peer_key, forged, nonce)
    unbound = bytes(SigningKey(b"\x06" * 32).verify_key)
    assert not env.reg.verify_peer_possession(h.address, unbound, sig, nonce)
    assert not env.reg.verify_peer_possession(h.address, b"\x01", sig, nonce)
    assert not env.reg.verify_peer_possession("0xbad", peer_key, sig, nonce)


def test_every_contract_error_has_a_typed_python_class():
    from fai_net.registry import errors
    from fai_net.registry.artifacts import registry_artifact, token_artifact

    classes = {c.__name__ for c in errors._known_classes().values()}
    for art in (registry_artifact(), token_artifact()):
        for item in art.abi:
            if item["type"] == "error":
                assert item["name"] in classes, f"{art.name}.{item['name']} has no class"


def test_token_errors_are_typed(env: Env):
    from fai_net.registry import errors

    token = env.reg.token.functions
    with pytest.raises(errors.ERC20InvalidReceiver):
        env.reg.tx.send(env.owner, token.transfer("0x" + "00" * 20, 1))
    with pytest.raises(errors.ERC20InvalidSpender):
        env.reg.tx.send(env.owner, token.approve("0x" + "00" * 20, 1))
    with pytest.raises(errors.ERC20InsufficientBalance, match="needed"):
        env.reg.tx.send(env.outsider, token.transfer(env.owner.address, 1))
