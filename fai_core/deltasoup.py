"""DeltaSoup: Byzantine-robust aggregation of received batches (paper section 5, Algorithm 3).

The four phases of Algorithm 3, with the filter redesigned because the paper's, applied as
written to BitDelta reconstructions, keeps only about half of the honest vectors, and with
MAD scaled to a standard deviation rejects nothing inside the honest spread
(docs/design.md#d11; see `paper_filter_scores`, kept for comparison). docs/deltasoup.md has
the measurements behind every threshold below.

1. Verify (per batch; `decode_envelope` already checked hash, signature, shape and
   finiteness): model id and dimension are the receiver's, timestamp within T_max, CID not
   seen before, no second CID for a (sender, seq), seq not far behind the sender's newest,
   sender's reputation not below the threshold. The replay guard forgets CIDs and
   (sender, seq) entries whose batch is older than 2 T_max (freshness refuses those).
2. Decompress: BitDelta reconstruction e_hat of every experience.
3. Filter, in this order:
   a. per-node cap: a sender keeps at most `cap` rows per round, cap = the median over
      senders of their NEW row counts this round (one vote per sender; a sender with only
      a backlog votes 0), so one node sending 10x more weighs no more than one node; every
      statistic below also weighs each sender 1 in total (row weight 1 / rows of its sender).
      Rows over the cap are deferred, not dropped: the sender's backlog (at most
      `max_backlog_rows`; beyond it rows are dropped as over_cap) is offered first in the
      next round, in (seq, id) order, then new rows by smallest id, and deferred rows go
      through every filter in the round they are taken in. Deferral costs no reputation.
   b. semantic consistency: the receiver embeds each text with its own model, compresses
      that embedding against the batch's own baseline and group size, and compares with
      what was sent in delta space: cos(e_hat - b, r - b) and the per-group scale ratios.
      An honest sender produces the same signs and scales (cos 1.0 up to platform jitter);
      any change of signs, scales or text shows. Scale ratios are checked robustly to
      zero-mean DP noise (privacy.py) without knowing its sigma: each batch's noise is
      estimated from the spread of its log ratios and widens only the per-group bound;
      the row and batch medians of the log ratios (which inflation shifts and noise does
      not) stay tight, and a batch noisier than `scale_noise_max` is refused.
      cos(e_hat, embed(text)) is checked too, loosely: it stops a baseline chosen so that
      e_hat is garbage while the deltas match.
   c. scale distribution: log scales per group against the sender-weighted median, robust
      z with MAD (times `mad_scale`); only with >= `scale_min_rows` rows in the round.
   d. confidence inflation: a sender whose median quality lies above the sender-weighted
      `quality_quantile` of all qualities, by more than `quality_z` standard errors of
      that median, is refused for the round.
   e. domain tag: a batch whose mean text embedding is nearer another domain's centroid
      (sender-weighted coordinate-wise median of the round) than its own is refused.
4. Merge: per domain, single-linkage clusters of cosine > theta_dup (exact in matrix blocks
   up to `exact_cluster_rows` rows, random-hyperplane LSH above: a numba union-find kernel
   compares each colliding pair once, with enough tables for a miss rate <= `lsh_miss` at
   cos = theta_dup); Eq. 19 confidence-weighted mean, q = max of the cluster, text and
   provenance of the cluster's best member (highest q, then smallest id).

Reputation (ReputationBook) records only what this node can verify itself (`CHARGED`):
a phase-1 wrong_model or equivocation, and per evaluated batch whether more than
`batch_fail_fraction` of its evaluated rows failed (b), the checks against the receiver's
own re-embedding. The relative checks (c-e) compare a sender with the round's other
senders, whose statistics Sybils choose: they drop rows (filtering stays Byzantine-robust)
and never cost reputation. Nor do replay, stale, future or old_seq, since anyone can
re-publish a signed batch late or twice.

The result does not depend on the order batches arrived in: a round is processed in
(sender, seq, cid) order (backlog first) and every choice above is a function of the set
of rows and of the backlog, itself a function of earlier rounds' sets.
"""

from __future__ import annotations

import dataclasses
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np

from fai_core import bitdelta
from fai_core.embedding import Embedder
from fai_core.errors import Reject, WireError
from fai_core.experience import Experience
from fai_core.reputation import ReputationBook
from fai_core.wire import Batch, check_freshness


class Drop(StrEnum):
    """Why a batch (phase 1) or an experience (phase 3) was not merged. Stable metric labels."""

    WRONG_MODEL = "wrong_model"
    STALE = "stale"
    FUTURE = "future"
    REPLAY = "replay"
    EQUIVOCATION = "equivocation"
    OLD_SEQ = "old_seq"
    LOW_REPUTATION = "low_reputation"
    OVER_CAP = "over_cap"
    SEMANTIC_MISMATCH = "semantic_mismatch"
    SCALE_MISMATCH = "scale_mismatch"
    SCALE_OUTLIER = "scale_outlier"
    QUALITY_OUTLIER = "quality_outlier"
    DOMAIN_MISMATCH = "domain_mismatch"
    #: Not a refusal: over the round's cap, held in the sender's backlog for a later round.
    DEFERRED = "deferred"


