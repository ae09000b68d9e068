"""The 256-operator cap with real operators (no storage faking).

* Leaving frees the place: 256 operators that register, unbond and withdraw everything leave
  an empty list, and a newcomer can register (before the fix `_operatorList` only grew, so
  the cap became permanent after churn).
* With 256 operators a newcomer gets `RegistryFull`; jailed operators holding nothing leave
  the list too.
* Opening a fraud case with 256 bonded operators (the worst case of the snapshot loop) stays
  well inside a block, and the views that loop over the list do not revert.

Set-up sends ~1,000 transactions with automine off and mines them in a few blocks.
"""

from __future__ import annotations

import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount

from fai_net.registry import errors
from fai_net.registry.deploy import DEFAULT_MIN_BOND as MIN
from fai_net.registry.deploy import DEFAULT_UNBONDING_DELAY as DELAY

from .conftest import Env, fund_eth

CAP = 256
GAS = 300_000  # explicit gas: skips estimation, keeps 1,000+ set-up transactions fast


def _fleet_account(n: int) -> LocalAccount:
    return Account.from_key((0xFA2_0000 + n).to_bytes(32, "big"))


def _send(env: Env, sender: LocalAccount, fn) -> None:
    """Sign and send without waiting (automine is off while a batch is sent)."""
    nonce = _nonces.get(sender.address)
    if nonce is None:
        nonce = env.w3.eth.get_transaction_count(sender.address, "pending")
    tx = fn.build_transaction(
        {
            "from": sender.address,
            "nonce": nonce,
            "chainId": env.reg.chain_id,
            "gas": GAS,
            "maxFeePerGas": 10**11,
            "maxPriorityFeePerGas": 1,
        }
    )
    _nonces[sender.address] = nonce + 1
    tx_hash = env.w3.eth.send_raw_transaction(sender.sign_transaction(tx).raw_transaction)
    _sent.append(tx_hash)


def _settle(env: Env) -> None:
    """Mine until every transaction sent so far is in a block; each must have succeeded."""
    pending = env.rpc("txpool_status")["pending"]
    while int(pending, 16) if isinstance(pending, str) else pending:
        env.rpc("evm_mine")
        pending = env.rpc("txpool_status")["pending"]
    for tx_hash in _sent:
        assert env.w3.eth.get_transaction_receipt(tx_hash)["status"] == 1
    _sent.clear()
    _nonces.clear()


class _batch:
    """Automine off for the duration; always switched back on."""

    def __init__(self, env: Env):
        self.env = env

    def __enter__(self):
        self.env.rpc("evm_setAutomine", [False])

    def __exit__(self, *exc):
        self.env.rpc("evm_setAutomine", [True])
        if exc[0] is None:
            _settle(self.env)
        else:
            _sent.clear()
            _nonces.clear()


_nonces: dict[str, int] = {}
_sent: list = []


@pytest.fixture(scope="module")
def fleet(base_env: Env):
    """256 registered, advertised (live) operators on top of the fresh deployment."""
    env = base_env
    outer = env.rpc("evm_snapshot")
    reg, f, tok = env.reg, env.reg.contract.functions, env.reg.token.functions
    accounts = [_fleet_account(i) for i in range(CAP)]
    fund_eth(env.w3, *accounts)
    expiry = env.now() + 23 * 3600
    with _batch(env):
        for i, acct in enumerate(accounts):
            _send(env, env.owner, tok.transfer(acct.address, MIN))
            _send(env, acct, tok.approve(reg.address, MIN))
            _send(env, acct, f.register(MIN))
            ad = reg.sign_advertisement(
                acct,
                (i + 1).to_bytes(32, "big"),
                ["/ip4/127.0.0.1/tcp/1"],
                expiry=expiry,
                nonce=0,
                key_proof=bytes(64),  # attribution is not what this test is about
            )
            _send(
                env,
                acct,
                f.postAdvertisement(
                    ad.operator,
                    ad.peer_key,
                    list(ad.multiaddrs),
                    ad.expiry,
                    ad.nonce,
                    ad.key_proof,
                    ad.signature,
                ),
            )
    assert f.operatorCount().call() == CAP
    yield env, accounts
    assert env.rpc("evm_revert", [outer]) is True


