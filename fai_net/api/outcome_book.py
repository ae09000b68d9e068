"""What this node's agents reported about the experiences they recalled, kept on disk.

Three tables in `outcomes.sqlite` in the node's data directory:

* `feedback`: per experience id, the Beta tally of reports (`fai_core.ranking.Tally`);
* `sources`: the same tally per source node, summed over all its experiences: the
  source's standing, separate from the gate's reputation (which only counts provable
  misbehaviour, fai_core/reputation.py) because feedback is a local opinion, not a proof;
* `sightings`: which distinct sources published each experience id (corroboration).

Feedback comes only from the node's own control socket (its operator's agents), so it is
trusted as an opinion, but bounded: it must name an experience the library holds.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterable
from pathlib import Path

from fai_core.clock import now_ms
from fai_core.ranking import Tally, is_muted

_SCHEMA = """
CREATE TABLE IF NOT EXISTS feedback (
    id BLOB PRIMARY KEY, source BLOB NOT NULL, helped REAL NOT NULL, hurt REAL NOT NULL,
    reports INTEGER NOT NULL, updated_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS sources (
    source BLOB PRIMARY KEY, helped REAL NOT NULL, hurt REAL NOT NULL,
    reports INTEGER NOT NULL, updated_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS sightings (
    id BLOB NOT NULL, source BLOB NOT NULL, PRIMARY KEY (id, source)
) WITHOUT ROWID;
"""

#: Largest id list one lookup binds (SQLite's default variable limit is 32,766).
_CHUNK = 500


class OutcomeBook:
    """Thread-safe (one connection behind a lock): recall reads it from worker threads
    while a merge round records sightings."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        path = Path(path)
        if not path.exists():
            os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._lock = threading.Lock()
        self._muted = self._load_muted()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def record(self, ident: bytes, source: bytes, reward: float) -> tuple[Tally, Tally]:
        """Count one report on `ident` (published by `source`); the new tallies of both.

        The experience's tally counts every report. Its source's tally counts each of its
        experiences once, by the share of help and hurt reported on it: repeating `hurt`
        on one experience (an agent told to by the text it recalled) moves the source
        no further, and muting takes MUTE_MIN_REPORTS distinct experiences that hurt."""
        now = now_ms()
        with self._lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                before = self._tally(db, "feedback", "id", ident)
                item = before.add(reward)
                old_src = self._tally(db, "sources", "source", source)
                src = _swap(old_src, _share(before), _share(item))
                db.execute(
                    "INSERT INTO feedback VALUES (?, ?, ?, ?, 1, ?) ON CONFLICT(id) DO UPDATE "
                    "SET helped = excluded.helped, hurt = excluded.hurt, "
                    "reports = reports + 1, updated_ms = excluded.updated_ms",
                    (ident, source, item.helped, item.hurt, now),
                )
                db.execute(
                    "INSERT INTO sources VALUES (?, ?, ?, 1, ?) ON CONFLICT(source) DO UPDATE "
                    "SET helped = excluded.helped, hurt = excluded.hurt, "
                    "reports = reports + 1, updated_ms = excluded.updated_ms",
                    (source, src.helped, src.hurt, now),
                )
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
            if is_muted(src):
                self._muted.add(source)
            else:
                self._muted.discard(source)
        return item, src

    @staticmethod
    def _tally(db: sqlite3.Connection, table: str, column: str, key: bytes) -> Tally:
        row = db.execute(f"SELECT helped, hurt FROM {table} WHERE {column} = ?", (key,)).fetchone()
        return Tally() if row is None else Tally(float(row[0]), float(row[1]))

    def _lookup(self, table: str, column: str, keys: Iterable[bytes]) -> dict[bytes, Tally]:
        keys = list(dict.fromkeys(keys))
        out: dict[bytes, Tally] = {}
        with self._lock:
            for start in range(0, len(keys), _CHUNK):
                part = keys[start : start + _CHUNK]
                marks = ",".join("?" * len(part))
                for key, helped, hurt in self._db.execute(
                    f"SELECT {column}, helped, hurt FROM {table} WHERE {column} IN ({marks})",
                    part,
                ):
                    out[bytes(key)] = Tally(float(helped), float(hurt))
        return out

    def tallies(self, ids: Iterable[bytes]) -> dict[bytes, Tally]:
        return self._lookup("feedback", "id", ids)

    def source_tallies(self, sources: Iterable[bytes]) -> dict[bytes, Tally]:
        return self._lookup("sources", "source", sources)

    def reports(self, ident: bytes) -> int:
        with self._lock:
            row = self._db.execute("SELECT reports FROM feedback WHERE id = ?", (ident,))
            found = row.fetchone()
        return 0 if found is None else int(found[0])

    def sighted(self, pairs: Iterable[tuple[bytes, bytes]]) -> None:
        """Remember that `source` published experience `id` (idempotent)."""
        pairs = list(pairs)
        if not pairs:
            return
        with self._lock:
            self._db.executemany("INSERT OR IGNORE INTO sightings VALUES (?, ?)", pairs)

    def sources_of(self, ids: Iterable[bytes]) -> dict[bytes, frozenset[bytes]]:
        """The distinct sources that published each id (ids never sighted are absent):
        their number is the corroboration recall ranks by, and an id whose every source
        now stands refused is not offered (fai_net/api/recall.py)."""
        ids = list(dict.fromkeys(ids))
        found: dict[bytes, set[bytes]] = {}
        with self._lock:
            for start in range(0, len(ids), _CHUNK):
                part = ids[start : start + _CHUNK]
                marks = ",".join("?" * len(part))
                for key, source in self._db.execute(
                    f"SELECT id, source FROM sightings WHERE id IN ({marks})", part
                ):
                    found.setdefault(bytes(key), set()).add(bytes(source))
        return {k: frozenset(v) for k, v in found.items()}

    def muted(self) -> frozenset[bytes]:
        """Sources whose lessons hurt often enough that new ones are not merged."""
        with self._lock:
            return frozenset(self._muted)

    def _load_muted(self) -> set[bytes]:
        rows = self._db.execute("SELECT source, helped, hurt FROM sources").fetchall()
        return {bytes(s) for s, h, x in rows if is_muted(Tally(float(h), float(x)))}


def _share(tally: Tally) -> Tally:
    """One experience's weight in its source's tally: its reports scaled to sum to 1."""
    if tally.reports <= 0:
        return Tally()
    return Tally(tally.helped / tally.reports, tally.hurt / tally.reports)


def _swap(source: Tally, old: Tally, new: Tally) -> Tally:
    """The source tally with one experience's old share replaced by its new one."""
    return Tally(
        max(0.0, source.helped - old.helped + new.helped),
        max(0.0, source.hurt - old.hurt + new.hurt),
    )
