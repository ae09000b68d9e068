"""DeltaSoup's merge (phase 4 of fai_core/deltasoup.py): one class per merge rule.

A merge rule turns the rows the filters kept into merged experiences. The caller chooses
it (`DeltaSoup(merge=...)`); without one, `DeltaSoupConfig.merge_space` picks between the
two rules below, which differ only in the space rows are clustered and averaged in:

- `OwnSpaceMerge` (the default): the receiver's own embeddings of the texts. A sender
  cannot move a merged vector by what it sends, only by which texts it sends.
- `ReceivedSpaceMerge`: the senders' BitDelta reconstructions e_hat (the paper's rule).

Both: per domain, single-linkage clusters over cos > `dedup_cosine` (`cosine_clusters`:
exact in blocks up to `exact_cluster_rows` rows, random-hyperplane LSH above), Eq. 19
quality-weighted mean per cluster, q = the cluster's max, text and provenance of the
member with the highest q (ties: smallest id), so the result is independent of row order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np

from fai_core.deltasoup_filters import RoundRows, id_rank

if TYPE_CHECKING:
    from fai_core.deltasoup import DeltaSoupConfig


@dataclass
class Merged:
    """A merge rule's output: the merged experiences (columnar) and each row's cluster."""

    texts: list[str]
    domains: list[str]
    embeddings: np.ndarray
    quality: np.ndarray
    sources: list[bytes]
    created_ms: np.ndarray
    iteration: np.ndarray
    cluster_size: np.ndarray
    row_cluster: np.ndarray  # merged index of each kept row, -1 for dropped rows


class MergeRule(Protocol):
    """How the rows a round kept (`rows.drop == 0`) become merged experiences."""

    name: str

    def merge(self, rows: RoundRows, cfg: DeltaSoupConfig) -> Merged:
        """Cluster the kept rows and average each cluster into one merged experience."""
        ...


# -- clustering ------------------------------------------------------------------------------


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


def _exact_edges(unit: np.ndarray, theta: float, block_rows: int):
    """(rows, cols) of every pair i < j with cos > theta, all pairs in blocks of rows."""
    n = unit.shape[0]
    rows_e: list[np.ndarray] = []
    cols_e: list[np.ndarray] = []
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
    r = np.concatenate(rows_e) if rows_e else np.zeros(0, np.int64)
    c = np.concatenate(cols_e) if cols_e else np.zeros(0, np.int64)
    return r, c


def _lsh_labels(unit, theta, tables, bucket_rows, miss, seed) -> np.ndarray:
    """Single-linkage labels over pairs that share a bucket in some hash table."""
    n = unit.shape[0]
    bits = max(1, min(30, round(math.log2(n / bucket_rows))))
    if tables <= 0:
        p = (1.0 - math.acos(min(max(theta, -1.0), 1.0)) / math.pi) ** bits
        tables = max(1, math.ceil(math.log(miss) / math.log1p(-p)))
    rng = np.random.default_rng(seed)
    planes = rng.standard_normal((tables * bits, unit.shape[1])).astype(np.float32)
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
    if n > exact_rows:
        return _lsh_labels(unit, theta, tables, bucket_rows, miss, seed)
    r, c = _exact_edges(unit, theta, block_rows)
    graph = coo_matrix((np.ones(len(r), dtype=np.int8), (r, c)), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    return labels.astype(np.int64)


# -- the merge rules -------------------------------------------------------------------------


class _ClusterMerge:
    """Eq. 19 over single-linkage clusters per domain, in the space `space` returns."""

    name = ""

    def space(self, rows: RoundRows) -> np.ndarray:
        raise NotImplementedError

    def labels(self, rows: RoundRows, space: np.ndarray, cfg: DeltaSoupConfig):
        """(cluster label of each row, -1 for dropped rows; number of clusters)."""
        kept = np.flatnonzero(rows.drop == 0)
        row_domain = _row_domains(rows)
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
        return label, next_label

    def merge(self, rows: RoundRows, cfg: DeltaSoupConfig) -> Merged:
        """Cluster, average (Eq. 19) and pick each cluster's representative."""
        space = self.space(rows)
        d = rows.own.shape[1]
        kept = np.flatnonzero(rows.drop == 0)
        label, k = self.labels(rows, space, cfg)
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
        reps = _representatives(rows, kept, label)
        batches = rows.batches
        row_domain = _row_domains(rows)
        iteration = np.concatenate([b.iteration for b in batches]) if batches else np.zeros(0)
        return Merged(
            texts=[rows.texts[r] for r in reps],
            domains=[str(row_domain[r]) for r in reps],
            embeddings=merged,
            quality=np.array([q[r] for r in reps], dtype=np.float64),
            sources=[batches[rows.batch[r]].sender for r in reps],
            created_ms=np.array([batches[rows.batch[r]].timestamp_ms for r in reps], np.int64),
            iteration=np.array([iteration[r] for r in reps], dtype=np.int64),
            cluster_size=sizes_k,
            row_cluster=label,
        )


def _row_domains(rows: RoundRows) -> np.ndarray:
    """Each row's domain tag (its batch's), as an object array."""
    if not rows.batches:
        return np.zeros(0, dtype=object)
    return np.array([b.domain for b in rows.batches], dtype=object)[rows.batch]


def _representatives(rows: RoundRows, kept: np.ndarray, label: np.ndarray) -> list[int]:
    """Per cluster (in label order) its member with the highest quality, then smallest id."""
    q = rows.quality
    ranks = id_rank(rows.ids)
    ranked = kept[np.lexsort((ranks[kept], -q[kept], label[kept]))]
    lab_sorted = label[ranked]
    heads = np.flatnonzero(np.r_[True, lab_sorted[1:] != lab_sorted[:-1]]) if len(kept) else kept
    return ranked[heads].tolist()


class OwnSpaceMerge(_ClusterMerge):
    """Cluster and average the receiver's own embeddings of the kept texts (the default):
    what a sender sent decides only which texts are merged, never where they point."""

    name = "own"

    def space(self, rows: RoundRows) -> np.ndarray:
        """This node's own embeddings of the kept texts."""
        return rows.own


class ReceivedSpaceMerge(_ClusterMerge):
    """Cluster and average the senders' reconstructions e_hat, as the paper does (Eq. 19)."""

    name = "received"

    def space(self, rows: RoundRows) -> np.ndarray:
        """The senders' reconstructions (baseline + BitDelta delta)."""
        return rows.received


def merge_rule_for(space: str) -> MergeRule:
    """The merge rule `DeltaSoupConfig.merge_space` names: "own", anything else e_hat."""
    return OwnSpaceMerge() if space == "own" else ReceivedSpaceMerge()