@pytest.fixture
def fleet_env(fleet):
    env, accounts = fleet
    snap = env.rpc("evm_snapshot")
    yield env, accounts
    assert env.rpc("evm_revert", [snap]) is True


def test_fraud_case_opening_fits_at_the_cap(fleet_env):
    env, accounts = fleet_env
    f = env.reg.contract.functions
    assert f.liveStake().call() == CAP * MIN  # loops over 256 operators, does not revert
    assert len(f.operatorsPage(0, 2**256 - 1).call()) == CAP
    assert len(env.reg.operators(page=100)) == CAP
    receipt = env.reg.report_fraud(accounts[0], accounts[1].address, b"\x01" * 32)
    (opened,) = env.reg.events(receipt, "FraudCaseOpened")
    assert opened.args.snapshotBondedStake == CAP * MIN  # the target's stake included
    assert len(opened.args.snapshotOperators) == CAP
    # docs/registry.md gives the measured figure; keep a generous ceiling far below 30 M.
    assert receipt["gasUsed"] < 2_500_000, receipt["gasUsed"]
    print(f"fraud case opening at {CAP} bonded operators: {receipt['gasUsed']} gas")
    # A vote at the cap passes the 256-entry snapshot back: still cheap enough.
    vote = env.reg.report_fraud(accounts[2], accounts[1].address, b"\x01" * 32)
    assert vote["gasUsed"] < 500_000, vote["gasUsed"]
    print(f"fraud vote at {CAP} bonded operators: {vote['gasUsed']} gas")


def test_registry_full_at_the_cap(fleet_env):
    env, _ = fleet_env
    with pytest.raises(errors.RegistryFull, match="256"):
        env.reg.register(env.ops[0])


def test_cap_frees_up_after_operators_leave(fleet_env):
    """Every one of the 256 operators leaves; newcomers can register again."""
    env, accounts = fleet_env
    f = env.reg.contract.functions
    with _batch(env):
        for acct in accounts:
            _send(env, acct, f.requestUnbond(MIN))
    env.travel(DELAY)
    with _batch(env):
        for acct in accounts:
            _send(env, acct, f.withdraw())
    assert f.liveStake().call() == 0
    assert env.registry_balance() == 0  # every token has left: the registry is empty
    assert f.operatorCount().call() == 0
    newcomer = env.ops[0]
    # Spec: registration can be stopped only by the owner's pause, not by other users.
    try:
        env.reg.register(newcomer)
    except errors.RegistryFull:
        pytest.fail(
            "registry is permanently full: 256 operators that already withdrew everything "
            "still occupy _operatorList, so no new operator can ever join"
        )
    assert env.reg.operator(newcomer.address).registered
    assert env.reg.operators() == [newcomer.address]


def test_jailed_operators_leave_the_list_once_emptied(fleet_env):
    env, accounts = fleet_env
    jailed = accounts[7]
    a = env.reg.sign_batch_header(jailed, (8).to_bytes(32, "big"), 1, b"\x01" * 32, 0)
    b = env.reg.sign_batch_header(jailed, (8).to_bytes(32, "big"), 1, b"\x02" * 32, 0)
    env.reg.slash_equivocation(env.outsider, a, b)
    assert env.reg.contract.functions.operatorCount().call() == CAP  # still holds unbonding
    with pytest.raises(errors.RegistryFull):
        env.reg.register(env.ops[0])
    env.travel(DELAY)
    env.reg.withdraw(jailed)
    assert jailed.address not in env.reg.operators()
    env.reg.register(env.ops[0])  # the place is free again...
    with pytest.raises(errors.OperatorIsJailed):  # ...but never for the jailed operator
        env.reg.register(jailed)
