"""The libp2p host and gossipsub router, with the settings that keep py-libp2p from
silently losing messages (measured: ../shared/reference/toolchain-notes.md).

- Noise is the only security transport offered: py-libp2p's default also offers
  plaintext, and a plaintext-only peer would be accepted.
- heartbeat 1 s with adaptive gossip off: adaptive mode stretched a 1 s heartbeat to 60 s.
- spam protection off: its 10 msgs/topic/s limit also drops our own publishes, with only a
  warning; our rate limit is the validator (reputation, per-sender seq) plus paced
  publishing (the outbound queue holds 32 RPCs per peer).
- eclipse protection off: it counts distinct IPs, and a loopback fleet has one.
- message id = sha256 of the envelope: content-addressed, so the same batch arriving by
  two paths (or re-published after a restart) is one message.
- no validation-result cache: every message that passes the seen cache meets the gate.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass

import multiaddr
from libp2p import new_host
from libp2p.abc import IHost
from libp2p.crypto.keys import KeyPair
from libp2p.crypto.x25519 import create_new_key_pair as new_x25519_key_pair
from libp2p.custom_types import TProtocol
from libp2p.pubsub.gossipsub import GossipSub
from libp2p.pubsub.pb import rpc_pb2
from libp2p.pubsub.pubsub import Pubsub
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.tools.anyio_service import background_trio_service

from fai_core.errors import FaiError
from fai_core.wire import MAX_ENVELOPE_BYTES

GOSSIPSUB_PROTOCOLS = (TProtocol("/meshsub/1.1.0"), TProtocol("/meshsub/1.0.0"))


@dataclass(frozen=True)
class GossipSettings:
    degree: int = 6
    degree_low: int = 4
    degree_high: int = 12
    heartbeat_interval: int = 1
    #: Seen-message cache; a batch seen again after this is caught by the batch store.
    seen_ttl: int = 120
    #: Above our envelope limit plus protobuf framing, below py-libp2p's 1 MiB default
    #: beyond which a frame is silently discarded.
    max_inbound_rpc_size: int = 1 << 20
    mdns: bool = False


def message_id(msg: rpc_pb2.Message) -> bytes:
    return hashlib.sha256(msg.data).digest()


def build_host(key_pair: KeyPair, settings: GossipSettings) -> tuple[IHost, Pubsub, GossipSub]:
    """A host offering Noise + yamux only, and its (not yet started) pubsub services."""
    if settings.max_inbound_rpc_size < MAX_ENVELOPE_BYTES + 4096:
        raise ValueError("max_inbound_rpc_size must exceed the envelope limit")
    noise = NoiseTransport(
        libp2p_keypair=key_pair,
        noise_privkey=new_x25519_key_pair().private_key,
        early_data=None,
    )
    host = new_host(
        key_pair=key_pair,
        sec_opt={NOISE_PROTOCOL_ID: noise},
        muxer_preference="YAMUX",
        enable_mDNS=settings.mdns,
    )
    router = GossipSub(
        list(GOSSIPSUB_PROTOCOLS),
        settings.degree,
        settings.degree_low,
        settings.degree_high,
        heartbeat_interval=settings.heartbeat_interval,
        adaptive_gossip_enabled=False,
        spam_protection_enabled=False,
        eclipse_protection_enabled=False,
    )
    pubsub = Pubsub(
        host,
        router,
        seen_ttl=settings.seen_ttl,
        # The seen cache refreshes an entry on every lookup and forgets only when swept, so
        # the sweep period is what bounds its memory: sweep at the TTL.
        sweep_interval=max(1, settings.seen_ttl),
        # py-libp2p caches validation results by message id for 300 s and then skips the
        # validator: a replay after the seen cache would be forwarded unchecked. Our gate
        # answers duplicates from the batch store, so the cache is off.
        validation_cache_ttl=0,
        strict_signing=True,
        msg_id_constructor=message_id,
        max_inbound_rpc_size=settings.max_inbound_rpc_size,
    )
    return host, pubsub, router


@asynccontextmanager
async def running(host: IHost, pubsub: Pubsub, router: GossipSub, listen: Sequence[str]):
    """Start the pubsub services, then the host (the other order crashes py-libp2p on the
    first peer), and wait until pubsub is ready. Refuses a host that got no address: a
    failed bind is only logged by py-libp2p, which then runs unreachable."""
    async with AsyncExitStack() as stack:
        await stack.enter_async_context(background_trio_service(pubsub))
        await stack.enter_async_context(background_trio_service(router))
        await stack.enter_async_context(host.run(listen_addrs=parse_multiaddrs(listen)))
        if not host.get_addrs():
            raise ListenError(f"could not listen on {', '.join(listen)}")
        await pubsub.wait_until_ready()
        yield host


class ListenError(FaiError):
    """No listen address could be bound."""


def parse_multiaddrs(addrs: Sequence[str]) -> list[multiaddr.Multiaddr]:
    out = []
    for text in addrs:
        try:
            out.append(multiaddr.Multiaddr(text))
        except Exception as exc:  # multiaddr raises several unrelated types
            raise ValueError(f"not a multiaddr: {text!r} ({exc})") from None
    return out
