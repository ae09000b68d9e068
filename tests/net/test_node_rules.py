"""Documented node rules that used to have no test able to fail: real nodes and libp2p hosts
in one trio process, on 127.0.0.1 (the pattern of tests/net/test_node_inprocess.py).

Each test names the rule it guards and where the rule is written down (docs/node.md unless
said otherwise). Each was checked to fail with the rule's code broken as its docstring says.
"""

from __future__ import annotations

import json
import os
import stat
import tempfile
import time
from contextlib import AsyncExitStack
from pathlib import Path

import pytest
import trio
from libp2p import new_host
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.security.insecure.transport import PLAINTEXT_PROTOCOL_ID, InsecureTransport

import fai_net.node.broadcast as broadcast_module
import fai_net.node.repair_sync as repair_sync_module
from fai_core.clock import now_ms
from fai_core.dagcbor import cid_text
from fai_core.experience import Experience
from fai_core.identity import NodeKey
from fai_core.wire import decode_envelope, encode_batch
from fai_net.admission.store import BatchStore
from fai_net.node.config import NodeConfig
from fai_net.node.identity import IdentityError, NodeIdentity, load_or_create
from fai_net.node.node import Node
from fai_net.p2p.gossip import GossipSettings, build_host, parse_multiaddrs, running
from fai_net.p2p.topics import topic_for
from tests.support import inprocess
from tests.support.inprocess import addr_of, connect, start

ROOT = Path(tempfile.mkdtemp(prefix="fai-rules-", dir="/tmp"))


def config(name: str, **overrides) -> NodeConfig:
    return inprocess.config(ROOT, name, **overrides)


async def publish(node: Node, texts: list[str]) -> str:
    """Add `texts` to the node's coding outbox and publish them now; the batch's CID."""
    await node.add_experiences([{"text": t, "domain": "coding", "quality": 0.7} for t in texts])
    result = await node.broadcast("coding")
    assert result["experiences_sent"] == len(texts), result
    return result["batch_id"]


def stored(node: Node) -> dict[str, bytes]:
    """The node's stored batches: CID text -> CID."""
    return {cid_text(c): c for c in node.store.cids()}


def seq_of(node: Node, cid: str) -> int:
    """The seq of the stored batch `cid` (a CID in text form)."""
    envelope = node.store.get(stored(node)[cid])
    assert envelope is not None
    return decode_envelope(envelope).batch.seq


def evidence_files(node_or_dir) -> list[Path]:
    data_dir = node_or_dir if isinstance(node_or_dir, Path) else node_or_dir.config.data_dir
    evidence = data_dir / "evidence"
    return sorted(evidence.iterdir()) if evidence.exists() else []


# -- 3. stored-but-unmerged batches are queued again at restart -----------------------------


def signed_batch(node: Node, texts: list[str], *, seed: int = 7, seq: int = 1):
    """A batch of `texts` signed by a key that is not `node`'s, valid for `node`'s fleet."""
    key = NodeKey(bytes([seed]) * 32)
    vectors = node.embedder.embed(texts)
    created = now_ms()
    exps = [
        Experience.create(t, v, 0.7, "coding", key.public_key, created)
        for t, v in zip(texts, vectors, strict=True)
    ]
    return encode_batch(
        exps,
        key=key,
        seq=seq,
        timestamp_ms=created,
        model=node.embedder.model_id,
        baseline=vectors[0] * 0,
    )


class _Msg:
    """The two fields of a gossipsub message the node's validator reads."""

    def __init__(self, data: bytes, topic: str) -> None:
        self.data, self.topicIDs = data, [topic]


def test_unmerged_batches_are_merged_after_a_restart():
    """Batches stored but not merged when the node stops are queued again at the next start
    (docs/node.md, "The gate", Merging; `MergeRounds.requeue_unmerged`, called by `Node.run`).

    A node with a one-hour round interval accepts a batch from gossip (its validator, as
    gossipsub calls it) and stops before any round runs; restarted with a short interval, it
    merges the batch. Breaks if `Node.run` stops calling `requeue_unmerged`."""
    texts = ["close files in a finally block", "pin the toolchain in ci"]
    cfg = config("requeue", round_interval_s=3600)
    other = NodeIdentity.from_seed(bytes([7]) * 32)

    async def first_run():
        async with trio.open_nursery() as n:
            node = await start(n, cfg)
            signed = signed_batch(node, texts)
            assert node._validator(other.peer_id, _Msg(signed.envelope, topic_for("coding", 1)))
            assert node.store.has(signed.cid) and len(node.store.unmerged()) == 1
            assert await trio.to_thread.run_sync(node.library.count) == 0
            n.cancel_scope.cancel()

    async def second_run():
        async with trio.open_nursery() as n:
            node = await start(n, config("requeue", round_interval_s=0.2))
            with trio.move_on_after(10):
                while node.store.unmerged():
                    await trio.sleep(0.1)
            unmerged = len(node.store.unmerged())
            merged = await trio.to_thread.run_sync(node.library.count)
            n.cancel_scope.cancel()
        assert unmerged == 0, "the batch left unmerged at the last stop was never merged"
        assert merged == 2

    trio.run(first_run)
    trio.run(second_run)


