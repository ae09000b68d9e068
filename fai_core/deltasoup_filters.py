"""DeltaSoup's row filters (phase 3 of fai_core/deltasoup.py) as objects, run in a fixed order.

Each filter has a `name`, the one `Drop` reason it gives, a `stage`, and a pure `refuse`
method: given the round's rows (`RoundRows`) and the thresholds (`DeltaSoupConfig`) it
returns which rows it refuses and the per-row scores it measured; it changes nothing.
`DeltaSoup` runs them in order and gives each row the reason of the first filter that
refused it (a row gets at most one reason). The default order, `DEFAULT_FILTERS`:

1. `OverCap` (over_cap) and 2. `CapDeferral` (deferred): the per-sender weight bound (a);
   rows past the cap wait in the backlog, rows past the backlog's room are dropped.
3. `SemanticConsistency` (semantic_mismatch) and 4. `ScaleConsistency` (scale_mismatch):
   the checks against the receiver's own re-embedding (b), the only ones that cost
   reputation (`CHARGED`).
5. `SteeringScreen` (steering): the text-level screen (fai_core.text_screen), uncharged.
   After the verified checks, so a row whose vector contradicts its text is still charged
   as semantic_mismatch (a steering keyword cannot launder it), and before the relative
   checks, so screened rows never join their reference population.
6. `ScaleOutlier` (scale_outlier): the round's relative scale check (c).
7. `QualityHistory` (quality_outlier), 8. `DomainHistory` (domain_mismatch) and
   9. `HistoryWait` (deferred): the quality and domain checks (d, e) against the
   receiver's sender histories (fai_core.deltasoup_history), built over every round, and
   the rows they cannot decide yet, which wait in the backlog for more evidence.
   `ONE_ROUND_FILTERS` is the earlier pipeline, with the one-round `ConfidenceInflation`
   and `DomainTag` in their place, kept to measure against.

Stages fix when the round's shared work happens, so the order of the loop is the order of
Algorithm 3: phase 2 (decompress, and embed the texts of the rows still kept) runs before
the first filter that is not a `BUDGET` one, so deferred rows are never embedded; and the
reference population of the relative checks (rows that passed every check the receiver
verifies itself, each sender weighing 1 in total) is fixed before the first `RELATIVE`
filter, so a flood of rows whose vectors contradict their texts cannot set the medians
honest rows are measured against. docs/deltasoup.md has the measurements behind every
threshold.

Statistics two filters share (the cap ranking; the re-encoding of the receiver's own
embedding against each batch's baseline) are computed once per round and cached on the
`RoundRows`, so splitting a check into two filters costs nothing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, NamedTuple, Protocol

import numpy as np

from fai_core import bitdelta, text_screen
from fai_core.embedding import Embedder
from fai_core.refusals import Drop
from fai_core.wire import Batch

if TYPE_CHECKING:
    from fai_core.deltasoup import DeltaSoupConfig
    from fai_core.deltasoup_history import HistoryVerdict, SenderHistory


class Stage(StrEnum):
    """When a filter runs relative to the round's shared work (module docstring)."""

    #: Before phase 2: budgets that need no embedding (the cap).
    BUDGET = "budget"
    #: After phase 2: checks against the receiver's own re-embedding (reputation-charged).
    VERIFIED = "verified"
    #: After the VERIFIED checks, before the reference population is fixed: screens of the
    #: row alone that are heuristics, not proofs (uncharged).
    CONTENT = "content"
    #: After the reference population is fixed: comparisons with the round's other senders.
    RELATIVE = "relative"


# -- robust statistics shared by the filters -------------------------------------------------


def id_rank(ids: Sequence[bytes]) -> np.ndarray:
    """Rank of each id in byte order (equal ids share a rank): an order-free tie-break."""
    if not ids:
        return np.zeros(0, dtype=np.int64)
    _, inverse = np.unique(np.array(ids, dtype=object), return_inverse=True)
    return inverse.astype(np.int64)


def rowwise_cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine of each row of `a` with the same row of `b` (0 for a zero row)."""
    num = np.einsum("ij,ij->i", a, b)
    den = np.sqrt(np.einsum("ij,ij->i", a, a) * np.einsum("ij,ij->i", b, b))
    return num / np.maximum(den, 1e-30)


def weighted_median(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Median of each column of `values` (n,) or (n, k) with row weights (lower median)."""
    return weighted_quantile(values, weights, 0.5)


