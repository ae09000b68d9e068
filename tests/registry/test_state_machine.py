"""Random register/stake/unbond/withdraw/advertise/slash/report sequences against Anvil.

A small Python model of each operator's bond runs beside the chain. After every step the
chain must agree with the model, and the economic invariants must hold: the registry holds
exactly the bonded + unbonding stake + the slashed pot, no stake is dust, slashed tokens are
never paid back to the operator, an (operator, seq) is slashed at most once, and reporter
rewards stay within their bound. Each example starts from an EVM snapshot of the same fresh
deployment.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

from fai_net.registry import errors
from fai_net.registry.deploy import DEFAULT_MIN_BOND as MIN
from fai_net.registry.deploy import DEFAULT_REPORTER_REWARD_BPS as REWARD_BPS
from fai_net.registry.deploy import DEFAULT_SLASH_BPS as SLASH_BPS
from fai_net.registry.deploy import DEFAULT_UNBONDING_DELAY as DELAY

from .conftest import Env, digest, peer_key

N_OPS = 4
MAX_REWARD_BPS = 5_000
amounts = st.sampled_from([1, MIN - 1, MIN, MIN + 1, 2 * MIN, 5 * MIN + 3])


@dataclass
class Bond:
    registered: bool = False
    stake: int = 0
    unbonding: int = 0
    jailed: bool = False
    advertised: bool = False
    deposited: int = 0
    withdrawn: int = 0
    slashed: int = 0

    def slash(self) -> tuple[int, int]:
        """Mirror of the contract's _slashAndJail; returns (slashed, remaining bond)."""
        amount = (self.stake + self.unbonding) * SLASH_BPS // 10_000
        total = self.stake + self.unbonding - amount
        self.stake, self.unbonding, self.jailed = 0, total, True
        self.slashed += amount
        return amount, total


@dataclass
class Model:
    bonds: list[Bond] = field(default_factory=lambda: [Bond() for _ in range(N_OPS)])
    slashed_seqs: set[tuple[int, int]] = field(default_factory=set)


