"""The attacks from the issue "No honest operator is ever slashed, silenced or impersonated",
replayed against the fixed registry on a real Anvil.

* fraud quorum: a minority of bonded stake never executes a fraud slash, however many
  advertisements have lapsed and however many evidence hashes it opens cases under;
* one fraud slash per accused per cooldown window, whatever the evidence hash;
* peer-key squatting: advertising an honest node's key blocks nobody, and registry-mode
  attribution (`live_peers`, `RegistryMembership.operator_of/check`) stays with the holder;
* every state change emits an event, the slash's forced unbonding included;
* the equivocation reward goes to the committed beneficiary: copying the pending reveal,
  copying the commit, or committing and revealing in one block steals nothing.
"""

from __future__ import annotations

import numpy as np
import pytest

from fai_core.experience import Experience
from fai_core.wire import BatchHeader, decode_envelope, encode_batch
from fai_net.admission.membership import RegistryMembership
from fai_net.registry import errors
from fai_net.registry.deploy import DEFAULT_MIN_BOND as MIN
from fai_net.registry.deploy import DEFAULT_UNBONDING_DELAY as DELAY

from .conftest import Env, digest, node_key, peer_key

ADDRS = ["/ip4/127.0.0.1/tcp/1"]


def _bonded(env: Env, stakes: list[int]):
    ops = env.ops[: len(stakes)]
    for i, (op, stake) in enumerate(zip(ops, stakes, strict=True)):
        env.reg.register(op, stake)
        env.reg.advertise(op, node_key(i + 1), [f"/ip4/127.0.0.{i + 1}/tcp/1"])
    return ops


def _evidence(n: int) -> bytes:
    return (0xE000 + n).to_bytes(32, "big")


# -- fraud quorum over bonded stake ---------------------------------------------------------
def test_a_lone_operator_cannot_fraud_slash_while_others_have_lapsed(env: Env):
    """The finding: with the others' advertisements lapsed, one operator alone executed 10
    cases. Lapsed operators stay in the bonded snapshot, so it holds 2 of 10 and fails."""
    target, attacker, _c, _d = _bonded(env, [2 * MIN, 2 * MIN, 3 * MIN, 3 * MIN])
    env.travel(25 * 3600)
    env.reg.advertise(attacker, node_key(2), ADDRS)  # only the attacker is live
    assert env.reg.contract.functions.liveStake().call() == 2 * MIN
    for n in range(10):
        receipt = env.reg.report_fraud(attacker, target.address, _evidence(n))
        assert env.reg.events(receipt, "FraudCaseExecuted") == []
        case = env.reg.fraud_case(env.reg.fraud_case_id(target.address, _evidence(n)))
        assert case.snapshot_bonded_stake == 10 * MIN
    assert env.reg.operator(target.address).stake == 2 * MIN


def test_colluders_with_a_bare_majority_of_bonded_stake_fail(env: Env):
    """51 % of the bonded stake is not more than 2/3 of it (the target's stake included)."""
    target, x, y, honest = _bonded(env, [10 * MIN, 26 * MIN, 25 * MIN, 39 * MIN])
    for n in range(3):
        env.reg.report_fraud(x, target.address, _evidence(n))
        receipt = env.reg.report_fraud(y, target.address, _evidence(n))
        assert env.reg.events(receipt, "FraudCaseExecuted") == []
    assert env.reg.operator(target.address).stake == 10 * MIN
    # With the honest operator's vote the supermajority exists and the case executes.
    receipt = env.reg.report_fraud(honest, target.address, _evidence(0))
    assert env.reg.events(receipt, "FraudCaseExecuted")


def test_repeated_cases_inside_the_cooldown_fail(env: Env):
    target, a, b, c = _bonded(env, [MIN, MIN, MIN, MIN])
    # A second case opened in parallel, before the first executes.
    env.reg.report_fraud(a, target.address, _evidence(2))
    for r in (a, b, c):
        receipt = env.reg.report_fraud(r, target.address, _evidence(1))
    (executed,) = env.reg.events(receipt, "FraudCaseExecuted")
    until = executed.args.cooldownUntil
    assert until == env.now() + DELAY
    env.reg.add_stake(target, MIN)  # back above the minimum: still not reportable
    for r, n in ((b, 2), (c, 2), (a, 3), (b, 4)):  # votes on the parallel case, new cases
        with pytest.raises(errors.FraudCooldown) as info:
            env.reg.report_fraud(r, target.address, _evidence(n))
        assert info.value.args_by_name == {"target": target.address, "until": until}
    env.travel(DELAY - 120)
    with pytest.raises(errors.FraudCooldown):
        env.reg.report_fraud(a, target.address, _evidence(5))
    env.travel(120)
    with pytest.raises(errors.FraudCaseExpired):  # the parallel case closed meanwhile
        env.reg.report_fraud(b, target.address, _evidence(2))
    env.reg.report_fraud(a, target.address, _evidence(5))  # a fresh case opens again


