"""What a hostile or careless peer does to a FAI relay (fai_net/p2p/relay.py), on real
py-libp2p hosts on 127.0.0.1 built as a node builds them.

- A peer the membership does not admit can neither reserve nor open a circuit.
- A RESERVE naming another peer's id reserves for the sender, never for the named peer.
- Two peers reach one relayed node; when one leaves, the other's connection keeps working
  (py-libp2p files circuits by destination, so one circuit's end reset the other).
- Reservations of peers that left do not keep the relay full; connected ones do, bounded.
"""

from __future__ import annotations

from contextlib import AsyncExitStack

import multiaddr
import pytest
import trio
from libp2p.peer.peerinfo import PeerInfo
from libp2p.relay.circuit_v2.pb.circuit_pb2 import HopMessage
from libp2p.relay.circuit_v2.pb.circuit_pb2 import PeerId as CircuitPeerId
from libp2p.relay.circuit_v2.protocol import PROTOCOL_ID as HOP_PROTOCOL
from libp2p.relay.circuit_v2.utils import read_delimited_msg, write_delimited_msg
from libp2p.tools.anyio_service import background_trio_service

from fai_net.p2p.gossip import running
from fai_net.p2p.relay import FleetRelayProtocol, RelayClient, RelayServerLimits
from tests.support.relay_hosts import PING, answer, ask, fai_host, without_listen_address

LOOPBACK = ["/ip4/127.0.0.1/tcp/0"]


class Lab:
    """A relay on loopback and peers no one can dial; `peer()` starts one more."""

    def __init__(self, stack: AsyncExitStack, relay_host, relay: FleetRelayProtocol) -> None:
        self.stack, self.relay_host, self.relay = stack, relay_host, relay

    @property
    def relay_addr(self) -> str:
        return f"{self.relay_host.get_addrs()[0]}"

    async def peer(self, *, reserve: bool = False):
        """A host with no listen address: whatever reaches it went through the relay."""
        host, pubsub, router = fai_host()
        client = RelayClient(host, [self.relay_addr] if reserve else [])
        host.set_stream_handler(PING, answer)
        await self.stack.enter_async_context(without_listen_address(host, pubsub, router))
        if reserve:
            await self.stack.enter_async_context(background_trio_service(client.stop))
        return host, client

    async def reserve(self, client: RelayClient, nursery) -> bool:
        """One pass of the client's keeper: connect to the relay and reserve."""
        await client._keep(client.relays[0], nursery)
        return client.reserved() == [str(self.relay_host.get_id())]

    def circuit_to(self, host) -> multiaddr.Multiaddr:
        return multiaddr.Multiaddr(f"{self.relay_addr}/p2p-circuit/p2p/{host.get_id()}")


async def _lab(stack: AsyncExitStack, limits=None, admits=lambda p: True):
    limits = limits or RelayServerLimits()
    host, pubsub, router = fai_host()
    relay = FleetRelayProtocol(host, limits, admits)
    await stack.enter_async_context(running(host, pubsub, router, LOOPBACK))
    await stack.enter_async_context(background_trio_service(relay))
    return Lab(stack, host, relay)


def _run(scenario) -> None:
    async def main():
        with trio.fail_after(60):
            async with trio.open_nursery() as nursery, AsyncExitStack() as stack:
                await scenario(stack, nursery)
                nursery.cancel_scope.cancel()

    trio.run(main)


def test_a_peer_the_membership_does_not_admit_can_neither_reserve_nor_connect():
    async def scenario(stack, nursery):
        refused: set = set()
        lab = await _lab(stack, admits=lambda p: p not in refused)
        hidden, hidden_client = await lab.peer(reserve=True)
        assert await lab.reserve(hidden_client, nursery)
        stranger, stranger_client = await lab.peer(reserve=True)
        refused.add(stranger.get_id())

        assert not await lab.reserve(stranger_client, nursery)
        assert lab.relay.resource_manager.get_reservation(stranger.get_id()) is None
        dialler, dialler_client = await lab.peer()  # dials without reserving
        refused.add(dialler.get_id())
        with pytest.raises(ConnectionError, match=r"Relay connection failed|Failed to establish"):
            await dialler_client.dial(lab.circuit_to(hidden))
        assert dialler.get_id() not in hidden.get_network().connections
        assert lab.relay.refusals == {"not_member": 2}
        assert lab.relay.status()["reservations"] == 1

    _run(scenario)


def test_a_reserve_naming_another_peer_reserves_for_the_sender_only():
    async def scenario(stack, nursery):
        lab = await _lab(stack)
        victim, _ = await lab.peer()
        liar, _ = await lab.peer()
        relay_id = lab.relay_host.get_id()
        await liar.connect(PeerInfo(relay_id, [multiaddr.Multiaddr(lab.relay_addr)]))
        stream = await liar.new_stream(relay_id, [HOP_PROTOCOL])
        forged = HopMessage(
            type=HopMessage.RESERVE, peer=CircuitPeerId(id=victim.get_id().to_bytes())
        )
        await write_delimited_msg(stream, forged)
        reply = await read_delimited_msg(stream, HopMessage)
        await stream.close()

        assert reply.type == HopMessage.STATUS
        manager = lab.relay.resource_manager
        assert manager.get_reservation(victim.get_id()) is None
        assert manager.get_reservation(liar.get_id()) is not None

    _run(scenario)


def test_one_peer_leaving_a_relayed_node_does_not_cut_another_peers_circuit():
    async def scenario(stack, nursery):
        lab = await _lab(stack)
        hidden, hidden_client = await lab.peer(reserve=True)
        assert await lab.reserve(hidden_client, nursery)
        first, first_client = await lab.peer()
        second, second_client = await lab.peer()
        await first_client.dial(lab.circuit_to(hidden))
        await second_client.dial(lab.circuit_to(hidden))
        assert await ask(second, hidden.get_id(), b"before..") == b"pong:before.."

        await first.disconnect(hidden.get_id())
        await trio.sleep(1.0)  # the relay notices the end of the first circuit

        assert await ask(second, hidden.get_id(), b"after...") == b"pong:after..."
        assert await ask(hidden, second.get_id(), b"back....") == b"pong:back...."

    _run(scenario)


def test_the_relay_frees_slots_of_peers_that_left_and_stays_bounded_otherwise():
    async def scenario(stack, nursery):
        lab = await _lab(stack, limits=RelayServerLimits(reservations=1))
        gone, gone_client = await lab.peer(reserve=True)
        assert await lab.reserve(gone_client, nursery)
        await gone.disconnect(lab.relay_host.get_id())
        await trio.sleep(0.5)

        _staying, staying_client = await lab.peer(reserve=True)
        assert await lab.reserve(staying_client, nursery), "the slot of a peer gone is free"
        _third, third_client = await lab.peer(reserve=True)
        assert not await lab.reserve(third_client, nursery), "a connected holder keeps it"
        assert lab.relay.status()["reservations"] == 1
        assert third_client.failures["reserve"] == 1

    _run(scenario)
