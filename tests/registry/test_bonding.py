"""Register, add stake, unbond, withdraw: every success and every revert path."""

from __future__ import annotations

import pytest

from fai_net.registry import errors
from fai_net.registry.deploy import DEFAULT_MIN_BOND as MIN
from fai_net.registry.deploy import DEFAULT_UNBONDING_DELAY as DELAY
from fai_net.registry.deploy import TOKEN

from .conftest import Env, node_key


def test_register_bonds_tokens_and_lists_operator(env: Env):
    op = env.ops[0]
    before = env.reg.token_balance(op.address)
    env.reg.register(op, 15 * TOKEN)
    info = env.reg.operator(op.address)
    assert (info.registered, info.stake, info.jailed) == (True, 15 * TOKEN, False)
    assert env.reg.token_balance(op.address) == before - 15 * TOKEN
    assert env.registry_balance() == 15 * TOKEN
    assert env.reg.operators() == [op.address]
    assert not env.reg.is_live(op.address)  # no advertisement yet


def test_register_emits_event(env: Env):
    receipt = env.reg.register(env.ops[0])
    (event,) = env.reg.events(receipt, "Registered")
    assert event.args.operator == env.ops[0].address
    assert event.args.stake == MIN


def test_register_twice_reverts(env: Env):
    env.reg.register(env.ops[0])
    with pytest.raises(errors.AlreadyRegistered, match="already registered"):
        env.reg.register(env.ops[0])


def test_register_below_minimum_reverts(env: Env):
    with pytest.raises(errors.BelowMinimumBond) as info:
        env.reg.register(env.ops[0], MIN - 1)
    assert info.value.args_by_name == {"stake": MIN - 1, "minimum": MIN}
    assert str(info.value) == f"stake {MIN - 1} is below the minimum bond {MIN}"


def test_register_without_allowance_reverts_with_token_error(env: Env):
    op = env.ops[0]
    with pytest.raises(errors.ERC20InsufficientAllowance):
        env.reg.tx.send(op, env.reg.contract.functions.register(MIN))


def test_register_without_balance_reverts_with_token_error(env: Env):
    env.reg.approve(env.outsider, MIN)
    with pytest.raises(errors.ERC20InsufficientBalance):
        env.reg.register(env.outsider, MIN)


def test_register_beyond_uint96_reverts(env: Env):
    huge = 2**96
    env.reg.tx.send(env.owner, env.reg.token.functions.mint(env.ops[0].address, huge))
    with pytest.raises(errors.SafeCastOverflowedUintDowncast):
        env.reg.register(env.ops[0], huge)


def _leave(env: Env, op) -> None:
    env.reg.request_unbond(op, env.reg.operator(op.address).stake)
    env.travel(DELAY)
    env.reg.withdraw(op)


def test_leaving_frees_the_place_with_swap_and_pop(env: Env):
    a, b, c = env.ops[:3]
    for op in (a, b, c):
        env.reg.register(op)
    assert env.reg.operators() == [a.address, b.address, c.address]
    env.reg.request_unbond(a, MIN)
    env.travel(DELAY)
    receipt = env.reg.withdraw(a)
    (left,) = env.reg.events(receipt, "Deregistered")
    assert left.args.operator == a.address
    assert env.reg.operators() == [c.address, b.address]  # the last one moved into a's place
    assert [env.reg.operator(x).list_index for x in (c.address, b.address)] == [0, 1]
    info = env.reg.operator(a.address)
    assert (info.registered, info.stake, info.unbonding) == (False, 0, 0)
    with pytest.raises(errors.NotRegistered):
        env.reg.add_stake(a, MIN)
    env.reg.register(a, 2 * MIN)  # a may come back, at the end of the list
    assert env.reg.operators() == [c.address, b.address, a.address]
    assert env.reg.operator(a.address).list_index == 2
    _leave(env, b)
    _leave(env, a)
    assert env.reg.operators() == [c.address]
    assert env.registry_balance() == MIN


def test_partial_withdraw_keeps_the_operator_listed(env: Env):
    op = env.ops[0]
    env.reg.register(op, 2 * MIN)
    env.reg.request_unbond(op, MIN)
    env.travel(DELAY)
    assert env.reg.events(env.reg.withdraw(op), "Deregistered") == []
    assert env.reg.operators() == [op.address]


