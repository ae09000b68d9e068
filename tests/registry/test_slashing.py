"""Equivocation slashing and stake-weighted fraud reports."""

from __future__ import annotations

from dataclasses import replace

import pytest

from fai_net.registry import errors
from fai_net.registry.deploy import DEFAULT_MIN_BOND as MIN
from fai_net.registry.deploy import DEFAULT_UNBONDING_DELAY as DELAY

from .conftest import Env, digest, node_key, peer_key

KEY = peer_key(1)


def _advertised(env: Env, op, stake: int = MIN, n: int = 1):
    env.reg.register(op, stake)
    env.reg.advertise(op, node_key(n), ["/ip4/127.0.0.1/tcp/1"])


def _equivocation(env: Env, op, seq: int = 3, key: bytes = KEY):
    a = env.reg.sign_batch_header(op, key, seq, digest(1), 1_700_000_000_000)
    b = env.reg.sign_batch_header(op, key, seq, digest(2), 1_700_000_000_001)
    return a, b


# -- equivocation ------------------------------------------------------------------------
def test_equivocation_slashes_rewards_and_jails(env: Env):
    op, reporter = env.ops[0], env.outsider
    _advertised(env, op, 50 * MIN)
    env.reg.request_unbond(op, 20 * MIN)  # unbonding stake is slashable too
    a, b = _equivocation(env, op)
    receipt = env.reg.slash_equivocation(reporter, a, b)

    slashed = 50 * MIN // 10
    reward = slashed // 10
    info = env.reg.operator(op.address)
    assert info.jailed and info.stake == 0
    assert info.unbonding == 50 * MIN - slashed  # remaining bond forced into unbonding
    assert info.unbond_ready_at == env.now() + DELAY
    assert env.reg.token_balance(reporter.address) == reward
    assert env.reg.contract.functions.slashedPot().call() == slashed - reward
    assert env.registry_balance() == info.unbonding + slashed - reward
    assert env.reg.contract.functions.isEquivocationSlashed(op.address, KEY, 3).call()
    assert not env.reg.is_live(op.address)
    (proof,) = env.reg.events(receipt, "EquivocationProven")
    assert (proof.args.seq, proof.args.reporter) == (3, reporter.address)
    commitment = env.reg.equivocation_commitment(a, b, reporter.address)
    assert bytes(proof.args.commitment) == commitment
    assert env.reg.contract.functions.equivocationCommitBlock(commitment).call() == 0  # consumed
    (event,) = env.reg.events(receipt, "Slashed")
    assert (event.args.amount, event.args.reward) == (slashed, reward)
    assert len(env.reg.events(receipt, "Jailed")) == 1
    # The forced unbonding is an event of its own (amount moved, total, new ready time).
    (forced,) = env.reg.events(receipt, "UnbondForced")
    assert (forced.args.amount, forced.args.unbonding, forced.args.readyAt) == (
        30 * MIN - slashed,
        info.unbonding,
        info.unbond_ready_at,
    )


def test_slash_takes_bonded_stake_before_unbonding(env: Env):
    op = env.ops[0]
    _advertised(env, op, 100 * MIN)
    env.reg.request_unbond(op, 95 * MIN)  # 5 bonded, 95 unbonding; 10 % = 10 slashed
    env.reg.slash_equivocation(env.outsider, *_equivocation(env, op))
    info = env.reg.operator(op.address)
    assert (info.stake, info.unbonding) == (0, 90 * MIN)


def test_same_operator_and_seq_never_slashed_twice(env: Env):
    op = env.ops[0]
    _advertised(env, op, 50 * MIN)
    a, b = _equivocation(env, op)
    env.reg.slash_equivocation(env.outsider, a, b)
    with pytest.raises(errors.AlreadySlashed, match=f"seq 3 of peer key 0x{KEY.hex()}"):
        env.reg.slash_equivocation(env.ops[1], a, b)
    c = env.reg.sign_batch_header(op, KEY, 3, digest(9), 0)
    with pytest.raises(errors.AlreadySlashed):
        env.reg.slash_equivocation(env.ops[1], a, c)
    # A different seq is a different offence: a jailed operator's leftovers stay slashable.
    before = env.reg.operator(op.address).unbonding
    env.reg.slash_equivocation(env.ops[1], *_equivocation(env, op, seq=4))
    assert env.reg.operator(op.address).unbonding == before - before // 10


