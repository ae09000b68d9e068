"""Issue 20, nodes no peer can dial: FAI nodes reach each other through a relay node.

Three in-process nodes on 127.0.0.1 (tests/support/inprocess.py):
- R, `relay_server=True`, subscribed to "writing" only: it relays bytes but does not carry
  the "coding" topic, so whatever H and A exchange on "coding" went through the circuit,
  not through R's gossip;
- H, `relays=(R,)`: it reserves a slot at R and announces only `<R>/p2p-circuit`;
- A, seeded with R and with H's circuit address: its discovery dials H through R.

What the issue names: the relayed node publishes and receives, takes part in repair, and
catches up after the relay restarts.
"""

from __future__ import annotations

import json

import pytest
import trio

from fai_net.devnet.anvil import free_port
from fai_net.p2p.addresses import is_circuit
from tests.support.inprocess import config, start
from tests.support.v2node import until

TEXTS = [
    "retry the flaky integration test with a fixed random seed before bisecting the change",
    "pin the compiler version in the lockfile so that builds on every machine agree",
    "read the stack trace from the bottom frame up to find the first line of our code",
    "run the formatter before the linter so that its fixes do not trigger new warnings",
]


async def _cids(node) -> set[str]:
    return set((await node.parts.actions.handle("batches", {"domain": "coding"}))["cids"])


async def _publish(node, text: str) -> str:
    await node.add_experiences([{"text": text, "domain": "coding"}])
    return (await node.broadcast("coding"))["batch_id"]


def _relayed_to(node, peer) -> bool:
    conns = node.host.get_network().connections.get(peer) or []
    return any(is_circuit(a) for c in conns for a in c.get_transport_addresses())


def _relay_config(tmp_path, port: int):
    return config(
        tmp_path,
        "r",
        domains=("writing",),
        listen=(f"/ip4/127.0.0.1/tcp/{port}",),
        relay_server=True,
        discovery_interval_s=0.5,
    )


def test_a_node_reached_only_through_a_relay_publishes_receives_and_repairs(tmp_path):
    async def main():
        port = free_port()
        async with trio.open_nursery() as n:
            r = await start(n, _relay_config(tmp_path, port))
            r_addr = f"/ip4/127.0.0.1/tcp/{port}/p2p/{r.peer_id}"
            h = await start(n, config(tmp_path, "h", relays=(r_addr,), discovery_interval_s=0.5))
            circuit = f"{r_addr}/p2p-circuit/p2p/{h.peer_id}"
            ready = json.loads((tmp_path / "h" / "node.json").read_text())
            assert ready["addrs"] == [circuit], "a relayed node announces its circuit only"

            async def reserved():
                return (await h.status())["relay"]["reserved_at"] == [str(r.peer_id)]

            await until(reserved, 20)
            early = await _publish(h, TEXTS[0])  # before A exists: A must repair it

            a = await start(
                n,
                config(
                    tmp_path,
                    "a",
                    seeds=(r_addr, circuit),
                    discovery_interval_s=0.5,
                    repair_interval_s=1.0,
                ),
            )
            await until(lambda: _async(lambda: _relayed_to(a, h.peer_id)), 20)
            assert _relayed_to(h, a.peer_id)
            await until(lambda: _has(a, early), 20)  # repair over the circuit

            await trio.sleep(3)  # gossipsub heartbeats (1 s) build the coding mesh A-H
            from_h = await _publish(h, TEXTS[1])
            from_a = await _publish(a, TEXTS[2])
            await until(lambda: _has(a, from_h), 20)
            await until(lambda: _has(h, from_a), 20)
            assert "coding" not in r.domains  # so R's gossip carried none of them

            served = (await r.status())["relay"]["serving"]
            assert served["reservations"] == 1 and served["circuits_opened"] >= 1, served
            assert served["refusals"] == {}
            n.cancel_scope.cancel()

    trio.run(main)


async def _async(fn):
    return fn()


async def _has(node, cid: str) -> bool:
    return cid in await _cids(node)


