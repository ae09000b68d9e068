"""Node behaviour that needs a hostile or unusual peer: real nodes and hosts in one process.

Regressions for review findings: a repair server that pages forever, a repair reply
carrying a batch nobody asked for, a peer record that used to block the outbox (burning a
seq per retry), and a merge round that raised and took the node down.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from pathlib import Path

import pytest
import trio
from libp2p.peer.peerinfo import info_from_p2p_addr

from fai_core.clock import now_ms
from fai_core.dagcbor import cid_parse
from fai_core.deltasoup_history import HistoryVerdict, SenderHistory
from fai_core.deltasoup_reference import SenderSummary
from fai_core.experience import Experience
from fai_core.identity import NodeKey
from fai_core.wire import decode_envelope, encode_batch
from fai_net.api.recall import RecallQuery
from fai_net.node.config import NodeConfig
from fai_net.node.node import REPAIR_MAX_PAGES
from fai_net.p2p import repair
from fai_net.p2p.gossip import parse_multiaddrs
from tests.support import inprocess
from tests.support.aggregation import KeepNothing
from tests.support.inprocess import connect, start

ROOT = Path(tempfile.mkdtemp(prefix="fai-ip-", dir="/tmp"))


def config(name: str, **overrides) -> NodeConfig:
    return inprocess.config(ROOT, name, **overrides)


def test_hostile_repair_server_is_bounded_and_cannot_push_batches():
    calls = {"since": 0, "get": 0}

    async def main():
        async with trio.open_nursery() as n:
            victim = await start(n, config("victim"))
            rogue = await start(n, config("rogue"))
            key = rogue.identity.key
            vec = victim.embedder.embed(["validate inputs at the service boundary"])
            exp = Experience.create(
                "validate inputs at the service boundary",
                vec[0],
                0.6,
                "coding",
                key.public_key,
                now_ms() - 6 * 24 * 3_600_000,
            )
            old = encode_batch(
                [exp],
                key=key,
                seq=77,
                timestamp_ms=exp.created_ms,
                model=victim.embedder.model_id,
                baseline=vec[0] * 0,
            )
            mode = {"m": "inject"}

            async def handler(stream):
                req = await repair.read_frame(stream, repair.MAX_REQUEST_BYTES)
                calls[req["op"]] += 1
                if req["op"] == "since" and mode["m"] == "loop":
                    cid = b"\x01\x71\x12\x20" + os.urandom(32)
                    c = req["cursor"] + 1
                    resp = {"items": [[c, cid, bytes(32), 1, "coding", 1]], "next": c}
                elif req["op"] == "since":
                    asked = b"\x01\x71\x12\x20" + bytes(32)
                    items = [[1, asked, bytes(32), 1, "coding", 1]] if req["cursor"] == 0 else []
                    resp = {"items": items, "next": max(1, req["cursor"])}
                else:
                    resp = {"envelopes": [old.envelope] if mode["m"] == "inject" else []}
                await repair.write_frame(stream, resp)
                await stream.close()

            rogue.host.set_stream_handler(repair.PROTOCOL_ID, handler)
            await connect(victim, rogue)
            # (b) a `get` reply with a batch nobody asked for, 6 days old: refused.
            assert await victim.sync_with(rogue.peer_id) == 0
            assert not victim.store.has(old.cid)
            assert victim.metrics.rejections().get("unrequested") == 1
            # (a) `since` that advances by one forever: the pass ends, bounded.
            mode["m"] = "loop"
            calls["since"] = 0
            with trio.fail_after(60):
                await victim.sync_with(rogue.peer_id)
            assert calls["since"] == REPAIR_MAX_PAGES
            n.cancel_scope.cancel()

    trio.run(main)


def test_a_peer_record_replacing_ours_is_published_as_ours():
    """A peer's record of the same pattern with a higher claim wins the library, but the
    node still publishes its own record (its claim, its key): the peer may be refused
    later, and then only other nodes' copies vouch for the pattern."""

    async def main():
        async with trio.open_nursery() as n:
            node = await start(n, config("owner"))
            texts = ["keep the outbox moving", "second local pattern here"]
            await node.add_experiences([{"text": t, "domain": "coding"} for t in texts])
            # A peer's record of the first pattern, with a higher quality, wins the merge.
            other = NodeKey(bytes([9]) * 32).public_key
            vec = node.embedder.embed(texts[:1])[0]
            better = Experience.create(texts[0], vec, 0.95, "coding", other, now_ms())
            await trio.to_thread.run_sync(node.library.merge, [better], other)
            assert node.library.get(better.id).experience.source == other
            result = await node.broadcast("coding")
            assert result["experiences_sent"] == 2 and node.store.outbox_count() == 0
            sent = decode_envelope(node.store.get(cid_parse(result["batch_id"]))).batch
            assert sent.sender == node.identity.public_key
            assert sorted(sent.texts) == sorted(texts)
            assert [round(float(q), 3) for q in sent.quality] == [0.5, 0.5]  # ours, not 0.95
            after_one = node.store.next_seq()
            again = await node.broadcast("coding")
            assert again["experiences_sent"] == 0
            # Exactly one seq was used: the published batch's, and the empty broadcast none.
            assert node.store.newest_seq(node.identity.public_key) == after_one - 1
            assert node.store.next_seq() == after_one
            n.cancel_scope.cancel()

    trio.run(main)


