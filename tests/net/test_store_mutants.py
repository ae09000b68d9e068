"""The batch store's edges (fai_net/admission/store.py) that `make mutate` found untested
(docs/mutation.md): what `open` refuses and how it says so, the file modes, use from
another thread, the baseline blocks of wire version 2, and the inclusive bounds of
`range` and `prune`.
"""

from __future__ import annotations

import sqlite3
import stat
import threading

import numpy as np
import pytest

from fai_core import dagcbor
from fai_core.baseline_block import make_baseline_block
from fai_core.experience import Experience
from fai_core.wire import encode_batch_v2
from fai_net.admission import store as store_module
from fai_net.admission.store import STORE_FILE, BatchStore, StoreError
from tests.support.net import DIM, KEY, OTHER_KEY, T0, batch


@pytest.fixture
def store(tmp_path):
    with BatchStore.open(tmp_path / "node") as s:
        yield s


def v2_batch(seq: int, *, attach: bool, model: str = "test-model", block=None):
    """A v2 batch encoded against `block`, by default a block of its own mean."""
    vecs = np.random.default_rng(seq).standard_normal((2, DIM)).astype(np.float32)
    exps = [
        Experience(f"text {seq} {i}", vecs[i], 0.5, "coding", KEY.public_key, T0) for i in range(2)
    ]
    block = block or make_baseline_block(vecs.mean(axis=0), model)
    signed = encode_batch_v2(
        exps,
        key=KEY,
        seq=seq,
        timestamp_ms=T0 + seq,
        baseline=block,
        attach_baseline=attach,
        group=4,
    )
    return signed, block


def test_open_keeps_the_directory_and_file_private(tmp_path):
    path = tmp_path / "fresh" / "node"
    with BatchStore.open(path) as s:
        assert s.path == path / STORE_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o700
    assert stat.S_IMODE((path / STORE_FILE).stat().st_mode) == 0o600


def test_a_store_can_be_used_from_another_thread(store):
    done = []

    def work():
        done.append(store.put(batch(1), received_ms=5, origin="gossip"))

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    assert done == [True] and store.has(batch(1).cid)


def test_open_says_which_file_it_could_not_use(tmp_path):
    path = tmp_path / "node"
    path.mkdir()
    (path / STORE_FILE).write_bytes(b"this is not a database at all" * 100)
    with pytest.raises(StoreError, match=r"store\.sqlite is not a usable SQLite database: "):
        BatchStore.open(path)


def test_open_refuses_a_directory_in_place_of_the_file(tmp_path):
    path = tmp_path / "node"
    (path / STORE_FILE).mkdir(parents=True)
    with pytest.raises(StoreError, match=r"^cannot open .*store\.sqlite: "):
        BatchStore.open(path)


def _rewrite_meta(path, key, value):
    conn = sqlite3.connect(path / STORE_FILE)
    with conn:
        conn.execute("UPDATE meta SET value = ? WHERE key = ?", (value, key))
    conn.close()


def test_a_foreign_format_and_a_future_version_are_named(tmp_path):
    path = tmp_path / "node"
    BatchStore.open(path).close()
    _rewrite_meta(path, "format", "something-else")
    with pytest.raises(StoreError, match=r"is not a FAI batch store: 'something-else'$"):
        BatchStore.open(path)
    _rewrite_meta(path, "format", "fai-batch-store")
    _rewrite_meta(path, "version", "7")
    with pytest.raises(
        StoreError, match=r"has batch store version '7'; this code reads version 1$"
    ):
        BatchStore.open(path)
    _rewrite_meta(path, "version", "1")
    with BatchStore.open(path) as s:  # and a refused open left the file as it was
        assert s.count() == 0


def test_a_store_without_meta_is_refused_by_name(tmp_path):
    path = tmp_path / "node"
    path.mkdir()
    conn = sqlite3.connect(path / STORE_FILE)
    conn.execute("CREATE TABLE other (x)")
    conn.close()
    with pytest.raises(StoreError, match=r"store\.sqlite is not a FAI batch store \(no meta"):
        BatchStore.open(path)


@pytest.mark.parametrize("bad", [-1, 2**64, True, 1.0])
def test_seqs_must_be_unsigned_64_bit_integers(store, bad):
    with pytest.raises(ValueError, match=r"^expected an unsigned 64-bit integer, got "):
        store.cid_at(KEY.public_key, bad)


