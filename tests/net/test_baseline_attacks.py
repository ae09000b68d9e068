"""A hostile peer against the wire-v2 receive path: baseline blocks, the park, the fetch.

A version 2 batch names its baseline block by CID (fai_core/baseline_block.py); a node
completes it from memory or its store, else parks it and fetches the block over repair's
`blocks` op (fai_net/node/baselines.py). Each test here is an attack on that path and
asserts what the node must do: who is charged, what stays bounded, what still merges.

- Repair peers answering `blocks` with another block's bytes, oversize bytes, too many
  blocks, junk or nothing: the batch waits, the next peer serves it, the signer pays nothing.
- A block that hashes right but breaks the rules or does not fit: the signer committed to
  it, so the signer is charged (the serving peer is not); another fleet's model is nobody's.
- Flooding batches that name blocks nobody serves: the park is bounded, expires, charges
  nobody, and batches that come with their block still merge.
- Relays swapping, stripping or adding the attached block; the fleet's reference block;
  the `blocks` op's server-side limits; a v1 batch on a v2 topic; restarts with parked
  batches.

Real in-process nodes (tests/support/inprocess.py, driven by tests/support/v2node.py) where
the node's whole receive path matters; the resolver alone with scripted peers under trio's
MockClock (tests/support/resolver.py) where the attack is about its fetch passes and time.
The bugs these tests found (a liar not charged, one forwarder filling the park, fetches
asked one peer at a time, the same four peers asked every pass, parked batches released
past the queue's bounds, a restart re-parking the same batches, an attached copy's block
thrown away as a duplicate) are fixed; each test keeps them fixed.
"""

from __future__ import annotations

import numpy as np
import pytest
import trio
import trio.testing

from fai_core import dagcbor, wire
from fai_core.baseline_block import MAX_BLOCK_BYTES, make_baseline_block, reference_block
from fai_core.clock import now_ms
from fai_core.embedding import HashingEmbedder
from fai_core.experience import Experience
from fai_core.identity import NodeKey
from fai_core.refusals import Refusal, Reject
from fai_net.admission.store import BatchStore
from fai_net.node import baselines
from fai_net.node.identity import public_key_of
from fai_net.node.pending import QueueLimits
from fai_net.p2p import repair
from tests.support import resolver as rs
from tests.support.inprocess import config, connect, start
from tests.support.v2node import (
    deliver,
    fleet_block,
    library_count,
    relay,
    until,
    v2_batch,
    wire_status,
)
from tests.support.wire_v2 import envelope_of, fields_v2, resign_v2

MODEL = HashingEmbedder(384).model_id


@pytest.fixture
def fast_fetch(monkeypatch):
    """Fetch passes every 0.2 s instead of 2 s, so real-node tests stay short."""
    monkeypatch.setattr(baselines, "FETCH_INTERVAL_S", 0.2)


def simulated(main) -> None:
    """Run `main` on trio's mock clock: sleeps and timeouts pass instantly."""
    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def committed(n: int, data: bytes) -> wire.SignedBatch:
    """A v2 batch by the n-th sender (tests/support/resolver.py) whose signer committed to
    the block bytes `data`: it names their CID, whatever they hold."""
    signed = rs.v2_batch(n, rs.fleet_block(n))
    fields = dict(fields_v2(signed), baseline=dagcbor.cid_of(data))
    return wire.decode_envelope(resign_v2(fields, key=rs.sender_key(n)))


# -- repair peers answering `blocks` --------------------------------------------------------

_OTHER = rs.fleet_block(77)
LIES = {
    "another block's bytes": rs.answering({"blocks": [_OTHER.data]}),
    "bytes over the block limit": rs.answering({"blocks": [bytes(MAX_BLOCK_BYTES + 1)]}),
    "more blocks than asked for": rs.answering({"blocks": [_OTHER.data, rs.fleet_block(78).data]}),
    "no block list": rs.answering({"blocks": "none"}),
    "an extra field": rs.answering({"blocks": [], "envelopes": []}),
    "busy": rs.answering({"error": repair.BUSY}),
    "silence": rs.silent,
}


