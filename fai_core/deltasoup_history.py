"""Sender histories: the references DeltaSoup's domain and quality checks need, kept across
rounds instead of rebuilt from one round.

Why: a receiver rarely has, in one round, enough rows to tell a spoofed domain tag or an
inflated quality claim from honest variety (two domains with three senders each, eight rows
per sender), and when attackers are most of one round's senders the round's own statistics
are theirs. So this module keeps, per domain and per sender, a summary of every row that
passed the checks the receiver verifies itself (its own re-embedding agrees with the
vector sent): the row count, the sum of the unit text embeddings, the sum of the quality
claims, and the last few rows. Each round a sender's summary, this round's rows included, is
tested against the domain's reference, built from the summaries of all senders:

- domain: the centroid is the coordinate-wise median of the senders' mean text
  embeddings; a sender's statistic is the mean cosine of its texts to that centroid
  (exactly its mean vector dotted with the centroid), compared with the median sender's;
  a sender whose mean text is nearer another domain's centroid is suspect too;
- quality: a sender's mean claim, compared with the median sender's mean claim.

Past `history_reject_z` standard errors (or nearer another domain with
`history_tau_rows` rows) a sender is refused in that domain; past `history_defer_z` its
rows wait in DeltaSoup's backlog for more evidence, at most `history_max_wait_ms` from
when this node first judged them, and are then decided on what is known. An attacker
who keeps sending crosses the refusal bound within a few rounds; an honest sender at the
edge of its domain stays short of it and is kept when its wait ends. Rows of a domain
without a reference yet (fewer than `history_min_senders` senders) pass unjudged: a
small fleet may never have one.

The standard error of a sender's mean over n rows is sqrt(sigma^2 / n + tau^2): sigma is
the spread of single rows around the median sender (from the senders' recent rows, each
sender weighing 1 in total; for quality measured below the middle only, so inflated
claims do not widen their own yardstick), tau the spread between senders that have sent
many rows, so an honest node that works on a corner of its domain, or scores a little
optimistically, is not refused merely for having sent a lot. Both have floors
(`history_*_sigma`, `history_*_tau`): a group of senders sending near-identical rows must
not shrink the yardstick that honest variety is measured with.

Every statistic is a median over senders, and senders whose mean texts are
near-identical share one vote (`vote_weights`); a reference needs `history_min_senders`
senders; and the test runs twice, the second time with the senders the first refused
left out of the reference. So a group of senders that is a minority of those this node
has heard in a domain cannot move the reference, and a round that attackers dominate
changes nothing by itself. What a minority cannot do, a majority of identities can: in
an open fleet identities are free, and a Sybil attacker that outnumbers the honest
senders of a domain owns its reference (docs/deltasoup.md says what this costs in
registry mode, where identities are bonded).

Memory is bounded: at most `history_max_senders` senders per domain (the least recently
heard is forgotten first) and `history_recent_rows` rows per sender. The state survives
restarts (`save`/`load`: one .npz file, replaced atomically), so a restart does not reopen
the bootstrap window. Refusals here are relative to other senders, so they never cost
reputation (fai_core.refusals.CHARGED).
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from fai_core.deltasoup_filters import vote_weights, weighted_median
from fai_core.domain_anchors import DomainAnchors, anchored_mid, margins
from fai_core.reputation import atomic_write

if TYPE_CHECKING:
    from fai_core.deltasoup import DeltaSoupConfig
    from fai_core.deltasoup_filters import RoundRows

#: 2 added the domain margins; a format-1 file loads with none measured yet.
_FORMAT = 2
_EPS = 1e-30


@dataclass
class SenderSummary:
    """What one sender sent in one domain: counts, sums, and its last rows."""

    rows: int
    vec_sum: np.ndarray  # float64 (dim,): sum of unit text embeddings
    q_sum: float
    recent_vecs: np.ndarray  # float32 (<= recent, dim): its newest unit embeddings
    recent_q: np.ndarray  # float64 (<= recent,): their quality claims
    last_round: int
    #: Rows whose domain margin was measured (their domain and another had centroids when
    #: they came), the sum of those margins, and the newest of them (`margins`).
    margin_rows: int = 0
    margin_sum: float = 0.0
    recent_margin: np.ndarray = field(default_factory=lambda: np.zeros(0))
    #: Refused in this domain when last judged: it stays refused until its z falls back
    #: below `history_defer_z` (hysteresis: a refused sender does not slide back into the
    #: wait, whose end keeps rows, because the yardstick wobbled).
    refused: bool = False

    def plus(self, vecs: np.ndarray, q: np.ndarray, recent: int, round_no: int) -> SenderSummary:
        """This summary with more rows (unit vectors `vecs`, claims `q`) added; their
        margins, once measured, are added by `with_margins`."""
        return dataclasses.replace(
            self,
            rows=self.rows + len(vecs),
            vec_sum=self.vec_sum + vecs.sum(axis=0, dtype=np.float64),
            q_sum=self.q_sum + float(q.sum()),
            recent_vecs=np.concatenate([self.recent_vecs, vecs.astype(np.float32)])[-recent:],
            recent_q=np.concatenate([self.recent_q, q.astype(np.float64)])[-recent:],
            last_round=round_no,
        )

    def with_margins(self, margin: np.ndarray, recent: int) -> SenderSummary:
        """This summary with the domain margins (`margins`) of some of its rows added."""
        return dataclasses.replace(
            self,
            margin_rows=self.margin_rows + len(margin),
            margin_sum=self.margin_sum + float(margin.sum()),
            recent_margin=np.concatenate([self.recent_margin, margin])[-recent:],
        )

    @classmethod
    def empty(cls, dim: int) -> SenderSummary:
        """No rows yet."""
        return cls(0, np.zeros(dim), 0.0, np.zeros((0, dim), np.float32), np.zeros(0), -1)


@dataclass(frozen=True)
class Reference:
    """One domain's reference: centroid, the median sender, and the spreads."""

    centroid: np.ndarray
    domain_mid: float
    domain_sigma: float
    domain_tau: float
    quality_mid: float
    quality_sigma: float
    quality_tau: float
    #: The middle of the senders' mean domain margins and its spreads (None: nobody has
    #: margins).
    margin: tuple[float, float, float] | None = None
    #: False for a reference made from a domain anchor alone (too few senders to know
    #: their quality claims): the quality check then judges nobody.
    quality_known: bool = True


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


