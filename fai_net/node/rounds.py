"""Merge rounds: the fair pending queue -> DeltaSoup -> the library.

A round takes at most `round_rows` rows from the fair pending queue, runs DeltaSoup over them
(its re-embedding of received texts is CPU-bound, in a worker thread, outside the library
limiter), merges the result into the library (holding the limiter only for the insert), then
marks the finished batches merged in the store. Batches stored but not merged, from the last
run or because they did not fit the queue, are re-queued from the store when there is room.
A round that fails is counted and logged; it never takes the node down.
"""

from __future__ import annotations

import logging
import time

import trio

from fai_core import dagcbor
from fai_core.clock import now_ms
from fai_core.experience import Experience
from fai_core.refusals import Drop, Muted, Refusal
from fai_core.wire import decode_envelope
from fai_net.node.baselines import BaselineResolver
from fai_net.node.resources import NodeResources
from fai_net.node.state import NodeState, Pending, RoundReport, read_library_sizes

#: Every part logs as the node always has (the CLI's log lines name the logger).
log = logging.getLogger("fai_net.node.node")
#: Seconds between saves of DeltaSoup's sender histories after a round.
HISTORY_SAVE_S = 10.0


class MergeRounds:
    def __init__(self, res: NodeResources, state: NodeState, resolver: BaselineResolver) -> None:
        self.res, self.state, self.resolver = res, state, resolver
        self._lock = trio.Lock()
        self._history_saved = time.monotonic()

    def requeue_unmerged(self) -> None:
        """Batches stored but not merged (when the node last stopped, or that did not fit the
        queue since) go into the pending queue, as many as fit; the rest wait in the store
        until the queue and DeltaSoup's backlog are empty again (`loop`)."""
        state = self.state
        limits = state.pending.limits
        room = limits.max_batches - len(state.pending)
        state.refill_from_store = False
        if room <= 0:
            return
        # Batches parked for their baseline block are unmerged too: read past them.
        parked = self.resolver.parked
        envelopes = self.res.store.unmerged(limit=room + parked)
        loaded = 0
        for envelope in envelopes:
            try:
                signed = decode_envelope(envelope)
            except Exception:  # a stored batch decoded once; log, don't die
                log.exception("stored batch no longer decodes")
                continue
            batch = signed.batch
            if self.resolver.is_parked(batch.cid):
                continue
            loaded += 1
            if loaded > room:
                state.refill_from_store = True
                return
            if batch.sender == self.res.identity.public_key:
                self.res.store.mark_merged([batch.cid])
                continue
            if state.pending.rows + len(batch) > limits.max_rows:
                state.refill_from_store = True
                return
            # Restarted batches take turns by sender: the forwarder is not known any more.
            # A v2 batch whose baseline block is not stored waits for it (baselines.py).
            self.resolver.queue(("restart", batch.sender), Pending(batch, "restart"), None)
        state.refill_from_store = len(envelopes) == room + parked

    async def loop(self) -> None:
        state = self.state
        while True:
            await state.round_wakeup.wait(self.res.config.round_interval_s)
            if state.refill_from_store and not state.pending and not self.res.soup.backlog_rows():
                # Nothing is queued or deferred, so every unmerged batch in the store is
                # one that did not fit: safe to load without feeding any batch twice.
                self.requeue_unmerged()
            try:
                await self.run_round()
            except Exception:
                # A round that fails must not take the node down; its batches stay unmerged
                # in the store (retried at the next start) and are counted.
                log.exception("merge round failed")
                self.res.metrics.reject(Refusal.ROUND_ERROR)

    async def run_round(self) -> RoundReport:
        """Merge up to `round_rows` pending rows, fairly across principals; returns what the
        library gained. DeltaSoup (and its re-embedding) runs outside the library limiter:
        the library is held only for the insert."""
        res, round_rows = self.res, self.res.config.round_rows
        async with self._lock:
            backlog = res.soup.backlog_rows()
            # At least half the round for new rows, so a deferred backlog cannot starve them.
            budget = round_rows - min(backlog, round_rows // 2)
            taken = self.state.pending.take(budget)
            if not taken and not backlog:
                return RoundReport()
            started = time.perf_counter()
            result = await trio.to_thread.run_sync(self._aggregate_in_thread, taken, now_ms())
            report = await trio.to_thread.run_sync(
                self.merge_in_thread, len(taken), result, limiter=self.state.lib_limiter
            )
            res.metrics.observe_round(time.perf_counter() - started)
            # Rows DeltaSoup deferred (over a sender's per-round cap) live in its in-memory
            # backlog: their batch stays unmerged in the store until they are merged, so a
            # restart re-queues it (merging is idempotent by experience id).
            res.store.mark_merged(report.done)
            # Only batches DeltaSoup finished: rows deferred to its backlog merge later.
            res.events("merged", cids=[dagcbor.cid_text(c) for c in report.done])
            res.reputation.save()
            return report

    def _aggregate_in_thread(self, taken: list[Pending], now: int):
        """DeltaSoup over the taken batches (the round lock keeps the soup to one thread).

        The gate decided freshness at admission; re-checking it here would refuse (and
        charge) batches that merely waited for this round."""
        cpu = time.thread_time()
        try:
            batches = [p.batch for p in taken]
            max_age_ms = self.res.config.repair_max_age_ms
            result = self.res.soup.aggregate(batches, now, max_age_ms=max_age_ms)
            self._save_history()
            return result
        finally:
            self.res.metrics.spent("round", time.thread_time() - cpu)

    def _save_history(self) -> None:
        """DeltaSoup's sender histories, at most every HISTORY_SAVE_S (the file is a few MB
        for a busy domain; a crash loses at most that much history, never the file)."""
        history = self.res.sender_history
        if history is None or time.monotonic() - self._history_saved < HISTORY_SAVE_S:
            return
        history.save()
        self._history_saved = time.monotonic()

    def merge_in_thread(self, n_taken: int, result) -> RoundReport:
        cpu = time.thread_time()
        try:
            report = self._merge(n_taken, result)
            self.state.library_sizes = read_library_sizes(self.res.library)
            return report
        finally:
            self.res.metrics.spent("round", time.thread_time() - cpu)

    def _merge(self, n_taken: int, result) -> RoundReport:
        metrics = self.res.metrics
        report = RoundReport(batches=n_taken)
        waiting = {o.cid for o in result.outcomes if o.deferred_rows}
        report.done |= {o.cid for o in result.outcomes} - waiting
        for drop in result.row_drop:
            if drop is not None and drop is not Drop.DEFERRED:
                metrics.drop(drop.value)
        for outcome in result.outcomes:
            if outcome.drop is not None:
                metrics.drop(outcome.drop.value, outcome.rows)
        by_source: dict[bytes, list[Experience]] = {}
        muted = self.res.outcomes.muted()
        for exp in result.experiences():
            if exp.source in muted:  # its lessons kept hurting this node's agents
                metrics.drop(Muted.OUTCOME_MUTED)
                continue
            by_source.setdefault(exp.source, []).append(exp)
        self.res.outcomes.sighted((e.id, e.source) for exps in by_source.values() for e in exps)
        for source, exps in by_source.items():
            merged = self.res.library.merge(exps, received_from=source)
            report.inserted += merged.inserted
            report.merged += len(exps)
            for exp in exps:
                report.by_domain[exp.domain] = report.by_domain.get(exp.domain, 0) + 1
        metrics.merged(len(result))
        return report
