"""Agents that recall and report outcomes, as a real node's agents do (SimConfig.feedback).

Why: a plausible attack row (text and embedding agree) passes every embedding-space check,
so what stands between it and an agent is what the node learns from its agents' outcomes:
per-experience utility, per-source standing, muting. Without agents that use what they
recall and say whether it helped, the simulator cannot show whether that works.

What is FAI's real code: the ranking (`fai_core.ranking.rank`: relevance x utility x
calibrated quality x standing x corroboration, with the relevance cutoff), the tallies
and their rules (`Tally`, `is_muted`) and the per-source claim calibration
(`QualityCalibration`), with the real recall's defaults (`FETCH_FACTOR` nearest per result
wanted, `MAX_DISTANCE`).

What is a copy: the outcome book. The node's (fai_net/api/outcome_book.py, SQLite) lives in
fai_net, which fai_eval must not import (tests/test_layout.py), so `OutcomeLedger` restates
its rules in memory: an experience's tally counts every report; its source's tally counts
each of its experiences once, by the share of help and hurt reported on it; a source is
muted when `is_muted` says so, and from then on the node merges no new experience of it
(fai_net/node/rounds.py); sightings are the distinct (id, source) pairs merged or added
locally (the simulator notes them per node, `_Node.sight`, and shares them with the
ledger). A test replays the same reports into both books and compares them.

What is simulated: the agent. For each task it asks for `RECALL_K` experiences of the
task's domain and uses all it gets; the outcome it reports for one is the experience's
hidden value for that task (`hidden_value`) plus Gaussian noise, clipped to [-1, 1].
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fai_core.experience import Experience
from fai_core.ranking import (
    MAX_DISTANCE,
    Candidate,
    QualityCalibration,
    RefusedCheck,
    Tally,
    is_muted,
    rank,
    vouched_candidate,
)
from fai_eval.sim.workload import World

#: Experiences an agent asks recall for and uses (poisoned@3 looks at the same three).
RECALL_K = 3
#: The node's recall fetches this many nearest experiences per result wanted
#: (fai_net/api/recall.py FETCH_FACTOR) and ranks within them.
FETCH_FACTOR = 4


def _share(tally: Tally) -> Tally:
    """One experience's weight in its source's tally: its reports scaled to sum to 1."""
    if tally.reports <= 0:
        return Tally()
    return Tally(tally.helped / tally.reports, tally.hurt / tally.reports)


class OutcomeLedger:
    """One node's outcome book in memory, under the rules of fai_net's OutcomeBook."""

    def __init__(self, sightings: dict[bytes, set[bytes]] | None = None) -> None:
        self.items: dict[bytes, Tally] = {}
        self.sources: dict[bytes, Tally] = {}
        self.muted: set[bytes] = set()
        #: Per id, the sources whose copy was merged or made (shared with the caller's).
        self.sightings: dict[bytes, set[bytes]] = {} if sightings is None else sightings
        self.reports = 0

    def record(self, ident: bytes, source: bytes, reward: float) -> tuple[Tally, Tally]:
        """Count one report; the new tallies of the experience and of its source."""
        before = self.items.get(ident, Tally())
        item = before.add(reward)
        old, new = _share(before), _share(item)
        src = self.sources.get(source, Tally())
        src = Tally(
            max(0.0, src.helped - old.helped + new.helped),
            max(0.0, src.hurt - old.hurt + new.hurt),
        )
        self.items[ident] = item
        self.sources[source] = src
        self.reports += 1
        if is_muted(src):
            self.muted.add(source)
        else:
            self.muted.discard(source)
        return item, src


class LibraryView:
    """A node's library as recall reads it: rows, unit embeddings, domain per row, and the
    claim calibration (the node rebuilds it when the library changed; here: per view)."""

    def __init__(self, exps: Sequence[Experience], domains: Sequence[str]) -> None:
        self.exps = list(exps)
        d = len(self.exps[0].embedding) if self.exps else 1
        emb = np.array([e.embedding for e in self.exps], dtype=np.float64).reshape(-1, d)
        self.unit = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-30)
        index = {name: k for k, name in enumerate(domains)}
        self.domain = np.array([index.get(e.domain, -1) for e in self.exps], dtype=np.int64)
        self.calibration = QualityCalibration((e.source, e.quality) for e in self.exps)


def recall(
    view: LibraryView,
    query: np.ndarray,
    domain: int,
    ledger: OutcomeLedger,
    k: int = RECALL_K,
    refused: RefusedCheck | None = None,
) -> list[Experience]:
    """The node's recall for a task whose embedding is `query` (unit), in `domain`: the
    `FETCH_FACTOR * k` nearest rows of the domain, ranked by `fai_core.ranking.rank` with
    this node's tallies, standings, calibration and sightings; the best `k`. `view` holds
    only the rows recall may offer (the node widens its search past withheld ones), and
    `refused` says which sources vouch for nothing (`vouched_candidate`)."""
    rows = np.flatnonzero(view.domain == domain)
    if len(rows) == 0:
        return []
    sims = view.unit[rows] @ query
    fetch = min(len(rows), FETCH_FACTOR * k)
    near = np.argsort(-sims, kind="stable")[:fetch]
    candidates = [
        candidate(view.exps[rows[j]], float(1.0 - sims[j]), ledger, refused) for j in near
    ]
    candidates = [c for c in candidates if c is not None]
    by_id = {view.exps[rows[j]].id: view.exps[rows[j]] for j in near}
    ranked = rank(
        candidates,
        tallies=ledger.items,
        source_tallies=ledger.sources,
        calibration=view.calibration,
        max_distance=MAX_DISTANCE,
        k=k,
    )
    return [by_id[r.candidate.id] for r in ranked]


def candidate(
    e: Experience, distance: float, ledger: OutcomeLedger, refused: RefusedCheck | None
) -> Candidate | None:
    """What the node's recall ranks for row `e` (None: withheld), from this node's
    sightings and tallies (`fai_core.ranking.vouched_candidate`)."""
    publishers = ledger.sightings.get(e.id, ())
    tally = ledger.items.get(e.id)
    return vouched_candidate(
        e.id, e.domain, e.source, distance, e.quality, publishers, refused, tally
    )


def hidden_value(world: World, text: str, task: int, hit_cos: float) -> float:
    """What using the lesson `text` does for task `task` (a pattern index), on the reward
    scale [-1, 1]: a harmful lesson hurts by its hidden (negative) usefulness whatever the
    task; a corpus pattern of the task's domain helps by its usefulness when it is the
    task's lesson or a close paraphrase (true cosine >= `hit_cos`, the retrieval proxy's
    rule); anything else has no effect. The agent reads the text, so the value depends on
    the text, not on the embedding the row was stored with."""
    harm = world.harm_index.get(text)
    if harm is not None:
        return float(world.harmful_usefulness[harm])
    p = world.index.get(text)
    if p is None or world.domain_of[p] != world.domain_of[task]:
        return 0.0
    cos = float(world.vectors[p] @ world.vectors[task])
    return float(world.usefulness[p]) if cos >= hit_cos else 0.0


def report_outcomes(
    ledger: OutcomeLedger,
    used: Sequence[Experience],
    values: Sequence[float],
    noise: float,
    rng: np.random.Generator,
) -> None:
    """The agent's reports on what it used: hidden value plus N(0, noise), in [-1, 1]."""
    if not used:
        return
    rewards = np.clip(np.asarray(values) + rng.normal(0.0, noise, len(used)), -1.0, 1.0)
    for e, reward in zip(used, rewards.tolist(), strict=True):
        ledger.record(e.id, e.source, reward)