#: Refusals this node proves from the signed batch alone, against its own model and rules:
#: the only ones that cost the sender reputation (docs/deltasoup.md, "What costs
#: reputation"). The sender signed the batch, and the receiver re-embeds the texts itself.
CHARGED = frozenset(
    {Drop.WRONG_MODEL, Drop.EQUIVOCATION, Drop.SEMANTIC_MISMATCH, Drop.SCALE_MISMATCH}
)
#: Refusals that cost nobody anything. Relative ones (scale_outlier, quality_outlier,
#: domain_mismatch) compare a sender with the round's other senders, whose statistics
#: Sybils choose; stale, future, replay and old_seq depend on delivery and clocks, and
#: anyone can re-publish a signed batch late or twice; low_reputation, over_cap and
#: deferred are consequences of budgets, not findings. Rows are still dropped.
UNCHARGED = frozenset(Drop) - CHARGED

#: Row reason codes: 0 = kept, i + 1 = the i-th Drop.
_DROPS = tuple(Drop)
_CODE = {d: i + 1 for i, d in enumerate(_DROPS)}


@dataclass(frozen=True, slots=True)
class DeltaSoupConfig:
    """Every threshold of the pipeline; docs/deltasoup.md says how each default was set."""

    max_age_ms: int = 300_000
    #: The fleet's BitDelta group size, agreed like the model: rows of batches with other
    #: group sizes cannot be compared column by column, so such batches are WRONG_MODEL.
    group: int = bitdelta.DEFAULT_GROUP_SIZE
    reputation_threshold: float = 0.3
    #: A batch whose seq is this far behind the sender's newest is an old one replayed.
    seq_window: int = 4096
    cap_factor: float = 1.0
    min_cap: int = 8
    #: Absolute ceiling on the cap (None: none). The median-relative cap does not bind a
    #: sender that is alone (or the majority) in a round; this bounds the rows, hence the
    #: re-embeddings, any one sender costs per round.
    max_cap: int | None = None
    #: Rows over a round's cap wait in a per-sender backlog of at most this many rows (taken
    #: first, oldest first, in later rounds); rows beyond it are dropped as over_cap.
    max_backlog_rows: int = 4096
    #: Honest: 1.0 (0.974 at 1e-3 embedding jitter); worst harmful text: 0.60.
    semantic_min_cos: float = 0.9
    #: Honest cos(e_hat, embed(text)) >= 0.766 (MiniLM, library-mean baselines).
    direct_min_cos: float = 0.6
    #: max over groups of |ln(sent scale / own scale)|: honest 0, 1.1x inflation = 0.095.
    #: Widened by the batch's own ln-noise estimate (see the three fields below), so honest
    #: senders adding zero-mean DP noise (privacy.py) pass; without noise it binds as is.
    scale_ratio_tol: float = 0.05
    #: Per batch, s = 1.4826 x MAD over its (row, group) entries of ln(sent / own): the noise
    #: a DP sender added, 0 for a sender without DP. Max over groups may reach
    #: scale_ratio_tol + scale_noise_k x s (3 groups of Gaussian noise: 0.02% of rows over).
    scale_noise_k: float = 4.0
    #: Location tests, robust to zero-mean noise: the median of ln(sent / own) of a row (over
    #: its groups) and of a batch (over all its entries) must be within scale_ratio_tol +
    #: scale_location_k standard errors (1.2533 s / sqrt(entries)) of 0. Inflation x f
    #: shifts both medians by ln f (x1.5: 0.405), noise does not.
    scale_location_k: float = 3.0
    #: A batch whose noise estimate s exceeds this (ln units) fails scale_mismatch whole:
    #: its scales cannot be checked. 0.15 ~ DP sigma 0.004 on this corpus's scales (~0.038);
    #: it also bounds the cover noise gives an attacker. Fleet-wide: DP senders must stay
    #: below it (docs/deltasoup.md, "Differential privacy and the scale checks").
    scale_noise_max: float = 0.15
    #: Robust z of ln(scale) per group, max over groups: honest 99.9th percentile 3.3.
    scale_tau: float = 5.0
    #: (c) needs this many rows in the round: median/MAD of 8 rows put honest z above 5.
    #: Below it only (b)'s per-row scale ratio against the receiver's own scales binds.
    scale_min_rows: int = 64
    #: 1.4826 makes MAD estimate sigma for normal data; 1.0 is the paper's raw MAD.
    mad_scale: float = 1.4826
    eps: float = 1e-8
    #: Sender-weighted quantile of all qualities a sender's median may not exceed. With
    #: Byzantine weight < 1/3 it lies between the honest 0.66 and 0.99 quantiles.
    quality_quantile: float = 0.66
    quality_min_rows: int = 8
    #: Sampling allowance: a sender's median must exceed that quantile by more than
    #: quality_z x its standard error 1.2533 sigma / sqrt(rows), sigma = 1.4826 x MAD of
    #: its own qualities, capped at that of all (sender-weighted). 0 = the bare quantile.
    #: Honest nodes sending 20-60 rows a round otherwise lose ~3% of rows to chance.
    quality_z: float = 3.0
    #: Refuse a batch whose mean text is nearer another domain by more than this cosine.
    domain_margin: float = 0.0
    domain_min_senders: int = 3
    dedup_cosine: float = 0.95
    #: A batch fails (reputation 0) when more than this share of its rows is filtered.
    batch_fail_fraction: float = 0.2
    merge_space: str = "own"  # "own": receiver's embeddings; "received": e_hat (paper)
    exact_cluster_rows: int = 8192
    block_rows: int = 2048
    #: 0 = as many hash tables as make a pair at cos = dedup_cosine missed with probability
    #: <= lsh_miss (21 tables of 10 bits for 12,500 rows); > 0 = that many.
    lsh_tables: int = 0
    lsh_bucket_rows: int = 16
    lsh_miss: float = 2e-4
    lsh_seed: int = 0x5EED


