"""The gate every batch passes before it is stored, forwarded or merged.

It runs as the gossipsub topic validator, so a batch that fails here is never forwarded,
and it is also the check for batches fetched by repair: one code path decides what the
node accepts. Order matters and is cheapest-first, with attribution in mind:

1. decode + Ed25519 signature (fai_core.wire): failures before the signature are charged
   to nobody (the sender field could be forged); failures after it are charged to the
   sender. The forwarding peer is charged for any decode failure, because an honest
   node's validator would not have relayed it.
2. duplicate (CID already stored): ignored, not counted as a rejection, never forwarded
   twice. Gossip redelivers after its seen-cache expires, and repair overlaps gossip.
3. topic/domain consistency, model, freshness (T_max for gossip; the longer repair window
   for batches the fleet already accepted).
4. membership (registry snapshot, or the explicit open mode).
5. per-sender sequence: a second CID for a stored (sender, seq) is equivocation: both
   signed envelopes are kept as evidence and the batch refused. A seq far behind the
   sender's newest is an old batch replayed.
6. reputation floor.
Then the batch is stored durably *before* the validator returns True, so a batch this node
forwarded is one it can also serve to repair requests after a crash.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable
from dataclasses import dataclass

from fai_core.errors import WireError
from fai_core.reputation import ReputationBook
from fai_core.wire import SignedBatch, check_freshness, decode_envelope
from fai_net.batch_store import BatchStore
from fai_net.membership import Membership

log = logging.getLogger(__name__)


class Verdict(enum.Enum):
    ACCEPT = "accept"
    IGNORE = "ignore"  # a duplicate: not new, not wrong
    REJECT = "reject"


@dataclass(frozen=True)
class GateResult:
    verdict: Verdict
    reason: str | None = None
    signed: SignedBatch | None = None
    #: The sender's earlier envelope for the same seq, when `reason` is equivocation.
    conflicting: bytes | None = None


@dataclass
class GatePolicy:
    model_id: str
    dimension: int
    max_age_ms: int = 300_000
    #: Repair may deliver batches up to this old; the store keeps them this long.
    repair_max_age_ms: int = 7 * 24 * 3_600_000
    seq_window: int = 4096


class BatchGate:
    def __init__(
        self,
        store: BatchStore,
        membership: Membership,
        reputation: ReputationBook,
        policy: GatePolicy,
        *,
        on_reject: Callable[[str], None] = lambda reason: None,
        on_equivocation: Callable[[GateResult], None] = lambda result: None,
    ) -> None:
        self.store = store
        self.membership = membership
        self.reputation = reputation
        self.policy = policy
        self.on_reject = on_reject
        self.on_equivocation = on_equivocation
        self.domains: set[str] = set()

    def admit(
        self,
        data: bytes,
        now_ms: int,
        *,
        origin: str,
        topic_domain: str | None = None,
        forwarder: bytes | None = None,
        expected_cid: bytes | None = None,
    ) -> GateResult:
        """Decide on one envelope and store it if accepted. Never raises for bad input."""
        try:
            signed = decode_envelope(data, expected_cid=expected_cid)
        except WireError as exc:
            if exc.sender is not None:
                self.reputation.record(exc.sender, passed=False)
            if forwarder is not None and forwarder != exc.sender:
                self.reputation.record(forwarder, passed=False)
            return self._reject(exc.reason.value, f"{exc.detail} (from {_short(forwarder)})")
        batch = signed.batch
        if self.store.has(batch.cid):
            return GateResult(Verdict.IGNORE, "duplicate", signed)
        if topic_domain is not None and batch.domain != topic_domain:
            # A publisher that puts a batch on another domain's topic is lying about it.
            self.reputation.record(batch.sender, passed=False)
            return self._reject("topic_mismatch", f"{batch.domain} on {topic_domain}")
        if batch.domain not in self.domains:
            return GateResult(Verdict.IGNORE, "unsubscribed", signed)
        policy = self.policy
        if batch.model != policy.model_id or batch.dim != policy.dimension:
            return self._reject("wrong_model", f"{batch.model}/{batch.dim}")
        max_age = policy.max_age_ms if origin == "gossip" else policy.repair_max_age_ms
        try:
            check_freshness(batch, now_ms, max_age)
        except WireError as exc:
            return self._reject(exc.reason.value, exc.detail)
        refusal = self.membership.check(signed)
        if refusal is not None:
            return self._reject(refusal, _short(batch.sender))
        earlier = self.store.cid_at(batch.sender, batch.seq)
        if earlier is not None:  # a different CID: equal CIDs were caught as duplicates
            self.reputation.record(batch.sender, passed=False)
            first = self.store.get(earlier)
            if first is not None:
                self.store.add_evidence(first, signed.envelope, batch.sender, batch.seq)
            result = GateResult(Verdict.REJECT, "equivocation", signed, first)
            self.on_reject("equivocation")
            log.warning("equivocation by %s at seq %d", _short(batch.sender), batch.seq)
            self.on_equivocation(result)
            return result
        newest = self.store.newest_seq(batch.sender)
        if newest is not None and batch.seq + policy.seq_window < newest:
            return self._reject("old_seq", f"seq {batch.seq}, newest {newest}")
        if self.reputation.deprioritised(batch.sender):
            return self._reject("low_reputation", _short(batch.sender))
        self.store.put(signed, received_ms=now_ms, origin=origin)
        return GateResult(Verdict.ACCEPT, None, signed)

    def _reject(self, reason: str, detail: str) -> GateResult:
        self.on_reject(reason)
        log.info("rejected batch: %s: %s", reason, detail)
        return GateResult(Verdict.REJECT, reason)


def _short(key: bytes | None) -> str:
    return "?" if key is None else key.hex()[:12]