@pytest.mark.parametrize("lie", sorted(LIES))
def test_a_lying_repair_peer_costs_a_request_and_the_next_peer_serves_the_block(
    tmp_path, monkeypatch, lie
):
    """The peer that forwarded the batch is asked first; whatever it answers instead of the
    block, the resolver moves on to the next peer in the same pass, completes the batch with
    the real block, and charges neither the signer nor the honest peer."""
    peers = rs.RepairPeers()
    block = rs.fleet_block(1)
    liar = peers.add(LIES[lie], 1)
    honest = peers.add(rs.holding(block), 2)
    monkeypatch.setattr(repair, "request", peers.request)

    async def main():
        resolver, res, state = rs.resolver_for(tmp_path, peers)
        signed = rs.v2_batch(5, block)
        res.store.put(wire.decode_envelope(signed.envelope), received_ms=rs.T0, origin="gossip")
        assert not resolver.queue(("gossip", liar), rs.unresolved(signed), public_key_of(liar))
        assert resolver.status()["parked_batches"] == 1
        assert await resolver.fetch_missing() == 1
        # Both are asked at once; the liar's answer, if any came before the honest peer's,
        # is refused. Whatever came first, the batch is complete.
        asked = [peer for peer, _, _ in peers.asked]
        assert honest in asked and set(asked) <= {liar, honest}
        (pending,) = state.pending.take(100)
        assert pending.batch.cid == signed.cid and pending.batch.resolved
        np.testing.assert_array_equal(pending.batch.baseline, block.values)
        assert resolver.status()["parked_batches"] == 0 and resolver.fetched == 1
        assert res.store.get_block(block.cid) == block.data  # stored: it can serve it now
        assert res.store.get_block(_OTHER.cid) is None  # the liar's bytes were not kept
        assert res.reputation.score(signed.batch.sender) == 1.0
        assert res.reputation.score(public_key_of(honest)) == 1.0
        if lie == "another block's bytes" and liar in asked:  # a block it was not asked for
            assert res.metrics.rejected == {"cid_mismatch": 1}
            assert res.reputation.score(public_key_of(liar)) < 1.0
        else:
            assert not res.metrics.rejected

    simulated(main)


def test_a_repair_peer_serving_another_cids_bytes_is_charged(tmp_path, monkeypatch):
    peers = rs.RepairPeers()
    block = rs.fleet_block(1)
    liar = peers.add(rs.answering({"blocks": [_OTHER.data]}), 1)
    peers.add(rs.holding(block), 2)
    monkeypatch.setattr(repair, "request", peers.request)

    async def main():
        resolver, res, _ = rs.resolver_for(tmp_path, peers)
        signed = rs.v2_batch(5, block)
        resolver.queue(("gossip", liar), rs.unresolved(signed), public_key_of(liar))
        assert await resolver.fetch_missing() == 1
        assert res.reputation.score(public_key_of(liar)) < 1.0

    simulated(main)


def test_real_nodes_skip_a_peer_answering_with_another_block(tmp_path, fast_fetch):
    """The same over real libp2p streams: a peer whose repair handler answers every `blocks`
    request with the bytes of another block forwards a batch without its block; the node
    asks it, refuses its bytes, fetches the block from an honest peer and merges the batch."""

    async def main():
        async with trio.open_nursery() as n:
            b = await start(n, config(tmp_path, "b"))
            liar = await start(n, config(tmp_path, "liar"))
            honest = await start(n, config(tmp_path, "honest"))
            block, other = fleet_block(b, 1), fleet_block(b, 2)
            asked = []

            async def lying_handler(stream) -> None:
                try:
                    asked.append(await repair.read_frame(stream, repair.MAX_REQUEST_BYTES))
                    await repair.write_frame(stream, {"blocks": [other.data]})
                finally:
                    await stream.close()

            liar.host.set_stream_handler(repair.PROTOCOL_ID, lying_handler)
            honest.store.put_block(block.cid, block.data, now_ms())
            await connect(b, liar)
            await connect(b, honest)
            signed = v2_batch(b, ["close files in a finally block"], seed=9, block=block)
            assert deliver(b, signed.envelope, liar.peer_id)
            await until(lambda: _has_rows(b, 1))
            await until(lambda: _all_merged(b))
            assert asked and asked[0] == {"op": "blocks", "cids": [block.cid]}
            assert wire_status(b)["fetched_blocks"] == 1
            assert b.store.get_block(other.cid) is None
            for key in (signed.batch.sender, honest.identity.public_key):
                assert b.reputation.score(key) == 1.0
            n.cancel_scope.cancel()

    trio.run(main)