class RegistryMachine(RuleBasedStateMachine):
    env: Env  # set by the test before the machine runs

    def __init__(self):
        super().__init__()
        self.snapshot = self.env.rpc("evm_snapshot")
        self.reg = self.env.reg
        self.ops = self.env.ops[:N_OPS]
        self.reporter = self.env.outsider
        self.model = Model()

    def teardown(self):
        assert self.env.rpc("evm_revert", [self.snapshot]) is True

    # -- rules ---------------------------------------------------------------------------
    @rule(i=st.integers(0, N_OPS - 1), amount=amounts)
    def register(self, i, amount):
        b = self.model.bonds[i]
        if b.registered:
            with pytest.raises(errors.AlreadyRegistered):
                self.reg.register(self.ops[i], amount)
        elif amount < MIN:
            with pytest.raises(errors.BelowMinimumBond):
                self.reg.register(self.ops[i], amount)
        else:
            self.reg.register(self.ops[i], amount)
            b.registered, b.stake, b.deposited = True, amount, b.deposited + amount

    @rule(i=st.integers(0, N_OPS - 1), amount=amounts)
    def add_stake(self, i, amount):
        b = self.model.bonds[i]
        expected = None
        if not b.registered:
            expected = errors.NotRegistered
        elif b.jailed:
            expected = errors.OperatorIsJailed
        elif b.stake + amount < MIN:
            expected = errors.BelowMinimumBond
        if expected:
            with pytest.raises(expected):
                self.reg.add_stake(self.ops[i], amount)
        else:
            self.reg.add_stake(self.ops[i], amount)
            b.stake += amount
            b.deposited += amount

    @rule(i=st.integers(0, N_OPS - 1), amount=amounts)
    def request_unbond(self, i, amount):
        b = self.model.bonds[i]
        expected = None
        if not b.registered:
            expected = errors.NotRegistered
        elif amount > b.stake:
            expected = errors.InsufficientStake
        elif 0 < b.stake - amount < MIN:
            expected = errors.BelowMinimumBond
        if expected:
            with pytest.raises(expected):
                self.reg.request_unbond(self.ops[i], amount)
        else:
            self.reg.request_unbond(self.ops[i], amount)
            b.stake -= amount
            b.unbonding += amount

    @rule(i=st.integers(0, N_OPS - 1))
    def withdraw(self, i):
        b = self.model.bonds[i]
        op = self.ops[i]
        before = self.reg.token_balance(op.address)
        try:
            self.reg.withdraw(op)
        except errors.NothingToWithdraw:
            assert b.unbonding == 0
            return
        except errors.UnbondingNotReady:
            assert b.unbonding > 0
            return
        received = self.reg.token_balance(op.address) - before
        assert received == b.unbonding > 0
        b.withdrawn += received
        b.unbonding = 0

    @rule(i=st.integers(0, N_OPS - 1))
    def advertise(self, i):
        b = self.model.bonds[i]
        op = self.ops[i]
        if not b.registered:
            with pytest.raises(errors.NotRegistered):
                self.reg.advertise(op, peer_key(i + 1), ["/ip4/10.0.0.1/tcp/1"])
        elif b.jailed:
            with pytest.raises(errors.OperatorIsJailed):
                self.reg.advertise(op, peer_key(i + 1), ["/ip4/10.0.0.1/tcp/1"])
        else:
            self.reg.advertise(op, peer_key(i + 1), ["/ip4/10.0.0.1/tcp/1"])
            b.advertised = True

    @rule(seconds=st.sampled_from([60, 3_600, 13 * 3_600, DELAY // 2, DELAY]))
    def travel(self, seconds):
        self.env.travel(seconds)

    @rule(i=st.integers(0, N_OPS - 1), seq=st.integers(0, 2))
    def slash_equivocation(self, i, seq):
        b = self.model.bonds[i]
        op = self.ops[i]
        h1 = self.reg.sign_batch_header(op, peer_key(i + 1), seq, digest(1), 0)
        h2 = self.reg.sign_batch_header(op, peer_key(i + 1), seq, digest(2), 0)
        if not b.advertised:
            with pytest.raises(errors.UnknownPeerKey):
                self.reg.slash_equivocation(self.reporter, h1, h2)
            return
        if (i, seq) in self.model.slashed_seqs:
            with pytest.raises(errors.AlreadySlashed):
                self.reg.slash_equivocation(self.reporter, h1, h2)
            return
        before = self.reg.token_balance(self.reporter.address)
        receipt = self.reg.slash_equivocation(self.reporter, h1, h2)
        amount, _ = b.slash()
        self.model.slashed_seqs.add((i, seq))
        assert self.reg.contract.functions.isEquivocationSlashed(op.address, seq).call()
        reward = self.reg.token_balance(self.reporter.address) - before
        (event,) = self.reg.events(receipt, "Slashed")
        assert event.args.amount == amount
        assert reward == event.args.reward == amount * REWARD_BPS // 10_000
        assert reward * 10_000 <= amount * MAX_REWARD_BPS

    @rule(r=st.integers(0, N_OPS - 1), t=st.integers(0, N_OPS - 1), evidence=st.integers(0, 1))
    def report_fraud(self, r, t, evidence):
        reporter, target = self.ops[r], self.ops[t]
        # Liveness is time-dependent; ask the chain, and only act with a comfortable margin.
        info = self.reg.operator(reporter.address)
        if r == t:
            with pytest.raises(errors.SelfReport):
                self.reg.report_fraud(reporter, target.address, digest(evidence))
            return
        if not self.reg.is_live(reporter.address) or info.ad_expiry < self.env.now() + 60:
            return
        try:
            receipt = self.reg.report_fraud(reporter, target.address, digest(evidence))
        except (errors.AlreadyReported, errors.FraudCaseExpired, errors.FraudCaseClosed):
            return
        except errors.NotRegistered:
            assert not self.model.bonds[t].registered
            return
        except errors.TargetJailed:
            assert self.model.bonds[t].jailed
            return
        executed = self.reg.events(receipt, "FraudCaseExecuted")
        if executed:
            amount, _ = self.model.bonds[t].slash()
            assert executed[0].args.slashed == amount

    # -- invariants ----------------------------------------------------------------------
    @invariant()
    def chain_matches_model_and_books_balance(self):
        pot = self.reg.contract.functions.slashedPot().call()
        held = 0
        for i, op in enumerate(self.ops):
            b = self.model.bonds[i]
            info = self.reg.operator(op.address)
            assert (info.registered, info.stake, info.unbonding, info.jailed) == (
                b.registered,
                b.stake,
                b.unbonding,
                b.jailed,
            )
            assert info.stake == 0 or info.stake >= MIN
            # Slashed tokens never come back: what went in is out, still held, or slashed.
            assert b.deposited == b.withdrawn + b.stake + b.unbonding + b.slashed
            held += info.stake + info.unbonding
        assert self.env.registry_balance() == held + pot


def test_registry_state_machine(env: Env):
    RegistryMachine.env = env
    run_state_machine_as_test(
        RegistryMachine,
        settings=settings(
            max_examples=10,
            stateful_step_count=20,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
