"""Owner powers (pause, sweep) and constructor validation."""

from __future__ import annotations

import pytest

from fai_net.registry import RegistryParams, deploy_registry, errors
from fai_net.registry.deploy import DEFAULT_MIN_BOND as MIN
from fai_net.registry.deploy import DEFAULT_UNBONDING_DELAY as DELAY

from .conftest import Env, digest, node_key, peer_key

EVIDENCE = b"\xee" * 32


def test_pause_stops_only_registration(env: Env):
    a, b, c = env.ops[:3]
    for op in (a, b, c):
        env.reg.register(op, 2 * MIN)
    env.reg.advertise(a, node_key(1), ["/ip4/127.0.0.1/tcp/1"])
    env.reg.request_unbond(b, MIN)
    env.reg.pause(env.owner)
    assert env.reg.contract.functions.paused().call()

    with pytest.raises(errors.EnforcedPause, match="new registrations are stopped"):
        env.reg.register(env.ops[3])
    # Everything an existing operator does keeps working: top-ups, first ads, renewals.
    env.reg.add_stake(a, MIN)
    env.reg.advertise(c, node_key(3), ["/ip4/127.0.0.3/tcp/1"])
    env.reg.advertise(a, node_key(1), ["/ip4/127.0.0.1/tcp/2"])
    env.reg.set_signer(c, env.outsider.address)

    env.travel(DELAY)
    env.reg.withdraw(b)  # exit still works
    env.reg.request_unbond(b, MIN)
    h1 = env.reg.sign_batch_header(a, peer_key(1), 1, digest(1), 0)
    h2 = env.reg.sign_batch_header(a, peer_key(1), 1, digest(2), 0)
    env.reg.slash_equivocation(env.outsider, h1, h2)  # slashing still works
    assert env.reg.operator(a.address).jailed

    env.reg.unpause(env.owner)
    env.reg.register(env.ops[3])


def test_fraud_reports_keep_working_during_a_long_pause(env: Env):
    """Issue 5: pausing never stops slashing. A pause longer than the 24 h advertisement
    ceiling must not leave everyone expired (so nobody live to report fraud)."""
    target, a, b = env.ops[:3]
    for i, (op, stake) in enumerate(((target, MIN), (a, 2 * MIN), (b, 2 * MIN))):
        env.reg.register(op, stake)
        env.reg.advertise(op, node_key(i + 1), ["/ip4/127.0.0.1/tcp/1"])
    env.reg.pause(env.owner)
    env.travel(25 * 3600)
    assert not env.reg.is_live(a.address)
    for i, op in enumerate((target, a, b)):  # renewals work while paused
        env.reg.advertise(op, node_key(i + 1), ["/ip4/127.0.0.1/tcp/1"])
        assert env.reg.is_live(op.address)
    env.reg.report_fraud(a, target.address, EVIDENCE)  # 20 of 50
    receipt = env.reg.report_fraud(b, target.address, EVIDENCE)  # 40 of 50 > 2/3
    (executed,) = env.reg.events(receipt, "FraudCaseExecuted")
    assert executed.args.slashed == MIN // 10
    assert env.reg.operator(target.address).unbonding == MIN - MIN // 10
    assert env.reg.contract.functions.paused().call()


def test_ownership_transfer_takes_two_steps_and_cannot_be_renounced(env: Env):
    f = env.reg.contract.functions
    with pytest.raises(errors.RenounceDisabled):
        env.reg.renounce_ownership(env.owner)
    # Sent without estimation it is mined and reverts; the client replays it to name the error.
    with pytest.raises(errors.RenounceDisabled) as mined:
        env.reg.tx.send(env.owner, f.renounceOwnership(), gas=100_000)
    assert mined.value.receipt["status"] == 0
    new_owner = env.ops[5]
    env.reg.transfer_ownership(env.owner, new_owner.address)
    assert f.owner().call() == env.owner.address  # nothing changes before acceptance
    assert f.pendingOwner().call() == new_owner.address
    with pytest.raises(errors.OwnableUnauthorizedAccount):
        env.reg.accept_ownership(env.outsider)
    env.reg.accept_ownership(new_owner)
    assert f.owner().call() == new_owner.address
    with pytest.raises(errors.OwnableUnauthorizedAccount):
        env.reg.pause(env.owner)
    env.reg.pause(new_owner)


