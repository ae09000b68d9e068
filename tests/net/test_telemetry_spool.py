"""The node's telemetry spool: bounded, all-or-nothing, whole trajectories, many writers.

Writers are the OTLP receiver's threads and short hook processes; the reader is the
node's ingest pass. Nothing a writer or a damaged file does may make the reader lose
data, split a trajectory, or fail forever.
"""

from __future__ import annotations

import os
import sqlite3
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from fai_core.ingest.common import Converted, SessionEnd, tool_record
from fai_core.introspection import Outcome
from fai_core.telemetry import TelemetryRecord
from fai_net.telemetry.spool import Spool, SpoolFull, SpoolTurns, SpoolWriter

REPO = Path(__file__).resolve().parents[2]
IDLE = 60_000


def steps(task: str, attempt: str = "1", n: int = 2, *, domain: str = "coding", t0=1.0):
    return [
        tool_record(
            task_id=task,
            attempt=attempt,
            tool=f"step{i}",
            outcome=Outcome(exit_code=i % 2),
            time=t0 + i,
            domain=domain,
            kind=None,
        )
        for i in range(n)
    ]


def conv(task: str, attempt: str = "1", n: int = 2, *, domain="coding", end=True, **end_kw):
    ends = [SessionEnd(task, attempt, **end_kw)] if end else []
    return Converted(records=steps(task, attempt, n, domain=domain), ends=ends)


@pytest.fixture
def spool(tmp_path):
    with Spool.open(tmp_path / "telemetry.sqlite") as s:
        yield s


def keys_of(closed) -> list[tuple[str, str]]:
    """Trajectory keys in the order their records come, each once."""
    return list(dict.fromkeys((r.task_id, r.attempt) for r in closed.records))


# --- append ----------------------------------------------------------------------------


def test_append_is_all_or_nothing_when_full(tmp_path):
    with Spool.open(tmp_path / "s.sqlite", max_steps=5) as spool:
        assert spool.append(conv("a", n=3), at_ms=1000) == 3
        before = spool.counts()
        with pytest.raises(SpoolFull) as info:
            spool.append(Converted(steps("b", n=3), [SessionEnd("b", "1", failed=True)]))
        assert info.value.retry_after > 0
        assert spool.counts() == before == {"steps": 3, "closed": 1, "open": 0}
        closed = spool.closed(["coding"], now=1000)
        assert keys_of(closed) == [("a", "1")] and set(closed.ends) == {("a", "1")}
        assert spool.append(conv("c", n=2), at_ms=2000) == 2  # exactly full is fine
        with pytest.raises(SpoolFull):
            spool.append(conv("d", n=1))
        assert spool.counts()["steps"] == 5


def test_a_batch_failing_midway_stores_nothing(spool):
    # A lone surrogate passes record validation but SQLite cannot store it: the good
    # record before it must not be stored alone.
    bad = TelemetryRecord("\ud800", "x", None, None, 0.0, 1.0, domain="coding")
    with pytest.raises(UnicodeEncodeError):
        spool.append(Converted([*steps("good"), bad], [SessionEnd("good", "1")]))
    assert spool.counts() == {"steps": 0, "closed": 0, "open": 0}
    assert spool.append(conv("good")) == 2  # the connection is still usable


# --- closed ----------------------------------------------------------------------------


def fill(spool: Spool) -> None:
    spool.append(conv("a", n=3), at_ms=1000)
    spool.append(conv("b", domain="devops"), at_ms=2000)
    spool.append(Converted(steps("c", n=1)), at_ms=1500)  # c arrives in two parts,
    spool.append(Converted(steps("c", n=2, t0=5.0), [SessionEnd("c", "1")]), at_ms=3000)
    spool.append(conv("open", end=False), at_ms=3000)
    spool.append(conv("e", n=4), at_ms=4000)


def test_closed_returns_whole_trajectories_of_wanted_domains_oldest_first(spool):
    fill(spool)
    closed = spool.closed(["coding"], idle_ms=IDLE, now=5000)
    assert keys_of(closed) == [("a", "1"), ("c", "1"), ("e", "1")]
    per_key = {k: [r for r in closed.records if (r.task_id, r.attempt) == k] for k in closed.ends}
    assert {k: len(v) for k, v in per_key.items()} == {("a", "1"): 3, ("c", "1"): 3, ("e", "1"): 4}
    # ... in arrival order, and never interleaved with another trajectory
    assert [r.time for r in per_key[("c", "1")]] == [1.0, 5.0, 6.0]
    assert all(r.domain == "coding" for r in closed.records)
    both = spool.closed(["devops", "coding", "coding"], idle_ms=IDLE, now=5000)
    assert keys_of(both) == [("a", "1"), ("b", "1"), ("c", "1"), ("e", "1")]
    assert spool.closed(["writing"], idle_ms=IDLE, now=5000).records == []
    assert spool.closed([], idle_ms=IDLE, now=5000).records == []
    assert spool.counts() == {"steps": 14, "closed": 4, "open": 1}  # reading removes nothing