def test_an_outbox_entry_queued_without_a_record_leaves_once_a_peer_record_wins():
    """An entry an older node queued (no record) falls back to the library's record, and
    leaves the outbox once that record is a peer's: nothing else of ours is left to send."""

    async def main():
        async with trio.open_nursery() as n:
            node = await start(n, config("older"))
            texts = ["an entry from an older node", "a current entry with its record"]
            await node.add_experiences([{"text": t, "domain": "coding"} for t in texts])
            vec = node.embedder.embed(texts[:1])[0]
            mine = Experience.create(texts[0], vec, 0.5, "coding", node.identity.public_key, 1)
            node.store.outbox_remove([mine.id])
            node.store.outbox_add([mine.id], "coding")  # as an older node queued it
            other = NodeKey(bytes([8]) * 32).public_key
            better = Experience.create(texts[0], vec, 0.95, "coding", other, now_ms())
            await trio.to_thread.run_sync(node.library.merge, [better], other)
            result = await node.broadcast("coding")
            assert result["experiences_sent"] == 1 and node.store.outbox_count() == 0
            n.cancel_scope.cancel()

    trio.run(main)


def test_a_failing_round_is_counted_and_the_node_keeps_running():
    async def main():
        async with trio.open_nursery() as n:
            a = await start(n, config("ra", broadcast_threshold=2))
            b = await start(n, config("rb"))
            await connect(b, a)
            boom = {"left": 1}
            real = b.soup.aggregate

            def flaky(*args, **kwargs):
                if boom["left"]:
                    boom["left"] -= 1
                    raise RuntimeError("injected round failure")
                return real(*args, **kwargs)

            b.soup.aggregate = flaky
            with trio.fail_after(30):
                while not b.pubsub.peer_topics.get("/fai/exp/1/coding"):
                    await trio.sleep(0.1)
                await trio.sleep(1.5)
                await a.add_experiences(
                    [{"text": t, "domain": "coding"} for t in ("one local pattern", "two more")]
                )
                while b.metrics.rejections().get("round_error") != 1:
                    await trio.sleep(0.1)
                await a.add_experiences(
                    [{"text": t, "domain": "coding"} for t in ("third pattern", "fourth one")]
                )
                while await trio.to_thread.run_sync(b.library.count) < 2:
                    await trio.sleep(0.1)
                while b.store.count() < 2 or len(b.store.unmerged()) > 1:
                    await trio.sleep(0.1)
            # Both batches kept; the failed round's batch stays unmerged for the next start.
            assert b.store.count() == 2 and len(b.store.unmerged()) == 1
            n.cancel_scope.cancel()

    trio.run(main)


def test_the_node_merges_with_the_aggregator_it_is_given():
    """`Node(aggregator=factory)` builds its merge rounds' aggregator with the factory: a
    receiver given one that keeps nothing stores and marks the batch, merges nothing."""
    made: list[tuple[KeepNothing, object]] = []

    def keep_nothing(embedder, reputation, cfg):
        made.append((KeepNothing(), reputation))
        return made[-1][0]

    async def main():
        async with trio.open_nursery() as n:
            a = await start(n, config("aga", broadcast_threshold=2))
            b = await start(n, config("agb"), aggregator=keep_nothing)
            await connect(b, a)
            assert [b.soup] == [m[0] for m in made] and made[0][1] is b.reputation
            with trio.fail_after(30):
                while not b.pubsub.peer_topics.get("/fai/exp/1/coding"):
                    await trio.sleep(0.1)
                await trio.sleep(1.5)
                await a.add_experiences(
                    [{"text": t, "domain": "coding"} for t in ("one local pattern", "two more")]
                )
                while b.store.count() < 1 or b.store.unmerged():
                    await trio.sleep(0.1)
            assert made[0][0].batches == 1 and made[0][0].rounds >= 1
            assert await trio.to_thread.run_sync(b.library.count) == 0
            assert await trio.to_thread.run_sync(a.library.count) == 2
            n.cancel_scope.cancel()

    trio.run(main)


