"""Deploy a stake token and a registry: used by the devnet, the tests and the gas bench."""

from __future__ import annotations

from dataclasses import dataclass

from eth_account.signers.local import LocalAccount
from web3 import Web3

from fai_net.registry.artifacts import registry_artifact, token_artifact
from fai_net.registry.client import RegistryClient, Transactor
from fai_net.registry.errors import ErrorDecoder

TOKEN = 10**18
DEFAULT_MIN_BOND = 10 * TOKEN  # paper section 8.3: D_min = 10 tokens
DEFAULT_UNBONDING_DELAY = 7 * 24 * 3600
#: The registry's constructor refuses a delay of 0 or over 365 days (`InvalidConfig`).
MAX_UNBONDING_DELAY = 365 * 24 * 3600
DEFAULT_SLASH_BPS = 1_000  # 10 % per proven offence
DEFAULT_REPORTER_REWARD_BPS = 1_000  # 10 % of the slashed amount


@dataclass(frozen=True)
class RegistryParams:
    """Constructor arguments of a registry; the contract checks them (tests deploy bad ones
    on purpose to see `InvalidConfig`), so a command line checks its own with
    `check_unbonding_delay` before paying for a deployment."""

    min_bond: int = DEFAULT_MIN_BOND
    unbonding_delay: int = DEFAULT_UNBONDING_DELAY
    slash_bps: int = DEFAULT_SLASH_BPS
    reporter_reward_bps: int = DEFAULT_REPORTER_REWARD_BPS


def check_unbonding_delay(seconds: int) -> int:
    """`seconds` if the registry would accept it as its unbonding delay, else ValueError
    (said before deploying: the contract's revert names only the parameter)."""
    if not 1 <= seconds <= MAX_UNBONDING_DELAY:
        raise ValueError(
            f"the unbonding delay must be 1..{MAX_UNBONDING_DELAY} seconds (365 days), "
            f"got {seconds}"
        )
    return seconds


def _transactor(w3: Web3) -> Transactor:
    return Transactor(w3, ErrorDecoder(registry_artifact().abi, token_artifact().abi))


def deploy_token(w3: Web3, deployer: LocalAccount, initial_supply: int = 10**9 * TOKEN) -> str:
    """Deploy FaiTestToken owned by `deployer`, who receives the initial supply."""
    art = token_artifact()
    receipt = _transactor(w3).deploy(
        deployer, art.abi, art.bytecode, deployer.address, initial_supply
    )
    return receipt["contractAddress"]


def deploy_registry(
    w3: Web3,
    deployer: LocalAccount,
    token_address: str | None = None,
    params: RegistryParams = RegistryParams(),
    owner: str | None = None,
) -> RegistryClient:
    """Deploy a registry (and a test token unless one is given); returns its client."""
    if token_address is None:
        token_address = deploy_token(w3, deployer)
    art = registry_artifact()
    receipt = _transactor(w3).deploy(
        deployer,
        art.abi,
        art.bytecode,
        token_address,
        params.min_bond,
        params.unbonding_delay,
        params.slash_bps,
        params.reporter_reward_bps,
        owner or deployer.address,
    )
    return RegistryClient(w3, receipt["contractAddress"], from_block=receipt["blockNumber"])
