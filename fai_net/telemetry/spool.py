"""The node's telemetry spool: imported tool calls waiting to become experiences.

Several writers feed one node: the OTLP receiver inside it, and, as separate processes,
`fai hook claude-code` (one short process per hook event) and the OpenAI Agents SDK
processor inside an agent. They meet in one SQLite file in the node's data directory
(`telemetry.sqlite`, WAL mode), which is safe across processes and survives restarts:
a writer never needs the node to be up, and a node that restarts loses nothing.

What is stored is what the importers produce (`fai_core.ingest.common`): tool names,
outcome classes, step rewards, times, session ids and domain tags. No prompt, completion,
tool input or output is ever written here.

The node reads *closed* trajectories: those with a `SessionEnd` marker, or idle for
longer than the idle timeout (they get a marker then). Extraction consumes trajectories
in GRPO groups; single attempts wait here until enough comparable ones have closed,
at most `max_age_ms`. The spool is bounded (`max_steps`): a full spool refuses new data
with `SpoolFull` (the OTLP receiver answers 503 and the exporter retries later) rather
than dropping what it holds.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path

from fai_core.clock import now_ms
from fai_core.errors import FaiError
from fai_core.ingest.common import Converted, SessionEnd
from fai_core.telemetry import TelemetryRecord, parse_line

#: Steps held at most; beyond, writers are refused until the node has consumed some.
MAX_STEPS = 200_000
#: A trajectory with no end marker closes after this long without a new step.
IDLE_MS = 10 * 60_000
#: Closed trajectories still waiting for comparable ones are dropped after this long.
MAX_AGE_MS = 7 * 24 * 3_600_000
#: Most trajectories one `closed()` call returns, so one read costs bounded memory.
READ_LIMIT = 5_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS steps (
    id INTEGER PRIMARY KEY,
    task_id TEXT NOT NULL,
    attempt TEXT NOT NULL,
    domain TEXT NOT NULL,
    at_ms INTEGER NOT NULL,
    record TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS steps_by_key ON steps (task_id, attempt);
CREATE TABLE IF NOT EXISTS ends (
    task_id TEXT NOT NULL,
    attempt TEXT NOT NULL,
    failed INTEGER,
    feedback REAL,
    at_ms INTEGER NOT NULL,
    PRIMARY KEY (task_id, attempt)
);
CREATE TABLE IF NOT EXISTS recalled (
    session TEXT NOT NULL, turn INTEGER NOT NULL, id TEXT NOT NULL, at_ms INTEGER NOT NULL,
    PRIMARY KEY (session, turn, id)
);
CREATE TABLE IF NOT EXISTS turns (
    session TEXT PRIMARY KEY, turn INTEGER NOT NULL, at_ms INTEGER NOT NULL
);
"""


class SpoolFull(FaiError):
    """The spool holds `max_steps` steps: retry after the node has consumed some."""

    retry_after = 30.0


@dataclass
class Closed:
    """Closed trajectories read from the spool: their records and their end markers."""

    records: list[TelemetryRecord]
    ends: dict[tuple[str, str], SessionEnd]
    #: trajectories with a row that does not read back (a damaged file): dropped
    corrupt: int = 0
    #: the last step id read per trajectory: `consume(..., upto=)` leaves later steps
    upto: dict[tuple[str, str], int] = field(default_factory=dict)