def test_copies_of_a_refused_message_skip_the_gate():
    """py-libp2p re-validates every copy of a refused message; the node answers copies from
    its refusal cache, so junk costs one decode, not one per copy."""

    class Msg:
        def __init__(self, data: bytes, topic: str) -> None:
            self.data, self.topicIDs = data, [topic]

    async def main():
        async with trio.open_nursery() as n:
            node = await start(n, config("refuser"))
            other = await start(n, config("sender"))
            junk = Msg(b"\xa1\x61x\xff", "/fai/exp/1/coding")
            calls = {"n": 0}
            real = node.gate.admit

            def counting(*args, **kwargs):
                calls["n"] += 1
                return real(*args, **kwargs)

            node.gate.admit = counting
            assert node._validator(other.peer_id, junk) is False
            for _ in range(5):
                assert node._validator(other.peer_id, junk) is False
            assert calls["n"] == 1
            counts = node.metrics.rejections()
            assert counts["malformed_cbor"] == 1 and counts["refused_again"] == 5
            # The same bytes on another topic are another message: judged afresh.
            assert node._validator(other.peer_id, Msg(junk.data, "/fai/exp/1/writing")) is False
            assert calls["n"] == 2
            n.cancel_scope.cancel()

    trio.run(main)


def test_a_peer_without_repair_is_asked_once_per_back_off_step():
    """A connected peer that does not speak /fai/repair/1.0.0 used to be asked (and logged,
    ~8 lines) on every pass, every 10 s. Now each failure sets a back-off."""
    from fai_net.node.identity import NodeIdentity
    from fai_net.p2p.gossip import GossipSettings, build_host, running

    async def main():
        async with trio.open_nursery() as n:
            node = await start(n, config("backoff"))
            identity = NodeIdentity.from_seed(bytes([42]) * 32)
            host, pubsub, router = build_host(identity.key_pair, GossipSettings())
            async with running(host, pubsub, router, ["/ip4/127.0.0.1/tcp/0"]):
                addr = f"{node.addrs[0].split('/p2p/')[0]}/p2p/{node.peer_id}"
                await host.connect(info_from_p2p_addr(parse_multiaddrs([addr])[0]))
                with trio.fail_after(10):
                    while host.get_id() not in node.connected_peers():
                        await trio.sleep(0.05)
                for _ in range(5):
                    await node.sync_all()
                assert node.peers[host.get_id()].sync_failures == 1
                assert node._repair_backoff.failures(str(host.get_id())) == 1
            n.cancel_scope.cancel()

    trio.run(main)


def test_the_data_directory_is_the_owners_alone():
    """Other local users must not read batches, evidence, the outbox or the library."""
    import stat

    cfg = config("modes")
    cfg.data_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(cfg.data_dir, 0o755)  # as an older node left it

    async def main():
        async with trio.open_nursery() as n:
            await start(n, cfg)
            n.cancel_scope.cancel()

    trio.run(main)
    assert stat.S_IMODE(os.stat(cfg.data_dir).st_mode) == 0o700
    store_file = cfg.data_dir / "batches" / "store.sqlite"
    assert stat.S_IMODE(os.stat(store_file).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(cfg.data_dir / "node.key").st_mode) == 0o600


def test_the_agents_own_rows_reach_the_sender_histories_and_survive_a_restart():
    """What the node's own agent adds is the one sender its quality references trust
    (fai_core.deltasoup_history.record_own): recorded at add, kept in the history file."""

    async def main():
        async with trio.open_nursery() as n:
            node = await start(n, config("own-rows"))
            texts = [f"own lesson number {i} about retries" for i in range(9)]
            items = [{"text": t, "domain": "coding", "quality": 0.6} for t in texts]
            await node.add_experiences(items)
            history = node.soup.history
            await trio.to_thread.run_sync(history.save)
            assert history.own("coding").rows == 9
            assert history.own("coding").q_sum == pytest.approx(5.4)
            n.cancel_scope.cancel()
        again = SenderHistory(history.dim, history.path)
        assert again.own("coding").rows == 9 and again.same_as(history)

    trio.run(main)


def test_recall_withholds_rows_whose_sources_the_histories_refuse():
    """The node's recall asks its DeltaSoup histories (fai_net/node/resources.py): once a
    peer stands refused in a domain, the rows only it sent there are not offered."""

    async def main():
        async with trio.open_nursery() as n:
            node = await start(n, config("withhold"))
            peer = NodeKey(bytes([7]) * 32).public_key
            text = "pin the base image digest in every deploy"
            vec = node.embedder.embed([text])[0]
            row = Experience.create(text, vec, 0.6, "devops", peer, now_ms())
            await trio.to_thread.run_sync(node.library.merge, [row], peer)
            node.outcomes.sighted([(row.id, peer)])
            query = RecallQuery(text, "devops", 5, 0.65)
            found = node.recaller.recall(query, ["devops"])
            assert [e["text"] for e in found["experiences"]] == [text]
            history = node.soup.history
            refused = dataclasses.replace(SenderSummary.empty(history.dim), refused=True)
            verdict = HistoryVerdict(updates={"devops": {peer: refused}})
            history.apply(verdict, node.soup.config)
            found = node.recaller.recall(query, ["devops"])
            assert found["experiences"] == [] and found["withheld"] == 1
            n.cancel_scope.cancel()

    trio.run(main)
