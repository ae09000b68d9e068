"""Who may publish: the registry's live operators, or anyone in the explicit open mode.

The gossip validator runs on the event loop for every message, so it must never wait on
the chain: a peer could otherwise stall it (or kill it with an RPC error) by attaching
random operator signatures, which lie outside the CID. Membership is therefore a snapshot
(`refresh()`, called from a worker thread every few seconds) and `check()` only reads it.
Authorised hot signers come from `SignerSet` events, scanned incrementally by `refresh()`;
a binding never changes once made (client.set_signer docs).

A peer key belongs to the operator whose live advertisement carries the key's Ed25519
binding proof (`RegistryClient.live_peers` verifies it and drops unproven advertisements):
the chain reserves no keys, so an operator advertising somebody else's key (a squatter) is
never attributed it and blocks nobody.

A batch is attributable on-chain only with the operator's EIP-712 signature over its
header; without it an equivocation could not be slashed, so registry mode refuses batches
that lack it (`no_operator_sig`) or whose signer is not the key's operator or an authorised
signer of that operator (`bad_operator_sig`).

A key that was live and is no longer (its operator slashed, jailed, unbonded, or its
advertisement expired or moved to another key) is *dropped*: the node hangs up on it and
refuses it until it is live again. `dropped()` gives each such key with its operator and
why, worked out once when the key leaves the live set (a chain read per change, not per
refresh), so the node can say so once. Between refreshes `changed()` looks for the
registry events that end an operator's liveness (one `eth_getLogs`), so a slash is acted
on within a second or so instead of a whole refresh interval.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from fai_core.refusals import Refusal
from fai_core.wire import BatchHeader, SignedBatch

log = logging.getLogger(__name__)


class Membership(Protocol):
    mode: str

    def check(self, signed: SignedBatch) -> Refusal | None:
        """None when the sender may publish, else the `Refusal` (fai_core.refusals, a metric
        label): `not_member`, `no_operator_sig` or `bad_operator_sig`."""

    def refresh(self) -> None:
        """Re-read the member set (blocking; run it off the event loop)."""

    def live_addresses(self) -> dict[bytes, tuple[str, ...]]:
        """Peer key -> advertised multiaddrs of every live member."""

    def is_dropped(self, peer_key: bytes) -> bool:
        """True for a key whose operator is slashed, jailed, unbonded or expired."""

    def dropped(self) -> dict[bytes, Dropped]:
        """Every dropped key (see `is_dropped`), with its operator and why it was dropped."""

    def changed(self) -> bool:
        """True when the member set may have shrunk since the last refresh (cheap)."""

    def operator_of(self, peer_key: bytes) -> str | None:
        """The live operator this peer key is attributed to, if any."""

    def operator_signer(self) -> Callable[[BatchHeader], bytes] | None:
        """Signs this node's batch headers for the registry, when it has an operator key."""

    def stake_weight(self, peer_key: bytes) -> float:
        """The factor on this peer's receive budget (fai_net/admission/budgets.py)."""


@dataclass(frozen=True)
class Dropped:
    """A peer key that left the live set: its last operator and why (for one log line)."""

    operator: str | None
    reason: str


@dataclass
class OpenMembership:
    """Development mode: every correctly signed batch is from a member. Never a default."""

    mode: str = "open"

    def check(self, signed: SignedBatch) -> Refusal | None:
        return None

    def refresh(self) -> None:
        return None

    def live_addresses(self) -> dict[bytes, tuple[str, ...]]:
        return {}

    def is_dropped(self, peer_key: bytes) -> bool:
        return False

    def dropped(self) -> dict[bytes, Dropped]:
        return {}

    def changed(self) -> bool:
        return False

    def operator_of(self, peer_key: bytes) -> str | None:
        return None

    def operator_signer(self) -> Callable[[BatchHeader], bytes] | None:
        return None

    def stake_weight(self, peer_key: bytes) -> float:
        return 1.0  # no stake in open mode: the forwarder budget does the work


#: Registry events after which an operator may no longer be live: `changed()` looks for
#: these between refreshes. Advertisement expiry has no event; the periodic refresh sees it.
LIVENESS_ENDING_EVENTS = ("Slashed", "Jailed", "UnbondForced", "UnbondRequested", "Deregistered")

#: Stake weights are the stake over the median live stake, clamped to this range: more
#: stake buys more bandwidth, but no operator's budget falls to nothing or grows unbounded.
STAKE_WEIGHT_RANGE = (0.5, 4.0)