def weighted_quantile(values: np.ndarray, weights: np.ndarray, q: float) -> np.ndarray:
    """The q-quantile of each column with row weights, so each sender can weigh 1 in total."""
    v = values if values.ndim == 2 else values[:, None]
    order = np.argsort(v, axis=0, kind="stable")
    cum = np.cumsum(weights[order], axis=0)
    idx = np.argmax(cum >= q * cum[-1], axis=0)
    out = np.take_along_axis(v, order, axis=0)[idx, np.arange(v.shape[1])]
    return out if values.ndim == 2 else out[0]


def robust_z(values: np.ndarray, weights: np.ndarray, cfg: DeltaSoupConfig) -> np.ndarray:
    """|x - weighted median| / (mad_scale x weighted MAD + eps), per entry."""
    med = weighted_median(values, weights)
    mad = weighted_median(np.abs(values - med), weights)
    return np.abs(values - med) / (cfg.mad_scale * mad + cfg.eps)


def vote_weights(mean_vecs: np.ndarray, same_cos: float) -> np.ndarray:
    """One vote per group of senders whose mean texts are near-identical (cosine >=
    `same_cos`, single linkage): senders repeating the same rows are one voice, so a
    colluding group cannot pull the centroid by sending the same texts under many keys.
    Honest senders that happen to agree lose nothing but weight: they sit where the rest
    of the honest senders do."""
    n = len(mean_vecs)
    unit = mean_vecs / np.maximum(np.linalg.norm(mean_vecs, axis=1, keepdims=True), 1e-30)
    close = (unit @ unit.T) >= same_cos
    label = np.arange(n)
    changed = True
    while changed:  # connected components by label propagation (n is a few hundred at most)
        new = np.where(close, label[None, :], n).min(axis=1)
        changed = bool((new != label).any())
        label = new
    sizes = np.bincount(label, minlength=n)
    return 1.0 / sizes[label]


# -- the round's rows ------------------------------------------------------------------------


@dataclass
class RoundRows:
    """Every row offered in one round (backlog first), the shared statistics, and the verdicts.

    Filters read it; only DeltaSoup's loop writes `drop`, `scores` and the phase steps.
    """

    batches: Sequence[Batch]
    sizes: list[int]
    batch: np.ndarray  # batch index per row
    node: np.ndarray  # sender index per row (senders in byte order)
    n_senders: int
    fresh: np.ndarray  # True for rows of this round's batches, False for backlog rows
    ids: list[bytes]
    texts: list[str]
    quality: np.ndarray
    drop: np.ndarray  # 0 kept, else the Drop code (deltasoup._CODE)
    received: np.ndarray  # e_hat (phase 2)
    own: np.ndarray  # the receiver's embedding of each text (phase 2; zero if not embedded)
    #: Rows phase 2 embedded: those still kept after the BUDGET filters.
    embedded: np.ndarray | None = None
    #: The relative checks' population: rows kept after every VERIFIED filter...
    reference: np.ndarray | None = None
    #: ...each weighing 1 / (its sender's rows in it), 0 outside it.
    weight: np.ndarray | None = None
    scores: dict[str, np.ndarray] = field(default_factory=dict)
    cache: dict[str, object] = field(default_factory=dict)
    #: The receiver's sender histories (read only here; DeltaSoup stores the round's).
    history: SenderHistory | None = None
    #: The round's clock (DeltaSoup.aggregate's `now_ms`): how long rows have waited.
    now_ms: int = 0

    @classmethod
    def collect(cls, batches: Sequence[Batch], dim: int, n_backlog: int = 0) -> RoundRows:
        """The rows of `batches`, whose first `n_backlog` entries come from the backlog."""
        senders = sorted({b.sender for b in batches})
        node_of = {s: i for i, s in enumerate(senders)}
        sizes = [len(b) for b in batches]
        batch_idx = np.repeat(np.arange(len(batches)), sizes)
        if not batches:
            batch_idx = np.zeros(0, dtype=np.int64)
        node = np.repeat(np.array([node_of[b.sender] for b in batches], dtype=np.int64), sizes)
        n = int(sum(sizes))
        quality = (
            np.concatenate([b.quality for b in batches]).astype(np.float64)
            if batches
            else np.zeros(0, np.float32)
        )
        return cls(
            batches=batches,
            sizes=sizes,
            batch=batch_idx,
            node=node,
            n_senders=len(senders),
            fresh=batch_idx >= n_backlog,
            ids=[i for b in batches for i in b.ids],
            texts=[t for b in batches for t in b.texts],
            quality=quality,
            drop=np.zeros(n, dtype=np.int64),
            received=np.zeros((n, dim), np.float32),
            own=np.zeros((n, dim), np.float32),
        )

    def __len__(self) -> int:
        return len(self.ids)

    def slices(self):
        """(batch, slice of its rows) for every batch, in order."""
        start = 0
        for b, m in zip(self.batches, self.sizes, strict=True):
            yield b, slice(start, start + m)
            start += m

    def decompress_and_embed(self, embedder: Embedder) -> None:
        """Phase 2: e_hat of every row; the receiver's embedding of the rows still kept
        (deferred rows are embedded in the round they are taken in)."""
        self.received = np.concatenate([b.embeddings() for b in self.batches])
        self.embedded = self.drop == 0
        live_idx = np.flatnonzero(self.embedded)
        if len(live_idx):
            self.own[live_idx] = embedder.embed([self.texts[i] for i in live_idx])

    def fix_reference(self, same_cos: float | None = None) -> None:
        """The relative checks' population and sender weights: rows kept so far, each
        sender weighing 1 in total; with `same_cos`, senders whose mean texts are that close
        share one vote (`vote_weights`), so keys sending the same rows
        cannot make a round's medians theirs."""
        live = self.drop == 0
        weight = np.zeros(len(self))
        kept_counts = np.bincount(self.node[live], minlength=self.n_senders)
        weight[live] = 1.0 / kept_counts[self.node[live]]
        if same_cos is not None and live.any():
            senders = np.unique(self.node[live])
            means = np.stack([self.own[live & (self.node == k)].mean(axis=0) for k in senders])
            votes = np.ones(self.n_senders)
            votes[senders] = vote_weights(means, same_cos)
            weight *= votes[self.node]
        self.reference, self.weight = live, weight