def test_slashed_stake_is_not_withdrawable(env: Env):
    op = env.ops[0]
    _advertised(env, op, 10 * MIN)
    env.reg.request_unbond(op, 10 * MIN)
    env.reg.slash_equivocation(env.outsider, *_equivocation(env, op))
    env.travel(DELAY)
    before = env.reg.token_balance(op.address)
    env.reg.withdraw(op)
    assert env.reg.token_balance(op.address) - before == 9 * MIN
    with pytest.raises(errors.NothingToWithdraw):
        env.reg.withdraw(op)


def test_jailed_operator_cannot_add_stake(env: Env):
    op = env.ops[0]
    _advertised(env, op)
    env.reg.slash_equivocation(env.outsider, *_equivocation(env, op))
    with pytest.raises(errors.OperatorIsJailed):
        env.reg.add_stake(op, MIN)


def test_not_an_equivocation(env: Env):
    op = env.ops[0]
    _advertised(env, op)
    a, _ = _equivocation(env, op)
    same_cid = env.reg.sign_batch_header(op, KEY, 3, digest(1), 99)
    other_seq = env.reg.sign_batch_header(op, KEY, 4, digest(2), 0)
    other_key = env.reg.sign_batch_header(op, peer_key(2), 3, digest(2), 0)
    for x, y in ((a, same_cid), (a, other_seq), (a, other_key)):
        with pytest.raises(errors.NotEquivocation):
            env.reg.slash_equivocation(env.outsider, x, y)


def test_only_operators_holding_stake_are_slashed(env: Env):
    """The headers' signer names the operator, which must still hold bonded or unbonding
    stake (after withdrawal there is nothing to slash) and must have advertised the key."""
    op = env.ops[0]
    with pytest.raises(errors.NotRegistered):
        env.reg.slash_equivocation(env.outsider, *_equivocation(env, op))
    env.reg.register(op)
    with pytest.raises(errors.KeyNotAdvertised):  # only headers of keys it advertised count
        env.reg.slash_equivocation(env.outsider, *_equivocation(env, op))
    env.reg.advertise(op, node_key(1), ["/ip4/127.0.0.1/tcp/1"])
    env.reg.advertise(op, node_key(2), ["/ip4/127.0.0.1/tcp/1"])  # rotating keeps KEY its own
    assert env.reg.contract.functions.hasAdvertisedKey(op.address, KEY).call()
    env.reg.slash_equivocation(env.outsider, *_equivocation(env, op))
    assert env.reg.operator(op.address).jailed


def test_headers_must_be_signed_by_the_key_owner(env: Env):
    op, other = env.ops[:2]
    _advertised(env, op)
    a, b = _equivocation(env, op)
    forged = env.reg.sign_batch_header(other, KEY, 3, digest(2), 0)
    with pytest.raises(errors.InvalidSignature, match=op.address):
        env.reg.slash_equivocation(env.outsider, a, forged)
    with pytest.raises(errors.InvalidSignature):
        env.reg.slash_equivocation(env.outsider, forged, a)
    with pytest.raises(errors.InvalidSignature):
        env.reg.slash_equivocation(env.outsider, a, replace(b, timestamp_ms=b.timestamp_ms + 1))


def test_each_peer_key_and_seq_is_its_own_offence(env: Env):
    """Keyed on (operator, peerKey, seq): rotating to another key does not reuse the flag."""
    op = env.ops[0]
    _advertised(env, op, 50 * MIN)
    env.reg.advertise(op, node_key(2), ["/ip4/127.0.0.1/tcp/1"])  # second key, same operator
    env.reg.slash_equivocation(env.outsider, *_equivocation(env, op, seq=3, key=KEY))
    f = env.reg.contract.functions
    assert f.isEquivocationSlashed(op.address, KEY, 3).call()
    assert not f.isEquivocationSlashed(op.address, peer_key(2), 3).call()
    env.reg.slash_equivocation(env.outsider, *_equivocation(env, op, seq=3, key=peer_key(2)))
    assert f.isEquivocationSlashed(op.address, peer_key(2), 3).call()
    with pytest.raises(errors.AlreadySlashed):
        env.reg.slash_equivocation(env.outsider, *_equivocation(env, op, seq=3, key=peer_key(2)))


