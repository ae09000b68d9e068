"""LocalDSOptimizer: a node's own telemetry in, shareable experiences out (paper 3.1, 7.3).

telemetry -> trajectories (per task and attempt) -> GRPO groups of G attempts, at most K
per task -> one pattern per group from an Introspector -> embeddings -> Experience.
Tasks attempted fewer than G times (what passive telemetry of real agents looks like)
are pooled with comparable tasks, same domain and kind, into groups of G.

A pattern the steering screen (fai_core.text_screen) refuses is never emitted: the node's
own agents read its library without DeltaSoup, and an introspector that reads tool output
can be prompt-injected into writing one.

It returns experiences and stores nothing: the library decides what to keep, and an
`on_experience` callback lets a caller stream them into one. Extraction is offline and
deterministic given the records, the introspector, the embedder and the clock, which is
what lets tests (and a node's operator) check exactly what would be shared.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from fai_core import grpo, text_screen
from fai_core.embedding import Embedder
from fai_core.experience import PUBLIC_KEY_LEN, Experience, text_problem
from fai_core.introspection import (
    DeterministicIntrospector,
    GroupView,
    IntrospectionError,
    Introspector,
    view_group,
)
from fai_core.telemetry import TelemetryRecord, Trajectory, group_trajectories


@dataclass
class ExtractionStats:
    """Counts of what happened to the input, so a skipped group is visible, not silent."""

    records: int = 0
    tasks: int = 0
    trajectories: int = 0
    groups: int = 0
    #: of `groups`: groups of single attempts at comparable tasks (same domain and kind)
    pooled_groups: int = 0
    #: attempts in no scored group: a trailing incomplete group or beyond K groups of their
    #: task, or single attempts still waiting for enough comparable ones to form a group
    unscored_trajectories: int = 0
    #: of `unscored_trajectories`: attempts waiting in a pool (`Extraction.waiting`)
    waiting_trajectories: int = 0
    #: groups whose returns were all equal: no advantage, no pattern
    no_signal: int = 0
    introspection_errors: int = 0
    #: introspector returned None or a text that is not a valid pattern
    no_pattern: int = 0
    #: of `no_pattern`: valid texts the steering screen (fai_core.text_screen) refused
    steering: int = 0
    #: same (domain, text) from several groups: kept once, at the highest quality
    duplicates: int = 0
    experiences: int = 0


@dataclass
class Extraction:
    """What one extraction pass produced: the experiences, the counts, and which
    trajectories the caller may now discard (`consumed`) or must keep for a later pass
    (`waiting`)."""

    experiences: list[Experience] = field(default_factory=list)
    stats: ExtractionStats = field(default_factory=ExtractionStats)
    #: (task_id, attempt) of every trajectory that is done with: scored, or past K groups
    consumed: set[tuple[str, str]] = field(default_factory=set)
    #: (task_id, attempt) of single attempts waiting for comparable ones (a later call may
    #: group them with attempts that have arrived since)
    waiting: set[tuple[str, str]] = field(default_factory=set)


class LocalDSOptimizer:
    """Runs GRPO extraction over telemetry. See docs/telemetry.md for every formula.

    `timestamps="now"` stamps experiences with the clock (they are created now);
    `"record"` uses the time of the last step of the group, in milliseconds.
    """

    def __init__(
        self,
        embedder: Embedder,
        source: bytes,
        *,
        introspector: Introspector | None = None,
        group_size: int = grpo.GROUP_SIZE,
        max_iterations: int = grpo.MAX_ITERATIONS,
        weights: grpo.QualityWeights = grpo.DEFAULT_WEIGHTS,
        success_threshold: float = grpo.SUCCESS_THRESHOLD,
        timestamps: Literal["now", "record"] = "now",
        clock_ms: Callable[[], int] | None = None,
        on_experience: Callable[[Experience], None] | None = None,
        pool_single_attempts: bool = True,
    ) -> None:
        if not isinstance(source, bytes) or len(source) != PUBLIC_KEY_LEN:
            raise ValueError("source must be the node's 32-byte Ed25519 public key")
        if timestamps not in ("now", "record"):
            raise ValueError("timestamps must be 'now' or 'record'")
        grpo.iteration_groups(0, group_size, max_iterations)  # validates both
        self.embedder = embedder
        self.source = source
        self.introspector: Introspector = introspector or DeterministicIntrospector()
        self.group_size = group_size
        self.max_iterations = max_iterations
        self.weights = weights
        self.success_threshold = success_threshold
        self.timestamps = timestamps
        self.clock_ms = clock_ms or (lambda: time.time_ns() // 1_000_000)
        self.on_experience = on_experience
        #: Tasks with fewer than G attempts are grouped with comparable tasks (same domain
        #: and kind) instead of left unscored; False restores the paper's strict G-per-task.
        self.pool_single_attempts = pool_single_attempts

    def run(self, records: Iterable[TelemetryRecord]) -> list[Experience]:
        """The experiences extracted from `records` (see `extract` for the counts)."""
        return self.extract(records).experiences

    def extract(self, records: Iterable[TelemetryRecord]) -> Extraction:
        """Group `records` into tasks and attempts, score each group (GRPO) and introspect
        it into a pattern; the Extraction says what came out, what was skipped and why, and
        which trajectories are done with, so a spool knows what it may delete."""
        result = Extraction()
        stats = result.stats
        records = list(records)
        stats.records = len(records)
        candidates: list[tuple[GroupView, str, int]] = []
        pools: dict[tuple[str, str | None], list[Trajectory]] = {}
        for task in group_trajectories(records):
            stats.tasks += 1
            stats.trajectories += len(task.trajectories)
            if self.pool_single_attempts and len(task.trajectories) < self.group_size:
                pools.setdefault((task.domain, task.kind), []).extend(task.trajectories)
                continue
            blocks = grpo.iteration_groups(
                len(task.trajectories), self.group_size, self.max_iterations
            )
            stats.unscored_trajectories += len(task.trajectories) - self.group_size * len(blocks)
            for k, block in enumerate(blocks, start=1):
                members = [task.trajectories[i] for i in block]
                candidates += self._score(members, task.domain, task.kind, k, stats)
            # Attempts past K groups are done with; a trailing partial block may grow.
            done = (
                task.trajectories
                if len(blocks) == self.max_iterations
                else (task.trajectories[: self.group_size * len(blocks)])
            )
            result.consumed |= {(t.task_id, t.attempt) for t in done}
        for (domain, kind), trajectories in pools.items():
            candidates += self._score_pool(domain, kind, trajectories, result)
        self._emit(candidates, result)
        return result

    def _score_pool(
        self,
        domain: str,
        kind: str | None,
        trajectories: list[Trajectory],
        result: Extraction,
    ) -> list[tuple[GroupView, str, int]]:
        """Groups of G single attempts at comparable tasks, oldest first.

        Passive telemetry rarely repeats a task, so the group is formed across tasks of
        the same domain and kind: the advantage of an attempt then says how it went
        compared with its peers on similar work, the same baseline GRPO takes from
        repeated attempts (docs/telemetry.md, "Single-attempt sessions"). Every such group
        is iteration 1: none of its attempts learnt from another.
        """
        stats = result.stats
        trajectories = sorted(trajectories, key=lambda t: (t.start, t.task_id, t.attempt))
        full = len(trajectories) - len(trajectories) % self.group_size
        found = []
        for start in range(0, full, self.group_size):
            members = trajectories[start : start + self.group_size]
            stats.pooled_groups += 1
            found += self._score(members, domain, kind, 1, stats)
        result.consumed |= {(t.task_id, t.attempt) for t in trajectories[:full]}
        waiting = {(t.task_id, t.attempt) for t in trajectories[full:]}
        result.waiting |= waiting
        stats.unscored_trajectories += len(waiting)
        stats.waiting_trajectories += len(waiting)
        return found

    def _score(
        self,
        members: list[Trajectory],
        domain: str,
        kind: str | None,
        iteration: int,
        stats: ExtractionStats,
    ) -> list[tuple[GroupView, str, int]]:
        """The group's (view, pattern, created) as a list of zero or one."""
        stats.groups += 1
        score = grpo.score_group(
            [t.total_reward for t in members],
            success_threshold=self.success_threshold,
            weights=self.weights,
        )
        if score is None:
            stats.no_signal += 1
            return []
        view = view_group(members, score, domain, kind, iteration, self.success_threshold)
        try:
            text = self.introspector.introspect(view)
        except IntrospectionError:
            stats.introspection_errors += 1
            return []
        if text is None or text_problem(text) is not None:
            stats.no_pattern += 1
            return []
        if text_screen.screen(text) is not None:
            # The node's own agents read its library without DeltaSoup, and an introspector
            # that reads tool output can be prompt-injected: screen before storing.
            stats.no_pattern += 1
            stats.steering += 1
            return []
        created = (
            int(max(t.end for t in members) * 1000)
            if self.timestamps == "record"
            else int(self.clock_ms())
        )
        return [(view, text, created)]

    def _emit(self, candidates: list[tuple[GroupView, str, int]], result: Extraction) -> None:
        """One experience per (domain, text), at its highest quality: identical ids would
        collide in any library."""
        stats = result.stats
        found: dict[bytes, tuple[GroupView, str, int]] = {}
        order: list[bytes] = []
        for view, text, created in candidates:
            key = f"{view.domain}\x00{text}".encode()
            if key in found:
                stats.duplicates += 1
                if view.quality <= found[key][0].quality:
                    continue
            else:
                order.append(key)
            found[key] = (view, text, created)
        chosen = [found[key] for key in order]
        vectors = self._embed([text for _, text, _ in chosen])
        for (view, text, created), vector in zip(chosen, vectors, strict=True):
            experience = Experience(
                text, vector, view.quality, view.domain, self.source, created, view.iteration
            )
            result.experiences.append(experience)
            if self.on_experience is not None:
                self.on_experience(experience)
        stats.experiences = len(result.experiences)

    def _embed(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.embedder.dimension), dtype=np.float32)
        vectors = np.asarray(self.embedder.embed(texts), dtype=np.float32)
        if vectors.shape != (len(texts), self.embedder.dimension):
            raise ValueError(
                f"embedder returned shape {vectors.shape} for {len(texts)} texts, "
                f"expected ({len(texts)}, {self.embedder.dimension})"
            )
        return vectors