@pytest.mark.parametrize("limit", [1, 2, 3])
def test_closed_limit_counts_trajectories_and_never_splits_one(spool, limit):
    fill(spool)
    closed = spool.closed(["coding"], idle_ms=IDLE, now=5000, limit=limit)
    expected = [("a", "1"), ("c", "1"), ("e", "1")][:limit]
    assert keys_of(closed) == expected and set(closed.ends) == set(expected)
    assert len(closed.records) == [3, 6, 10][limit - 1]


def test_idle_trajectories_are_closed_after_idle_ms(spool):
    spool.append(conv("slow", end=False), at_ms=1000)
    spool.append(Converted(steps("slow", n=1, t0=9.0)), at_ms=2000)  # the last step counts
    spool.append(conv("other", end=False, domain="devops"), at_ms=2000)
    assert spool.closed(["coding"], idle_ms=IDLE, now=2000 + IDLE - 1).records == []
    assert spool.counts()["open"] == 2
    closed = spool.closed(["coding"], idle_ms=IDLE, now=2000 + IDLE)
    assert keys_of(closed) == [("slow", "1")] and len(closed.records) == 3
    assert closed.ends[("slow", "1")] == SessionEnd("slow", "1", failed=None, feedback=None)
    # idle closing is for every domain, read or not (so that they can expire)
    assert spool.counts() == {"steps": 5, "closed": 2, "open": 0}


def test_a_late_explicit_end_replaces_the_synthetic_one(spool):
    spool.append(conv("late", end=False), at_ms=1000)
    first = spool.closed(["coding"], idle_ms=IDLE, now=1000 + IDLE)
    assert first.ends[("late", "1")] == SessionEnd("late", "1")
    spool.append(Converted(ends=[SessionEnd("late", "1", failed=True, feedback=-0.5)]))
    again = spool.closed(["coding"], idle_ms=IDLE, now=1000 + IDLE)
    assert again.ends[("late", "1")] == SessionEnd("late", "1", failed=True, feedback=-0.5)
    assert len(again.records) == 2
    # ... and a later idle pass does not overwrite the explicit one
    later = spool.closed(["coding"], idle_ms=IDLE, now=10 * IDLE)
    assert later.ends[("late", "1")].failed is True


def test_end_fields_round_trip(spool):
    for i, (failed, feedback) in enumerate([(None, None), (False, None), (True, 0.25)]):
        spool.append(conv(f"t{i}", failed=failed, feedback=feedback), at_ms=1000 + i)
    ends = spool.closed(["coding"], idle_ms=IDLE, now=2000).ends
    assert ends == {
        ("t0", "1"): SessionEnd("t0", "1"),
        ("t1", "1"): SessionEnd("t1", "1", failed=False),
        ("t2", "1"): SessionEnd("t2", "1", failed=True, feedback=0.25),
    }


# --- consume / expire ---------------------------------------------------------------------


def test_consume_forgets_exactly_the_given_trajectories(spool):
    fill(spool)
    removed = spool.consume([("a", "1"), ("e", "1"), ("nope", "1"), ("a", "2")])
    assert removed == 7  # steps, as documented: 3 of a and 4 of e
    assert spool.counts() == {"steps": 7, "closed": 2, "open": 1}
    closed = spool.closed(["coding", "devops"], idle_ms=IDLE, now=5000)
    assert keys_of(closed) == [("b", "1"), ("c", "1")]
    assert spool.consume([]) == 0
    # a consumed key that comes back is a new trajectory, open until it ends
    spool.append(conv("a", end=False), at_ms=6000)
    assert ("a", "1") not in spool.closed(["coding"], idle_ms=IDLE, now=6000).ends


def test_expire_drops_old_closed_trajectories_and_orphan_ends(spool):
    spool.append(conv("old", n=3), at_ms=1_000)
    spool.append(conv("new", n=2), at_ms=900_000)
    spool.append(conv("open", end=False), at_ms=1_000)  # no end yet: never expired unread
    spool.append(Converted(ends=[SessionEnd("orphan", "1")]), at_ms=1_000)
    dropped = spool.expire(max_age_ms=500_000, now=1_000_000)
    assert dropped == 3
    assert spool.counts() == {"steps": 4, "closed": 1, "open": 1}
    assert keys_of(spool.closed(["coding"], idle_ms=10**9, now=1_000_000)) == [("new", "1")]
    assert spool.expire(max_age_ms=500_000, now=1_000_000) == 0