# -- peer-key squatting ---------------------------------------------------------------------
def _signed_batch(env: Env, operator, node, seq: int):
    exp = Experience.create(
        "retry flaky calls", np.ones(16, np.float32), 0.8, "coding", node.public_key, 1000
    )

    def operator_signer(header: BatchHeader) -> bytes:
        return env.reg.sign_batch_header(
            operator, header.sender, header.seq, header.cid_digest, header.timestamp_ms
        ).signature

    signed = encode_batch(
        [exp],
        key=node,
        seq=seq,
        timestamp_ms=1000,
        model="test-model",
        baseline=np.zeros(16, np.float32),
        group=8,
        operator_signer=operator_signer,
    )
    return decode_envelope(signed.envelope)


def test_a_squatter_can_neither_block_nor_take_over_an_honest_key(env: Env):
    honest, squatter = env.ops[:2]
    node = node_key(7)  # the honest operator's node
    env.reg.register(honest, 5 * MIN)
    env.reg.register(squatter, MIN)
    # The squatter advertises the honest key first, once with a junk proof and once with a
    # copy of the honest node's real binding proof (which names the honest operator).
    env.reg.advertise(squatter, node.public_key, ADDRS, key_proof=bytes(64))
    copied = env.reg.binding_proof(node, honest.address)
    env.reg.advertise(squatter, node.public_key, ["/ip4/10.6.6.6/tcp/1"], key_proof=copied)
    assert env.reg.is_live(squatter.address)  # on-chain it is live...
    assert env.reg.live_peers() == []  # ...but nobody attributes the key to it
    membership = RegistryMembership(env.reg)
    membership.refresh()
    assert membership.operator_of(node.public_key) is None

    # Nothing blocks the honest operator (no PeerKeyTaken any more).
    env.reg.advertise(honest, node, ["/ip4/127.0.0.7/tcp/4001"])
    (peer,) = env.reg.live_peers()
    assert (peer.operator, peer.peer_key, peer.multiaddrs) == (
        honest.address,
        node.public_key,
        ("/ip4/127.0.0.7/tcp/4001",),
    )
    # The squatter renews after the honest operator: the latest advertisement does not win
    # without a valid proof.
    env.reg.advertise(squatter, node.public_key, ["/ip4/10.6.6.6/tcp/2"], key_proof=copied)
    assert [p.operator for p in env.reg.live_peers()] == [honest.address]
    assert env.reg.peer_key_operator(node.public_key) == honest.address
    everything = {p.operator: p.proven for p in env.reg.live_peers(proven_only=False)}
    assert everything == {honest.address: True, squatter.address: False}

    # Registry-mode nodes: the honest node's batches pass, and are attributed to the honest
    # operator; a batch carrying the squatter's operator signature is refused.
    membership.refresh()
    assert membership.operator_of(node.public_key) == honest.address
    assert membership.check(_signed_batch(env, honest, node, 1)) is None
    assert membership.check(_signed_batch(env, squatter, node, 2)) == "bad_operator_sig"

    # The squatter cannot get the honest operator slashed with headers it signs itself.
    a = env.reg.sign_batch_header(squatter, node.public_key, 3, digest(1), 0)
    b = env.reg.sign_batch_header(squatter, node.public_key, 3, digest(2), 0)
    with pytest.raises(errors.InvalidSignature):
        env.reg.slash_equivocation(env.outsider, a, b, operator=honest.address)
    assert not env.reg.operator(honest.address).jailed


def test_a_key_holder_that_proves_for_two_operators_is_attributed_to_the_latest(env: Env):
    """Only the key holder can make proofs; if it made two (it moved to a new operator),
    each key still maps to one operator: the latest advertisement's."""
    old, new = env.ops[:2]
    node = node_key(8)
    for op in (old, new):
        env.reg.register(op)
    env.reg.advertise(old, node, ADDRS)
    env.reg.advertise(new, node, ADDRS)
    assert [p.operator for p in env.reg.live_peers()] == [new.address]


