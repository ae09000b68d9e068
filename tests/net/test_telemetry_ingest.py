"""The node's ingest pass: spool -> terminal rewards -> extraction -> add -> consume.

Run against a real spool file and a recording `add`, the way the node runs it: only
subscribed domains are learnt from, single attempts wait for peers, a crash between the
add and the removal repeats the same adds, and one bad trajectory or one bad pass never
stops the rest.
"""

from __future__ import annotations

import functools
import sqlite3

import pytest
import trio

from fai_core.ingest.common import Converted, SessionEnd, tool_record
from fai_core.introspection import Outcome
from fai_core.telemetry import TelemetryRecord
from fai_net.telemetry.ingest import TelemetryIngest, split_mixed_labels
from fai_net.telemetry.spool import Spool


class Recorder:
    """An async `add` that records what it was given; `fail` makes the next calls raise
    *after* recording (the library took the items, the process died before consuming)."""

    def __init__(self, fail: int = 0) -> None:
        self.calls: list[list[dict]] = []
        self.fail = fail

    async def __call__(self, items: list[dict]) -> dict:
        self.calls.append([dict(item) for item in items])
        await trio.sleep(0)
        if self.fail:
            self.fail -= 1
            raise RuntimeError("node died between add and consume")
        return {"added": len(items)}


def session(task: str, ok: bool, *, domain="coding", kind=None, attempt="1", t0=1.0):
    """Two tool calls as an importer stores them (outcome classes only) and the end."""
    probe = "read_file" if ok else "grep"
    records = [
        tool_record(
            task_id=task,
            attempt=attempt,
            tool=probe,
            outcome=Outcome(status="ok"),
            time=t0,
            domain=domain,
            kind=kind,
        ),
        tool_record(
            task_id=task,
            attempt=attempt,
            tool="run_tests",
            outcome=Outcome(exit_code=0 if ok else 1, status="passed" if ok else "failed"),
            time=t0 + 1,
            domain=domain,
            kind=kind,
        ),
    ]
    return Converted(records=records, ends=[SessionEnd(task, attempt, failed=not ok)])


def write(path, *converted: Converted) -> None:
    with Spool.open(path) as spool:
        for c in converted:
            spool.append(c)


def held(path) -> dict[str, int]:
    with Spool.open(path) as spool:
        return spool.counts()


def four(prefix: str, *, domain="coding", kind=None, t0=1.0) -> list[Converted]:
    return [
        session(f"{prefix}{i}", i % 2 == 0, domain=domain, kind=kind, t0=t0 + 10 * i)
        for i in range(4)
    ]


def run_pass(ingest: TelemetryIngest) -> int:
    return trio.run(ingest.run_pass)


@pytest.fixture
def path(tmp_path):
    return tmp_path / "telemetry.sqlite"


def make(path, add, domains, **kw) -> TelemetryIngest:
    return TelemetryIngest(path, add, lambda: list(domains), **kw)


def test_only_subscribed_domains_are_learnt_the_rest_stays(path):
    write(path, *four("c"), *four("d", domain="devops"))
    add = Recorder()
    domains = ["coding"]
    ingest = make(path, add, domains)
    try:
        added = run_pass(ingest)
        assert added >= 1 and len(add.calls) == 1 and len(add.calls[0]) == added
        for item in add.calls[0]:
            assert set(item) == {"text", "domain", "quality", "iteration"}
            assert item["domain"] == "coding" and item["iteration"] == 1
            assert 0 < item["quality"] < 1 and isinstance(item["text"], str)
        assert held(path) == {"steps": 8, "closed": 4, "open": 0}  # devops waits
        assert ingest.held == held(path)
        assert ingest.stats.by_domain == {"coding": added}
        domains.append("devops")  # a subscription later: what waited is learnt from
        more = run_pass(ingest)
        assert more >= 1 and {i["domain"] for i in add.calls[1]} == {"devops"}
        assert held(path) == {"steps": 0, "closed": 0, "open": 0}
        assert ingest.stats.passes == 2 and ingest.stats.experiences == added + more
    finally:
        ingest.close()