def test_expire_forgets_old_turn_counters(spool):
    spool.set_turn("s", 3)
    spool.expire(max_age_ms=IDLE, now=time.time_ns() // 1_000_000 + IDLE // 2)
    assert spool.turn("s") == 3
    spool.expire(max_age_ms=IDLE, now=time.time_ns() // 1_000_000 + 2 * IDLE)
    assert spool.turn("s") == 0


# --- the file -------------------------------------------------------------------------------


def test_spool_files_are_private(tmp_path):
    path = tmp_path / "telemetry.sqlite"
    old = os.umask(0o022)
    try:
        with Spool.open(path) as spool:
            spool.append(conv("a"))
            for name in os.listdir(tmp_path):  # the WAL and shared-memory files too
                mode = stat.S_IMODE(os.stat(tmp_path / name).st_mode)
                assert mode == 0o600, (name, oct(mode))
    finally:
        os.umask(old)


WRITER = """
import sys, time
from pathlib import Path
from fai_core.ingest.common import Converted, SessionEnd, tool_record
from fai_core.introspection import Outcome
from fai_net.telemetry.spool import Spool

path, worker, count, go = sys.argv[1], sys.argv[2], int(sys.argv[3]), Path(sys.argv[4])
while not go.exists():
    time.sleep(0.001)
for i in range(count):
    records = [
        tool_record(task_id=f"w{worker}", attempt=str(i), tool="run", time=float(j),
                    outcome=Outcome(exit_code=j), domain="coding", kind=None)
        for j in range(2)
    ]
    with Spool.open(path) as spool:  # one short process per event, as the hook does
        spool.append(Converted(records, [SessionEnd(f"w{worker}", str(i))]))
"""


def test_concurrent_processes_lose_nothing_even_on_a_fresh_spool(tmp_path):
    path = tmp_path / "telemetry.sqlite"  # does not exist yet: all writers create it at once
    go = tmp_path / "go"
    workers, count = 6, 15
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(path), str(w), str(count), str(go)],
            cwd=REPO,
            stderr=subprocess.PIPE,
            text=True,
        )
        for w in range(workers)
    ]
    time.sleep(0.5)  # let them import, then release them together
    go.touch()
    errors = [p.communicate(timeout=60)[1] for p in procs]
    assert [p.returncode for p in procs] == [0] * workers, "\n".join(e for e in errors if e)
    with Spool.open(path) as spool:
        assert spool.counts() == {
            "steps": 2 * workers * count,
            "closed": workers * count,
            "open": 0,
        }
        closed = spool.closed(["coding"], now=0, limit=10**6)
        assert set(closed.ends) == {(f"w{w}", str(i)) for w in range(workers) for i in range(count)}


