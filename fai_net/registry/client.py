"""web3.py client for the DSO registry: what a node operator and a peer need from the chain.

Transactions are signed locally (the operator's key never goes to an RPC node) and every
revert comes back as a typed `RegistryError`. Reads never need a key.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from eth_account.signers.local import LocalAccount
from eth_utils import to_checksum_address
from web3 import Web3
from web3.contract.contract import ContractFunction
from web3.exceptions import ContractLogicError, Web3RPCError
from web3.logs import DISCARD
from web3.types import TxReceipt

from fai_net.registry import eip712, possession
from fai_net.registry.artifacts import registry_artifact, token_artifact
from fai_net.registry.errors import (
    ErrorDecoder,
    RegistryError,
    SnapshotMismatch,
    TransactionFailed,
)

MAX_AD_TTL = 24 * 3600
# A fraud report is estimated as an ordinary vote, but if another vote lands first it becomes
# the one that executes the slash, which costs more: leave room for that path.
FRAUD_REPORT_EXTRA_GAS = 80_000


@dataclass(frozen=True)
class OperatorInfo:
    """`operatorInfo(op)`; field order follows the Solidity struct."""

    stake: int
    unbonding: int
    registered: bool
    jailed: bool
    list_index: int
    ad_expiry: int
    ad_nonce: int
    ad_block: int
    unbond_ready_at: int
    peer_key: bytes
    multiaddrs_hash: bytes

    @classmethod
    def from_raw(cls, raw) -> OperatorInfo:
        return cls(*raw[:9], bytes(raw[9]), bytes(raw[10]))


@dataclass(frozen=True)
class FraudCase:
    """`fraudCase(id)`; `opened_at == 0` means no case was opened under this id."""

    target: str
    opened_at: int
    opened_block: int
    executed: bool
    snapshot_live_stake: int
    reported_stake: int
    reporters: int
    evidence_hash: bytes
    snapshot_hash: bytes

    @classmethod
    def from_raw(cls, raw) -> FraudCase:
        return cls(*raw[:7], bytes(raw[7]), bytes(raw[8]))


@dataclass(frozen=True)
class FraudSnapshot:
    """Live operators and their stakes when a case opened (from `FraudCaseOpened`)."""

    operators: tuple[str, ...]
    weights: tuple[int, ...]

    def weight_of(self, operator: str) -> int:
        operator = to_checksum_address(operator)
        return dict(zip(self.operators, self.weights, strict=True)).get(operator, 0)


@dataclass(frozen=True)
class LivePeer:
    """What a peer needs to dial a node and check its identity."""

    operator: str
    peer_key: bytes
    multiaddrs: tuple[str, ...]
    expiry: int
    stake: int


@dataclass(frozen=True)
class SignedAdvertisement:
    operator: str
    peer_key: bytes
    multiaddrs: tuple[str, ...]
    expiry: int
    nonce: int
    signature: bytes


@dataclass(frozen=True)
class SignedBatchHeader:
    peer_key: bytes
    seq: int
    cid_digest: bytes
    timestamp_ms: int
    signature: bytes

    def as_struct(self) -> tuple:
        return (self.peer_key, self.seq, self.cid_digest, self.timestamp_ms)


class Transactor:
    """Builds, signs, sends and waits, translating reverts; shared by deploy and the client."""

    def __init__(self, w3: Web3, decoder: ErrorDecoder):
        self.w3 = w3
        self.decoder = decoder
        self.chain_id = w3.eth.chain_id

    def send(
        self,
        sender: LocalAccount,
        fn: ContractFunction,
        gas: int | None = None,
        *,
        extra_gas: int = 0,
    ) -> TxReceipt:
        """Estimate (unless `gas` is given), sign, send, wait; reverts become typed errors.

        The margin is 20 % + 10k over the estimate, plus `extra_gas` for calls whose cost can
        grow between estimate and inclusion (a fraud vote that turns out to execute).
        """
        params = {
            "from": sender.address,
            "nonce": self.w3.eth.get_transaction_count(sender.address, "pending"),
            "chainId": self.chain_id,
        }
        try:
            if gas is None:
                # Estimating runs the call first, so a revert surfaces here with its data.
                gas = fn.estimate_gas({"from": sender.address})
                gas = gas + max(gas // 5 + 10_000, extra_gas)
            tx = fn.build_transaction({**params, "gas": gas})
        except ContractLogicError as exc:
            raise self.decoder.translate(exc) from exc
        return self._send_signed(sender, tx)

    def deploy(self, sender: LocalAccount, abi: list, bytecode: str, *args) -> TxReceipt:
        factory = self.w3.eth.contract(abi=abi, bytecode=bytecode)
        try:
            tx = factory.constructor(*args).build_transaction(
                {
                    "from": sender.address,
                    "nonce": self.w3.eth.get_transaction_count(sender.address, "pending"),
                    "chainId": self.chain_id,
                }
            )
        except ContractLogicError as exc:
            raise self.decoder.translate(exc) from exc
        return self._send_signed(sender, tx)

    def _send_signed(self, sender: LocalAccount, tx: dict) -> TxReceipt:
        signed = sender.sign_transaction(tx)
        tx_hash = self.w3.eth.send_raw_transaction(signed.raw_transaction)
        receipt = self.w3.eth.wait_for_transaction_receipt(tx_hash, timeout=30)
        if receipt["status"] != 1:
            raise self._explain_failure(tx, receipt)
        return receipt

    def _explain_failure(self, tx: dict, receipt: TxReceipt) -> RegistryError:
        """Why a mined transaction reverted: replay it with eth_call on the state of its block.

        The replay runs after the whole block (the closest state a plain RPC offers), so it
        shows what made the call fail once the transactions ordered before it had landed,
        e.g. `FraudCaseClosed` when another vote executed the case first. If the replay
        succeeds, the transaction most likely ran out of gas.
        """
        tx_hash = receipt["transactionHash"].hex()
        call = {k: tx[k] for k in ("from", "to", "data", "value", "gas") if k in tx}
        try:
            self.w3.eth.call(call, block_identifier=receipt["blockNumber"])
        except ContractLogicError as exc:
            err = self.decoder.translate(exc)
            if err is not None:
                err.tx_hash = tx_hash
                err.receipt = receipt
                return err
        except (Web3RPCError, ValueError):  # replay unavailable: fall through
            pass
        used, limit = receipt["gasUsed"], tx.get("gas")
        hint = " (out of gas)" if limit is not None and used >= limit else ""
        failed = TransactionFailed(
            f"transaction {tx_hash} reverted on chain; gas used {used} of {limit}{hint}"
        )
        failed.receipt = receipt
        return failed


class RegistryClient:
    """One registry deployment on one chain."""

    def __init__(self, w3: Web3, address: str, from_block: int = 0):
        self.w3 = w3
        self.address = to_checksum_address(address)
        self.contract = w3.eth.contract(address=self.address, abi=registry_artifact().abi)
        self.token_address = to_checksum_address(self.contract.functions.stakeToken().call())
        self.token = w3.eth.contract(address=self.token_address, abi=token_artifact().abi)
        self.tx = Transactor(w3, ErrorDecoder(registry_artifact().abi, token_artifact().abi))
        self.chain_id = self.tx.chain_id
        self.from_block = from_block
        self.min_bond: int = self.contract.functions.minBond().call()

    # -- bonding -------------------------------------------------------------------------
    def approve(self, account: LocalAccount, amount: int) -> TxReceipt:
        return self.tx.send(account, self.token.functions.approve(self.address, amount))

    def _ensure_allowance(self, account: LocalAccount, amount: int) -> None:
        allowance = self.token.functions.allowance(account.address, self.address).call()
        if allowance < amount:
            self.approve(account, amount)

    def register(self, account: LocalAccount, amount: int | None = None) -> TxReceipt:
        """Bond `amount` (default: the minimum) and join; approves the token first if needed."""
        amount = self.min_bond if amount is None else amount
        self._ensure_allowance(account, amount)
        return self.tx.send(account, self.contract.functions.register(amount))

    def add_stake(self, account: LocalAccount, amount: int) -> TxReceipt:
        self._ensure_allowance(account, amount)
        return self.tx.send(account, self.contract.functions.addStake(amount))

    def request_unbond(self, account: LocalAccount, amount: int) -> TxReceipt:
        return self.tx.send(account, self.contract.functions.requestUnbond(amount))

    def withdraw(self, account: LocalAccount) -> TxReceipt:
        return self.tx.send(account, self.contract.functions.withdraw())

    def set_signer(self, account: LocalAccount, signer: str) -> TxReceipt:
        """Authorise `signer` (a hot key) to sign batch headers and advertisements for the
        operator `account`; withdrawal stays with `account`. Headers signed by a signer stay
        slashable for this operator even after it is replaced."""
        return self.tx.send(account, self.contract.functions.setSigner(to_checksum_address(signer)))

    # -- advertisements ------------------------------------------------------------------
    def sign_advertisement(
        self,
        account: LocalAccount,
        peer_key: bytes,
        multiaddrs: Iterable[str],
        ttl: int = MAX_AD_TTL,
        *,
        expiry: int | None = None,
        nonce: int | None = None,
        operator: str | None = None,
    ) -> SignedAdvertisement:
        """Sign the operator's next advertisement; give it to any relayer or post it.

        `account` is the operator itself, or its current signer with `operator` set.
        """
        multiaddrs = tuple(multiaddrs)
        operator = to_checksum_address(operator or account.address)
        if expiry is None:
            expiry = self.block_timestamp() + ttl
        if nonce is None:
            nonce = self.operator(operator).ad_nonce
        signature = eip712.sign_advertisement(
            account,
            self.chain_id,
            self.address,
            peer_key,
            list(multiaddrs),
            expiry,
            nonce,
            operator=operator,
        )
        return SignedAdvertisement(operator, bytes(peer_key), multiaddrs, expiry, nonce, signature)

    def post_advertisement(self, ad: SignedAdvertisement, sender: LocalAccount) -> TxReceipt:
        """Post a signed advertisement: `sender` is the operator itself or any relayer."""
        fn = self.contract.functions.postAdvertisement(
            ad.operator, ad.peer_key, list(ad.multiaddrs), ad.expiry, ad.nonce, ad.signature
        )
        return self.tx.send(sender, fn)

    def advertise(
        self,
        account: LocalAccount,
        peer_key: bytes,
        multiaddrs: Iterable[str],
        ttl: int = MAX_AD_TTL,
        *,
        operator: str | None = None,
    ) -> TxReceipt:
        """Post or renew the operator's own advertisement in one step (`account` pays)."""
        # The expiry is checked against the including block's time, which is later than the
        # latest block we read: keep a minute of margin below the 24 h ceiling.
        ad = self.sign_advertisement(
            account, peer_key, multiaddrs, ttl=min(ttl, MAX_AD_TTL - 60), operator=operator
        )
        return self.post_advertisement(ad, account)

    # -- slashing ------------------------------------------------------------------------
    def sign_batch_header(
        self,
        account: LocalAccount,
        peer_key: bytes,
        seq: int,
        cid_digest: bytes,
        timestamp_ms: int,
    ) -> SignedBatchHeader:
        """`account` is the operator or a signer it authorised with `set_signer`."""
        signature = eip712.sign_batch_header(
            account, self.chain_id, self.address, peer_key, seq, cid_digest, timestamp_ms
        )
        return SignedBatchHeader(bytes(peer_key), seq, bytes(cid_digest), timestamp_ms, signature)

    def header_signer_operator(self, header: SignedBatchHeader) -> str | None:
        """The operator a received header is attributable to on-chain, or None.

        What a node must check before accepting a header from a peer: the recovered signer is
        the owner of the header's peer key, or a signer that owner authorised (ever). Headers
        that fail this check cannot be used as equivocation evidence, so must be dropped.
        """
        signer = eip712.recover_batch_header_signer(
            header.signature,
            self.chain_id,
            self.address,
            header.peer_key,
            header.seq,
            header.cid_digest,
            header.timestamp_ms,
        )
        owner = self.peer_key_owner(header.peer_key)
        if owner is None:
            return None
        if signer == owner:
            return owner
        bound = self.contract.functions.signerOperator(signer).call()
        return owner if to_checksum_address(bound) == owner else None

    def slash_equivocation(
        self, reporter: LocalAccount, a: SignedBatchHeader, b: SignedBatchHeader
    ) -> TxReceipt:
        fn = self.contract.functions.slashEquivocation(
            a.as_struct(), a.signature, b.as_struct(), b.signature
        )
        return self.tx.send(reporter, fn)

    def fraud_case_id(self, target: str, evidence_hash: bytes) -> bytes:
        return bytes(
            self.contract.functions.fraudCaseId(to_checksum_address(target), evidence_hash).call()
        )

    def fraud_case(self, case_id: bytes, block_identifier="latest") -> FraudCase:
        raw = self.contract.functions.fraudCase(case_id).call(block_identifier=block_identifier)
        return FraudCase.from_raw(raw)

    def fraud_snapshot(self, case_id: bytes, case: FraudCase | None = None) -> FraudSnapshot:
        """The live-stake snapshot a case took when it opened, read from its event and checked
        against the hash stored on-chain."""
        case = case or self.fraud_case(case_id)
        if case.opened_at == 0:
            raise ValueError("no fraud case was opened under this id")
        logs = self.contract.events.FraudCaseOpened.get_logs(
            from_block=case.opened_block,
            to_block=case.opened_block,
            argument_filters={"caseId": case_id},
        )
        for log in logs:
            ops = tuple(to_checksum_address(a) for a in log.args.snapshotOperators)
            weights = tuple(log.args.snapshotWeights)
            if eip712.fraud_snapshot_hash(ops, weights) == case.snapshot_hash:
                return FraudSnapshot(ops, weights)
        raise RegistryError("FraudCaseOpened event for this case not found (pruned logs?)")

    def report_fraud_function(self, target: str, evidence_hash: bytes) -> ContractFunction:
        """The `reportFraud` call for the case's current state: empty snapshot arrays when it
        opens the case, the case's snapshot when it votes."""
        target = to_checksum_address(target)
        case_id = self.fraud_case_id(target, evidence_hash)
        case = self.fraud_case(case_id)
        snap = FraudSnapshot((), ()) if case.opened_at == 0 else self.fraud_snapshot(case_id, case)
        return self.contract.functions.reportFraud(
            target, evidence_hash, list(snap.operators), list(snap.weights)
        )

    def report_fraud(self, reporter: LocalAccount, target: str, evidence_hash: bytes) -> TxReceipt:
        """Open or vote on the case (target, evidence_hash).

        Gas: estimated as what the report is now, plus room for it to become the vote that
        executes the slash. If another reporter opened the same case first, the report is
        rebuilt with that case's snapshot and sent once more.
        """
        for attempt in range(2):
            fn = self.report_fraud_function(target, evidence_hash)
            try:
                return self.tx.send(reporter, fn, extra_gas=FRAUD_REPORT_EXTRA_GAS)
            except SnapshotMismatch:
                if attempt == 1:
                    raise
        raise AssertionError("unreachable")

    # -- owner ---------------------------------------------------------------------------
    def pause(self, owner: LocalAccount) -> TxReceipt:
        """Stops new registrations only; everything else keeps working."""
        return self.tx.send(owner, self.contract.functions.pause())

    def unpause(self, owner: LocalAccount) -> TxReceipt:
        return self.tx.send(owner, self.contract.functions.unpause())

    def sweep_slashed(self, owner: LocalAccount, to: str) -> TxReceipt:
        return self.tx.send(owner, self.contract.functions.sweepSlashed(to_checksum_address(to)))

    def transfer_ownership(self, owner: LocalAccount, new_owner: str) -> TxReceipt:
        """Step one of two: `new_owner` must call `accept_ownership`."""
        fn = self.contract.functions.transferOwnership(to_checksum_address(new_owner))
        return self.tx.send(owner, fn)

    def accept_ownership(self, new_owner: LocalAccount) -> TxReceipt:
        return self.tx.send(new_owner, self.contract.functions.acceptOwnership())

    def renounce_ownership(self, owner: LocalAccount) -> TxReceipt:
        """Always reverts `RenounceDisabled`: kept so the error has a documented entry point."""
        return self.tx.send(owner, self.contract.functions.renounceOwnership())

    # -- reads ---------------------------------------------------------------------------
    def events(self, receipt: TxReceipt, name: str) -> list:
        """Registry events of `name` in a receipt (token Transfer logs are skipped)."""
        return list(getattr(self.contract.events, name)().process_receipt(receipt, errors=DISCARD))

    def block_timestamp(self) -> int:
        return self.w3.eth.get_block("latest")["timestamp"]

    def operator(self, address: str, block_identifier="latest") -> OperatorInfo:
        raw = self.contract.functions.operatorInfo(to_checksum_address(address)).call(
            block_identifier=block_identifier
        )
        return OperatorInfo.from_raw(raw)

    def is_live(self, address: str, block_identifier="latest") -> bool:
        return self.contract.functions.isLive(to_checksum_address(address)).call(
            block_identifier=block_identifier
        )

    def peer_key_owner(self, peer_key: bytes, block_identifier="latest") -> str | None:
        owner = self.contract.functions.peerKeyOwner(peer_key).call(
            block_identifier=block_identifier
        )
        return None if int(owner, 16) == 0 else to_checksum_address(owner)

    def operators(self, block_identifier="latest", page: int = 256) -> list[str]:
        """Registered operators, all pages read at one block (leaving reorders the list)."""
        f = self.contract.functions
        count = f.operatorCount().call(block_identifier=block_identifier)
        found: list[str] = []
        for start in range(0, count, page):
            found += f.operatorsPage(start, page).call(block_identifier=block_identifier)
        return found

    def token_balance(self, address: str) -> int:
        return self.token.functions.balanceOf(to_checksum_address(address)).call()

    def live_peers(self, block_identifier: int | None = None) -> list[LivePeer]:
        """Live operators with the multiaddrs of their current advertisement.

        All reads are pinned to one block (default: the latest). Multiaddrs live only in
        `AdvertisementPosted` events; the registry stores the block of each operator's current
        advertisement, so only those blocks are queried (no scan from the deployment block),
        and the event must carry the current nonce and a multiaddrs hash matching storage.
        """
        block = self.w3.eth.block_number if block_identifier is None else block_identifier
        live: dict[str, OperatorInfo] = {}
        for address in self.operators(block):
            if self.is_live(address, block):
                live[address] = self.operator(address, block)
        by_block: dict[int, list[str]] = {}
        for address, info in live.items():
            by_block.setdefault(info.ad_block, []).append(address)
        peers = []
        for ad_block, addresses in sorted(by_block.items()):
            logs = self.contract.events.AdvertisementPosted.get_logs(
                from_block=ad_block, to_block=ad_block, argument_filters={"operator": addresses}
            )
            for log in logs:
                info = live.get(log.args.operator)
                if (
                    info is not None
                    and log.args.nonce == info.ad_nonce - 1
                    and bytes(log.args.multiaddrsHash) == info.multiaddrs_hash
                    and eip712.multiaddrs_hash(list(log.args.multiaddrs)) == info.multiaddrs_hash
                ):
                    peers.append(
                        LivePeer(
                            log.args.operator,
                            info.peer_key,
                            tuple(log.args.multiaddrs),
                            info.ad_expiry,
                            info.stake,
                        )
                    )
        return peers

    def verify_peer_possession(
        self, operator: str, peer_key: bytes, signature: bytes, nonce: bytes
    ) -> bool:
        """Off-chain possession proof plus the on-chain half: `operator` owns `peer_key`."""
        if not isinstance(peer_key, bytes | bytearray) or len(peer_key) != 32:
            return False
        try:
            owner = self.peer_key_owner(bytes(peer_key))
            if owner is None or owner != to_checksum_address(operator):
                return False
        except (ValueError, TypeError):
            return False
        return possession.verify_possession(
            peer_key, signature, self.chain_id, self.address, operator, nonce
        )
