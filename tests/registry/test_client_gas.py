"""Client robustness for `reportFraud` under concurrent reporters, and mined-revert decoding.

Honest operators react to the same evidence at about the same time. The client estimates gas
against the latest block, where its report is an ordinary vote; if another vote lands first,
this report becomes the one that executes the slash, which costs more. The client must leave
room for that path, and when a mined transaction does revert, name the reason.
"""

from __future__ import annotations

import threading
import time

import pytest

from fai_net.registry import errors
from fai_net.registry.deploy import DEFAULT_MIN_BOND as MIN

from .conftest import Env, node_key

EVIDENCE = b"\xee" * 32


def _live(env: Env, n: int):
    ops = env.ops[:n]
    for i, op in enumerate(ops):
        env.reg.register(op, MIN)
        env.reg.advertise(op, node_key(i + 1), ["/ip4/127.0.0.1/tcp/1"])
    return ops


def _send_first(env: Env, sender, fn, tip: int = 10**11) -> bytes:
    """Send with a higher tip than the client uses, so it is ordered first in the block."""
    tx = fn.build_transaction(
        {
            "from": sender.address,
            "nonce": env.w3.eth.get_transaction_count(sender.address, "pending"),
            "chainId": env.reg.chain_id,
            "gas": 1_000_000,
            "maxFeePerGas": 10**12,
            "maxPriorityFeePerGas": tip,
        }
    )
    return env.w3.eth.send_raw_transaction(sender.sign_transaction(tx).raw_transaction)


def _race(env: Env, client_call, client_sender, competitor, competitor_fn):
    """Run `client_call` in a thread; once its tx is pending, add the competitor's and mine."""
    env.rpc("evm_setAutomine", [False])
    outcome: dict = {}

    def run():
        try:
            outcome["receipt"] = client_call()
        except Exception as exc:
            outcome["error"] = exc

    try:
        worker = threading.Thread(target=run)
        worker.start()
        deadline = time.monotonic() + 10
        count = env.w3.eth.get_transaction_count
        while count(client_sender.address, "pending") == count(client_sender.address):
            assert time.monotonic() < deadline, "the client's tx never reached the mempool"
            time.sleep(0.05)
        _send_first(env, competitor, competitor_fn)
        env.rpc("evm_mine")
        worker.join(timeout=30)
    finally:
        env.rpc("evm_setAutomine", [True])
    return outcome


def test_racing_fraud_reports_do_not_run_out_of_gas(env: Env):
    target, a, b, c = _live(env, 4)
    env.reg.report_fraud(a, target.address, EVIDENCE)  # 10 of 40 reported: not yet > 2/3
    # c estimates as an ordinary vote; b's vote lands first, so c's executes the slash.
    outcome = _race(
        env,
        lambda: env.reg.report_fraud(c, target.address, EVIDENCE),
        c,
        b,
        env.reg.report_fraud_function(target.address, EVIDENCE),
    )
    error = outcome.get("error")
    if error is not None:
        block = env.w3.eth.get_block("latest", full_transactions=True)
        mine = [t for t in block.transactions if t["from"] == c.address]
        detail = ""
        if mine:
            used = env.w3.eth.get_transaction_receipt(mine[0]["hash"])["gasUsed"]
            detail = f" (gas limit {mine[0]['gas']}, gas used {used}: out of gas)"
        raise AssertionError(f"c's report failed: {error!r}{detail}")
    (executed,) = env.reg.events(outcome["receipt"], "FraudCaseExecuted")
    assert executed.args.target == target.address
    assert env.reg.operator(target.address).stake < MIN


def test_mined_revert_is_replayed_into_the_typed_error(env: Env):
    """x's vote is estimated while the case is open; y's vote, ordered first in the same
    block, executes it. x's transaction is mined and reverts, and the client names the reason
    (`FraudCaseClosed`) by replaying it with eth_call at that block."""
    target, a, x, y = env.ops[:4]
    for i, (op, stake) in enumerate(zip((target, a, x, y), (MIN, 4 * MIN, MIN, MIN), strict=True)):
        env.reg.register(op, stake)
        env.reg.advertise(op, node_key(i + 1), ["/ip4/127.0.0.1/tcp/1"])
    env.reg.report_fraud(a, target.address, EVIDENCE)  # 4 of 7; either x or y executes
    outcome = _race(
        env,
        lambda: env.reg.report_fraud(x, target.address, EVIDENCE),
        x,
        y,
        env.reg.report_fraud_function(target.address, EVIDENCE),
    )
    error = outcome.get("error")
    assert isinstance(error, errors.FraudCaseClosed), outcome
    assert error.receipt["status"] == 0
    assert env.reg.fraud_case(env.reg.fraud_case_id(target.address, EVIDENCE)).executed


def test_out_of_gas_is_reported_as_such(env: Env):
    op = env.ops[0]
    env.reg.approve(op, MIN)
    with pytest.raises(errors.TransactionFailed, match="out of gas"):
        env.reg.tx.send(op, env.reg.contract.functions.register(MIN), gas=30_000)