@dataclass
class BatchOutcome:
    cid: bytes
    sender: bytes
    rows: int
    drop: Drop | None = None  # phase-1 refusal of the whole batch
    dropped_rows: dict[Drop, int] = field(default_factory=dict)  # without DEFERRED
    #: False for a phase-1 refusal other than low_reputation, or when more than
    #: `batch_fail_fraction` of the rows evaluated this round failed a CHARGED check. Only
    #: a False from a CHARGED reason costs reputation (`charged`).
    passed: bool = True
    #: The outcome was recorded in the sender's reputation (as `passed`).
    charged: bool = False
    #: Rows over this round's cap held in the sender's backlog (not dropped, not penalised).
    deferred_rows: int = 0
    #: True for rows of an earlier round's batch taken from the backlog (`rows` = taken).
    from_backlog: bool = False


@dataclass
class RoundResult:
    """One aggregation round: merged experiences (columnar) and the fate of every row.

    Row arrays cover the rows of batches that passed phase 1, in processing order.
    """

    texts: list[str]
    domains: list[str]
    embeddings: np.ndarray
    quality: np.ndarray
    sources: list[bytes]
    created_ms: np.ndarray
    iteration: np.ndarray
    cluster_size: np.ndarray
    outcomes: list[BatchOutcome]
    row_sender: list[bytes]
    row_text: list[str]
    row_domain: list[str]
    row_drop: list[Drop | None]
    row_cluster: np.ndarray  # merged index of each kept row, -1 for dropped rows
    row_scores: dict[str, np.ndarray]
    #: True for rows taken from the backlog (received and deferred in an earlier round).
    row_backlog: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))

    def __len__(self) -> int:
        return len(self.texts)

    def experiences(self) -> list[Experience]:
        return [
            Experience(
                text=self.texts[i],
                embedding=self.embeddings[i],
                quality=float(self.quality[i]),
                domain=self.domains[i],
                source=self.sources[i],
                created_ms=int(self.created_ms[i]),
                iteration=int(self.iteration[i]),
            )
            for i in range(len(self.texts))
        ]


class ReplayGuard:
    """Seen CIDs and (sender, seq) pairs, each with its batch timestamp, plus the newest seq
    per sender. `prune(now_ms)` forgets entries whose batch is older than `horizon_ms`
    (2 T_max): freshness refuses such a batch anyway, so memory stays bounded by the traffic
    of one horizon. `_newest` is kept (one int per sender) so `old_seq` still holds."""

    def __init__(self, seq_window: int, horizon_ms: int | None = None) -> None:
        self.seq_window = seq_window
        self.horizon_ms = horizon_ms
        self._cids: dict[bytes, int] = {}
        self._seqs: dict[tuple[bytes, int], tuple[bytes, int]] = {}
        self._newest: dict[bytes, int] = {}
        self._pruned_at: int | None = None

    def __len__(self) -> int:
        return len(self._cids) + len(self._seqs)

    def check(self, batch: Batch) -> Drop | None:
        if batch.cid in self._cids:
            return Drop.REPLAY
        other = self._seqs.get((batch.sender, batch.seq))
        if other is not None and other[0] != batch.cid:
            return Drop.EQUIVOCATION
        newest = self._newest.get(batch.sender)
        if newest is not None and batch.seq + self.seq_window < newest:
            return Drop.OLD_SEQ
        return None

    def remember(self, batch: Batch) -> None:
        self._cids[batch.cid] = batch.timestamp_ms
        self._seqs[(batch.sender, batch.seq)] = (batch.cid, batch.timestamp_ms)
        self._newest[batch.sender] = max(batch.seq, self._newest.get(batch.sender, batch.seq))

    def prune(self, now_ms: int) -> None:
        """Forget entries older than the horizon; a full pass at most once per half horizon."""
        if self.horizon_ms is None:
            return
        if self._pruned_at is not None and now_ms - self._pruned_at < self.horizon_ms // 2:
            return
        self._pruned_at = now_ms
        limit = now_ms - self.horizon_ms
        self._cids = {c: t for c, t in self._cids.items() if t >= limit}
        self._seqs = {k: v for k, v in self._seqs.items() if v[1] >= limit}