def test_the_relayed_node_catches_up_after_the_relay_restarts(tmp_path):
    """R stops (every circuit with it) while A publishes; R comes back on the same address:
    H reserves again, A dials H again, and repair brings H what it missed."""

    async def main():
        port = free_port()
        async with trio.open_nursery() as n:
            r = await start(n, _relay_config(tmp_path, port))
            r_addr = f"/ip4/127.0.0.1/tcp/{port}/p2p/{r.peer_id}"
            fast = dict(discovery_interval_s=0.5, repair_interval_s=1.0)
            h = await start(n, config(tmp_path, "h", relays=(r_addr,), **fast))
            circuit = f"{r_addr}/p2p-circuit/p2p/{h.peer_id}"
            a = await start(n, config(tmp_path, "a", seeds=(r_addr, circuit), **fast))
            await until(lambda: _async(lambda: _relayed_to(a, h.peer_id)), 30)

            r.stop()
            await until(lambda: _async(lambda: not _relayed_to(a, h.peer_id)), 20)
            missed = await _publish(a, TEXTS[3])
            assert not await _has(h, missed)

            r = await start(n, _relay_config(tmp_path, port))
            await until(lambda: _async(lambda: _relayed_to(a, h.peer_id)), 60)
            await until(lambda: _has(h, missed), 30)
            status = await h.status()
            assert status["relay"]["reserved_at"] == [str(r.peer_id)]
            assert status["evidence"] == 0
            n.cancel_scope.cancel()

    trio.run(main)


RELAY_ID = "12D3KooWDygQkCrugUybm4MQ845ZRVpkXSdbPnuho7hrJx99GNCH"


def test_relay_and_relayed_announce_addresses_are_checked(tmp_path):
    from fai_net.node.config import NodeConfig

    def make(**changes):
        return NodeConfig(tmp_path / "n", ("coding",), open_membership=True, **changes)

    good = f"/ip4/10.91.1.5/tcp/4001/p2p/{RELAY_ID}"
    assert make(relays=(good,)).relays == (good,)
    assert make(announce=(f"{good}/p2p-circuit",)).announce == (f"{good}/p2p-circuit",)
    bad = [
        ("/ip4/10.91.1.5/tcp/4001", "needs /p2p/<relay peer id>"),
        (f"/ip4/0.0.0.0/tcp/4001/p2p/{RELAY_ID}", "must be dialable"),
        (f"/ip4/10.91.1.5/tcp/0/p2p/{RELAY_ID}", "must be dialable"),
        ("/ip4/10.91.1.5/tcp/4001/p2p/0OIl", "needs /p2p/<relay peer id>"),
        (f"/dns4/relay.example/tcp/4001/p2p/{RELAY_ID}", "relay address must be"),
    ]
    for addr, match in bad:
        with pytest.raises(ValueError, match=match):
            make(relays=(addr,))
    with pytest.raises(ValueError, match="announce address needs /p2p/"):
        make(announce=("/ip4/10.91.1.5/tcp/4001/p2p-circuit",))
    with pytest.raises(ValueError, match="must be positive"):
        make(relay_server=True, relay_circuits=0)


def test_discovery_dials_a_relayed_advertisement_through_its_relay():
    """An advertisement `<relay>/p2p/<relay id>/p2p-circuit` (what a relayed node's operator
    posts, from its node.json) becomes `<...>/p2p-circuit/p2p/<peer>`, the address the
    circuit transport dials; a direct one gains its /p2p/ as before."""
    from types import SimpleNamespace

    from libp2p.crypto.ed25519 import create_new_key_pair

    from fai_net.node.discovery import Discovery
    from fai_net.peer_ids import peer_id_of

    keys = [create_new_key_pair().public_key.to_bytes() for _ in range(3)]
    me, relayed, direct = keys
    relay_part = f"/ip4/10.91.1.12/tcp/4001/p2p/{RELAY_ID}"
    ads = {
        me: ("/ip4/10.91.1.10/tcp/4001",),
        relayed: (f"{relay_part}/p2p-circuit",),
        direct: ("/ip4/10.91.2.10/tcp/4001",),
    }
    res = SimpleNamespace(
        membership=SimpleNamespace(live_addresses=lambda: ads),
        identity=SimpleNamespace(public_key=me),
    )
    targets = [str(t) for t in Discovery(res, state=None)._targets([])]
    assert targets == [
        f"{relay_part}/p2p-circuit/p2p/{peer_id_of(relayed)}",
        f"/ip4/10.91.2.10/tcp/4001/p2p/{peer_id_of(direct)}",
    ]
    assert [is_circuit(t) for t in targets] == [True, False]