def _median(values: np.ndarray, weights: np.ndarray) -> float:
    """The weighted (lower) median of 1-D values, as a float."""
    return float(weighted_median(values, weights))


def _spreads(
    means, counts, weights, recent, mid, floors: tuple[float, float], cfg, honest_side: int
) -> tuple[float, float]:
    """(sigma, tau): single-row spread around `mid` from the senders' recent values (each
    sender weighs its vote), and the between-sender spread of the means of senders with at
    least `history_tau_rows` rows beyond what sampling explains; `floors` bound both from
    below (with fewer than 3 such senders tau is its floor).

    Both are measured on `honest_side` of the middle only (+1: values above it, -1: below).
    Each check refuses one side (low cosines and margins, high claims), and the senders
    there, who send the most rows, must not widen the yardstick they are measured with:
    honest values spread at least as far on the other side."""
    per_row = [np.full(len(r), w / len(r)) for r, w in zip(recent, weights, strict=True)]
    values, row_w = np.concatenate(recent), np.concatenate(per_row)
    sigma, tau_floor = floors
    side = (values - mid) * honest_side >= 0
    if side.any():
        dev = np.abs(values[side] - mid)
        sigma = max(sigma, 1.4826 * _median(dev, row_w[side]))
    big = counts >= cfg.history_tau_rows
    if weights[big].sum() < 3:
        return sigma, tau_floor
    big_mid = _median(means[big], weights[big])
    side = big & ((means - big_mid) * honest_side >= 0)
    spread = 1.4826 * _median(np.abs(means[side] - big_mid), weights[side])
    sampling = float(np.median(sigma**2 / counts[big]))
    return sigma, math.sqrt(max(tau_floor**2, spread**2 - sampling))


