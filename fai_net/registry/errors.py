"""Typed Python exceptions for registry reverts.

Callers should branch on what went wrong (`except FraudCooldown:`), not parse hex revert data,
and a person reading a log should see "stake 5 is below the minimum bond 10", not a selector.
Each Solidity custom error (the registry's, and the OpenZeppelin ones it can bubble up) has
one class here with the same name; its decoded arguments are in `.args_by_name`.
"""

from __future__ import annotations

from typing import ClassVar

from eth_abi import decode as abi_decode
from eth_utils import keccak, to_checksum_address, to_hex
from web3.exceptions import ContractCustomError, ContractLogicError, ContractPanicError


class RegistryError(Exception):
    """Anything the registry client raises on purpose."""


class TransactionFailed(RegistryError):
    """Mined with status 0 but without revert data we could decode."""


class ContractRevert(RegistryError):
    """A decoded revert; subclasses are named after the Solidity error."""

    template: ClassVar[str] = ""

    def __init__(self, name: str, args_by_name: dict | None = None, raw: str = ""):
        self.name = name
        self.args_by_name = dict(args_by_name or {})
        self.raw = raw
        # bytes32 arguments (peer keys, digests) read as 0x-hex in messages, not b'\x..'.
        readable = {
            k: "0x" + bytes(v).hex() if isinstance(v, bytes | bytearray) else v
            for k, v in self.args_by_name.items()
        }
        try:
            detail = self.template.format(**readable) if self.template else ""
        except (KeyError, IndexError, ValueError):  # arguments not as the template expects
            detail = ""
        if not detail:
            shown = ", ".join(f"{k}={v}" for k, v in readable.items())
            detail = f"{name}({shown})"
        super().__init__(detail)


class UnknownRevert(ContractRevert):
    """Revert data that matches no error we know (e.g. a foreign contract)."""


class ContractPanic(ContractRevert):
    """Solidity Panic (overflow, assert): a bug, never an expected path."""


# -- bonding -----------------------------------------------------------------------------
class StakeError(ContractRevert):
    pass


class ZeroAmount(StakeError):
    template = "amount must be greater than zero"


class BelowMinimumBond(StakeError):
    template = "stake {stake} is below the minimum bond {minimum}"


class AlreadyRegistered(StakeError):
    template = "operator {operator} is already registered"


class NotRegistered(StakeError):
    template = "operator {operator} is not registered"


class OperatorIsJailed(StakeError):
    template = "operator {operator} is jailed and can only withdraw"


class RegistryFull(StakeError):
    template = "the registry already holds its maximum of {maxOperators} operators"


class InsufficientStake(StakeError):
    template = "cannot unbond {requested}: only {available} is bonded"


class NothingToWithdraw(StakeError):
    template = "operator {operator} has nothing unbonding to withdraw"


class UnbondingNotReady(StakeError):
    template = "unbonding stake is withdrawable at {readyAt}, it is now {nowTs}"


# -- advertisements ----------------------------------------------------------------------
class AdvertisementError(ContractRevert):
    pass


class ExpiryNotInFuture(AdvertisementError):
    template = "advertisement expiry {expiry} is not after the block time {nowTs}"


class ExpiryTooFar(AdvertisementError):
    template = "advertisement expiry {expiry} is beyond the 24 h limit ({maxExpiry})"


class InvalidNonce(AdvertisementError):
    template = "advertisement nonce {given} is stale or early: the registry expects {expected}"


class ZeroPeerKey(AdvertisementError):
    template = "the peer key must not be zero"


class BadKeyProofLength(AdvertisementError):
    template = (
        "the peer-key possession proof is {length} bytes; it must be the node's {expected}-byte "
        "Ed25519 binding signature"
    )


class BadMultiaddrCount(AdvertisementError):
    template = "an advertisement needs 1..{maximum} multiaddrs, got {count}"


class BadMultiaddrLength(AdvertisementError):
    template = "multiaddr #{index} is {length} bytes; each must be 1..{maximum} bytes"


class SignerTaken(AdvertisementError):
    template = "signer {signer} is already authorised for operator {operator}"


class SafeCastOverflowedUintDowncast(StakeError):
    template = "amount {value} does not fit in {bits} bits"


class InvalidSignature(ContractRevert):
    template = "signature does not recover to {expectedSigner} (recovered {recovered})"


# -- slashing ----------------------------------------------------------------------------
class SlashingError(ContractRevert):
    pass


class NotEquivocation(SlashingError):
    template = "the two headers are not an equivocation (need same peer key and seq, other cid)"


class KeyNotAdvertised(SlashingError):
    template = (
        "operator {operator} never advertised peer key {peerKey}: headers for it are not its "
        "equivocation"
    )


class AlreadyCommitted(SlashingError):
    template = "equivocation commitment {commitment} was already made"


class NotCommitted(SlashingError):
    template = (
        "equivocation commitment {commitment} was never made: call commitEquivocation first "
        "(the reward goes to the beneficiary named in the commitment)"
    )


class CommitTooRecent(SlashingError):
    template = (
        "equivocation commitment {commitment} was made in block {commitBlock}: reveal it in a "
        "later block"
    )