@pytest.mark.parametrize("bad", [0, -3, True, 2.0])
def test_limits_must_be_positive_integers(store, bad):
    with pytest.raises(ValueError, match=r"^limit must be a positive integer, got "):
        store.range(KEY.public_key, 0, 10, bad)


def test_a_one_seq_range_and_the_byte_budget_are_inclusive(store):
    for seq in (1, 2, 3):
        store.put(batch(seq), received_ms=5, origin="gossip")
    sender = KEY.public_key
    assert store.range(sender, 2, 2, 10) == [batch(2).envelope]
    assert store.range(sender, 3, 2, 10) == []
    sizes = [len(batch(s).envelope) for s in (1, 2, 3)]
    assert store.range(sender, 1, 3, 10, max_bytes=sizes[0] + sizes[1]) == [
        batch(1).envelope,
        batch(2).envelope,
    ]
    assert store.range(sender, 1, 3, 10, max_bytes=sizes[0] + sizes[1] - 1) == [batch(1).envelope]


def test_baseline_blocks_are_kept_found_and_counted(store):
    assert store.block_count() == 0
    assert store.get_block(b"\x01" * 36) is None
    store.put_block(b"\x01" * 36, b"block one", 100)
    store.put_block(bytearray(b"\x02" * 36), bytearray(b"block two"), 100)
    assert store.get_block(b"\x01" * 36) == b"block one"
    assert store.get_blocks([b"\x02" * 36, b"\x03" * 36, b"\x01" * 36]) == [
        b"block two",
        b"block one",
    ]
    assert store.block_count() == 2


def test_a_block_attached_to_a_batch_is_kept_with_it(store):
    signed, block = v2_batch(1, attach=True)
    assert store.put(signed, received_ms=500, origin="gossip")
    assert store.get_block(block.cid) == block.data
    assert store.block_count() == 1


def test_a_block_named_by_a_kept_batch_survives_prune_however_old(store):
    """Every batch the store keeps it serves over repair: its block must stay with it,
    whatever the block's age, and go with the last batch naming it."""
    signed, block = v2_batch(1, attach=True)
    store.put(signed, received_ms=0, origin="gossip")  # the block dates from time 0
    later, _ = v2_batch(2, attach=False, block=block)
    store.put(later, received_ms=0, origin="gossip")
    assert store.prune(T0) == 0  # both batches are younger: kept, and their block too
    assert store.get_block(block.cid) == block.data
    assert store.prune(T0 + 100) == 0  # older, but not merged yet: kept, block too
    assert store.get_block(block.cid) == block.data
    store.mark_merged([signed.cid])
    assert store.prune(T0 + 2) == 1  # seq 1 goes, seq 2 (at T0 + 2) still names the block
    assert store.get_block(block.cid) == block.data
    store.mark_merged([later.cid])
    assert store.prune(T0 + 3) == 1  # the last batch and its block go in the same prune
    assert store.get_block(block.cid) is None and store.block_count() == 0


def test_a_block_outlives_its_batches_by_the_retention_from_its_last_use(store):
    _, block = v2_batch(1, attach=True)
    store.put_block(block.cid, block.data, 100)
    # A batch naming the block (not carrying it) marks it used when it arrives.
    signed, _ = v2_batch(1, attach=False)
    store.put(signed, received_ms=T0 + 10, origin="repair")
    store.put_block(block.cid, block.data, 50)  # an older use never moves it back
    store.mark_merged([signed.cid])
    assert store.prune(T0 + 5) == 1  # the batch (at T0 + 1) goes; the block, used later, not
    assert store.get_block(block.cid) == block.data
    store.prune(T0 + 10)  # used at exactly T0 + 10: not older than it
    assert store.get_block(block.cid) == block.data
    store.prune(T0 + 11)
    assert store.get_block(block.cid) is None


def test_a_block_no_batch_names_goes_once_older_than_the_retention(store):
    store.put_block(b"\x09" * 36, b"unused", 1_000)
    store.put_block(b"\x09" * 36, b"unused", 50)  # an older use never moves it back
    store.prune(999)
    store.prune(1_000)  # stored at exactly 1,000: not older than it
    assert store.get_block(b"\x09" * 36) == b"unused"
    store.prune(1_001)
    assert store.get_block(b"\x09" * 36) is None


