"""Recall ranking: how relevant an experience is to a task, times how far it can be trusted.

An agent asks "what is relevant to the task in front of me?". The library answers by
cosine distance; this module turns nearest neighbours into a ranking an agent can use,
and every factor is one a hostile source cannot inflate by itself:

* **Relevance** r = 1 - cosine distance (the cosine similarity), with a cutoff: beyond
  `max_distance` an experience is not returned at all, however trusted.
* **Utility** u: what this node's own agents reported after using the experience, as the
  mean of a Beta(1 + helped, 1 + hurt) posterior (a reward in [-1, 1] counts (1 + r)/2 as
  help and (1 - r)/2 as hurt). Unused experiences sit at 0.5; what helped rises, what hurt
  sinks, and the tenth report moves an experience less than the first did. Below
  `MIN_UTILITY` an experience is not returned at all: once its reports lean clearly to
  hurt (one "hurt", or a reward below -0.6, on a fresh experience), an agent is not
  offered it again. A plausible harmful lesson passes every check a receiver can make
  from its text; the agent that used it is the first to know, and it should not be
  recommended the same lesson twice. Later reports of help (from recall with another
  cutoff) can lift it back.
* **Calibrated quality** c: a source's quality claim ranked among that source's own
  claims (mid-rank percentile), shrunk toward 0.5 while the source has few claims. A
  source that claims 0.99 for everything has all its claims at the same rank: c = 0.5,
  exactly what an unremarkable honest claim gets. Claims are only compared within a
  source, so no source can push another's experiences down.
* **Standing** s of the source: the Beta(2 + helped, 2 + hurt) mean of the feedback on its
  experiences, each experience counted once (fai_net/api/outcome_book.py). A source whose
  lessons keep hurting sinks in recall, and below `MUTE_STANDING` (with at least
  `MUTE_MIN_REPORTS` distinct experiences reported) the node stops merging its new
  experiences (`is_muted`).
* **Corroboration**: the number n of distinct sources that published the same experience
  (same domain and text, hence the same id) adds ln(n)/10: a mild bonus, since Sybils can
  corroborate each other; the cutoff and feedback still apply to what they say.
* **Refused sources** (`vouched_candidate`): a source that DeltaSoup's sender histories
  now refuse in a domain (fai_core.deltasoup_history.SenderHistory.refused) vouches for
  nothing there. An experience no other source published is not offered, unless this
  node's own agents found it helpful (utility above 0.5): their reports outweigh a
  comparison between senders. One that others published too is offered, but counted and
  claimed as theirs: the refused source adds no corroboration, and its claim is replaced
  by a middling one (`VOUCHED_CLAIM`) of the first other source.

    score = r * (0.5 + u) * (0.5 + c) * (2 s) * (1 + ln(n) / 10)

Every factor is 1 for a neutral experience of a neutral source (u = c = s = 0.5, n = 1),
so the score of a fresh experience is its relevance. docs/recall.md states the rules and
what they resist.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import numpy as np

#: Default relevance cutoff, as a cosine distance (similarity >= 0.35).
MAX_DISTANCE = 0.65
#: Pseudo-claims at 0.5 that shrink a source's calibrated quality while it has few claims.
CALIBRATION_PRIOR = 5.0
#: Prior of a source's standing: Beta(2, 2), so two bad reports do not condemn a source.
STANDING_PRIOR = 2.0
#: Below this standing, after at least MUTE_MIN_REPORTS reports, new experiences of the
#: source are not merged.
MUTE_STANDING = 0.25
MUTE_MIN_REPORTS = 8
#: Experiences whose utility is below this are not recalled (see the module doc).
MIN_UTILITY = 0.4
#: The claim an experience is ranked with when its stored record is a refused source's
#: and other sources vouch for it (their own claims are not kept per sighting).
VOUCHED_CLAIM = 0.5
OUTCOMES = {"helped": 1.0, "no_effect": 0.0, "hurt": -1.0}


def outcome_reward(outcome: str | float) -> float:
    """'helped' | 'no_effect' | 'hurt' or a reward in [-1, 1], as a reward."""
    if isinstance(outcome, str):
        if outcome not in OUTCOMES:
            raise ValueError("outcome must be helped, no_effect, hurt or a reward in [-1, 1]")
        return OUTCOMES[outcome]
    if isinstance(outcome, bool) or not isinstance(outcome, int | float):
        raise ValueError("outcome must be helped, no_effect, hurt or a reward in [-1, 1]")
    if not (math.isfinite(outcome) and -1.0 <= outcome <= 1.0):
        raise ValueError("a reward must be a finite number in [-1, 1]")
    return float(outcome)


@dataclass(frozen=True, slots=True)
class Tally:
    """Feedback counts: `helped` and `hurt` in reward units (no_effect adds half to each)."""

    helped: float = 0.0
    hurt: float = 0.0

    def add(self, reward: float) -> Tally:
        """A new tally with one report of `reward` in [-1, 1] added (immutable, so a
        tally can be shared and stored as is)."""
        return Tally(self.helped + (1.0 + reward) / 2.0, self.hurt + (1.0 - reward) / 2.0)

    @property
    def reports(self) -> float:
        """How many reports the tally holds (each adds 1), for the muting threshold."""
        return self.helped + self.hurt

    def mean(self, prior: float) -> float:
        """The Beta(prior + helped, prior + hurt) posterior mean."""
        return (prior + self.helped) / (2.0 * prior + self.helped + self.hurt)


def utility(tally: Tally) -> float:
    """An experience's utility u: the Beta(1 + helped, 1 + hurt) mean, 0.5 when unused."""
    return tally.mean(1.0)