async def _has_rows(node, rows: int) -> bool:
    return await library_count(node) == rows


async def _all_merged(node) -> bool:
    """The store lists nothing unmerged (marked just after the library insert)."""
    return node.store.unmerged() == []


# -- blocks the signer committed to --------------------------------------------------------

COMMITTED = {
    "non-finite values": (
        dagcbor.encode({"m": rs.MODEL, "w": rs.DIM, "f": np.full(rs.DIM, np.nan, "<f2").tobytes()}),
        Reject.NON_FINITE,
        True,
    ),
    "missing its values": (
        dagcbor.encode({"m": rs.MODEL, "w": rs.DIM}),
        Reject.SCHEMA,
        True,
    ),
    "another width": (
        make_baseline_block(np.zeros(rs.DIM + 8), rs.MODEL).data,
        Reject.SHAPE_MISMATCH,
        True,
    ),
    "a malformed model id": (
        make_baseline_block(np.zeros(rs.DIM), "bad model").data,
        Reject.BAD_MODEL,
        True,
    ),
    "another fleet's model": (
        make_baseline_block(np.zeros(rs.DIM), "other-model").data,
        Refusal.WRONG_MODEL,
        False,
    ),
}


@pytest.mark.parametrize("kind", sorted(COMMITTED))
def test_a_served_block_that_hashes_right_but_does_not_fit_is_the_signers_fault(
    tmp_path, monkeypatch, kind
):
    """A peer serves exactly the bytes the batch names, and they break the block rules or do
    not fit: the signer committed to them, so the signer is charged (never the peer that
    served them), the refusal is counted, and the batch is marked done in the store so a
    restart does not park it again. Another fleet's model is `wrong_model`: nobody's fault."""
    data, reason, charged = COMMITTED[kind]
    peers = rs.RepairPeers()
    server = peers.add(rs.holding((dagcbor.cid_of(data), data)), 1)
    monkeypatch.setattr(repair, "request", peers.request)

    async def main():
        resolver, res, state = rs.resolver_for(tmp_path, peers)
        signed = committed(3, data)
        res.store.put(signed, received_ms=rs.T0, origin="gossip")
        resolver.queue(("gossip", server), rs.unresolved(signed), public_key_of(server))
        await resolver.fetch_missing()
        assert len(state.pending) == 0 and resolver.parked == 0
        assert res.metrics.rejected == {str(reason): 1}
        assert res.store.unmerged() == []
        signer = res.reputation.score(signed.batch.sender)
        assert signer < 1.0 if charged else signer == 1.0
        assert res.reputation.score(public_key_of(server)) == 1.0

    simulated(main)


# -- flooding batches that name blocks nobody serves ---------------------------------------


