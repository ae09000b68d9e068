"""Signed peer advertisements: posting, relaying, renewal, expiry, replay protection."""

from __future__ import annotations

from dataclasses import replace

import pytest
from eth_account import Account
from web3 import Web3

from fai_net.registry import deploy_registry, errors
from fai_net.registry.client import MAX_AD_TTL
from fai_net.registry.possession import verify_binding

from .conftest import Env, fund_eth, node_key, peer_key

ADDRS = ["/ip4/127.0.0.1/tcp/4001", "/ip6/::1/udp/4001/quic-v1"]


def test_post_direct_makes_operator_live_and_discoverable(env: Env):
    op = env.ops[0]
    env.reg.register(op)
    receipt = env.reg.advertise(op, node_key(1), ADDRS)
    info = env.reg.operator(op.address)
    assert info.peer_key == peer_key(1)
    assert info.ad_nonce == 1
    assert env.now() < info.ad_expiry <= env.now() + MAX_AD_TTL
    assert env.reg.is_live(op.address)
    (posted,) = env.reg.events(receipt, "AdvertisementPosted")
    assert verify_binding(
        peer_key(1), bytes(posted.args.keyProof), env.reg.chain_id, env.reg.address, op.address
    )
    (peer,) = env.reg.live_peers()
    assert peer.proven
    assert (peer.operator, peer.peer_key, peer.multiaddrs) == (
        op.address,
        peer_key(1),
        tuple(ADDRS),
    )
    assert peer.stake == env.reg.min_bond


def test_relayed_advertisement_records_relayer(env: Env):
    op = env.ops[0]
    env.reg.register(op)
    ad = env.reg.sign_advertisement(op, node_key(1), ADDRS, ttl=3600)
    receipt = env.reg.post_advertisement(ad, env.outsider)
    (event,) = env.reg.events(receipt, "AdvertisementPosted")
    assert event.args.relayer == env.outsider.address
    assert event.args.operator == op.address
    assert env.reg.is_live(op.address)


def test_renewal_replaces_multiaddrs_and_extends_expiry(env: Env):
    op = env.ops[0]
    env.reg.register(op)
    env.reg.advertise(op, node_key(1), ADDRS, ttl=3600)
    first_expiry = env.reg.operator(op.address).ad_expiry
    env.travel(1800)
    env.reg.advertise(op, node_key(1), ["/dns4/node.example/tcp/4001"])
    info = env.reg.operator(op.address)
    assert info.ad_expiry > first_expiry
    assert info.ad_nonce == 2
    (peer,) = env.reg.live_peers()
    assert peer.multiaddrs == ("/dns4/node.example/tcp/4001",)


def test_advertisement_expires(env: Env):
    op = env.ops[0]
    env.reg.register(op)
    env.reg.advertise(op, node_key(1), ADDRS, ttl=1000)
    expiry = env.reg.operator(op.address).ad_expiry
    env.travel(expiry - env.now() - 5)
    assert env.reg.is_live(op.address)
    env.travel(10)
    assert not env.reg.is_live(op.address)
    assert env.reg.live_peers() == []


def test_liveness_needs_minimum_stake(env: Env):
    op = env.ops[0]
    env.reg.register(op)
    env.reg.advertise(op, node_key(1), ADDRS)
    env.reg.request_unbond(op, env.reg.min_bond)
    assert not env.reg.is_live(op.address)
    env.reg.add_stake(op, env.reg.min_bond)
    assert env.reg.is_live(op.address)


def test_live_peers_lists_only_live_operators(env: Env):
    a, b, c = env.ops[:3]
    for i, op in enumerate((a, b, c)):
        env.reg.register(op)
        env.reg.advertise(op, node_key(i + 1), [f"/ip4/127.0.0.{i}/tcp/1"])
    env.reg.request_unbond(b, env.reg.min_bond)
    peers = {p.operator: p for p in env.reg.live_peers()}
    assert set(peers) == {a.address, c.address}
    assert peers[c.address].multiaddrs == ("/ip4/127.0.0.2/tcp/1",)


def test_expiry_bounds(env: Env):
    op = env.ops[0]
    env.reg.register(op)
    now = env.now()
    too_far = env.reg.sign_advertisement(op, node_key(1), ADDRS, expiry=now + MAX_AD_TTL + 100)
    with pytest.raises(errors.ExpiryTooFar, match="24 h"):
        env.reg.post_advertisement(too_far, op)
    past = env.reg.sign_advertisement(op, node_key(1), ADDRS, expiry=now)
    with pytest.raises(errors.ExpiryNotInFuture):
        env.reg.post_advertisement(past, op)


def test_signature_cannot_be_used_twice(env: Env):
    op = env.ops[0]
    env.reg.register(op)
    ad = env.reg.sign_advertisement(op, node_key(1), ADDRS, ttl=3600)
    env.reg.post_advertisement(ad, env.outsider)
    with pytest.raises(errors.InvalidNonce, match="expects 1"):
        env.reg.post_advertisement(ad, env.outsider)
    early = env.reg.sign_advertisement(op, node_key(1), ADDRS, ttl=3600, nonce=5)
    with pytest.raises(errors.InvalidNonce):
        env.reg.post_advertisement(early, op)