# -- 1. a node never reuses its own seqs after losing its store ------------------------------


def test_own_batches_back_from_a_peer_raise_the_seq_counter(monkeypatch):
    """The node's own batches coming back from a peer after it lost its store raise its seq
    counter above them, so it never signs at or below a seq it used (docs/node.md, Repair,
    "Own batches"; fai_net/node/seq_clock.py: what covers a clock that stepped back;
    `BatchStore.ensure_seq_above`, called from `Receiver.after_admit`).

    The time floor alone covers a store loss only while the clock does not step back, so
    tests/net/test_seq_after_state_loss.py passes with `ensure_seq_above` a no-op. Here a
    publishes with its clock 2 s fast, loses its batch store (the key survives), the clock
    is corrected, and a repairs from b (which kept the batch) before publishing again: the
    new batch must carry a higher seq, and b must write no evidence. Breaks with
    `ensure_seq_above` a no-op: a then signs at the (corrected) time floor, below its old seq.
    """
    ahead_ms = 2_000
    real_now = broadcast_module.now_ms

    async def main():
        async with trio.open_nursery() as n:
            b = await start(n, config("seq-b"))
            a_cfg = config("seq-a")
            async with trio.open_nursery() as a_run:
                a = await start(a_run, a_cfg)
                await connect(a, b)
                monkeypatch.setattr(broadcast_module, "now_ms", lambda: real_now() + ahead_ms)
                first = await publish(a, ["retry with jittered back-off", "log the request id"])
                monkeypatch.setattr(broadcast_module, "now_ms", real_now)
                first_seq = seq_of(a, first)
                await b.sync_with(a.peer_id)  # (unless gossip brought it already)
                assert first in stored(b)
                a_run.cancel_scope.cancel()
            # a loses its batch store; node.key (its identity) survives.
            key_before = (a_cfg.data_dir / "node.key").read_bytes()
            for path in (a_cfg.data_dir / "batches").iterdir():
                path.unlink()
            async with trio.open_nursery() as a_run:
                a = await start(a_run, a_cfg)
                assert (a_cfg.data_dir / "node.key").read_bytes() == key_before
                assert a.store.next_seq() <= first_seq  # the counter was lost with the store
                await connect(a, b)
                await a.sync_with(b.peer_id)  # a's own batch comes back
                assert first in stored(a)
                counter_after_repair = a.store.next_seq()
                # The clock is behind a's last seq: a holds its outbox until it catches up.
                await a.add_experiences(
                    [{"text": t, "domain": "coding"} for t in ("second pattern", "third one")]
                )
                second = None
                with trio.fail_after(10):
                    while second is None:
                        second = (await a.broadcast("coding"))["batch_id"]
                        await trio.sleep(0.2)
                second_seq = seq_of(a, second)
                # The new batch reaches b as gossip would deliver it (b's validator).
                envelope = a.store.get(stored(a)[second])
                topic = topic_for("coding", a.config.wire_version)  # the version a publishes
                delivered = b._validator(a.peer_id, _Msg(envelope, topic))
                a_run.cancel_scope.cancel()
            assert second_seq > first_seq, "a signed below a seq it had used before"
            assert counter_after_repair > first_seq
            assert delivered, f"b refused a's new batch: {b.metrics.rejections()}"
            assert seq_of(b, second) == second_seq and seq_of(b, first) == first_seq
            assert "equivocation" not in b.metrics.rejections()
            assert evidence_files(b) == []
            n.cancel_scope.cancel()

    trio.run(main)