class DeltaSoup:
    """A receiver's aggregation state: replay guard and reputation book, plus its embedder."""

    def __init__(
        self,
        embedder: Embedder,
        *,
        reputation: ReputationBook | None = None,
        config: DeltaSoupConfig | None = None,
    ) -> None:
        self.embedder = embedder
        self.config = config or DeltaSoupConfig()
        self.reputation = reputation or ReputationBook(threshold=self.config.reputation_threshold)
        self.replay = ReplayGuard(self.config.seq_window, 2 * self.config.max_age_ms)
        #: Deferred rows per sender: verified batches or row subsets of them (same CID).
        self._backlog: dict[bytes, list[Batch]] = {}

    def backlog_rows(self, sender: bytes | None = None) -> int:
        """Rows waiting in the backlog of `sender` (of all senders when None)."""
        parts = (
            self._backlog.get(sender, [])
            if sender is not None
            else [b for bs in self._backlog.values() for b in bs]
        )
        return sum(len(b) for b in parts)

    # -- phase 1 ---------------------------------------------------------------------------

    def verify(self, batch: Batch, now_ms: int, *, max_age_ms: int | None = None) -> Drop | None:
        """Phase 1 for one decoded batch; records the batch as seen if it passes.

        `max_age_ms` widens T_max for batches fetched by repair: the fleet accepted them while
        fresh, and the node's durable store (not this in-memory guard) refuses their replay.
        """
        cfg = self.config
        if (
            batch.model != self.embedder.model_id
            or batch.dim != self.embedder.dimension
            or batch.group != cfg.group
        ):
            return Drop.WRONG_MODEL
        try:
            check_freshness(batch, now_ms, cfg.max_age_ms if max_age_ms is None else max_age_ms)
        except WireError as exc:
            return Drop.STALE if exc.reason is Reject.STALE else Drop.FUTURE
        self.replay.prune(now_ms)
        seen = self.replay.check(batch)
        if seen is not None:
            return seen
        if self.reputation.score(batch.sender) < cfg.reputation_threshold:
            return Drop.LOW_REPUTATION
        self.replay.remember(batch)
        return None

    def record_wire_error(self, exc: WireError) -> None:
        """A decode failure costs reputation only when the signature had verified."""
        if exc.sender is not None:
            self.reputation.record(exc.sender, passed=False)

    # -- the round -------------------------------------------------------------------------

    def aggregate(
        self, batches: Iterable[Batch], now_ms: int, *, max_age_ms: int | None = None
    ) -> RoundResult:
        cfg = self.config
        ordered = sorted(batches, key=lambda b: (b.sender, b.seq, b.cid))
        outcomes: list[BatchOutcome] = []
        accepted: list[Batch] = []
        # The backlog first, in (sender, seq, cid) order: already verified, not re-checked
        # for freshness or replay (its CIDs are seen), refused only for low reputation.
        backlog = sorted(
            (b for parts in self._backlog.values() for b in parts),
            key=lambda b: (b.sender, b.seq, b.cid),
        )
        self._backlog = {}
        for part in backlog:
            outcome = BatchOutcome(part.cid, part.sender, len(part), from_backlog=True)
            if self.reputation.score(part.sender) < cfg.reputation_threshold:
                outcome.drop = Drop.LOW_REPUTATION
            else:
                accepted.append(part)
            outcomes.append(outcome)
        n_backlog = len(accepted)
        for batch in ordered:
            outcome = BatchOutcome(batch.cid, batch.sender, len(batch))
            outcome.drop = self.verify(batch, now_ms, max_age_ms=max_age_ms)
            if outcome.drop is None:
                accepted.append(batch)
            elif outcome.drop is not Drop.LOW_REPUTATION:
                outcome.passed = False
            outcomes.append(outcome)
        passed_outcomes = [o for o in outcomes if o.drop is None]
        rows = _filter_rows(accepted, self.embedder, cfg, n_backlog)
        deferred_code = _CODE[Drop.DEFERRED]
        judged: set[int] = set()
        for bi, outcome in enumerate(passed_outcomes):
            codes = rows.drop[rows.batch == bi]
            counts = np.bincount(codes, minlength=len(_DROPS) + 1)
            outcome.deferred_rows = int(counts[deferred_code])
            outcome.dropped_rows = {
                _DROPS[c - 1]: int(counts[c])
                for c in range(1, len(counts))
                if counts[c] and c != deferred_code
            }
            over = outcome.dropped_rows.get(Drop.OVER_CAP, 0)
            # Every evaluated row went through the CHARGED checks (b) before the relative
            # ones (c-e): a row dropped only by a relative check passed all provable ones.
            failed = sum(n for d, n in outcome.dropped_rows.items() if d in CHARGED)
            evaluated = outcome.rows - over - outcome.deferred_rows
            outcome.passed = failed <= cfg.batch_fail_fraction * evaluated
            if evaluated > 0:
                judged.add(id(outcome))
            if outcome.deferred_rows:
                local = np.flatnonzero(codes == deferred_code)
                part = _subset(accepted[bi], local)
                self._backlog.setdefault(part.sender, []).append(part)
        for outcome in outcomes:
            # Deferral is neither pass nor fail: a batch none of whose rows were evaluated
            # this round (all deferred or over the cap) leaves reputation alone; so does a
            # phase-1 refusal nobody can be charged for (replay, stale, future, old_seq).
            if outcome.drop is None and id(outcome) not in judged:
                continue
            if outcome.drop is None or outcome.drop in CHARGED:
                outcome.charged = True
                self.reputation.record(outcome.sender, outcome.passed)
        result = _merge(accepted, rows, outcomes, cfg)
        result.row_backlog = rows.batch < n_backlog
        return result


def _subset(batch: Batch, rows: np.ndarray) -> Batch:
    """The rows `rows` of a batch as a Batch with the same CID, sender, seq and timestamp."""
    if len(rows) == len(batch):
        return batch
    return dataclasses.replace(
        batch,
        texts=tuple(batch.texts[i] for i in rows),
        signs=batch.signs[rows],
        scales=batch.scales[rows],
        quality=batch.quality[rows],
        iteration=batch.iteration[rows],
        ids=tuple(batch.ids[i] for i in rows),
    )


# -- phase 2 and 3 ---------------------------------------------------------------------------


