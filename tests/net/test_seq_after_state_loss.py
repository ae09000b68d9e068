"""A node that loses its batch store, or is restored from an older copy of its data
directory, must never sign a second batch for a seq it used (fai_net/node/seq_clock.py).

Before seqs carried time, both cases published under seq 0 again: the peer wrote
equivocation evidence against the node's own operator. Two real node processes; the node
under test publishes at once after each loss.

With a clock that moves forward, the time floor alone keeps these seqs apart, so this test
passes even if the node ignored its own batches coming back from peers
(`BatchStore.ensure_seq_above`). That second guard, for a clock that stepped back, is
tested in tests/net/test_node_rules.py:
`test_own_batches_back_from_a_peer_raise_the_seq_counter` and
`test_own_batches_in_the_store_raise_the_seq_counter_at_start`.
"""

from __future__ import annotations

import shutil

from fai_core.wire import decode_envelope
from fai_net.admission.store import BatchStore
from fai_net.node.identity import load_or_create
from tests.support.fleet import Fleet, corpus_by_domain, wait_for

TEXTS = corpus_by_domain()["coding"]


def publish(node, texts: list[str]) -> str:
    node.call("add", experiences=[{"text": t, "domain": "coding", "quality": 0.7} for t in texts])
    result = node.call("broadcast", domain="coding")
    assert result["experiences_sent"] == len(texts), result
    return result["batch_id"]


def seqs_by_cid(data_dir, key: bytes) -> dict[str, int]:
    """The seq of each of `key`'s batches in the store at `data_dir`."""
    with BatchStore.open(data_dir / "batches") as store:
        batches = [decode_envelope(e).batch for e in store.range(key, 0, (1 << 64) - 1, 1000)]
    return {batch.cid_text: batch.seq for batch in batches}


def test_wiped_or_rolled_back_store_never_reuses_a_seq():
    fleet = Fleet(**{"broadcast-interval": 600, "broadcast-threshold": 1000})
    try:
        # b first: a restarts on a new port, and dials b again from its seed.
        b = fleet.add("b", ("coding",), seeds=[])
        a = fleet.add("a", ("coding",), seeds=[b.addr])
        wait_for(lambda: a.call("status")["peers"] >= 1, 30, "a and b connected")
        key = load_or_create(a.data_dir).public_key
        published = [publish(a, TEXTS[0:2])]
        wait_for(lambda: set(published) <= set(b.call("batches")["cids"]), 30, "b has batch 1")

        # A backup of a's whole data directory, taken after its first batch.
        a.stop()
        backup = a.data_dir.parent / "a-backup"
        shutil.copytree(a.data_dir, backup)
        a.start()
        published.append(publish(a, TEXTS[2:4]))
        wait_for(lambda: set(published) <= set(b.call("batches")["cids"]), 30, "b has batch 2")

        # 1. Restored from the older backup, then publishing at once.
        a.stop()
        shutil.rmtree(a.data_dir)
        shutil.copytree(backup, a.data_dir)
        a.start()
        published.append(publish(a, TEXTS[4:6]))
        # 2. The batch store wiped (the key survives), then publishing at once.
        a.stop()
        shutil.rmtree(a.data_dir / "batches")
        a.start()
        published.append(publish(a, TEXTS[6:8]))

        wait_for(
            lambda: set(published) <= set(b.call("batches")["cids"]),
            30,
            "b accepted every batch a published",
        )
        assert b.call("status")["evidence"] == 0
        assert a.call("status")["evidence"] == 0
    finally:
        fleet.stop_all()
    for node in (a, b):
        evidence = node.data_dir / "evidence"
        assert not evidence.exists() or not any(evidence.iterdir())
    # b holds exactly the four batches, and publication order is seq order: every publish
    # after a loss went above everything signed before it.
    by_cid = seqs_by_cid(b.data_dir, key)
    assert set(by_cid) == set(published)
    ordered = [by_cid[c] for c in published]
    assert ordered == sorted(set(ordered))
