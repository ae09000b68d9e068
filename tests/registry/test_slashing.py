"""Equivocation slashing and stake-weighted fraud reports."""

from __future__ import annotations

from dataclasses import replace

import pytest

from fai_net.registry import errors
from fai_net.registry.deploy import DEFAULT_MIN_BOND as MIN
from fai_net.registry.deploy import DEFAULT_UNBONDING_DELAY as DELAY

from .conftest import Env, digest, peer_key

KEY = peer_key(1)


def _advertised(env: Env, op, stake: int = MIN, key: bytes = KEY):
    env.reg.register(op, stake)
    env.reg.advertise(op, key, ["/ip4/10.0.0.1/tcp/1"])


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
    assert env.reg.contract.functions.isEquivocationSlashed(op.address, 3).call()
    assert not env.reg.is_live(op.address)
    (proof,) = env.reg.events(receipt, "EquivocationProven")
    assert (proof.args.seq, proof.args.reporter) == (3, reporter.address)
    (event,) = env.reg.events(receipt, "Slashed")
    assert (event.args.amount, event.args.reward) == (slashed, reward)
    assert len(env.reg.events(receipt, "Jailed")) == 1


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
    with pytest.raises(errors.AlreadySlashed, match="seq 3"):
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


def test_unknown_peer_key(env: Env):
    op = env.ops[0]
    env.reg.register(op)
    with pytest.raises(errors.UnknownPeerKey):
        env.reg.slash_equivocation(env.outsider, *_equivocation(env, op))


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


def test_slash_with_zero_reward_config(env: Env):
    from fai_net.registry import RegistryParams, deploy_registry

    reg = deploy_registry(
        env.w3, env.owner, env.reg.token_address, RegistryParams(reporter_reward_bps=0)
    )
    op = env.ops[0]
    reg.register(op, 10 * MIN)
    reg.advertise(op, KEY, ["/ip4/1.2.3.4/tcp/1"])
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
        _advertised(env, env.ops[i], stake, peer_key(i + 1))
    return env.ops[: len(stakes)]


def _case(env: Env, target) -> tuple:
    case_id = env.reg.contract.functions.fraudCaseId(target.address, EVIDENCE).call()
    return case_id, env.reg.contract.functions.fraudCase(case_id).call()


def test_fraud_needs_more_than_two_thirds_of_snapshotted_live_stake(env: Env):
    # target 50; others 10+10+10 = 30 live besides the target: need > 20, i.e. all three.
    target, a, b, c = _fleet(env, [50 * MIN, MIN, MIN, MIN])
    env.reg.report_fraud(a, target.address, EVIDENCE)
    case_id, case = _case(env, target)
    assert case[4] == 3 * MIN  # snapshot excludes the target
    env.reg.report_fraud(b, target.address, EVIDENCE)  # 20 of 30: exactly 2/3, not more
    assert not env.reg.operator(target.address).jailed
    assert env.reg.contract.functions.hasReported(case_id, b.address).call()
    receipt = env.reg.report_fraud(c, target.address, EVIDENCE)
    (executed,) = env.reg.events(receipt, "FraudCaseExecuted")
    assert executed.args.slashed == 5 * MIN
    info = env.reg.operator(target.address)
    assert info.jailed and info.stake == 0 and info.unbonding == 45 * MIN
    assert env.reg.contract.functions.slashedPot().call() == 5 * MIN
    assert env.reg.token_balance(c.address) == 1_000 * 10**18 - MIN  # no reward for votes
    with pytest.raises(errors.FraudCaseClosed):
        env.reg.report_fraud(a, target.address, EVIDENCE)


def test_snapshot_ignores_stake_that_goes_live_later(env: Env):
    target, a, b = _fleet(env, [MIN, 3 * MIN, MIN])
    env.reg.report_fraud(b, target.address, EVIDENCE)  # snapshot 4, reported 1
    late = env.ops[3]
    _advertised(env, late, 100 * MIN, peer_key(9))
    _, case = _case(env, target)
    assert case[4] == 4 * MIN
    env.reg.report_fraud(a, target.address, EVIDENCE)  # 4 of 4
    assert env.reg.operator(target.address).jailed


def test_fraud_report_reverts(env: Env):
    target, a, b = _fleet(env, [MIN, MIN, MIN])
    with pytest.raises(errors.SelfReport):
        env.reg.report_fraud(a, a.address, EVIDENCE)
    with pytest.raises(errors.ReporterNotLive):
        env.reg.report_fraud(env.ops[5], target.address, EVIDENCE)
    with pytest.raises(errors.NotRegistered):
        env.reg.report_fraud(a, env.outsider.address, EVIDENCE)
    env.reg.report_fraud(a, target.address, EVIDENCE)
    with pytest.raises(errors.AlreadyReported):
        env.reg.report_fraud(a, target.address, EVIDENCE)
    env.reg.slash_equivocation(env.outsider, *_equivocation(env, target))
    with pytest.raises(errors.TargetJailed):
        env.reg.report_fraud(b, target.address, EVIDENCE)


def test_expired_reporter_cannot_vote(env: Env):
    target, a = _fleet(env, [MIN, MIN])
    env.travel(25 * 3600)
    with pytest.raises(errors.ReporterNotLive):
        env.reg.report_fraud(a, target.address, EVIDENCE)


def test_fraud_case_expires_after_unbonding_delay(env: Env):
    target, a, b, _ = _fleet(env, [MIN, MIN, MIN, MIN])
    env.reg.report_fraud(a, target.address, EVIDENCE)
    env.travel(DELAY)
    env.reg.advertise(b, peer_key(3), ["/ip4/10.0.0.1/tcp/1"])
    with pytest.raises(errors.FraudCaseExpired):
        env.reg.report_fraud(b, target.address, EVIDENCE)
    env.reg.report_fraud(b, target.address, b"\xef" * 32)  # fresh evidence opens a new case
