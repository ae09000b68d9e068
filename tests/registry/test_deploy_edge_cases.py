"""Deployment and token revert paths: zero owner, a token whose transfers return false."""

from __future__ import annotations

import pytest

from fai_net.registry import deploy_registry, errors

from .conftest import Env

# A "token" whose every call returns 32 zero bytes, i.e. `false` for transfer/transferFrom.
_RUNTIME = "60206000f3"  # PUSH1 32 PUSH1 0 RETURN
_INIT = "6005600c60003960056000f3"  # CODECOPY the 5 runtime bytes, RETURN


def test_constructor_rejects_zero_owner(env: Env):
    with pytest.raises(errors.OwnableInvalidOwner):
        deploy_registry(env.w3, env.owner, env.reg.token_address, owner="0x" + "00" * 20)


def test_false_returning_token_surfaces_as_safe_erc20_error(env: Env):
    tx_hash = env.w3.eth.send_raw_transaction(
        env.owner.sign_transaction(
            {
                "data": "0x" + _INIT + _RUNTIME,
                "nonce": env.w3.eth.get_transaction_count(env.owner.address, "pending"),
                "chainId": env.reg.chain_id,
                "gas": 100_000,
                "maxFeePerGas": 10**11,
                "maxPriorityFeePerGas": 1,
            }
        ).raw_transaction
    )
    token = env.w3.eth.wait_for_transaction_receipt(tx_hash)["contractAddress"]
    reg = deploy_registry(env.w3, env.owner, token)
    with pytest.raises(errors.SafeERC20FailedOperation):
        reg.register(env.ops[0])
    assert not reg.operator(env.ops[0].address).registered