def _initialise(db: sqlite3.Connection, timeout_s: float) -> None:
    """WAL mode and the schema. Switching a new file to WAL while other processes open it
    too can fail at once with "database is locked" (SQLite does not call its busy
    handler there), so that is retried for up to `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(_SCHEMA)
            return
        except sqlite3.OperationalError as exc:
            busy = "locked" in str(exc) or "busy" in str(exc)
            if not busy or time.monotonic() >= deadline:
                raise
            time.sleep(0.005)


class Spool:
    """One connection to the spool file. Not shared between threads: open one per thread."""

    def __init__(self, db: sqlite3.Connection, path: Path, max_steps: int) -> None:
        self._db = db
        self.path = path
        self.max_steps = max_steps

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        max_steps: int = MAX_STEPS,
        timeout_s: float = 2.0,
        check_same_thread: bool = True,
    ) -> Spool:
        """Open (creating it 0600) the spool at `path`. `timeout_s` bounds a wait for
        another writer's lock: a hook must never stall its agent for long. A connection
        used from several threads (`check_same_thread=False`) must be used by one at a
        time."""
        path = Path(path)
        if not path.exists():
            fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o600)
            os.close(fd)
        db = sqlite3.connect(
            path, timeout=timeout_s, isolation_level=None, check_same_thread=check_same_thread
        )
        try:
            _initialise(db, timeout_s)
        except BaseException:
            db.close()
            raise
        return cls(db, path, max_steps)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Spool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def _transaction(self):
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def append(self, converted: Converted, *, at_ms: int | None = None) -> int:
        """Store an importer's records and end markers, all or nothing. Returns the
        number of steps stored; raises SpoolFull, storing nothing, when they do not fit."""
        at = now_ms() if at_ms is None else at_ms
        steps = [(r.task_id, r.attempt, r.domain, at, r.to_line()) for r in converted.records]
        ends = [(e.task_id, e.attempt, _flag(e.failed), e.feedback, at) for e in converted.ends]
        with self._transaction() as db:
            (held,) = db.execute("SELECT COUNT(*) FROM steps").fetchone()
            if held + len(steps) > self.max_steps:
                raise SpoolFull(
                    f"telemetry spool full ({held} of {self.max_steps} steps): retry later"
                )
            db.executemany(
                "INSERT INTO steps (task_id, attempt, domain, at_ms, record) "
                "VALUES (?, ?, ?, ?, ?)",
                steps,
            )
            # A later marker adds what it knows and never erases what an earlier one said
            # (StopFailure then SessionEnd for one turn: the turn still failed).
            db.executemany(
                "INSERT INTO ends VALUES (?, ?, ?, ?, ?) ON CONFLICT(task_id, attempt) "
                "DO UPDATE SET failed = COALESCE(excluded.failed, ends.failed), "
                "feedback = COALESCE(excluded.feedback, ends.feedback), at_ms = excluded.at_ms",
                ends,
            )
        return len(steps)

    def turn(self, session: str) -> int:
        """The current turn of a Claude Code session (0 before its first prompt)."""
        row = self._db.execute("SELECT turn FROM turns WHERE session = ?", (session,)).fetchone()
        return 0 if row is None else int(row[0])

    def set_turn(self, session: str, turn: int) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO turns VALUES (?, ?, ?)", (session, int(turn), now_ms())
        )

    def remember_recalled(self, session: str, turn: int, ids: Iterable[str]) -> None:
        """The experience ids recalled for a Claude Code turn, for feedback at its end."""
        now = now_ms()
        self._db.executemany(
            "INSERT OR IGNORE INTO recalled VALUES (?, ?, ?, ?)",
            [(session, int(turn), str(i), now) for i in ids],
        )

    def recalled(self, session: str, turn: int) -> list[str]:
        """Ids recalled for this turn or an earlier one of the session and not yet reported
        on (what SessionStart recalled is judged by the first turn)."""
        rows = self._db.execute(
            "SELECT DISTINCT id FROM recalled WHERE session = ? AND turn <= ? ORDER BY id",
            (session, int(turn)),
        )
        return [row[0] for row in rows]

    def forget_recalled(self, session: str, turn: int) -> None:
        self._db.execute(
            "DELETE FROM recalled WHERE session = ? AND turn <= ?", (session, int(turn))
        )

    def steps_of(self, task_id: str, attempt: str) -> list[TelemetryRecord]:
        """The steps of one trajectory still in the spool (unreadable rows skipped)."""
        out = []
        for (line,) in self._db.execute(
            "SELECT record FROM steps WHERE task_id = ? AND attempt = ? ORDER BY id",
            (task_id, attempt),
        ):
            try:
                out.append(parse_line(line))
            except ValueError:
                continue
        return out

    def closed(
        self,
        domains: Iterable[str],
        *,
        idle_ms: int = IDLE_MS,
        now: int | None = None,
        limit: int = READ_LIMIT,
    ) -> Closed:
        """Closed trajectories of `domains`, whole and oldest first, at most `limit` of them.

        Idle trajectories are closed first (an end marker that says nothing of their
        fate), so what a crash interrupts is still learnt from.
        """
        now = now_ms() if now is None else now
        wanted = sorted(set(domains))
        if not wanted:
            return Closed([], {})
        marks = ",".join("?" * len(wanted))
        with self._transaction() as db:
            db.execute(
                "INSERT OR IGNORE INTO ends (task_id, attempt, failed, feedback, at_ms) "
                "SELECT task_id, attempt, NULL, NULL, ? FROM steps "
                "GROUP BY task_id, attempt HAVING MAX(at_ms) <= ?",
                (now, now - idle_ms),
            )
            # One query: the oldest `limit` closed trajectories, then all their steps
            # (a query per trajectory cost more than the GRPO extraction itself).
            rows = db.execute(
                "WITH chosen AS (SELECT e.task_id, e.attempt, e.failed, e.feedback, e.at_ms "
                "FROM ends e WHERE EXISTS (SELECT 1 FROM steps s WHERE s.task_id = e.task_id "
                f"AND s.attempt = e.attempt AND s.domain IN ({marks})) "
                "ORDER BY e.at_ms LIMIT ?) "
                "SELECT c.task_id, c.attempt, s.record, c.failed, c.feedback, s.id FROM chosen c "
                "JOIN steps s ON s.task_id = c.task_id AND s.attempt = c.attempt "
                "ORDER BY c.at_ms, c.task_id, c.attempt, s.id",
                (*wanted, limit),
            ).fetchall()
        records, ends, bad, upto = [], {}, set(), {}
        for task_id, attempt, line, failed, feedback, step_id in rows:
            key = (task_id, attempt)
            upto[key] = max(upto.get(key, 0), step_id)
            if key in bad:
                continue
            try:  # a damaged row must not fail every later read: its trajectory is dropped
                record = parse_line(line)
                if (record.task_id, record.attempt) != key:
                    raise ValueError("a record of another trajectory")
                if key not in ends:
                    flag = None if failed is None else bool(failed)
                    ends[key] = SessionEnd(task_id, attempt, flag, feedback)
            except (ValueError, TypeError):  # TelemetryError is a ValueError
                bad.add(key)
                continue
            records.append(record)
        if bad:
            records = [r for r in records if (r.task_id, r.attempt) not in bad]
            ends = {k: v for k, v in ends.items() if k not in bad}
            self.consume(bad)
        return Closed(records, ends, len(bad), {k: v for k, v in upto.items() if k not in bad})

    def consume(
        self, keys: Iterable[tuple[str, str]], upto: dict[tuple[str, str], int] | None = None
    ) -> int:
        """Forget these trajectories (extraction is done with them). Returns steps removed.

        With `upto` (from `Closed.upto`), only the steps that were read go: a step a hook
        appended while the node was extracting (an agent that went on after Stop) stays,
        and so does its trajectory's end marker, so it is read at the next pass."""
        keys = list(keys)
        upto = upto or {}
        bound = [(t, a, upto.get((t, a), 1 << 62)) for t, a in keys]
        with self._transaction() as db:
            removed = db.executemany(
                "DELETE FROM steps WHERE task_id = ? AND attempt = ? AND id <= ?", bound
            ).rowcount
            db.executemany(
                "DELETE FROM ends WHERE task_id = ? AND attempt = ? AND NOT EXISTS "
                "(SELECT 1 FROM steps s WHERE s.task_id = ends.task_id "
                "AND s.attempt = ends.attempt)",
                keys,
            )
            return max(removed, 0)

    def expire(
        self, *, max_age_ms: int = MAX_AGE_MS, idle_ms: int = IDLE_MS, now: int | None = None
    ) -> int:
        """Drop trajectories closed longer ago than `max_age_ms`, and end markers that no
        step joins. Returns the number of steps dropped."""
        now = now_ms() if now is None else now
        with self._transaction() as db:
            old = db.execute(
                "SELECT task_id, attempt FROM ends WHERE at_ms < ?", (now - max_age_ms,)
            ).fetchall()
            dropped = 0
            for key in old:
                dropped += db.execute(
                    "DELETE FROM steps WHERE task_id = ? AND attempt = ?", key
                ).rowcount
            db.execute("DELETE FROM ends WHERE at_ms < ?", (now - max_age_ms,))
            db.execute("DELETE FROM turns WHERE at_ms < ?", (now - max_age_ms,))
            db.execute("DELETE FROM recalled WHERE at_ms < ?", (now - max_age_ms,))
            db.execute(
                "DELETE FROM ends WHERE NOT EXISTS (SELECT 1 FROM steps s "
                "WHERE s.task_id = ends.task_id AND s.attempt = ends.attempt) AND at_ms < ?",
                (now - idle_ms,),
            )
            return dropped

    def counts(self) -> dict[str, int]:
        """Steps held, and trajectories closed (with a marker) and still open."""
        db = self._db
        (steps,) = db.execute("SELECT COUNT(*) FROM steps").fetchone()
        (closed,) = db.execute(
            "SELECT COUNT(*) FROM ends e WHERE EXISTS (SELECT 1 FROM steps s "
            "WHERE s.task_id = e.task_id AND s.attempt = e.attempt)"
        ).fetchone()
        (trajectories,) = db.execute(
            "SELECT COUNT(*) FROM (SELECT 1 FROM steps GROUP BY task_id, attempt)"
        ).fetchone()
        return {"steps": steps, "closed": closed, "open": trajectories - closed}