def test_a_flood_of_unservable_blocks_is_bounded_uncharged_and_does_not_stop_attached_batches(
    tmp_path, monkeypatch, fast_fetch
):
    """A relay floods batches (from many keys) naming blocks nobody holds. The park holds at
    most MAX_PARKED of them, the rest wait in the store; nobody is charged (an unserved block
    is no proof of fault); parked batches expire after PARK_TIMEOUT_S and stay unmerged in
    the store; and an honest batch that brings its block merges meanwhile."""
    monkeypatch.setattr(baselines, "MAX_PARKED", 8)
    monkeypatch.setattr(baselines, "PARK_TIMEOUT_S", 1.0)

    async def main():
        async with trio.open_nursery() as n:
            b = await start(n, config(tmp_path, "b"))
            flooder = relay(40)
            senders = []
            for i in range(12):
                junk = v2_batch(b, [f"flood lesson {i}"], seed=50 + i, block=fleet_block(b, i))
                senders.append(junk.batch.sender)
                assert deliver(b, junk.envelope, flooder.peer_id)
            status = wire_status(b)
            # One forwarder gets its share of the park (1/8 of it), not the park.
            share = max(1, int(baselines.MAX_PARKED * baselines.PARK_SHARE))
            assert status["parked_batches"] == status["missing_blocks"] == share
            assert status["park_full"] == 12 - share
            assert len(b.store.unmerged()) == 12
            honest = v2_batch(
                b, ["pin the toolchain"], seed=90, block=fleet_block(b, 99), attach=True
            )
            assert deliver(b, honest.envelope, relay(41).peer_id)
            await until(lambda: _has_rows(b, 1))
            await until(lambda: _gave_up(b, share), 10)
            assert wire_status(b)["parked_batches"] == 0
            assert len(b.store.unmerged()) == 12  # waiting for a restart, not dropped
            for key in (*senders, flooder.public_key):
                assert b.reputation.score(key) == 1.0
            assert not set(b.metrics.rejections()) - {"duplicate"}
            n.cancel_scope.cancel()

    trio.run(main)


async def _gave_up(node, count: int) -> bool:
    return wire_status(node)["gave_up"] == count


def test_an_honest_batch_needing_a_fetch_merges_while_a_flooder_fills_the_park(
    tmp_path, monkeypatch
):
    monkeypatch.setattr(baselines, "MAX_PARKED", 8)
    peers = rs.RepairPeers()
    block = rs.fleet_block(500)
    honest_peer = peers.add(rs.holding(block), 2)
    flooder = peers.add(rs.answering({"blocks": []}), 1)
    monkeypatch.setattr(repair, "request", peers.request)

    async def main():
        resolver, _, state = rs.resolver_for(tmp_path, peers)
        for i in range(8):
            junk = rs.unresolved(rs.v2_batch(i, rs.fleet_block(i)))
            resolver.queue(("gossip", flooder), junk, public_key_of(flooder))
        honest = rs.unresolved(rs.v2_batch(100, block))
        resolver.queue(("gossip", honest_peer), honest, public_key_of(honest_peer))
        async with trio.open_nursery() as n:
            n.start_soon(resolver.loop)
            await trio.sleep(60)
            n.cancel_scope.cancel()
        assert [p.batch.cid for p in state.pending.take(100)] == [honest.batch.cid]

    simulated(main)


def test_a_silent_peer_with_many_junk_batches_does_not_delay_an_honest_fetch(tmp_path, monkeypatch):
    peers = rs.RepairPeers()
    block = rs.fleet_block(500)
    silent = peers.add(rs.silent, 1)
    honest_peer = peers.add(rs.holding(block), 2)
    monkeypatch.setattr(repair, "request", peers.request)

    async def main():
        resolver, _, state = rs.resolver_for(tmp_path, peers)
        for i in range(30):
            junk = rs.unresolved(rs.v2_batch(i, rs.fleet_block(i)))
            resolver.queue(("gossip", silent), junk, public_key_of(silent))
        honest = rs.unresolved(rs.v2_batch(100, block))
        resolver.queue(("gossip", honest_peer), honest, public_key_of(honest_peer))
        started = trio.current_time()
        async with trio.open_nursery() as n:
            n.start_soon(resolver.loop)
            while not len(state.pending):
                await trio.sleep(1)
            n.cancel_scope.cancel()
        assert trio.current_time() - started <= 30, trio.current_time() - started

    simulated(main)


