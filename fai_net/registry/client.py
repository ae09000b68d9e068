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
from web3.exceptions import ContractLogicError
from web3.logs import DISCARD
from web3.types import TxReceipt

from fai_net.registry import eip712
from fai_net.registry.artifacts import registry_artifact, token_artifact
from fai_net.registry.errors import ErrorDecoder, TransactionFailed

MAX_AD_TTL = 24 * 3600


@dataclass(frozen=True)
class OperatorInfo:
    stake: int
    unbonding: int
    unbond_ready_at: int
    registered: bool
    jailed: bool
    ad_expiry: int
    ad_nonce: int
    peer_key: bytes
    multiaddrs_hash: bytes


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

    def send(self, sender: LocalAccount, fn: ContractFunction, gas: int | None = None) -> TxReceipt:
        params = {
            "from": sender.address,
            "nonce": self.w3.eth.get_transaction_count(sender.address, "pending"),
            "chainId": self.chain_id,
        }
        try:
            if gas is None:
                # Estimating runs the call first, so a revert surfaces here with its data.
                gas = fn.estimate_gas({"from": sender.address})
                gas = gas + gas // 5 + 10_000
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
            raise TransactionFailed(f"transaction {tx_hash.hex()} reverted on chain")
        return receipt


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
    ) -> SignedAdvertisement:
        """Sign the operator's next advertisement; give it to any relayer or post it."""
        multiaddrs = tuple(multiaddrs)
        if expiry is None:
            expiry = self.block_timestamp() + ttl
        if nonce is None:
            nonce = self.operator(account.address).ad_nonce
        signature = eip712.sign_advertisement(
            account, self.chain_id, self.address, peer_key, list(multiaddrs), expiry, nonce
        )
        return SignedAdvertisement(
            account.address, bytes(peer_key), multiaddrs, expiry, nonce, signature
        )

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
    ) -> TxReceipt:
        """Post or renew the operator's own advertisement in one step."""
        # The expiry is checked against the including block's time, which is later than the
        # latest block we read: keep a minute of margin below the 24 h ceiling.
        ad = self.sign_advertisement(account, peer_key, multiaddrs, ttl=min(ttl, MAX_AD_TTL - 60))
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
        signature = eip712.sign_batch_header(
            account, self.chain_id, self.address, peer_key, seq, cid_digest, timestamp_ms
        )
        return SignedBatchHeader(bytes(peer_key), seq, bytes(cid_digest), timestamp_ms, signature)

    def slash_equivocation(
        self, reporter: LocalAccount, a: SignedBatchHeader, b: SignedBatchHeader
    ) -> TxReceipt:
        fn = self.contract.functions.slashEquivocation(
            a.as_struct(), a.signature, b.as_struct(), b.signature
        )
        return self.tx.send(reporter, fn)

    def report_fraud(self, reporter: LocalAccount, target: str, evidence_hash: bytes) -> TxReceipt:
        fn = self.contract.functions.reportFraud(to_checksum_address(target), evidence_hash)
        return self.tx.send(reporter, fn)

    # -- owner ---------------------------------------------------------------------------
    def pause(self, owner: LocalAccount) -> TxReceipt:
        return self.tx.send(owner, self.contract.functions.pause())

    def unpause(self, owner: LocalAccount) -> TxReceipt:
        return self.tx.send(owner, self.contract.functions.unpause())

    def sweep_slashed(self, owner: LocalAccount, to: str) -> TxReceipt:
        return self.tx.send(owner, self.contract.functions.sweepSlashed(to_checksum_address(to)))

    # -- reads ---------------------------------------------------------------------------
    def events(self, receipt: TxReceipt, name: str) -> list:
        """Registry events of `name` in a receipt (token Transfer logs are skipped)."""
        return list(getattr(self.contract.events, name)().process_receipt(receipt, errors=DISCARD))

    def block_timestamp(self) -> int:
        return self.w3.eth.get_block("latest")["timestamp"]

    def operator(self, address: str) -> OperatorInfo:
        raw = self.contract.functions.operatorInfo(to_checksum_address(address)).call()
        return OperatorInfo(*raw[:7], bytes(raw[7]), bytes(raw[8]))

    def is_live(self, address: str) -> bool:
        return self.contract.functions.isLive(to_checksum_address(address)).call()

    def operators(self) -> list[str]:
        count = self.contract.functions.operatorCount().call()
        return list(self.contract.functions.operatorsPage(0, count).call())

    def token_balance(self, address: str) -> int:
        return self.token.functions.balanceOf(to_checksum_address(address)).call()

    def live_peers(self) -> list[LivePeer]:
        """Live operators with the multiaddrs of their current advertisement.

        Multiaddrs live only in `AdvertisementPosted` events; the current one is the event
        whose nonce is the operator's next nonce minus one, and its hash must match storage.
        """
        live = {}
        for address in self.operators():
            if self.is_live(address):
                live[address] = self.operator(address)
        if not live:
            return []
        logs = self.contract.events.AdvertisementPosted.get_logs(
            from_block=self.from_block, argument_filters={"operator": list(live)}
        )
        peers = []
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