class Verdict(NamedTuple):
    """A filter's answer: the rows it refuses and the per-row scores it measured."""

    refused: np.ndarray
    scores: dict[str, np.ndarray]


class RowFilter(Protocol):
    """One phase-3 check. `refuse` must be pure: the same rows and thresholds, the same
    verdict, whatever the filters before it did except through `rows.drop`."""

    name: str
    drop: Drop
    stage: Stage

    def refuse(self, rows: RoundRows, cfg: DeltaSoupConfig) -> Verdict:
        """Which rows this filter refuses (a mask over `rows`), with the scores it measured."""
        ...


# -- (a) the per-sender cap ------------------------------------------------------------------


def offer_rank(rows: RoundRows, cfg: DeltaSoupConfig) -> tuple[np.ndarray, int]:
    """(each row's rank among its sender's offered rows, the round's cap), cached.

    Ranked backlog first in (seq, id) order, then new rows by smallest id: a function of
    the round's set of rows and of the backlog. The cap is the median over senders of NEW
    rows (a sender with only a backlog votes 0, so backlogs cannot raise it), at least
    `min_cap`, at most `max_cap`.
    """
    cached = rows.cache.get("offer_rank")
    if cached is not None:
        return cached  # type: ignore[return-value]
    node, fresh, n = rows.node, rows.fresh, len(rows)
    counts = np.bincount(node[fresh], minlength=rows.n_senders)
    cap = max(cfg.min_cap, math.floor(cfg.cap_factor * float(np.median(counts))))
    if cfg.max_cap is not None:
        cap = min(cap, cfg.max_cap)
    seqs = np.repeat(np.array([b.seq for b in rows.batches]), rows.sizes)
    # lexsort: last key is the primary one.
    order = np.lexsort((rows.batch, id_rank(rows.ids), np.where(fresh, 0, seqs), fresh, node))
    first = np.searchsorted(node[order], np.arange(rows.n_senders))
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n) - first[node[order]]
    rows.cache["offer_rank"] = (rank, cap)
    return rank, cap


class OverCap:
    """Rows past a sender's cap and past its backlog's room (`max_backlog_rows`): dropped.

    One node sending 10x more weighs no more than one node, and its backlog is bounded."""

    name = "over_cap"
    drop = Drop.OVER_CAP
    stage = Stage.BUDGET

    def refuse(self, rows: RoundRows, cfg: DeltaSoupConfig) -> Verdict:
        """Rows ranked past the sender's cap plus its backlog room: refused outright."""
        rank, cap = offer_rank(rows, cfg)
        return Verdict(rank >= cap + cfg.max_backlog_rows, {})


