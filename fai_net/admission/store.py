"""The node's durable store of accepted batches (one SQLite file).

Gossipsub is best-effort, so everything a node accepted is kept here:

- receipt is idempotent by batch CID (a batch seen twice, via gossip and repair, is stored
  once);
- per-sender sequence numbers survive restarts, so replays and equivocation (two CIDs for
  one sender and seq) are caught even after the process restarted or old batches were
  pruned (`senders` keeps each sender's newest seq independently of the batches);
- peers that missed batches fetch them from here (the repair protocol pages through the
  local insertion cursor, which only grows and is never reused, even after pruning);
- the node's own sequence number is reserved durably *before* a batch is published:
  reusing a seq with different content is slashable equivocation, so a crash must never
  hand the same seq out twice.

It also keeps equivocation evidence for the registry, peers' repair cursors, and the outbox
of local experiences not yet broadcast. `commit_local` stores an own batch and empties the
matching outbox entries in one transaction, so a crash leaves either both or neither.

SQLite integers are signed 64-bit while wire `seq` and `timestamp_ms` are unsigned 64-bit,
so those two columns store `value - 2**63` (order-preserving): a signed batch with a huge
seq is legal on the wire and must not crash the store.

One writer, one thread at a time: the node calls this from one trio task. The connection
allows thread hops (`check_same_thread=False`) because calls may run on worker threads one
after another, never concurrently.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
from collections.abc import Collection, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from fai_core import dagcbor
from fai_core.clock import now_ms
from fai_core.errors import FaiError, WireError
from fai_core.wire import V2_ITEMS, SignedBatch

STORE_FILE = "store.sqlite"
STORE_FORMAT = "fai-batch-store"
STORE_VERSION = 1
ORIGINS = frozenset({"gossip", "repair", "local"})
#: With a domain filter, `since` examines at most this many rows per returned item slot, so
#: one request's work stays bounded even when few rows match; the cursor still advances.
SINCE_SCAN_FACTOR = 8

_U64_OFFSET = 1 << 63
_U64_MAX = (1 << 64) - 1
_I64_MAX = (1 << 63) - 1

#: Wire-v2 baseline blocks (fai_core/baseline_block.py) by CID: what this node's stored v2
#: batches were encoded against, served to peers by repair. A block lives as long as a
#: stored batch names it (`batches.baseline_cid`); `used_ms`, the last time it was stored
#: or named, only dates it once no batch does (see `prune`). Created in version-1 stores at
#: open too (a table older code never reads, so the store version stays 1).
_BLOCKS_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS baseline_blocks (
        cid BLOB PRIMARY KEY,
        data BLOB NOT NULL,
        used_ms INTEGER NOT NULL
    )""",
    """CREATE INDEX IF NOT EXISTS baseline_blocks_used ON baseline_blocks (used_ms)""",
)
#: Which block each v2 batch names, for `prune`'s "does a stored batch still name this
#: block" probe; version 1 batches (NULL) stay out of the index.
_BASELINE_INDEX = """CREATE INDEX IF NOT EXISTS batches_baseline ON batches (baseline_cid)
    WHERE baseline_cid IS NOT NULL"""
#: Where a version 2 batch block keeps its baseline CID (fai_core/wire.py `V2_ITEMS`).
_V2_BASELINE_ITEM = [name for name, _ in V2_ITEMS].index("baseline")
#: Rows decoded per step when an older store gains `batches.baseline_cid` at open.
_BACKFILL_PAGE = 512

