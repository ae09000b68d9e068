"""Anti-entropy: fetch over `/fai/repair/1.0.0` whatever gossip missed.

A pass asks every connected peer, one at a time, for its inventory since our saved cursor
and fetches the batches we lack; each one passes the gate like a gossiped batch. What a peer
can cost us is bounded: pages and seconds per peer per pass, and a back-off for a peer whose
last pass failed (`repair.RepairBackoff`), so a peer that does not speak the protocol costs
one try and one log line per back-off step.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import trio
from libp2p.peer.id import ID

from fai_core.clock import now_ms
from fai_net.admission.gate import TEMPORARY_REFUSALS
from fai_net.node.identity import public_key_of
from fai_net.node.receive import Receiver
from fai_net.node.resources import NodeResources
from fai_net.node.state import NodeState
from fai_net.p2p import repair

#: Every part logs as the node always has (the CLI's log lines name the logger).
log = logging.getLogger("fai_net.node.node")

REPAIR_PAGE = 512
REPAIR_FETCH = 64
#: Pages per peer per pass, and seconds per peer per pass: bounds what a peer can cost us.
REPAIR_MAX_PAGES = 64
REPAIR_PEER_BUDGET_S = 60


class RepairSync:
    def __init__(
        self,
        res: NodeResources,
        state: NodeState,
        receiver: Receiver,
        connected_peers: Callable[[], list[ID]],
    ) -> None:
        self.res, self.state, self.receiver = res, state, receiver
        self.connected_peers = connected_peers
        self.backoff = repair.RepairBackoff()

    async def loop(self) -> None:
        while True:
            await self.state.repair_wakeup.wait(self.res.config.repair_interval_s)
            await self.sync_all()

    async def sync_all(self, domains: list[str] | None = None) -> int:
        """One repair pass over the connected peers. A peer whose last pass failed is asked
        again only after its back-off (repair.RepairBackoff): a peer that does not speak
        the protocol costs one try (and one log line) per back-off step, not one per pass."""
        accepted = 0
        for peer in self.connected_peers():
            key, now = str(peer), trio.current_time()
            if not self.backoff.should_try(key, now):
                continue
            failure: Exception | None = None
            # A slow or hostile peer gets a bounded share of each pass, never all of it.
            with trio.move_on_after(REPAIR_PEER_BUDGET_S) as budget:
                try:
                    accepted += await self.sync_with(peer, domains)
                except Exception as exc:
                    failure = exc
            if budget.cancelled_caught:
                failure = TimeoutError(f"hit its {REPAIR_PEER_BUDGET_S} s budget")
            if failure is None:
                self.backoff.succeeded(key)
                continue
            self.state.peer(peer).sync_failures += 1
            unsupported = getattr(failure, "code", None) == repair.UNSUPPORTED
            wait = self.backoff.failed(key, now, unsupported=unsupported)
            log.info("repair with %s failed: %s; next try in %.0f s", peer, failure, wait)
            if getattr(failure, "code", None) == repair.TIMEOUT or budget.cancelled_caught:
                await self._hang_up(peer)
        return accepted

    async def _hang_up(self, peer: ID) -> None:
        """No answer at all: the path is probably cut (a partition). TCP would resume this
        connection only at its next retransmission, which backs off about as long as the
        outage lasted (24 s after a 30 s cut, measured in tests/net/test_netns_fleet.py), and
        gossip and repair both wait on it; hang up, so discovery dials a fresh one."""
        with trio.move_on_after(5):
            try:
                await self.res.host.disconnect(peer)
            except Exception as exc:  # the connection may be closing already
                log.info("disconnect %s: %s", peer, exc)

    async def sync_with(self, peer: ID, domains: list[str] | None = None) -> int:
        """Fetch every batch `peer` has (in `domains`, default ours) that we lack.

        The cursor into the peer's inventory is saved per (peer, domain set): a cursor that
        skipped other domains' items must not be reused for a different set. It does not
        advance past an item refused for a reason that may pass later (membership snapshot
        behind the chain, clock skew, reputation), so the item is fetched again next time.
        """
        domains = sorted(domains or self.state.domains)
        if not domains:
            return 0
        store = self.res.store
        key = f"{peer}|{','.join(domains)}"
        cursor = store.peer_cursor(key)
        state = self.state.peer(peer)
        accepted = 0
        for _ in range(REPAIR_MAX_PAGES):
            started = trio.current_time()
            reply = await repair.request(
                self.res.host,
                peer,
                {"op": "since", "cursor": cursor, "limit": REPAIR_PAGE, "domains": domains},
            )
            state.latency_ms = round((trio.current_time() - started) * 1000, 2)
            state.last_seen_ms = now_ms()
            items = reply["items"]
            missing = [(it[0], it[1]) for it in items if not store.has(it[1])]
            got, retry_from = await self._fetch(peer, missing, cursor)
            accepted += got
            nxt = reply["next"]
            if retry_from is not None:
                nxt = min(nxt, max(cursor, retry_from))
            store.set_peer_cursor(key, nxt)
            # A domain-filtered page may be short while more remains: stop on no progress,
            # or on an empty page (a peer answering `next + 1` forever gets nothing).
            if nxt <= cursor or not items:
                break
            cursor = nxt
        if accepted:
            self.state.round_wakeup.set()
        self.state.last_sync_ms = now_ms()
        return accepted

    async def _fetch(
        self, peer: ID, missing: list[tuple[int, bytes]], cursor: int
    ) -> tuple[int, int | None]:
        """Fetch and admit one page's missing batches, in chunks. Returns how many were
        accepted, and the cursor to retry from if any was refused for a temporary reason."""
        accepted, retry_from = 0, None
        for i in range(0, len(missing), REPAIR_FETCH):
            chunk = dict((cid, pos) for pos, cid in missing[i : i + REPAIR_FETCH])
            want = list(chunk)
            while want:  # a reply may stop short of its size limit: ask for the rest
                got = await repair.request(self.res.host, peer, {"op": "get", "cids": want})
                seen: set[bytes] = set()
                for envelope in got["envelopes"]:
                    result = self._admit(peer, envelope, chunk)
                    if result.signed is not None:
                        seen.add(result.signed.cid)
                        if result.reason in TEMPORARY_REFUSALS:
                            pos = chunk.get(result.signed.cid, cursor + 1) - 1
                            retry_from = pos if retry_from is None else min(retry_from, pos)
                    if self.receiver.after_admit(
                        result, len(envelope), "repair", public_key_of(peer)
                    ):
                        accepted += 1
                rest = [c for c in want if c not in seen]
                if len(rest) == len(want):
                    break  # no progress: the peer lacks them or sends junk
                want = rest
        return accepted, retry_from

    def _admit(self, peer: ID, envelope: bytes, wanted: dict[bytes, int]):
        cpu = time.thread_time()
        result = self.res.gate.admit(
            envelope,
            now_ms(),
            origin="repair",
            forwarder=public_key_of(peer),
            wanted=wanted,
        )
        self.res.metrics.spent("validate", time.thread_time() - cpu)
        return result