def test_many_writers_creating_the_spool_at_once_all_get_in(tmp_path):
    # Switching a new file to WAL fails at once ("database is locked") for some of the
    # connections that race to do it: each attempt below hit it about 7% of the time.
    failures: list[str] = []
    for trial in range(60):
        path = tmp_path / f"fresh{trial}.sqlite"
        barrier = threading.Barrier(8)

        def open_and_append(w: int, path: Path = path, barrier=barrier) -> None:
            barrier.wait()
            try:
                with Spool.open(path, check_same_thread=False) as spool:
                    spool.append(conv(f"w{w}"))
            except Exception as exc:
                failures.append(f"{path.name}: {exc!r}")

        threads = [threading.Thread(target=open_and_append, args=(w,)) for w in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        if not failures:
            with Spool.open(path) as spool:
                assert spool.counts()["closed"] == 8
    assert failures == []


def test_spool_writer_from_many_threads(tmp_path):
    writer = SpoolWriter(tmp_path / "telemetry.sqlite")
    threads, count = 8, 25
    errors: list[BaseException] = []
    barrier = threading.Barrier(threads)

    def work(w: int) -> None:
        try:
            barrier.wait()
            for i in range(count):
                assert writer(conv(f"th{w}", str(i))) == 2
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    pool = [threading.Thread(target=work, args=(w,)) for w in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join(60)
    writer.close()
    assert errors == []
    with Spool.open(tmp_path / "telemetry.sqlite") as spool:
        assert spool.counts() == {
            "steps": 2 * threads * count,
            "closed": threads * count,
            "open": 0,
        }


def test_spool_writer_is_bounded_too(tmp_path):
    writer = SpoolWriter(tmp_path / "telemetry.sqlite", max_steps=3)
    assert writer(conv("a", n=3)) == 3
    with pytest.raises(SpoolFull):
        writer(conv("b", n=1))
    writer.close()


# --- turns ----------------------------------------------------------------------------------


def test_spool_turns_is_a_mutable_mapping_that_persists(tmp_path):
    path = tmp_path / "telemetry.sqlite"
    with Spool.open(path) as spool:
        turns = SpoolTurns(spool)
        assert len(turns) == 0 and list(turns) == [] and "s1" not in turns
        with pytest.raises(KeyError, match=r"^'s1'$"):
            turns["s1"]
        assert turns.get("s1") is None and turns.get("s1", 0) == 0
        assert spool.turn("s1") == 0
        turns["s1"] = 1
        turns["s1"] = turns["s1"] + 1
        turns.update({"s2": 7, "s3": 0})
        assert turns.setdefault("s2", 99) == 7
        assert dict(turns) == {"s1": 2, "s2": 7, "s3": 0} and len(turns) == 3
        assert "s3" in turns and spool.turn("s1") == 2
        del turns["s3"]
        assert "s3" not in turns and turns.pop("s2") == 7 and turns.pop("s2", None) is None
        with pytest.raises(KeyError, match=r"^'never'$"):
            del turns["never"]
    # the next hook process (a new connection) sees the counter
    with Spool.open(path) as spool:
        assert dict(SpoolTurns(spool)) == {"s1": 2}


# --- damage -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sql", "args"),
    [
        ("UPDATE steps SET record = ? WHERE task_id = 'bad'", ("garbage{",)),
        ("UPDATE steps SET record = ? WHERE task_id = 'bad'", ('{"task_id": "bad"}',)),
        ("UPDATE steps SET record = ? WHERE task_id = 'bad'", (b"\xff\xfe",)),
        ("UPDATE steps SET record = ? WHERE task_id = 'bad'", (12,)),
        # a valid line of another trajectory: consuming by its own key would never free it
        ("UPDATE steps SET record = ? WHERE task_id = 'bad'", (steps("zz")[0].to_line(),)),
        ("UPDATE ends SET feedback = ? WHERE task_id = 'bad'", (7.5,)),
        ("UPDATE ends SET feedback = ? WHERE task_id = 'bad'", ("x",)),
    ],
)
def test_a_corrupted_row_does_not_make_closed_fail_forever(tmp_path, sql, args):
    path = tmp_path / "telemetry.sqlite"
    with Spool.open(path) as spool:
        spool.append(conv("bad"), at_ms=1000)  # the oldest: first in every read
        spool.append(conv("good"), at_ms=2000)
        db = sqlite3.connect(path)
        db.execute(sql, args)
        db.commit()
        db.close()
        for _ in range(2):  # not once: every later pass too
            closed = spool.closed(["coding"], idle_ms=IDLE, now=3000)
            assert keys_of(closed) == [("good", "1")]
            assert len(closed.records) == 2 and set(closed.ends) == {("good", "1")}
        # the damaged trajectory cannot ever be learnt from: it must not stay held
        assert spool.counts() == {"steps": 2, "closed": 1, "open": 0}


def test_a_later_end_marker_never_erases_what_an_earlier_one_said(spool):
    """StopFailure (failed) then SessionEnd (says nothing) for one Claude Code turn: the
    turn still failed; a later explicit feedback is added to it."""
    spool.append(Converted(records=steps("t", "0")))
    spool.append(Converted(ends=[SessionEnd("t", "0", failed=True)]))
    spool.append(Converted(ends=[SessionEnd("t", "0", failed=None)]))
    spool.append(Converted(ends=[SessionEnd("t", "0", failed=None, feedback=0.5)]))
    (end,) = spool.closed(["coding"]).ends.values()
    assert end.failed is True and end.feedback == 0.5


def test_what_session_start_recalled_is_reported_with_the_first_turn(spool):
    spool.remember_recalled("s", 0, ["aa", "bb"])  # SessionStart: before any prompt
    spool.remember_recalled("s", 1, ["bb", "cc"])  # the first prompt
    spool.remember_recalled("s", 2, ["dd"])  # a later turn, not ended yet
    spool.remember_recalled("other", 1, ["ee"])
    assert spool.recalled("s", 1) == ["aa", "bb", "cc"]
    spool.forget_recalled("s", 1)
    assert spool.recalled("s", 1) == [] and spool.recalled("s", 2) == ["dd"]
    assert spool.recalled("other", 1) == ["ee"]