def test_a_block_held_by_the_fifth_connected_peer_is_fetched(tmp_path, monkeypatch):
    peers = rs.RepairPeers()
    block = rs.fleet_block(500)
    for seed in range(10, 15):
        peers.add(rs.answering({"blocks": []}), seed)
    holder = peers.add(rs.holding(block), 20)
    monkeypatch.setattr(repair, "request", peers.request)

    async def main():
        resolver, _, state = rs.resolver_for(tmp_path, peers)
        resolver.queue(("restart", b"s"), rs.unresolved(rs.v2_batch(100, block)), None)
        async with trio.open_nursery() as n:
            n.start_soon(resolver.loop)
            await trio.sleep(60)
            n.cancel_scope.cancel()
        assert peers.asked_of(holder) >= 1
        assert len(state.pending) == 1

    simulated(main)


def test_parked_batches_released_together_stay_within_the_queue_bounds(tmp_path):
    """One relay forwards 12 batches naming one block it withholds (each admitted: the queue
    is empty, parked batches are not in it), then a 13th that carries the block."""

    async def main():
        limits = QueueLimits(max_batches=8, max_rows=64, share=0.25)
        async with trio.open_nursery() as n:
            b = await start(n, config(tmp_path, "b", queue=limits))
            block, flooder = fleet_block(b, 1), relay(40)
            for i in range(12):
                batch = v2_batch(b, [f"withheld lesson {i}"], seed=60 + i, block=block)
                assert deliver(b, batch.envelope, flooder.peer_id)
            carrier = v2_batch(b, ["carrier lesson"], seed=90, block=block, attach=True)
            assert deliver(b, carrier.envelope, flooder.peer_id)
            # No checkpoint since: no round has taken anything yet.
            assert len(b.pending) <= limits.max_batches, len(b.pending)
            n.cancel_scope.cancel()

    trio.run(main)


# -- relays and the attached block ---------------------------------------------------------


def test_a_relay_swapping_the_attached_block_is_charged_and_the_sender_is_not(tmp_path):
    """The attached block is outside the signed batch: a relay that swaps it is refused
    before the signature (cid_mismatch), charged, and the batch is not stored, so the
    genuine envelope from another peer is accepted and merged."""

    async def main():
        async with trio.open_nursery() as n:
            b = await start(n, config(tmp_path, "b"))
            block = fleet_block(b, 1)
            signed = v2_batch(b, ["cache the parsed config"], seed=9, block=block, attach=True)
            env = envelope_of(signed)
            env["a"] = fleet_block(b, 2).data
            swapper = relay(30)
            assert not deliver(b, dagcbor.encode(env), swapper.peer_id)
            assert b.metrics.rejections() == {"cid_mismatch": 1}
            assert b.reputation.score(swapper.public_key) < 1.0
            assert b.reputation.score(signed.batch.sender) == 1.0
            assert not b.store.has(signed.cid) and b.store.get_block(env["a"]) is None
            honest = relay(31)
            assert deliver(b, signed.envelope, honest.peer_id)
            await until(lambda: _has_rows(b, 1))
            assert b.reputation.score(honest.public_key) == 1.0
            n.cancel_scope.cancel()

    trio.run(main)


def test_a_relay_may_strip_or_add_the_right_block_at_no_ones_cost(tmp_path, fast_fetch):
    """Anyone may attach the block the batch names, or leave it out: neither changes the
    batch. Stripped, the batch is accepted and parked; completed by a relay, it merges
    without a fetch. Nobody is charged either way."""

    async def main():
        async with trio.open_nursery() as n:
            b = await start(n, config(tmp_path, "b"))
            stripped = v2_batch(
                b, ["retry with backoff"], seed=9, block=fleet_block(b, 1), attach=True
            )
            stripped_env = envelope_of(stripped)
            del stripped_env["a"]
            block = fleet_block(b, 2)
            bare = v2_batch(b, ["pin the toolchain in ci"], seed=10, block=block)
            added = envelope_of(bare)
            added["a"] = block.data
            r1, r2 = relay(31), relay(32)
            assert deliver(b, dagcbor.encode(stripped_env), r1.peer_id)
            assert deliver(b, dagcbor.encode(added), r2.peer_id)
            await until(lambda: _has_rows(b, 1))
            status = wire_status(b)
            assert status["parked_batches"] == 1 and status["fetched_blocks"] == 0
            assert b.store.get_block(block.cid) == block.data
            for key in (r1.public_key, r2.public_key, stripped.batch.sender, bare.batch.sender):
                assert b.reputation.score(key) == 1.0
            assert not b.metrics.rejections()
            n.cancel_scope.cancel()

    trio.run(main)