def test_no_subscription_reads_nothing(path):
    write(path, *four("c"))
    add = Recorder()
    ingest = make(path, add, [])
    try:
        assert run_pass(ingest) == 0 and add.calls == []
        assert held(path)["steps"] == 8
    finally:
        ingest.close()


def test_single_attempts_wait_until_enough_arrive(path):
    sessions = four("t")
    write(path, *sessions[:3])
    add = Recorder()
    ingest = make(path, add, ["coding"])
    try:
        for _ in range(2):  # however many passes: three are not a group
            assert run_pass(ingest) == 0
        assert add.calls == []
        assert held(path) == {"steps": 6, "closed": 3, "open": 0}
        assert ingest.stats.waiting == 3
        write(path, sessions[3])
        assert run_pass(ingest) >= 1 and len(add.calls) == 1
        assert held(path) == {"steps": 0, "closed": 0, "open": 0}
        assert ingest.stats.waiting == 0 and ingest.stats.pooled_groups == 1
    finally:
        ingest.close()


def test_open_sessions_wait_for_their_end_or_the_idle_timeout(path):
    sessions = four("t")
    open_one = Converted(records=sessions[3].records)  # no end marker yet
    write(path, *sessions[:3], open_one)
    add = Recorder()
    ingest = make(path, add, ["coding"], idle_ms=3_600_000)
    try:
        assert run_pass(ingest) == 0 and add.calls == []
        assert held(path) == {"steps": 8, "closed": 3, "open": 1}
    finally:
        ingest.close()
    eager = make(path, add, ["coding"], idle_ms=0)  # idle at once: closed, learnt from
    try:
        assert run_pass(eager) >= 1
        assert held(path)["steps"] == 0
    finally:
        eager.close()


def test_a_crash_between_add_and_consume_repeats_the_same_adds(path):
    write(path, *four("a"), *four("b", t0=100.0))
    add = Recorder(fail=1)
    ingest = make(path, add, ["coding"])
    try:
        with pytest.raises(RuntimeError, match="between add and consume"):
            run_pass(ingest)
        assert len(add.calls) == 1 and add.calls[0]
        assert held(path) == {"steps": 16, "closed": 8, "open": 0}  # nothing consumed
        assert ingest.stats.passes == 0 and ingest.stats.by_domain == {}
    finally:
        ingest.close()
    restarted = make(path, add, ["coding"])
    try:
        assert run_pass(restarted) == len(add.calls[0])
        assert add.calls[1] == add.calls[0]  # same texts: the same experience ids
        assert held(path) == {"steps": 0, "closed": 0, "open": 0}
    finally:
        restarted.close()


def test_mixed_label_tasks_are_dropped_counted_and_do_not_block_others(path):
    mixed = [
        session("m", True, attempt="1"),
        session("m", False, attempt="2", kind="fix"),  # same task, another kind
        session("n", True, attempt="1"),
        session("n", False, attempt="2", domain="devops"),  # same task, another domain
    ]
    write(path, *mixed, *four("ok"))
    add = Recorder()
    ingest = make(path, add, ["coding", "devops"])
    try:
        assert run_pass(ingest) >= 1
        assert ingest.stats.mixed_labels == 4
        assert held(path) == {"steps": 0, "closed": 0, "open": 0}  # dropped ones leave too
    finally:
        ingest.close()


def test_split_mixed_labels_keeps_agreeing_tasks_in_order():
    def rec(task, attempt, domain="coding", kind=None):
        return TelemetryRecord(task, "x", None, None, 0.0, 1.0, attempt, domain, kind)

    records = [rec("a", "1"), rec("m", "1"), rec("a", "2"), rec("m", "1", kind="k"), rec("b", "1")]
    keep, dropped = split_mixed_labels(iter(records))
    assert keep == [records[0], records[2], records[4]]
    assert dropped == {("m", "1")}