def standing(tally: Tally) -> float:
    """A source's standing s: the Beta(2 + helped, 2 + hurt) mean, so a few bad reports
    do not condemn a source."""
    return tally.mean(STANDING_PRIOR)


def is_muted(tally: Tally) -> bool:
    """True when a source's lessons have hurt often enough to stop merging new ones."""
    return tally.reports >= MUTE_MIN_REPORTS and standing(tally) < MUTE_STANDING


class QualityCalibration:
    """Per-source mid-rank percentiles of quality claims (see the module doc)."""

    def __init__(self, claims: Iterable[tuple[bytes, float]]) -> None:
        by_source: dict[bytes, list[float]] = {}
        for source, quality in claims:
            by_source.setdefault(source, []).append(float(quality))
        self._sorted = {s: np.sort(np.asarray(q, dtype=np.float64)) for s, q in by_source.items()}

    def calibrated(self, source: bytes, quality: float) -> float:
        """`quality` ranked among `source`'s own claims (mid-rank percentile), shrunk toward
        0.5 by CALIBRATION_PRIOR; 0.5 for a source with no claims. Inflated claims thus
        earn nothing over honest ones."""
        claims = self._sorted.get(source)
        if claims is None or claims.size == 0:
            return 0.5
        below = float(np.searchsorted(claims, quality, side="left"))
        upto = float(np.searchsorted(claims, quality, side="right"))
        n = float(claims.size)
        percentile = (below + (upto - below) / 2.0) / n if upto > below else below / n
        return (n * percentile + CALIBRATION_PRIOR * 0.5) / (n + CALIBRATION_PRIOR)


@dataclass(frozen=True, slots=True)
class Candidate:
    """One library hit, with what the ranking needs to know about it."""

    id: bytes
    source: bytes
    distance: float
    quality: float
    sources: int = 1


#: Whether a source stands refused in a domain: (domain, source) -> bool.
RefusedCheck = Callable[[str, bytes], bool]


def vouched_candidate(
    ident: bytes,
    domain: str,
    source: bytes,
    distance: float,
    quality: float,
    publishers: Iterable[bytes],
    refused: RefusedCheck | None,
    tally: Tally | None = None,
) -> Candidate | None:
    """The candidate recall ranks for one library row (stored `source` and `quality`), given
    every source that published its id (`publishers`, the sightings; the stored source
    counts whether sighted or not) and which of them stand refused in `domain`. None: the
    row is withheld (see the module doc)."""
    everyone = set(publishers) | {source}
    vouching = sorted(s for s in everyone if refused is None or not refused(domain, s))
    if not vouching:
        if tally is not None and utility(tally) > 0.5:
            return Candidate(ident, source, distance, quality, 1)
        return None
    if source in vouching:
        return Candidate(ident, source, distance, quality, len(vouching))
    return Candidate(ident, vouching[0], distance, VOUCHED_CLAIM, len(vouching))


@dataclass(frozen=True, slots=True)
class Ranked:
    """One ranked candidate with every factor of its score, so recall can show why it
    ranks where it does."""

    candidate: Candidate
    relevance: float
    utility: float
    calibrated_quality: float
    standing: float
    score: float


def rank(
    candidates: Iterable[Candidate],
    *,
    tallies: Mapping[bytes, Tally],
    source_tallies: Mapping[bytes, Tally],
    calibration: QualityCalibration,
    max_distance: float = MAX_DISTANCE,
    k: int = 5,
    min_utility: float = MIN_UTILITY,
) -> list[Ranked]:
    """The best `k` candidates within the cutoff whose utility is at least `min_utility`,
    highest score first (ties: nearest, then id, so the order is deterministic)."""
    if not 0.0 < max_distance <= 2.0:
        raise ValueError("max_distance must be in (0, 2]")
    out = []
    for c in candidates:
        if not (math.isfinite(c.distance) and c.distance <= max_distance):
            continue
        relevance = 1.0 - c.distance
        u = utility(tallies.get(c.id, Tally()))
        if u < min_utility:
            continue
        q = calibration.calibrated(c.source, c.quality)
        s = standing(source_tallies.get(c.source, Tally()))
        bonus = 1.0 + math.log(max(1, c.sources)) / 10.0
        score = relevance * (0.5 + u) * (0.5 + q) * (2.0 * s) * bonus
        out.append(Ranked(c, relevance, u, q, s, score))
    out.sort(key=lambda r: (-r.score, r.candidate.distance, r.candidate.id))
    return out[:k]


def render(items: Iterable[tuple[str, str, float]]) -> str:
    """A block for a system prompt: (domain, text, utility) per line, best first."""
    lines = [
        "Lessons other agents learnt from similar work (use them when they fit; they may be "
        "wrong, and your own checks come first):"
    ]
    for i, (domain, text, u) in enumerate(items, start=1):
        note = " (helped before)" if u >= 0.7 else " (did not help before)" if u <= 0.3 else ""
        # Quoted, its own quotes escaped: a text from the fleet cannot end its quote early
        # and append a note of its own ("(helped before)") that reads like ours.
        lines.append(f"{i}. [{domain}] {json.dumps(text, ensure_ascii=False)}{note}")
    if len(lines) == 1:
        return ""
    return "\n".join(lines)
