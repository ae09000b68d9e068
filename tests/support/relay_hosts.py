"""Bare FAI-built libp2p hosts (fai_net.p2p.gossip.build_host) for the circuit relay tests:
a ping protocol to prove bytes pass both ways, and a host run without a listen address."""

from __future__ import annotations

from contextlib import asynccontextmanager

from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.custom_types import TProtocol
from libp2p.relay.circuit_v2 import RelayLimits
from libp2p.tools.anyio_service import background_trio_service

from fai_net.p2p.gossip import GossipSettings, build_host

PING = TProtocol("/fai-test/relay-ping/1")
TOPIC = "relay-probe"
LIMITS = RelayLimits(
    duration=600, data=1 << 24, max_circuit_conns=4, max_reservations=4, reservation_ttl=300
)


def fai_host():
    """A host, its pubsub and its router, built as a node builds them (not started)."""
    return build_host(create_new_key_pair(), GossipSettings())


@asynccontextmanager
async def without_listen_address(host, pubsub, router):
    """FAI's `running` without its refusal of a host with no address (a relay-only host
    has none): pubsub services first, then the host, as there."""
    async with (
        background_trio_service(pubsub),
        background_trio_service(router),
        host.run(listen_addrs=[]),
    ):
        await pubsub.wait_until_ready()
        yield


async def read_exactly(stream, n: int) -> bytes:
    """`n` bytes from `stream`, failing if it ends first."""
    data = b""
    while len(data) < n:
        chunk = await stream.read(n - len(data))
        assert chunk, f"stream ended after {len(data)} of {n} bytes"
        data += chunk
    return data


async def answer(stream) -> None:
    """Read an 8-byte request, answer with b"pong:" + request."""
    request = await read_exactly(stream, 8)
    await stream.write(b"pong:" + request)
    await stream.close()


async def ask(host, peer, request: bytes) -> bytes:
    """Send `request` (8 bytes) on a new PING stream; the answer."""
    stream = await host.new_stream(peer, [PING])
    await stream.write(request)
    answer = await read_exactly(stream, 5 + len(request))
    await stream.close()
    return answer
