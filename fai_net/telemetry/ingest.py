"""The node's side of the telemetry spool: closed trajectories in, experiences out.

Every few seconds the node reads the trajectories that have closed in its spool (only
those of domains it follows: the rest wait for a subscription, at most the spool's age
limit), adds their terminal rewards, runs GRPO extraction with single attempts pooled
across comparable tasks, adds the experiences to its library as its own, and removes
from the spool what extraction is done with. Single attempts that do not yet make a
group of G stay for the next pass.

A crash between the add and the removal repeats the extraction on restart: the same
texts give the same experience ids, so the library is unchanged.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import trio

from fai_core.embedding import HashingEmbedder
from fai_core.extraction import ExtractionStats, LocalDSOptimizer
from fai_core.ingest.common import finish_trajectories
from fai_core.telemetry import TelemetryRecord
from fai_net.ratelog import RateLimitedLog
from fai_net.telemetry.spool import IDLE_MS, MAX_AGE_MS, Spool

log = logging.getLogger(__name__)

#: How often the node looks at its spool.
INTERVAL_S = 5.0
#: Single attempts kept waiting for comparable ones (the spool reads 5,000 at a time).
MAX_WAITING = 1_000


@dataclass
class IngestStats:
    """What the node made of its spool so far (shown by `status` under `telemetry`)."""

    passes: int = 0
    trajectories: int = 0
    groups: int = 0
    pooled_groups: int = 0
    no_signal: int = 0
    experiences: int = 0
    waiting: int = 0
    #: trajectories dropped because their steps disagree on (domain, kind)
    mixed_labels: int = 0
    expired_steps: int = 0
    #: waiting single attempts dropped beyond MAX_WAITING, oldest first
    dropped_waiting: int = 0
    failures: int = 0
    by_domain: dict[str, int] = field(default_factory=dict)

    def count(self, stats: ExtractionStats, waiting: int) -> None:
        self.trajectories += stats.trajectories - waiting
        self.groups += stats.groups
        self.pooled_groups += stats.pooled_groups
        self.no_signal += stats.no_signal
        self.experiences += stats.experiences
        self.waiting = waiting

    def to_json(self) -> dict:
        return asdict(self)


def split_mixed_labels(
    records: Iterable[TelemetryRecord],
) -> tuple[list[TelemetryRecord], set[tuple[str, str]]]:
    """Records of tasks whose steps agree on (domain, kind), and the trajectories of the
    tasks that do not (a harness bug, or one conversation mapped to two domains): those
    cannot be filed anywhere honestly, and must not block the rest of the spool."""
    records = list(records)
    labels: dict[str, set[tuple[str, str | None]]] = {}
    for record in records:
        labels.setdefault(record.task_id, set()).add((record.domain, record.kind))
    mixed = {task for task, seen in labels.items() if len(seen) > 1}
    keep = [r for r in records if r.task_id not in mixed]
    dropped = {(r.task_id, r.attempt) for r in records if r.task_id in mixed}
    return keep, dropped


class TelemetryIngest:
    """Runs the spool -> experiences passes for one node. All spool access happens in
    worker threads, one at a time (`_limiter`), on one connection."""

    def __init__(
        self,
        spool_path: Path,
        add: Callable[[list[dict]], Awaitable[dict]],
        domains: Callable[[], list[str]],
        *,
        idle_ms: int = IDLE_MS,
        max_age_ms: int = MAX_AGE_MS,
        interval_s: float = INTERVAL_S,
    ) -> None:
        self.spool = Spool.open(spool_path, check_same_thread=False)
        self._add = add
        self._domains = domains
        self.idle_ms = idle_ms
        self.max_age_ms = max_age_ms
        self.interval_s = interval_s
        self.stats = IngestStats()
        #: Spool counts after the last pass: `status` reads these, never the spool.
        self.held: dict[str, int] = {"steps": 0, "closed": 0, "open": 0}
        self.wakeup = trio.Event()
        self._limiter = trio.CapacityLimiter(1)
        self._log = RateLimitedLog(log, interval_s=60.0)
        # The optimizer's embeddings are thrown away: the node embeds again on add with
        # the fleet's model. Only text, domain, quality and iteration are used.
        self._optimizer = LocalDSOptimizer(HashingEmbedder(8), bytes(32))

    async def run(self) -> None:
        while True:
            with trio.move_on_after(self.interval_s):
                await self.wakeup.wait()
            self.wakeup = trio.Event()
            try:
                await self.run_pass()
            except Exception as exc:  # a bad pass must not stop the node's other loops
                self.stats.failures += 1
                self._log.warning("ingest_failed", "telemetry ingest pass failed: %r", exc)

    async def run_pass(self) -> int:
        """One pass; returns the number of experiences added."""
        domains = list(self._domains())
        items, extraction, done = await trio.to_thread.run_sync(
            self._extract, domains, limiter=self._limiter
        )
        if items:
            await self._add(items)
            for item in items:
                by = self.stats.by_domain
                by[item["domain"]] = by.get(item["domain"], 0) + 1
        await trio.to_thread.run_sync(self._finish, done, limiter=self._limiter)
        self.stats.passes += 1
        if extraction is not None:
            self.stats.count(extraction.stats, len(extraction.waiting))
        return len(items)

    def _extract(self, domains: list[str]):
        closed = self.spool.closed(domains, idle_ms=self.idle_ms)
        if not closed.records:
            return [], None, (set(), {})
        records = finish_trajectories(closed.records, closed.ends)
        records, mixed = split_mixed_labels(records)
        self.stats.mixed_labels += len(mixed)
        extraction = self._optimizer.extract(records)
        items = [
            {
                "text": e.text,
                "domain": e.domain,
                "quality": float(e.quality),
                "iteration": int(e.iteration),
            }
            for e in extraction.experiences
        ]
        done = extraction.consumed | mixed | self._overflow(extraction, records)
        return items, extraction, (done, closed.upto)

    def _overflow(self, extraction, records) -> set[tuple[str, str]]:
        """The oldest waiting single attempts beyond MAX_WAITING: dropped and counted.

        Waiting attempts are re-read every pass from the head of the spool; without a cap,
        thousands of one-off kinds (each pool holds up to G - 1) would fill the read window
        and starve every newer session until they expire."""
        if len(extraction.waiting) <= MAX_WAITING:
            return set()
        start: dict[tuple[str, str], float] = {}
        for r in records:
            key = (r.task_id, r.attempt)
            if key in extraction.waiting:
                start[key] = min(start.get(key, r.time), r.time)
        excess = len(extraction.waiting) - MAX_WAITING
        dropped = set(sorted(start, key=lambda k: (start[k], k))[:excess])
        self.stats.dropped_waiting += len(dropped)
        return dropped

    def _finish(self, done) -> None:
        keys, upto = done
        if keys:
            self.spool.consume(keys, upto)
        self.stats.expired_steps += self.spool.expire(
            max_age_ms=self.max_age_ms, idle_ms=self.idle_ms
        )
        self.held = self.spool.counts()

    def close(self) -> None:
        self.spool.close()