def test_the_attached_copy_completes_a_batch_parked_from_a_stripped_copy(tmp_path):
    """A hostile relay strips the block from a sender's first batch and races it ahead: the
    genuine attached copy that follows carries the block the parked batch needs."""

    async def main():
        async with trio.open_nursery() as n:
            b = await start(n, config(tmp_path, "b"))
            block = fleet_block(b, 1)
            signed = v2_batch(b, ["retry with backoff"], seed=9, block=block, attach=True)
            stripped = envelope_of(signed)
            del stripped["a"]
            assert deliver(b, dagcbor.encode(stripped), relay(31).peer_id)
            assert wire_status(b)["parked_batches"] == 1
            deliver(b, signed.envelope, relay(32).peer_id)  # a duplicate of a stored batch
            assert wire_status(b)["parked_batches"] == 0
            await until(lambda: _has_rows(b, 1), 5)
            n.cancel_scope.cancel()

    trio.run(main)


def test_a_relay_attaching_a_bad_block_the_signer_committed_to_is_refused_at_the_gate(tmp_path):
    """The signer named a block of NaNs; a relay attaches it. The gate refuses the envelope
    (non_finite, after the signature): the signer is charged, and so is the relay, since an
    honest relay running the same gate would not have forwarded it. Nothing is stored, so
    the node never serves that block."""

    async def main():
        async with trio.open_nursery() as n:
            b = await start(n, config(tmp_path, "b"))
            nan = dagcbor.encode({"m": MODEL, "w": 384, "f": np.full(384, np.nan, "<f2").tobytes()})
            signed = v2_batch(b, ["close the socket"], seed=9, block=fleet_block(b, 1))
            key = NodeKey(bytes([9]) * 32)
            fields = dict(fields_v2(signed), baseline=dagcbor.cid_of(nan))
            envelope = resign_v2(fields, key=key, attached=nan)
            forwarder = relay(33)
            assert not deliver(b, envelope, forwarder.peer_id)
            assert b.metrics.rejections() == {"non_finite": 1}
            assert b.reputation.score(key.public_key) < 1.0
            assert b.reputation.score(forwarder.public_key) < 1.0
            assert b.store.get_block(dagcbor.cid_of(nan)) is None and b.store.count() == 0
            n.cancel_scope.cancel()

    trio.run(main)


# -- the fleet's reference block -------------------------------------------------------------


def test_a_batch_naming_the_reference_block_merges_without_any_fetch(tmp_path):
    """Every node derives the fleet's reference block: a batch naming it needs no peer at
    all. A hostile relay attaching the reference block anyway changes nothing."""

    async def main():
        async with trio.open_nursery() as n:
            b = await start(n, config(tmp_path, "b"))
            ref = reference_block(MODEL, 384)
            first = v2_batch(b, ["retry flaky calls"], seed=9, block=ref)
            second = v2_batch(b, ["cache the config"], seed=10, block=ref, attach=True)
            assert deliver(b, first.envelope, relay(31).peer_id)
            assert deliver(b, second.envelope, relay(32).peer_id)
            await until(lambda: _has_rows(b, 2))
            status = wire_status(b)
            assert status["fetched_blocks"] == status["parked_batches"] == 0
            assert status["missing_blocks"] == 0 and status["stored_blocks"] == 1
            assert b.parts.discovery.connected_peers() == []
            n.cancel_scope.cancel()

    trio.run(main)