def test_own_batches_in_the_store_raise_the_seq_counter_at_start(monkeypatch):
    """At start the node raises its seq counter above the newest of its own batches in its
    store (docs/node.md, Repair, "Own batches"; `BatchStore.ensure_seq_above`, called from
    fai_net/node/resources.py `_open_local`): the store may hold one whose counter update
    was lost, as when the node crashed between storing its own batch fetched back by repair
    and raising the counter. Here a's batch (signed with its clock 2 s fast) is all that its
    new, empty store holds at the restart. Breaks with `ensure_seq_above` a no-op."""
    real_now = broadcast_module.now_ms
    cfg = config("seq-start")

    async def first_run():
        async with trio.open_nursery() as n:
            a = await start(n, cfg)
            monkeypatch.setattr(broadcast_module, "now_ms", lambda: real_now() + 2_000)
            cid = await publish(a, ["free the lock on every path", "bound every queue"])
            monkeypatch.setattr(broadcast_module, "now_ms", real_now)
            envelope = a.store.get(stored(a)[cid])
            n.cancel_scope.cancel()
        return envelope

    async def second_run():
        async with trio.open_nursery() as n:
            a = await start(n, cfg)
            counter = a.store.next_seq()
            n.cancel_scope.cancel()
        return counter

    envelope = trio.run(first_run)
    first_seq = decode_envelope(envelope).batch.seq
    for path in (cfg.data_dir / "batches").iterdir():
        path.unlink()
    with BatchStore.open(cfg.data_dir / "batches") as store:
        store.put(decode_envelope(envelope), received_ms=now_ms(), origin="repair")
        assert store.next_seq() <= first_seq
    assert trio.run(second_run) > first_seq


# -- 2. the repair cursor stays behind temporary refusals -----------------------------------


def test_repair_fetches_again_a_batch_refused_for_a_temporary_reason(monkeypatch):
    """A repair cursor does not move past an item refused for a reason that may pass later
    (docs/node.md, Repair, Cursors; `TEMPORARY_REFUSALS` in fai_net/admission/gate.py, used
    by `RepairSync._fetch`).

    b's inventory holds a normal batch and then one stamped 400 s in the future (b's clock
    ran fast when it signed it). a's first pass accepts the first and refuses the second
    (`future`); 200 s later (a's repair clock moved on) the second is 200 s ahead, within
    the 300 s allowance, and the next pass must fetch it again and accept it. Breaks with
    `TEMPORARY_REFUSALS` emptied: the cursor moves past the refused batch for good."""
    real_now = now_ms

    async def main():
        async with trio.open_nursery() as n:
            a = await start(n, config("cur-a"))
            b = await start(n, config("cur-b"))
            # Published before a connects: they reach a by repair only.
            ok = await publish(b, ["validate inputs at the boundary", "prefer small commits"])
            monkeypatch.setattr(broadcast_module, "now_ms", lambda: real_now() + 400_000)
            ahead = await publish(b, ["write the failing test first", "name things plainly"])
            monkeypatch.setattr(broadcast_module, "now_ms", real_now)
            await connect(a, b)
            # (a also starts a pass of its own when b's subscription arrives.)
            await a.sync_with(b.peer_id)
            assert ok in stored(a) and ahead not in stored(a)
            assert a.metrics.rejections().get("future", 0) >= 1

            monkeypatch.setattr(repair_sync_module, "now_ms", lambda: real_now() + 200_000)
            await a.sync_with(b.peer_id)
            assert ahead in stored(a), "the batch refused as `future` was never fetched again"
            # Nothing more to fetch: the cursor has now moved past both.
            assert await a.sync_with(b.peer_id) == 0
            n.cancel_scope.cancel()

    trio.run(main)


# -- 4. node.key is 0600 and written once; the data directory is 0700 -----------------------