def test_headers_signed_by_current_or_replaced_signer_are_slashable(env: Env):
    from eth_account import Account

    op = env.ops[0]
    old, new = Account.from_key(b"\x41" * 32), Account.from_key(b"\x42" * 32)
    _advertised(env, op, 50 * MIN)
    env.reg.set_signer(op, old.address)
    env.reg.set_signer(op, new.address)  # rotating away from `old` does not dodge slashing
    a = env.reg.sign_batch_header(old, KEY, 1, digest(1), 0)
    b = env.reg.sign_batch_header(new, KEY, 1, digest(2), 0)  # mixed signers: both op's
    assert env.reg.header_signer_operator(a) == env.reg.header_signer_operator(b) == op.address
    receipt = env.reg.slash_equivocation(env.outsider, a, b)
    (proof,) = env.reg.events(receipt, "EquivocationProven")
    assert proof.args.operator == op.address
    assert env.reg.operator(op.address).jailed


def test_headers_signed_by_an_unrelated_key_name_the_expected_operator(env: Env):
    from eth_account import Account

    op, other = env.ops[:2]
    _advertised(env, op)
    env.reg.register(other)
    stranger = Account.from_key(b"\x43" * 32)
    env.reg.set_signer(other, stranger.address)  # another operator's signer is not op's
    a = env.reg.sign_batch_header(stranger, KEY, 1, digest(1), 0)
    b = env.reg.sign_batch_header(op, KEY, 1, digest(2), 0)
    # What a receiving node checks: the header against the operator KEY is attributed to.
    assert env.reg.header_signer_operator(a, op.address) is None
    assert env.reg.header_signer_operator(b, op.address) == op.address
    # other's signer signed it, but other never advertised KEY: not other's header either.
    assert env.reg.header_signer_operator(a) is None
    assert env.reg.header_signer_operator(a, other.address) is None
    for operator in (op.address, None):  # None: the client names KEY's operator itself
        with pytest.raises(errors.InvalidSignature) as info:
            env.reg.slash_equivocation(env.outsider, a, b, operator=operator)
        assert info.value.args_by_name == {
            "expectedSigner": op.address,
            "recovered": stranger.address,
        }
    with pytest.raises(errors.KeyNotAdvertised):
        env.reg.slash_equivocation(env.outsider, a, b, operator=other.address)
    assert not env.reg.operator(op.address).jailed
    assert not env.reg.operator(other.address).jailed


def test_slash_with_zero_reward_config(env: Env):
    from fai_net.registry import RegistryParams, deploy_registry

    reg = deploy_registry(
        env.w3, env.owner, env.reg.token_address, RegistryParams(reporter_reward_bps=0)
    )
    op = env.ops[0]
    reg.register(op, 10 * MIN)
    reg.advertise(op, node_key(1), ["/ip4/127.1.2.3/tcp/1"])
    a = reg.sign_batch_header(op, KEY, 1, digest(1), 0)
    b = reg.sign_batch_header(op, KEY, 1, digest(2), 0)
    before = reg.token_balance(env.outsider.address)
    reg.slash_equivocation(env.outsider, a, b)
    assert reg.token_balance(env.outsider.address) == before
    assert reg.contract.functions.slashedPot().call() == MIN


# -- fraud reports -----------------------------------------------------------------------
EVIDENCE = b"\xee" * 32


def _fleet(env: Env, stakes: list[int]):
    for i, stake in enumerate(stakes):
        _advertised(env, env.ops[i], stake, i + 1)
    return env.ops[: len(stakes)]


def _case(env: Env, target):
    case_id = env.reg.fraud_case_id(target.address, EVIDENCE)
    return case_id, env.reg.fraud_case(case_id)


