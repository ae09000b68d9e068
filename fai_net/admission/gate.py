"""The gate every batch passes before it is stored, forwarded or merged.

It runs as the gossipsub topic validator, so a batch that fails here is never forwarded,
and it is also the check for batches fetched by repair: one code path decides what the
node accepts. Order matters and is cheapest-first, with attribution in mind:

1. decode + Ed25519 signature (fai_core.wire): failures before the signature are charged
   to nobody (the sender field could be forged); failures after it are charged to the
   sender. The forwarding peer is charged for a decode failure only because an honest
   relay, running this same gate before it forwards, would have refused the batch: that
   holds for rules docs/wire-format.md pins exactly. The signature rule is pinned (strict
   Ed25519, fai_core/identity.py, with edge-case vectors in tests/core); text
   normalisation is not entirely (the spec lists whitespace and ignored characters
   explicitly, but NFC depends on the Unicode version of the relay's Python), so
   `bad_text` is not charged to the forwarder (`FORWARDER_UNCHARGED`).
2. a repair reply the node did not ask for (charged to that peer); then duplicate (CID
   already stored): ignored, no fault, never forwarded twice. Gossip redelivers after its
   seen cache expires, and repair overlaps gossip.
3. topic/domain consistency (charged to the relay), model and group size, freshness (T_max
   for gossip; the longer repair window for batches the fleet already accepted).
4. membership (registry snapshot, or the explicit open mode).
5. per-sender sequence: a second CID for a stored (sender, seq) is equivocation: both
   signed envelopes are kept as evidence and the batch refused. A seq far behind the
   sender's newest is an old batch replayed.
6. reputation floor.
7. receive budgets and queue room (`admission`, the node's: fai_net/admission/budgets.py and
   fai_net/node/pending.py): refused with a temporary reason, charged to nobody.
Then the batch is stored durably *before* the validator returns True, so a batch this node
forwarded is one it can also serve to repair requests after a crash.
"""

from __future__ import annotations

import enum
import logging
from collections import OrderedDict
from collections.abc import Callable, Collection
from dataclasses import dataclass

from fai_core import bitdelta
from fai_core.errors import WireError
from fai_core.refusals import Ignore, Refusal, Reject
from fai_core.reputation import ReputationBook
from fai_core.wire import SignedBatch, decode_envelope
from fai_net.admission.membership import Membership
from fai_net.admission.store import BatchStore
from fai_net.ratelog import RateLimitedLog

log = logging.getLogger(__name__)
#: A peer chooses how many refusals we log: one line per reason per 10 s, with a count.
_ratelog = RateLimitedLog(log)

#: Refusals that may pass later: not charged to anyone, not cached as refused, and a
#: repair cursor does not move past them.
TEMPORARY_REFUSALS = frozenset(
    {
        Refusal.NOT_MEMBER,
        Refusal.FUTURE,
        Refusal.LOW_REPUTATION,
        Refusal.INTERNAL,
        Refusal.SENDER_BUDGET,
        Refusal.FORWARDER_BUDGET,
        Refusal.BUSY,
    }
)

#: Decode failures an honest relay could miss under the spec's rules (the NFC test of
#: pattern texts follows the relay's Unicode version, which the spec does not pin): never
#: charged to the forwarder. The signer is still charged.
FORWARDER_UNCHARGED = frozenset({Reject.BAD_TEXT})

#: The node's last word before a batch is stored: (batch, forwarder, origin, envelope
#: size) -> None to store it, or a temporary refusal reason.
Admission = Callable[[SignedBatch, bytes | None, str, int], Refusal | None]


class Verdict(enum.Enum):
    ACCEPT = "accept"
    IGNORE = "ignore"  # a duplicate: not new, not wrong
    REJECT = "reject"


