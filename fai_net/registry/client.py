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
    NotCommitted,
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
    fraud_cooldown_until: int
    peer_key: bytes
    multiaddrs_hash: bytes

    @classmethod
    def from_raw(cls, raw) -> OperatorInfo:
        return cls(*raw[:10], bytes(raw[10]), bytes(raw[11]))


@dataclass(frozen=True)
class FraudCase:
    """`fraudCase(id)`; `opened_at == 0` means no case was opened under this id."""

    target: str
    opened_at: int
    opened_block: int
    executed: bool
    snapshot_bonded_stake: int
    reported_stake: int
    reporters: int
    evidence_hash: bytes
    snapshot_hash: bytes

    @classmethod
    def from_raw(cls, raw) -> FraudCase:
        return cls(*raw[:7], bytes(raw[7]), bytes(raw[8]))


@dataclass(frozen=True)
class FraudSnapshot:
    """Bonded operators and their stakes when a case opened (from `FraudCaseOpened`)."""

    operators: tuple[str, ...]
    weights: tuple[int, ...]

    def weight_of(self, operator: str) -> int:
        operator = to_checksum_address(operator)
        return dict(zip(self.operators, self.weights, strict=True)).get(operator, 0)


@dataclass(frozen=True)
class LivePeer:
    """What a peer needs to dial a node and check its identity.

    `proven`: the advertisement's `keyProof` verifies (the node holding `peer_key` bound it
    to `operator`). `live_peers` returns only proven ones unless asked otherwise.
    """

    operator: str
    peer_key: bytes
    multiaddrs: tuple[str, ...]
    expiry: int
    stake: int
    key_proof: bytes = b""
    proven: bool = True
    ad_block: int = 0


@dataclass(frozen=True)
class SignedAdvertisement:
    operator: str
    peer_key: bytes
    multiaddrs: tuple[str, ...]
    expiry: int
    nonce: int
    signature: bytes
    key_proof: bytes = b""