_SCHEMA = (
    """CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)""",
    """CREATE TABLE batches (
        cursor INTEGER PRIMARY KEY AUTOINCREMENT,
        cid BLOB NOT NULL UNIQUE,
        sender BLOB NOT NULL,
        seq INTEGER NOT NULL,
        domain TEXT NOT NULL,
        timestamp_ms INTEGER NOT NULL,
        received_ms INTEGER NOT NULL,
        envelope BLOB NOT NULL,
        origin TEXT NOT NULL CHECK (origin IN ('gossip', 'repair', 'local')),
        baseline_cid BLOB
    )""",
    """CREATE INDEX batches_sender_seq ON batches (sender, seq)""",
    """CREATE INDEX batches_domain ON batches (domain)""",
    """CREATE INDEX batches_timestamp ON batches (timestamp_ms)""",
    """CREATE TABLE senders (sender BLOB PRIMARY KEY, newest_seq INTEGER NOT NULL)""",
    """CREATE TABLE own_seq (id INTEGER PRIMARY KEY CHECK (id = 0), next_seq INTEGER NOT NULL)""",
    """INSERT INTO own_seq (id, next_seq) VALUES (0, 0)""",
    """CREATE TABLE peer_cursors (peer_id TEXT PRIMARY KEY, cursor INTEGER NOT NULL)""",
    """CREATE TABLE evidence (
        sender BLOB NOT NULL,
        seq INTEGER NOT NULL,
        pair BLOB NOT NULL,
        first BLOB NOT NULL,
        second BLOB NOT NULL,
        found_ms INTEGER NOT NULL,
        PRIMARY KEY (sender, seq, pair)
    )""",
    """CREATE TABLE outbox (
        position INTEGER PRIMARY KEY AUTOINCREMENT,
        id BLOB NOT NULL UNIQUE,
        domain TEXT NOT NULL,
        record BLOB
    )""",
    """CREATE INDEX outbox_domain ON outbox (domain, position)""",
    # Received batches not yet merged into the library: a crash between acceptance and the
    # next DeltaSoup round must not lose them (the node re-queues these at start).
    """CREATE TABLE unmerged (cid BLOB PRIMARY KEY)""",
    *_BLOCKS_SCHEMA,
    _BASELINE_INDEX,
)


class StoreError(FaiError):
    """The store cannot be opened or used as asked (wrong file, unknown schema version)."""


class StoreConflict(StoreError):
    """A different CID already holds this (sender, seq): the sender equivocated.

    The store refuses to keep both; the caller turns the pair into evidence (`existing_cid`
    is what the store holds, `cid` is the newcomer).
    """

    def __init__(self, sender: bytes, seq: int, existing_cid: bytes, cid: bytes) -> None:
        super().__init__(
            f"sender {sender.hex()[:16]}... seq {seq} already holds another batch "
            f"({existing_cid.hex()[:16]}... vs {cid.hex()[:16]}...)"
        )
        self.sender = sender
        self.seq = seq
        self.existing_cid = existing_cid
        self.cid = cid


@dataclass(frozen=True, slots=True)
class InventoryItem:
    """One stored batch as the repair protocol advertises it (no envelope)."""

    cursor: int
    cid: bytes
    sender: bytes
    seq: int
    domain: str
    timestamp_ms: int


@dataclass(frozen=True, slots=True)
class Evidence:
    """Two envelopes signed by one sender for one seq: what a slashing claim needs."""

    sender: bytes
    seq: int
    first: bytes
    second: bytes
    found_ms: int


