"""Sender histories: the references DeltaSoup's domain and quality checks need, kept across
rounds instead of rebuilt from one round.

Why: a receiver rarely has, in one round, enough rows to tell a spoofed domain tag or an
inflated quality claim from honest variety, and when attackers are most of one round's
senders the round's own statistics are theirs. So this module keeps, per domain and per
sender, a summary of every row that passed the checks the receiver verifies itself (its
own re-embedding agrees with the vector sent): counts, sums and the last few rows
(fai_core.deltasoup_reference.SenderSummary). Each round a sender's summary, this round's
rows included, is tested against its domain's reference:

- domain: a row's margin is its cosine to its domain's centroid minus its highest cosine
  to another domain's (fai_core.domain_anchors.margins); a sender's statistic is its mean
  margin, compared with the middle sender's. The built-in domains' centroids are anchors
  no sender can move (the shipped corpus, embedded by the node's model), and their
  sentences' median margin is a floor under the middle; other domains use the senders'
  median text. Without any other centroid a sender's mean cosine to its domain's centroid
  is the statistic. A sender whose mean text is nearer another domain's centroid is
  suspect too;
- quality: a sender's mean claim, compared with the middle sender's, which is never above
  this node's own mean claim in the domain once it has `history_own_rows` own rows
  (`record_own`): the one sender a node trusts is itself. Only senders whose mean claim is
  above `history_quality_ceiling` are judged.

Past `history_reject_z` standard errors (or nearer another domain with `history_tau_rows`
rows) a sender is refused in that domain, and stays refused until it falls back below
`history_defer_z`; past `history_defer_z` its rows wait in DeltaSoup's backlog for more
evidence, at most `history_max_wait_ms` from when this node first judged them, and are
then decided on what is known. An attacker who keeps sending crosses the refusal bound
within a few rounds; an honest sender at the edge of its domain stays short of it and is
kept when its wait ends.

A reference needs `history_min_senders` votes (near-identical senders share one,
`vote_weights`). Before that, an anchored domain is judged on its anchor alone (refusals
only: nobody waits), quality claims are judged against the node's own rows if it has
enough, and claims above the ceiling wait if the domain is crowded (many keys, few
votes: the same rows sent under many keys); otherwise rows pass unjudged, since a small
fleet may never have a reference.

The standard error of a sender's mean over n rows is sqrt(sigma^2 / n + tau^2): sigma is
the spread of single rows, tau the spread between senders that have sent many rows (so an
honest node working on a corner of its domain is not refused merely for having sent a
lot). Both are measured on the side of the middle the check does not refuse, have floors
and ceilings (`history_*_sigma`, `history_*_tau`, `history_quality_sigma_max`,
`history_tau_max`): the senders being judged must not widen the yardstick, a group
sending near-identical rows must not shrink it, and a handful of senders must not make
it anything at all. fai_core.deltasoup_reference computes them.

Every statistic is a median over votes, and the test runs twice, the second time with the
senders the first refused left out of the reference. So a group of senders that is a
minority of those this node has heard in a domain cannot move the reference, and anchors
and the node's own rows bound what a majority can. In an open fleet identities are free:
a Sybil attacker that outnumbers the honest senders of a domain still owns the middle of
its quality claims where the node has few rows of its own (docs/deltasoup.md measures it).

Memory is bounded: at most `history_max_senders` senders per domain (the least recently
heard is forgotten first) and `history_recent_rows` rows per sender. The state survives
restarts (fai_core.deltasoup_history_file), so a restart does not reopen the bootstrap
window. Refusals here are relative to other senders, so they never cost reputation
(fai_core.refusals.CHARGED). They do reach back: the node's recall does not offer rows that
only senders now refused in the row's domain sent (`refused`, fai_net/api/recall.py).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from fai_core.deltasoup_history_file import load_tables, save_tables
from fai_core.deltasoup_reference import (
    Reference,
    SenderSummary,
    bare_reference,
    own_quality,
    reference,
    unit_vector,
    with_margin,
    z_scores,
)
from fai_core.domain_anchors import DomainAnchors, margins

if TYPE_CHECKING:
    from fai_core.deltasoup import DeltaSoupConfig
    from fai_core.deltasoup_filters import RoundRows

#: Own claims kept for the spread of `own_quality`.
OWN_RECENT_ROWS = 32
_EPS = 1e-30


@dataclass
class HistoryVerdict:
    """Per domain of a round: the senders refused by each check, the senders whose rows
    wait for more evidence, their z scores, and the summaries to store once the round is
    over (`SenderHistory.apply`)."""

    domain_refused: dict[str, set[bytes]] = field(default_factory=dict)
    quality_refused: dict[str, set[bytes]] = field(default_factory=dict)
    undecided: dict[str, set[bytes]] = field(default_factory=dict)
    domain_z: dict[tuple[str, bytes], float] = field(default_factory=dict)
    quality_z: dict[tuple[str, bytes], float] = field(default_factory=dict)
    updates: dict[str, dict[bytes, SenderSummary]] = field(default_factory=dict)


def _judge(dom, fresh, ref, centroids, cfg, verdict: HistoryVerdict):
    """(refused by the domain check, refused by the quality check, undecided) among the
    senders of this round against `ref`; their z scores go into `verdict`."""
    refused_d: set[bytes] = set()
    refused_q: set[bytes] = set()
    undecided: set[bytes] = set()
    for sender, summary in fresh.items():
        if summary.rows < cfg.history_min_rows:
            continue
        dz, qz = z_scores(summary, ref)
        verdict.domain_z[(dom, sender)] = dz
        verdict.quality_z[(dom, sender)] = qz
        elsewhere = nearer_elsewhere(summary, dom, ref, centroids)
        d = _decide(-dz, elsewhere, summary.rows, cfg)
        high = summary.q_sum / summary.rows > cfg.history_quality_ceiling
        q = "pass"
        if high:
            q = _decide(qz, False, 0, cfg) if ref.quality_known else "wait" if ref.crowded else q
        if summary.refused:
            d, q = ("refuse" if x == "wait" else x for x in (d, q))
        elif not ref.quality_known and d == "wait":
            d = "pass"  # an anchor alone refuses, but holds nobody back: a small fleet
        refused_d |= {sender} if d == "refuse" else set()
        refused_q |= {sender} if q == "refuse" else set()
        undecided |= {sender} if "wait" in (d, q) else set()
    return refused_d, refused_q, undecided


def _decide(z: float, elsewhere: bool, rows: int, cfg: DeltaSoupConfig) -> str:
    """ "refuse", "wait" or "pass" for one check of one sender: `z` standard errors on the
    suspicious side (below for the domain, above for quality). Past `history_reject_z`, or
    nearer another domain with `history_tau_rows` rows or more, is enough to refuse; past
    `history_defer_z`, or nearer another domain with fewer rows, the rows wait: an
    attacker who keeps sending crosses the refusal bound within a few rounds, an honest
    sender at the edge of its domain does not, and passes when the wait ends."""
    if z > cfg.history_reject_z or (elsewhere and rows >= cfg.history_tau_rows):
        return "refuse"
    if z > cfg.history_defer_z or elsewhere:
        return "wait"
    return "pass"


def nearer_elsewhere(
    s: SenderSummary, dom: str, ref: Reference, centroids: dict[str, np.ndarray]
) -> bool:
    """Whether the sender's mean text is nearer another domain's centroid than `dom`'s: the
    same test as the one-round `DomainTag`, on the sender's whole history in the domain, so
    it needs no second domain in the round."""
    others = [c for d, c in centroids.items() if d != dom]
    if not others:
        return False
    mean = unit_vector(s.vec_sum)
    return float(np.max(np.stack(others) @ mean)) > float(mean @ ref.centroid)


class SenderHistory:
    """Per domain and sender, the summaries of every verified row this node received."""

    def __init__(
        self,
        dim: int,
        path: str | os.PathLike | None = None,
        anchors: DomainAnchors | None = None,
    ) -> None:
        self.dim = dim
        self.path = Path(path) if path is not None else None
        #: Fixed references of the built-in domains (fai_core.domain_anchors), if any.
        self.anchors = anchors
        self.rounds = 0
        self._domains: dict[str, dict[bytes, SenderSummary]] = {}
        #: Rows counted in a summary and deferred for evidence: (cid, id) -> when first seen.
        #: They come back from DeltaSoup's backlog and must not be counted twice.
        self._waiting: dict[tuple[bytes, bytes], int] = {}
        #: Per domain, this node's own rows (`record_own`): the one sender it trusts.
        self._own: dict[str, SenderSummary] = {}
        if self.path is not None and self.path.exists():
            self._load(self.path)

    def record_own(self, domain: str, embeddings: np.ndarray, quality) -> None:
        """Note rows this node's own agent produced in `domain` (text embeddings, quality
        claims). Their claims bound the domain's quality middle from above and, with no
        reference yet, are the reference (`own_quality`); their texts are the centroid of a
        domain without an anchor or a reference. Call it from one thread at a time: a round
        judged in another thread sees each domain's summary whole, before or after (it is
        replaced, never changed in place), and `save` copies the table first."""
        emb = np.asarray(embeddings, dtype=np.float32)
        q = np.asarray(quality, dtype=np.float64).reshape(-1)
        if emb.ndim != 2 or emb.shape != (len(q), self.dim):
            raise ValueError(f"own rows: want ({len(q)}, {self.dim}) embeddings, got {emb.shape}")
        if not (np.isfinite(emb).all() and np.isfinite(q).all()):
            raise ValueError("own rows: a value is not finite")
        unit = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), _EPS)
        base = self._own.get(domain) or SenderSummary.empty(self.dim)
        self._own[domain] = base.plus(unit, q, OWN_RECENT_ROWS, self.rounds)

    def own(self, domain: str) -> SenderSummary | None:
        """This node's own rows in `domain` (None: none)."""
        return self._own.get(domain)

    def senders(self, domain: str) -> dict[bytes, SenderSummary]:
        """The stored summaries of one domain (a read-only view by convention)."""
        return self._domains.get(domain, {})

    def refused(self, domain: str, sender: bytes) -> bool:
        """Whether `sender` stands refused in `domain` now (it crossed the refusal bound and
        has not fallen back below `history_defer_z`). Rows of it that were merged before
        the refusal stay in the library, but recall does not offer them unless another
        source vouches for them (fai_core.ranking.vouched_candidate): most rows an
        attacker slips in come before the evidence against it is in, and the same
        evidence then speaks against them. If the sender falls back below the bound, they
        are offered again; a domain forgets refused senders last (`apply`). Safe to call
        from another thread than the rounds' (one lookup in a table that is replaced,
        never changed, by `apply`)."""
        summary = self._domains.get(domain, {}).get(sender)
        return summary is not None and summary.refused

    def domains(self) -> list[str]:
        """Domains with at least one stored sender, sorted."""
        return sorted(self._domains)

    # -- one round ---------------------------------------------------------------------------

    def judge(self, rows: RoundRows, cfg: DeltaSoupConfig) -> HistoryVerdict:
        """Test every sender of the round's reference rows, its rows of this round included,
        against its domain's reference; nothing is stored until `apply`."""
        verdict = HistoryVerdict()
        if rows.reference is None:
            return verdict
        unit = rows.own / np.maximum(np.linalg.norm(rows.own, axis=1, keepdims=True), _EPS)
        names = sorted({b.domain for b in rows.batches})
        dom_idx = np.array([names.index(b.domain) for b in rows.batches], dtype=np.int64)
        domain_of_row = np.repeat(dom_idx, rows.sizes) if len(rows) else np.zeros(0, np.int64)
        senders = sorted({b.sender for b in rows.batches})
        new = ~self.counted(rows)
        tables: dict[str, dict[bytes, SenderSummary]] = {}
        for d, dom in enumerate(names):
            in_dom = rows.reference & (domain_of_row == d)
            if not in_dom.any():
                continue
            fresh: dict[bytes, SenderSummary] = {}
            for k in np.unique(rows.node[in_dom]):
                sender = senders[int(k)]
                mine = in_dom & (rows.node == k) & new
                base = self.senders(dom).get(sender) or SenderSummary.empty(self.dim)
                fresh[sender] = base.plus(
                    unit[mine], rows.quality[mine], cfg.history_recent_rows, self.rounds
                )
            tables[dom] = {**self.senders(dom), **fresh}
            verdict.updates[dom] = fresh
        refs = self._references(tables, cfg)
        centroids = {dom: ref.centroid for dom, ref in refs.items() if ref is not None}
        if self.anchors is not None:
            centroids.update(self.anchors.centroids)
        for d, dom in enumerate(names):
            if dom in verdict.updates:
                in_dom = rows.reference & (domain_of_row == d) & new
                self._add_margins(dom, unit, in_dom, rows, senders, centroids, cfg, verdict)
                tables[dom] = {**self.senders(dom), **verdict.updates[dom]}
                summaries = list(tables[dom].values())
                refs[dom] = with_margin(refs[dom], summaries, cfg, None, self._anchor(dom))
        for dom, fresh in verdict.updates.items():
            self._test(dom, tables[dom], fresh, refs[dom], centroids, cfg, verdict)
        return verdict

    def _add_margins(self, dom, unit, in_dom, rows, senders, centroids, cfg, verdict) -> None:
        """Measure the domain margins of the round's new rows of `dom` against this round's
        centroids, and add them to the senders' fresh summaries."""
        if margins(unit[:0], dom, centroids) is None:
            return  # no centroid of `dom`, or no other domain's: nothing to measure against
        fresh = verdict.updates[dom]
        for k in np.unique(rows.node[in_dom]):
            sender = senders[int(k)]
            m = margins(unit[in_dom & (rows.node == k)], dom, centroids)
            fresh[sender] = fresh[sender].with_margins(m, cfg.history_recent_rows)

    def counted(self, rows: RoundRows) -> np.ndarray:
        """Per row: already counted in its sender's summary (a row back from the backlog
        after waiting for evidence)."""
        return np.array(
            [(b.cid, i) in self._waiting for b, sl in rows.slices() for i in b.ids], dtype=bool
        ).reshape(len(rows))

    def first_seen(self, rows: RoundRows, now_ms: int) -> np.ndarray:
        """Per row: when this node first judged it (now for a row never deferred)."""
        return np.array(
            [self._waiting.get((b.cid, i), now_ms) for b, _ in rows.slices() for i in b.ids],
            dtype=np.int64,
        ).reshape(len(rows))

    def _references(self, tables, cfg: DeltaSoupConfig) -> dict[str, Reference | None]:
        """Every domain's reference (None with too few senders and no anchor), this
        round's rows included: the round's domains are tested against theirs, and every
        centroid is what a sender's mean text may lie nearer (`nearer_elsewhere`)."""
        out: dict[str, Reference | None] = {}
        for dom in sorted(set(self._domains) | set(tables)):
            summaries = list(tables.get(dom, self.senders(dom)).values())
            anchor = self._centroid(dom)
            own = self._own.get(dom)
            out[dom] = self._senders_reference(dom, summaries, cfg)
            if out[dom] is None and anchor is None and own_quality(own, cfg) is not None:
                anchor = unit_vector(own.vec_sum)  # the node's own texts: a trusted centroid
            if out[dom] is None and anchor is not None:
                crowded = sum(s.rows > 0 for s in summaries) >= cfg.history_min_senders
                out[dom] = bare_reference(anchor, own, crowded, cfg)
        return out

    def _senders_reference(self, dom, summaries, cfg, min_senders=None) -> Reference | None:
        """`reference` of `summaries` in `dom`, bounded by what no sender moves: its anchor
        and this node's own rows."""
        own = self._own.get(dom)
        return reference(summaries, cfg, min_senders, centroid=self._centroid(dom), own=own)

    def _centroid(self, dom: str) -> np.ndarray | None:
        """The anchor centroid of `dom`, if it has one."""
        return None if self.anchors is None else self.anchors.centroids.get(dom)

    def _anchor(self, dom: str) -> tuple[float, float] | None:
        """The anchor's (median margin, spread) of `dom`, if it has one."""
        return None if self.anchors is None else self.anchors.margin_of(dom)

    def _test(self, dom, merged, fresh, ref, centroids, cfg, verdict: HistoryVerdict) -> None:
        """Two passes: the second, run only when the first refused someone, leaves those
        senders out of the reference (`ref`, built from every sender). Each judged sender is
        refused, left undecided (its rows wait for more evidence) or passed (`_decide`);
        without a reference nobody is judged."""
        if ref is None:
            return
        refused_d, refused_q, undecided = _judge(dom, fresh, ref, centroids, cfg, verdict)
        if refused_d or refused_q:
            pool = [s for k, s in merged.items() if k not in refused_d | refused_q]
            first = self._senders_reference(dom, pool, cfg, min_senders=3)
            second = with_margin(first, pool, cfg, 3, self._anchor(dom))
            if second is not None:
                refused_d, refused_q, undecided = _judge(
                    dom, fresh, second, centroids, cfg, verdict
                )
        verdict.domain_refused[dom] = refused_d
        verdict.quality_refused[dom] = refused_q
        verdict.undecided[dom] = undecided - refused_d - refused_q
        for sender, summary in fresh.items():
            fresh[sender] = dataclasses.replace(summary, refused=sender in refused_d | refused_q)

    def apply(
        self,
        verdict: HistoryVerdict,
        cfg: DeltaSoupConfig,
        waiting: dict[tuple[bytes, bytes], int] | None = None,
    ) -> None:
        """Store a judged round's summaries, forgetting the least recently heard senders of a
        domain beyond `history_max_senders` (refused ones only once no other is left).
        `waiting`: the rows counted this round or before that now wait in the backlog for
        evidence, with when each was first seen (every other row leaves the waiting set)."""
        self._waiting = dict(waiting or {})
        for dom, fresh in verdict.updates.items():
            # A new table, not the old one changed: `refused` reads it from other threads.
            table = {**self._domains.get(dom, {}), **fresh}
            if len(table) > cfg.history_max_senders:
                # Refused senders go last: forgetting one would offer its rows again.
                order = sorted(table, key=lambda k: (table[k].refused, table[k].last_round, k))
                keep = order[-cfg.history_max_senders :]
                table = {k: table[k] for k in sorted(keep)}
            self._domains[dom] = table
        self.rounds += 1

    # -- comparison and persistence ------------------------------------------------------------

    def same_as(self, other: SenderHistory) -> bool:
        """Whether two histories will judge every future round alike (the simulator folds
        receivers with equal state together)."""
        if self._domains.keys() != other._domains.keys() or self._own.keys() != other._own.keys():
            return False
        for dom, own in self._own.items():
            theirs = other._own[dom]
            if own.rows != theirs.rows or abs(own.q_sum - theirs.q_sum) > 1e-9:
                return False
        for dom, table in self._domains.items():
            theirs = other._domains[dom]
            if table.keys() != theirs.keys():
                return False
            for k, s in table.items():
                t = theirs[k]
                if (s.rows, s.last_round - self.rounds) != (t.rows, t.last_round - other.rounds):
                    return False
                if not np.allclose(s.vec_sum, t.vec_sum, rtol=0, atol=1e-9):
                    return False
                if abs(s.q_sum - t.q_sum) > 1e-9 or len(s.recent_q) != len(t.recent_q):
                    return False
                if (s.margin_rows, s.refused) != (t.margin_rows, t.refused):
                    return False
                if abs(s.margin_sum - t.margin_sum) > 1e-9:
                    return False
        return True

    def save(self) -> None:
        """Write every summary, and the node's own rows, to `path` atomically (no-op
        without a path)."""
        if self.path is None:
            return
        save_tables(self.path, self.dim, self.rounds, self._domains, dict(self._own))

    def _load(self, path: Path) -> None:
        self.rounds, self._domains, self._own = load_tables(path, self.dim)