@dataclass(frozen=True)
class SignedBatchHeader:
    peer_key: bytes
    seq: int
    cid_digest: bytes
    timestamp_ms: int
    signature: bytes

    def as_struct(self) -> tuple:
        return (self.peer_key, self.seq, self.cid_digest, self.timestamp_ms)

    def digest(self, chain_id: int, registry_address: str) -> bytes:
        return eip712.batch_header_digest(
            chain_id, registry_address, self.peer_key, self.seq, self.cid_digest, self.timestamp_ms
        )


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
        estimate_block: str | None = None,
    ) -> TxReceipt:
        """Estimate (unless `gas` is given), sign, send, wait; reverts become typed errors.

        The margin is 20 % + 10k over the estimate, plus `extra_gas` for calls whose cost can
        grow between estimate and inclusion (a fraud vote that turns out to execute).
        `estimate_block="pending"` estimates in the next block's context (an equivocation
        reveal must run in a later block than its commitment).
        """
        params = {
            "from": sender.address,
            "nonce": self.w3.eth.get_transaction_count(sender.address, "pending"),
            "chainId": self.chain_id,
        }
        try:
            if gas is None:
                # Estimating runs the call first, so a revert surfaces here with its data.
                gas = fn.estimate_gas({"from": sender.address}, block_identifier=estimate_block)
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
        """Pay out unbonding stake whose delay has passed.

        Estimated in the pending block's context: `eth_estimateGas` otherwise runs against the
        latest block, whose timestamp on an idle chain (Anvil mines only when a transaction
        arrives) can be hours behind the clock the withdrawal will be mined under, so a stake
        that is withdrawable would be refused with `UnbondingNotReady`.
        """
        return self.tx.send(account, self.contract.functions.withdraw(), estimate_block="pending")

    def set_signer(self, account: LocalAccount, signer: str) -> TxReceipt:
        """Authorise `signer` (a hot key) to sign batch headers and advertisements for the
        operator `account`; withdrawal stays with `account`. Headers signed by a signer stay
        slashable for this operator even after it is replaced."""
        return self.tx.send(account, self.contract.functions.setSigner(to_checksum_address(signer)))

    # -- advertisements ------------------------------------------------------------------
    def binding_proof(self, node_key, operator: str) -> bytes:
        """The `keyProof` for `node_key` (an Ed25519 SigningKey, NodeKey or NodeIdentity)
        advertised by `operator` on this chain and registry."""
        return possession.prove_binding(node_key, self.chain_id, self.address, operator)

    def sign_advertisement(
        self,
        account: LocalAccount,
        peer_key,
        multiaddrs: Iterable[str],
        ttl: int = MAX_AD_TTL,
        *,
        expiry: int | None = None,
        nonce: int | None = None,
        operator: str | None = None,
        key_proof: bytes | None = None,
    ) -> SignedAdvertisement:
        """Sign the operator's next advertisement; give it to any relayer or post it.

        `account` is the operator itself, or its current signer with `operator` set.
        `peer_key` is the node's Ed25519 key (SigningKey, NodeKey or NodeIdentity: the
        binding proof is made here) or its 32-byte public key with `key_proof` given (made
        by the node with `possession.prove_binding`). Nodes ignore an advertisement whose
        proof does not verify.
        """
        multiaddrs = tuple(multiaddrs)
        operator = to_checksum_address(operator or account.address)
        if not isinstance(peer_key, bytes | bytearray):
            node_key = peer_key
            peer_key = possession.public_key_of(node_key)
            if key_proof is None:
                key_proof = self.binding_proof(node_key, operator)
        if key_proof is None:
            raise ValueError(
                "an advertisement needs the node key's binding proof: pass the node's Ed25519 "
                "key as peer_key, or key_proof=possession.prove_binding(...) made by the node"
            )
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
            key_proof=bytes(key_proof),
            operator=operator,
        )
        return SignedAdvertisement(
            operator, bytes(peer_key), multiaddrs, expiry, nonce, signature, bytes(key_proof)
        )

    def post_advertisement(self, ad: SignedAdvertisement, sender: LocalAccount) -> TxReceipt:
        """Post a signed advertisement: `sender` is the operator itself or any relayer."""
        fn = self.contract.functions.postAdvertisement(
            ad.operator,
            ad.peer_key,
            list(ad.multiaddrs),
            ad.expiry,
            ad.nonce,
            ad.key_proof,
            ad.signature,
        )
        return self.tx.send(sender, fn)

    def advertise(
        self,
        account: LocalAccount,
        peer_key,
        multiaddrs: Iterable[str],
        ttl: int = MAX_AD_TTL,
        *,
        operator: str | None = None,
        key_proof: bytes | None = None,
    ) -> TxReceipt:
        """Post or renew the operator's own advertisement in one step (`account` pays).

        `peer_key`/`key_proof` as in `sign_advertisement`."""
        # The expiry is checked against the including block's time, which is later than the
        # latest block we read: keep a minute of margin below the 24 h ceiling.
        ad = self.sign_advertisement(
            account,
            peer_key,
            multiaddrs,
            ttl=min(ttl, MAX_AD_TTL - 60),
            operator=operator,
            key_proof=key_proof,
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

    def header_signer_operator(
        self, header: SignedBatchHeader, operator: str | None = None
    ) -> str | None:
        """The operator a received header is attributable to on-chain, or None.

        The registry slashes an operator for headers of a peer key it has advertised (ever),
        signed by its own key or by a signer it ever authorised (`setSigner`). With
        `operator` given: that operator if the header is attributable to it, else None (what a
        node checks against the operator its peer key is attributed to). Without: the
        recovered signer if it is (or was) an operator, else the operator that authorised it
        as a signer; None if that operator never advertised the header's peer key.
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
        f = self.contract.functions
        if operator is not None:
            operator = to_checksum_address(operator)
            if signer != operator and to_checksum_address(f.signerOperator(signer).call()) != (
                operator
            ):
                return None
        else:
            info = self.operator(signer)
            if info.registered or info.jailed:
                operator = signer
            else:
                bound = f.signerOperator(signer).call()
                if int(bound, 16) == 0:
                    return None
                operator = to_checksum_address(bound)
        return operator if f.hasAdvertisedKey(operator, header.peer_key).call() else None

    def equivocation_commitment(
        self, a: SignedBatchHeader, b: SignedBatchHeader, beneficiary: str
    ) -> bytes:
        """What `commitEquivocation` takes (computed locally, same as the contract's view)."""
        return eip712.equivocation_commitment(
            a.digest(self.chain_id, self.address),
            b.digest(self.chain_id, self.address),
            to_checksum_address(beneficiary),
        )

    def commit_equivocation(self, sender: LocalAccount, commitment: bytes) -> TxReceipt:
        """Step one of an equivocation report (the evidence stays hidden until the reveal)."""
        return self.tx.send(sender, self.contract.functions.commitEquivocation(commitment))

    def reveal_equivocation_function(
        self,
        a: SignedBatchHeader,
        b: SignedBatchHeader,
        operator: str,
        beneficiary: str,
    ) -> ContractFunction:
        return self.contract.functions.slashEquivocation(
            to_checksum_address(operator),
            a.as_struct(),
            a.signature,
            b.as_struct(),
            b.signature,
            to_checksum_address(beneficiary),
        )

    def slash_equivocation(
        self,
        reporter: LocalAccount,
        a: SignedBatchHeader,
        b: SignedBatchHeader,
        *,
        operator: str | None = None,
        beneficiary: str | None = None,
    ) -> TxReceipt:
        """Commit, then reveal, two conflicting headers; returns the reveal's receipt.

        The reward goes to `beneficiary` (default: the reporter), which is inside the
        commitment: a copy of the pending reveal pays the same beneficiary. `operator`
        defaults to `header_signer_operator(a)`. The reveal is checked with `eth_call` before
        anything is committed, so invalid evidence raises its typed error (e.g.
        `NotEquivocation`, `InvalidSignature`, `AlreadySlashed`) without spending a commit.
        A commitment already on-chain (an earlier interrupted attempt) is reused.
        """
        beneficiary = to_checksum_address(beneficiary or reporter.address)
        if operator is None:
            # Unattributable headers: name the key's operator, so the registry's error says
            # whose signature was expected (InvalidSignature) rather than NotRegistered.
            operator = (
                self.header_signer_operator(a)
                or self.peer_key_operator(a.peer_key)
                or eip712.recover_batch_header_signer(
                    a.signature, self.chain_id, self.address, *a.as_struct()
                )
            )
        fn = self.reveal_equivocation_function(a, b, operator, beneficiary)
        commitment = self.equivocation_commitment(a, b, beneficiary)
        if self.contract.functions.equivocationCommitBlock(commitment).call() == 0:
            try:
                fn.call({"from": reporter.address})
            except ContractLogicError as exc:
                err = self.tx.decoder.translate(exc)
                if not isinstance(err, NotCommitted):
                    raise err from exc
            self.commit_equivocation(reporter, commitment)
        # Sent after the commit's receipt: it lands in a later block, as the contract requires
        # (and is estimated in the next block's context for the same reason).
        return self.tx.send(reporter, fn, estimate_block="pending")

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

    def peer_key_operator(self, peer_key: bytes, block_identifier=None) -> str | None:
        """The live operator `peer_key` is attributed to (proven advertisements only), or None.

        The chain reserves no keys: this reads every live advertisement (`live_peers`)."""
        for peer in self.live_peers(block_identifier):
            if peer.peer_key == bytes(peer_key):
                return peer.operator
        return None

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

    def live_peers(
        self, block_identifier: int | None = None, *, proven_only: bool = True
    ) -> list[LivePeer]:
        """Live operators with the multiaddrs of their current advertisement.

        All reads are pinned to one block (default: the latest). Multiaddrs live only in
        `AdvertisementPosted` events; the registry stores the block of each operator's current
        advertisement, so only those blocks are queried (no scan from the deployment block),
        and the event must carry the current nonce and a multiaddrs hash matching storage.

        Attribution: an advertisement counts only if its `keyProof` is the peer key's Ed25519
        signature binding the key to this operator (`possession.verify_binding`); anyone may
        post any key, so unproven advertisements (a squatter's) are dropped. Should two
        operators hold valid proofs for one key (the node signed both), the latest
        advertisement wins, so each key maps to one operator. `proven_only=False` returns
        every live advertisement, `proven` telling which ones count (for display).
        """
        block = self.w3.eth.block_number if block_identifier is None else block_identifier
        live: dict[str, OperatorInfo] = {}
        for address in self.operators(block):
            if self.is_live(address, block):
                live[address] = self.operator(address, block)
        by_block: dict[int, list[str]] = {}
        for address, info in live.items():
            by_block.setdefault(info.ad_block, []).append(address)
        found: list[tuple[tuple[int, int], LivePeer]] = []
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
                    proof = bytes(log.args.keyProof)
                    proven = possession.verify_binding(
                        info.peer_key, proof, self.chain_id, self.address, log.args.operator
                    )
                    peer = LivePeer(
                        log.args.operator,
                        info.peer_key,
                        tuple(log.args.multiaddrs),
                        info.ad_expiry,
                        info.stake,
                        proof,
                        proven,
                        ad_block,
                    )
                    found.append(((ad_block, log.logIndex), peer))
        if not proven_only:
            return [peer for _, peer in found]
        latest: dict[bytes, tuple[tuple[int, int], LivePeer]] = {}
        for position, peer in found:
            if peer.proven:
                kept = latest.get(peer.peer_key)
                if kept is None or position > kept[0]:
                    latest[peer.peer_key] = (position, peer)
        return [peer for _, peer in sorted(latest.values(), key=lambda item: item[0])]

    def verify_peer_possession(
        self, operator: str, peer_key: bytes, signature: bytes, nonce: bytes
    ) -> bool:
        """Off-chain possession proof plus the on-chain half: `peer_key` is attributed to
        `operator` (its proven, live advertisement; `peer_key_operator`)."""
        if not isinstance(peer_key, bytes | bytearray) or len(peer_key) != 32:
            return False
        try:
            attributed = self.peer_key_operator(bytes(peer_key))
            if attributed is None or attributed != to_checksum_address(operator):
                return False
        except (ValueError, TypeError):
            return False
        return possession.verify_possession(
            peer_key, signature, self.chain_id, self.address, operator, nonce
        )