def test_fraud_needs_more_than_two_thirds_of_snapshotted_bonded_stake(env: Env):
    # Bonded stake 2 + 1 + 1 + 4 = 8 (x MIN), the target's included: need > 16/3, i.e. 6.
    target, a, b, c = _fleet(env, [2 * MIN, MIN, MIN, 4 * MIN])
    receipt = env.reg.report_fraud(a, target.address, EVIDENCE)
    case_id, case = _case(env, target)
    assert case.snapshot_bonded_stake == 8 * MIN  # the target's stake is in the total
    (opened,) = env.reg.events(receipt, "FraudCaseOpened")
    assert list(opened.args.snapshotOperators) == [target.address, a.address, b.address, c.address]
    assert list(opened.args.snapshotWeights) == [2 * MIN, MIN, MIN, 4 * MIN]
    env.reg.report_fraud(c, target.address, EVIDENCE)  # 5 of 8: below 2/3
    assert env.reg.operator(target.address).stake == 2 * MIN
    assert env.reg.contract.functions.hasReported(case_id, c.address).call()
    receipt = env.reg.report_fraud(b, target.address, EVIDENCE)  # 6 of 8
    (executed,) = env.reg.events(receipt, "FraudCaseExecuted")
    assert executed.args.slashed == 2 * MIN // 10
    info = env.reg.operator(target.address)
    # Fraud slashing does not jail: the target stays bonded and live, minus the slash.
    assert not info.jailed and info.stake == 2 * MIN - 2 * MIN // 10 and info.unbonding == 0
    assert env.reg.is_live(target.address)
    assert env.reg.events(receipt, "Jailed") == []
    assert env.reg.contract.functions.slashedPot().call() == 2 * MIN // 10
    assert env.reg.token_balance(c.address) == 1_000 * 10**18 - 4 * MIN  # no reward for votes
    assert executed.args.cooldownUntil == env.now() + DELAY
    assert env.reg.operator(target.address).fraud_cooldown_until == env.now() + DELAY
    with pytest.raises(errors.FraudCaseClosed):  # one slash per case
        env.reg.report_fraud(a, target.address, EVIDENCE)
    # ...and one per target per cooldown window, whatever the evidence.
    with pytest.raises(errors.FraudCooldown):
        env.reg.report_fraud(a, target.address, b"\xef" * 32)
    env.travel(DELAY)
    # After the cooldown the target is reported again in a new case, voted from scratch.
    env.reg.report_fraud(a, target.address, b"\xef" * 32)
    second = env.reg.fraud_case(env.reg.fraud_case_id(target.address, b"\xef" * 32))
    assert (second.reporters, second.executed) == (1, False)
    assert second.snapshot_bonded_stake == 8 * MIN - 2 * MIN // 10


def test_exactly_two_thirds_is_not_enough(env: Env):
    """Three equal operators: two reporters hold exactly 2/3 of the live stake (the target's
    third included), which is not more than 2/3. An operator with >= 1/3 of the bonded stake
    cannot be fraud-slashed at all (the f < N/3 assumption)."""
    target, a, b = _fleet(env, [MIN, MIN, MIN])
    env.reg.report_fraud(a, target.address, EVIDENCE)
    receipt = env.reg.report_fraud(b, target.address, EVIDENCE)
    assert env.reg.events(receipt, "FraudCaseExecuted") == []
    assert env.reg.operator(target.address).stake == MIN