# -- the `blocks` op, server side ------------------------------------------------------------


def _max_size_blocks(store: BatchStore, count: int) -> list[bytes]:
    """`count` stored blocks of MAX_BLOCK_BYTES each (the store keeps what it is given)."""
    cids = []
    for i in range(count):
        data = i.to_bytes(2, "big") + bytes(MAX_BLOCK_BYTES - 2)
        cid = dagcbor.cid_of(data)
        store.put_block(cid, data, now_ms())
        cids.append(cid)
    return cids


def test_blocks_answers_stay_within_their_reserved_bound(tmp_path):
    """What a requester can make a server build with one `blocks` request: at most 64
    distinct blocks, each at most MAX_BLOCK_BYTES, in a frame no larger than the
    `response_bound` reserved before the store is read (duplicates counted once)."""
    store = BatchStore.open(tmp_path / "batches")
    cids = _max_size_blocks(store, repair.MAX_GET_CIDS)
    requests = {
        "64 blocks": {"op": "blocks", "cids": cids},
        "one block 64 times": {"op": "blocks", "cids": [cids[0]] * repair.MAX_GET_CIDS},
        "unknown cids": {"op": "blocks", "cids": [dagcbor.cid_of(b"x"), cids[1]]},
    }
    served = {}
    for name, request in requests.items():
        answer = repair.handle_request(store, request)
        frame = repair.encode_frame(answer)
        assert len(frame) <= repair.response_bound(request) <= repair.MAX_RESPONSE_FRAME, name
        repair.validate_response(repair.validate_request(request), answer)  # a client takes it
        served[name] = len(answer["blocks"])
    assert served == {"64 blocks": 64, "one block 64 times": 1, "unknown cids": 1}
    assert repair.response_bound(requests["64 blocks"]) < repair.MAX_RESPONSE_FRAME // 7
    too_many = {"op": "blocks", "cids": [*cids, dagcbor.cid_of(b"y")]}
    assert repair.handle_request(store, too_many) == {"error": repair.TOO_LARGE}
    short = {"op": "blocks", "cids": [cids[0][:-1]]}
    assert repair.handle_request(store, short) == {"error": repair.BAD_REQUEST}
    # Blocks and batches are apart: `get` never serves a block, `blocks` never a batch.
    assert repair.handle_request(store, {"op": "get", "cids": cids[:2]}) == {"envelopes": []}


def test_blocks_requests_fit_the_response_budget_side_by_side(tmp_path):
    """A real repair server with the smallest budgets allowed (one largest frame, for all
    peers together): four concurrent 64-block requests from one peer are all served, since
    each reserves its real bound (~541 KB), not a whole frame."""

    async def main():
        limits = repair.RepairLimits(
            per_peer_streams=4,
            response_budget_bytes=repair.MAX_RESPONSE_FRAME,
            per_peer_budget_bytes=repair.MAX_RESPONSE_FRAME,
            budget_wait_s=0,
        )
        async with trio.open_nursery() as n:
            a = await start(n, config(tmp_path, "a"))
            b = await start(n, config(tmp_path, "b"))
            server = repair.make_handler(lambda: a.store, limits=limits)
            a.host.set_stream_handler(repair.PROTOCOL_ID, server)
            cids = _max_size_blocks(a.store, repair.MAX_GET_CIDS)
            await connect(b, a)
            answers = []

            async def ask():
                reply = await repair.request(b.host, a.peer_id, {"op": "blocks", "cids": cids})
                answers.append(len(reply["blocks"]))

            async with trio.open_nursery() as asks:
                for _ in range(4):
                    asks.start_soon(ask)
            assert answers == [64] * 4
            assert server.counts["served:blocks"] == 4 and not server.counts["refused:busy"]
            assert 0 < server.budget.high_water <= repair.MAX_RESPONSE_FRAME
            assert server.budget.in_flight == 0
            n.cancel_scope.cancel()

    trio.run(main)