@dataclass
class RegistryMembership:
    """Members are the registry's live operators; see the module docstring."""

    client: object  # fai_net.registry.client.RegistryClient (imported lazily: web3 is heavy)
    operator_account: object | None = None  # eth_account LocalAccount signing our headers
    mode: str = "registry"
    _live: dict[bytes, object] = field(default_factory=dict)  # peer key -> LivePeer
    _ever_seen: set[bytes] = field(default_factory=set)
    _last_operator: dict[bytes, str] = field(default_factory=dict)  # peer key -> operator
    _dropped: dict[bytes, Dropped] = field(default_factory=dict)
    _signer_operator: dict[str, str] = field(default_factory=dict)
    _scanned_block: int = -1
    _watched_block: int = -1
    _median_stake: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    refreshed: bool = False

    def refresh(self) -> None:
        from eth_utils import to_checksum_address

        client = self.client
        block = client.w3.eth.block_number
        # Proven advertisements only, one operator per key (see the module docstring).
        live = {bytes(p.peer_key): p for p in client.live_peers(block)}
        signers: dict[str, str] = {}
        start = max(self._scanned_block + 1, client.from_block)
        if start <= block:
            for entry in client.contract.events.SignerSet.get_logs(
                from_block=start, to_block=block
            ):
                signer = to_checksum_address(entry.args.signer)
                signers.setdefault(signer, to_checksum_address(entry.args.operator))
        dropped = self._dropped_at(block, live)
        stakes = sorted(p.stake for p in live.values())
        with self._lock:
            self._live = live
            self._median_stake = stakes[len(stakes) // 2] if stakes else 0
            self._ever_seen |= set(live)
            self._last_operator.update((k, p.operator) for k, p in live.items())
            self._dropped = dropped
            for signer, operator in signers.items():
                self._signer_operator.setdefault(signer, operator)  # the first binding is final
            self._scanned_block = block
            self.refreshed = True

    def _dropped_at(self, block: int, live: dict[bytes, object]) -> dict[bytes, Dropped]:
        """Keys seen live before and not in `live`. A key dropped already keeps its entry;
        only a key that has just left is explained, with a chain read, so a refresh costs
        nothing more while nothing changes."""
        with self._lock:
            gone = self._ever_seen - set(live)
            known = {k: v for k, v in self._dropped.items() if k in gone}
            operators = {k: self._last_operator.get(k) for k in gone - set(known)}
        for key, operator in operators.items():
            known[key] = Dropped(operator, self._why_not_live(operator, key, block))
        return known

    def _why_not_live(self, operator: str | None, peer_key: bytes, block: int) -> str:
        """The first reason `isLive` (or key attribution) fails, for the log line."""
        if operator is None:
            return "no operator"
        client = self.client
        try:
            info = client.operator(operator, block)
            now = client.w3.eth.get_block(block)["timestamp"]
        except Exception as exc:  # the log line loses its reason, nothing else
            return f"reason unknown: {exc}"
        if info.jailed:
            return "jailed: slashed for equivocation"
        if not info.registered:
            return "left the registry"
        if info.stake < client.min_bond:
            return "bonded stake below the minimum: slashed or unbonding"
        if info.ad_expiry <= now:
            return "advertisement expired"
        if bytes(info.peer_key) != bytes(peer_key):
            return "its operator advertises another key"
        return "advertisement no longer attributed to this key"

    def changed(self) -> bool:
        """One `eth_getLogs` over the blocks since the last look: did the registry log an
        event that may end an operator's liveness? A True is not consumed here: the refresh
        it prompts moves `_scanned_block` past those blocks."""
        client = self.client
        block = client.w3.eth.block_number
        with self._lock:
            start = max(self._scanned_block, self._watched_block) + 1
        if block < start:
            return False
        events = client.contract.events
        topics = [getattr(events, name).topic for name in LIVENESS_ENDING_EVENTS]
        logs = client.w3.eth.get_logs(
            {"address": client.address, "fromBlock": start, "toBlock": block, "topics": [topics]}
        )
        if logs:
            return True
        with self._lock:
            self._watched_block = max(self._watched_block, block)
        return False

    def live_addresses(self) -> dict[bytes, tuple[str, ...]]:
        with self._lock:
            return {k: tuple(p.multiaddrs) for k, p in self._live.items()}

    def is_dropped(self, peer_key: bytes) -> bool:
        with self._lock:
            return peer_key in self._ever_seen and peer_key not in self._live

    def dropped(self) -> dict[bytes, Dropped]:
        with self._lock:
            return dict(self._dropped)

    def stake_weight(self, peer_key: bytes) -> float:
        with self._lock:
            peer = self._live.get(peer_key)
            median = self._median_stake
        if peer is None or median <= 0:
            return 1.0
        low, high = STAKE_WEIGHT_RANGE
        return min(high, max(low, peer.stake / median))

    def operator_of(self, peer_key: bytes) -> str | None:
        with self._lock:
            peer = self._live.get(peer_key)
        return None if peer is None else peer.operator

    def check(self, signed: SignedBatch) -> Refusal | None:
        """Reads the snapshot only: no chain call, whatever the batch carries."""
        from fai_net.registry import eip712

        operator = self.operator_of(signed.batch.sender)
        if operator is None:
            return Refusal.NOT_MEMBER
        if signed.operator_signature is None:
            return Refusal.NO_OPERATOR_SIG
        header = signed.batch.header
        try:
            signer = eip712.recover_batch_header_signer(
                signed.operator_signature,
                self.client.chain_id,
                self.client.address,
                header.sender,
                header.seq,
                header.cid_digest,
                header.timestamp_ms,
            )
        except Exception:  # eth-keys raises several types for junk signatures
            return Refusal.BAD_OPERATOR_SIG
        if signer == operator:
            return None
        with self._lock:
            bound = self._signer_operator.get(signer)
        return None if bound == operator else Refusal.BAD_OPERATOR_SIG

    def operator_signer(self) -> Callable[[BatchHeader], bytes] | None:
        if self.operator_account is None:
            return None
        from fai_net.registry import eip712

        account, client = self.operator_account, self.client

        def sign(header: BatchHeader) -> bytes:
            return eip712.sign_batch_header(
                account,
                client.chain_id,
                client.address,
                header.sender,
                header.seq,
                header.cid_digest,
                header.timestamp_ms,
            )

        return sign
