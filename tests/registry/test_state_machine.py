"""Random register/stake/unbond/withdraw/advertise/slash/report sequences against Anvil.

A small Python model of each operator's bond and of every fraud case runs beside the chain.
Every call's outcome is predicted by the model, success or the exact custom error, fraud
reports included. After every step the chain must agree with the model, and the economic
invariants must hold: the registry holds exactly the bonded + unbonding stake + the slashed
pot, no stake is dust, slashed tokens are never paid back to the operator, an (operator,
peer key, seq) is slashed at most once, reporter rewards stay within their bound and always
reach the committed beneficiary (whoever sends the reveal), and the operator list holds
exactly the operators with bonded or unbonding stake.

The attack rules are part of the model: operators advertise other operators' node keys
(squatting, with a copied binding proof) and the attribution read by nodes (`live_peers`)
must never name a squatter nor lose the real holder; fraud quorums are taken over bonded
stake (lapsed advertisements change nothing), a case executes only with more than 2/3 of it,
and a target is fraud-slashed at most once per cooldown window whatever the evidence. Each
example starts from an EVM snapshot of the same fresh deployment.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)

from fai_net.registry import errors
from fai_net.registry.deploy import DEFAULT_MIN_BOND as MIN
from fai_net.registry.deploy import DEFAULT_REPORTER_REWARD_BPS as REWARD_BPS
from fai_net.registry.deploy import DEFAULT_SLASH_BPS as SLASH_BPS
from fai_net.registry.deploy import DEFAULT_UNBONDING_DELAY as DELAY

from .conftest import Env, digest, node_key, peer_key

N_OPS = 4
MAX_REWARD_BPS = 5_000
MARGIN = 60  # seconds: a block may land a little after the latest block's time
amounts = st.sampled_from([1, MIN - 1, MIN, MIN + 1, 2 * MIN, 5 * MIN + 3])
#: What the runs reached, over all examples: the test fails unless each outcome it names
#: (a fraud case opened and executed, an equivocation slash, a withdraw both refused as
#: not ready and paid) happened at least once, so the machine cannot pass by never
#: exercising them. Also reported per example with hypothesis.event().
REACHED: Counter[str] = Counter()


def reached(what: str) -> None:
    REACHED[what] += 1
    event(what)


@dataclass
class Bond:
    registered: bool = False
    stake: int = 0
    unbonding: int = 0
    jailed: bool = False
    advertised: set[int] = field(default_factory=set)  # node indexes it ever advertised
    ad_key: int | None = None  # node index of the current advertisement
    ad_expiry: int = 0
    fraud_cooldown_until: int = 0
    deposited: int = 0
    withdrawn: int = 0
    slashed: int = 0
    ready_at: int = 0  # when `unbonding` may be withdrawn (the contract's unbondReadyAt)

    def slash(self, jail: bool, block_time: int) -> int:
        """Mirror of the contract's _slash; returns the slashed amount. Stake it forces into
        unbonding waits a fresh delay from the slash's block."""
        amount = (self.stake + self.unbonding) * SLASH_BPS // 10_000
        if amount <= self.stake:
            self.stake -= amount
        else:
            self.unbonding -= amount - self.stake
            self.stake = 0
        if self.stake and (jail or self.stake < MIN):
            self.stake, self.unbonding = 0, self.unbonding + self.stake
            self.ready_at = max(self.ready_at, block_time + DELAY)
        if jail:
            self.jailed, self.ad_expiry = True, 0
        self.slashed += amount
        self.leave_if_empty()
        return amount

    def leave_if_empty(self) -> None:
        if self.registered and self.stake == 0 and self.unbonding == 0:
            self.registered, self.ad_expiry = False, 0

    def live(self, now: int) -> bool | None:
        """Liveness at the next block; None when too close to the expiry to be sure."""
        if not (self.registered and not self.jailed and self.stake >= MIN):
            return False
        if abs(self.ad_expiry - now) < MARGIN:
            return None
        return now < self.ad_expiry


@dataclass
class Case:
    opened_at: int
    snapshot: dict[int, int]
    total: int
    reported: set[int] = field(default_factory=set)
    weight: int = 0
    executed: bool = False