@dataclass(frozen=True)
class GateResult:
    verdict: Verdict
    #: A `Reject` (decode failed), a `Refusal` or an `Ignore` (fai_core.refusals); None
    #: when accepted. Every value is a metric label.
    reason: Reject | Refusal | Ignore | None = None
    signed: SignedBatch | None = None
    #: The sender's earlier envelope for the same seq, when `reason` is equivocation.
    conflicting: bytes | None = None
    detail: str | None = None


@dataclass
class GatePolicy:
    model_id: str
    dimension: int
    max_age_ms: int = 300_000
    #: Repair may deliver batches up to this old; the store keeps them this long.
    repair_max_age_ms: int = 7 * 24 * 3_600_000
    seq_window: int = 4096
    group: int = bitdelta.DEFAULT_GROUP_SIZE


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
        admission: Admission | None = None,
    ) -> None:
        self.store = store
        self.membership = membership
        self.reputation = reputation
        self.policy = policy
        self.on_reject = on_reject
        self.on_equivocation = on_equivocation
        self.admission = admission
        self.domains: set[str] = set()

    def admit(
        self,
        data: bytes,
        now_ms: int,
        *,
        origin: str,
        topic_domain: str | None = None,
        forwarder: bytes | None = None,
        wanted: Collection[bytes] | None = None,
        topic_version: int | None = None,
    ) -> GateResult:
        """Decide on one envelope and store it if accepted. Never raises for bad input.

        `wanted`: for repair replies, the CIDs asked for; anything else is refused, so a peer
        cannot push batches through the repair window that gossip would refuse as stale.
        `topic_domain` and `topic_version`: what the gossip topic it came on says.
        """
        topic = None if topic_domain is None else (topic_domain, topic_version)
        try:
            return self._admit(data, now_ms, origin, topic, forwarder, wanted)
        except Exception as exc:  # a bug or a store error must cost one batch, not the node
            log.exception("gate failed on a batch")
            self.on_reject(Refusal.INTERNAL)
            return GateResult(Verdict.REJECT, Refusal.INTERNAL, None, None, str(exc))

    def _admit(self, data, now_ms, origin, topic, forwarder, wanted) -> GateResult:
        try:
            signed = decode_envelope(data)
        except WireError as exc:
            if exc.sender is not None:
                self.reputation.record(exc.sender, passed=False)
            if (
                forwarder is not None
                and forwarder != exc.sender
                and exc.reason not in FORWARDER_UNCHARGED
            ):
                self.reputation.record(forwarder, passed=False)
            return self._reject(exc.reason, f"{exc.detail} (from {_short(forwarder)})")
        batch = signed.batch
        if wanted is not None and batch.cid not in wanted:
            if forwarder is not None:
                self.reputation.record(forwarder, passed=False)
            return self._reject(
                Refusal.UNREQUESTED, f"repair reply from {_short(forwarder)}", signed
            )
        if self.store.has(batch.cid):
            if signed.baseline_block is not None:
                # A copy carrying the block a stripped copy lacked: keep the block (checked
                # by the decoder against the signed CID) for the batch that waits for it.
                block = signed.baseline_block
                self.store.put_block(block.cid, block.data, now_ms)
            return GateResult(Verdict.IGNORE, Ignore.DUPLICATE, signed)
        if topic is not None and not _fits_topic(batch, *topic):
            # The gossip publisher need not be the sender (anyone can re-publish a signed
            # batch), but an honest relay checks the topic before forwarding: charge it. A
            # version 2 batch on a version 1 topic would reach nodes that cannot read it.
            if forwarder is not None:
                self.reputation.record(forwarder, passed=False)
            where = f"v{batch.version} {batch.domain} on v{topic[1]} {topic[0]}"
            return self._reject(Refusal.TOPIC_MISMATCH, where, signed)
        if batch.domain not in self.domains:
            return GateResult(Verdict.IGNORE, Ignore.UNSUBSCRIBED, signed)
        policy = self.policy
        # An unresolved version 2 batch names its model only in its baseline block: the
        # node checks it when the block arrives (fai_net/node/baselines.py).
        model = policy.model_id if batch.model is None else batch.model
        if (model, batch.dim, batch.group) != (policy.model_id, policy.dimension, policy.group):
            # Mixed group sizes cannot be compared (or aggregated) row by row: the fleet
            # agrees on one, like it agrees on the model.
            return self._reject(
                Refusal.WRONG_MODEL, f"{batch.model}/{batch.dim}/g{batch.group}", signed
            )
        max_age = policy.max_age_ms if origin == "gossip" else policy.repair_max_age_ms
        if batch.timestamp_ms < now_ms - max_age:
            return self._reject(Refusal.STALE, f"{now_ms - batch.timestamp_ms} ms old", signed)
        if batch.timestamp_ms > now_ms + policy.max_age_ms:  # the future is never repaired
            return self._reject(Refusal.FUTURE, f"{batch.timestamp_ms - now_ms} ms ahead", signed)
        refusal = self.membership.check(signed)
        if refusal is not None:
            return self._reject(refusal, _short(batch.sender), signed)
        earlier = self.store.cid_at(batch.sender, batch.seq)
        if earlier is not None:  # a different CID: equal CIDs were caught as duplicates
            self.reputation.record(batch.sender, passed=False)
            if self.store.has_evidence(batch.sender, batch.seq):
                return self._reject(Refusal.EQUIVOCATION, f"{_short(batch.sender)} again", signed)
            first = self.store.get(earlier)
            if first is not None:
                self.store.add_evidence(first, signed.envelope, batch.sender, batch.seq)
            result = GateResult(Verdict.REJECT, Refusal.EQUIVOCATION, signed, first)
            self.on_reject(Refusal.EQUIVOCATION)
            log.warning("equivocation by %s at seq %d", _short(batch.sender), batch.seq)
            self.on_equivocation(result)
            return result
        newest = self.store.newest_seq(batch.sender)
        if origin == "gossip" and newest is not None and batch.seq + policy.seq_window < newest:
            # Only live traffic: repair legitimately delivers a sender's old batches late.
            return self._reject(Refusal.OLD_SEQ, f"seq {batch.seq}, newest {newest}", signed)
        if self.reputation.deprioritised(batch.sender):
            return self._reject(Refusal.LOW_REPUTATION, _short(batch.sender), signed)
        if self.admission is not None:
            refusal = self.admission(signed, forwarder, origin, len(data))
            if refusal is not None:
                return self._reject(refusal, _short(batch.sender), signed)
        self.store.put(signed, received_ms=now_ms, origin=origin)
        return GateResult(Verdict.ACCEPT, None, signed)

    def _reject(
        self, reason: Reject | Refusal, detail: str, signed: SignedBatch | None = None
    ) -> GateResult:
        self.on_reject(reason)
        _ratelog.info(reason, "rejected batch: %s: %s", reason, detail)
        return GateResult(Verdict.REJECT, reason, signed)


class RefusalCache:
    """Message keys the gate refused or ignored recently, so their copies skip the gate.

    py-libp2p marks a message as seen only once it passes validation, so every copy of a
    refused message (one per mesh peer, and again whenever a peer re-sends it) would be
    decoded and signature-checked anew: measured ~10 gate runs per refused batch, and a
    cheap amplifier for anyone flooding junk. Accepted messages never enter; a refusal for
    a reason that may pass later is retried by repair, which does not use this cache.
    """

    def __init__(self, ttl_s: float, max_entries: int = 8192) -> None:
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._entries: OrderedDict[bytes, float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def seen(self, key: bytes, now_s: float) -> bool:
        stamp = self._entries.get(key)
        if stamp is None:
            return False
        if now_s - stamp > self.ttl_s:
            del self._entries[key]
            return False
        return True

    def add(self, key: bytes, now_s: float) -> None:
        self._entries[key] = now_s
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)


def _fits_topic(batch, domain: str, version: int | None) -> bool:
    return batch.domain == domain and (version is None or batch.version == version)


def _short(key: bytes | None) -> str:
    return "?" if key is None else key.hex()[:12]
