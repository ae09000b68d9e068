"""DeltaSoup: Byzantine-robust aggregation of received batches (paper section 5, Algorithm 3).

The four phases of Algorithm 3, with the filter redesigned because the paper's, applied as
written to BitDelta reconstructions, rejects every honest vector (paper-notes row 10; see
`paper_filter_scores`, kept for comparison) and never rejects a vector inside the honest
spread. docs/deltasoup.md has the measurements behind every threshold below.

1. Verify (per batch; `decode_envelope` already checked hash, signature, shape and
   finiteness): model id and dimension are the receiver's, timestamp within T_max, CID not
   seen before, no second CID for a (sender, seq), seq not far behind the sender's newest,
   sender's reputation not below the threshold.
2. Decompress: BitDelta reconstruction e_hat of every experience.
3. Filter, in this order:
   a. per-node cap: a sender keeps at most `cap` rows per round, cap = the median over
      senders of their row counts (one vote per sender), so one node sending 10x more
      weighs no more than one node; every statistic below also weighs each sender 1 in
      total (row weight 1 / rows of its sender).
   b. semantic consistency: the receiver embeds each text with its own model, compresses
      that embedding against the batch's own baseline and group size, and compares with
      what was sent in delta space: cos(e_hat - b, r - b) and the per-group scale ratios.
      An honest sender produces the same signs and scales (cos 1.0 up to platform jitter);
      any change of signs, scales or text shows. cos(e_hat, embed(text)) is checked too,
      loosely: it stops a baseline chosen so that e_hat is garbage while the deltas match.
   c. scale distribution: log scales per group against the sender-weighted median, robust
      z with MAD (times `mad_scale`).
   d. confidence inflation: a sender whose median quality lies above the sender-weighted
      `quality_quantile` of all qualities is refused for the round.
   e. domain tag: a batch whose mean text embedding is nearer another domain's centroid
      (sender-weighted coordinate-wise median of the round) than its own is refused.
4. Merge: per domain, single-linkage clusters of cosine > theta_dup (exact in matrix blocks
   up to `exact_cluster_rows` rows, random-hyperplane LSH buckets above, so the cost grows
   ~ n^1.3, not n^2); Eq. 19 confidence-weighted mean, q = max of the cluster, text and
   provenance of the cluster's best member (highest q, then smallest id).

The result does not depend on the order batches arrived in: a round is processed in
(sender, seq, cid) order and every choice above is a function of the set of rows.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np

from fai_core import bitdelta
from fai_core.embedding import Embedder
from fai_core.errors import WireError
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


#: Row reason codes: 0 = kept, i + 1 = the i-th Drop.
_DROPS = tuple(Drop)
_CODE = {d: i + 1 for i, d in enumerate(_DROPS)}


@dataclass(frozen=True, slots=True)
class DeltaSoupConfig:
    """Every threshold of the pipeline; docs/deltasoup.md says how each default was set."""

    max_age_ms: int = 300_000
    reputation_threshold: float = 0.3
    #: A batch whose seq is this far behind the sender's newest is an old one replayed.
    seq_window: int = 4096
    cap_factor: float = 1.0
    min_cap: int = 8
    #: Honest: 1.0 (0.974 at 1e-3 embedding jitter); worst harmful text: 0.60.
    semantic_min_cos: float = 0.9
    #: Honest cos(e_hat, embed(text)) >= 0.766 (MiniLM, library-mean baselines).
    direct_min_cos: float = 0.6
    #: max over groups of |ln(sent scale / own scale)|: honest 0, 1.1x inflation = 0.095.
    scale_ratio_tol: float = 0.05
    #: Robust z of ln(scale) per group, max over groups: honest 99.9th percentile 3.3.
    scale_tau: float = 5.0
    #: 1.4826 makes MAD estimate sigma for normal data; 1.0 is the paper's raw MAD.
    mad_scale: float = 1.4826
    eps: float = 1e-8
    #: Sender-weighted quantile of all qualities a sender's median may not exceed. With
    #: Byzantine weight < 1/3 it lies between the honest 0.66 and 0.99 quantiles.
    quality_quantile: float = 0.66
    quality_min_rows: int = 8
    #: Refuse a batch whose mean text is nearer another domain by more than this cosine.
    domain_margin: float = 0.0
    domain_min_senders: int = 3
    dedup_cosine: float = 0.95
    #: A batch fails (reputation 0) when more than this share of its rows is filtered.
    batch_fail_fraction: float = 0.2
    merge_space: str = "own"  # "own": receiver's embeddings; "received": e_hat (paper)
    exact_cluster_rows: int = 8192
    block_rows: int = 2048
    lsh_tables: int = 16
    lsh_bucket_rows: int = 64
    lsh_seed: int = 0x5EED


@dataclass
class BatchOutcome:
    cid: bytes
    sender: bytes
    rows: int
    drop: Drop | None = None  # phase-1 refusal of the whole batch
    dropped_rows: dict[Drop, int] = field(default_factory=dict)
    passed: bool = True


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
    """Seen CIDs and (sender, seq) pairs. In memory: entries older than 2 T_max could go,
    since freshness refuses such batches anyway (not pruned here; a round's worth is small)."""

    def __init__(self, seq_window: int) -> None:
        self.seq_window = seq_window
        self._cids: set[bytes] = set()
        self._seqs: dict[tuple[bytes, int], bytes] = {}
        self._newest: dict[bytes, int] = {}

    def check(self, batch: Batch) -> Drop | None:
        if batch.cid in self._cids:
            return Drop.REPLAY
        other = self._seqs.get((batch.sender, batch.seq))
        if other is not None and other != batch.cid:
            return Drop.EQUIVOCATION
        newest = self._newest.get(batch.sender)
        if newest is not None and batch.seq + self.seq_window < newest:
            return Drop.OLD_SEQ
        return None

    def remember(self, batch: Batch) -> None:
        self._cids.add(batch.cid)
        self._seqs[(batch.sender, batch.seq)] = batch.cid
        self._newest[batch.sender] = max(batch.seq, self._newest.get(batch.sender, batch.seq))


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
        self.replay = ReplayGuard(self.config.seq_window)

    # -- phase 1 ---------------------------------------------------------------------------

    def verify(self, batch: Batch, now_ms: int) -> Drop | None:
        """Phase 1 for one decoded batch; records the batch as seen if it passes."""
        cfg = self.config
        if batch.model != self.embedder.model_id or batch.dim != self.embedder.dimension:
            return Drop.WRONG_MODEL
        try:
            check_freshness(batch, now_ms, cfg.max_age_ms)
        except WireError as exc:
            return Drop.STALE if exc.reason.value == "stale" else Drop.FUTURE
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

    def aggregate(self, batches: Iterable[Batch], now_ms: int) -> RoundResult:
        cfg = self.config
        ordered = sorted(batches, key=lambda b: (b.sender, b.seq, b.cid))
        outcomes: list[BatchOutcome] = []
        accepted: list[Batch] = []
        for batch in ordered:
            outcome = BatchOutcome(batch.cid, batch.sender, len(batch))
            outcome.drop = self.verify(batch, now_ms)
            if outcome.drop is None:
                accepted.append(batch)
            elif outcome.drop is not Drop.LOW_REPUTATION:
                outcome.passed = False
            outcomes.append(outcome)
        passed_outcomes = [o for o in outcomes if o.drop is None]
        rows = _filter_rows(accepted, self.embedder, cfg)
        for bi, outcome in enumerate(passed_outcomes):
            codes = rows.drop[rows.batch == bi]
            counts = np.bincount(codes, minlength=len(_DROPS) + 1)
            outcome.dropped_rows = {
                _DROPS[c - 1]: int(counts[c]) for c in range(1, len(counts)) if counts[c]
            }
            filtered = sum(n for d, n in outcome.dropped_rows.items() if d is not Drop.OVER_CAP)
            outcome.passed = filtered <= cfg.batch_fail_fraction * outcome.rows
        for outcome in outcomes:
            if outcome.drop is not Drop.LOW_REPUTATION:
                self.reputation.record(outcome.sender, outcome.passed)
        return _merge(accepted, rows, outcomes, cfg)


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


def _filter_rows(batches: Sequence[Batch], embedder: Embedder, cfg: DeltaSoupConfig) -> _Rows:
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

    # (a) per-node cap: keep the `cap` smallest ids of each sender (a function of the set).
    counts = np.bincount(node, minlength=len(senders))
    cap = max(cfg.min_cap, math.floor(cfg.cap_factor * float(np.median(counts))))
    order = sorted(range(n), key=lambda r: (node[r], ids[r], batch_idx[r]))
    rank = np.empty(n, dtype=np.int64)
    seen_per_node = np.zeros(len(senders), dtype=np.int64)
    for r in order:
        rank[r] = seen_per_node[node[r]]
        seen_per_node[node[r]] += 1
    drop[rank >= cap] = _CODE[Drop.OVER_CAP]

    # Phase 2: decompress; and the receiver's own embedding of every text.
    received = np.concatenate([b.embeddings() for b in batches])
    own = np.ascontiguousarray(embedder.embed(texts), dtype=np.float32)
    live = drop == 0
    weight = np.zeros(n)
    kept_counts = np.bincount(node[live], minlength=len(senders))
    weight[live] = 1.0 / kept_counts[node[live]]

    # (b) semantic consistency in delta space, plus scale ratios and the direct cosine.
    sem_cos = np.empty(n)
    ratio = np.empty(n)
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
            lr = np.abs(np.log((b.scales.astype(np.float64) + cfg.eps) / (code.scales + cfg.eps)))
        ratio[sl] = lr.max(axis=1)
        start += m
    direct = _rowwise_cos(received, own)
    bad = live & ((sem_cos < cfg.semantic_min_cos) | (direct < cfg.direct_min_cos))
    drop[bad] = _CODE[Drop.SEMANTIC_MISMATCH]
    bad = (drop == 0) & (ratio > cfg.scale_ratio_tol)
    drop[bad] = _CODE[Drop.SCALE_MISMATCH]

    # (c) scale distribution (sender-weighted robust z of ln scale, per group).
    log_scales = np.log(np.concatenate([b.scales for b in batches]).astype(np.float64) + cfg.eps)
    scale_z = np.zeros(n)
    if live.any() and log_scales.shape[1] == max(b.scales.shape[1] for b in batches):
        scale_z[live] = _robust_z(log_scales[live], weight[live], cfg).max(axis=1)
    drop[(drop == 0) & (scale_z > cfg.scale_tau)] = _CODE[Drop.SCALE_OUTLIER]

    # (d) confidence inflation: a sender whose median quality is above the pooled quantile.
    if live.any():
        ceiling = weighted_quantile(quality[live], weight[live], cfg.quality_quantile)
        for k in range(len(senders)):
            mine_q = quality[live & (node == k)]
            if len(mine_q) >= cfg.quality_min_rows and np.median(mine_q) > ceiling:
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
        "scale_z": scale_z,
        "domain_margin": domain_margin,
    }
    return _Rows(batch_idx, node, received, own, quality, ids, drop, scores)