def test_pause_and_unpause_are_owner_only_and_state_checked(env: Env):
    with pytest.raises(errors.OwnableUnauthorizedAccount, match="not the registry owner"):
        env.reg.pause(env.outsider)
    with pytest.raises(errors.ExpectedPause):
        env.reg.unpause(env.owner)
    env.reg.pause(env.owner)
    with pytest.raises(errors.EnforcedPause):
        env.reg.pause(env.owner)
    with pytest.raises(errors.OwnableUnauthorizedAccount):
        env.reg.unpause(env.outsider)


def test_sweep_slashed(env: Env):
    with pytest.raises(errors.ZeroAmount):
        env.reg.sweep_slashed(env.owner, env.outsider.address)
    op = env.ops[0]
    env.reg.register(op, 100 * MIN)
    env.reg.advertise(op, node_key(1), ["/dns4/a/tcp/1"])
    h1 = env.reg.sign_batch_header(op, peer_key(1), 7, digest(1), 0)
    h2 = env.reg.sign_batch_header(op, peer_key(1), 7, digest(2), 0)
    env.reg.slash_equivocation(env.ops[1], h1, h2)
    pot = env.reg.contract.functions.slashedPot().call()
    assert pot == 100 * MIN // 10 - 100 * MIN // 100  # 10 % slashed, 10 % of it rewarded
    with pytest.raises(errors.OwnableUnauthorizedAccount):
        env.reg.sweep_slashed(env.outsider, env.outsider.address)
    with pytest.raises(errors.ZeroAddress):
        env.reg.sweep_slashed(env.owner, "0x" + "00" * 20)
    env.reg.sweep_slashed(env.owner, env.outsider.address)
    assert env.reg.token_balance(env.outsider.address) == pot
    assert env.reg.contract.functions.slashedPot().call() == 0


@pytest.mark.parametrize(
    ("params", "what"),
    [
        (RegistryParams(min_bond=0), "minBond"),
        (RegistryParams(min_bond=2**96), "minBond"),
        (RegistryParams(unbonding_delay=0), "unbondingDelay"),
        (RegistryParams(unbonding_delay=366 * 86400), "unbondingDelay"),
        (RegistryParams(slash_bps=0), "slashBps"),
        (RegistryParams(slash_bps=10_001), "slashBps"),
        (RegistryParams(reporter_reward_bps=5_001), "reporterRewardBps"),
    ],
)
def test_constructor_rejects_bad_parameters(env: Env, params, what):
    with pytest.raises(errors.InvalidConfig, match=what):
        deploy_registry(env.w3, env.owner, env.reg.token_address, params)


def test_constructor_rejects_zero_token(env: Env):
    with pytest.raises(errors.InvalidConfig, match="token"):
        deploy_registry(env.w3, env.owner, "0x" + "00" * 20)


def test_views_never_revert(env: Env):
    f = env.reg.contract.functions
    nobody = env.outsider.address
    assert not f.isLive(nobody).call()
    assert f.operatorInfo(nobody).call()[3] is False
    assert f.operatorsPage(0, 10).call() == []
    assert f.operatorsPage(5, 2**256 - 1).call() == []
    env.reg.register(env.ops[0])
    assert f.operatorsPage(0, 2**256 - 1).call() == [env.ops[0].address]
    assert f.operatorsPage(1, 1).call() == []
    assert f.liveStake().call() == 0
    assert f.fraudCase(b"\x00" * 32).call()[2] == 0
    assert not f.hasReported(b"\x00" * 32, nobody).call()
    assert not f.isEquivocationSlashed(nobody, peer_key(1), 2**64 - 1).call()
    assert f.signerOf(nobody).call() == "0x" + "00" * 20
    assert f.signerOperator(nobody).call() == "0x" + "00" * 20
    assert f.equivocationCommitBlock(b"\x00" * 32).call() == 0