def test_fraud_slash_below_minimum_moves_the_rest_to_unbonding(env: Env):
    target, a, b, c = _fleet(env, [MIN, MIN, MIN, MIN])
    for r in (a, b, c):
        env.reg.report_fraud(r, target.address, EVIDENCE)  # 3 of 4 executes
    info = env.reg.operator(target.address)
    assert (info.stake, info.unbonding, info.jailed) == (0, MIN - MIN // 10, False)
    assert info.unbond_ready_at == env.now() + DELAY
    assert not env.reg.is_live(target.address)
    env.reg.add_stake(target, MIN)  # not jailed: it may bond again and carry on
    assert env.reg.is_live(target.address)


def test_vote_weight_is_capped_by_the_snapshot(env: Env):
    """Stake added after the case opened does not count; stake removed since does not either."""
    target, a, b, c = _fleet(env, [MIN, MIN, MIN, MIN])
    env.reg.report_fraud(a, target.address, EVIDENCE)  # snapshot: 4 x MIN
    env.reg.add_stake(b, 50 * MIN)
    receipt = env.reg.report_fraud(b, target.address, EVIDENCE)
    (vote,) = env.reg.events(receipt, "FraudReported")
    assert vote.args.weight == MIN  # not 51 x MIN: 2 of 4, not executed
    assert env.reg.events(receipt, "FraudCaseExecuted") == []
    env.reg.add_stake(c, 3 * MIN)
    env.reg.request_unbond(c, 3 * MIN)  # back to its snapshot weight
    receipt = env.reg.report_fraud(c, target.address, EVIDENCE)
    (vote,) = env.reg.events(receipt, "FraudReported")
    assert vote.args.weight == MIN
    assert env.reg.events(receipt, "FraudCaseExecuted")


def test_snapshot_ignores_stake_bonded_later(env: Env):
    target, a, b = _fleet(env, [MIN, 3 * MIN, 2 * MIN])
    env.reg.report_fraud(b, target.address, EVIDENCE)  # snapshot 6, reported 2
    late = env.ops[3]
    _advertised(env, late, 100 * MIN, 9)
    case_id, case = _case(env, target)
    assert case.snapshot_bonded_stake == 6 * MIN
    with pytest.raises(errors.NotInSnapshot):  # bonded now, but not when the case opened
        env.reg.report_fraud(late, target.address, EVIDENCE)
    env.reg.report_fraud(a, target.address, EVIDENCE)  # 5 of 6
    assert env.reg.fraud_case(case_id).executed


def test_a_forged_snapshot_is_rejected(env: Env):
    target, a, b, _ = _fleet(env, [MIN, MIN, MIN, MIN])
    env.reg.report_fraud(a, target.address, EVIDENCE)
    f = env.reg.contract.functions
    snap = env.reg.fraud_snapshot(env.reg.fraud_case_id(target.address, EVIDENCE))
    assert snap.weight_of(b.address) == MIN
    inflated = [w * 100 for w in snap.weights]
    with pytest.raises(errors.SnapshotMismatch):
        env.reg.tx.send(b, f.reportFraud(target.address, EVIDENCE, list(snap.operators), inflated))
    with pytest.raises(errors.SnapshotMismatch):
        env.reg.tx.send(b, f.reportFraud(target.address, EVIDENCE, [], []))
    env.reg.tx.send(
        b, f.reportFraud(target.address, EVIDENCE, list(snap.operators), list(snap.weights))
    )


def test_fraud_report_reverts(env: Env):
    target, a, b = _fleet(env, [MIN, MIN, MIN])
    with pytest.raises(errors.SelfReport):
        env.reg.report_fraud(a, a.address, EVIDENCE)
    with pytest.raises(errors.ReporterNotBonded):
        env.reg.report_fraud(env.ops[5], target.address, EVIDENCE)
    with pytest.raises(errors.NotRegistered):
        env.reg.report_fraud(a, env.outsider.address, EVIDENCE)
    env.reg.report_fraud(a, target.address, EVIDENCE)
    with pytest.raises(errors.AlreadyReported):
        env.reg.report_fraud(a, target.address, EVIDENCE)
    env.reg.slash_equivocation(env.outsider, *_equivocation(env, target))
    with pytest.raises(errors.TargetJailed):
        env.reg.report_fraud(b, target.address, EVIDENCE)


def test_lapsed_but_bonded_operators_count_on_both_sides(env: Env):
    """Advertisements lapse, bonds do not: a lapsed operator is in the snapshot (its stake in
    the denominator) and may vote; a fully unbonding one is on neither side."""
    target, a, b, c = _fleet(env, [MIN, MIN, MIN, MIN])
    env.reg.request_unbond(c, MIN)  # nothing bonded: no weight, no vote
    env.travel(25 * 3600)  # every advertisement has lapsed
    assert not any(env.reg.is_live(op.address) for op in (target, a, b, c))
    env.reg.report_fraud(a, target.address, EVIDENCE)
    _, case = _case(env, target)
    assert case.snapshot_bonded_stake == 3 * MIN
    with pytest.raises(errors.ReporterNotBonded):
        env.reg.report_fraud(c, target.address, EVIDENCE)
    receipt = env.reg.report_fraud(b, target.address, EVIDENCE)  # 2 of 3: not more than 2/3
    assert env.reg.events(receipt, "FraudCaseExecuted") == []


def test_fraud_case_expires_after_unbonding_delay(env: Env):
    target, a, b, _ = _fleet(env, [MIN, MIN, MIN, MIN])
    env.reg.report_fraud(a, target.address, EVIDENCE)
    env.travel(DELAY)
    with pytest.raises(errors.FraudCaseExpired):
        env.reg.report_fraud(b, target.address, EVIDENCE)
    env.reg.report_fraud(b, target.address, b"\xef" * 32)  # fresh evidence opens a new case
