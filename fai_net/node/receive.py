"""The receive path up to the merge queue: admission of a batch, and what follows it.

Every batch, from gossip or repair, passes the gate (`fai_net/admission/gate.py`); this
module holds the node's side of that: `Admission`, the gate's last check before storing
(queue room, then receive budgets) and its equivocation hook, and `Receiver`, the gossip
validator (refusal cache, budget before decode, gate) and the after-admit step that counts
the batch and queues it, fairly by principal, for a merge round.
"""

from __future__ import annotations

import hashlib
import logging
import time
from typing import TYPE_CHECKING

from libp2p.peer.id import ID

from fai_core.clock import now_ms
from fai_core.refusals import Ignore, Refusal
from fai_net.admission import evidence
from fai_net.admission.budgets import ReceiveBudget
from fai_net.admission.gate import GateResult, RefusalCache, Verdict
from fai_net.admission.membership import Membership
from fai_net.node.config import NodeConfig
from fai_net.node.identity import NodeIdentity, public_key_of
from fai_net.node.state import NodeState, Pending
from fai_net.p2p.topics import parse_topic

if TYPE_CHECKING:
    from fai_net.node.baselines import BaselineResolver
    from fai_net.node.resources import NodeResources

#: Every part logs as the node always has (the CLI's log lines name the logger).
log = logging.getLogger("fai_net.node.node")


class Admission:
    """The gate's hooks: built before the gate, which calls them."""

    def __init__(
        self,
        config: NodeConfig,
        state: NodeState,
        identity: NodeIdentity,
        membership: Membership,
        budget: ReceiveBudget,
    ) -> None:
        self.config, self.state, self.identity = config, state, identity
        self.membership, self.budget = membership, budget

    def principal(self, sender: bytes, forwarder: bytes | None, origin: str) -> object:
        """Whose turn a pending batch waits for (fai_net/node/pending.py): the sender in registry
        mode; in open mode, where keys are free, the peer that handed it to us."""
        if self.membership.mode != "open":
            return sender
        return (origin, forwarder) if forwarder is not None else (origin, sender)

    def admit(self, signed, forwarder: bytes | None, origin: str, size: int) -> Refusal | None:
        """The gate's last check before storing: queue room, then budgets (see the doc of
        fai_net/admission/budgets.py). Our own batches, back from peers, are always stored."""
        batch = signed.batch
        if batch.sender == self.identity.public_key:
            return None
        rows = len(batch)
        if not self.state.pending.fits(self.principal(batch.sender, forwarder, origin), rows):
            return Refusal.BUSY
        return self.budget.admit(
            batch.sender,
            forwarder if origin == "gossip" else None,
            rows,
            size,
            now_ms() / 1000,
            self.membership.stake_weight(batch.sender),
        )

    def on_equivocation(self, result: GateResult) -> None:
        if result.conflicting is None:
            return
        try:
            eq = evidence.check(result.conflicting, result.signed.envelope)
            path = evidence.write(self.config.data_dir / "evidence", eq)
            log.warning("equivocation evidence written to %s", path)
        except (evidence.EvidenceError, OSError) as exc:
            log.error("could not record equivocation evidence: %s", exc)


class Receiver:
    """The gossip validator and the step after every admission (gossip or repair)."""

    def __init__(self, res: NodeResources, state: NodeState, resolver: BaselineResolver) -> None:
        self.res, self.state, self.resolver = res, state, resolver
        self.refused = RefusalCache(ttl_s=res.config.seen_ttl_s)

    def validator(self, forwarder: ID, msg) -> bool:
        res = self.res
        topic = msg.topicIDs[0] if msg.topicIDs else ""
        if forwarder == res.peer_id:
            return True  # our own publish: encoded, stored and committed by the broadcaster
        now = now_ms()
        self.state.peer(forwarder).last_seen_ms = now
        key = hashlib.sha256(topic.encode() + b"\0" + msg.data).digest()
        if self.refused.seen(key, now / 1000):
            res.metrics.reject(Refusal.REFUSED_AGAIN)
            return False
        over = res.budget.before_decode(str(forwarder), len(msg.data), now / 1000)
        if over is not None:
            # Not cached as refused: the same batch from another forwarder may pass.
            res.metrics.reject(over)
            return False
        cpu = time.thread_time()
        forwarder_key = public_key_of(forwarder)
        topic_version, topic_domain = parse_topic(topic) or (None, "")
        result = res.gate.admit(
            msg.data,
            now,
            origin="gossip",
            topic_domain=topic_domain,
            topic_version=topic_version,
            forwarder=forwarder_key,
        )
        res.metrics.spent("validate", time.thread_time() - cpu)
        if result.verdict is not Verdict.ACCEPT and result.reason != Refusal.FORWARDER_BUDGET:
            self.refused.add(key, now / 1000)
        return self.after_admit(result, len(msg.data), "gossip", forwarder_key)

    def after_admit(
        self, result: GateResult, size: int, origin: str, forwarder: bytes | None = None
    ) -> bool:
        res, state = self.res, self.state
        accepted = result.verdict is Verdict.ACCEPT
        res.metrics.received(size, origin, batches=int(accepted))
        if accepted and result.signed.batch.sender == res.identity.public_key:
            # Our own batch, back from a peer after we lost our store: never reuse its seq.
            res.store.ensure_seq_above(result.signed.batch.seq)
            res.store.mark_merged([result.signed.batch.cid])
            return True
        if accepted:
            batch = result.signed.batch
            res.events("accepted", cid=batch.cid_text, origin=origin)
            principal = res.admission.principal(batch.sender, forwarder, origin)
            attached = result.signed.baseline_block
            self.resolver.queue(principal, Pending(batch, origin), forwarder, attached)
            state.last_sync_ms = now_ms()
            if state.pending.rows >= res.config.round_rows:
                state.round_wakeup.set()
            return True
        if result.verdict is Verdict.IGNORE and result.reason == Ignore.DUPLICATE:
            res.metrics.reject(Ignore.DUPLICATE)
            self._duplicate(result.signed, forwarder)
        return False

    def _duplicate(self, signed, forwarder: bytes | None) -> None:
        """A copy of a stored batch may still help one that waits for its baseline block:
        it carries the block, or its forwarder is one more peer to ask for it."""
        batch = signed.batch
        if not self.resolver.is_parked(batch.cid):
            return
        if signed.baseline_block is not None:
            self.resolver.offer(signed.baseline_block)
        else:
            self.resolver.add_source(batch.baseline_cid, forwarder)