class AlreadySlashed(SlashingError):
    template = "operator {operator} was already slashed for seq {seq} of peer key {peerKey}"


class ReporterNotBonded(SlashingError):
    template = "reporter {reporter} has no bonded stake (or is jailed): it has no vote"


class FraudCooldown(SlashingError):
    template = (
        "target {target} was fraud-slashed recently: no fraud report against it before {until}"
    )


class SelfReport(SlashingError):
    template = "an operator cannot report itself"


class TargetJailed(SlashingError):
    template = "target {target} is already jailed"


class FraudCaseClosed(SlashingError):
    template = "this fraud case was already executed"


class FraudCaseExpired(SlashingError):
    template = "this fraud case stopped taking reports at {deadline}"


class AlreadyReported(SlashingError):
    template = "reporter {reporter} already reported this case"


class SnapshotMismatch(SlashingError):
    template = "the snapshot passed does not match the one taken when the fraud case opened"


class NotInSnapshot(SlashingError):
    template = "reporter {reporter} had no bonded stake when this fraud case opened: no vote"


# -- configuration and access ------------------------------------------------------------
class InvalidConfig(ContractRevert):
    template = "invalid registry parameter: {what}"


class ZeroAddress(ContractRevert):
    template = "the address must not be zero"


class InvalidShortString(InvalidConfig):
    """OpenZeppelin ShortStrings (EIP-712 name/version); unreachable with fixed strings."""

    template = "invalid short string"


class StringTooLong(InvalidConfig):
    """OpenZeppelin ShortStrings (EIP-712 name/version); unreachable with fixed strings."""

    template = "string too long for a short string"


class AccessError(ContractRevert):
    pass


class OwnableUnauthorizedAccount(AccessError):
    template = "{account} is not the registry owner"


class OwnableInvalidOwner(AccessError):
    template = "invalid owner {owner}"


class EnforcedPause(AccessError):
    template = "the registry is paused: new registrations are stopped"


class ExpectedPause(AccessError):
    template = "the registry is not paused"


class RenounceDisabled(AccessError):
    template = "renouncing ownership is disabled; transfer it instead (two steps)"


# -- token -------------------------------------------------------------------------------
class TokenError(ContractRevert):
    pass


class ERC20InsufficientBalance(TokenError):
    template = "token balance of {sender} is {balance}, {needed} needed"


class ERC20InsufficientAllowance(TokenError):
    template = "registry allowance from the operator is {allowance}, {needed} needed"


class ERC20InvalidSender(TokenError):
    template = "invalid token sender {sender}"


class ERC20InvalidReceiver(TokenError):
    template = "invalid token receiver {receiver}"


class ERC20InvalidApprover(TokenError):
    template = "invalid token approver {approver}"


class ERC20InvalidSpender(TokenError):
    template = "invalid token spender {spender}"


class SafeERC20FailedOperation(TokenError):
    template = "token transfer failed for token {token}"


def _known_classes() -> dict[str, type[ContractRevert]]:
    found: dict[str, type[ContractRevert]] = {}
    stack = [ContractRevert]
    while stack:
        cls = stack.pop()
        found[cls.__name__] = cls
        stack.extend(cls.__subclasses__())
    return found


class ErrorDecoder:
    """Maps revert data to exceptions using the error entries of the given ABIs."""

    def __init__(self, *abis: list[dict]):
        self._by_selector: dict[bytes, tuple[str, list[str], list[str]]] = {}
        for abi in abis:
            for item in abi:
                if item.get("type") != "error":
                    continue
                types = [i["type"] for i in item["inputs"]]
                names = [i["name"] or f"arg{n}" for n, i in enumerate(item["inputs"])]
                signature = f"{item['name']}({','.join(types)})"
                self._by_selector[keccak(text=signature)[:4]] = (item["name"], types, names)
        self._classes = _known_classes()

    def from_revert_data(self, data: str | bytes) -> ContractRevert:
        raw = data if isinstance(data, bytes) else bytes.fromhex(data.removeprefix("0x"))
        entry = self._by_selector.get(raw[:4])
        if entry is None:
            return UnknownRevert("UnknownRevert", {"data": to_hex(raw)}, to_hex(raw))
        name, types, names = entry
        try:
            values = abi_decode(types, raw[4:])
        except Exception:  # malformed arguments: still report the error by name
            values = ()
        values = [
            to_checksum_address(v) if t == "address" else v
            for t, v in zip(types, values, strict=False)
        ]
        args = dict(zip(names, values, strict=False))
        cls = self._classes.get(name, ContractRevert)
        return cls(name, args, to_hex(raw))

    def translate(self, exc: Exception) -> RegistryError | None:
        """The typed error for a web3 exception, or None if it is not a contract revert."""
        if isinstance(exc, ContractPanicError):
            return ContractPanic("Panic", {"reason": exc.message}, str(exc.data))
        if isinstance(exc, ContractCustomError) and isinstance(exc.data, str):
            return self.from_revert_data(exc.data)
        if isinstance(exc, ContractLogicError):
            return ContractRevert("Revert", {"reason": exc.message}, str(exc.data))
        return None
