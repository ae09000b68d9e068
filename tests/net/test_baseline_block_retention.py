"""How long a node keeps wire-v2 baseline blocks, seen from the peers it serves.

A block stays as long as a stored batch names it, because every stored batch is served
over repair and a peer handed a batch whose block we dropped cannot complete it; the
fleet's reference block, which no batch may name for weeks, is always served; a block
nobody names goes after the retention (fai_net/admission/store.py `prune`). The hostile
side: what a peer can make the store keep, and why it stays bounded.
"""

from __future__ import annotations

import pytest
import trio

from fai_core import wire
from fai_core.baseline_block import decode_baseline_block, reference_block
from fai_core.refusals import Ignore, Refusal
from fai_core.reputation import ReputationBook
from fai_net.admission.gate import BatchGate, GatePolicy, Verdict
from fai_net.admission.membership import OpenMembership
from fai_net.admission.store import BatchStore
from fai_net.p2p import repair
from tests.support import resolver as rs

DAY_MS = 24 * 3_600_000
POLICY = GatePolicy(rs.MODEL, rs.DIM, group=8)


@pytest.fixture
def store(tmp_path):
    with BatchStore.open(tmp_path / "store") as s:
        yield s


def _gate(store: BatchStore, domains=frozenset({"coding"})) -> BatchGate:
    gate = BatchGate(store, OpenMembership(), ReputationBook(), POLICY)
    gate.domains = set(domains)
    return gate


def _repair_from(store: BatchStore, batch_cid: bytes) -> wire.Batch:
    """What a peer repairing from `store` ends up with: the batch, completed with the
    block it fetched from the same store (raises if it cannot be completed)."""
    (envelope,) = repair.handle_request(store, {"op": "get", "cids": [batch_cid]})["envelopes"]
    batch = wire.decode_envelope(envelope, expected_cid=batch_cid).batch
    cid = batch.baseline_cid
    (data,) = repair.handle_request(store, {"op": "blocks", "cids": [cid]})["blocks"]
    return batch.with_baseline(decode_baseline_block(data, cid))


def test_the_reference_block_is_served_after_a_prune_that_would_have_removed_it(tmp_path):
    async def main():
        resolver, res, _ = rs.resolver_for(tmp_path, rs.RepairPeers())
        ref = reference_block(rs.MODEL, rs.DIM)
        assert resolver.reference.cid == ref.cid
        res.store.prune(2**64 - 1)  # past the reference's date, and no batch names it
        answer = repair.handle_request(res.store, {"op": "blocks", "cids": [ref.cid]})
        assert answer == {"blocks": [ref.data]}
        assert resolver.status()["stored_blocks"] == 1
        res.store.close()

    trio.run(main)


def test_a_peer_repairing_from_us_can_complete_every_batch_we_still_serve(store):
    """The block came with the batch a long time ago (received out of order, or the batch
    is still unmerged): age alone no longer takes it from under the batch."""
    block = rs.fleet_block(1)
    merged = rs.v2_batch(1, block, attach=True)
    unmerged = rs.v2_batch(2, block, seq=2)
    store.put(merged, received_ms=rs.T0 - 30 * DAY_MS, origin="repair")
    store.put(wire.decode_envelope(unmerged.envelope), received_ms=rs.T0, origin="gossip")
    store.mark_merged([merged.cid])
    store.prune(rs.T0)  # older than both blocks' dates, not than the merged batch
    assert _repair_from(store, merged.cid).resolved
    store.prune(rs.T0 + DAY_MS)  # the merged batch goes; the unmerged one stays, served
    assert not store.has(merged.cid)
    assert _repair_from(store, unmerged.cid).resolved
    store.mark_merged([unmerged.cid])
    store.prune(rs.T0 + DAY_MS)
    assert store.block_count() == 0


def test_a_peer_cannot_make_us_keep_blocks_no_stored_batch_names(store):
    """Blocks reach the store only attached to a batch the gate stores (or to a copy of
    one it holds, whose block the signed batch names), or fetched by the resolver for a
    parked batch (tests/net/test_baseline_attacks.py: bytes not asked for are refused).
    Blocks on batches the gate refuses or ignores are never stored, and the blocks of
    batches it stored go with them: the store holds no more blocks than batches, plus
    the reference, plus those whose last batch went within the retention."""
    gate = _gate(store)
    stale = rs.v2_batch(1, rs.fleet_block(1), attach=True)
    late = rs.T0 + POLICY.repair_max_age_ms + 1
    result = gate.admit(stale.envelope, late, origin="repair", wanted={stale.cid})
    assert (result.verdict, result.reason) == (Verdict.REJECT, Refusal.STALE)
    other = _gate(store, domains={"writing"})
    elsewhere = rs.v2_batch(2, rs.fleet_block(2), attach=True)
    result = other.admit(elsewhere.envelope, rs.T0, origin="gossip")
    assert (result.verdict, result.reason) == (Verdict.IGNORE, Ignore.UNSUBSCRIBED)
    assert store.block_count() == 0 and store.count() == 0
    flood = [rs.v2_batch(n, rs.fleet_block(n), attach=True) for n in range(10, 40)]
    for signed in flood:
        assert gate.admit(signed.envelope, rs.T0, origin="gossip").verdict is Verdict.ACCEPT
    assert store.block_count() == len(flood)
    store.prune(rs.T0 + DAY_MS)  # not merged yet: every batch, and so every block, stays
    assert store.block_count() == len(flood)
    store.mark_merged(store.cids())
    store.prune(rs.T0 + DAY_MS)
    assert store.count() == 0 and store.block_count() == 0