# -- events ---------------------------------------------------------------------------------
def test_every_state_change_emits_an_event(env: Env):
    target, a, b, c = env.ops[:4]
    hot = env.ops[5]
    receipts = {}
    for i, op in enumerate((target, a, b, c)):
        receipts[f"register {i}"] = env.reg.register(op, MIN)
        receipts[f"advertise {i}"] = env.reg.advertise(op, node_key(i + 1), ADDRS)
    receipts["addStake"] = env.reg.add_stake(a, MIN)
    receipts["setSigner"] = env.reg.set_signer(a, hot.address)
    receipts["requestUnbond"] = env.reg.request_unbond(a, MIN)
    for r in (a, b, c):  # the last vote executes; target's remainder is forced out
        receipts[f"fraud {r.address}"] = env.reg.report_fraud(r, target.address, _evidence(0))
    forced = env.reg.events(receipts[f"fraud {c.address}"], "UnbondForced")
    info = env.reg.operator(target.address)
    assert [(e.args.amount, e.args.unbonding, e.args.readyAt) for e in forced] == [
        (MIN - MIN // 10, info.unbonding, info.unbond_ready_at)
    ]
    h1 = env.reg.sign_batch_header(b, peer_key(3), 1, digest(1), 0)
    h2 = env.reg.sign_batch_header(b, peer_key(3), 1, digest(2), 0)
    commitment = env.reg.equivocation_commitment(h1, h2, env.outsider.address)
    receipts["commit"] = env.reg.commit_equivocation(env.outsider, commitment)
    receipts["slash"] = env.reg.slash_equivocation(env.outsider, h1, h2)
    for name in ("Jailed", "UnbondForced", "Slashed", "EquivocationProven"):
        assert len(env.reg.events(receipts["slash"], name)) == 1, name
    env.travel(DELAY)
    receipts["withdraw"] = env.reg.withdraw(a)
    receipts["sweep"] = env.reg.sweep_slashed(env.owner, env.owner.address)
    for name, receipt in receipts.items():
        ours = [log for log in receipt["logs"] if log["address"] == env.reg.address]
        assert ours, f"{name} changed state without a registry event"


# -- the equivocation reward ----------------------------------------------------------------
def _cheat(env: Env):
    op = env.ops[0]
    env.reg.register(op, 10 * MIN)
    env.reg.advertise(op, node_key(1), ADDRS)
    a = env.reg.sign_batch_header(op, peer_key(1), 4, digest(1), 0)
    b = env.reg.sign_batch_header(op, peer_key(1), 4, digest(2), 0)
    return op, a, b


def test_copying_a_pending_reveal_pays_the_committed_reporter(env: Env):
    op, a, b = _cheat(env)
    reporter, thief = env.outsider, env.ops[5]
    commitment = env.reg.equivocation_commitment(a, b, reporter.address)
    receipt = env.reg.commit_equivocation(reporter, commitment)
    (committed,) = env.reg.events(receipt, "EquivocationCommitted")
    assert (bytes(committed.args.commitment), committed.args.committer) == (
        commitment,
        reporter.address,
    )
    with pytest.raises(errors.AlreadyCommitted):  # copying the commit does nothing either
        env.reg.commit_equivocation(thief, commitment)
    # The thief's own reveal (naming itself) has no commitment behind it.
    with pytest.raises(errors.NotCommitted):
        env.reg.tx.send(
            thief, env.reg.reveal_equivocation_function(a, b, op.address, thief.address)
        )
    # The thief sends the reporter's reveal verbatim: the reward still goes to the reporter.
    copy = env.reg.reveal_equivocation_function(a, b, op.address, reporter.address)
    before = env.reg.token_balance(thief.address)
    receipt = env.reg.tx.send(thief, copy, estimate_block="pending")
    (slashed,) = env.reg.events(receipt, "Slashed")
    assert slashed.args.rewardee == reporter.address
    assert env.reg.token_balance(reporter.address) == slashed.args.reward == MIN // 10
    assert env.reg.token_balance(thief.address) == before


def test_commit_and_reveal_in_one_block_fails(env: Env):
    """A front-runner that sees the evidence in a pending reveal cannot commit and reveal
    before it in the same block."""
    op, a, b = _cheat(env)
    thief = env.ops[5]
    commitment = env.reg.equivocation_commitment(a, b, thief.address)
    calls = [
        env.reg.contract.functions.commitEquivocation(commitment),
        env.reg.reveal_equivocation_function(a, b, op.address, thief.address),
    ]
    nonce = env.w3.eth.get_transaction_count(thief.address)
    sent = []
    env.rpc("evm_setAutomine", [False])
    try:
        for n, fn in enumerate(calls):
            tx = fn.build_transaction(
                {
                    "from": thief.address,
                    "nonce": nonce + n,
                    "gas": 400_000,
                    "chainId": env.reg.chain_id,
                }
            )
            sent.append(
                (tx, env.w3.eth.send_raw_transaction(thief.sign_transaction(tx).raw_transaction))
            )
        env.rpc("evm_mine")
    finally:
        env.rpc("evm_setAutomine", [True])
    (_, commit_hash), (reveal_tx, reveal_hash) = sent
    commit = env.w3.eth.get_transaction_receipt(commit_hash)
    reveal = env.w3.eth.get_transaction_receipt(reveal_hash)
    assert commit["blockNumber"] == reveal["blockNumber"]
    assert (commit["status"], reveal["status"]) == (1, 0)
    assert isinstance(env.reg.tx._explain_failure(reveal_tx, reveal), errors.CommitTooRecent)
    assert not env.reg.operator(op.address).jailed
    # From the next block on the thief's own commitment works: it found the evidence
    # independently (a race of discovery, not of copying; see docs/registry.md).
    env.reg.tx.send(thief, calls[1], estimate_block="pending")
    assert env.reg.operator(op.address).jailed