def test_a_failing_pass_in_run_is_counted_and_the_loop_goes_on(path):
    write(path, *four("t"))
    add = Recorder(fail=1)
    ingest = make(path, add, ["coding"], interval_s=0.01)

    async def main():
        async with trio.open_nursery() as nursery:
            nursery.start_soon(ingest.run)
            with trio.fail_after(20):
                while ingest.stats.passes < 1:
                    await trio.sleep(0.01)
            nursery.cancel_scope.cancel()

    try:
        trio.run(main)
        assert ingest.stats.failures == 1
        assert len(add.calls) == 2 and add.calls[0] == add.calls[1]
        assert held(path)["steps"] == 0
    finally:
        ingest.close()


def corrupt(path, sql: str, args: tuple) -> None:
    db = sqlite3.connect(path)
    db.execute(sql, args)
    db.commit()
    db.close()


def test_a_damaged_spool_row_does_not_stop_ingest(path):
    # Before the fix in Spool.closed(), the pass raised on this row forever: the row is
    # the oldest, so every read hit it, and expiry (run after the read) never came.
    write(path, session("bad", True), *four("t"))
    corrupt(path, "UPDATE steps SET record = 'not json' WHERE task_id = 'bad'", ())
    add = Recorder()
    ingest = make(path, add, ["coding"])
    try:
        assert run_pass(ingest) >= 1
        assert held(path) == {"steps": 0, "closed": 0, "open": 0}
    finally:
        ingest.close()


def test_a_forged_outcome_in_the_spool_does_not_stop_ingest(path):
    write(path, session("bad", True), *four("t"))
    forged = TelemetryRecord(
        "bad", "run_tests", None, {"fai.outcome": {"exception": ["x"]}}, 0.0, 2.0, "1", "coding"
    )
    corrupt(path, "UPDATE steps SET record = ? WHERE task_id = 'bad'", (forged.to_line(),))
    ingest = make(path, Recorder(), ["coding"])
    try:
        assert run_pass(ingest) >= 1
    finally:
        ingest.close()


def test_thousands_of_one_off_kinds_cannot_starve_newer_sessions(path, monkeypatch):
    """Each pool holds up to G - 1 waiting attempts; many kinds filled the spool's read
    window with them, and newer sessions were never read. The oldest beyond MAX_WAITING
    are dropped, counted, and the new group is learnt."""
    import fai_net.telemetry.ingest as ingest_module

    monkeypatch.setattr(ingest_module, "MAX_WAITING", 20)
    junk = [session(f"j{i}", True, kind=f"k{i}", t0=float(i)) for i in range(60)]
    write(path, *junk)
    add = Recorder()
    ingest = make(path, add, ["coding"])
    try:
        # a read window smaller than the junk, as 5,000 is in life
        monkeypatch.setattr(
            ingest.spool, "closed", functools.partial(ingest.spool.closed, limit=50)
        )
        run_pass(ingest)
        assert ingest.stats.dropped_waiting == 30  # 50 read, 20 may wait
        write(path, *four("new", t0=1_000.0))
        for _ in range(3):
            run_pass(ingest)
        learnt = [i for call in add.calls for i in call]
        assert learnt and ingest.stats.experiences >= 1
        assert all(i["domain"] == "coding" for i in learnt)
    finally:
        ingest.close()


def test_a_step_written_while_the_node_extracts_is_not_consumed_unread(path):
    """An agent that goes on after Stop appends to a turn the node is extracting: the
    late step must survive the consume, with its end marker, for the next pass."""
    write(path, *four("t"))
    with Spool.open(path) as spool:
        closed = spool.closed(["coding"], idle_ms=10**9)
        late = session("t0", True, t0=100.0)
        late.ends.clear()
        spool.append(late)
        keys = set(closed.ends)
        spool.consume(keys, closed.upto)
        again = spool.closed(["coding"], idle_ms=10**9)
    assert {(r.task_id, r.time) for r in again.records} == {("t0", 100.0), ("t0", 101.0)}
    assert set(again.ends) == {("t0", "1")}