def _to_sql(value: int) -> int:
    """Unsigned 64-bit wire integer -> signed SQLite integer, preserving order."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _U64_MAX:
        raise ValueError(f"expected an unsigned 64-bit integer, got {value!r}")
    return value - _U64_OFFSET


def _from_sql(value: int) -> int:
    return value + _U64_OFFSET


def _clamp_u64(value: int) -> int:
    """Range bounds outside u64 select nothing beyond u64 anyway; clamp instead of failing."""
    return min(max(value, 0), _U64_MAX)


def _baseline_cid_of(envelope: bytes) -> bytes | None:
    """The baseline CID a stored envelope's batch names, None for version 1.

    Only for envelopes the store already holds: they were checked in full when they were
    admitted, so this reads the one field without verifying the signature again (a fraction
    of the cost, which matters when an older store with many batches is opened). An envelope
    that no longer parses is left without one: no peer would accept it from us anyway.
    """
    try:
        fields = dagcbor.decode(bytes(envelope))
        if not isinstance(fields, dict) or "b" not in fields:
            return None
        cid = dagcbor.decode(fields["b"])[_V2_BASELINE_ITEM]
    except (WireError, TypeError, IndexError):
        return None
    return cid if isinstance(cid, bytes) else None


def _upgrade(conn: sqlite3.Connection) -> None:
    """Bring an existing store to this layout, inside the open's transaction (a crash
    leaves the old layout, upgraded again at the next open).

    Only additions older code ignores (a table, a column, indexes), so the store version
    stays 1 and an older node can still open the file. The batches it stores meanwhile
    lack a `baseline_cid`, so the backfill resumes after the last row it covered
    (`meta.baseline_backfill`) at every open, not just when the column is added.
    """
    for statement in _BLOCKS_SCHEMA:
        conn.execute(statement)
    columns = {row[1] for row in conn.execute("PRAGMA table_info(batches)")}
    if "baseline_cid" not in columns:
        conn.execute("ALTER TABLE batches ADD COLUMN baseline_cid BLOB")
    _backfill_baseline_cids(conn)
    conn.execute(_BASELINE_INDEX)
    if "record" not in {row[1] for row in conn.execute("PRAGMA table_info(outbox)")}:
        conn.execute("ALTER TABLE outbox ADD COLUMN record BLOB")


def _backfill_baseline_cids(conn: sqlite3.Connection) -> None:
    """Read the `baseline_cid` of batches stored without one from their envelopes.

    Without it `prune` would see no batch naming the blocks these batches need. A page of
    rows at a time, so memory stays bounded on a large store; rows an earlier open
    covered are skipped, so a routine open costs only the batches stored since.
    """
    row = conn.execute("SELECT value FROM meta WHERE key = 'baseline_backfill'").fetchone()
    last = 0 if row is None else int(row[0])
    (end,) = conn.execute("SELECT coalesce(max(cursor), 0) FROM batches").fetchone()
    while last < end:
        rows = conn.execute(
            "SELECT cursor, envelope FROM batches WHERE cursor > ? AND cursor <= ? "
            "AND baseline_cid IS NULL ORDER BY cursor LIMIT ?",
            (last, end, _BACKFILL_PAGE),
        ).fetchall()
        if not rows:
            break
        last = rows[-1][0]
        named = [(cid, cur) for cur, env in rows if (cid := _baseline_cid_of(env)) is not None]
        conn.executemany("UPDATE batches SET baseline_cid = ? WHERE cursor = ?", named)
    conn.execute(
        "INSERT INTO meta (key, value) VALUES ('baseline_backfill', ?) "
        "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        (str(max(last, end)),),  # cursors are never reused: pruned tail rows never return
    )


def _check_limit(limit: int) -> None:
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ValueError(f"limit must be a positive integer, got {limit!r}")


class BatchStore:
    """Durable store of accepted batches, own seqs, peer cursors, evidence and the outbox."""

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self._conn = conn
        self.path = path
        #: Blocks `prune` never deletes (`pin_block`), for this process's lifetime.
        self._pinned: set[bytes] = set()

    # -- lifecycle -------------------------------------------------------------------------

    @classmethod
    def open(cls, directory: str | Path) -> BatchStore:
        """Open (creating if needed) the store in `directory`.

        Raises StoreError if the file is not a FAI batch store or has a schema version this
        code does not know: silently reading a future layout could lose seq bookkeeping.
        """
        directory = Path(directory)
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = directory / STORE_FILE
        try:
            conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            # Batches, evidence and the outbox are the operator's: owner-only, whatever the
            # umask (SQLite gives its -wal and -shm files the database file's mode).
            os.chmod(path, 0o600)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open {path}: {exc}") from exc
        try:
            cls._prepare(conn, path)
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise StoreError(f"{path} is not a usable SQLite database: {exc}") from exc
        except StoreError:
            conn.close()
            raise
        return cls(conn, path)

    @staticmethod
    def _prepare(conn: sqlite3.Connection, path: Path) -> None:
        conn.execute("PRAGMA busy_timeout = 5000")
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise StoreError(f"{path}: cannot switch to WAL journal mode (got {mode!r})")
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("BEGIN IMMEDIATE")
        committed = False
        try:
            tables = {
                row[0]
                for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            }
            if not tables:
                for statement in _SCHEMA:
                    conn.execute(statement)
                conn.executemany(
                    "INSERT INTO meta (key, value) VALUES (?, ?)",
                    [("format", STORE_FORMAT), ("version", str(STORE_VERSION))],
                )
            elif "meta" not in tables:
                raise StoreError(f"{path} is not a FAI batch store (no meta table)")
            else:
                meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
                if meta.get("format") != STORE_FORMAT:
                    raise StoreError(f"{path} is not a FAI batch store: {meta.get('format')!r}")
                if meta.get("version") != str(STORE_VERSION):
                    raise StoreError(
                        f"{path} has batch store version {meta.get('version')!r}; "
                        f"this code reads version {STORE_VERSION}"
                    )
                _upgrade(conn)
            conn.execute("COMMIT")
            committed = True
        finally:
            if not committed and conn.in_transaction:
                conn.execute("ROLLBACK")

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> BatchStore:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction; rolled back if the body raises (or is cancelled)."""
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        committed = False
        try:
            yield conn
            conn.execute("COMMIT")
            committed = True
        finally:
            if not committed and conn.in_transaction:
                conn.execute("ROLLBACK")

    # -- batches ---------------------------------------------------------------------------

    def put(self, signed: SignedBatch, *, received_ms: int, origin: str) -> bool:
        """Store a verified batch. True if new, False if this CID was already stored.

        Raises StoreConflict if another CID holds the same (sender, seq); nothing is stored.
        """
        with self._tx():
            return self._put(signed, received_ms, origin)

    def _put(self, signed: SignedBatch, received_ms: int, origin: str) -> bool:
        if origin not in ORIGINS:
            raise ValueError(f"origin must be one of {sorted(ORIGINS)}, got {origin!r}")
        batch = signed.batch
        seq = _to_sql(batch.seq)
        conn = self._conn
        if conn.execute("SELECT 1 FROM batches WHERE cid = ?", (batch.cid,)).fetchone():
            return False
        row = conn.execute(
            "SELECT cid FROM batches WHERE sender = ? AND seq = ?", (batch.sender, seq)
        ).fetchone()
        if row is not None:
            raise StoreConflict(batch.sender, batch.seq, bytes(row[0]), batch.cid)
        conn.execute(
            "INSERT INTO batches (cid, sender, seq, domain, timestamp_ms, received_ms, "
            "envelope, origin, baseline_cid) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                batch.cid,
                batch.sender,
                seq,
                batch.domain,
                _to_sql(batch.timestamp_ms),
                received_ms,
                bytes(signed.envelope),
                origin,
                None if batch.baseline_cid is None else bytes(batch.baseline_cid),
            ),
        )
        if origin != "local":
            conn.execute("INSERT OR IGNORE INTO unmerged (cid) VALUES (?)", (batch.cid,))
        if signed.baseline_block is not None:
            self._put_block(signed.baseline_block.cid, signed.baseline_block.data, received_ms)
        elif batch.baseline_cid is not None:
            conn.execute(
                "UPDATE baseline_blocks SET used_ms = max(used_ms, ?) WHERE cid = ?",
                (received_ms, batch.baseline_cid),
            )
        conn.execute(
            "INSERT INTO senders (sender, newest_seq) VALUES (?, ?) "
            "ON CONFLICT (sender) DO UPDATE SET newest_seq = max(newest_seq, excluded.newest_seq)",
            (batch.sender, seq),
        )
        return True

    # -- baseline blocks (wire v2) ---------------------------------------------------------

    def put_block(self, cid: bytes, data: bytes, used_ms: int) -> None:
        """Keep a checked baseline block (the caller verified `data` hashes to `cid`)."""
        with self._tx():
            self._put_block(cid, data, used_ms)

    def pin_block(self, cid: bytes, data: bytes, used_ms: int) -> None:
        """Keep a block that `prune` must never delete while this store is open: the
        fleet's reference block, which every node derives and nobody sends, so no stored
        batch may name it for a while and yet peers must be able to fetch it from us.

        The pin lives in memory, not in the file: whoever derives the reference (the
        baseline resolver, at every start) pins it again, and the reference of a fleet
        this node no longer runs in then ages out like any block nobody names.
        """
        with self._tx():
            self._put_block(cid, data, used_ms)
        self._pinned.add(bytes(cid))

    def _put_block(self, cid: bytes, data: bytes, used_ms: int) -> None:
        self._conn.execute(
            "INSERT INTO baseline_blocks (cid, data, used_ms) VALUES (?, ?, ?) "
            "ON CONFLICT (cid) DO UPDATE SET used_ms = max(used_ms, excluded.used_ms)",
            (bytes(cid), bytes(data), used_ms),
        )

    def get_block(self, cid: bytes) -> bytes | None:
        row = self._conn.execute(
            "SELECT data FROM baseline_blocks WHERE cid = ?", (bytes(cid),)
        ).fetchone()
        return None if row is None else bytes(row[0])

    def get_blocks(self, cids: list[bytes]) -> list[bytes]:
        """The blocks held among `cids`, in request order (missing ones left out)."""
        found = (self.get_block(cid) for cid in cids)
        return [data for data in found if data is not None]

    def block_count(self) -> int:
        return self._conn.execute("SELECT count(*) FROM baseline_blocks").fetchone()[0]

    def has(self, cid: bytes) -> bool:
        return (
            self._conn.execute("SELECT 1 FROM batches WHERE cid = ?", (cid,)).fetchone() is not None
        )

    def get(self, cid: bytes) -> bytes | None:
        """The envelope bytes exactly as received (what repair serves), or None."""
        row = self._conn.execute("SELECT envelope FROM batches WHERE cid = ?", (cid,)).fetchone()
        return None if row is None else bytes(row[0])

    def cid_at(self, sender: bytes, seq: int) -> bytes | None:
        row = self._conn.execute(
            "SELECT cid FROM batches WHERE sender = ? AND seq = ?", (sender, _to_sql(seq))
        ).fetchone()
        return None if row is None else bytes(row[0])

    def newest_seq(self, sender: bytes) -> int | None:
        """Highest seq ever stored for `sender`, still known after its batches were pruned."""
        row = self._conn.execute(
            "SELECT newest_seq FROM senders WHERE sender = ?", (sender,)
        ).fetchone()
        return None if row is None else _from_sql(row[0])

    def range(
        self, sender: bytes, first: int, last: int, limit: int, *, max_bytes: int | None = None
    ) -> list[bytes]:
        """Envelopes of `sender` with first <= seq <= last, ordered by seq.

        At most `limit` envelopes; with `max_bytes`, stops before their total size would
        exceed it (rows are read one at a time, so a large range never sits in memory).
        """
        _check_limit(limit)
        if last < first:
            return []
        rows = self._conn.execute(
            "SELECT envelope FROM batches WHERE sender = ? AND seq BETWEEN ? AND ? "
            "ORDER BY seq LIMIT ?",
            (sender, _to_sql(_clamp_u64(first)), _to_sql(_clamp_u64(last)), limit),
        )
        out: list[bytes] = []
        total = 0
        for (envelope,) in rows:
            total += len(envelope)
            if max_bytes is not None and total > max_bytes:
                break
            out.append(bytes(envelope))
        return out

    def count(self, domain: str | None = None) -> int:
        if domain is None:
            return self._conn.execute("SELECT count(*) FROM batches").fetchone()[0]
        return self._conn.execute(
            "SELECT count(*) FROM batches WHERE domain = ?", (domain,)
        ).fetchone()[0]

    def cids(self, domain: str | None = None) -> set[bytes]:
        if domain is None:
            rows = self._conn.execute("SELECT cid FROM batches")
        else:
            rows = self._conn.execute("SELECT cid FROM batches WHERE domain = ?", (domain,))
        return {bytes(row[0]) for row in rows}

    def since(
        self, cursor: int, *, domains: Collection[str] | None = None, limit: int = 256
    ) -> tuple[list[InventoryItem], int]:
        """Items inserted after `cursor`, in cursor order, and the cursor to ask from next.

        The next cursor is the last row *examined*, matching the filter or not, so a
        requester paging with a narrow domain filter always progresses; it equals `cursor`
        only when nothing newer exists. With a filter at most `limit * SINCE_SCAN_FACTOR`
        rows are examined, so a page may be empty yet still advance the cursor.
        """
        _check_limit(limit)
        wanted = None if domains is None else frozenset(domains)
        window = limit if wanted is None else limit * SINCE_SCAN_FACTOR
        rows = self._conn.execute(
            "SELECT cursor, cid, sender, seq, domain, timestamp_ms FROM batches "
            "WHERE cursor > ? ORDER BY cursor LIMIT ?",
            (max(cursor, 0), window),
        )
        items: list[InventoryItem] = []
        next_cursor = cursor
        for cur, cid, sender, seq, domain, timestamp_ms in rows:
            next_cursor = cur
            if wanted is None or domain in wanted:
                items.append(
                    InventoryItem(
                        cur,
                        bytes(cid),
                        bytes(sender),
                        _from_sql(seq),
                        domain,
                        _from_sql(timestamp_ms),
                    )
                )
                if len(items) == limit:
                    break
        return items, next_cursor

    def prune(self, older_than_ms: int) -> int:
        """Delete batches whose timestamp is below `older_than_ms`, then the baseline
        blocks no remaining batch names; returns how many batches.

        Senders' newest seqs are kept (they live in their own table), so a replay of a
        pruned old seq is still recognisable as old. Batches not yet merged are kept.

        A block goes only when no stored batch names it (`batches.baseline_cid`), it was
        last stored or named before `older_than_ms`, and it is not pinned (the reference
        block). Age alone is not enough: every batch this node keeps it also serves over
        repair, and a peer handed a v2 batch whose block we dropped cannot complete it.
        Being named is not enough either: a block nobody names any more (its batches were
        pruned) would otherwise stay forever. Both deletes run in one transaction, batches
        first, so a block is never judged against batches about to go. The block delete is
        one statement probing the `batches_baseline` index per old block (found through
        `baseline_blocks_used`): nothing is loaded into Python however large the store.
        """
        pinned = sorted(self._pinned)
        with self._tx() as conn:
            removed = conn.execute(
                "DELETE FROM batches WHERE timestamp_ms < ? "
                "AND cid NOT IN (SELECT cid FROM unmerged)",
                (_to_sql(_clamp_u64(older_than_ms)),),
            ).rowcount
            conn.execute(
                "DELETE FROM baseline_blocks WHERE used_ms < ? "
                "AND NOT EXISTS (SELECT 1 FROM batches b "
                "WHERE b.baseline_cid = baseline_blocks.cid) "
                f"AND cid NOT IN ({', '.join('?' * len(pinned))})",
                (min(max(older_than_ms, 0), _I64_MAX), *pinned),
            )
            return removed

    # -- own sequence numbers --------------------------------------------------------------

    def reserve_seq(self, floor: int = 0) -> int:
        """The next unused own seq, at least `floor`, durably recorded (fsynced) before it
        is returned.

        The commit runs with synchronous=FULL: after a crash or power loss the counter is
        never behind a seq that was handed out, so a seq is never published twice. The node
        passes a floor that carries the time (fai_net/node/seq_clock.py), so that a lost or
        rolled-back counter cannot hand out an old seq either.
        """
        self._conn.execute("PRAGMA synchronous = FULL")
        try:
            with self._tx() as conn:
                (seq,) = conn.execute("SELECT next_seq FROM own_seq WHERE id = 0").fetchone()
                seq = max(seq, floor)
                conn.execute("UPDATE own_seq SET next_seq = ? WHERE id = 0", (seq + 1,))
        finally:
            self._conn.execute("PRAGMA synchronous = NORMAL")
        return seq

    def next_seq(self) -> int:
        """The counter's value: the next seq `reserve_seq` would hand out without a floor."""
        return self._conn.execute("SELECT next_seq FROM own_seq WHERE id = 0").fetchone()[0]

    def ensure_seq_above(self, seq: int) -> None:
        """Never hand out `seq` or below again: used at start with the newest own seq the
        store (or the fleet, through repair) holds, in case the counter was lost."""
        with self._tx() as conn:
            conn.execute("UPDATE own_seq SET next_seq = max(next_seq, ?) WHERE id = 0", (seq + 1,))

    # -- merge bookkeeping -----------------------------------------------------------------

    def unmerged(self, limit: int = 100_000) -> list[bytes]:
        """Envelopes of received batches not yet marked merged, oldest first."""
        _check_limit(limit)
        rows = self._conn.execute(
            "SELECT b.envelope FROM unmerged u JOIN batches b ON b.cid = u.cid "
            "ORDER BY b.cursor LIMIT ?",
            (limit,),
        ).fetchall()
        return [bytes(r[0]) for r in rows]

    def mark_merged(self, cids: Iterable[bytes]) -> None:
        with self._tx() as conn:
            conn.executemany("DELETE FROM unmerged WHERE cid = ?", [(bytes(c),) for c in cids])

    # -- repair cursors --------------------------------------------------------------------

    def peer_cursor(self, peer_id: str) -> int:
        """How far this node has paged through `peer_id`'s store (0: from the start)."""
        row = self._conn.execute(
            "SELECT cursor FROM peer_cursors WHERE peer_id = ?", (peer_id,)
        ).fetchone()
        return 0 if row is None else row[0]

    def set_peer_cursor(self, peer_id: str, cursor: int) -> None:
        if isinstance(cursor, bool) or not isinstance(cursor, int) or not 0 <= cursor <= _I64_MAX:
            raise ValueError(f"cursor must be a non-negative 63-bit integer, got {cursor!r}")
        with self._tx() as conn:
            conn.execute(
                "INSERT INTO peer_cursors (peer_id, cursor) VALUES (?, ?) "
                "ON CONFLICT (peer_id) DO UPDATE SET cursor = excluded.cursor",
                (peer_id, cursor),
            )

    # -- equivocation evidence -------------------------------------------------------------

    def add_evidence(
        self, first: bytes, second: bytes, sender: bytes, seq: int, *, found_ms: int | None = None
    ) -> bool:
        """Record two envelopes by `sender` for `seq`. True if new; the same pair in either
        order is recorded once, so re-receiving the conflicting batch adds nothing."""
        first, second = bytes(first), bytes(second)
        if first == second:
            raise ValueError("evidence needs two different envelopes")
        digests = sorted((hashlib.sha256(first).digest(), hashlib.sha256(second).digest()))
        pair = hashlib.sha256(digests[0] + digests[1]).digest()
        with self._tx() as conn:
            cursor = conn.execute(
                "INSERT OR IGNORE INTO evidence (sender, seq, pair, first, second, found_ms) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (
                    sender,
                    _to_sql(seq),
                    pair,
                    first,
                    second,
                    now_ms() if found_ms is None else found_ms,
                ),
            )
            return cursor.rowcount == 1

    def has_evidence(self, sender: bytes, seq: int) -> bool:
        """One proof per (sender, seq) is enough to slash: further conflicting CIDs at a seq
        already proven are refused without storing two more envelopes each."""
        row = self._conn.execute(
            "SELECT 1 FROM evidence WHERE sender = ? AND seq = ? LIMIT 1", (sender, _to_sql(seq))
        ).fetchone()
        return row is not None

    def evidence_count(self) -> int:
        return self._conn.execute("SELECT count(*) FROM evidence").fetchone()[0]

    def evidence(self) -> list[Evidence]:
        rows = self._conn.execute(
            "SELECT sender, seq, first, second, found_ms FROM evidence "
            "ORDER BY found_ms, sender, seq"
        )
        return [
            Evidence(bytes(s), _from_sql(q), bytes(a), bytes(b), found)
            for s, q, a, b, found in rows
        ]

    # -- outbox ----------------------------------------------------------------------------

    def outbox_add(
        self, ids: Iterable[bytes], domain: str, records: Iterable[bytes | None] | None = None
    ) -> int:
        """Queue local experience ids for broadcast, each with the encoded record to publish
        (`records`, parallel to `ids`; None: publish the library's record); returns how many
        were not queued yet."""
        ids = [bytes(i) for i in ids]
        blobs = [None] * len(ids) if records is None else list(records)
        if len(blobs) != len(ids):
            raise ValueError(f"outbox_add: {len(ids)} ids but {len(blobs)} records")
        with self._tx() as conn:
            before = conn.total_changes
            conn.executemany(
                "INSERT OR IGNORE INTO outbox (id, domain, record) VALUES (?, ?, ?)",
                ((i, domain, r) for i, r in zip(ids, blobs, strict=True)),
            )
            return conn.total_changes - before

    def outbox_records(self, ids: Iterable[bytes]) -> dict[bytes, bytes]:
        """The records queued with these ids (ids queued without one, or not queued, are
        absent)."""
        wanted = list(dict.fromkeys(bytes(i) for i in ids))
        out: dict[bytes, bytes] = {}
        for start in range(0, len(wanted), 500):  # under SQLite's bound-variable limit
            part = wanted[start : start + 500]
            marks = ",".join("?" * len(part))
            rows = self._conn.execute(
                f"SELECT id, record FROM outbox WHERE id IN ({marks}) AND record IS NOT NULL",
                part,
            )
            out.update((bytes(i), bytes(r)) for i, r in rows)
        return out

    def outbox_peek(self, domain: str, limit: int) -> list[bytes]:
        """Oldest queued ids of `domain` first; they stay queued until `commit_local`."""
        _check_limit(limit)
        rows = self._conn.execute(
            "SELECT id FROM outbox WHERE domain = ? ORDER BY position LIMIT ?", (domain, limit)
        )
        return [bytes(row[0]) for row in rows]

    def outbox_count(self, domain: str | None = None) -> int:
        if domain is None:
            return self._conn.execute("SELECT count(*) FROM outbox").fetchone()[0]
        return self._conn.execute(
            "SELECT count(*) FROM outbox WHERE domain = ?", (domain,)
        ).fetchone()[0]

    def outbox_domains(self) -> list[str]:
        rows = self._conn.execute("SELECT DISTINCT domain FROM outbox ORDER BY domain")
        return [row[0] for row in rows]

    def outbox_remove(self, ids: Iterable[bytes]) -> int:
        with self._tx():
            return self._outbox_remove(ids)

    def _outbox_remove(self, ids: Iterable[bytes]) -> int:
        conn = self._conn
        before = conn.total_changes
        conn.executemany("DELETE FROM outbox WHERE id = ?", ((bytes(i),) for i in ids))
        return conn.total_changes - before

    def commit_local(self, signed: SignedBatch, ids: Iterable[bytes], received_ms: int) -> bool:
        """Store an own batch and drop its experiences from the outbox, atomically.

        After a crash either the batch is stored and its ids are gone from the outbox, or
        neither happened and the ids will go out in a later batch (under a fresh seq).
        """
        with self._tx():
            new = self._put(signed, received_ms, "local")
            self._outbox_remove(ids)
            return new