def _flag(value: bool | None) -> int | None:
    return None if value is None else int(value)


class SpoolWriter:
    """Appends to one spool from any thread (the OTLP receiver's handler threads): one
    connection, used by one thread at a time. A connection per thread would leak one per
    request, since the receiver starts a thread per connection."""

    def __init__(self, path: str | os.PathLike[str], *, max_steps: int = MAX_STEPS) -> None:
        self.path = Path(path)
        self.max_steps = max_steps
        self._lock = threading.Lock()
        self._spool: Spool | None = None

    def __call__(self, converted: Converted) -> int:
        with self._lock:
            if self._spool is None:
                self._spool = Spool.open(
                    self.path, max_steps=self.max_steps, check_same_thread=False
                )
            return self._spool.append(converted)

    def close(self) -> None:
        with self._lock:
            if self._spool is not None:
                self._spool.close()
                self._spool = None


class SpoolTurns(MutableMapping[str, int]):
    """The spool's Claude Code turn counters as a mapping (what `HookConverter` takes):
    each hook event is a new process, so the counter must live on disk."""

    def __init__(self, spool: Spool) -> None:
        self._spool = spool

    def __getitem__(self, session: str) -> int:
        row = self._spool._db.execute(
            "SELECT turn FROM turns WHERE session = ?", (session,)
        ).fetchone()
        if row is None:
            raise KeyError(session)
        return int(row[0])

    def __setitem__(self, session: str, turn: int) -> None:
        self._spool.set_turn(session, turn)

    def __delitem__(self, session: str) -> None:
        cursor = self._spool._db.execute("DELETE FROM turns WHERE session = ?", (session,))
        if cursor.rowcount == 0:
            raise KeyError(session)

    def __iter__(self) -> Iterator[str]:
        return iter([row[0] for row in self._spool._db.execute("SELECT session FROM turns")])

    def __len__(self) -> int:
        return int(self._spool._db.execute("SELECT COUNT(*) FROM turns").fetchone()[0])