# -- phase 4 ---------------------------------------------------------------------------------


def cosine_clusters(
    x: np.ndarray,
    theta: float,
    *,
    exact_rows: int = 8192,
    block_rows: int = 2048,
    tables: int = 16,
    bucket_rows: int = 64,
    seed: int = 0x5EED,
) -> np.ndarray:
    """Single-linkage cluster labels of the rows of x over edges cos > theta.

    Exact (all pairs, in blocks of `block_rows`) up to `exact_rows` rows. Above that, only
    pairs that share a bucket in one of `tables` random-hyperplane hashes are compared: a
    pair at cos 0.95 (18 degrees) shares a k-bit bucket with probability 0.9^k, and k is
    chosen so buckets hold ~`bucket_rows` rows on average, so near-duplicates are found with
    high probability (>= 99.5% at 16 tables, k <= 10) while the work grows ~ n^1.3.
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
        rng = np.random.default_rng(seed)
        planes = rng.standard_normal((tables * bits, x.shape[1])).astype(np.float32)
        code_bits = (unit @ planes.T) > 0
        weights = (1 << np.arange(bits)).astype(np.int64)
        for t in range(tables):
            keys = code_bits[:, t * bits : (t + 1) * bits].astype(np.int64) @ weights
            order = np.argsort(keys, kind="stable")
            sorted_keys = keys[order]
            bounds = np.flatnonzero(np.diff(sorted_keys)) + 1
            starts = np.concatenate([[0], bounds])
            ends = np.concatenate([bounds, [n]])
            for s, e in zip(starts, ends, strict=True):
                if e - s < 2:
                    continue
                members = order[s:e]
                sims = unit[members] @ unit[members].T
                r, c = np.nonzero(np.triu(sims > theta, k=1))
                rows_e.append(members[r])
                cols_e.append(members[c])
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
    ranked = sorted(kept.tolist(), key=lambda r: (label[r], -q[r], rows.ids[r]))
    reps: list[int] = []
    for r in ranked:
        if len(reps) == label[r]:
            reps.append(r)
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
