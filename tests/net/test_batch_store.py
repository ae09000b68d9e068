"""The node's batch store: idempotent receipt, seq bookkeeping, repair paging, own seqs."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from fai_core.errors import FaiError
from fai_net.admission.store import (
    STORE_FILE,
    BatchStore,
    Evidence,
    InventoryItem,
    StoreConflict,
    StoreError,
)
from tests.support.net import KEY, OTHER_KEY, T0, batch, key

REPO = Path(__file__).resolve().parents[2]
U64_MAX = (1 << 64) - 1


@pytest.fixture
def store(tmp_path):
    with BatchStore.open(tmp_path / "node") as s:
        yield s


def _raw(path: Path, sql: str, args: tuple = ()) -> list[tuple]:
    """Read the file behind the API's back, as an operator's sqlite3 shell would."""
    conn = sqlite3.connect(path / STORE_FILE)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


# -- opening, format ----------------------------------------------------------------------


def test_open_creates_a_versioned_wal_store_and_reopens_it(tmp_path):
    path = tmp_path / "a" / "b"
    with BatchStore.open(path) as s:
        assert s.put(batch(1), received_ms=5, origin="gossip")
    assert (path / STORE_FILE).is_file()
    assert dict(_raw(path, "SELECT key, value FROM meta")) == {
        "format": "fai-batch-store",
        "version": "1",
    }
    assert _raw(path, "PRAGMA journal_mode") == [("wal",)]
    with BatchStore.open(path) as s:
        assert s.has(batch(1).cid)


def test_unknown_version_is_refused(tmp_path):
    BatchStore.open(tmp_path).close()
    conn = sqlite3.connect(tmp_path / STORE_FILE)
    conn.execute("UPDATE meta SET value = '2' WHERE key = 'version'")
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match="version '2'"):
        BatchStore.open(tmp_path)


def test_foreign_databases_and_garbage_are_refused(tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    conn = sqlite3.connect(foreign / STORE_FILE)
    conn.execute("CREATE TABLE t (x)")
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match="no meta table"):
        BatchStore.open(foreign)

    other = tmp_path / "other"
    other.mkdir()
    conn = sqlite3.connect(other / STORE_FILE)
    conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)")
    conn.execute("INSERT INTO meta VALUES ('format', 'something-else')")
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match="not a FAI batch store"):
        BatchStore.open(other)

    garbage = tmp_path / "garbage"
    garbage.mkdir()
    (garbage / STORE_FILE).write_bytes(b"this is not sqlite at all" * 100)
    with pytest.raises(StoreError):
        BatchStore.open(garbage)
    assert issubclass(StoreError, FaiError) and issubclass(StoreConflict, StoreError)


def test_closed_store_cannot_be_used(tmp_path):
    with BatchStore.open(tmp_path) as s:
        pass
    with pytest.raises(sqlite3.ProgrammingError):
        s.count()


# -- batches ------------------------------------------------------------------------------


def test_put_is_idempotent_by_cid_and_serves_the_exact_envelope(store, tmp_path):
    b = batch(3, domain="ops")
    assert store.put(b, received_ms=111, origin="gossip") is True
    assert store.put(b, received_ms=222, origin="repair") is False
    assert store.has(b.cid) and not store.has(batch(4).cid)
    assert store.get(b.cid) == b.envelope
    assert store.get(batch(4).cid) is None
    assert store.cid_at(KEY.public_key, 3) == b.cid
    assert store.cid_at(KEY.public_key, 4) is None
    assert store.cid_at(OTHER_KEY.public_key, 3) is None
    assert store.newest_seq(KEY.public_key) == 3
    assert store.newest_seq(OTHER_KEY.public_key) is None
    assert store.count() == 1 and store.count("ops") == 1 and store.count("coding") == 0
    assert store.cids() == {b.cid} and store.cids("ops") == {b.cid} and store.cids("x") == set()
    # The first receipt's metadata is what stays.
    rows = _raw(tmp_path / "node", "SELECT received_ms, origin, domain FROM batches")
    assert rows == [(111, "gossip", "ops")]


def test_unknown_origin_is_refused_and_stores_nothing(store):
    with pytest.raises(ValueError, match="origin"):
        store.put(batch(1), received_ms=1, origin="carrier-pigeon")
    assert store.count() == 0
    assert store.newest_seq(KEY.public_key) is None


def test_second_cid_for_one_sender_and_seq_is_a_conflict(store):
    first, second = batch(9), batch(9, salt=1)
    assert first.cid != second.cid
    store.put(first, received_ms=1, origin="gossip")
    with pytest.raises(StoreConflict) as info:
        store.put(second, received_ms=2, origin="repair")
    err = info.value
    assert (err.sender, err.seq, err.existing_cid, err.cid) == (
        KEY.public_key,
        9,
        first.cid,
        second.cid,
    )
    assert store.count() == 1 and not store.has(second.cid)
    assert store.cid_at(KEY.public_key, 9) == first.cid
    # The failed put left no transaction open: the store keeps working.
    assert store.put(batch(9, key=OTHER_KEY), received_ms=3, origin="gossip")
    assert store.put(batch(10), received_ms=3, origin="gossip")
    assert store.count() == 3


def test_newest_seq_tracks_the_maximum_not_the_latest(store):
    for seq in (5, 2, 8, 7):
        store.put(batch(seq), received_ms=0, origin="gossip")
    assert store.newest_seq(KEY.public_key) == 8


def test_full_u64_seq_and_timestamp_range_is_stored_in_order(store):
    seqs = [0, (1 << 63) - 1, 1 << 63, U64_MAX]
    for seq in reversed(seqs):
        store.put(batch(seq, timestamp_ms=U64_MAX - 1), received_ms=0, origin="repair")
    assert store.newest_seq(KEY.public_key) == U64_MAX
    assert store.cid_at(KEY.public_key, 1 << 63) == batch(1 << 63, timestamp_ms=U64_MAX - 1).cid
    envelopes = store.range(KEY.public_key, 0, U64_MAX, 10)
    assert envelopes == [batch(s, timestamp_ms=U64_MAX - 1).envelope for s in seqs]
    items, _ = store.since(0, limit=10)
    assert {it.seq for it in items} == set(seqs)
    assert {it.timestamp_ms for it in items} == {U64_MAX - 1}
    assert store.prune(U64_MAX) == 0  # none merged yet: prune keeps them
    store.mark_merged(it.cid for it in items)
    assert store.prune(U64_MAX) == 4


def test_prune_keeps_unmerged_batches_and_senders_newest_seq(store):
    old, new = batch(1, timestamp_ms=1_000), batch(2, timestamp_ms=5_000)
    waiting = batch(3, key=OTHER_KEY, timestamp_ms=1_000)
    for b in (old, new, waiting):
        store.put(b, received_ms=0, origin="gossip")
    store.mark_merged([old.cid, new.cid])
    assert store.prune(2_000) == 1
    assert not store.has(old.cid) and store.has(new.cid) and store.has(waiting.cid)
    assert store.newest_seq(KEY.public_key) == 2


def test_range_is_inclusive_ordered_limited_and_per_sender(store):
    for seq in (4, 1, 3, 2, 6):
        store.put(batch(seq), received_ms=0, origin="gossip")
    store.put(batch(3, key=OTHER_KEY), received_ms=0, origin="gossip")
    env = {s: batch(s).envelope for s in (1, 2, 3, 4, 6)}
    assert store.range(KEY.public_key, 2, 6, 100) == [env[2], env[3], env[4], env[6]]
    assert store.range(KEY.public_key, 1, 4, 2) == [env[1], env[2]]
    assert store.range(KEY.public_key, 5, 5, 10) == []
    assert store.range(KEY.public_key, 6, 2, 10) == []
    assert store.range(OTHER_KEY.public_key, 0, 10, 10) == [batch(3, key=OTHER_KEY).envelope]
    one = len(env[1])
    assert store.range(KEY.public_key, 1, 6, 10, max_bytes=2 * one + 1) == [env[1], env[2]]
    assert store.range(KEY.public_key, 1, 6, 10, max_bytes=one - 1) == []
    with pytest.raises(ValueError, match=r"^limit must be a positive integer, got 0$"):
        store.range(KEY.public_key, 1, 6, 0)


# -- since: the repair inventory ----------------------------------------------------------


def _fill(store: BatchStore, n: int) -> dict[bytes, str]:
    """n batches from three senders over three domains, interleaved; cid -> domain."""
    domains = ("coding", "ops", "writing")
    out = {}
    for i in range(n):
        b = batch(i // 3, key=key(i % 3), domain=domains[(i * 7) % 3 if i % 5 else 0])
        store.put(b, received_ms=i, origin="gossip")
        out[b.cid] = b.batch.domain
    return out


def _page_all(store: BatchStore, domains, limit: int) -> tuple[list[InventoryItem], int]:
    cursor, seen, pages = 0, [], 0
    while True:
        pages += 1
        assert pages < 1000, "paging does not terminate"
        items, nxt = store.since(cursor, domains=domains, limit=limit)
        assert nxt >= cursor
        if items:
            assert nxt >= items[-1].cursor
        seen.extend(items)
        if nxt == cursor:
            return seen, pages
        cursor = nxt


@pytest.mark.parametrize(
    ("domains", "limit"),
    [(None, 1), (None, 7), (["ops"], 1), (["ops"], 4), (("coding", "writing"), 3), ([], 5)],
)
def test_since_paging_returns_each_item_exactly_once_in_order(store, domains, limit):
    by_cid = _fill(store, 60)
    # Gaps in the cursor sequence: pruned rows must not break paging.
    store.mark_merged(store.cids())  # prune keeps unmerged batches
    store.prune(T0 + 3)
    survivors = {cid for cid in store.cids()}
    seen, _ = _page_all(store, domains, limit)
    wanted = {c for c in survivors if domains is None or by_cid[c] in domains}
    cids = [it.cid for it in seen]
    assert len(cids) == len(set(cids)), "an item came back twice"
    assert set(cids) == wanted
    cursors = [it.cursor for it in seen]
    assert cursors == sorted(cursors)
    for it in seen:
        assert store.get(it.cid) is not None
        assert store.cid_at(it.sender, it.seq) == it.cid
        assert it.domain == by_cid[it.cid]


def test_since_with_a_narrow_filter_returns_empty_pages_that_still_advance(store):
    for seq in range(40):
        store.put(batch(seq, domain="coding"), received_ms=0, origin="gossip")
    rare = batch(0, key=OTHER_KEY, domain="rare")
    store.put(rare, received_ms=0, origin="gossip")
    items, nxt = store.since(0, domains=["rare"], limit=1)
    assert items == [] and nxt == 8  # one scan window, nothing matched, cursor moved on
    seen, pages = _page_all(store, ["rare"], 1)
    assert [it.cid for it in seen] == [rare.cid]
    assert pages > 2


def test_since_reports_full_items_and_stops_at_the_end(store):
    b = batch(2, domain="ops", timestamp_ms=T0 + 99)
    store.put(b, received_ms=0, origin="gossip")
    items, nxt = store.since(0, limit=10)
    assert items == [InventoryItem(nxt, b.cid, KEY.public_key, 2, "ops", T0 + 99)]
    assert store.since(nxt, limit=10) == ([], nxt)
    assert store.since(nxt + 50, limit=10) == ([], nxt + 50)


def test_cursors_are_never_reused_after_pruning(store):
    for seq in range(3):
        store.put(batch(seq), received_ms=0, origin="gossip")
    _, last = store.since(0, limit=10)
    store.mark_merged(store.cids())  # prune keeps unmerged batches
    assert store.prune(U64_MAX) == 3
    store.put(batch(7), received_ms=0, origin="gossip")
    items, _ = store.since(0, limit=10)
    assert [it.cursor for it in items] == [last + 1]


def test_prune_deletes_old_batches_but_keeps_newest_seq(store):
    for seq in range(10):
        store.put(batch(seq, timestamp_ms=T0 + seq * 1000), received_ms=0, origin="gossip")
    store.put(batch(0, key=OTHER_KEY, timestamp_ms=T0), received_ms=0, origin="gossip")
    store.mark_merged(store.cids())  # prune keeps unmerged batches
    assert store.prune(T0 + 5000) == 6  # seqs 0..4 of KEY and OTHER_KEY's only batch
    assert store.count() == 5
    assert not store.has(batch(0, timestamp_ms=T0).cid)
    assert store.cid_at(KEY.public_key, 4) is None
    assert store.cid_at(KEY.public_key, 5) is not None
    assert store.newest_seq(KEY.public_key) == 9
    assert store.newest_seq(OTHER_KEY.public_key) == 0
    assert store.prune(T0) == 0
    assert store.prune(U64_MAX) == 5
    assert store.newest_seq(KEY.public_key) == 9


# -- own sequence numbers -----------------------------------------------------------------


def test_reserve_seq_counts_up_and_survives_reopen(tmp_path):
    with BatchStore.open(tmp_path) as s:
        assert [s.reserve_seq() for _ in range(3)] == [0, 1, 2]
    with BatchStore.open(tmp_path) as s:
        assert s.reserve_seq() == 3


def test_reserve_seq_commits_with_full_sync(store):
    statements: list[str] = []
    store._conn.set_trace_callback(statements.append)
    store.reserve_seq()
    store._conn.set_trace_callback(None)
    normalized = [" ".join(s.split()).upper() for s in statements]
    full = normalized.index("PRAGMA SYNCHRONOUS = FULL")
    commit = normalized.index("COMMIT")
    assert full < commit
    assert normalized[-1] == "PRAGMA SYNCHRONOUS = NORMAL"
    assert store._conn.execute("PRAGMA synchronous").fetchone() == (1,)  # NORMAL again


_RESERVER = """
import sys
from fai_net.admission.store import BatchStore
store = BatchStore.open(sys.argv[1])
while True:
    print(store.reserve_seq(), flush=True)
