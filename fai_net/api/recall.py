"""Recall and feedback: what an agent asks of its node, answered from the library.

`recall` embeds the task text, takes the nearest experiences within the relevance cutoff,
and ranks them by relevance times trust (fai_core/ranking.py; docs/recall.md). It does not
offer an experience whose every source now stands refused in its domain by DeltaSoup's
sender histories (`SenderHistory.refused`; `fai_core.ranking.vouched_candidate`): most rows
an attacker slips in arrive before the evidence against it, and once that evidence is in
it speaks against them too. They stay in the library, and come back if the source is
cleared or this node's agents found them helpful; a pattern that another, unrefused source
also sent is offered, ranked as that source's. `feedback`
records whether a recalled experience helped. Both run in worker threads and read the
library without its write limiter: LanceDB reads see a consistent version while a merge
round writes the next one, so an agent's question never waits behind a merge.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass
from typing import Any

from fai_core.ranking import (
    MAX_DISTANCE,
    QualityCalibration,
    RefusedCheck,
    outcome_reward,
    rank,
    render,
    standing,
    utility,
    vouched_candidate,
)
from fai_net.api.control import ControlError
from fai_net.api.outcome_book import OutcomeBook

#: Longest task description accepted (characters): a task, not a document.
MAX_TASK_CHARS = 4096
MAX_K = 50
#: Nearest neighbours fetched per result wanted: the ranking reorders within them.
FETCH_FACTOR = 4
#: Most rows one recall examines when rows only refused sources vouch for fill the window.
MAX_FETCH = 2048
#: How often the node rebuilds the quality calibration (a full scan of the claims).
CALIBRATION_TTL_S = 30.0


@dataclass(frozen=True)
class RecallQuery:
    task: str
    domain: str | None
    k: int
    max_distance: float

    @classmethod
    def from_args(cls, args: dict, domains: list[str]) -> RecallQuery:
        """Validated arguments; a ControlError('bad_request') names the first bad one."""
        unknown = sorted(set(args) - {"task", "domain", "k", "max_distance"})
        if unknown:
            raise ControlError("bad_request", f"recall: unknown argument(s) {unknown}")
        task = args.get("task")
        if not isinstance(task, str) or not task.strip() or len(task) > MAX_TASK_CHARS:
            raise ControlError(
                "bad_request", f"task must be a non-empty text of at most {MAX_TASK_CHARS} chars"
            )
        domain = args.get("domain")
        if domain is not None and domain not in domains:
            raise ControlError("bad_request", f"domain {domain!r} is not subscribed")
        k = args.get("k", 5)
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_K:
            raise ControlError("bad_request", f"k must be an integer in 1..{MAX_K}")
        cutoff = args.get("max_distance", MAX_DISTANCE)
        if (
            isinstance(cutoff, bool)
            or not isinstance(cutoff, int | float)
            or not (math.isfinite(cutoff) and 0.0 < cutoff <= 2.0)
        ):
            raise ControlError("bad_request", "max_distance must be a number in (0, 2]")
        return cls(task, domain, k, float(cutoff))


class Recall:
    """Recall and feedback over one node's library and outcome book."""

    def __init__(
        self, library, outcomes: OutcomeBook, peer_id_of, refused: RefusedCheck | None = None
    ) -> None:
        self.library = library
        self.outcomes = outcomes
        self._peer_id_of = peer_id_of
        self._refused = refused
        self._calibration: QualityCalibration | None = None
        self._calibrated_version: int | None = None
        self._calibration_lock = threading.Lock()

    def calibration(self) -> QualityCalibration:
        """The last per-source claim ranks. Built here only the first time: afterwards the
        node refreshes it in the background (`refresh_calibration`), because the scan of
        every claim costs ~56 ms at 100k experiences (bench/recall.py) and must not land
        on an agent's recall."""
        with self._calibration_lock:
            if self._calibration is None:
                self._calibrated_version = self.library.version
                self._calibration = QualityCalibration(self.library.claims())
            return self._calibration

    def refresh_calibration(self) -> bool:
        """Rebuild the claim ranks if the library changed since (a worker thread, every
        CALIBRATION_TTL_S seconds). Returns whether it rebuilt them."""
        version = self.library.version
        if version == self._calibrated_version:
            return False
        fresh = QualityCalibration(self.library.claims())
        with self._calibration_lock:
            self._calibration, self._calibrated_version = fresh, version
        return True

    def recall(self, query: RecallQuery, domains: list[str]) -> dict[str, Any]:
        """Ranked experiences of `query.domain`, else of every domain in `domains` (the
        node's subscriptions: a domain it left is not recalled)."""
        candidates, entries, tallies, withheld = self._candidates(query, domains)
        ranked = rank(
            candidates,
            tallies=tallies,
            source_tallies=self.outcomes.source_tallies({c.source for c in candidates}),
            calibration=self.calibration(),
            max_distance=query.max_distance,
            k=query.k,
        )
        now = time.time_ns() // 1_000_000
        items = [self._item(r, entries[r.candidate.id], now) for r in ranked]
        prompt = render((i["domain"], i["text"], i["utility"]) for i in items)
        return {
            "experiences": items,
            "prompt": prompt,
            "max_distance": query.max_distance,
            "withheld": withheld,  # close matches that only refused sources vouch for
        }

    def _candidates(self, query: RecallQuery, domains: list[str]):
        """(the `k * FETCH_FACTOR` nearest offered candidates within the cutoff, their
        library entries by id, their tallies, how many nearer rows were withheld). Rows
        only refused sources vouch for (`vouched_candidate`) do not count towards the
        window, so the search widens past them (up to MAX_FETCH rows): a source that
        slipped many rows in about one topic before its refusal cannot empty recall of it."""
        where = query.domain if query.domain is not None else list(domains)
        want, window = query.k * FETCH_FACTOR, query.k * FETCH_FACTOR
        while True:
            hits = self.library.search(query.task, where, window)
            near = [h for h in hits if h.distance <= query.max_distance]
            ids = [h.entry.experience.id for h in near]
            sources, tallies = self.outcomes.sources_of(ids), self.outcomes.tallies(ids)
            candidates, entries = [], {}
            for h in near:
                e = h.entry.experience
                c = vouched_candidate(
                    e.id, e.domain, e.source, h.distance, e.quality,
                    sources.get(e.id, ()), self._refused, tallies.get(e.id),
                )  # fmt: skip
                if c is not None and len(candidates) < want:
                    candidates.append(c)
                    entries[e.id] = h.entry
            withheld = len(near) - len(candidates)
            done = len(candidates) >= want or len(hits) < window or len(near) < len(hits)
            if done or window >= MAX_FETCH:
                return candidates, entries, tallies, withheld
            window = min(MAX_FETCH, window * 4)

    def _item(self, r, entry, now: int) -> dict[str, Any]:
        e = entry.experience
        return {
            "id": e.id.hex(),
            "text": e.text,
            "domain": e.domain,
            "relevance": round(r.relevance, 4),
            "distance": round(r.candidate.distance, 4),
            "quality": round(e.quality, 4),
            "calibrated_quality": round(r.calibrated_quality, 4),
            "utility": round(r.utility, 4),
            "source_standing": round(r.standing, 4),
            "score": round(r.score, 4),
            "source": e.source.hex(),
            "source_node": self._peer_id_of(e.source),
            "sources": r.candidate.sources,
            "origin": entry.origin,
            "age_s": max(0, (now - int(e.created_ms)) // 1000),
            "created_ms": int(e.created_ms),
        }

    def feedback(self, args: dict) -> dict[str, Any]:
        unknown = sorted(set(args) - {"id", "outcome"})
        if unknown:
            raise ControlError("bad_request", f"feedback: unknown argument(s) {unknown}")
        ident = args.get("id")
        ident = ident.lower() if isinstance(ident, str) else ident
        try:
            raw = bytes.fromhex(ident) if isinstance(ident, str) else b""
        except ValueError:
            raw = b""
        if not raw or len(raw) > 64:
            raise ControlError("bad_request", "id must be an experience id (hex), from recall")
        try:
            reward = outcome_reward(args.get("outcome"))
        except ValueError as exc:
            raise ControlError("bad_request", str(exc)) from None
        entry = self.library.get(raw)
        if entry is None:
            raise ControlError("bad_request", f"no experience {ident} in this node's library")
        source = entry.experience.source
        item, src = self.outcomes.record(raw, source, reward)
        return {
            "id": ident,
            "reward": reward,
            "utility": round(utility(item), 4),
            "reports": self.outcomes.reports(raw),
            "source": source.hex(),
            "source_standing": round(standing(src), 4),
            "source_muted": source in self.outcomes.muted(),
        }