class CapDeferral:
    """Rows past a sender's cap (and within its backlog's room): deferred to a later round,
    where they go through every filter; deferral is not a refusal and costs nothing."""

    name = "cap_deferral"
    drop = Drop.DEFERRED
    stage = Stage.BUDGET

    def refuse(self, rows: RoundRows, cfg: DeltaSoupConfig) -> Verdict:
        """Rows ranked past the sender's cap but within backlog room: held for a later round."""
        rank, cap = offer_rank(rows, cfg)
        return Verdict(rank >= cap, {})


# -- (b) consistency with the receiver's own re-embedding -------------------------------------


@dataclass
class ReEncoding:
    """The receiver's own embedding of each text, BitDelta-compressed against the batch's own
    baseline and group size, compared with what was sent (per row)."""

    sem_cos: np.ndarray  # cos(e_hat - b, r - b)
    direct: np.ndarray  # cos(e_hat, embed(text))
    ratio: np.ndarray  # max over groups |ln(sent scale / own scale)|
    row_med: np.ndarray  # median over groups of ln(sent / own)
    noise: np.ndarray  # the row's batch: 1.4826 MAD of ln(sent / own)
    batch_loc: np.ndarray  # the row's batch: median of ln(sent / own)
    batch_loc_tol: np.ndarray


def re_encoding(rows: RoundRows, cfg: DeltaSoupConfig) -> ReEncoding:
    """`ReEncoding` of the round (after phase 2), cached.

    The noise estimate and location use the batch's rows embedded this round (own
    embeddings exist only for those); deferred rows are judged in their own round.
    """
    cached = rows.cache.get("re_encoding")
    if cached is not None:
        return cached  # type: ignore[return-value]
    n, own, received, live = len(rows), rows.own, rows.received, rows.embedded
    assert live is not None, "phase 2 has not run"
    out = ReEncoding(
        np.empty(n), np.empty(0), np.empty(n), np.zeros(n), np.zeros(n), np.zeros(n),
        np.full(n, cfg.scale_ratio_tol),
    )  # fmt: skip
    for b, sl in rows.slices():
        code = bitdelta.encode(own[sl], b.baseline, b.group)
        mine = bitdelta.decode(code, b.baseline)
        sent_delta, own_delta = received[sl] - b.baseline, mine - b.baseline
        out.sem_cos[sl] = rowwise_cos(sent_delta, own_delta)
        # Text equal to the baseline (a one-experience library): no delta on either side.
        both_zero = (np.abs(sent_delta).max(axis=1) < 1e-7) & (np.abs(own_delta).max(axis=1) < 1e-7)
        out.sem_cos[sl][both_zero] = 1.0
        with np.errstate(divide="ignore", invalid="ignore"):
            lr = np.log((b.scales.astype(np.float64) + cfg.eps) / (code.scales + cfg.eps))
        out.ratio[sl] = np.abs(lr).max(axis=1)
        out.row_med[sl] = np.median(lr, axis=1)
        lv = lr[live[sl]]
        if len(lv):
            loc = float(np.median(lv))
            spread = 1.4826 * float(np.median(np.abs(lv - loc)))
            out.noise[sl], out.batch_loc[sl] = spread, loc
            out.batch_loc_tol[sl] = cfg.scale_ratio_tol + cfg.scale_location_k * 1.2533 * (
                spread
            ) / math.sqrt(lv.size)
    out.direct = rowwise_cos(received, own)
    rows.cache["re_encoding"] = out
    return out


class SemanticConsistency:
    """Sent deltas against the receiver's own re-embedding of the text, in delta space
    (cos >= `semantic_min_cos`), and e_hat against that embedding (cos >= `direct_min_cos`,
    which stops a baseline chosen so that e_hat is garbage while the deltas match). An
    honest sender produces the same signs (cos 1.0 up to platform jitter)."""

    name = "semantic"
    drop = Drop.SEMANTIC_MISMATCH
    stage = Stage.VERIFIED

    def refuse(self, rows: RoundRows, cfg: DeltaSoupConfig) -> Verdict:
        """Rows whose reconstruction is far from this node's own embedding of the text."""
        r = re_encoding(rows, cfg)
        bad = rows.embedded & ((r.sem_cos < cfg.semantic_min_cos) | (r.direct < cfg.direct_min_cos))
        return Verdict(bad, {"semantic_cos": r.sem_cos, "direct_cos": r.direct})


