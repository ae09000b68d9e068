"""A real Anvil for the registry tests: one chain per session, a snapshot per test.

Deploying once and reverting to an EVM snapshot after each test keeps the suite fast while
every test still starts from the same freshly deployed registry.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount
from web3 import Web3

from fai_core.identity import NodeKey
from fai_net.devnet.anvil import ANVIL_BIN, SETUP_HINT, Anvil
from fai_net.registry import RegistryClient, deploy_registry
from fai_net.registry.deploy import TOKEN

OTHER_CHAIN_ID = 31338


def _account(n: int) -> LocalAccount:
    return Account.from_key((0xFA1_0000 + n).to_bytes(32, "big"))


@dataclass
class Env:
    w3: Web3
    reg: RegistryClient
    owner: LocalAccount
    ops: list[LocalAccount]
    outsider: LocalAccount

    def rpc(self, method: str, params: list | None = None):
        response = self.w3.provider.make_request(method, params or [])
        assert "error" not in response, response
        return response["result"]

    def travel(self, seconds: int) -> None:
        """Advance chain time and mine a block, so views see the new time."""
        self.rpc("evm_increaseTime", [seconds])
        self.rpc("evm_mine")

    def now(self) -> int:
        return self.reg.block_timestamp()

    def fund(self, account: LocalAccount, tokens: int) -> None:
        self.reg.tx.send(self.owner, self.reg.token.functions.transfer(account.address, tokens))

    def registry_balance(self) -> int:
        return self.reg.token_balance(self.reg.address)


def fund_eth(w3: Web3, *accounts: LocalAccount) -> None:
    for account in accounts:
        w3.provider.make_request("anvil_setBalance", [account.address, hex(10**21)])


def _start(chain_id: int) -> Anvil:
    if not ANVIL_BIN.is_file():
        pytest.fail(f"devnet tooling missing: {SETUP_HINT}", pytrace=False)
    return Anvil(chain_id=chain_id).start()


@pytest.fixture(scope="session")
def anvil():
    node = _start(31337)
    yield node
    node.stop()


@pytest.fixture(scope="session")
def other_anvil():
    """A second chain with another chain id, for replay tests."""
    node = _start(OTHER_CHAIN_ID)
    yield node
    node.stop()


@pytest.fixture(scope="session")
def base_env(anvil) -> Env:
    w3 = Web3(Web3.HTTPProvider(anvil.url))
    owner, outsider = _account(0), _account(99)
    ops = [_account(i) for i in range(1, 7)]
    fund_eth(w3, owner, outsider, *ops)
    reg = deploy_registry(w3, owner)
    env = Env(w3, reg, owner, ops, outsider)
    for op in ops:
        env.fund(op, 1_000 * TOKEN)
    return env


@pytest.fixture
def env(base_env: Env):
    snapshot = base_env.rpc("evm_snapshot")
    yield base_env
    assert base_env.rpc("evm_revert", [snapshot]) is True


def node_key(n: int) -> NodeKey:
    """A node's Ed25519 key: advertisements need it for the binding proof."""
    return NodeKey(bytes([n]) * 32)


def peer_key(n: int) -> bytes:
    return node_key(n).public_key


def digest(n: int) -> bytes:
    return n.to_bytes(32, "big")
