"""Nodes in registry mode against a real Anvil: membership, discovery and dropping.

Three operators run a node each (real processes on 127.0.0.1). They are given no seeds:
they find each other through the registry's live advertisements. An outsider node whose
operator never registered is refused as `not_member` and its batches go nowhere. When an
operator is slashed, the other nodes stop accepting its node and hang up on it.
"""

from __future__ import annotations

import time

from eth_account import Account

from fai_core import dagcbor
from fai_net.admission.store import BatchStore
from fai_net.devnet.anvil import free_port
from fai_net.node.identity import KEY_FILE, NodeIdentity
from fai_net.registry.client import SignedBatchHeader
from tests.support.fleet import Fleet, corpus_by_domain, wait_for

from .conftest import Env

TEXTS = corpus_by_domain()["coding"]


def _prepare(fleet: Fleet, env: Env, name: str, op, seed_byte: int, *, advertise: bool):
    """Give the node a known identity, an operator key file and (optionally) an ad."""
    data_dir = fleet.root / name
    data_dir.mkdir(parents=True)
    seed = bytes([seed_byte]) * 32
    key_file = data_dir / KEY_FILE
    key_file.write_bytes(seed)
    key_file.chmod(0o600)
    identity = NodeIdentity.from_seed(seed)
    port = free_port()
    addr = f"/ip4/127.0.0.1/tcp/{port}/p2p/{identity.peer_id}"
    if advertise:
        env.reg.register(op)
        env.reg.advertise(op, identity, [addr])
    op_file = fleet.root / f"{name}.operator"
    op_file.write_text(op.key.hex())
    op_file.chmod(0o600)
    membership = [
        "--rpc",
        env.w3.provider.endpoint_uri,
        "--registry",
        env.reg.address,
        "--operator-key-file",
        str(op_file),
    ]
    return identity, addr, port, membership


def _cids(node) -> set[str]:
    return set(node.call("batches")["cids"])


def _publish(node, texts: list[str]) -> set[str]:
    before = _cids(node)
    node.call("add", experiences=[{"text": t, "domain": "coding"} for t in texts])
    wait_for(lambda: node.call("status")["outbox"] == 0, 20, f"{node.name} to publish")
    return _cids(node) - before


def test_registry_membership_discovery_and_slashing(env: Env):
    fleet = Fleet(**{"membership-refresh": 1})
    ops = env.ops[:3]
    outsider_op = Account.from_key((0xFA1_0000 + 77).to_bytes(32, "big"))
    try:
        prepared = {
            name: _prepare(fleet, env, name, op, 40 + i, advertise=True)
            for i, (name, op) in enumerate(zip(("a", "b", "c"), ops, strict=True))
        }
        for name, (_identity, _addr, port, membership) in prepared.items():
            # b may relay raw bytes: the test makes it forward c's batch after the slash.
            extra = ["--allow-raw-publish"] if name == "b" else []
            fleet.spawn(
                name,
                ("coding",),
                seeds=[],
                membership=[*membership, *extra],
                listen=f"/ip4/127.0.0.1/tcp/{port}",
            )
        for name in prepared:
            fleet[name].wait_ready()
        a, b, c = fleet["a"], fleet["b"], fleet["c"]
        # No seeds were given: the registry's advertisements are the only way to meet.
        wait_for(lambda: all(n.call("status")["peers"] >= 2 for n in (a, b, c)), 40, "peers")
        time.sleep(2)
        assert a.call("status")["membership"] == "registry"

        sent = _publish(a, TEXTS[:10])
        for node in (b, c):
            wait_for(lambda node=node: sent <= _cids(node), 20, f"{node.name} got a's batch")
        assert not b.call("status")["rejections"]

        # An outsider: a correct node whose operator never registered.
        _, _, _, outsider_membership = _prepare(fleet, env, "x", outsider_op, 90, advertise=False)
        x = fleet.add("x", ("coding",), seeds=[a.addr], membership=outsider_membership)
        wait_for(lambda: x.call("status")["peers"] >= 1, 20, "outsider connected")
        time.sleep(2)
        refused = _publish(x, TEXTS[10:20])
        assert refused
        wait_for(lambda: a.call("status")["rejections"].get("not_member", 0) >= 1, 20, "refusal")
        time.sleep(1)
        for node in (a, b, c):
            assert not refused & _cids(node), f"{node.name} stored the outsider's batch"

        # Slash c's operator with two conflicting headers for its key: a and b drop c.
        c_identity = prepared["c"][0]
        headers = [
            env.reg.sign_batch_header(
                ops[2], c_identity.public_key, 7, bytes([i]) * 32, 1_700_000_000_000
            )
            for i in (1, 2)
        ]
        assert all(isinstance(h, SignedBatchHeader) for h in headers)
        env.reg.slash_equivocation(env.outsider, *headers)
        assert not env.reg.is_live(ops[2].address)

        def dropped(node) -> bool:
            peers = {p["node_id"]: p for p in node.call("peers")["peers"]}
            row = peers.get(str(c_identity.peer_id))
            return row is None or not row["connected"]

        for node in (a, b):
            wait_for(lambda node=node: dropped(node), 30, f"{node.name} to drop c")
        late = _publish(c, TEXTS[20:30])
        time.sleep(3)
        for node in (a, b):
            assert not late & _cids(node), f"{node.name} accepted a slashed node's batch"
        # Not only because c is disconnected: b, still a's peer, relays c's signed batch to
        # a, and a's gate refuses it because its sender's operator is no longer live.
        assert late, "c published nothing after the slash"
        late_cid = sorted(late)[0]
        store = BatchStore.open(c.data_dir / "batches")
        try:
            envelope = store.get(dagcbor.cid_parse(late_cid))
        finally:
            store.close()
        assert envelope is not None
        refused_before = a.call("status")["rejections"].get("not_member", 0)
        b.call("publish_raw", domain="coding", envelope_hex=envelope.hex())
        wait_for(
            lambda: a.call("status")["rejections"].get("not_member", 0) > refused_before,
            20,
            "a to refuse the slashed node's batch as not_member",
        )
        assert late_cid not in _cids(a)
        # a and b still talk to each other.
        more = _publish(b, TEXTS[30:40])
        wait_for(lambda: more <= _cids(a), 20, "a got b's batch after the slash")
    finally:
        fleet.stop_all()
        for node in fleet.nodes.values():
            assert "Traceback" not in node.tail(400), node.tail(400)
