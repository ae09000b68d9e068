"""Wire-v2 baselines on the receiving side: the blocks a node must fetch, and the batches
that wait for them.

A version 2 batch names its sender's baseline by CID (fai_core/baseline_block.py). The
sender (`BaselinePublisher` there, used by broadcast.py) starts with the fleet's reference
block, which every node derives and nobody sends; once its library is large enough it makes
a block of its mean, and a new one only when the mean has drifted past
`NodeConfig.baseline_drift`, attached to its first batch on each domain's topic after the
change, so subscribers get it with the batch and almost never fetch it.

A batch may arrive without its block (the node missed the batch that
carried it, or joined later). `BaselineResolver` completes it from a small in-memory cache
or the batch store; otherwise the batch is parked and the block fetched with the repair
protocol's `blocks` op, from the peer that handed us the batch, then the sender's node, then
any connected peer. Parked batches enter the merge queue once their block arrives. What an
attacker can do with it is bounded: parked batches passed the gate (signature, membership,
budgets) like any other, the park holds at most `MAX_PARKED` of them, and a batch whose
block never arrives stays unmerged in the store (retried after a restart), costing no one
reputation: an outage is not proof of fault. A block that hashes right but does not fit
the batch (another model or dimension, bad values) is the signer's fault (the batch commits
to the block) and is charged to it like any content error.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import trio
from libp2p.peer.id import ID

from fai_core import dagcbor
from fai_core.baseline_block import BaselineBlock, decode_baseline_block, reference_block
from fai_core.clock import now_ms
from fai_core.errors import WireError
from fai_core.refusals import Refusal, Reject
from fai_core.wire import Batch
from fai_net.node.identity import public_key_of
from fai_net.node.peer_keys import peer_id_of
from fai_net.node.state import NodeState, Pending
from fai_net.p2p import repair
from fai_net.ratelog import RateLimitedLog

if TYPE_CHECKING:
    from fai_net.node.resources import NodeResources

#: Every part logs as the node always has (the CLI's log lines name the logger).
log = logging.getLogger("fai_net.node.node")
_ratelog = RateLimitedLog(log)

#: Batches waiting for their baseline block, node-wide; beyond that they wait in the store.
MAX_PARKED = 1024
#: One principal's share of the park: a peer forwarding batches whose blocks it withholds
#: fills its own share, not the park (its further batches wait in the store).
PARK_SHARE = 0.125
#: Blocks kept decoded in memory (each ~1.5 KB as float32 at d = 384).
CACHE_BLOCKS = 256
#: Peers asked per pass (the peers that handed us the batches and their senders first, then
#: the other connected peers in turn), each for every missing block at once (<= 64 per
#: request), all at the same time; a pass lasts at most FETCH_PASS_S.
PEERS_PER_PASS = 4
FETCH_INTERVAL_S = 2.0
FETCH_PASS_S = 12.0
#: A parked batch whose block no peer served for this long leaves memory; it stays unmerged
#: in the store and is parked again after the next restart.
PARK_TIMEOUT_S = 600.0


@dataclass
class _Parked:
    """Batches waiting for one block, and the peers that handed them to us."""

    since: float
    waiting: list[tuple[object, Pending]] = field(default_factory=list)
    sources: list[bytes] = field(default_factory=list)


class BaselineResolver:
    """Completes v2 batches with their baseline blocks (see the module docstring)."""

    def __init__(
        self, res: NodeResources, state: NodeState, connected_peers: Callable[[], list[ID]]
    ) -> None:
        self.res, self.state, self.connected_peers = res, state, connected_peers
        self._cache: OrderedDict[bytes, BaselineBlock] = OrderedDict()
        self._parked: dict[bytes, _Parked] = {}
        self._parked_cids: set[bytes] = set()
        self._by_principal: dict[object, int] = {}
        self._rotation = 0
        self.backoff = repair.RepairBackoff()
        # The fleet's reference block is never sent: every node derives it, and stores it
        # so that it can serve it like any other. Pinned: no batch may name it for weeks,
        # and the store's prune must not stop us serving it meanwhile.
        policy = res.gate.policy
        self.reference = reference_block(policy.model_id, policy.dimension)
        res.store.pin_block(self.reference.cid, self.reference.data, now_ms())
        #: Blocks fetched; batches not parked because the park was full; parked batches
        #: given up on (`PARK_TIMEOUT_S`): `status` reports them.
        self.fetched = 0
        self.park_full = 0
        self.gave_up = 0
        self.wakeup = trio.Event()

    @property
    def parked(self) -> int:
        return len(self._parked_cids)

    def lookup(self, cid: bytes) -> BaselineBlock | None:
        """The block from memory or the store, None if this node does not hold it."""
        if cid == self.reference.cid:
            return self.reference
        block = self._cache.get(cid)
        if block is not None:
            self._cache.move_to_end(cid)
            return block
        data = self.res.store.get_block(cid)
        if data is None:
            return None
        block = decode_baseline_block(data, cid)  # stored after the same check: cannot fail
        self.remember(block)
        return block

    def remember(self, block: BaselineBlock) -> None:
        if block.cid == self.reference.cid:
            return
        self._cache[block.cid] = block
        self._cache.move_to_end(block.cid)
        while len(self._cache) > CACHE_BLOCKS:
            self._cache.popitem(last=False)

    def queue(
        self,
        principal: object,
        pending: Pending,
        source: bytes | None,
        attached: BaselineBlock | None = None,
    ) -> bool:
        """Put an accepted batch in the merge queue, completed with its baseline, or park it
        until the block arrives. True if it is queued now. `attached`: the block that came
        in the batch's envelope (the gate stored it), which may free parked batches too."""
        if attached is not None:
            self.offer(attached)
        batch = pending.batch
        if not batch.resolved:
            block = self.lookup(batch.baseline_cid)
            if block is None:
                self.park(principal, pending, source)
                return False
            batch = self._fit(batch, block)
            if batch is None:
                return False
        self.state.pending.put(principal, Pending(batch, pending.origin), len(batch))
        return True

    def park(self, principal: object, pending: Pending, source: bytes | None) -> bool:
        """Hold a batch until its block arrives; False if it must wait in the store instead
        (the park, or this principal's share of it, is full). Parking twice is a no-op."""
        batch = pending.batch
        if batch.cid in self._parked_cids:
            self.add_source(batch.baseline_cid, source)
            return True
        share = max(1, int(MAX_PARKED * PARK_SHARE))
        if self.parked >= MAX_PARKED or self._by_principal.get(principal, 0) >= share:
            self.park_full += 1  # it waits in the store; retried once the park has room
            _ratelog.info("park", "baseline park full: %s waits in the store", batch.cid_text)
            return False
        cid = batch.baseline_cid
        entry = self._parked.get(cid) or self._parked.setdefault(cid, _Parked(trio.current_time()))
        entry.waiting.append((principal, pending))
        self._parked_cids.add(batch.cid)
        self._by_principal[principal] = self._by_principal.get(principal, 0) + 1
        self.add_source(cid, source)
        self.wakeup.set()
        return True

    def add_source(self, block_cid: bytes | None, source: bytes | None) -> None:
        """A peer that handed us a batch naming `block_cid`: asked first for the block."""
        entry = self._parked.get(block_cid) if block_cid is not None else None
        if entry is not None and source is not None and source not in entry.sources:
            entry.sources.append(source)

    def is_parked(self, batch_cid: bytes) -> bool:
        return batch_cid in self._parked_cids

    def offer(self, block: BaselineBlock) -> None:
        """A block that came attached to an envelope (the gate checked and stored it, with
        a new batch or a copy of a stored one): keep it at hand, release its parked batches."""
        self.remember(block)
        self._release(block)

    def _unpark(self, entry: _Parked) -> None:
        if self.park_full:
            self.state.refill_from_store = True  # batches refused a place may fit now
        for principal, pending in entry.waiting:
            self._parked_cids.discard(pending.batch.cid)
            left = self._by_principal.get(principal, 0) - 1
            if left > 0:
                self._by_principal[principal] = left
            else:
                self._by_principal.pop(principal, None)

    def _fit(self, batch: Batch, block: BaselineBlock) -> Batch | None:
        """The batch completed, or None: refused and marked done in the store, so a restart
        does not queue it again."""
        try:
            batch = batch.with_baseline(block)
        except WireError as exc:
            self.res.reputation.record(batch.sender, passed=False)
            return self._refuse(batch, exc.reason, str(exc))
        if batch.model != self.res.gate.policy.model_id:
            # Another fleet's model, as the gate refuses it (nobody charged).
            return self._refuse(batch, Refusal.WRONG_MODEL, f"model {batch.model!r}")
        return batch

    def _refuse(self, batch: Batch, reason: str, detail: str) -> None:
        self.res.metrics.reject(reason)
        self.res.store.mark_merged([batch.cid])
        _ratelog.info(reason, "baseline of %s refused: %s", batch.cid_text, detail)
        return None

    def _release(self, block: BaselineBlock) -> None:
        """Queue the batches parked on `block` (just stored), as many as the merge queue
        takes; the others wait in the store for the next refill (`MergeRounds`)."""
        entry = self._parked.pop(block.cid, None)
        if entry is None:
            return
        self._unpark(entry)
        queue = self.state.pending
        for principal, pending in entry.waiting:
            batch = self._fit(pending.batch, block)
            if batch is None:
                continue
            if queue.fits(principal, len(batch)):
                queue.put(principal, Pending(batch, pending.origin), len(batch))
            else:
                self.state.refill_from_store = True
        self.state.round_wakeup.set()

    async def loop(self) -> None:
        while True:
            with trio.move_on_after(FETCH_INTERVAL_S):
                await self.wakeup.wait()
            self.wakeup = trio.Event()
            self._expire(trio.current_time())
            if self._parked:
                await self.fetch_missing()

    def _expire(self, now: float) -> None:
        for cid, entry in list(self._parked.items()):
            if now - entry.since > PARK_TIMEOUT_S:
                del self._parked[cid]
                self._unpark(entry)
                self.gave_up += len(entry.waiting)
                log.info(
                    "no peer served baseline %s; %d batches wait in the store",
                    cid.hex()[:16],
                    len(entry.waiting),
                )

    def status(self) -> dict:
        """What `fai node status` shows of wire-v2 baselines."""
        return {
            "parked_batches": self.parked,
            "missing_blocks": len(self._parked),
            "fetched_blocks": self.fetched,
            "park_full": self.park_full,
            "gave_up": self.gave_up,
            "stored_blocks": self.res.store.block_count(),
        }

    async def fetch_missing(self) -> int:
        """One pass: ask up to PEERS_PER_PASS peers at once for every missing block; returns
        how many blocks arrived. A peer that fails is backed off; the pass ends after
        FETCH_PASS_S whatever the slowest peer does."""
        got = [0]
        with trio.move_on_after(FETCH_PASS_S):
            async with trio.open_nursery() as nursery:
                for peer in self._peers_to_ask():
                    nursery.start_soon(self._fetch_from, peer, got)
        return got[0]

    def _peers_to_ask(self) -> list[ID]:
        """The peers that handed us parked batches and the senders' nodes first, then the
        other connected peers in turn (a different few each pass), minus backed-off ones."""
        connected = self.connected_peers()
        now = trio.current_time()
        keys = [k for e in self._parked.values() for k in e.sources]
        keys += [p.batch.sender for e in self._parked.values() for _, p in e.waiting[:8]]
        preferred = [p for p in dict.fromkeys(map(_peer_or_none, keys)) if p in connected]
        others = [p for p in connected if p not in preferred]
        if others:
            start = self._rotation % len(others)
            others = others[start:] + others[:start]
            self._rotation += PEERS_PER_PASS
        ready = [p for p in preferred + others if self.backoff.should_try(str(p), now)]
        return ready[:PEERS_PER_PASS]

    async def _fetch_from(self, peer: ID, got: list[int]) -> None:
        wanted = list(self._parked)
        for i in range(0, len(wanted), repair.MAX_GET_CIDS):
            chunk = [c for c in wanted[i : i + repair.MAX_GET_CIDS] if c in self._parked]
            if not chunk:
                continue
            try:
                reply = await repair.request(self.res.host, peer, {"op": "blocks", "cids": chunk})
            except repair.RepairError as exc:
                unsupported = exc.code == repair.UNSUPPORTED
                self.backoff.failed(str(peer), trio.current_time(), unsupported=unsupported)
                log.debug("baseline fetch from %s failed: %s", peer, exc)
                return
            self.backoff.succeeded(str(peer))
            asked = set(chunk)
            for data in reply["blocks"]:
                got[0] += self._take(peer, data, asked)

    def _take(self, peer: ID, data: bytes, asked: set[bytes]) -> int:
        """One block from a peer's answer: 1 if it completed parked batches."""
        cid = dagcbor.cid_of(data)
        if cid not in asked:
            # Bytes of a block we did not ask for: the peer's doing (docs/wire-format.md).
            self.res.reputation.record(public_key_of(peer), passed=False)
            self.res.metrics.reject(Reject.CID_MISMATCH)
            _ratelog.info("baseline", "peer %s sent a block it was not asked for", peer)
            return 0
        if cid not in self._parked:
            return 0  # another peer's answer came first
        try:
            block = decode_baseline_block(data, cid)
        except WireError as exc:
            # It hashes right: the batches' signer committed to a broken block.
            self._refuse_all(cid, exc)
            return 0
        self.res.store.put_block(block.cid, block.data, now_ms())
        self.remember(block)
        self._release(block)
        self.fetched += 1
        return 1

    def _refuse_all(self, cid: bytes, exc: WireError) -> None:
        entry = self._parked.pop(cid, None)
        if entry is None:
            return
        self._unpark(entry)
        for _, pending in entry.waiting:
            self.res.reputation.record(pending.batch.sender, passed=False)
            self.res.metrics.reject(exc.reason)
            self.res.store.mark_merged([pending.batch.cid])


def _peer_or_none(key: bytes) -> ID | None:
    try:
        return peer_id_of(key)
    except Exception:  # not a valid Ed25519 point: no node to ask
        return None