class ScaleConsistency:
    """Sent scales against the receiver's own, robust to zero-mean (DP) noise without knowing
    its sigma: the batch's own noise estimate widens only the per-group bound; the row and
    batch medians of the log ratios, which noise leaves near 0 and inflation shifts, stay
    tight; a batch noisier than `scale_noise_max` cannot be checked and is refused."""

    name = "scale_ratio"
    drop = Drop.SCALE_MISMATCH
    stage = Stage.VERIFIED

    def refuse(self, rows: RoundRows, cfg: DeltaSoupConfig) -> Verdict:
        """Rows (or whole batches) whose BitDelta scales disagree with this node's own deltas."""
        r = re_encoding(rows, cfg)
        groups = max(b.scales.shape[1] for b in rows.batches)
        row_loc_tol = cfg.scale_ratio_tol + cfg.scale_location_k * 1.2533 * r.noise / math.sqrt(
            groups
        )
        bad = (
            (r.ratio > cfg.scale_ratio_tol + cfg.scale_noise_k * r.noise)
            | (np.abs(r.row_med) > row_loc_tol)
            | (np.abs(r.batch_loc) > r.batch_loc_tol)
            | (r.noise > cfg.scale_noise_max)
        )
        scores = {
            "scale_log_ratio": r.ratio,
            "scale_log_median": r.row_med,
            "scale_noise": r.noise,
            "scale_batch_median": r.batch_loc,
        }
        return Verdict(bad, scores)


# -- the text-level screen --------------------------------------------------------------------

#: Row score of `SteeringScreen`: 0 for a row that passed (or was not screened), else
#: 1 + the index of its finding's category in `STEERING_CATEGORIES`.
STEERING_CATEGORIES: tuple[text_screen.Category, ...] = tuple(text_screen.Category)


class SteeringScreen:
    """Rows whose text tries to steer an agent against its user: instruction overrides,
    disabled verification, credential exfiltration, downloads piped to a shell, URLs
    (fai_core.text_screen, whose docstring gives the rules and their limits).

    Text that passes every embedding-space check by design (its vector is its own) is what
    this sees. It is a keyword heuristic an honest text can trip, so its reason is not in
    `CHARGED`: the row is dropped, the sender's reputation untouched. Each distinct text is
    screened once per round."""

    name = "steering"
    drop = Drop.STEERING
    stage = Stage.CONTENT

    def refuse(self, rows: RoundRows, cfg: DeltaSoupConfig) -> Verdict:
        """Rows still kept whose text trips the screen, with the category per row."""
        category = np.zeros(len(rows), dtype=np.int64)
        seen: dict[str, int] = {}
        for i in np.flatnonzero(rows.drop == 0):
            text = rows.texts[i]
            code = seen.get(text)
            if code is None:
                finding = text_screen.screen(text)
                code = 0 if finding is None else STEERING_CATEGORIES.index(finding.category) + 1
                seen[text] = code
            category[i] = code
        return Verdict(category > 0, {"steering_category": category})


# -- (c-e) relative checks -------------------------------------------------------------------


class ScaleOutlier:
    """ln(scale) per group against the sender-weighted median of the reference rows: robust
    z (MAD x `mad_scale`), max over groups > `scale_tau`. Only with >= `scale_min_rows`
    reference rows: median/MAD of a few rows puts honest z above the bound."""

    name = "scale_outlier"
    drop = Drop.SCALE_OUTLIER
    stage = Stage.RELATIVE

    def refuse(self, rows: RoundRows, cfg: DeltaSoupConfig) -> Verdict:
        """Rows whose log-scales are robust outliers against the round's weighted reference."""
        live, weight = rows.reference, rows.weight
        assert live is not None and weight is not None, "reference not fixed"
        scales = np.concatenate([b.scales for b in rows.batches]).astype(np.float64)
        log_scales = np.log(scales + cfg.eps)
        scale_z = np.zeros(len(rows))
        if live.sum() >= cfg.scale_min_rows and log_scales.shape[1] == max(
            b.scales.shape[1] for b in rows.batches
        ):
            scale_z[live] = robust_z(log_scales[live], weight[live], cfg).max(axis=1)
        return Verdict(scale_z > cfg.scale_tau, {"scale_z": scale_z})


