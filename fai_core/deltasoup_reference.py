"""The statistics behind sender histories: what one sender sent in a domain
(`SenderSummary`), and a domain's reference built from every sender's (`Reference`).

Why a module of its own: fai_core.deltasoup_history decides, per round, who is refused,
who waits and who passes; this module only measures. Every statistic is a median over
senders weighed by `vote_weights` (near-identical senders share one vote), each spread is
measured on the side of the middle that the check does not refuse (`_spreads`), and the
references no sender can move (a domain's anchor, fai_core.domain_anchors, and this node's
own rows) bound the middles the senders set. fai_core.deltasoup_history's docstring gives
the whole rule and docs/deltasoup.md its measurements.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from fai_core.deltasoup_filters import vote_weights, weighted_median
from fai_core.domain_anchors import anchored_mid

if TYPE_CHECKING:
    from fai_core.deltasoup import DeltaSoupConfig

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
    #: False for a reference made from a domain anchor alone (too few distinct senders to
    #: know their quality claims): the quality check then refuses nobody.
    quality_known: bool = True
    #: Many keys but few voices (at least `history_min_senders` senders, fewer votes): the
    #: signature of a group sending the same rows under many keys before honest senders
    #: are heard. Claims above `history_quality_ceiling` then wait for a reference.
    crowded: bool = False


def unit_vector(v: np.ndarray) -> np.ndarray:
    """`v` scaled to length 1 (a zero vector stays zero)."""
    return v / max(float(np.linalg.norm(v)), _EPS)


def _median(values: np.ndarray, weights: np.ndarray) -> float:
    """The weighted (lower) median of 1-D values, as a float."""
    return float(weighted_median(values, weights))


def _spreads(
    means, counts, weights, recent, mid, floors: tuple[float, float], cfg, honest_side: int
) -> tuple[float, float]:
    """(sigma, tau): single-row spread around `mid` from the senders' recent values (each
    sender weighs its vote), and the between-sender spread of the means of senders with at
    least `history_tau_rows` rows beyond what sampling explains; `floors` bound both from
    below (with fewer than 3 such senders on the honest side tau is its floor), and tau is
    at most `history_tau_max`.

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
    if weights[side].sum() < 3:
        return sigma, tau_floor
    spread = 1.4826 * _median(np.abs(means[side] - big_mid), weights[side])
    sampling = float(np.median(sigma**2 / counts[big]))
    tau = math.sqrt(max(tau_floor**2, spread**2 - sampling))
    return sigma, min(tau, max(tau_floor, cfg.history_tau_max))


def reference(
    summaries: list[SenderSummary],
    cfg: DeltaSoupConfig,
    min_senders: float | None = None,
    centroid: np.ndarray | None = None,
    own: SenderSummary | None = None,
) -> Reference | None:
    """The reference built from `summaries` (one per sender), or None with fewer than
    `min_senders` (default `history_min_senders`) votes. Medians weigh each sender by
    `vote_weights`. `centroid`: the domain's anchor (fai_core.domain_anchors), used
    instead of the senders' median text. `own`: this node's own rows in the domain; with
    `history_own_rows` of them, the quality middle is never above their mean claim."""
    live = [s for s in summaries if s.rows > 0]
    if not live:
        return None
    counts = np.array([s.rows for s in live], dtype=np.float64)
    mean_vecs = np.stack([s.vec_sum for s in live]) / counts[:, None]
    weights = vote_weights(mean_vecs, cfg.history_same_cos)
    if weights.sum() < max(1, cfg.history_min_senders if min_senders is None else min_senders):
        return None
    if centroid is None:
        centroid = unit_vector(weighted_median(mean_vecs, weights))
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
    if own is not None and own.rows >= cfg.history_own_rows:
        q_mid = min(q_mid, own.q_sum / own.rows)
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
    q_sigma = min(q_sigma, cfg.history_quality_sigma_max)
    return Reference(centroid, d_mid, d_sigma, d_tau, q_mid, q_sigma, q_tau)


def own_quality(own: SenderSummary | None, cfg: DeltaSoupConfig) -> tuple | None:
    """(mid, sigma, tau) of quality claims from this node's own rows alone (its mean claim,
    the spread of its recent claims below it, tau at its floor), or None with fewer than
    `history_own_rows` of them. The node trusts one sender: itself."""
    if own is None or own.rows < cfg.history_own_rows:
        return None
    mid = own.q_sum / own.rows
    below = own.recent_q[own.recent_q <= mid]
    sigma = 1.4826 * float(np.median(mid - below)) if len(below) else 0.0
    sigma = min(max(sigma, cfg.history_quality_sigma), cfg.history_quality_sigma_max)
    return mid, sigma, cfg.history_quality_tau


def bare_reference(centroid, own, crowded: bool, cfg: DeltaSoupConfig) -> Reference:
    """A reference for a domain with too few distinct senders: its anchor's (or own rows')
    centroid, whose margins the domain check uses (the cosine statistic's fields are wide
    open), and quality from this node's own rows if it has enough (`own_quality`)."""
    quality = own_quality(own, cfg)
    q_mid, q_sigma, q_tau = quality or (0.0, 1.0, 1.0)
    return Reference(
        centroid, 0.0, 1.0, 1.0, q_mid, q_sigma, q_tau,
        quality_known=quality is not None, crowded=crowded,
    )  # fmt: skip


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
    weights = np.zeros(0)
    if live:
        weights = vote_weights(np.stack([s.vec_sum / s.rows for s in live]), cfg.history_same_cos)
    if weights.sum() < max(1, cfg.history_min_senders if min_senders is None else min_senders):
        if anchor is None:
            return None
        return anchor[0], max(cfg.history_domain_sigma, anchor[1]), cfg.history_domain_tau
    counts = np.array([s.margin_rows for s in live], dtype=np.float64)
    means = np.array([s.margin_sum for s in live]) / counts
    mid = anchored_mid(_median(means, weights), None if anchor is None else anchor[0])
    floors = (cfg.history_domain_sigma, cfg.history_domain_tau)
    recent = [s.recent_margin for s in live]
    sigma, tau = _spreads(means, counts, weights, recent, mid, floors, cfg, honest_side=+1)
    return mid, sigma, tau


def with_margin(
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
