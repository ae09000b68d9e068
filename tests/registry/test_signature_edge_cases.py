"""Signature edge cases the contract must keep rejecting (high-s, malformed, cross-type)."""

from __future__ import annotations

from dataclasses import replace

import pytest
from eth_utils import keccak

from fai_net.registry import eip712, errors
from fai_net.registry.deploy import DEFAULT_MIN_BOND as MIN

from .conftest import Env, digest, node_key, peer_key

SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
ADDRS = ["/ip4/127.0.0.1/tcp/1"]


def _high_s(sig: bytes) -> bytes:
    """The other valid (r, n - s, v ^ 1) encoding of the same signature."""
    r, s, v = sig[:32], int.from_bytes(sig[32:64], "big"), sig[64]
    return r + (SECP256K1_N - s).to_bytes(32, "big") + bytes([55 - v])  # 27 <-> 28


def _encode_type(types: dict) -> str:
    ((name, fields),) = types.items()
    return f"{name}({','.join(f['type'] + ' ' + f['name'] for f in fields)})"


def test_python_type_strings_equal_the_contract_typehashes(env: Env):
    f = env.reg.contract.functions
    assert (
        keccak(text=_encode_type(eip712.ADVERTISEMENT_TYPES)) == f.ADVERTISEMENT_TYPEHASH().call()
    )
    assert keccak(text=_encode_type(eip712.BATCH_HEADER_TYPES)) == f.BATCH_HEADER_TYPEHASH().call()


def test_high_s_twin_is_rejected_everywhere(env: Env):
    op = env.ops[0]
    env.reg.register(op, MIN)
    ad = env.reg.sign_advertisement(op, node_key(1), ADDRS, ttl=3600)
    with pytest.raises(errors.InvalidSignature):
        env.reg.post_advertisement(replace(ad, signature=_high_s(ad.signature)), env.outsider)
    env.reg.post_advertisement(ad, env.outsider)

    a = env.reg.sign_batch_header(op, peer_key(1), 5, digest(1), 1)
    b = env.reg.sign_batch_header(op, peer_key(1), 5, digest(2), 1)
    with pytest.raises(errors.InvalidSignature):
        env.reg.slash_equivocation(env.outsider, replace(a, signature=_high_s(a.signature)), b)
    with pytest.raises(errors.InvalidSignature):
        env.reg.slash_equivocation(env.outsider, a, replace(b, signature=_high_s(b.signature)))
    env.reg.slash_equivocation(env.outsider, a, b)


@pytest.mark.parametrize(
    "mangle",
    [
        lambda s: s[:64] + bytes([s[64] - 27]),  # raw recovery id 0/1 instead of 27/28
        lambda s: b"\x00" * 32 + s[32:],  # r = 0: ecrecover yields the zero address
        lambda s: s + b"\x00",  # 66 bytes
        lambda s: s[:32] + s[32:64],  # 64-byte (EIP-2098-like) form is not accepted
    ],
)
def test_malformed_header_signatures_never_slash(env: Env, mangle):
    op = env.ops[0]
    env.reg.register(op, MIN)
    env.reg.advertise(op, node_key(1), ADDRS)
    a = env.reg.sign_batch_header(op, peer_key(1), 5, digest(1), 1)
    b = env.reg.sign_batch_header(op, peer_key(1), 5, digest(2), 1)
    with pytest.raises(errors.InvalidSignature):
        env.reg.slash_equivocation(env.outsider, a, replace(b, signature=mangle(b.signature)))
    assert not env.reg.operator(op.address).jailed


def test_advertisement_signature_is_not_a_header_signature(env: Env):
    """Both types share one domain; only the typehash keeps them apart."""
    op = env.ops[0]
    env.reg.register(op, MIN)
    env.reg.advertise(op, node_key(1), ADDRS)
    ad = env.reg.sign_advertisement(op, node_key(1), ADDRS, ttl=3600)
    a = env.reg.sign_batch_header(op, peer_key(1), 5, digest(1), 1)
    b = env.reg.sign_batch_header(op, peer_key(1), 5, digest(2), 1)
    with pytest.raises(errors.InvalidSignature):
        env.reg.slash_equivocation(env.outsider, a, replace(b, signature=ad.signature))


def test_headers_for_a_key_owned_by_someone_else_slash_nobody(env: Env):
    """An operator signing headers under another operator's peer key cannot get that
    operator slashed, nor is it slashable itself for them: such headers are not evidence, so
    receiving nodes must drop them (`RegistryClient.header_signer_operator` is None)."""
    owner, other = env.ops[:2]
    for op in (owner, other):
        env.reg.register(op, MIN)
    env.reg.advertise(owner, node_key(1), ADDRS)
    a = env.reg.sign_batch_header(other, peer_key(1), 5, digest(1), 1)
    b = env.reg.sign_batch_header(other, peer_key(1), 5, digest(2), 1)
    assert env.reg.header_signer_operator(a) is None
    with pytest.raises(errors.InvalidSignature):
        env.reg.slash_equivocation(env.outsider, a, b)
    assert not env.reg.operator(owner.address).jailed
    assert not env.reg.operator(other.address).jailed
