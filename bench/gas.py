"""Gas used by each registry operation on a fresh Anvil (not a test: prints figures).

    .venv/bin/python bench/gas.py [--json]

Targets from issue 5: register+stake <= 150k, advertisement renewal <= 80k, equivocation
slash <= 150k. Cold and warm figures differ (first writes to a zero slot cost 20k more), so
the first and a later operator are both reported where it matters. An equivocation report is
two transactions: `equivocation_commit` (commitEquivocation) and `slash_equivocation` (the
reveal, which slashes; the target applies to it).
"""

from __future__ import annotations

import argparse
import json

from eth_account import Account
from web3 import Web3

from fai_core.identity import NodeKey
from fai_net.devnet.anvil import Anvil
from fai_net.registry import deploy_registry, deploy_token
from fai_net.registry.deploy import DEFAULT_UNBONDING_DELAY, TOKEN

TARGETS = {
    "register_stake": 150_000,
    "register_stake_first": 150_000,
    "ad_renew": 80_000,
    "ad_renew_relayed": 80_000,
    "ad_renew_by_signer": 80_000,
    "slash_equivocation": 150_000,
    "slash_equivocation_by_signer": 150_000,
}
ADDRS = ["/ip4/127.0.113.7/tcp/4001", "/ip4/127.0.113.7/udp/4001/quic-v1"]


def _last_tx_gas(w3: Web3) -> int:
    """Gas of the only transaction in the latest block (Anvil mines one block per tx)."""
    (tx_hash,) = w3.eth.get_block("latest")["transactions"]
    return w3.eth.get_transaction_receipt(tx_hash)["gasUsed"]


def _equivocation(reg, reporter, a, b, operator: str) -> tuple[int, int]:
    """Gas of the commit and of the reveal (the slash), sent as two transactions."""
    commit = reg.commit_equivocation(reporter, reg.equivocation_commitment(a, b, reporter.address))
    fn = reg.reveal_equivocation_function(a, b, operator, reporter.address)
    reveal = reg.tx.send(reporter, fn, estimate_block="pending")
    return commit["gasUsed"], reveal["gasUsed"]


def measure(w3: Web3) -> dict[str, int]:
    deployer, *ops = (Account.from_key((0xB000 + i).to_bytes(32, "big")) for i in range(6))
    reporter = Account.from_key((0xBEEF).to_bytes(32, "big"))
    for a in (deployer, reporter, *ops):
        w3.provider.make_request("anvil_setBalance", [a.address, hex(10**21)])
    gas: dict[str, int] = {}

    token = deploy_token(w3, deployer)
    gas["deploy_token"] = _last_tx_gas(w3)
    reg = deploy_registry(w3, deployer, token)
    gas["deploy_registry"] = _last_tx_gas(w3)

    for op in ops:
        reg.tx.send(deployer, reg.token.functions.transfer(op.address, 1_000 * TOKEN))
    gas["approve"] = reg.approve(ops[0], 2**256 - 1)["gasUsed"]
    gas["register_stake_first"] = reg.register(ops[0], 20 * TOKEN)["gasUsed"]
    reg.approve(ops[1], 2**256 - 1)
    gas["register_stake"] = reg.register(ops[1], 20 * TOKEN)["gasUsed"]
    gas["add_stake"] = reg.add_stake(ops[1], 5 * TOKEN)["gasUsed"]

    node = NodeKey(b"\x01" * 32)
    key = node.public_key
    gas["ad_post_first"] = reg.advertise(ops[0], node, ADDRS)["gasUsed"]
    relayed = reg.sign_advertisement(ops[0], node, ADDRS)
    gas["ad_renew_relayed"] = reg.post_advertisement(relayed, reporter)["gasUsed"]
    gas["ad_renew"] = reg.advertise(ops[0], node, ADDRS)["gasUsed"]

    gas["request_unbond"] = reg.request_unbond(ops[1], 5 * TOKEN)["gasUsed"]
    w3.provider.make_request("evm_increaseTime", [DEFAULT_UNBONDING_DELAY])
    w3.provider.make_request("evm_mine", [])
    gas["withdraw"] = reg.withdraw(ops[1])["gasUsed"]

    a = reg.sign_batch_header(ops[0], key, 9, b"\xaa" * 32, 1)
    b = reg.sign_batch_header(ops[0], key, 9, b"\xbb" * 32, 1)
    commit, reveal = _equivocation(reg, reporter, a, b, ops[0].address)
    gas["equivocation_commit"], gas["slash_equivocation"] = commit, reveal

    # A separate hot signer (setSigner) for ops[4]: renewals and headers signed by it.
    hot = Account.from_key((0xB0B).to_bytes(32, "big"))
    reg.register(ops[4], 20 * TOKEN)
    node4 = NodeKey(b"\x44" * 32)
    key4 = node4.public_key
    reg.advertise(ops[4], node4, ADDRS)
    gas["set_signer"] = reg.set_signer(ops[4], hot.address)["gasUsed"]
    by_signer = reg.sign_advertisement(hot, node4, ADDRS, operator=ops[4].address)
    gas["ad_renew_by_signer"] = reg.post_advertisement(by_signer, reporter)["gasUsed"]

    # Fraud: four live operators besides the target; the third report crosses 2/3.
    for i, op in enumerate(ops[1:4], start=2):
        if i > 2:
            reg.register(op, 20 * TOKEN)
        reg.advertise(op, NodeKey(bytes([i]) * 32), ADDRS)
    # Bonded: ops[1..4], 20 tokens each, the target's included: the third report crosses 2/3.
    target, r1, r2, r3 = ops[1], ops[2], ops[3], ops[4]
    evidence = b"\xee" * 32
    gas["fraud_report_open"] = reg.report_fraud(r1, target.address, evidence)["gasUsed"]
    gas["fraud_report_vote"] = reg.report_fraud(r2, target.address, evidence)["gasUsed"]
    receipt = reg.report_fraud(r3, target.address, evidence)
    assert reg.events(receipt, "FraudCaseExecuted"), "the third report should execute"
    gas["fraud_report_execute"] = receipt["gasUsed"]

    # Equivocation proven with headers signed by the hot signer (one extra lookup).
    a = reg.sign_batch_header(hot, key4, 9, b"\xaa" * 32, 1)
    b = reg.sign_batch_header(hot, key4, 9, b"\xbb" * 32, 1)
    commit, reveal = _equivocation(reg, reporter, a, b, ops[4].address)
    gas["equivocation_commit_by_signer"], gas["slash_equivocation_by_signer"] = commit, reveal

    # Leaving for good: the last withdrawal also removes the operator from the list.
    reg.request_unbond(ops[3], 20 * TOKEN)
    w3.provider.make_request("evm_increaseTime", [DEFAULT_UNBONDING_DELAY])
    w3.provider.make_request("evm_mine", [])
    gas["withdraw_and_leave"] = reg.withdraw(ops[3])["gasUsed"]
    return gas


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    with Anvil() as node:
        gas = measure(Web3(Web3.HTTPProvider(node.url)))
    checks = {name: gas[name] <= limit for name, limit in TARGETS.items()}
    if args.json:
        print(json.dumps({"gas": gas, "targets": TARGETS, "within_target": checks}, indent=2))
    else:
        for name, used in gas.items():
            limit = TARGETS.get(name)
            note = f"  (target <= {limit}: {'ok' if used <= limit else 'OVER'})" if limit else ""
            print(f"{name:24s} {used:>9,d}{note}")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