def test_rejoining_keeps_the_advertisement_nonce_and_starts_not_live(env: Env):
    op = env.ops[0]
    env.reg.register(op)
    env.reg.advertise(op, node_key(1), ["/ip4/127.0.0.1/tcp/1"])
    env.reg.request_unbond(op, MIN)
    env.travel(DELAY)
    env.reg.withdraw(op)
    env.reg.register(op)
    info = env.reg.operator(op.address)
    assert info.ad_nonce == 1 and info.ad_expiry == 0
    assert not env.reg.is_live(op.address)
    # A signature over nonce 0 (the one already used) is never valid again.
    replay = env.reg.sign_advertisement(op, node_key(1), ["/ip4/127.0.0.1/tcp/1"], nonce=0)
    with pytest.raises(errors.InvalidNonce):
        env.reg.post_advertisement(replay, env.outsider)


def test_add_stake(env: Env):
    op = env.ops[0]
    env.reg.register(op)
    receipt = env.reg.add_stake(op, 5 * TOKEN)
    assert env.reg.operator(op.address).stake == MIN + 5 * TOKEN
    (event,) = env.reg.events(receipt, "StakeAdded")
    assert event.args.stake == MIN + 5 * TOKEN
    assert env.registry_balance() == MIN + 5 * TOKEN


def test_add_stake_reverts(env: Env):
    op = env.ops[0]
    with pytest.raises(errors.NotRegistered):
        env.reg.add_stake(op, MIN)
    env.reg.register(op)
    with pytest.raises(errors.ZeroAmount):
        env.reg.add_stake(op, 0)


def test_add_stake_after_full_unbond_must_reach_minimum(env: Env):
    op = env.ops[0]
    env.reg.register(op)
    env.reg.request_unbond(op, MIN)
    with pytest.raises(errors.BelowMinimumBond):
        env.reg.add_stake(op, MIN - 1)
    env.reg.add_stake(op, MIN)
    assert env.reg.operator(op.address).stake == MIN


def test_unbond_then_withdraw_after_delay(env: Env):
    op = env.ops[0]
    env.reg.register(op, 30 * TOKEN)
    receipt = env.reg.request_unbond(op, 20 * TOKEN)
    info = env.reg.operator(op.address)
    assert (info.stake, info.unbonding) == (MIN, 20 * TOKEN)
    block_time = env.w3.eth.get_block(receipt["blockNumber"])["timestamp"]
    assert info.unbond_ready_at == block_time + DELAY
    with pytest.raises(errors.UnbondingNotReady, match="withdrawable at"):
        env.reg.withdraw(op)
    env.travel(DELAY - 10)
    with pytest.raises(errors.UnbondingNotReady):
        env.reg.withdraw(op)
    env.travel(10)
    before = env.reg.token_balance(op.address)
    env.reg.withdraw(op)
    assert env.reg.token_balance(op.address) == before + 20 * TOKEN
    assert env.reg.operator(op.address).unbonding == 0
    assert env.registry_balance() == MIN
    with pytest.raises(errors.NothingToWithdraw):
        env.reg.withdraw(op)


def test_second_unbond_restarts_the_clock(env: Env):
    op = env.ops[0]
    env.reg.register(op, 40 * TOKEN)
    env.reg.request_unbond(op, 10 * TOKEN)
    env.travel(DELAY - 100)
    env.reg.request_unbond(op, 10 * TOKEN)
    env.travel(200)
    with pytest.raises(errors.UnbondingNotReady):
        env.reg.withdraw(op)
    assert env.reg.operator(op.address).unbonding == 20 * TOKEN


def test_unbond_reverts(env: Env):
    op = env.ops[0]
    with pytest.raises(errors.NotRegistered):
        env.reg.request_unbond(op, MIN)
    env.reg.register(op, 15 * TOKEN)
    with pytest.raises(errors.ZeroAmount):
        env.reg.request_unbond(op, 0)
    with pytest.raises(errors.InsufficientStake, match="only 15"):
        env.reg.request_unbond(op, 16 * TOKEN)
    with pytest.raises(errors.BelowMinimumBond):
        env.reg.request_unbond(op, 6 * TOKEN)  # would leave 9 tokens of dust
    env.reg.request_unbond(op, 5 * TOKEN)  # leaves exactly the minimum
    env.reg.request_unbond(op, MIN)  # leaves zero
    assert env.reg.operator(op.address).stake == 0


def test_withdraw_never_registered_reverts(env: Env):
    with pytest.raises(errors.NothingToWithdraw):
        env.reg.withdraw(env.outsider)