def test_tampered_or_foreign_signature_rejected(env: Env):
    op, other = env.ops[:2]
    env.reg.register(op)
    ad = env.reg.sign_advertisement(op, node_key(1), ADDRS, ttl=3600)
    for bad in (
        replace(ad, multiaddrs=("/ip4/127.6.6.6/tcp/1",)),
        replace(ad, peer_key=peer_key(2)),
        replace(ad, expiry=ad.expiry + 1),
        replace(ad, signature=ad.signature[:64]),
        replace(ad, signature=b"\x00" * 65),
    ):
        with pytest.raises(errors.InvalidSignature, match=op.address):
            env.reg.post_advertisement(bad, env.outsider)
    by_other = env.reg.sign_advertisement(other, node_key(1), ADDRS, ttl=3600)
    with pytest.raises(errors.InvalidSignature):
        env.reg.post_advertisement(replace(by_other, operator=op.address), env.outsider)


def test_an_advertisement_needs_a_64_byte_key_proof(env: Env):
    op = env.ops[0]
    env.reg.register(op)
    with pytest.raises(ValueError, match="binding proof"):  # the client refuses to guess
        env.reg.advertise(op, peer_key(1), ADDRS)
    for bad in (b"", bytes(63), bytes(65)):
        with pytest.raises(errors.BadKeyProofLength, match="64-byte"):
            env.reg.advertise(op, peer_key(1), ADDRS, key_proof=bad)
    # The chain cannot check Ed25519: a wrong 64-byte proof is posted, but nodes ignore it.
    env.reg.advertise(op, peer_key(1), ADDRS, key_proof=bytes(64))
    assert env.reg.is_live(op.address)
    assert env.reg.live_peers() == []
    (unproven,) = env.reg.live_peers(proven_only=False)
    assert (unproven.operator, unproven.proven) == (op.address, False)


def test_a_relayer_cannot_swap_the_key_proof(env: Env):
    """The operator's signature covers keccak256(keyProof)."""
    op = env.ops[0]
    env.reg.register(op)
    ad = env.reg.sign_advertisement(op, node_key(1), ADDRS, ttl=3600)
    with pytest.raises(errors.InvalidSignature):
        env.reg.post_advertisement(replace(ad, key_proof=bytes(64)), env.outsider)
    env.reg.post_advertisement(ad, env.outsider)
    assert env.reg.live_peers()[0].operator == op.address


def test_multiaddr_length_is_bounded(env: Env):
    op = env.ops[0]
    env.reg.register(op)
    longest = "/dns4/" + "a" * 250
    assert len(longest) == 256
    env.reg.advertise(op, node_key(1), [longest] * 8)
    with pytest.raises(errors.BadMultiaddrLength, match="#1 is 257 bytes"):
        env.reg.advertise(op, node_key(1), [longest, longest + "b"])
    with pytest.raises(errors.BadMultiaddrLength, match="#0 is 0 bytes"):
        env.reg.advertise(op, node_key(1), [""])
    (peer,) = env.reg.live_peers()
    assert peer.multiaddrs == (longest,) * 8


def test_current_signer_can_advertise_but_not_a_replaced_one(env: Env):
    op = env.ops[0]
    hot, newer = Account.from_key(b"\x31" * 32), Account.from_key(b"\x32" * 32)
    env.reg.register(op)
    receipt = env.reg.set_signer(op, hot.address)
    (event,) = env.reg.events(receipt, "SignerSet")
    assert (event.args.signer, event.args.previous) == (hot.address, "0x" + "00" * 20)
    ad = env.reg.sign_advertisement(hot, node_key(1), ADDRS, ttl=3600, operator=op.address)
    env.reg.post_advertisement(ad, env.outsider)
    assert env.reg.is_live(op.address)
    env.reg.set_signer(op, newer.address)
    stale = env.reg.sign_advertisement(hot, node_key(1), ADDRS, ttl=3600, operator=op.address)
    with pytest.raises(errors.InvalidSignature):
        env.reg.post_advertisement(stale, env.outsider)
    fresh = env.reg.sign_advertisement(newer, node_key(1), ADDRS, ttl=3600, operator=op.address)
    env.reg.post_advertisement(fresh, env.outsider)
    env.reg.advertise(op, node_key(1), ADDRS)  # the operator key itself always works


def test_signer_belongs_to_one_operator(env: Env):
    a, b = env.ops[:2]
    hot = Account.from_key(b"\x31" * 32)
    with pytest.raises(errors.NotRegistered):
        env.reg.set_signer(a, hot.address)
    env.reg.register(a)
    env.reg.register(b)
    with pytest.raises(errors.ZeroAddress):
        env.reg.set_signer(a, "0x" + "00" * 20)
    env.reg.set_signer(a, hot.address)
    with pytest.raises(errors.SignerTaken, match=a.address):
        env.reg.set_signer(b, hot.address)
    env.reg.set_signer(a, a.address)  # back to the operator key
    with pytest.raises(errors.SignerTaken):  # a replaced signer stays a's for good
        env.reg.set_signer(b, hot.address)
    env.reg.set_signer(a, hot.address)  # and a may re-use it
    assert env.reg.contract.functions.signerOperator(hot.address).call() == a.address