def test_the_key_is_private_and_never_rewritten():
    """`node.key` is created with mode 0600 and never rewritten; the data directory is 0700
    (docs/node.md, "Identity and transport" and the hostile-peers table; fai_net/node/
    identity.py `load_or_create`, fai_net/node/resources.py `_private_dir`).

    Adds to `test_the_data_directory_is_the_owners_alone` (tests/net/test_node_inprocess.py):
    here the process umask is 0, so the modes come from the code, not from `run_node`'s
    umask; a restart keeps the very same key file (bytes, inode, mtime); and a key others
    can read is refused. Breaks if the key is created with a wider mode or rewritten at
    start, or if a new data directory is created wider than 0700 (an existing 0755 one made
    private is the other test's case)."""
    cfg = config("keymode")

    async def run_once():
        async with trio.open_nursery() as n:
            node = await start(n, cfg)
            peer_id = node.peer_id
            n.cancel_scope.cancel()
        return peer_id

    old_umask = os.umask(0)
    try:
        first_id = trio.run(run_once)
    finally:
        os.umask(old_umask)
    key_file = cfg.data_dir / "node.key"
    assert stat.S_IMODE(os.stat(cfg.data_dir).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600
    before = key_file.stat()
    seed = key_file.read_bytes()
    assert len(seed) == 32

    time.sleep(0.05)  # a rewrite would show in the mtime
    assert trio.run(run_once) == first_id
    after = key_file.stat()
    assert key_file.read_bytes() == seed
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert stat.S_IMODE(after.st_mode) == 0o600

    os.chmod(key_file, 0o640)
    try:
        with pytest.raises(IdentityError, match="readable by others"):
            load_or_create(cfg.data_dir)
    finally:
        os.chmod(key_file, 0o600)
    assert key_file.read_bytes() == seed


# -- 5. mDNS is off by default ---------------------------------------------------------------


MDNS_PORT = 5353


def udp_ports_of_this_process() -> set[int]:
    """Local ports of the UDP sockets this process holds (from /proc)."""
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    ports = set()
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[9] in inodes:
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def test_mdns_is_off_by_default():
    """mDNS is off unless asked for, because it multicasts beyond loopback (docs/node.md,
    Discovery; `NodeConfig.mdns`, `GossipSettings.mdns`, `fai node run --mdns`).

    A node started with the default config has no mDNS discovery object on its host and
    holds no UDP socket on the mDNS port; the same node with `mdns=True` has one (so the
    check can see mDNS when it is on). Breaks if any of the defaults turns mDNS on."""
    from fai_net.cli.entry import build_parser

    assert NodeConfig(data_dir=ROOT / "x", domains=("coding",), open_membership=True).mdns is False
    assert GossipSettings().mdns is False
    args = build_parser().parse_args(["node", "run", "--data-dir", str(ROOT / "x"), "--open"])
    assert args.mdns is False

    seen = {}

    async def main():
        async with trio.open_nursery() as n:
            node = await start(n, config("mdns-default"))
            await trio.sleep(0.3)
            seen["default"] = (node.host.mDNS, udp_ports_of_this_process())
            n.cancel_scope.cancel()
        async with trio.open_nursery() as n:
            node = await start(n, config("mdns-on", mdns=True))
            await trio.sleep(0.3)
            seen["on"] = (node.host.mDNS, udp_ports_of_this_process())
            n.cancel_scope.cancel()

    trio.run(main)
    discovery, ports = seen["default"]
    assert discovery is None
    assert MDNS_PORT not in ports
    # The check can see mDNS when it is on: a discovery object and a socket on 5353.
    discovery, ports = seen["on"]
    assert discovery is not None and MDNS_PORT in ports


# -- 7. --event-log FILE ---------------------------------------------------------------------


def read_events(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_the_event_log_records_publishing_accepted_and_merged():
    """`--event-log FILE` appends one JSON line per batch event: `publishing`, `accepted`,
    `merged` (docs/node.md, "Control socket, agent tools, metrics"; fai_net/node/events.py).

    a publishes a batch, b receives it (by repair, or py-libp2p's replay to a new peer) and
    merges it: a's log has `publishing` with
    the batch's CID, domain and size; b's has `accepted` (CID, origin) and then `merged`
    naming the CID; every line carries `ev` and a unix time `t`. Breaks if an event is no
    longer written or loses one of these fields."""
    a_log, b_log = ROOT / "a-events.jsonl", ROOT / "b-events.jsonl"
    texts = ["cache the dependency downloads", "run the linter before the tests"]

    async def main():
        async with trio.open_nursery() as n:
            a = await start(n, config("ev-a", event_log=a_log))
            b = await start(n, config("ev-b", event_log=b_log))
            cid = await publish(a, texts)  # before connecting: b gets it by repair
            await connect(b, a)
            await b.sync_with(a.peer_id)
            with trio.fail_after(10):
                while cid not in stored(b) or b.store.unmerged():
                    await trio.sleep(0.1)
            n.cancel_scope.cancel()
        return cid

    started = time.time()
    cid = trio.run(main)
    a_events, b_events = read_events(a_log), read_events(b_log)
    for event in a_events + b_events:
        assert started - 1 <= event["t"] <= time.time() + 1
    publishing = [e for e in a_events if e["ev"] == "publishing"]
    assert publishing == [
        {
            "cid": cid,
            "domain": "coding",
            "n": len(texts),
            "t": publishing[0]["t"],
            "ev": "publishing",
        }
    ]
    accepted = [e for e in b_events if e["ev"] == "accepted"]
    assert [e["cid"] for e in accepted] == [cid]
    assert accepted[0]["origin"] in ("gossip", "repair")  # py-libp2p may replay it on connect
    merged = [i for i, e in enumerate(b_events) if e["ev"] == "merged" and cid in e["cids"]]
    assert len(merged) == 1
    assert b_events.index(accepted[0]) < merged[0]
    assert not [e for e in a_events if e["ev"] in ("accepted", "merged") and cid in str(e)]


# -- 8. Noise is the only transport security ------------------------------------------------


def test_a_peer_offering_only_plaintext_cannot_connect():
    """Noise is the only security transport offered; py-libp2p's default would also accept
    plaintext (docs/node.md, "Identity and transport"; fai_net/p2p/gossip.py `build_host`,
    its `sec_opt`).

    A host offering only `/plaintext/2.0.0` fails to connect to a node and the node lists no
    such peer, while a host built like the node's (Noise) connects. Breaks if `build_host`
    falls back to py-libp2p's default security options."""
    result = {}

    async def main():
        async with trio.open_nursery() as n:
            node = await start(n, config("noise-only"))
            key_pair = create_new_key_pair(bytes([5]) * 32)
            plain = new_host(
                key_pair=key_pair,
                sec_opt={PLAINTEXT_PROTOCOL_ID: InsecureTransport(key_pair)},
                muxer_preference="YAMUX",
            )
            async with plain.run(listen_addrs=parse_multiaddrs(["/ip4/127.0.0.1/tcp/0"])):
                with trio.move_on_after(10):
                    try:
                        await plain.connect(info_from_p2p_addr(addr_of(node)))
                        result["plaintext"] = "connected"
                    except Exception as exc:  # the upgrade fails: no common security
                        result["plaintext"] = exc
                await trio.sleep(0.3)
                result["listed"] = plain.get_id() in node.connected_peers()
            identity = NodeIdentity.from_seed(bytes([6]) * 32)
            host, pubsub, router = build_host(identity.key_pair, GossipSettings())
            async with running(host, pubsub, router, ["/ip4/127.0.0.1/tcp/0"]):
                with trio.fail_after(10):
                    await host.connect(info_from_p2p_addr(addr_of(node)))
                    while host.get_id() not in node.connected_peers():
                        await trio.sleep(0.05)
            n.cancel_scope.cancel()

    trio.run(main)
    assert isinstance(result.get("plaintext"), Exception), result
    assert result["listed"] is False


# -- 9. discovery does not dial low-reputation peers ----------------------------------------


def test_discovery_skips_peers_below_the_reputation_floor():
    """Peers below the reputation floor are not dialled while the node has at least 4
    connections (docs/node.md, Discovery, "Deprioritised peers"; fai_net/node/discovery.py
    `Discovery.discover`).

    A node with 4 connections is given two seeds: one whose reputation is below the floor
    (0.3) and one in good standing. Discovery dials the second, not the first. Breaks if
    discovery dials regardless of reputation."""
    result = {}

    async def main():
        async with trio.open_nursery() as n, AsyncExitStack() as hosts_running:
            node = await start(n, config("disc"))
            hosts = []
            for seed in range(20, 26):
                identity = NodeIdentity.from_seed(bytes([seed]) * 32)
                host, pubsub, router = build_host(identity.key_pair, GossipSettings())
                listen = ["/ip4/127.0.0.1/tcp/0"]
                await hosts_running.enter_async_context(running(host, pubsub, router, listen))
                hosts.append((identity, host))
            fillers, (low, low_host), (good, good_host) = hosts[:4], hosts[4], hosts[5]
            with trio.fail_after(10):
                for _, host in fillers:
                    await host.connect(info_from_p2p_addr(addr_of(node)))
                while len(node.connected_peers()) < 4:
                    await trio.sleep(0.05)
            for _ in range(12):  # twelve failures in a row: 0.9**12 = 0.28 < 0.3
                node.reputation.record(low.public_key, False)
            assert node.reputation.deprioritised(low.public_key)
            assert not node.reputation.deprioritised(good.public_key)
            seeds = [host_addr(h) for h in (low_host, good_host)]
            await node.parts.discovery.discover(seeds)
            await trio.sleep(0.3)
            connected = set(node.connected_peers())
            result["good"] = good_host.get_id() in connected
            result["low"] = low_host.get_id() in connected
            n.cancel_scope.cancel()

    trio.run(main)
    assert result == {"good": True, "low": False}


def host_addr(host):
    """A bare host's first listen address, with its /p2p/ peer id."""
    text = str(host.get_addrs()[0]).split("/p2p/")[0]
    return parse_multiaddrs([f"{text}/p2p/{host.get_id()}"])[0]