def reference(
    summaries: list[SenderSummary],
    cfg: DeltaSoupConfig,
    min_senders: float | None = None,
    centroid: np.ndarray | None = None,
) -> Reference | None:
    """The reference built from `summaries` (one per sender), or None with fewer than
    `min_senders` (default `history_min_senders`) senders. Medians weigh each sender by
    `vote_weights`. `centroid`: the domain's anchor (fai_core.domain_anchors), used
    instead of the senders' median text."""
    live = [s for s in summaries if s.rows > 0]
    if not live:
        return None
    counts = np.array([s.rows for s in live], dtype=np.float64)
    mean_vecs = np.stack([s.vec_sum for s in live]) / counts[:, None]
    if len(live) < max(1, cfg.history_min_senders if min_senders is None else min_senders):
        return None
    weights = vote_weights(mean_vecs, cfg.history_same_cos)
    if centroid is None:
        centroid = weighted_median(mean_vecs, weights)
        centroid /= max(float(np.linalg.norm(centroid)), _EPS)
    d_means = mean_vecs @ centroid
    d_mid = _median(d_means, weights)
    d_recent = [s.recent_vecs.astype(np.float64) @ centroid for s in live]
    d_sigma, d_tau = _spreads(
        d_means,
        counts,
        weights,
        d_recent,
        d_mid,
        (cfg.history_domain_sigma, cfg.history_domain_tau),
        cfg,
        honest_side=+1,
    )
    q_means = np.array([s.q_sum for s in live]) / counts
    q_mid = _median(q_means, weights)
    q_recent = [s.recent_q for s in live]
    q_sigma, q_tau = _spreads(
        q_means,
        counts,
        weights,
        q_recent,
        q_mid,
        (cfg.history_quality_sigma, cfg.history_quality_tau),
        cfg,
        honest_side=-1,
    )
    return Reference(centroid, d_mid, d_sigma, d_tau, q_mid, q_sigma, q_tau)


def margin_reference(
    summaries: list[SenderSummary],
    cfg: DeltaSoupConfig,
    min_senders: float | None = None,
    anchor: tuple[float, float] | None = None,
) -> tuple[float, float, float] | None:
    """(mid, sigma, tau) of the senders' mean domain margins, built as `reference` builds
    the cosine's from at least `min_senders` (default `history_min_senders`) senders with
    margins. `anchor`: the domain anchor's (median margin, spread): the mid is never below
    its median (`anchored_mid`), and with too few senders the anchor alone is the
    reference (its spread as sigma, tau at its floor). None: neither."""
    live = [s for s in summaries if s.margin_rows > 0]
    if len(live) < max(1, cfg.history_min_senders if min_senders is None else min_senders):
        if anchor is None:
            return None
        return anchor[0], max(cfg.history_domain_sigma, anchor[1]), cfg.history_domain_tau
    counts = np.array([s.margin_rows for s in live], dtype=np.float64)
    means = np.array([s.margin_sum for s in live]) / counts
    weights = vote_weights(np.stack([s.vec_sum / s.rows for s in live]), cfg.history_same_cos)
    mid = anchored_mid(_median(means, weights), None if anchor is None else anchor[0])
    floors = (cfg.history_domain_sigma, cfg.history_domain_tau)
    recent = [s.recent_margin for s in live]
    sigma, tau = _spreads(means, counts, weights, recent, mid, floors, cfg, honest_side=+1)
    return mid, sigma, tau


def _with_margin(
    ref: Reference | None, summaries, cfg, min_senders=None, anchor=None
) -> Reference | None:
    """`ref` with the margin reference of `summaries` (None without a reference)."""
    if ref is None:
        return None
    return dataclasses.replace(ref, margin=margin_reference(summaries, cfg, min_senders, anchor))