@dataclass
class _Rows:
    batch: np.ndarray  # batch index per row
    node: np.ndarray  # sender index per row
    received: np.ndarray  # e_hat
    own: np.ndarray  # receiver's embedding of the text
    quality: np.ndarray
    ids: list[bytes]
    drop: np.ndarray  # 0 kept, else _CODE
    scores: dict[str, np.ndarray]


def _id_rank(ids: Sequence[bytes]) -> np.ndarray:
    """Rank of each id in byte order (equal ids share a rank)."""
    if not ids:
        return np.zeros(0, dtype=np.int64)
    _, inverse = np.unique(np.array(ids, dtype=object), return_inverse=True)
    return inverse.astype(np.int64)


def _rowwise_cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    num = np.einsum("ij,ij->i", a, b)
    den = np.sqrt(np.einsum("ij,ij->i", a, a) * np.einsum("ij,ij->i", b, b))
    return num / np.maximum(den, 1e-30)


def weighted_median(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Median of each column of `values` (n,) or (n, k) with row weights (lower median)."""
    return weighted_quantile(values, weights, 0.5)


def weighted_quantile(values: np.ndarray, weights: np.ndarray, q: float) -> np.ndarray:
    v = values if values.ndim == 2 else values[:, None]
    order = np.argsort(v, axis=0, kind="stable")
    cum = np.cumsum(weights[order], axis=0)
    idx = np.argmax(cum >= q * cum[-1], axis=0)
    out = np.take_along_axis(v, order, axis=0)[idx, np.arange(v.shape[1])]
    return out if values.ndim == 2 else out[0]


def _robust_z(values: np.ndarray, weights: np.ndarray, cfg: DeltaSoupConfig) -> np.ndarray:
    med = weighted_median(values, weights)
    mad = weighted_median(np.abs(values - med), weights)
    return np.abs(values - med) / (cfg.mad_scale * mad + cfg.eps)


def _filter_rows(
    batches: Sequence[Batch], embedder: Embedder, cfg: DeltaSoupConfig, n_backlog: int = 0
) -> _Rows:
    """Phases 2 and 3 over `batches`, whose first `n_backlog` entries come from the backlog."""
    d = embedder.dimension
    if not batches:
        empty = np.zeros(0, dtype=np.int64)
        return _Rows(
            empty,
            empty,
            np.zeros((0, d), np.float32),
            np.zeros((0, d), np.float32),
            np.zeros(0, np.float32),
            [],
            empty,
            {},
        )
    senders = sorted({b.sender for b in batches})
    node_of = {s: i for i, s in enumerate(senders)}
    sizes = [len(b) for b in batches]
    batch_idx = np.repeat(np.arange(len(batches)), sizes)
    node = np.repeat(np.array([node_of[b.sender] for b in batches]), sizes)
    ids = [i for b in batches for i in b.ids]
    texts = [t for b in batches for t in b.texts]
    quality = np.concatenate([b.quality for b in batches]).astype(np.float64)
    n = len(ids)
    drop = np.zeros(n, dtype=np.int64)

    # (a) per-node cap: each sender keeps `cap` of the rows it offers (backlog + new),
    # its backlog first in (seq, id) order, then new rows by smallest id (a function of the
    # set and the backlog); the next `max_backlog_rows` are deferred, the rest dropped.
    fresh = batch_idx >= n_backlog
    # Votes: NEW rows per sender (a sender with only a backlog votes 0), so backlogs cannot
    # raise the cap, and a round without new traffic drains at `min_cap` per sender.
    counts = np.bincount(node[fresh], minlength=len(senders))
    cap = max(cfg.min_cap, math.floor(cfg.cap_factor * float(np.median(counts))))
    if cfg.max_cap is not None:
        cap = min(cap, cfg.max_cap)
    seqs = np.repeat(np.array([b.seq for b in batches]), sizes)
    id_rank = _id_rank(ids)
    # lexsort: last key is the primary one.
    order = np.lexsort((batch_idx, id_rank, np.where(fresh, 0, seqs), fresh, node))
    first = np.searchsorted(node[order], np.arange(len(senders)))
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n) - first[node[order]]
    drop[rank >= cap] = _CODE[Drop.DEFERRED]
    drop[rank >= cap + cfg.max_backlog_rows] = _CODE[Drop.OVER_CAP]

    # Phase 2: decompress; and the receiver's own embedding of every text.
    # Only rows inside the cap are embedded (deferred ones will be, in their round).
    received = np.concatenate([b.embeddings() for b in batches])
    live = drop == 0
    own = np.zeros((n, d), dtype=np.float32)
    live_idx = np.flatnonzero(live)
    if len(live_idx):
        own[live_idx] = embedder.embed([texts[i] for i in live_idx])
    weight = np.zeros(n)
    kept_counts = np.bincount(node[live], minlength=len(senders))
    weight[live] = 1.0 / kept_counts[node[live]]

    # (b) semantic consistency in delta space, plus scale ratios and the direct cosine.
    sem_cos = np.empty(n)
    ratio = np.empty(n)
    row_med = np.zeros(n)  # median over groups of ln(sent / own), per row
    noise = np.zeros(n)  # the row's batch: 1.4826 MAD of ln(sent / own)
    batch_loc = np.zeros(n)  # the row's batch: median of ln(sent / own)
    batch_loc_tol = np.full(n, cfg.scale_ratio_tol)
    start = 0
    for b, m in zip(batches, sizes, strict=True):
        sl = slice(start, start + m)
        code = bitdelta.encode(own[sl], b.baseline, b.group)
        mine = bitdelta.decode(code, b.baseline)
        sent_delta, own_delta = received[sl] - b.baseline, mine - b.baseline
        sem_cos[sl] = _rowwise_cos(sent_delta, own_delta)
        # Text equal to the baseline (a one-experience library): no delta on either side.
        both_zero = (np.abs(sent_delta).max(axis=1) < 1e-7) & (np.abs(own_delta).max(axis=1) < 1e-7)
        sem_cos[sl][both_zero] = 1.0
        with np.errstate(divide="ignore", invalid="ignore"):
            lr = np.log((b.scales.astype(np.float64) + cfg.eps) / (code.scales + cfg.eps))
        ratio[sl] = np.abs(lr).max(axis=1)
        row_med[sl] = np.median(lr, axis=1)
        # Noise estimate and location over the batch's rows evaluated this round (own
        # embeddings exist only for those); deferred rows are judged in their own round.
        lv = lr[live[sl]]
        if len(lv):
            loc = float(np.median(lv))
            spread = 1.4826 * float(np.median(np.abs(lv - loc)))
            noise[sl], batch_loc[sl] = spread, loc
            batch_loc_tol[sl] = cfg.scale_ratio_tol + cfg.scale_location_k * 1.2533 * spread / (
                math.sqrt(lv.size)
            )
        start += m
    direct = _rowwise_cos(received, own)
    bad = live & ((sem_cos < cfg.semantic_min_cos) | (direct < cfg.direct_min_cos))
    drop[bad] = _CODE[Drop.SEMANTIC_MISMATCH]
    # Scale checks robust to zero-mean (DP) noise: the noise widens the per-group bound;
    # the row and batch medians, which noise leaves near 0 and inflation shifts, stay tight.
    groups = max(b.scales.shape[1] for b in batches)
    row_loc_tol = cfg.scale_ratio_tol + cfg.scale_location_k * 1.2533 * noise / math.sqrt(groups)
    bad = (drop == 0) & (
        (ratio > cfg.scale_ratio_tol + cfg.scale_noise_k * noise)
        | (np.abs(row_med) > row_loc_tol)
        | (np.abs(batch_loc) > batch_loc_tol)
        | (noise > cfg.scale_noise_max)
    )
    drop[bad] = _CODE[Drop.SCALE_MISMATCH]

    # The relative checks (c, d) compare a row with the round's other rows. Only rows that
    # passed every check the receiver verifies itself take part: a flood of rows whose
    # vectors do not match their texts (a Sybil's cheapest attack) must not set the median
    # that honest rows are measured against. Sender weights are recomputed over them.
    live = drop == 0
    weight = np.zeros(n)
    kept_counts = np.bincount(node[live], minlength=len(senders))
    weight[live] = 1.0 / kept_counts[node[live]]

    # (c) scale distribution (sender-weighted robust z of ln scale, per group).
    log_scales = np.log(np.concatenate([b.scales for b in batches]).astype(np.float64) + cfg.eps)
    scale_z = np.zeros(n)
    if live.sum() >= cfg.scale_min_rows and log_scales.shape[1] == max(
        b.scales.shape[1] for b in batches
    ):
        scale_z[live] = _robust_z(log_scales[live], weight[live], cfg).max(axis=1)
    drop[(drop == 0) & (scale_z > cfg.scale_tau)] = _CODE[Drop.SCALE_OUTLIER]

    # (d) confidence inflation: a sender whose median quality is above the pooled quantile.
    if live.any():
        ceiling = weighted_quantile(quality[live], weight[live], cfg.quality_quantile)
        q_med = weighted_median(quality[live], weight[live])
        sigma = 1.4826 * weighted_median(np.abs(quality[live] - q_med), weight[live])
        for k in range(len(senders)):
            mine_q = quality[live & (node == k)]
            if len(mine_q) < cfg.quality_min_rows:
                continue
            own_med = float(np.median(mine_q))
            own_sigma = 1.4826 * float(np.median(np.abs(mine_q - own_med)))
            err = 1.2533 * min(own_sigma, sigma) / math.sqrt(len(mine_q))
            if own_med > ceiling + cfg.quality_z * err:
                drop[live & (node == k) & (drop == 0)] = _CODE[Drop.QUALITY_OUTLIER]

    # (e) domain tag: batch mean text embedding vs sender-weighted domain centroids.
    domain_margin = np.zeros(n)
    ok = drop == 0
    domains = sorted({b.domain for b in batches})
    cents, cent_names = [], []
    for dom in domains:
        rows_d = ok & np.isin(batch_idx, [i for i, b in enumerate(batches) if b.domain == dom])
        nodes_d = np.unique(node[rows_d])
        if len(nodes_d) >= cfg.domain_min_senders:
            # Aggregate per sender first (its mean), then the coordinate-wise median over
            # senders: each sender one vote, whatever it sent.
            means = np.stack([own[rows_d & (node == k)].mean(axis=0) for k in nodes_d])
            c = np.median(means, axis=0)
            cents.append(c / max(np.linalg.norm(c), 1e-30))
            cent_names.append(dom)
    if len(cents) >= 2:
        cmat = np.stack(cents)
        start = 0
        for b, m in zip(batches, sizes, strict=True):
            sl = slice(start, start + m)
            start += m
            if b.domain not in cent_names:
                continue
            mean = own[sl][ok[sl]].mean(axis=0) if ok[sl].any() else own[sl].mean(axis=0)
            sims = cmat @ (mean / max(np.linalg.norm(mean), 1e-30))
            j = cent_names.index(b.domain)
            margin = sims[j] - np.delete(sims, j).max()
            domain_margin[sl] = margin
            if margin < -cfg.domain_margin:
                drop[sl][ok[sl]] = _CODE[Drop.DOMAIN_MISMATCH]
    scores = {
        "semantic_cos": sem_cos,
        "direct_cos": direct,
        "scale_log_ratio": ratio,
        "scale_log_median": row_med,
        "scale_noise": noise,
        "scale_batch_median": batch_loc,
        "scale_z": scale_z,
        "domain_margin": domain_margin,
    }
    return _Rows(batch_idx, node, received, own, quality, ids, drop, scores)


# -- phase 4 ---------------------------------------------------------------------------------


def _lsh_union_rows(
    unit: np.ndarray,
    keys: np.ndarray,
    sorted_keys: np.ndarray,
    orders: np.ndarray,
    theta: float,
    parent: np.ndarray,
) -> int:
    """Union-find over pairs sharing a bucket in some table with cos > theta (numba).

    keys (n, tables) bucket of each row per table (row-major, so one pair's keys are two
    contiguous runs), orders (tables, n) rows sorted by key, sorted_keys their keys.
    A pair is compared once: in the first table where it shares a bucket (later tables skip
    it by comparing the earlier keys), and not at all when already in one component, which
    cannot change the components. Returns the number of dot products computed.
    """
    n, tables = keys.shape
    d = unit.shape[1]
    dots = 0
    for t in range(tables):
        o = orders[t]
        kt = sorted_keys[t]
        s = 0
        while s < n:
            e = s + 1
            while e < n and kt[e] == kt[s]:
                e += 1
            for a in range(s, e):
                i = o[a]
                for b in range(a + 1, e):
                    j = o[b]
                    seen = False
                    for u in range(t):
                        if keys[i, u] == keys[j, u]:
                            seen = True
                            break
                    if seen:
                        continue
                    ri = i
                    while parent[ri] != ri:
                        parent[ri] = parent[parent[ri]]  # path halving
                        ri = parent[ri]
                    rj = j
                    while parent[rj] != rj:
                        parent[rj] = parent[parent[rj]]
                        rj = parent[rj]
                    if ri == rj:
                        continue
                    acc = np.float32(0.0)
                    for k in range(d):
                        acc += unit[i, k] * unit[j, k]
                    dots += 1
                    if acc > theta:
                        if ri < rj:
                            parent[rj] = ri
                        else:
                            parent[ri] = rj
            s = e
    return dots


_lsh_kernel = None


def _lsh_union():
    """The numba-compiled `_lsh_union_rows` (disk-cached), imported on first use."""
    global _lsh_kernel
    if _lsh_kernel is None:
        from numba import njit

        _lsh_kernel = njit(cache=True, nogil=True, fastmath=True)(_lsh_union_rows)
    return _lsh_kernel


def _canonical_labels(roots: np.ndarray) -> np.ndarray:
    """Component labels numbered by each component's smallest row (scipy's order)."""
    _, first, inverse = np.unique(roots, return_index=True, return_inverse=True)
    rank = np.empty(len(first), dtype=np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(len(first))
    return rank[inverse]


def cosine_clusters(
    x: np.ndarray,
    theta: float,
    *,
    exact_rows: int = 8192,
    block_rows: int = 2048,
    tables: int = 0,
    bucket_rows: int = 16,
    miss: float = 2e-4,
    seed: int = 0x5EED,
) -> np.ndarray:
    """Single-linkage cluster labels of the rows of x over edges cos > theta.

    Exact (all pairs, in blocks of `block_rows`) up to `exact_rows` rows. Above that, only
    pairs that share a bucket in one of the random-hyperplane hash tables are compared (a
    numba union-find kernel, each pair at most once): k bits per table so buckets hold
    ~`bucket_rows` rows on average; a pair at cos theta (angle a) shares a k-bit bucket with
    probability p = (1 - a/pi)^k, and `tables` = 0 takes the fewest tables T with
    (1 - p)^T <= `miss` (theta 0.95: p = 0.899^k; k = 10 needs 21 tables). A pair more
    similar than theta is found with higher probability still.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = x.shape[0]
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    unit = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-30)
    unit = unit.astype(np.float32)
    rows_e: list[np.ndarray] = []
    cols_e: list[np.ndarray] = []
    if n <= exact_rows:
        for lo in range(0, n, block_rows):
            hit = (unit[lo : lo + block_rows] @ unit[lo:].T) > theta
            np.fill_diagonal(hit, False)  # self-pairs; hit[i, i] is row lo + i with itself
            any_row = np.flatnonzero(hit.any(axis=1))
            if len(any_row) == 0:
                continue
            r, c = np.nonzero(hit[any_row])
            r, c = any_row[r] + lo, c + lo
            keep = c > r
            rows_e.append(r[keep])
            cols_e.append(c[keep])
    else:
        bits = max(1, min(30, round(math.log2(n / bucket_rows))))
        if tables <= 0:
            p = (1.0 - math.acos(min(max(theta, -1.0), 1.0)) / math.pi) ** bits
            tables = max(1, math.ceil(math.log(miss) / math.log1p(-p)))
        rng = np.random.default_rng(seed)
        planes = rng.standard_normal((tables * bits, x.shape[1])).astype(np.float32)
        code_bits = ((unit @ planes.T) > 0).reshape(n, tables, bits).astype(np.int64)
        keys = np.ascontiguousarray((code_bits << np.arange(bits)).sum(axis=2))  # (n, T)
        orders = np.ascontiguousarray(np.argsort(keys.T, axis=1, kind="stable"))
        sorted_keys = np.ascontiguousarray(np.take_along_axis(keys.T, orders, axis=1))
        parent = np.arange(n, dtype=np.int64)
        _lsh_union()(unit, keys, sorted_keys, orders, np.float32(theta), parent)
        roots = parent.copy()
        for _ in range(64):  # full path compression (halving left chains of length <= 2^k)
            nxt = roots[roots]
            if np.array_equal(nxt, roots):
                break
            roots = nxt
        return _canonical_labels(roots)
    r = np.concatenate(rows_e) if rows_e else np.zeros(0, np.int64)
    c = np.concatenate(cols_e) if cols_e else np.zeros(0, np.int64)
    graph = coo_matrix((np.ones(len(r), dtype=np.int8), (r, c)), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    return labels.astype(np.int64)


def _merge(
    batches: Sequence[Batch], rows: _Rows, outcomes: list[BatchOutcome], cfg: DeltaSoupConfig
) -> RoundResult:
    d = rows.own.shape[1]
    kept = np.flatnonzero(rows.drop == 0)
    space = rows.own if cfg.merge_space == "own" else rows.received
    batch_domain = np.array([b.domain for b in batches], dtype=object)
    row_domain = batch_domain[rows.batch] if len(batches) else np.zeros(0, dtype=object)
    label = np.full(len(rows.ids), -1, dtype=np.int64)
    next_label = 0
    for dom in sorted(set(row_domain[kept].tolist())):
        members = kept[row_domain[kept] == dom]
        local = cosine_clusters(
            space[members],
            cfg.dedup_cosine,
            exact_rows=cfg.exact_cluster_rows,
            block_rows=cfg.block_rows,
            tables=cfg.lsh_tables,
            bucket_rows=cfg.lsh_bucket_rows,
            miss=cfg.lsh_miss,
            seed=cfg.lsh_seed,
        )
        label[members] = local + next_label
        next_label += int(local.max()) + 1 if len(local) else 0
    k = next_label
    q = rows.quality
    # Eq. 19: sum q e / sum q per cluster. Most clusters are single rows (copied as they
    # are); the rest are summed as sorted segments.
    merged = np.zeros((k, d), dtype=np.float32)
    sizes_k = np.bincount(label[kept], minlength=k) if k else np.zeros(0, np.int64)
    single = kept[sizes_k[label[kept]] == 1]
    merged[label[single]] = space[single]
    multi = kept[sizes_k[label[kept]] > 1]
    if len(multi):
        multi = multi[np.argsort(label[multi], kind="stable")]
        lab = label[multi]
        starts = np.flatnonzero(np.r_[True, lab[1:] != lab[:-1]])
        sums = np.add.reduceat(space[multi] * q[multi, None], starts, axis=0)
        merged[lab[starts]] = sums / np.add.reduceat(q[multi], starts)[:, None]
    # Representative: highest quality, then smallest id (order-independent).
    id_rank = _id_rank(rows.ids)
    ranked = kept[np.lexsort((id_rank[kept], -q[kept], label[kept]))]
    lab_sorted = label[ranked]
    heads = np.flatnonzero(np.r_[True, lab_sorted[1:] != lab_sorted[:-1]]) if len(kept) else kept
    reps = ranked[heads].tolist()
    row_sender = [batches[b].sender for b in rows.batch]
    row_text = [t for b in batches for t in b.texts]
    created = np.array([batches[rows.batch[r]].timestamp_ms for r in reps], dtype=np.int64)
    iteration = np.concatenate([b.iteration for b in batches]) if batches else np.zeros(0)
    return RoundResult(
        texts=[row_text[r] for r in reps],
        domains=[str(row_domain[r]) for r in reps],
        embeddings=merged,
        quality=np.array([q[r] for r in reps], dtype=np.float64),
        sources=[row_sender[r] for r in reps],
        created_ms=created,
        iteration=np.array([iteration[r] for r in reps], dtype=np.int64),
        cluster_size=sizes_k,
        outcomes=outcomes,
        row_sender=row_sender,
        row_text=row_text,
        row_domain=[str(x) for x in row_domain],
        row_drop=[None if c == 0 else _DROPS[c - 1] for c in rows.drop],
        row_cluster=label,
        row_scores=rows.scores,
    )


# -- the paper's filter, as written, for comparison ------------------------------------------


def paper_filter_scores(x: np.ndarray, eps: float = 1e-8, mad_scale: float = 1.0) -> np.ndarray:
    """Eq. 17-18 over pooled rows: mean_j |x_j - med_j| / (mad_scale * MAD_j + eps).

    The paper rejects score > tau = 2.0. Kept only to measure it (docs/deltasoup.md).
    """
    med = np.median(x, axis=0)
    mad = np.median(np.abs(x - med), axis=0)
    return (np.abs(x - med) / (mad_scale * mad + eps)).mean(axis=1)


def rows_by_sender(result: RoundResult) -> dict[bytes, list[int]]:
    out: dict[bytes, list[int]] = defaultdict(list)
    for i, s in enumerate(result.row_sender):
        out[s].append(i)
    return dict(out)
