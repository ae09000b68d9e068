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

from fai_core.baseline_block import make_baseline_block
from fai_core.experience import Experience
from fai_core.wire import encode_batch_v2
from fai_net.admission.store import STORE_FILE, BatchStore, StoreError
from tests.support.net import DIM, KEY, T0, batch


@pytest.fixture
def store(tmp_path):
    with BatchStore.open(tmp_path / "node") as s:
        yield s


def v2_batch(seq: int, *, attach: bool, model: str = "test-model"):
    vecs = np.random.default_rng(seq).standard_normal((2, DIM)).astype(np.float32)
    exps = [
        Experience(f"text {seq} {i}", vecs[i], 0.5, "coding", KEY.public_key, T0) for i in range(2)
    ]
    block = make_baseline_block(vecs.mean(axis=0), model)
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


def test_blocks_in_use_survive_pruning_and_unused_ones_do_not(store):
    _, block = v2_batch(1, attach=True)
    store.put_block(block.cid, block.data, 100)
    store.put_block(b"\x09" * 36, b"unused", 100)
    # A batch naming the block (not carrying it) marks it used when it arrives.
    signed, _ = v2_batch(1, attach=False)
    store.put(signed, received_ms=1_000, origin="gossip")
    store.put_block(block.cid, block.data, 50)  # an older use never moves it back
    store.prune(500)
    assert store.get_block(block.cid) == block.data
    assert store.get_block(b"\x09" * 36) is None
    store.prune(1_000)  # used at exactly 1,000: not older than it
    assert store.get_block(block.cid) == block.data
    store.prune(1_001)
    assert store.get_block(block.cid) is None


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