@dataclass
class Model:
    bonds: list[Bond] = field(default_factory=lambda: [Bond() for _ in range(N_OPS)])
    slashed_seqs: set[tuple[int, int, int]] = field(default_factory=set)
    cases: dict[tuple[int, int], Case] = field(default_factory=dict)
    fraud_slashes: dict[int, list[int]] = field(default_factory=dict)  # target -> times


class RegistryMachine(RuleBasedStateMachine):
    env: Env  # set by the test before the machine runs

    def __init__(self):
        super().__init__()
        self.snapshot = self.env.rpc("evm_snapshot")
        self.reg = self.env.reg
        self.ops = self.env.ops[:N_OPS]
        self.reporter = self.env.outsider
        self.copier = self.env.ops[N_OPS]  # sends copies of pending reveals
        self.model = Model()

    def teardown(self):
        assert self.env.rpc("evm_revert", [self.snapshot]) is True

    def block_time(self, receipt) -> int:
        return self.env.w3.eth.get_block(receipt["blockNumber"])["timestamp"]

    @initialize(stakes=st.lists(st.sampled_from([MIN, 2 * MIN, 3 * MIN]), min_size=3, max_size=3))
    def bond_three(self, stakes):
        """Three operators start bonded, so fraud reports have bonded reporters and a quorum
        is within reach; the fourth starts outside, as every operator used to."""
        for i, amount in enumerate(stakes):
            self.register(i, amount)

    # -- rules ---------------------------------------------------------------------------
    @rule(i=st.integers(0, N_OPS - 1), amount=amounts)
    def register(self, i, amount):
        b = self.model.bonds[i]
        if b.registered:
            with pytest.raises(errors.AlreadyRegistered):
                self.reg.register(self.ops[i], amount)
        elif b.jailed:
            with pytest.raises(errors.OperatorIsJailed):
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
            receipt = self.reg.request_unbond(self.ops[i], amount)
            b.stake -= amount
            b.unbonding += amount
            b.ready_at = self.block_time(receipt) + DELAY

    @rule(i=st.integers(0, N_OPS - 1))
    def withdraw(self, i):
        b = self.model.bonds[i]
        op = self.ops[i]
        before = self.reg.token_balance(op.address)
        if b.unbonding == 0:
            with pytest.raises(errors.NothingToWithdraw):
                self.reg.withdraw(op)
            return
        # The next block's time is at least the latest one's and within MARGIN of it.
        now = self.env.now()
        if b.ready_at - now > MARGIN:
            with pytest.raises(errors.UnbondingNotReady):
                self.reg.withdraw(op)
            reached("withdraw refused: not ready")
            return
        if b.ready_at > now:  # the deadline falls about now: the block time decides
            try:
                self.reg.withdraw(op)
            except errors.UnbondingNotReady:
                return
        else:
            self.reg.withdraw(op)
        reached("withdraw paid")
        received = self.reg.token_balance(op.address) - before
        assert received == b.unbonding > 0
        b.withdrawn += received
        b.unbonding = 0
        b.leave_if_empty()

    @rule(i=st.integers(0, N_OPS - 1), k=st.integers(0, N_OPS - 1))
    def advertise(self, i, k):
        """Operator i advertises node k's key: its own node when k == i, else squatting with
        the copy of the binding proof node k made for its real operator."""
        b = self.model.bonds[i]
        op = self.ops[i]
        proof = self.reg.binding_proof(node_key(k + 1), self.ops[k].address)
        expected = None
        if not b.registered:
            expected = errors.NotRegistered
        elif b.jailed:
            expected = errors.OperatorIsJailed
        addrs = [f"/ip4/127.0.0.{i + 1}/tcp/1"]
        if expected:
            with pytest.raises(expected):
                self.reg.advertise(op, peer_key(k + 1), addrs, key_proof=proof)
        else:
            self.reg.advertise(op, peer_key(k + 1), addrs, key_proof=proof)
            b.advertised.add(k)
            b.ad_key = k
            b.ad_expiry = self.reg.operator(op.address).ad_expiry

    @rule(seconds=st.sampled_from([60, 3_600, 13 * 3_600, DELAY // 2, DELAY]))
    def travel(self, seconds):
        self.env.travel(seconds)

    @rule(
        i=st.integers(0, N_OPS - 1),
        k=st.integers(0, N_OPS - 1),
        seq=st.integers(0, 2),
        copier=st.booleans(),
    )
    def slash_equivocation(self, i, k, seq, copier):
        """Operator i signed two headers for node k's key; the reporter commits and the
        reveal is sent by the reporter or by a copier: the reward goes to the reporter."""
        b = self.model.bonds[i]
        op = self.ops[i]
        key = peer_key(k + 1)
        h1 = self.reg.sign_batch_header(op, key, seq, digest(1), 0)
        h2 = self.reg.sign_batch_header(op, key, seq, digest(2), 0)
        expected = None
        if not b.registered:
            expected = errors.NotRegistered
        elif k not in b.advertised:
            expected = errors.KeyNotAdvertised
        elif (i, k, seq) in self.model.slashed_seqs:
            expected = errors.AlreadySlashed
        if expected:
            with pytest.raises(expected):
                self.reg.slash_equivocation(self.reporter, h1, h2, operator=op.address)
            return
        before = self.reg.token_balance(self.reporter.address)
        if copier:
            commitment = self.reg.equivocation_commitment(h1, h2, self.reporter.address)
            self.reg.commit_equivocation(self.reporter, commitment)
            fn = self.reg.reveal_equivocation_function(h1, h2, op.address, self.reporter.address)
            receipt = self.reg.tx.send(self.copier, fn, estimate_block="pending")
        else:
            receipt = self.reg.slash_equivocation(self.reporter, h1, h2, operator=op.address)
        amount = b.slash(jail=True, block_time=self.block_time(receipt))
        reached("equivocation slashed")
        self.model.slashed_seqs.add((i, k, seq))
        f = self.reg.contract.functions
        assert f.isEquivocationSlashed(op.address, key, seq).call()
        reward = self.reg.token_balance(self.reporter.address) - before
        (event,) = self.reg.events(receipt, "Slashed")
        assert event.args.amount == amount
        assert event.args.rewardee == self.reporter.address
        assert reward == event.args.reward == amount * REWARD_BPS // 10_000
        assert reward * 10_000 <= amount * MAX_REWARD_BPS

    @rule(r=st.integers(0, N_OPS - 1), t=st.integers(0, N_OPS - 1), evidence=st.integers(0, 2))
    def report_fraud(self, r, t, evidence):
        reporter, target = self.ops[r], self.ops[t]
        bonds, now = self.model.bonds, self.env.now()
        case = self.model.cases.get((t, evidence))
        expected = None
        if r == t:
            expected = errors.SelfReport
        elif bonds[r].stake == 0:
            expected = errors.ReporterNotBonded
        elif case is not None and case.executed:
            expected = errors.FraudCaseClosed
        elif not bonds[t].registered:
            expected = errors.NotRegistered
        elif bonds[t].jailed:
            expected = errors.TargetJailed
        elif abs(now - bonds[t].fraud_cooldown_until) < MARGIN:
            return  # the cooldown ends about now: the outcome depends on block time
        elif now < bonds[t].fraud_cooldown_until:
            expected = errors.FraudCooldown
        elif case is not None:
            deadline = case.opened_at + DELAY
            if abs(now - deadline) < MARGIN:
                return
            if now >= deadline:
                expected = errors.FraudCaseExpired
            elif r in case.reported:
                expected = errors.AlreadyReported
            elif r not in case.snapshot:
                expected = errors.NotInSnapshot
        if expected:
            with pytest.raises(expected):
                self.reg.report_fraud(reporter, target.address, digest(evidence))
            return

        receipt = self.reg.report_fraud(reporter, target.address, digest(evidence))
        block_time = self.env.w3.eth.get_block(receipt["blockNumber"])["timestamp"]
        if case is None:
            # Bonded stake of every operator holding any, the target's included; whether
            # its advertisement is live plays no part.
            snapshot = {i: b.stake for i, b in enumerate(bonds) if b.stake > 0}
            case = Case(block_time, snapshot, sum(snapshot.values()))
            self.model.cases[(t, evidence)] = case
            reached("fraud case opened")
            (opened,) = self.reg.events(receipt, "FraudCaseOpened")
            assert opened.args.snapshotBondedStake == case.total
            assert dict(
                zip(opened.args.snapshotOperators, opened.args.snapshotWeights, strict=True)
            ) == {self.ops[i].address: w for i, w in snapshot.items()}
            weight = bonds[r].stake
        else:
            weight = min(case.snapshot[r], bonds[r].stake)
        case.reported.add(r)
        case.weight += weight
        (vote,) = self.reg.events(receipt, "FraudReported")
        assert (vote.args.weight, vote.args.reportedStake) == (weight, case.weight)
        executed = self.reg.events(receipt, "FraudCaseExecuted")
        assert bool(executed) == (3 * case.weight > 2 * case.total)
        assert self.reg.events(receipt, "Jailed") == []
        if executed:
            case.executed = True
            # More than 2/3 of all stake bonded at opening voted: a minority never gets here.
            assert 2 * case.weight > case.total
            assert executed[0].args.slashed == bonds[t].slash(jail=False, block_time=block_time)
            reached("fraud case executed")
            assert executed[0].args.cooldownUntil == block_time + DELAY
            bonds[t].fraud_cooldown_until = block_time + DELAY
            times = self.model.fraud_slashes.setdefault(t, [])
            assert not times or block_time >= times[-1] + DELAY  # one per cooldown window
            times.append(block_time)
        chain = self.reg.fraud_case(self.reg.fraud_case_id(target.address, digest(evidence)))
        assert (chain.reported_stake, chain.executed) == (case.weight, case.executed)

    @rule(t=st.integers(0, N_OPS - 1), evidence=st.integers(0, 2))
    def report_fraud_in_turn(self, t, evidence):
        """Every other operator reports the same evidence against t, one after the other:
        how a real quorum forms (each report is predicted like any other)."""
        for r in range(N_OPS):
            if r != t:
                self.report_fraud(r, t, evidence)

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
            assert info.fraud_cooldown_until == b.fraud_cooldown_until
            assert info.stake == 0 or info.stake >= MIN
            assert info.registered == (info.stake + info.unbonding > 0)
            # Slashed tokens never come back: what went in is out, still held, or slashed.
            assert b.deposited == b.withdrawn + b.stake + b.unbonding + b.slashed
            held += info.stake + info.unbonding
        assert self.env.registry_balance() == held + pot
        listed = [
            op.address for op, b in zip(self.ops, self.model.bonds, strict=True) if b.registered
        ]
        assert sorted(self.reg.operators()) == sorted(listed)

    @invariant()
    def attribution_follows_the_key_holder(self):
        """What registry-mode nodes read: a key is attributed only to the operator its node
        made the binding proof for, never to a squatter, and the real holder is not blocked."""
        now = self.env.now()
        peers = self.reg.live_peers()
        by_key = {p.peer_key: p.operator for p in peers}
        assert len(by_key) == len(peers)
        for p in peers:
            k = next(j for j in range(N_OPS) if peer_key(j + 1) == p.peer_key)
            assert p.operator == self.ops[k].address, "a squatter was attributed a key"
        for i, b in enumerate(self.model.bonds):
            if b.ad_key == i and b.live(now):  # its own key, live by a clear margin
                assert by_key.get(peer_key(i + 1)) == self.ops[i].address


def test_registry_state_machine(env: Env):
    RegistryMachine.env = env
    run_state_machine_as_test(
        RegistryMachine,
        settings=settings(
            max_examples=15,
            stateful_step_count=30,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
            # The same examples every run: the coverage check below must not be luck.
            derandomize=True,
        ),
    )
    missing = {
        "fraud case opened",
        "fraud case executed",
        "equivocation slashed",
        "withdraw refused: not ready",
        "withdraw paid",
    } - set(REACHED)
    assert not missing, f"the machine never reached {sorted(missing)} ({dict(REACHED)})"