def z_scores(s: SenderSummary, ref: Reference) -> tuple[float, float]:
    """(domain z, quality z) of one sender's summary against a reference: how many standard
    errors its mean lies from the median sender's (negative: below). The domain z is the
    sender's mean margin's (`margins`) when the sender and the reference have margins, and
    its mean cosine to the centroid's otherwise."""
    n = s.rows
    q_err = math.sqrt(ref.quality_sigma**2 / n + ref.quality_tau**2)
    q_z = (s.q_sum / n - ref.quality_mid) / q_err if ref.quality_known else 0.0
    if ref.margin is not None and s.margin_rows > 0:
        mid, sigma, tau = ref.margin
        m = s.margin_rows
        return (s.margin_sum / m - mid) / math.sqrt(sigma**2 / m + tau**2), q_z
    d_err = math.sqrt(ref.domain_sigma**2 / n + ref.domain_tau**2)
    d_mean = float(s.vec_sum @ ref.centroid) / n
    return (d_mean - ref.domain_mid) / d_err, q_z


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
        q = _decide(qz, False, 0, cfg) if high and ref.quality_known else "pass"
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
    mean = s.vec_sum / max(float(np.linalg.norm(s.vec_sum)), _EPS)
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
        if self.path is not None and self.path.exists():
            self._load(self.path)

    def senders(self, domain: str) -> dict[bytes, SenderSummary]:
        """The stored summaries of one domain (a read-only view by convention)."""
        return self._domains.get(domain, {})

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
                refs[dom] = _with_margin(refs[dom], summaries, cfg, None, self._anchor(dom))
        for dom, fresh in verdict.updates.items():
            self._test(dom, tables[dom], fresh, refs[dom], centroids, cfg, verdict)
        return verdict

    def _add_margins(self, dom, unit, in_dom, rows, senders, centroids, cfg, verdict) -> None:
        """Measure the domain margins of the round's new rows of `dom` against this round's
        centroids, and add them to the senders' fresh summaries."""
        for k in np.unique(rows.node[in_dom]):
            sender = senders[int(k)]
            mine = in_dom & (rows.node == k)
            m = margins(unit[mine], dom, centroids)
            if m is None:
                return
            fresh = verdict.updates[dom]
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
            out[dom] = reference(summaries, cfg, centroid=anchor)
            if out[dom] is None and anchor is not None:
                out[dom] = Reference(anchor, 0.0, 1.0, 1.0, 0.0, 1.0, 1.0, quality_known=False)
        return out

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
            first = reference(pool, cfg, min_senders=3, centroid=self._centroid(dom))
            second = _with_margin(first, pool, cfg, 3, self._anchor(dom))
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
        domain beyond `history_max_senders`. `waiting`: the rows counted this round or
        before that now wait in the backlog for evidence, with when each was first seen
        (every other row leaves the waiting set)."""
        self._waiting = dict(waiting or {})
        for dom, fresh in verdict.updates.items():
            table = self._domains.setdefault(dom, {})
            table.update(fresh)
            if len(table) > cfg.history_max_senders:
                newest = sorted(table, key=lambda k: (table[k].last_round, k))
                keep = newest[-cfg.history_max_senders :]
                self._domains[dom] = {k: table[k] for k in sorted(keep)}
        self.rounds += 1

    # -- comparison and persistence ------------------------------------------------------------

    def same_as(self, other: SenderHistory) -> bool:
        """Whether two histories will judge every future round alike (the simulator folds
        receivers with equal state together)."""
        if self._domains.keys() != other._domains.keys():
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
        """Write every summary to `path` atomically (no-op without a path)."""
        if self.path is None:
            return
        arrays: dict[str, np.ndarray] = {
            "format": np.array(_FORMAT),
            "dim": np.array(self.dim),
            "rounds": np.array(self.rounds),
        }
        for i, dom in enumerate(sorted(self._domains)):
            table = self._domains[dom]
            keys = sorted(table)
            arrays[f"d{i}_name"] = np.array(dom)
            arrays[f"d{i}_senders"] = np.array([list(k) for k in keys], dtype=np.uint8)
            arrays[f"d{i}_rows"] = np.array([table[k].rows for k in keys], dtype=np.int64)
            arrays[f"d{i}_last"] = np.array([table[k].last_round for k in keys], dtype=np.int64)
            arrays[f"d{i}_vec_sum"] = np.stack([table[k].vec_sum for k in keys])
            arrays[f"d{i}_q_sum"] = np.array([table[k].q_sum for k in keys])
            arrays[f"d{i}_recent_n"] = np.array([len(table[k].recent_q) for k in keys])
            arrays[f"d{i}_recent_vecs"] = np.concatenate([table[k].recent_vecs for k in keys])
            arrays[f"d{i}_recent_q"] = np.concatenate([table[k].recent_q for k in keys])
            arrays[f"d{i}_refused"] = np.array([table[k].refused for k in keys], dtype=bool)
            arrays[f"d{i}_margin_rows"] = np.array([table[k].margin_rows for k in keys])
            arrays[f"d{i}_margin_sum"] = np.array([table[k].margin_sum for k in keys])
            arrays[f"d{i}_recent_margin_n"] = np.array([len(table[k].recent_margin) for k in keys])
            arrays[f"d{i}_recent_margin"] = np.concatenate([table[k].recent_margin for k in keys])
        atomic_write(self.path, lambda f: np.savez(f, **arrays))

    def _load(self, path: Path) -> None:
        with np.load(path, allow_pickle=False) as data:
            if int(data["format"]) not in (1, _FORMAT) or int(data["dim"]) != self.dim:
                raise ValueError(f"{path}: not a sender history (format {_FORMAT}, dim {self.dim})")
            self.rounds = int(data["rounds"])
            i = 0
            while f"d{i}_name" in data:
                name = str(data[f"d{i}_name"])
                self._domains[name] = _load_domain(data, f"d{i}_", self.dim, path)
                i += 1


def _load_domain(data, prefix: str, dim: int, path: Path) -> dict[bytes, SenderSummary]:
    senders = data[prefix + "senders"]
    rows, last = data[prefix + "rows"], data[prefix + "last"]
    vec_sum, q_sum = data[prefix + "vec_sum"], data[prefix + "q_sum"]
    recent_n = data[prefix + "recent_n"]
    recent_vecs, recent_q = data[prefix + "recent_vecs"], data[prefix + "recent_q"]
    n = len(senders)
    shapes_ok = (
        senders.shape == (n, 32)
        and vec_sum.shape == (n, dim)
        and all(len(a) == n for a in (rows, last, q_sum, recent_n))
        and recent_vecs.shape == (int(recent_n.sum()), dim)
        and len(recent_q) == int(recent_n.sum())
    )
    if not shapes_ok or (rows < 1).any() or (recent_n < 1).any() or (recent_n > rows).any():
        raise ValueError(f"{path}: {prefix} has inconsistent shapes or counts")
    finite = all(np.isfinite(a).all() for a in (vec_sum, q_sum, recent_vecs, recent_q))
    if not finite:
        raise ValueError(f"{path}: {prefix} holds a value that is not finite")
    bounds = np.concatenate([[0], np.cumsum(recent_n)])
    margin = _load_margins(data, prefix, rows, path)
    out = {}
    for j in range(n):
        part = slice(bounds[j], bounds[j + 1])
        out[bytes(senders[j])] = SenderSummary(
            int(rows[j]), vec_sum[j].astype(np.float64), float(q_sum[j]),
            recent_vecs[part].astype(np.float32), recent_q[part].astype(np.float64), int(last[j]),
            *margin[j],
        )  # fmt: skip
    return out


def _load_margins(data, prefix: str, rows: np.ndarray, path: Path) -> list[tuple]:
    """Per sender (margin_rows, margin_sum, recent_margin, refused) of a domain; none
    measured (and nobody refused) in a format-1 file."""
    n = len(rows)
    if prefix + "margin_rows" not in data:
        return [(0, 0.0, np.zeros(0), False)] * n
    m_rows, m_sum = data[prefix + "margin_rows"], data[prefix + "margin_sum"]
    m_n, m_recent = data[prefix + "recent_margin_n"], data[prefix + "recent_margin"]
    refused = data[prefix + "refused"]
    ok = (
        len(m_rows) == n and len(m_sum) == n and len(m_n) == n and len(refused) == n
        and len(m_recent) == int(m_n.sum()) and (m_rows >= 0).all() and (m_rows <= rows).all()
        and (m_n <= m_rows).all() and (m_n >= 0).all()
    )  # fmt: skip
    if not ok:
        raise ValueError(f"{path}: {prefix} has inconsistent margins")
    if not (np.isfinite(m_sum).all() and np.isfinite(m_recent).all()):
        raise ValueError(f"{path}: {prefix} holds a value that is not finite")
    bounds = np.concatenate([[0], np.cumsum(m_n)])
    return [
        (
            int(m_rows[j]),
            float(m_sum[j]),
            m_recent[bounds[j] : bounds[j + 1]].astype(np.float64),
            bool(refused[j]),
        )
        for j in range(n)
    ]