class ConfidenceInflation:
    """A sender (>= `quality_min_rows` reference rows) whose median quality exceeds the
    sender-weighted `quality_quantile` of all reference qualities by more than `quality_z`
    standard errors of that median is refused for the round. With Byzantine weight < 1/3
    that quantile lies between the honest 0.66 and 0.99 quantiles."""

    name = "confidence_inflation"
    drop = Drop.QUALITY_OUTLIER
    stage = Stage.RELATIVE

    def refuse(self, rows: RoundRows, cfg: DeltaSoupConfig) -> Verdict:
        """Every row of a sender whose median quality claim is implausibly above the round's."""
        live, weight, quality, node = rows.reference, rows.weight, rows.quality, rows.node
        assert live is not None and weight is not None, "reference not fixed"
        refused = np.zeros(len(rows), dtype=bool)
        if not live.any():
            return Verdict(refused, {})
        ceiling = weighted_quantile(quality[live], weight[live], cfg.quality_quantile)
        q_med = weighted_median(quality[live], weight[live])
        sigma = 1.4826 * weighted_median(np.abs(quality[live] - q_med), weight[live])
        for k in range(rows.n_senders):
            mine_q = quality[live & (node == k)]
            if len(mine_q) < cfg.quality_min_rows:
                continue
            own_med = float(np.median(mine_q))
            own_sigma = 1.4826 * float(np.median(np.abs(mine_q - own_med)))
            err = 1.2533 * min(own_sigma, sigma) / math.sqrt(len(mine_q))
            if own_med > ceiling + cfg.quality_z * err:
                refused |= live & (node == k)
        return Verdict(refused, {})


def domain_centroids(rows: RoundRows, kept: np.ndarray, cfg: DeltaSoupConfig):
    """(unit centroids, their domain names) of the domains with >= `domain_min_senders`
    senders among `kept` rows: coordinate-wise median of per-sender mean own embeddings,
    so each sender has one vote whatever it sent."""
    cents, names = [], []
    for dom in sorted({b.domain for b in rows.batches}):
        in_dom = [i for i, b in enumerate(rows.batches) if b.domain == dom]
        rows_d = kept & np.isin(rows.batch, in_dom)
        nodes_d = np.unique(rows.node[rows_d])
        if len(nodes_d) >= cfg.domain_min_senders:
            means = np.stack([rows.own[rows_d & (rows.node == k)].mean(axis=0) for k in nodes_d])
            c = np.median(means, axis=0)
            cents.append(c / max(np.linalg.norm(c), 1e-30))
            names.append(dom)
    return cents, names


class DomainTag:
    """A batch whose mean text embedding (rows still kept) is nearer another domain's
    centroid than its own tag's, by more than `domain_margin`, is refused. Batch level on
    purpose (docs/deltasoup.md): a spoofed tag is a property of the batch."""

    name = "domain_tag"
    drop = Drop.DOMAIN_MISMATCH
    stage = Stage.RELATIVE

    def refuse(self, rows: RoundRows, cfg: DeltaSoupConfig) -> Verdict:
        """Every row of a batch whose mean embedding sits nearer another domain's centroid."""
        n, own = len(rows), rows.own
        margins = np.zeros(n)
        refused = np.zeros(n, dtype=bool)
        ok = rows.drop == 0
        cents, names = domain_centroids(rows, ok, cfg)
        if len(cents) < 2:
            return Verdict(refused, {"domain_margin": margins})
        cmat = np.stack(cents)
        for b, sl in rows.slices():
            if b.domain not in names:
                continue
            mean = own[sl][ok[sl]].mean(axis=0) if ok[sl].any() else own[sl].mean(axis=0)
            sims = cmat @ (mean / max(np.linalg.norm(mean), 1e-30))
            j = names.index(b.domain)
            margin = sims[j] - np.delete(sims, j).max()
            margins[sl] = margin
            if margin < -cfg.domain_margin:
                refused[sl] = ok[sl]
        return Verdict(refused, {"domain_margin": margins})


# -- (d, e) across rounds: the sender histories ----------------------------------------------


def history_verdict(rows: RoundRows, cfg: DeltaSoupConfig) -> HistoryVerdict | None:
    """The round's judgement by the receiver's sender histories (None without any), cached."""
    if rows.history is None:
        return None
    cached = rows.cache.get("history")
    if cached is None:
        cached = rows.cache["history"] = rows.history.judge(rows, cfg)
    return cached  # type: ignore[return-value]


