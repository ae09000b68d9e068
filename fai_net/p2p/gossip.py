"""The libp2p host and gossipsub router, with the settings that keep py-libp2p from
silently losing messages (each measured against py-libp2p 0.8.1; docs/node.md).

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

Two defects of py-libp2p 0.8.1 that a peer can reach are closed here (`GuardedPubsub`,
`guard_stream_handlers`), each with a test in tests/net/test_hostile_peers.py:
- `Pubsub.stream_handler` catches only StreamError/ParseError/IncompleteReadError, so a
  frame whose protobuf does not parse (5 bytes: `04 0a 64 01 02`) raised
  `google.protobuf.message.DecodeError` through the connection's nursery and ended the
  process. Likewise `push_msg` re-raises when a message's `key` does not deserialize.
- `Pubsub.write_msg` is called by the per-peer send task and, concurrently, by the
  new-peer replay (`send_recent_messages`, `flush_pending_messages`). yamux's
  `stream.write` sends a large buffer as several window-sized frames with awaits between
  them, so two writers interleave their bytes and the receiver's decoder sees garbage
  (`invalid wire type`, `Message length too long`) after any batch larger than the yamux
  window. One lock per stream makes every RPC write atomic on the stream.

Dropped peers (a registry operator no longer live) are kept out with what 0.8.1 offers
(`GuardedPubsub.exclude`, `refuse_peers`): its connection gate filters by IP only, and a
loopback or NATed fleet shares IPs, so the peer id is checked right after the Noise
handshake, the first moment it is known, before the connection exists for the swarm.
"""

from __future__ import annotations

import hashlib
import logging
import weakref
from collections import Counter
from collections.abc import Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass

import multiaddr
import trio
from libp2p import new_host
from libp2p.abc import IHost, INetStream
from libp2p.crypto.keys import KeyPair
from libp2p.crypto.x25519 import create_new_key_pair as new_x25519_key_pair
from libp2p.custom_types import TProtocol
from libp2p.peer.id import ID
from libp2p.pubsub.gossipsub import GossipSub
from libp2p.pubsub.pb import rpc_pb2
from libp2p.pubsub.pubsub import Pubsub
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.tools.anyio_service import background_trio_service
from libp2p.transport.exceptions import SecurityUpgradeFailure

from fai_core.errors import FaiError
from fai_core.wire import MAX_ENVELOPE_BYTES
from fai_net.ratelog import RateLimitedLog

log = logging.getLogger(__name__)
_ratelog = RateLimitedLog(log)
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


class GuardedPubsub(Pubsub):
    """py-libp2p's Pubsub with its peer-reachable crashes and write races closed.

    `faults` counts what was contained, by kind ("rpc_stream", "push_msg"), for the
    node's status and metrics.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.faults: Counter[str] = Counter()
        self._write_locks: weakref.WeakKeyDictionary[INetStream, trio.Lock] = (
            weakref.WeakKeyDictionary()
        )

    async def stream_handler(self, stream: INetStream) -> None:
        """Any failure reading a peer's RPCs costs that stream, never the process."""
        peer_id = stream.muxed_conn.peer_id
        try:
            await super().stream_handler(stream)
        except Exception as exc:  # DecodeError and whatever else a peer's bytes provoke
            self.faults["rpc_stream"] += 1
            _ratelog.info("rpc_stream", "dropping pubsub stream of %s: %r", peer_id, exc)
            await _reset_quietly(stream)
            self._handle_dead_peer(peer_id)

    async def push_msg(self, msg_forwarder: ID, msg: rpc_pb2.Message) -> None:
        """A message that makes py-libp2p's checks raise is dropped, not fatal."""
        try:
            await super().push_msg(msg_forwarder, msg)
        except Exception as exc:
            self.faults["push_msg"] += 1
            _ratelog.info("push_msg", "dropping a message from %s: %r", msg_forwarder, exc)

    async def write_msg(self, stream: INetStream, rpc_msg: rpc_pb2.RPC) -> bool:
        """One RPC at a time per stream: yamux splits a large write into several frames."""
        lock = self._write_locks.get(stream)
        if lock is None:
            lock = self._write_locks[stream] = trio.Lock()
        async with lock:
            return await super().write_msg(stream, rpc_msg)

    def exclude(self, peer_id: ID) -> None:
        """Blacklist `peer_id` and forget it everywhere in pubsub and gossipsub now.

        `add_to_blacklist` alone leaves the peer in gossipsub's mesh and fanout: its
        teardown task removes the peer's stream entry first, so the disconnect that follows
        finds an unknown peer and never reaches `router.remove_peer`. The blacklist also
        makes py-libp2p refuse the peer's pubsub stream should it reconnect.
        """
        self.add_to_blacklist(peer_id)
        self._handle_dead_peer(peer_id)  # stream entry, queue, subscriptions, router
        self.router.remove_peer(peer_id)  # idempotent: for a peer without a stream entry

    def readmit(self, peer_id: ID) -> None:
        """Undo `exclude` (its operator is live again)."""
        self.remove_from_blacklist(peer_id)