def test_live_peers_reads_only_the_advertisement_blocks(env: Env):
    a, b = env.ops[:2]
    env.reg.register(a)
    env.reg.register(b)
    first = env.reg.advertise(a, node_key(1), ["/ip4/127.0.0.1/tcp/1"])
    env.reg.advertise(b, node_key(2), ["/ip4/127.0.0.2/tcp/1"])
    second = env.reg.advertise(a, node_key(1), ["/ip4/127.0.0.1/tcp/2"])
    assert env.reg.operator(a.address).ad_block == second["blockNumber"]
    env.reg.from_block = 10**9  # not used any more: no scan from the deployment block
    peers = {p.operator: p.multiaddrs for p in env.reg.live_peers()}
    assert peers == {a.address: ("/ip4/127.0.0.1/tcp/2",), b.address: ("/ip4/127.0.0.2/tcp/1",)}
    # Pinned to an earlier block, the view is consistent with that block.
    then = {p.operator: p.multiaddrs for p in env.reg.live_peers(first["blockNumber"])}
    assert then == {a.address: ("/ip4/127.0.0.1/tcp/1",)}


def test_advertisement_input_reverts(env: Env):
    op = env.ops[0]
    with pytest.raises(errors.NotRegistered):
        env.reg.advertise(op, node_key(1), ADDRS)
    env.reg.register(op)
    with pytest.raises(errors.ZeroPeerKey):
        env.reg.advertise(op, b"\x00" * 32, ADDRS, key_proof=bytes(64))
    with pytest.raises(errors.BadMultiaddrCount, match=r"1\.\.8"):
        env.reg.advertise(op, node_key(1), [])
    with pytest.raises(errors.BadMultiaddrCount, match="got 9"):
        env.reg.advertise(op, node_key(1), [f"/ip4/127.0.0.{i}/tcp/1" for i in range(9)])


def test_jailed_operator_cannot_advertise(env: Env):
    op = env.ops[0]
    env.reg.register(op)
    env.reg.advertise(op, node_key(1), ADDRS)
    h1 = env.reg.sign_batch_header(op, peer_key(1), 1, b"\x01" * 32, 0)
    h2 = env.reg.sign_batch_header(op, peer_key(1), 1, b"\x02" * 32, 0)
    env.reg.slash_equivocation(env.outsider, h1, h2)
    assert not env.reg.is_live(op.address)
    with pytest.raises(errors.OperatorIsJailed):
        env.reg.advertise(op, node_key(1), ADDRS)


def test_signature_from_another_deployment_rejected(env: Env):
    op = env.ops[0]
    env.reg.register(op)
    second = deploy_registry(env.w3, env.owner, env.reg.token_address)
    second.register(op)
    ad_for_second = second.sign_advertisement(op, node_key(1), ADDRS, ttl=3600)
    with pytest.raises(errors.InvalidSignature):
        env.reg.post_advertisement(ad_for_second, op)
    second.post_advertisement(ad_for_second, op)  # valid where it was meant to go
    h1 = second.sign_batch_header(op, peer_key(1), 1, b"\x01" * 32, 0)
    h2 = second.sign_batch_header(op, peer_key(1), 1, b"\x02" * 32, 0)
    env.reg.advertise(op, node_key(1), ADDRS)
    with pytest.raises(errors.InvalidSignature):
        env.reg.slash_equivocation(env.outsider, h1, h2)


def test_signature_from_another_chain_rejected(env: Env, other_anvil):
    """Same deployer, same nonces: same registry address on both chains, only chainId differs."""
    from eth_account import Account

    deployer = Account.from_key(b"\x42" * 32)
    op = env.ops[0]
    w3b = Web3(Web3.HTTPProvider(other_anvil.url))
    fund_eth(env.w3, deployer)
    fund_eth(w3b, deployer, op)
    snap_b = w3b.provider.make_request("evm_snapshot", [])["result"]
    try:
        reg_a = deploy_registry(env.w3, deployer)
        reg_b = deploy_registry(w3b, deployer)
        assert reg_a.address == reg_b.address
        assert reg_a.chain_id != reg_b.chain_id
        for reg in (reg_a, reg_b):
            reg.tx.send(deployer, reg.token.functions.transfer(op.address, 100 * 10**18))
            reg.register(op)
        ad_b = reg_b.sign_advertisement(op, node_key(1), ADDRS, ttl=3600)
        with pytest.raises(errors.InvalidSignature):
            reg_a.post_advertisement(ad_b, op)
        reg_b.post_advertisement(ad_b, op)
        assert reg_b.is_live(op.address) and not reg_a.is_live(op.address)
    finally:
        w3b.provider.make_request("evm_revert", [snap_b])