"""


def _reserve_then_kill(path: Path, count: int) -> list[int]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen(
        [sys.executable, "-c", _RESERVER, str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        cwd=REPO,
        env=env,
    )
    printed: list[int] = []
    try:
        while len(printed) < count:
            line = proc.stdout.readline()
            assert line, "reserver exited early"
            printed.append(int(line))
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    return printed


def test_reserve_seq_never_repeats_across_sigkill(tmp_path):
    path = tmp_path / "node"
    first = _reserve_then_kill(path, 50)
    assert first == list(range(50))
    second = _reserve_then_kill(path, 50)
    assert second[0] > first[-1]
    assert second == list(range(second[0], second[0] + 50))
    with BatchStore.open(path) as s:
        nxt = s.reserve_seq()
    assert nxt > max(second)


# -- peer cursors, evidence ---------------------------------------------------------------


def test_peer_cursors_default_to_zero_and_persist(tmp_path):
    with BatchStore.open(tmp_path) as s:
        assert s.peer_cursor("12D3KooWpeer") == 0
        s.set_peer_cursor("12D3KooWpeer", 41)
        s.set_peer_cursor("12D3KooWpeer", 42)
        s.set_peer_cursor("12D3KooWother", 7)
        with pytest.raises(
            ValueError, match=r"^cursor must be a non-negative 63-bit integer, got -1$"
        ):
            s.set_peer_cursor("12D3KooWpeer", -1)
    with BatchStore.open(tmp_path) as s:
        assert s.peer_cursor("12D3KooWpeer") == 42
        assert s.peer_cursor("12D3KooWother") == 7
        assert s.peer_cursor("12D3KooWnobody") == 0


def test_evidence_is_recorded_once_per_pair_and_persists(tmp_path):
    a, b, c = batch(5), batch(5, salt=1), batch(5, salt=2)
    with BatchStore.open(tmp_path) as s:
        assert s.evidence() == []
        assert s.add_evidence(a.envelope, b.envelope, KEY.public_key, 5, found_ms=10) is True
        assert s.add_evidence(a.envelope, b.envelope, KEY.public_key, 5, found_ms=11) is False
        assert s.add_evidence(b.envelope, a.envelope, KEY.public_key, 5, found_ms=12) is False
        assert s.add_evidence(a.envelope, c.envelope, KEY.public_key, 5, found_ms=13) is True
        with pytest.raises(ValueError, match=r"^evidence needs two different envelopes$"):
            s.add_evidence(a.envelope, a.envelope, KEY.public_key, 5)
    with BatchStore.open(tmp_path) as s:
        assert s.evidence() == [
            Evidence(KEY.public_key, 5, a.envelope, b.envelope, 10),
            Evidence(KEY.public_key, 5, a.envelope, c.envelope, 13),
        ]
        assert s.add_evidence(a.envelope, b.envelope, OTHER_KEY.public_key, U64_MAX)
        assert s.evidence()[-1].seq == U64_MAX
        assert s.evidence()[-1].found_ms > 1_600_000_000_000  # defaulted to now


# -- outbox -------------------------------------------------------------------------------


def test_outbox_queues_in_order_per_domain(store):
    ids = [bytes([i]) * 36 for i in range(6)]
    assert store.outbox_add(ids[:3], "coding") == 3
    assert store.outbox_add(ids[3:5], "ops") == 2
    assert store.outbox_add([ids[0], ids[5]], "coding") == 1  # ids[0] already queued
    assert store.outbox_peek("coding", 10) == [ids[0], ids[1], ids[2], ids[5]]
    assert store.outbox_peek("coding", 2) == [ids[0], ids[1]]
    assert store.outbox_peek("ops", 10) == [ids[3], ids[4]]
    assert store.outbox_peek("none", 10) == []
    assert store.outbox_count() == 6 and store.outbox_count("ops") == 2
    assert store.outbox_domains() == ["coding", "ops"]
    assert store.outbox_remove([ids[3], ids[4], b"x" * 36]) == 2
    assert store.outbox_domains() == ["coding"] and store.outbox_count("ops") == 0


def test_outbox_keeps_the_record_queued_with_each_id(store):
    ids = [bytes([i]) * 36 for i in range(3)]
    assert store.outbox_add(ids[:2], "coding", [b"rec-0", None]) == 2
    assert store.outbox_add(ids[2:], "coding", [b"rec-2"]) == 1
    assert store.outbox_add(ids[:1], "coding", [b"other"]) == 0  # queued: the first stays
    assert store.outbox_records([*ids, b"x" * 36]) == {ids[0]: b"rec-0", ids[2]: b"rec-2"}
    with pytest.raises(ValueError, match="3 ids but 1 records"):
        store.outbox_add([b"a" * 36, b"b" * 36, b"c" * 36], "coding", [b"one"])
    assert store.outbox_count() == 3  # the refused call queued nothing
    store.outbox_remove(ids[:1])
    assert store.outbox_records(ids) == {ids[2]: b"rec-2"}
    many = [i.to_bytes(36, "big") for i in range(1_200)]  # more than one lookup's worth
    store.outbox_add(many, "ops", [b"r%d" % i for i in range(1_200)])
    got = store.outbox_records(many)
    assert len(got) == 1_200 and got[many[1_100]] == b"r1100"


def test_an_outbox_written_by_older_code_gains_its_record_column(tmp_path):
    directory = tmp_path / "node"
    with BatchStore.open(directory) as store:
        store.outbox_add([b"a" * 36], "coding")
    conn = sqlite3.connect(directory / STORE_FILE)
    conn.execute("ALTER TABLE outbox DROP COLUMN record")
    conn.commit()
    conn.close()
    with BatchStore.open(directory) as store:
        assert store.outbox_peek("coding", 5) == [b"a" * 36]
        assert store.outbox_records([b"a" * 36]) == {}
        store.outbox_add([b"b" * 36], "coding", [b"rec"])
        assert store.outbox_records([b"a" * 36, b"b" * 36]) == {b"b" * 36: b"rec"}


def test_commit_local_stores_the_batch_and_empties_its_outbox_entries(store, tmp_path):
    b = batch(0)
    store.outbox_add(b.batch.ids, "coding")
    store.outbox_add([b"y" * 36], "coding")
    assert store.commit_local(b, b.batch.ids, received_ms=77) is True
    assert store.get(b.cid) == b.envelope
    assert store.outbox_peek("coding", 10) == [b"y" * 36]
    assert _raw(tmp_path / "node", "SELECT origin, received_ms FROM batches") == [("local", 77)]


def test_commit_local_is_atomic_on_conflict(store):
    store.put(batch(0), received_ms=0, origin="gossip")
    clash = batch(0, salt=1)
    store.outbox_add(clash.batch.ids, "coding")
    with pytest.raises(StoreConflict):
        store.commit_local(clash, clash.batch.ids, received_ms=1)
    assert store.outbox_count() == len(clash.batch.ids)  # rolled back with the batch
    assert not store.has(clash.cid)
    assert store.commit_local(batch(1), [], received_ms=2) is True  # no transaction left open


def test_reserve_seq_never_goes_below_its_floor_and_counts_on_from_it(store):
    assert store.reserve_seq() == 0
    assert store.reserve_seq(floor=1_000) == 1_000
    assert store.reserve_seq(floor=10) == 1_001  # a lower floor never moves the counter back
    assert store.next_seq() == 1_002