async def _reset_quietly(stream: INetStream) -> None:
    with trio.move_on_after(2.0, shield=True):
        try:
            await stream.reset()
        except Exception as exc:  # the stream may already be gone
            log.debug("reset after a stream fault failed: %r", exc)


def guard_stream_handlers(host: IHost, faults: Counter[str]) -> None:
    """Wrap the host's one entry point for inbound streams (protocol negotiation, then the
    protocol's handler) so that no handler, ours or py-libp2p's (identify, ping, ...), can
    raise into the connection's nursery: py-libp2p lets such an exception end the process.
    """
    network = host.get_network()
    inner = network.common_stream_handler

    async def guarded(stream: INetStream) -> None:
        try:
            await inner(stream)
        except Exception as exc:
            faults["stream_handler"] += 1
            peer = getattr(getattr(stream, "muxed_conn", None), "peer_id", "?")
            _ratelog.info("stream_handler", "stream from %s failed: %r", peer, exc)
            await _reset_quietly(stream)

    network.set_stream_handler(guarded)


def refuse_peers(host: IHost, refused: Callable[[ID], bool]) -> None:
    """Refuse every new connection, inbound or outbound, with a peer `refused` names.

    The check runs as soon as the Noise handshake has authenticated the remote peer id,
    before the muxer and before the swarm registers the connection, so a refused peer never
    counts as connected, never opens a stream and never reaches pubsub or identify. The
    refusal is a `SecurityUpgradeFailure`, which py-libp2p handles as a failed handshake
    (the socket is closed; inbound it is logged at debug level).
    """
    upgrader = host.get_network().upgrader
    inner = upgrader.upgrade_security

    async def upgrade_security(raw_conn, is_initiator: bool, peer_id: ID | None = None):
        secured = await inner(raw_conn, is_initiator, peer_id)
        remote = secured.get_remote_peer()
        if refused(remote):
            with trio.move_on_after(2.0, shield=True):
                try:
                    await secured.close()
                except Exception as exc:  # already gone: nothing left to close
                    log.debug("closing refused peer %s: %r", remote, exc)
            raise SecurityUpgradeFailure(f"peer {remote} is refused")
        return secured

    upgrader.upgrade_security = upgrade_security


def build_host(
    key_pair: KeyPair, settings: GossipSettings
) -> tuple[IHost, GuardedPubsub, GossipSub]:
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
    pubsub = GuardedPubsub(
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
    guard_stream_handlers(host, pubsub.faults)
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


async def connect_at(host: IHost, peer_id: ID, addrs: Sequence[multiaddr.Multiaddr]) -> None:
    """Connect to `peer_id` at one of `addrs` (without /p2p/), tried in order, unless
    connected already.

    `host.connect` dials whatever the peer store holds for the peer, including the
    addresses identify taught us, and py-libp2p 0.8.1's swarm tries at most one TCP
    address per peer: a peer with two interfaces (a relay with a leg on a hidden site) can
    be dialled forever at the one we cannot reach. The address we were told to use
    (a seed, an advertisement, `--relay`) is dialled here instead.
    """
    network = host.get_network()
    if network.connections.get(peer_id):
        return
    host.get_peerstore().add_addrs(peer_id, list(addrs), 120)
    failure: Exception | None = None
    for addr in addrs:
        try:
            conn = await network.dial_addr(addr, peer_id)
        except Exception as exc:  # refused, unreachable, wrong peer: try the next
            failure = exc
            continue
        started = getattr(conn, "event_started", None)
        if started is not None:
            await started.wait()
        return
    raise ConnectionError(f"could not dial {peer_id} at {', '.join(map(str, addrs))}") from (
        failure
    )


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