# -- versions and topics ---------------------------------------------------------------------


def test_a_v1_batch_on_a_v2_topic_is_charged_to_the_relay_not_the_sender(tmp_path):
    async def main():
        async with trio.open_nursery() as n:
            b = await start(n, config(tmp_path, "b"))
            key = NodeKey(bytes([9]) * 32)
            (vector,) = b.embedder.embed(["close files in a finally block"])
            created = now_ms()
            exp = Experience.create(
                "close files in a finally block", vector, 0.7, "coding", key.public_key, created
            )
            v1 = wire.encode_batch(
                [exp], key=key, seq=1, timestamp_ms=created, model=MODEL, baseline=np.zeros(384)
            )
            forwarder = relay(30)
            assert not deliver(b, v1.envelope, forwarder.peer_id, version=2)
            assert b.metrics.rejections() == {"topic_mismatch": 1}
            assert b.reputation.score(forwarder.public_key) < 1.0
            assert b.reputation.score(key.public_key) == 1.0
            assert not b.store.has(v1.cid)
            assert deliver(b, v1.envelope, relay(31).peer_id, version=1)
            await until(lambda: _has_rows(b, 1))
            n.cancel_scope.cancel()

    trio.run(main)


# -- restarts --------------------------------------------------------------------------------


def test_a_parked_batch_is_parked_again_after_a_restart_and_merged_once_served(
    tmp_path, fast_fetch
):
    """Nobody serves the block before the node stops: the batch stays unmerged in the
    store. After the restart it is parked again, and merged once a peer that holds the block
    is connected. Nobody is charged for the wait."""

    async def main():
        cfg = config(tmp_path, "b")
        async with trio.open_nursery() as first:
            b = await start(first, cfg)
            block = fleet_block(b, 1)
            signed = v2_batch(b, ["close files in a finally block"], seed=9, block=block)
            assert deliver(b, signed.envelope, relay(31).peer_id)
            assert wire_status(b)["parked_batches"] == 1
            b.stop()
        async with trio.open_nursery() as n:
            b = await start(n, cfg)
            assert len(b.store.unmerged()) == 1
            assert wire_status(b)["parked_batches"] == 1
            a = await start(n, config(tmp_path, "a"))
            a.store.put_block(block.cid, block.data, now_ms())
            await connect(b, a)
            await until(lambda: _has_rows(b, 1))
            await until(lambda: _all_merged(b))
            assert wire_status(b)["parked_batches"] == 0
            assert b.reputation.score(signed.batch.sender) == 1.0
            n.cancel_scope.cancel()

    trio.run(main)


def test_a_restart_with_more_parked_batches_than_queue_room_still_merges_the_rest(tmp_path):
    """The store holds, oldest first, two batches whose blocks nobody serves and one naming
    the fleet's reference block; the queue holds two batches."""

    async def main():
        cfg = config(tmp_path, "b", queue=QueueLimits(max_batches=2, max_rows=64, share=1.0))
        _store_batches(cfg.data_dir)
        async with trio.open_nursery() as n:
            b = await start(n, cfg)
            await trio.sleep(2)  # several rounds
            status = wire_status(b)
            assert status["parked_batches"] == 2, status
            assert await library_count(b) == 1
            n.cancel_scope.cancel()

    trio.run(main)


def _store_batches(data_dir) -> None:
    embedder = HashingEmbedder(384)

    class Fleet:  # what v2_batch reads of a node
        pass

    Fleet.embedder = embedder
    store = BatchStore.open(data_dir / "batches")
    try:
        blocks = [fleet_block(Fleet, 1), fleet_block(Fleet, 2), reference_block(MODEL, 384)]
        for i, block in enumerate(blocks):
            signed = v2_batch(Fleet, [f"stored lesson number {i}"], seed=70 + i, block=block)
            store.put(wire.decode_envelope(signed.envelope), received_ms=now_ms(), origin="gossip")
    finally:
        store.close()