def test_a_pinned_block_is_kept_and_served_through_any_prune(tmp_path):
    """The reference block is named by no batch for weeks: pinned, it is always served.
    The pin is the process's, not the file's: after a restart whoever derives the
    reference pins it again, and a block nobody pins any more ages out."""
    with BatchStore.open(tmp_path / "node") as store:
        store.pin_block(b"\x05" * 36, b"reference", 0)
        store.pin_block(b"\x06" * 36, b"other reference", 0)
        store.put_block(b"\x07" * 36, b"plain", 0)
        store.prune(2**64 - 1)
        assert store.get_blocks([b"\x05" * 36, b"\x06" * 36, b"\x07" * 36]) == [
            b"reference",
            b"other reference",
        ]
    with BatchStore.open(tmp_path / "node") as store:
        store.pin_block(b"\x05" * 36, b"reference", 0)
        store.prune(2**64 - 1)
        assert store.get_blocks([b"\x05" * 36, b"\x06" * 36]) == [b"reference"]


def test_blocks_nobody_names_cannot_pile_up(store):
    """Hostile: blocks reach the store only with a stored batch naming them or fetched for
    one (fai_net/node/baselines.py asks only for blocks its parked batches name), but
    whatever put them there, those no stored batch names are gone after one prune past
    the retention. Only blocks named by kept batches, and the pin, remain."""
    signed, block = v2_batch(1, attach=True)
    store.put(signed, received_ms=T0, origin="gossip")
    store.pin_block(b"\x05" * 36, b"reference", T0)
    for n in range(300):
        store.put_block(n.to_bytes(36, "big"), b"junk %d" % n, T0 + n)
    assert store.block_count() == 302
    store.prune(T0 + 300)
    assert store.block_count() == 2
    assert store.get_blocks([block.cid, b"\x05" * 36]) == [block.data, b"reference"]


def _as_written_by_older_code(directory) -> None:
    """Turn a store into the layout code before `batches.baseline_cid` wrote: no column,
    none of the indexes that came with it, no backfill mark (`pre_v2`: no block table)."""
    conn = sqlite3.connect(directory / STORE_FILE)
    try:
        conn.execute("DROP INDEX batches_baseline")
        conn.execute("DROP INDEX baseline_blocks_used")
        conn.execute("ALTER TABLE batches DROP COLUMN baseline_cid")
        conn.execute("DELETE FROM meta WHERE key = 'baseline_backfill'")
        conn.commit()
    finally:
        conn.close()


def _raw(directory, sql: str) -> list[tuple]:
    conn = sqlite3.connect(directory / STORE_FILE)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def test_an_older_store_learns_which_block_each_batch_names_at_open(tmp_path, monkeypatch):
    directory = tmp_path / "node"
    first, block = v2_batch(1, attach=True)
    second, _ = v2_batch(2, attach=False, block=block)
    third, own = v2_batch(3, attach=False)
    v1 = [batch(seq, key=OTHER_KEY) for seq in (1, 2, 3)]
    with BatchStore.open(directory) as store:
        for signed in (v1[0], first, v1[1], second, third, v1[2]):
            store.put(signed, received_ms=0, origin="gossip")
        store.put_block(own.cid, own.data, 0)
    _as_written_by_older_code(directory)
    monkeypatch.setattr(store_module, "_BACKFILL_PAGE", 2)  # pages end mid-store
    with BatchStore.open(directory) as store:
        named = dict(_raw(directory, "SELECT cid, baseline_cid FROM batches"))
        assert named == {
            **{b.cid: None for b in v1},
            first.cid: block.cid,
            second.cid: block.cid,
            third.cid: own.cid,
        }
        indexes = {r[0] for r in _raw(directory, "SELECT name FROM sqlite_master")}
        assert {"batches_baseline", "baseline_blocks_used"} <= indexes
        assert _raw(directory, "SELECT value FROM meta WHERE key = 'baseline_backfill'") == [("6",)]
        store.prune(T0 + 100)  # nothing merged: every batch stays, and so do both blocks
        assert store.block_count() == 2
        store.mark_merged([first.cid, second.cid, third.cid, *(b.cid for b in v1)])
        assert store.prune(T0 + 100) == 6 and store.block_count() == 0


