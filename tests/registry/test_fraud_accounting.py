"""Fraud-report accounting: the no-double-counting window and slashes that reach unbonding stake."""

from __future__ import annotations

import pytest

from fai_net.registry import errors
from fai_net.registry.deploy import DEFAULT_MIN_BOND as MIN
from fai_net.registry.deploy import DEFAULT_UNBONDING_DELAY as DELAY

from .conftest import Env, node_key

EVIDENCE = b"\xee" * 32
ADDRS = ["/ip4/127.0.0.1/tcp/1"]


def _live(env: Env, stakes):
    ops = env.ops[: len(stakes)]
    for i, (op, stake) in enumerate(zip(ops, stakes, strict=True)):
        env.reg.register(op, stake)
        env.reg.advertise(op, node_key(i + 1), ADDRS)
    return ops


def _books_balance(env: Env) -> None:
    f = env.reg.contract.functions
    held = sum(
        env.reg.operator(a).stake + env.reg.operator(a).unbonding for a in env.reg.operators()
    )
    assert env.registry_balance() == held + f.slashedPot().call()


def test_voted_stake_cannot_leave_before_the_case_closes(env: Env):
    """A vote's tokens stay locked until the case stops taking reports, so they cannot be
    withdrawn and re-staked under a second address to vote again."""
    target, a, b, _c, _d = _live(env, [MIN, 5 * MIN, MIN, MIN, MIN])
    env.reg.report_fraud(a, target.address, EVIDENCE)  # 50 of 90: not yet > 2/3
    env.reg.request_unbond(a, 5 * MIN)
    env.travel(DELAY - 120)
    with pytest.raises(errors.UnbondingNotReady):
        env.reg.withdraw(a)
    env.travel(120)
    env.reg.withdraw(a)  # possible only now, and now the case is closed:
    with pytest.raises(errors.FraudCaseExpired):
        env.reg.report_fraud(b, target.address, EVIDENCE)
    assert env.reg.operator(target.address).stake == MIN  # never slashed
    _books_balance(env)


def test_fraud_slash_reaches_unbonding_stake_and_books_balance(env: Env):
    target, a, b = _live(env, [20 * MIN, 5 * MIN, 5 * MIN])
    env.reg.request_unbond(target, 19 * MIN)  # 1 bonded, 19 unbonding
    env.reg.report_fraud(a, target.address, EVIDENCE)
    _books_balance(env)
    env.reg.report_fraud(b, target.address, EVIDENCE)  # 10 of 11 > 2/3: executes
    info = env.reg.operator(target.address)
    assert not info.jailed and info.stake == 0  # fraud slashing does not jail
    assert info.unbonding == 18 * MIN  # 10 % of 20 taken, bonded part first
    assert env.reg.contract.functions.slashedPot().call() == 2 * MIN
    _books_balance(env)
    env.travel(DELAY)
    before = env.reg.token_balance(target.address)
    env.reg.withdraw(target)
    assert env.reg.token_balance(target.address) - before == 18 * MIN
    _books_balance(env)
    # The owner can take the pot and nothing more.
    env.reg.sweep_slashed(env.owner, env.owner.address)
    with pytest.raises(errors.ZeroAmount):
        env.reg.sweep_slashed(env.owner, env.owner.address)
    assert env.registry_balance() == 10 * MIN  # a's and b's bonds are untouched
    _books_balance(env)