def _history_refusals(rows: RoundRows, cfg: DeltaSoupConfig, check: str) -> Verdict:
    """Rows still kept whose (domain, sender) the histories refused in `check` ("quality"
    or "domain"), with the sender's z score per row."""
    refused = np.zeros(len(rows), dtype=bool)
    v = history_verdict(rows, cfg)
    if v is None:
        return Verdict(refused, {})
    refused_by, z = getattr(v, f"{check}_refused"), getattr(v, f"{check}_z")
    scores = np.zeros(len(rows))
    for b, sl in rows.slices():
        scores[sl] = z.get((b.domain, b.sender), 0.0)
        if b.sender in refused_by.get(b.domain, ()):
            refused[sl] = rows.drop[sl] == 0
    return Verdict(refused, {f"{check}_z": scores})


class QualityHistory:
    """A sender whose mean quality claim in a domain, over every verified row it has sent
    there, lies more than `history_reject_z` standard errors above the median sender's is
    refused in that domain this round (fai_core.deltasoup_history). It replaces the
    one-round `ConfidenceInflation` in the default order: the history has the rows one
    round lacks, and attackers who dominate a round do not own it."""

    name = "quality_history"
    drop = Drop.QUALITY_OUTLIER
    stage = Stage.RELATIVE

    def refuse(self, rows: RoundRows, cfg: DeltaSoupConfig) -> Verdict:
        """Rows of senders whose history of quality claims is implausibly high."""
        return _history_refusals(rows, cfg, "quality")


class DomainHistory:
    """A sender whose texts in a domain, over every verified row it has sent there, lie
    further from the domain's centroid than honest variety explains (more than
    `history_reject_z` standard errors below the median sender) is refused in that domain
    this round. Unlike the one-round `DomainTag` it needs no second domain: a node
    subscribed to one domain still sees a spoofed tag."""

    name = "domain_history"
    drop = Drop.DOMAIN_MISMATCH
    stage = Stage.RELATIVE

    def refuse(self, rows: RoundRows, cfg: DeltaSoupConfig) -> Verdict:
        """Rows of senders whose texts do not belong to the domain they are tagged with."""
        return _history_refusals(rows, cfg, "domain")


class HistoryWait:
    """Rows the sender histories cannot decide yet wait in the backlog (DEFERRED, no cost):
    the rows of a sender past `history_defer_z` but short of the refusal bound. A row waits
    at most `history_max_wait_ms` from when this node first judged it, then is decided on
    what is known: refused past the bound, kept otherwise. Rows of a domain without a
    reference (fewer than `history_min_senders` senders heard) do not wait: a small fleet
    would wait for ever, so attackers present from a domain's first round keep what they
    send until the reference forms (docs/deltasoup.md)."""

    name = "history_wait"
    drop = Drop.DEFERRED
    stage = Stage.RELATIVE

    def refuse(self, rows: RoundRows, cfg: DeltaSoupConfig) -> Verdict:
        """Rows still kept whose sender (or domain) is undecided and that may still wait."""
        wait = np.zeros(len(rows), dtype=bool)
        v = history_verdict(rows, cfg)
        if v is None or rows.history is None:
            return Verdict(wait, {})
        for b, sl in rows.slices():
            if b.sender in v.undecided.get(b.domain, ()):
                wait[sl] = True
        young = rows.now_ms - rows.history.first_seen(rows, rows.now_ms) < cfg.history_max_wait_ms
        return Verdict(wait & young & (rows.drop == 0), {})


#: The one-round quality and domain checks in place of the sender histories' (and no
#: waiting for evidence): the pipeline before sender histories, kept to measure against.
ONE_ROUND_FILTERS: tuple[RowFilter, ...] = (
    OverCap(),
    CapDeferral(),
    SemanticConsistency(),
    ScaleConsistency(),
    SteeringScreen(),
    ScaleOutlier(),
    ConfidenceInflation(),
    DomainTag(),
)

#: Algorithm 3's phase 3, in its documented order (module docstring).
DEFAULT_FILTERS: tuple[RowFilter, ...] = (
    *ONE_ROUND_FILTERS[:-2],
    QualityHistory(),
    DomainHistory(),
    HistoryWait(),
)