def test_an_open_reads_only_batches_stored_since_the_last_one(tmp_path, monkeypatch):
    """An older node may have run on the file in between: the batches it stored carry no
    `baseline_cid`, and are read at the next open; those read before are not re-read."""
    directory = tmp_path / "node"
    signed, block = v2_batch(1, attach=True)
    with BatchStore.open(directory) as store:
        store.put(batch(1, key=OTHER_KEY), received_ms=0, origin="gossip")
    with BatchStore.open(directory) as store:  # covers the v1 batch (cursor 1)
        store.put(signed, received_ms=0, origin="gossip")
    conn = sqlite3.connect(directory / STORE_FILE)
    conn.execute("UPDATE batches SET baseline_cid = NULL")  # as an older node stores it
    conn.commit()
    conn.close()
    read: list[bytes] = []
    real = store_module._baseline_cid_of
    monkeypatch.setattr(store_module, "_baseline_cid_of", lambda env: read.append(env) or real(env))
    with BatchStore.open(directory) as store:
        assert read == [signed.envelope]
        assert _raw(directory, "SELECT baseline_cid FROM batches WHERE cursor = 2") == [
            (block.cid,)
        ]
    with BatchStore.open(directory):
        assert read == [signed.envelope]


def test_the_backfill_reads_the_first_batch_and_marks_how_far_it_read(tmp_path):
    """The first stored batch (cursor 1) is read too; and an open whose unread rows all
    name their block already still records that it read up to the last one, or every
    later open would scan them again."""
    directory = tmp_path / "node"
    signed, block = v2_batch(1, attach=True)
    with BatchStore.open(directory) as store:
        store.put(signed, received_ms=0, origin="gossip")
    _as_written_by_older_code(directory)
    with BatchStore.open(directory):
        assert _raw(directory, "SELECT cursor, baseline_cid FROM batches") == [(1, block.cid)]
    conn = sqlite3.connect(directory / STORE_FILE)
    conn.execute("DELETE FROM meta WHERE key = 'baseline_backfill'")
    conn.commit()
    conn.close()
    with BatchStore.open(directory):
        assert _raw(directory, "SELECT value FROM meta WHERE key = 'baseline_backfill'") == [("1",)]


def test_a_store_from_before_wire_v2_gains_the_block_table_and_column(tmp_path):
    directory = tmp_path / "node"
    with BatchStore.open(directory) as store:
        store.put(batch(1, key=OTHER_KEY), received_ms=0, origin="gossip")
    _as_written_by_older_code(directory)
    conn = sqlite3.connect(directory / STORE_FILE)
    conn.execute("DROP TABLE baseline_blocks")
    conn.commit()
    conn.close()
    with BatchStore.open(directory) as store:
        assert store.block_count() == 0 and store.has(batch(1, key=OTHER_KEY).cid)
        signed, block = v2_batch(1, attach=True)
        store.put(signed, received_ms=0, origin="gossip")
        store.prune(T0 + 100)
        assert store.get_block(block.cid) == block.data


@pytest.mark.parametrize(
    "envelope",
    [
        b"\xff",
        dagcbor.encode(1),
        dagcbor.encode({"b": b"\xff"}),
        dagcbor.encode({"b": [2]}),
        dagcbor.encode({"b": dagcbor.encode(0)}),
        dagcbor.encode({"b": dagcbor.encode([2, 0])}),
        dagcbor.encode({"b": dagcbor.encode([2, 0, 0, 0, 0, 0, 0, 5, 0])}),
    ],
    ids=[
        "not cbor",
        "not a map",
        "block not cbor",
        "block not bytes",
        "block not an array",
        "block too short",
        "baseline not bytes",
    ],
)
def test_an_envelope_that_no_longer_parses_names_no_block(envelope):
    assert store_module._baseline_cid_of(envelope) is None


def test_a_negative_prune_bound_removes_nothing(store):
    store.put_block(b"\x01" * 36, b"block", 0)
    store.put(batch(1, timestamp_ms=0), received_ms=0, origin="local")
    assert store.prune(-5) == 0
    assert store.block_count() == 1 and store.has(batch(1, timestamp_ms=0).cid)
    assert store.prune(0) == 0 and store.block_count() == 1


@pytest.mark.parametrize("bad", [-1, 2**63, True, "1"])
def test_a_peer_cursor_is_a_non_negative_63_bit_integer(store, bad):
    with pytest.raises(ValueError, match=r"^cursor must be a non-negative 63-bit integer, got "):
        store.set_peer_cursor("peer", bad)
    assert store.peer_cursor("peer") == 0


