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
3. Filter, in this order (each check is a `deltasoup_filters` object; `DeltaSoup(filters=)`
   composes others, `DEFAULT_FILTERS` is the order below):
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
   steering screen (after b, before c): the text alone against fai_core.text_screen's
      keyword rules (instruction overrides, disabled verification, exfiltration, downloads
      piped to a shell, URLs). A heuristic, so a screened row costs its sender nothing.
   c. scale distribution: log scales per group against the sender-weighted median, robust
      z with MAD (times `mad_scale`); only with >= `scale_min_rows` rows in the round.
   d. quality claims and e. domain tag, against the receiver's sender histories
      (fai_core.deltasoup_history: per domain and sender, every verified row it sent, over
      all rounds): a sender whose mean claim lies far above the median sender's, or whose
      texts lie far from the domain's centroid (or nearer another domain's), is refused in
      that domain; one that is suspicious but not yet beyond doubt has its rows wait in the
      backlog for more evidence (at most `history_max_wait_ms`), as do the rows of a domain
      with too few senders for a reference. The one-round versions (`ConfidenceInflation`,
      `DomainTag`: the round's own medians) remain in `ONE_ROUND_FILTERS`.
4. Merge (a `deltasoup_merge` rule object, `DeltaSoup(merge=)`): per domain,
   single-linkage clusters of cosine > theta_dup (exact in matrix blocks up to
   `exact_cluster_rows` rows, random-hyperplane LSH above: a numba union-find kernel
   compares each colliding pair once, with enough tables for a miss rate <= `lsh_miss` at
   cos = theta_dup); Eq. 19 confidence-weighted mean, q = max of the cluster, text and
   provenance of the cluster's best member (highest q, then smallest id).

Reputation (ReputationBook) records only what this node can verify itself (`CHARGED`):
a phase-1 wrong_model or equivocation, and per evaluated batch whether more than
`batch_fail_fraction` of its evaluated rows failed (b), the checks against the receiver's
own re-embedding. The relative checks (c-e) compare a sender with the round's other
senders, whose statistics Sybils choose: they drop rows (filtering stays Byzantine-robust)
and never cost reputation. Neither does the steering screen: a keyword match proves nothing
about the sender's intent. Nor do replay, stale, future or old_seq, since anyone can
re-publish a signed batch late or twice.

The result does not depend on the order batches arrived in: a round is processed in
(sender, seq, cid) order (backlog first) and every choice above is a function of the set
of rows and of the backlog, itself a function of earlier rounds' sets.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from fai_core import bitdelta

# The filters and merge rules live in their own modules; the statistics and clustering
# they use stay importable from here as before.
from fai_core.deltasoup_filters import DEFAULT_FILTERS, RoundRows, RowFilter, Stage
from fai_core.deltasoup_filters import rowwise_cos as _rowwise_cos  # noqa: F401
from fai_core.deltasoup_filters import weighted_median as weighted_median
from fai_core.deltasoup_filters import weighted_quantile as weighted_quantile
from fai_core.deltasoup_history import SenderHistory
from fai_core.deltasoup_merge import MergeRule, merge_rule_for
from fai_core.deltasoup_merge import cosine_clusters as cosine_clusters
from fai_core.embedding import Embedder
from fai_core.errors import Reject, WireError
from fai_core.experience import Experience

# Drop and its CHARGED/UNCHARGED split live in fai_core.refusals (every refusal vocabulary
# in one module); importable from here as before.
from fai_core.refusals import CHARGED as CHARGED
from fai_core.refusals import UNCHARGED as UNCHARGED
from fai_core.refusals import Drop as Drop
from fai_core.reputation import ReputationBook
from fai_core.wire import Batch, check_freshness

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
    #: Sender histories (fai_core.deltasoup_history), behind the default domain and quality
    #: checks (docs/deltasoup.md, "Sender histories"): a domain's reference needs this many
    #: senders heard in it...
    history_min_senders: int = 5
    #: ...and a sender is refused in a domain when its mean text cosine to the domain's
    #: centroid lies this many standard errors below the median sender's, or its mean
    #: quality claim this many above; past `history_defer_z` its rows wait for evidence
    #: (DEFERRED, at most `history_max_wait_ms` from when this node first judged them).
    history_reject_z: float = 4.5
    #: A sender whose mean claim is at most this is never an inflater, whatever the middle:
    #: Sybils claiming 0.05 who are most of a domain's senders would otherwise make every
    #: moderate honest claim an outlier, for as long as their histories last.
    history_quality_ceiling: float = 0.8
    history_defer_z: float = 2.5
    history_max_wait_ms: int = 300_000
    #: A sender is judged in a domain once it has sent this many rows there: one
    #: peripheral lesson is honest variety, not evidence.
    history_min_rows: int = 1
    #: Floors of the single-row spreads (cosine, quality units): senders sending
    #: near-identical rows cannot shrink the yardstick honest variety is measured with.
    history_domain_sigma: float = 0.08
    history_quality_sigma: float = 0.1
    #: Ceiling of a single claim's spread. Claims lie in (0, 1) (uniform ones spread 0.29),
    #: and a middle set by two or three senders can make the measured spread anything:
    #: [0.69, 0.21] gave 0.7, under which claims at 0.99 were 1.5 standard errors out.
    history_quality_sigma_max: float = 0.25
    #: Floors of the between-sender spread: an honest node working on a corner of its
    #: domain, or scoring a little high, is never more than gap / tau standard errors out
    #: however much it sends (a 0.2 gap in quality: 2.9).
    history_domain_tau: float = 0.03
    history_quality_tau: float = 0.03
    #: Ceiling of the between-sender spread. Estimated from the few senders on the honest
    #: side that have sent many rows, it can be anything (0.26 in quality once, under
    #: which claims at 0.98 against a middle of 0.6 were 1.5 standard errors out).
    history_tau_max: float = 0.06
    #: This node's own rows in a domain needed before they bound its quality middle.
    history_own_rows: int = 8
    #: Senders with this many rows estimate the between-sender spread (tau).
    history_tau_rows: int = 8
    #: Rows per sender kept to estimate the single-row spread; senders kept per domain.
    history_recent_rows: int = 8
    history_max_senders: int = 1024
    #: Senders whose mean texts are this close (cosine) vote once (`vote_weights`).
    history_same_cos: float = 0.98
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
    """What one round decided about one received batch: the whole-batch refusal if any, the
    rows dropped by reason, and whether the sender is charged (node metrics and reputation)."""

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
        """The merged rows as experiences, in merge order: what the library receives."""
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
        """The phase-1 refusal for a batch already seen (replay), a second batch under a seen
        seq (equivocation) or a seq far behind the sender's newest (old_seq); None if new."""
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
        """Record an admitted batch, so later copies and rival batches under its seq are caught."""
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
    """A receiver's aggregation state: replay guard and reputation book, plus its embedder.

    Implements `fai_core.aggregation.Aggregator`. The phase-3 checks are `filters` (run in
    order, `deltasoup_filters.DEFAULT_FILTERS` by default) and phase 4 is `merge` (by
    default the rule `config.merge_space` names), so a caller can compose a different
    pipeline without touching phase 1, the backlog or the reputation rules.
    """

    def __init__(
        self,
        embedder: Embedder,
        *,
        reputation: ReputationBook | None = None,
        config: DeltaSoupConfig | None = None,
        filters: Sequence[RowFilter] | None = None,
        merge: MergeRule | None = None,
        history: SenderHistory | None = None,
    ) -> None:
        self.embedder = embedder
        self.config = config or DeltaSoupConfig()
        self.filters: tuple[RowFilter, ...] = tuple(DEFAULT_FILTERS if filters is None else filters)
        self.merge: MergeRule = merge or merge_rule_for(self.config.merge_space)
        self.reputation = reputation or ReputationBook(threshold=self.config.reputation_threshold)
        self.replay = ReplayGuard(self.config.seq_window, 2 * self.config.max_age_ms)
        #: Deferred rows per sender: verified batches or row subsets of them (same CID).
        self._backlog: dict[bytes, list[Batch]] = {}
        #: What every sender sent per domain over all rounds: the domain and quality checks'
        #: references (persisted by the node next to its reputation book).
        self.history = history if history is not None else SenderHistory(embedder.dimension)

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
        """One round: phase 1 on `batches` (the backlog first), the filters, reputation, the
        merge. `max_age_ms` widens T_max as in `verify`."""
        outcomes, accepted, n_backlog = self._admit(batches, now_ms, max_age_ms)
        rows = _filter_rows(
            accepted, self.embedder, self.config, n_backlog, self.filters, self.history, now_ms
        )
        self._judge(outcomes, accepted, rows)
        self._record_history(rows, now_ms)
        result = _merge(rows, outcomes, self.config, self.merge)
        result.row_backlog = rows.batch < n_backlog
        return result

    def _record_history(self, rows: RoundRows, now_ms: int) -> None:
        """Store the round's rows in the sender histories; rows the histories deferred are
        remembered (counted once, with when they were first judged)."""
        if rows.reference is None:
            return
        verdict = rows.cache.get("history") or self.history.judge(rows, self.config)
        waiting = rows.reference & (rows.drop == _CODE[Drop.DEFERRED])
        first = self.history.first_seen(rows, now_ms)
        ids = [(b.cid, i) for b, _ in rows.slices() for i in b.ids]
        held = {ids[j]: int(first[j]) for j in np.flatnonzero(waiting)}
        self.history.apply(verdict, self.config, held)  # type: ignore[arg-type]

    def _admit(
        self, batches: Iterable[Batch], now_ms: int, max_age_ms: int | None
    ) -> tuple[list[BatchOutcome], list[Batch], int]:
        """Phase 1: (outcomes, accepted batches backlog first, how many are backlog parts)."""
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
        return outcomes, accepted, n_backlog

    def _judge(self, outcomes: list[BatchOutcome], accepted: list[Batch], rows: RoundRows) -> None:
        """Row counts per outcome, deferral into the backlog, and reputation (CHARGED only)."""
        cfg = self.config
        passed_outcomes = [o for o in outcomes if o.drop is None]
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


def _filter_rows(
    batches: Sequence[Batch],
    embedder: Embedder,
    cfg: DeltaSoupConfig,
    n_backlog: int = 0,
    filters: Sequence[RowFilter] = DEFAULT_FILTERS,
    history: SenderHistory | None = None,
    now_ms: int = 0,
) -> RoundRows:
    """Phases 2 and 3 over `batches`, whose first `n_backlog` entries come from the backlog.

    Each filter refuses rows still kept, in order (a row keeps the first reason it gets);
    phase 2 runs before the first filter past the BUDGET stage and the relative checks'
    reference population is fixed before the first RELATIVE one (deltasoup_filters.py).
    """
    rows = RoundRows.collect(batches, embedder.dimension, n_backlog)
    rows.history, rows.now_ms = history, now_ms
    if not batches:
        return rows
    for f in filters:
        if f.stage is not Stage.BUDGET and rows.embedded is None:
            rows.decompress_and_embed(embedder)
        if f.stage is Stage.RELATIVE and rows.reference is None:
            rows.fix_reference(cfg.history_same_cos)
        verdict = f.refuse(rows, cfg)
        rows.drop[verdict.refused & (rows.drop == 0)] = _CODE[f.drop]
        rows.scores.update(verdict.scores)
    if rows.embedded is None:
        rows.decompress_and_embed(embedder)
    return rows


# -- phase 4 ---------------------------------------------------------------------------------


def _merge(
    rows: RoundRows, outcomes: list[BatchOutcome], cfg: DeltaSoupConfig, rule: MergeRule
) -> RoundResult:
    """The merge rule's output plus the fate of every row, as a RoundResult."""
    merged = rule.merge(rows, cfg)
    batches = rows.batches
    row_domain = [b.domain for b in batches for _ in range(len(b))]
    return RoundResult(
        texts=merged.texts,
        domains=merged.domains,
        embeddings=merged.embeddings,
        quality=merged.quality,
        sources=merged.sources,
        created_ms=merged.created_ms,
        iteration=merged.iteration,
        cluster_size=merged.cluster_size,
        outcomes=outcomes,
        row_sender=[batches[b].sender for b in rows.batch],
        row_text=list(rows.texts),
        row_domain=row_domain,
        row_drop=[None if c == 0 else _DROPS[c - 1] for c in rows.drop],
        row_cluster=merged.row_cluster,
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
    """Merged-row indices grouped by the sender that contributed each row."""
    out: dict[bytes, list[int]] = defaultdict(list)
    for i, s in enumerate(result.row_sender):
        out[s].append(i)
    return dict(out)
