"""The experience library (the paper's SemanticMemoryManager), on LanceDB on disk.

The library is a state-based CRDT: a set of experiences keyed by content id. Two nodes
that distil the same pattern in the same domain produce the same id, so a merge keeps one
record per id, the greater under a total order on the record (quality first, then source,
created_ms, iteration and the embedding's bytes, so that ties never depend on arrival
order). A capacity bound keeps the records greatest under (quality, id) and evicts the
rest. Both rules are pure functions of the set of records seen, which is why replicas that
saw the same experiences, in any order, split into any batches, hold the same library.
Provenance columns (origin, received_from, batch_cid, received_ms) describe this replica's
copy only: when a record arrives that is identical under the order to the stored one, the
stored row and its provenance stay, so replaying a batch never rewrites anything.

Durability: every write is one LanceDB commit (an append, or one merge_insert that also
deletes evicted rows). Lance writes data files first and then publishes a new manifest
version atomically, so a process killed at any instant leaves the last committed version
readable, and a call that returned has committed. Files of an interrupted commit are
orphans that no manifest references; `optimize` removes them once they are a week old.
(Tested against SIGKILL; survival of power loss also depends on Lance's fsync policy.)

The library mean embedding (`baseline`) is a running float64 sum and a count kept in
`state.json` beside the table, written atomically (temp file + rename) after each commit
together with the table version it describes. On open, a state whose version is not the
table's (a kill between commit and state write) is rebuilt from one scan of the table.
One writer per library: `open` takes an advisory lock on `LOCK`, which the kernel releases
when the process dies, so a crashed writer never blocks its successor.

Maintenance policy (`maintain`, run automatically after `maintain_every` = 32 write
commits that wrote >= 10% of the library's rows, or after 256 commits whatever their size;
or by the node from a background task): every small write leaves a fragment and a
manifest, and reads slow down as they pile up, so maintenance compacts fragments, folds
rows written since into the existing indices without retraining, and deletes versions
older than `keep_versions`. Below `index_threshold` (50,000) rows search is exact; at the
threshold an IVF_SQ cosine index is trained, and retrained from scratch whenever the table
has doubled since the last training (k-means centroids drift as the library grows). A
BTREE index on `id` keeps the per-batch id lookup of merges from scanning the table, and
a BITMAP index on `domain` does the same for domain-filtered searches and counts.
LanceDB's compaction has a fixed 1M-row target and rewrites any smaller fragment it
merges, so below 1M rows each maintenance rewrites the table once; the 10% rule keeps a
bulk load's total rewriting linear in its size.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from fai_core import clock
from fai_core.embedding import Embedder
from fai_core.errors import FaiError
from fai_core.experience import PUBLIC_KEY_LEN, Experience

TABLE = "experiences"
#: Lance data storage version of new tables (see `_open_table`).
TABLE_FORMAT = "2.1"
STATE_FILE = "state.json"
LOCK_FILE = "LOCK"
STATE_FORMAT = 1

#: Rows below which search is exact (flat scan); at 50,000 x 384 a flat scan takes a few
#: milliseconds, an ANN index trades recall for speed only where it pays.
DEFAULT_INDEX_THRESHOLD = 50_000
#: Fewer rows than this make k-means training meaningless; smaller thresholds are raised.
MIN_INDEX_ROWS = 256
#: Retrain the ANN index from scratch once the table has grown by this factor since the
#: last training; in between, `optimize` appends new rows to the existing partitions.
RETRAIN_GROWTH = 2.0
#: Write commits between two maintenance passes (compaction, index update, old versions).
DEFAULT_MAINTAIN_EVERY = 32
#: ...provided the rows written since are at least this fraction of the library, or the
#: commits reach MAINTAIN_COMMIT_CAP x maintain_every. Compaction rewrites the table (see
#: above), so bulk loads maintain geometrically (O(n) total rewrite), while a trickle of
#: tiny writes still gets compacted before its fragments slow reads down.
MAINTAIN_ROW_FRACTION = 0.1
MAINTAIN_COMMIT_CAP = 8
#: Old table versions kept after compaction (readers holding an old version keep working
#: this long; the latest version is never removed).
DEFAULT_KEEP_VERSIONS = timedelta(minutes=10)
#: Ids per SQL IN list; keeps predicates small enough to plan quickly.
_IN_CHUNK = 1024
_DAY_MS = 86_400_000
DEFAULT_STALE_AFTER_MS = 30 * _DAY_MS


class LibraryError(FaiError):
    """Misuse of a library: wrong dimension, locked by another writer, no embedder."""


@dataclass(frozen=True, slots=True)
class Entry:
    """An experience plus where this replica got it from."""

    experience: Experience
    origin: str  # "local" | "remote"
    received_from: bytes | None  # peer key for remote rows, None for local ones
    batch_cid: bytes | None  # the wire batch the row arrived in, if any
    received_ms: int  # when this replica stored the row


@dataclass(frozen=True, slots=True)
class Hit:
    """One search result: the stored entry and its cosine distance to the query, which
    recall turns into relevance and cuts off at max_distance."""

    entry: Entry
    distance: float  # cosine distance: 0 same direction, 2 opposite


@dataclass(frozen=True, slots=True)
class MergeResult:
    """What one merge or add_local did, counted so the node can report it (the API's
    `inserted`, a round's library delta) and name the ids capacity dropped."""

    inserted: int = 0  # ids new to the library
    replaced: int = 0  # ids whose stored record lost to the incoming one
    ignored: int = 0  # incoming records that lost to (or equal) a stored or sibling record
    evicted: tuple[bytes, ...] = field(default_factory=tuple)  # ids dropped by capacity


def _schema(dimension: int) -> pa.Schema:
    return pa.schema(
        [
            # Lowercase hex of the binary CIDv1: LanceDB's BTREE does not index binary columns,
            # and hex keeps byte order, so (quality, id) ranks the same as on raw bytes.
            pa.field("id", pa.string(), nullable=False),
            pa.field("text", pa.string(), nullable=False),
            pa.field("domain", pa.string(), nullable=False),
            pa.field("quality", pa.float64(), nullable=False),
            pa.field("embedding", pa.list_(pa.float32(), dimension), nullable=False),
            pa.field("source", pa.binary(), nullable=False),
            pa.field("created_ms", pa.uint64(), nullable=False),
            pa.field("iteration", pa.uint8(), nullable=False),
            pa.field("origin", pa.string(), nullable=False),
            pa.field("received_from", pa.binary(), nullable=True),
            pa.field("batch_cid", pa.binary(), nullable=True),
            pa.field("received_ms", pa.int64(), nullable=False),
        ]
    )


#: What a search returns: every stored column (a Hit carries a full Entry) and the distance.
_HIT_COLUMNS = [f.name for f in _schema(1)] + ["_distance"]
_KEY_COLUMNS = ["id", "quality", "source", "created_ms", "iteration", "embedding"]


def record_key(e: Experience) -> tuple[float, bytes, int, int, bytes]:
    """Total order among records of one id; the greater record wins a merge."""
    return (e.quality, e.source, e.created_ms, e.iteration, _f32_bytes(e.embedding))


def _f32_bytes(vec: np.ndarray) -> bytes:
    return np.ascontiguousarray(vec, dtype="<f4").tobytes()


def _id_list(ids: Iterable[bytes]) -> str:
    return ",".join(f"'{i.hex()}'" for i in ids)


def _chunks(seq: Sequence, size: int) -> Iterator[Sequence]:
    for start in range(0, len(seq), size):
        yield seq[start : start + size]


def _embeddings(column: pa.ChunkedArray | pa.Array, dimension: int) -> np.ndarray:
    """(n, d) float32 view of a fixed-size-list column, without a Python-level loop."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    if len(column) == 0:
        return np.zeros((0, dimension), dtype=np.float32)
    flat = column.flatten().to_numpy(zero_copy_only=False)
    return flat.reshape(len(column), dimension)


class ExperienceLibrary:
    """A node's experience library. Open with `ExperienceLibrary.open`; one writer per path."""

    def __init__(self) -> None:  # pragma: no cover - use open()
        raise TypeError("use ExperienceLibrary.open(path, dimension, ...)")

    # ----------------------------------------------------------------- opening / closing

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        dimension: int,
        embedder: Embedder | None = None,
        capacity: int | None = None,
        *,
        index_threshold: int = DEFAULT_INDEX_THRESHOLD,
        maintain_every: int = DEFAULT_MAINTAIN_EVERY,
        keep_versions: timedelta = DEFAULT_KEEP_VERSIONS,
        nprobes: int = 10,
        refine_factor: int | None = None,
    ) -> ExperienceLibrary:
        """Open or create the library at `path` (a directory).

        `capacity` may change between opens; a library above a lowered capacity is trimmed
        here, by the same (quality, id) rule merges use.
        """
        import lancedb  # 2 s import; keep it off the import path of fai_core

        if not 1 <= dimension <= 4096:
            raise LibraryError(f"dimension must be in [1, 4096], got {dimension}")
        if embedder is not None and embedder.dimension != dimension:
            raise LibraryError(
                f"embedder {embedder.model_id} has dimension {embedder.dimension}, "
                f"library has {dimension}"
            )
        if capacity is not None and capacity < 1:
            raise LibraryError("capacity must be a positive integer or None")
        root = Path(path)
        root.mkdir(parents=True, exist_ok=True)
        lock = open(root / LOCK_FILE, "a+b")  # noqa: SIM115 - held for the library's life
        try:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            raise LibraryError(f"library {root} is open in another writer") from None

        self = object.__new__(cls)
        self._root = root
        self._lock = lock
        self._dimension = dimension
        self._embedder = embedder
        self._capacity = capacity
        self._index_threshold = max(MIN_INDEX_ROWS, int(index_threshold))
        self._maintain_every = max(1, int(maintain_every))
        self._keep_versions = keep_versions
        self._nprobes = nprobes
        self._refine_factor = refine_factor
        self._id_filter: _IdFilter | None = None  # built on first write, from the table
        try:
            self._db = lancedb.connect(str(root))
            self._table = self._open_table()
            self._load_state()
            if capacity is not None and self._count > capacity:
                self._merge([], origin="local", received_from=None, batch_cid=None)
        except BaseException:
            lock.close()
            raise
        return self

    def _open_table(self):
        schema = _schema(self._dimension)
        table_dir = self._root / f"{TABLE}.lance"
        versions = table_dir / "_versions"
        if table_dir.exists() and not (versions.exists() and any(versions.iterdir())):
            # Killed while creating the table: nothing was ever committed, start over.
            import shutil

            shutil.rmtree(table_dir)
        if table_dir.exists():
            table = self._db.open_table(TABLE)
            have = table.schema.field("embedding").type
            if not pa.types.is_fixed_size_list(have) or have.list_size != self._dimension:
                raise LibraryError(f"library at {self._root} stores vectors of type {have}")
            return table
        # Lance file format 2.1, not the 2.2 default: 2.2 compresses near-constant columns
        # (origin, iteration, source, received_ms within a batch) so that a search's take of
        # 10 scattered rows decodes whole chunks. Measured at 1M rows: taking the non-vector
        # columns of 10 random rows costs ~25 ms on 2.2 and ~3 ms on 2.1. Tables created
        # before this keep their format until rewritten.
        return self._db.create_table(
            TABLE, schema=schema, storage_options={"new_table_data_storage_version": TABLE_FORMAT}
        )

    def close(self) -> None:
        """Release the writer lock, so another process may open the library; idempotent."""
        if self._lock is not None:
            self._lock.close()  # releases the flock
            self._lock = None

    def __enter__(self) -> ExperienceLibrary:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----------------------------------------------------------------- persisted state

    def _load_state(self) -> None:
        state: dict[str, Any] = {}
        with contextlib.suppress(OSError, ValueError):
            state = json.loads((self._root / STATE_FILE).read_text())
        self._commits_since_maintain = int(state.get("commits_since_maintain", 0))
        self._rows_since_maintain = int(state.get("rows_since_maintain", 0))
        self._index_rows = int(state.get("index_rows", 0))
        if (
            state.get("format") == STATE_FORMAT
            and state.get("dimension") == self._dimension
            and state.get("table_version") == self._table.version
            and len(state.get("sum", ())) == self._dimension
        ):
            self._sum = np.array(state["sum"], dtype=np.float64)
            self._count = int(state["count"])
            return
        # The state lags the table (killed between commit and state write) or is missing:
        # one scan rebuilds it from the rows, which are the truth.
        self._rebuild_baseline()
        if self._index_rows == 0 and self._vector_index_name() is not None:
            self._index_rows = self._count
        self._save_state()

    def _rebuild_baseline(self) -> None:
        total = np.zeros(self._dimension, dtype=np.float64)
        count = 0
        reader = self._table.search().select(["embedding"]).limit(None).to_batches(65_536)
        for batch in reader:
            emb = _embeddings(batch.column("embedding"), self._dimension)
            total += emb.sum(axis=0, dtype=np.float64)
            count += len(emb)
        self._sum, self._count = total, count

    def _save_state(self) -> None:
        state = {
            "format": STATE_FORMAT,
            "dimension": self._dimension,
            "table_version": self._table.version,
            "count": self._count,
            "sum": self._sum.tolist(),  # float repr round-trips exactly through JSON
            "commits_since_maintain": self._commits_since_maintain,
            "rows_since_maintain": self._rows_since_maintain,
            "index_rows": self._index_rows,
        }
        tmp = self._root / (STATE_FILE + ".tmp")
        tmp.write_text(json.dumps(state))
        os.replace(tmp, self._root / STATE_FILE)

    # ----------------------------------------------------------------- writes

    def add_local(self, experiences: Iterable[Experience]) -> MergeResult:
        """Store experiences this node distilled (same set semantics as `merge`)."""
        return self._merge(list(experiences), origin="local", received_from=None, batch_cid=None)

    def merge(
        self,
        experiences: Iterable[Experience],
        received_from: bytes,
        batch_cid: bytes | None = None,
    ) -> MergeResult:
        """Merge experiences received from peer `received_from` (32-byte key)."""
        if not isinstance(received_from, bytes) or len(received_from) != PUBLIC_KEY_LEN:
            raise LibraryError("received_from must be the sending peer's 32-byte key")
        if batch_cid is not None and not isinstance(batch_cid, bytes):
            raise LibraryError("batch_cid must be a binary CID or None")
        return self._merge(
            list(experiences), origin="remote", received_from=received_from, batch_cid=batch_cid
        )

    def _merge(
        self,
        incoming: list[Experience],
        *,
        origin: str,
        received_from: bytes | None,
        batch_cid: bytes | None,
    ) -> MergeResult:
        """Apply one batch with the set semantics of `merge` and `add_local`.

        Per id the greatest record key wins (within the batch and against the stored row),
        then the capacity evicts the lowest (quality, id); the survivors, the baseline sum
        and the count change together in one commit and one state write.
        """
        self._check_open()
        best = self._best_per_id(incoming)
        winners, replaced, ignored = self._decide_winners(best)
        ignored += len(incoming) - len(best)
        winners, evict_stored, evicted = self._fit_capacity(winners, replaced)

        if not winners and not evict_stored:
            return MergeResult(ignored=ignored, evicted=tuple(sorted(evicted)))

        delta = self._baseline_delta(winners, replaced, evict_stored)
        inserted = sum(1 for e in winners if e.id not in replaced)
        updated = len(winners) - inserted

        self._commit(winners, origin, received_from, batch_cid, replaced, evict_stored)
        if self._id_filter is not None:
            self._id_filter.add(e.id for e in winners)
        self._sum += delta
        self._count += inserted - len(evict_stored)  # a replacement keeps the count
        self._commits_since_maintain += 1
        self._rows_since_maintain += len(winners) + len(evict_stored)
        self._save_state()
        if self._maintenance_due():
            self.maintain()
        return MergeResult(
            inserted=inserted,
            replaced=updated,
            ignored=ignored,
            evicted=tuple(sorted(evicted)),
        )

    def _best_per_id(self, incoming: list[Experience]) -> dict[bytes, tuple[tuple, Experience]]:
        """The batch's record with the greatest key per id; wrong types or dimensions refused."""
        best: dict[bytes, tuple[tuple, Experience]] = {}
        for e in incoming:
            if not isinstance(e, Experience):
                raise LibraryError(f"expected Experience, got {type(e).__name__}")
            if e.dimension != self._dimension:
                raise LibraryError(f"experience has dimension {e.dimension}, not {self._dimension}")
            key = record_key(e)
            held = best.get(e.id)
            if held is None or key > held[0]:
                best[e.id] = (key, e)
        return best

    def _decide_winners(
        self, best: dict[bytes, tuple[tuple, Experience]]
    ) -> tuple[list[Experience], dict[bytes, np.ndarray], int]:
        """(records that beat or are new to the store, id -> stored embedding each one
        replaces, how many lost to a stored row)."""
        # One query for every stored record the batch touches; winners decided here.
        stored = self._fetch_keys(self._maybe_stored(list(best)))
        winners: list[Experience] = []
        replaced: dict[bytes, np.ndarray] = {}  # id -> stored embedding that loses
        lost = 0
        for ident, (key, e) in best.items():
            old = stored.get(ident)
            if old is None:
                winners.append(e)
            elif key > old[0]:
                winners.append(e)
                replaced[ident] = old[1]
            else:
                lost += 1
        return winners, replaced, lost

    def _fit_capacity(
        self, winners: list[Experience], replaced: dict[bytes, np.ndarray]
    ) -> tuple[list[Experience], list[bytes], list[bytes]]:
        """(surviving winners, stored ids to delete, every evicted id) under the capacity."""
        # Capacity: keep the `capacity` greatest (quality, id) of stored + winners.
        evict_stored: list[bytes] = []
        dropped_winners: set[bytes] = set()
        count_after = self._count + len(winners) - len(replaced)
        if self._capacity is not None and count_after > self._capacity:
            evicted = self._choose_evictions(winners, count_after - self._capacity)
            winner_ids = {e.id for e in winners}
            for ident in evicted:
                if ident in winner_ids:
                    dropped_winners.add(ident)
                    if ident in replaced:  # the stored row goes too, as does the newcomer
                        evict_stored.append(ident)
                else:
                    evict_stored.append(ident)
            winners = [e for e in winners if e.id not in dropped_winners]
        else:
            evicted = []
        return winners, evict_stored, evicted

    def _baseline_delta(
        self,
        winners: list[Experience],
        replaced: dict[bytes, np.ndarray],
        evict_stored: list[bytes],
    ) -> np.ndarray:
        """The change to the embedding sum: + surviving winners - rows they replace -
        evicted stored rows."""
        delta = np.zeros(self._dimension, dtype=np.float64)
        if winners:
            delta += np.stack([e.embedding for e in winners]).sum(axis=0, dtype=np.float64)
        removed_embeddings = [replaced[e.id] for e in winners if e.id in replaced]
        evict_only = [i for i in evict_stored if i not in replaced]
        if evict_only:
            removed_embeddings.extend(self._fetch_embeddings(evict_only))
        removed_embeddings.extend(replaced[i] for i in evict_stored if i in replaced)
        if removed_embeddings:
            delta -= np.stack(removed_embeddings).sum(axis=0, dtype=np.float64)
        return delta

    def _commit(
        self,
        winners: list[Experience],
        origin: str,
        received_from: bytes | None,
        batch_cid: bytes | None,
        replaced: dict[bytes, np.ndarray],
        evict_stored: list[bytes],
    ) -> None:
        """Exactly one LanceDB commit, so a kill leaves all of this write or none of it."""
        data = self._to_arrow(winners, origin, received_from, batch_cid)
        touches_stored = any(e.id in replaced for e in winners)
        if not evict_stored and not touches_stored:
            self._table.add(data)
        elif not winners:
            self._table.delete(f"id IN ({_id_list(evict_stored)})")
        else:
            builder = (
                self._table.merge_insert("id")
                .when_matched_update_all()
                .when_not_matched_insert_all()
            )
            if evict_stored:
                builder = builder.when_not_matched_by_source_delete(
                    f"id IN ({_id_list(evict_stored)})"
                )
            builder.execute(data)

    def _to_arrow(
        self,
        rows: list[Experience],
        origin: str,
        received_from: bytes | None,
        batch_cid: bytes | None,
    ) -> pa.Table:
        n = len(rows)
        d = self._dimension
        emb = np.stack([e.embedding for e in rows]) if rows else np.zeros((0, d), np.float32)
        now = clock.now_ms()
        return pa.table(
            {
                "id": pa.array([e.id.hex() for e in rows], pa.string()),
                "text": pa.array([e.text for e in rows], pa.string()),
                "domain": pa.array([e.domain for e in rows], pa.string()),
                "quality": pa.array([e.quality for e in rows], pa.float64()),
                "embedding": pa.FixedSizeListArray.from_arrays(
                    pa.array(emb.reshape(-1), pa.float32()), d
                ),
                "source": pa.array([e.source for e in rows], pa.binary()),
                "created_ms": pa.array([e.created_ms for e in rows], pa.uint64()),
                "iteration": pa.array([e.iteration for e in rows], pa.uint8()),
                "origin": pa.array([origin] * n, pa.string()),
                "received_from": pa.array([received_from] * n, pa.binary()),
                "batch_cid": pa.array([batch_cid] * n, pa.binary()),
                "received_ms": pa.array([now] * n, pa.int64()),
            },
            schema=_schema(d),
        )

    def _fetch_keys(self, ids: list[bytes]) -> dict[bytes, tuple[tuple, np.ndarray]]:
        """Stored record keys (and embeddings) for `ids`, one IN query per 1,024 ids."""
        out: dict[bytes, tuple[tuple, np.ndarray]] = {}
        if not ids or self._count == 0:
            return out
        for part in _chunks(ids, _IN_CHUNK):
            table = self._select(f"id IN ({_id_list(part)})", _KEY_COLUMNS)
            emb = _embeddings(table.column("embedding"), self._dimension)
            cols = [table.column(c).to_pylist() for c in _KEY_COLUMNS[:5]]
            for row, (ident, q, src, created, it) in enumerate(zip(*cols, strict=True)):
                vec = emb[row]
                out[bytes.fromhex(ident)] = ((q, src, created, it, _f32_bytes(vec)), vec)
        return out

    def _maybe_stored(self, ids: list[bytes]) -> list[bytes]:
        """The ids that may be stored: the rest need no lookup (fresh batches skip it)."""
        if not ids or self._count == 0:
            return []
        if self._id_filter is None:
            self._id_filter = _IdFilter(self._select(None, ["id"]).column("id").to_pylist())
        return self._id_filter.maybe(ids)

    def _fetch_embeddings(self, ids: list[bytes]) -> list[np.ndarray]:
        out: list[np.ndarray] = []
        for part in _chunks(ids, _IN_CHUNK):
            table = self._select(f"id IN ({_id_list(part)})", ["embedding"])
            out.extend(_embeddings(table.column("embedding"), self._dimension))
        return out

    def _choose_evictions(self, winners: list[Experience], excess: int) -> list[bytes]:
        """The `excess` least (quality, id) among stored rows and winners, as one set.

        Scans only the narrow (id, quality) columns; a stored row that a winner replaces is
        ranked with the winner's quality.
        """
        table = self._select(None, ["id", "quality"])
        ids = [bytes.fromhex(i) for i in table.column("id").to_pylist()]
        quality = np.array(table.column("quality").to_numpy(), dtype=np.float64)  # writable
        override = {e.id: e.quality for e in winners}
        seen = set()
        if override:
            for i, ident in enumerate(ids):
                if ident in override:
                    quality[i] = override[ident]
                    seen.add(ident)
            extra = [e for e in winners if e.id not in seen]
            ids = ids + [e.id for e in extra]
            quality = np.concatenate([quality, np.array([e.quality for e in extra])])
        if excess >= len(ids):
            return list(ids)
        cut = np.partition(quality, excess - 1)[excess - 1]
        below = [ids[i] for i in np.flatnonzero(quality < cut)]
        at_cut = sorted(ids[i] for i in np.flatnonzero(quality == cut))
        return below + at_cut[: excess - len(below)]

    def _select(self, where: str | None, columns: list[str]) -> pa.Table:
        query = self._table.search().select(columns).limit(None)
        if where is not None:
            query = query.where(where)
        return query.to_arrow()

    # ----------------------------------------------------------------- maintenance

    def maintain(self) -> dict[str, Any]:
        """Compact, fold new rows into indices, drop old versions; (re)train when due.

        Writes call this on the schedule in the module docstring; a node may also call it
        from a background task. Each small write is a new fragment and a new manifest;
        without compaction reads open ever more files.
        """
        self._check_open()
        report: dict[str, Any] = {"vector_index": "unchanged"}
        n = self._count
        if n > 0:
            self._ensure_scalar_indices()
        # Compact before training, not after: an IVF index trained on the compacted table
        # answered ~1.8x faster (60k rows, nprobes 10: p50 7.7 ms vs 13.7 ms when trained on
        # the 30 uncompacted fragments and compacted afterwards).
        self._table.optimize(cleanup_older_than=self._keep_versions)
        if n >= self._index_threshold and (
            self._index_rows == 0 or n >= RETRAIN_GROWTH * self._index_rows
        ):
            t0 = time.perf_counter()
            self._build_vector_index(n)
            report["vector_index"] = "trained"
            report["index_seconds"] = time.perf_counter() - t0
        self._commits_since_maintain = 0
        self._rows_since_maintain = 0
        self._save_state()
        report["version"] = self._table.version
        return report

    def _maintenance_due(self) -> bool:
        commits = self._commits_since_maintain
        if commits < self._maintain_every:
            return False
        return (
            self._rows_since_maintain >= MAINTAIN_ROW_FRACTION * self._count
            or commits >= MAINTAIN_COMMIT_CAP * self._maintain_every
        )

    def _build_vector_index(self, n: int) -> None:
        from lancedb.index import IvfSq

        # IVF_SQ: 8-bit scalar codes train in seconds where PQ codebooks take minutes, and
        # are accurate enough to need no re-ranking. ~1,024 rows per partition: once a
        # partition is in LanceDB's index cache (after its first probe) a probe costs its
        # distance computations, not a read, so smaller partitions are cheaper at the same
        # nprobes. Measured at 1M rows, nprobes 10: 976 partitions scan 10k codes (p50
        # ~8.5 ms, top-1 recall 1.0) where 244 partitions scanned 41k (~11 ms, recall 1.0).
        # 10 k-means iterations: embeddings are not clustered enough for more.
        partitions = max(1, min(4096, n // 1024))
        self._table.create_index(
            "embedding",
            config=IvfSq(distance_type="cosine", num_partitions=partitions, max_iterations=10),
            replace=True,
        )
        self._index_rows = n

    def _ensure_scalar_indices(self) -> None:
        from lancedb.index import Bitmap, BTree

        have = {tuple(ix.columns) for ix in self._table.list_indices()}
        if ("id",) not in have:
            self._table.create_index("id", config=BTree(), replace=True)
        if ("domain",) not in have:  # few distinct values: a bitmap makes prefilters cheap
            self._table.create_index("domain", config=Bitmap(), replace=True)

    def _vector_index_name(self) -> str | None:
        for ix in self._table.list_indices():
            if list(ix.columns) == ["embedding"]:
                return ix.name
        return None

    # ----------------------------------------------------------------- reads

    @property
    def dimension(self) -> int:
        """Coordinates of every stored embedding; fixed when the library is created."""
        return self._dimension

    @property
    def capacity(self) -> int | None:
        """The most experiences kept (the greatest by (quality, id)), or None: unbounded."""
        return self._capacity

    @property
    def version(self) -> int:
        """The table version, which every commit bumps: callers cache derived data (e.g.
        recall's quality calibration) until it changes."""
        return self._table.version

    def count(self, domain: str | None = None) -> int:
        """Stored experiences, in one domain or all; the total is kept in memory (no scan)."""
        self._check_open()
        if domain is None:
            return self._count
        return self._table.count_rows(_domain_filter(domain))

    def get(self, ident: bytes) -> Entry | None:
        """The entry with id `ident` (with this replica's provenance), or None."""
        self._check_open()
        table = self._table.search().where(f"id = '{bytes(ident).hex()}'").limit(1).to_arrow()
        rows = self._entries(table)
        return rows[0] if rows else None

    def search(
        self,
        query: str | np.ndarray | Sequence[float],
        domain: str | Sequence[str] | None = None,
        k: int = 10,
    ) -> list[Hit]:
        """The k nearest experiences by cosine distance, optionally within one domain (or
        any of several).

        Exact below the index threshold. Above it, IVF_SQ over indexed rows (`nprobes`
        partitions, optional re-ranking on full vectors with `refine_factor`) plus a flat
        scan of rows appended since the last maintenance: LanceDB searches unindexed
        fragments too, so a new row is findable before it is folded into the index.
        """
        self._check_open()
        if isinstance(query, str):
            if self._embedder is None:
                raise LibraryError("text search needs an embedder; pass embedder= to open()")
            vector = self._embedder.embed([query])[0]
        else:
            vector = np.asarray(query, dtype=np.float32)
        if vector.shape != (self._dimension,) or not np.isfinite(vector).all():
            raise LibraryError(f"query vector must be {self._dimension} finite values")
        if k < 1 or self._count == 0:
            return []
        if domain is None:
            where = None
        elif isinstance(domain, str):
            where = _domain_filter(domain)
        elif not domain:
            return []
        else:  # several domains: each checked by _domain_filter, so quoting is safe
            where = " OR ".join(f"({_domain_filter(d)})" for d in domain)
        table = self._vector_query(vector, where, k)
        distances = table.column("_distance").to_pylist()
        return [Hit(e, float(d)) for e, d in zip(self._entries(table), distances, strict=True)]

    def _vector_query(self, vector: np.ndarray, where: str | None, k: int) -> pa.Table:
        """Run one ANN/flat query; the rows (every column) and `_distance`, nearest first.

        Built on LanceDB's async query of the table and run with one hop to its event
        loop: the sync builder's `to_arrow` makes six (three schema fetches for blob
        detection, the query, one per batch), ~0.3 ms each, and builds a pydantic Query
        from the vector as a Python list. `_distance` is selected explicitly (Lance warns
        per query otherwise, and will stop adding it).
        """
        from lancedb.background_loop import LOOP

        # `_table` is the AsyncTable behind LanceDB's sync LanceTable: private, but lancedb is
        # pinned (0.40.0) and every search test runs through it; re-check on upgrade.
        inner = self._table._table
        query = inner.query().nearest_to(vector).column("embedding").distance_type("cosine")
        query = query.limit(k).select(_HIT_COLUMNS)
        if self._index_rows:
            # Always re-rank on the full vectors: LanceDB 0.40's IVF_SQ "cosine" reports
            # twice the cosine distance for rows it answers from the index (measured:
            # ratio 2.000 over 600 hits) and exact distances for unindexed rows, so a
            # cutoff on the raw value would change meaning with the maintenance state.
            # refine_factor 1 costs ~1 ms at 100k rows (bench/recall.py).
            query = query.nprobes(self._nprobes).refine_factor(self._refine_factor or 1)
        if where is not None:
            query = query.where(where)  # a prefilter: the async query's default
        return LOOP.run(query.to_arrow())

    def baseline(self) -> np.ndarray | None:
        """The library's mean embedding (float64), or None when empty. O(d), no scan."""
        self._check_open()
        if self._count == 0:
            return None
        out = self._sum / self._count
        out.setflags(write=False)
        return out

    def entries(self, domain: str | None = None, batch_size: int = 4096) -> Iterator[Entry]:
        """Every stored entry, streamed (for state transfer to another replica, audits)."""
        self._check_open()
        query = self._table.search().limit(None)
        if domain is not None:
            query = query.where(_domain_filter(domain))
        for batch in query.to_batches(batch_size):
            yield from self._entries(pa.Table.from_batches([batch]))

    def experiences(self, domain: str | None = None) -> Iterator[Experience]:
        """Every stored experience without this replica's provenance, streamed: the
        content two converged replicas hold alike."""
        return (entry.experience for entry in self.entries(domain))

    def claims(self) -> list[tuple[bytes, float]]:
        """(source, quality) of every stored experience: what recall calibrates quality
        claims against (fai_core/ranking.py)."""
        self._check_open()
        table = self._select(None, ["source", "quality"])
        return list(
            zip(
                table.column("source").to_pylist(),
                table.column("quality").to_pylist(),
                strict=True,
            )
        )

    def newest(self, domain: str | None = None, limit: int = 10) -> list[Entry]:
        """The `limit` entries this replica stored last (newest first), local or remote."""
        self._check_open()
        where = None if domain is None else _domain_filter(domain)
        keys = self._select(where, ["id", "received_ms"])
        if keys.num_rows == 0 or limit < 1:
            return []
        received = np.asarray(keys.column("received_ms").to_numpy(), dtype=np.int64)
        ids = keys.column("id").to_pylist()
        chosen = [ids[i] for i in np.argsort(-received, kind="stable")[:limit]]
        rows = self._table.search().where(f"id IN ({_id_list(bytes.fromhex(i) for i in chosen)})")
        by_id = {e.experience.id.hex(): e for e in self._entries(rows.limit(None).to_arrow())}
        return [by_id[i] for i in chosen if i in by_id]

    def ids(self) -> set[bytes]:
        """Every stored id, read from the id column alone: a cheap way to compare
        replicas or check what a write kept."""
        self._check_open()
        return {bytes.fromhex(i) for i in self._select(None, ["id"]).column("id").to_pylist()}

    def stats(
        self, now_ms: int | None = None, stale_after_ms: int = DEFAULT_STALE_AFTER_MS
    ) -> dict[str, Any]:
        """Coverage, quality distribution and staleness (paper 7.4), as plain JSON values.

        Reads three narrow columns; the self-improvement loop calls this rarely.
        """
        self._check_open()
        now = clock.now_ms() if now_ms is None else now_ms
        table = self._select(None, ["domain", "quality", "created_ms", "origin"])
        quality = table.column("quality").to_numpy()
        created = table.column("created_ms").to_numpy().astype(np.float64)
        domains = table.column("domain").to_numpy(zero_copy_only=False)
        origins = table.column("origin").to_numpy(zero_copy_only=False)
        out: dict[str, Any] = {
            "count": len(quality),
            "dimension": self._dimension,
            "capacity": self._capacity,
            "origins": {
                o: int(c) for o, c in zip(*np.unique(origins, return_counts=True), strict=True)
            },
            "domains": {},
            "quality": None,
            "staleness": None,
            "table": {
                "version": self._table.version,
                "fragments": self._table.stats()["fragment_stats"]["num_fragments"],
                "indexed_rows": self._index_rows,
            },
        }
        if len(quality) == 0:
            return out
        out["quality"] = _distribution(quality)
        for name in sorted(set(domains.tolist())):
            mask = domains == name
            out["domains"][name] = {
                "count": int(mask.sum()),
                "mean_quality": float(quality[mask].mean()),
                "newest_age_ms": max(0, int(now - created[mask].max())),
            }
        age = now - created
        out["staleness"] = {
            "newest_age_ms": max(0, int(age.min())),
            "oldest_age_ms": max(0, int(age.max())),
            "stale_after_ms": stale_after_ms,
            "stale_fraction": float((age > stale_after_ms).mean()),
        }
        return out

    def _entries(self, table: pa.Table) -> list[Entry]:
        if table.num_rows == 0:
            return []
        emb = _embeddings(table.column("embedding"), self._dimension)
        cols = {
            c: table.column(c).to_pylist()
            for c in (
                "text",
                "domain",
                "quality",
                "source",
                "created_ms",
                "iteration",
                "origin",
                "received_from",
                "batch_cid",
                "received_ms",
            )
        }
        out = []
        for i in range(table.num_rows):
            e = Experience(
                cols["text"][i],
                emb[i],
                cols["quality"][i],
                cols["domain"][i],
                cols["source"][i],
                cols["created_ms"][i],
                cols["iteration"][i],
            )
            out.append(
                Entry(
                    e,
                    cols["origin"][i],
                    cols["received_from"][i],
                    cols["batch_cid"][i],
                    cols["received_ms"][i],
                )
            )
        return out

    def _check_open(self) -> None:
        if self._lock is None:
            raise LibraryError("library is closed")


class _IdFilter:
    """A superset of the stored ids, as 64 bits of each id's digest, in memory.

    A batch of new experiences would otherwise cost an IN query against the whole table
    per write. Evicted ids are never removed: a false positive only costs a lookup, while
    a false negative would store a duplicate, so every committed id is added and the
    filter is rebuilt from the table on open. 1M ids take 8 MB.
    """

    _MERGE_AT = 65_536

    def __init__(self, hex_ids: list[str]) -> None:
        # Bytes 4..12 of the binary CID are the first 8 bytes of its sha2-256 digest.
        self._base = np.unique(np.array([int(h[8:24], 16) for h in hex_ids], dtype=np.uint64))
        self._recent: set[int] = set()

    @staticmethod
    def _key(ident: bytes) -> int:
        return int.from_bytes(ident[4:12], "big")

    def add(self, ids: Iterable[bytes]) -> None:
        self._recent.update(self._key(i) for i in ids)
        if len(self._recent) >= self._MERGE_AT:
            fresh = np.fromiter(self._recent, dtype=np.uint64, count=len(self._recent))
            self._base = np.union1d(self._base, fresh)
            self._recent.clear()

    def maybe(self, ids: list[bytes]) -> list[bytes]:
        keys = np.fromiter((self._key(i) for i in ids), dtype=np.uint64, count=len(ids))
        pos = np.minimum(np.searchsorted(self._base, keys), max(len(self._base) - 1, 0))
        hit = (self._base[pos] == keys) if len(self._base) else np.zeros(len(ids), bool)
        return [
            i
            for i, k, h in zip(ids, keys.tolist(), hit.tolist(), strict=True)
            if h or k in self._recent
        ]


def _domain_filter(domain: str) -> str:
    from fai_core.experience import domain_problem

    problem = domain_problem(domain)
    if problem:  # also what makes the quoted literal below safe
        raise LibraryError(problem)
    return f"domain = '{domain}'"


def _distribution(values: np.ndarray) -> dict[str, float]:
    q = np.quantile(values, [0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0])
    keys = ("min", "p10", "p25", "p50", "p75", "p90", "max")
    out = {k: float(v) for k, v in zip(keys, q, strict=True)}
    out["mean"] = float(values.mean())
    out["std"] = float(values.std()) if math.isfinite(values.std()) else 0.0
    return out