@pytest.mark.parametrize("good", [0, 1, 2**63 - 1])
def test_the_cursor_bounds_themselves_are_kept(store, good):
    store.set_peer_cursor("peer", 5)
    store.set_peer_cursor("peer", good)
    assert store.peer_cursor("peer") == good


def test_a_conflict_names_the_sender_seq_and_both_cids(store):
    first, second = batch(5), batch(5, salt=1)
    store.put(first, received_ms=1, origin="gossip")
    with pytest.raises(StoreError, match="already holds another batch") as caught:
        store.put(second, received_ms=2, origin="gossip")
    sender = KEY.public_key.hex()[:16]
    assert str(caught.value) == (
        f"sender {sender}... seq 5 already holds another batch "
        f"({first.cid.hex()[:16]}... vs {second.cid.hex()[:16]}...)"
    )


def test_unmerged_lists_received_batches_oldest_first_until_merged(store):
    received = [batch(s) for s in (3, 1, 2)]
    for b in received:
        store.put(b, received_ms=1, origin="repair")
    store.put(batch(9), received_ms=1, origin="local")  # our own: never waiting for a merge
    assert store.unmerged() == [b.envelope for b in received]
    assert store.unmerged(limit=2) == [received[0].envelope, received[1].envelope]
    store.mark_merged([received[1].cid])
    assert store.unmerged() == [received[0].envelope, received[2].envelope]
    with pytest.raises(ValueError, match=r"^limit must be a positive integer, got 0$"):
        store.unmerged(limit=0)


def test_since_pages_256_items_by_default(store):
    for seq in range(260):
        store.put(batch(seq, texts=("one",)), received_ms=1, origin="gossip")
    items, next_cursor = store.since(0)
    assert len(items) == 256 and next_cursor == items[-1].cursor


def test_ensure_seq_above_moves_the_counter_just_past_the_seq(store):
    store.ensure_seq_above(10)
    assert store.next_seq() == 11
    store.ensure_seq_above(4)  # never back
    assert store.next_seq() == 11


class Connection:
    """A real SQLite connection with one statement answered or refused by the test."""

    def __init__(self, conn, answers):
        self._conn, self._answers = conn, answers

    def _answer(self, sql):
        for prefix, answer in self._answers.items():
            if sql.startswith(prefix):
                if isinstance(answer, Exception):
                    raise answer
                return answer
        return None

    def execute(self, sql, *args):
        return self._answer(sql) or self._conn.execute(sql, *args)

    def executemany(self, sql, *args):
        return self._answer(sql) or self._conn.executemany(sql, *args)

    def __getattr__(self, name):
        return getattr(self._conn, name)


def connect_with(monkeypatch, answers):
    from fai_net.admission import store as store_module

    opened = []
    real = sqlite3.connect

    def connect(*args, **kwargs):
        conn = Connection(real(*args, **kwargs), answers)
        opened.append(conn)
        return conn

    monkeypatch.setattr(store_module.sqlite3, "connect", connect)
    return opened


class Answer:
    def __init__(self, row):
        self.row = row

    def fetchone(self):
        return self.row


def test_a_file_system_without_wal_is_refused_by_name(tmp_path, monkeypatch):
    connect_with(monkeypatch, {"PRAGMA journal_mode": Answer(("delete",))})
    with pytest.raises(StoreError, match=r"cannot switch to WAL journal mode \(got 'delete'\)$"):
        BatchStore.open(tmp_path / "node")


def test_wal_in_capitals_is_wal(tmp_path, monkeypatch):
    connect_with(monkeypatch, {"PRAGMA journal_mode": Answer(("WAL",))})
    BatchStore.open(tmp_path / "node").close()


class Interrupted(Exception):
    """Not an error `open` handles: it propagates with the connection still open."""


def test_a_failure_while_creating_the_schema_rolls_it_back(tmp_path, monkeypatch):
    opened = connect_with(monkeypatch, {"INSERT INTO meta": Interrupted("stop")})
    with pytest.raises(Interrupted, match="stop"):
        BatchStore.open(tmp_path / "node")
    [conn] = opened
    assert not conn.in_transaction  # rolled back: the write lock is released
    conn.close()
    monkeypatch.undo()
    with BatchStore.open(tmp_path / "node") as s:  # and a later open starts afresh
        assert s.count() == 0
