"""Issue 20, nodes that cannot be dialled: py-libp2p 0.8.1's own circuit relay v2 carries a
connection to a host with no listen address (probe for the integration, not FAI code yet).

Three hosts built like FAI's (`fai_net.p2p.gossip.build_host`: Noise only, yamux, gossipsub)
on 127.0.0.1:
- R serves the HOP protocol (`CircuitV2Protocol(allow_hop=True)`) with `RelayLimits`;
- H has no listen address at all; it dials R and makes a reservation;
- A has no listen address either (so neither can dial the other: every byte between them
  goes through R); it dials `<R addr>/p2p/<R>/p2p-circuit/p2p/<H>` with
  `CircuitV2Transport.dial`, and the two exchange bytes on streams opened from each side,
  and gossipsub messages in both directions.

`host.connect` cannot use a circuit address (the swarm drops /p2p-circuit addresses before
dialling), so whatever dials a relayed peer must call the transport itself.
"""

from __future__ import annotations

import time

import multiaddr
import pytest
import trio
from libp2p.network.exceptions import SwarmException
from libp2p.peer.peerinfo import PeerInfo, info_from_p2p_addr
from libp2p.relay.circuit_v2 import CircuitV2Protocol, CircuitV2Transport
from libp2p.relay.circuit_v2.config import RelayConfig, RelayRole
from libp2p.relay.circuit_v2.protocol import PROTOCOL_ID as HOP_PROTOCOL
from libp2p.tools.anyio_service import background_trio_service

from fai_net.p2p.gossip import running
from tests.support.relay_hosts import (
    LIMITS,
    PING,
    TOPIC,
    answer,
    ask,
    fai_host,
    without_listen_address,
)


def _relayed(host, peer) -> list[str]:
    """The transport addresses of every connection `host` has to `peer`."""
    conns = host.get_network().connections.get(peer, [])
    return [str(a) for c in conns for a in c.get_transport_addresses()]


async def _next_from(subscription, prefix: bytes) -> bytes:
    while True:
        msg = await subscription.get()
        if msg.data.startswith(prefix):
            return msg.data


def test_a_hostwithout_listen_address_is_reached_through_a_relay():
    async def main():
        r_host, r_pubsub, r_router = fai_host()
        h_host, h_pubsub, h_router = fai_host()
        a_host, a_pubsub, a_router = fai_host()
        relay = CircuitV2Protocol(r_host, limits=LIMITS, allow_hop=True)
        # H: the STOP handler (accepts circuits) and a client transport (reserves).
        h_stop = CircuitV2Protocol(h_host, allow_hop=False)
        h_transport = CircuitV2Transport(
            h_host, h_stop, RelayConfig(roles=RelayRole.STOP | RelayRole.CLIENT)
        )
        # A only dials: without the CLIENT role its dial does not take a reservation too.
        a_transport = CircuitV2Transport(
            a_host, CircuitV2Protocol(a_host), RelayConfig(roles=RelayRole.STOP)
        )
        h_host.set_stream_handler(PING, answer)
        a_host.set_stream_handler(PING, answer)
        with trio.fail_after(60):
            async with (
                running(r_host, r_pubsub, r_router, ["/ip4/127.0.0.1/tcp/0"]),
                background_trio_service(relay),
                without_listen_address(h_host, h_pubsub, h_router),
                background_trio_service(h_stop),
                without_listen_address(a_host, a_pubsub, a_router),
                trio.open_nursery() as nursery,
            ):
                assert h_host.get_addrs() == [] and a_host.get_addrs() == []
                r_id, h_id = r_host.get_id(), h_host.get_id()
                r_addr = r_host.get_addrs()[0]  # /ip4/127.0.0.1/tcp/<port>/p2p/<R>

                # H reserves: connect to R, then RESERVE on a HOP stream. `reserve` also
                # starts the transport's refresher (in `nursery`).
                await h_host.connect(PeerInfo(r_id, [r_addr.decapsulate(f"/p2p/{r_id}")]))
                hop = await h_host.new_stream(r_id, [HOP_PROTOCOL])
                assert await h_transport.reserve(hop, r_id, nursery)
                await hop.close()
                granted = relay.resource_manager.get_reservation(h_id)
                assert granted is not None
                assert abs(granted.expires_at - (time.time() + LIMITS.reservation_ttl)) < 5

                circuit = multiaddr.Multiaddr(f"{r_addr}/p2p-circuit/p2p/{h_id}")
                with pytest.raises(SwarmException, match="relay-only"):
                    await a_host.connect(info_from_p2p_addr(circuit))

                await a_transport.dial(circuit)
                assert _relayed(a_host, h_id) == [f"/p2p/{r_id}/p2p-circuit/p2p/{h_id}"]
                # H's side is relayed too, but py-libp2p 0.8.1 labels it with H's own id
                # where R's belongs (circuit_v2/protocol.py:470 takes `self.host.get_id()`).
                assert _relayed(h_host, a_host.get_id()) == [
                    f"/p2p/{h_id}/p2p-circuit/p2p/{a_host.get_id()}"
                ]

                assert await ask(a_host, h_id, b"A asks H") == b"pong:A asks H"
                assert await ask(h_host, a_host.get_id(), b"H asks A") == b"pong:H asks A"

                # gossipsub over the relayed connection (R is not subscribed to the topic)
                h_sub = await h_pubsub.subscribe(TOPIC)
                a_sub = await a_pubsub.subscribe(TOPIC)
                with trio.fail_after(20):
                    while not (
                        h_id in a_router.mesh.get(TOPIC, ())
                        and a_host.get_id() in h_router.mesh.get(TOPIC, ())
                    ):
                        await trio.sleep(0.2)
                    await a_pubsub.publish(TOPIC, b"from A via R")
                    assert await _next_from(h_sub, b"from A") == b"from A via R"
                    await h_pubsub.publish(TOPIC, b"from H via R")
                    assert await _next_from(a_sub, b"from H") == b"from H via R"
                nursery.cancel_scope.cancel()

    trio.run(main)
