"""Circuit relay v2 for nodes no peer can dial: serving it (opt-in, limited) and using it.

A node behind NAT or a firewall has no address its peers can reach. It dials a relay (a
fleet node started with `--relay-server`), reserves a slot there, and announces
`<relay address>/p2p-circuit`; a peer reaching it dials that address, the relay opens a
stream to the reserved node, and from then on the two hold an ordinary libp2p connection
(Noise, yamux, gossipsub, repair) whose bytes pass through the relay. This is py-libp2p
0.8.1's own circuit relay v2 (`libp2p.relay.circuit_v2`), not a tunnel of ours; what is
added here closes what a fleet meets with it:

- **Who may use a relay.** py-libp2p reserves a slot for whatever peer id the RESERVE
  message names and relays for any source. `FleetRelayProtocol` reserves only for the
  peer at the other end of the connection (the message's field is ignored) and serves
  only peers the node's membership admits (in registry mode: live operators' nodes; a
  refused request is answered PERMISSION_DENIED and counted).
- **Slots held by the gone.** A reservation lives its whole TTL (an hour) after its peer
  left, so peers coming and going would fill `max_reservations`. A request that finds the
  relay full first frees the slots of peers no longer connected.
- **One circuit's end cut another.** py-libp2p files live circuits by destination peer, so
  when one peer's circuit to a relayed node ended, its clean-up reset the streams of
  another peer's circuit to the same node. Each circuit here cleans up only its own two
  streams.
- **Reservations that lapse.** py-libp2p's refresher gives up while the relay is away; a
  restarted relay has forgotten every reservation. `RelayClient.keep_reserved` checks
  each relay every few seconds: it dials a relay it is not connected to, and reserves
  again on every new connection and every `RESERVE_EVERY_S`.
- **Dialling a circuit.** `host.connect` drops /p2p-circuit addresses, so discovery dials
  them with `RelayClient.dial` (the circuit transport).
- **Dialling the relay.** A relay has an address on each network it joins, and identify
  teaches its clients all of them; py-libp2p then dials one TCP address per peer, possibly
  the unreachable one, after every restart of the relay. The client dials the address it
  was given (`connect_at`).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import multiaddr
import trio
from libp2p.abc import IHost, INetStream
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo, info_from_p2p_addr
from libp2p.relay.circuit_v2 import CircuitV2Protocol, CircuitV2Transport, RelayLimits
from libp2p.relay.circuit_v2.config import RelayConfig, RelayRole
from libp2p.relay.circuit_v2.pb.circuit_pb2 import HopMessage
from libp2p.relay.circuit_v2.protocol import PROTOCOL_ID as HOP_PROTOCOL
from libp2p.relay.circuit_v2.protocol_buffer import StatusCode

from fai_net.p2p.addresses import is_circuit
from fai_net.p2p.gossip import connect_at
from fai_net.ratelog import RateLimitedLog

log = logging.getLogger(__name__)
_ratelog = RateLimitedLog(log)

#: A held reservation is renewed this often (the relay's TTL is an hour; a relay that
#: restarted has forgotten it, which a new connection also reveals).
RESERVE_EVERY_S = 60.0
#: How often the client checks its relays (dial, reserve).
CHECK_EVERY_S = 2.0
DIAL_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class RelayServerLimits:
    """What a node serving as a relay gives: `reservations` nodes at once, each reachable
    by `circuits_per_peer` relayed connections, each open for `circuit_s` seconds and
    `circuit_bytes` bytes (then the two ends dial again)."""

    reservations: int = 16
    circuits_per_peer: int = 16
    circuit_s: int = 3600
    circuit_bytes: int = 1 << 30
    reservation_ttl_s: int = 3600

    def __post_init__(self) -> None:
        for name in ("reservations", "circuits_per_peer", "circuit_s", "circuit_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"relay {name} must be positive")

    def relay_limits(self) -> RelayLimits:
        return RelayLimits(
            duration=self.circuit_s,
            data=self.circuit_bytes,
            max_circuit_conns=self.circuits_per_peer,
            max_reservations=self.reservations,
            reservation_ttl=self.reservation_ttl_s,
        )


class FleetRelayProtocol(CircuitV2Protocol):
    """py-libp2p's circuit relay v2 HOP service, restricted to the fleet (module doc).

    `admits(peer)` says whether a peer may reserve or open a circuit; `refusals` counts
    what was refused, by reason, for the node's status.
    """

    def __init__(self, host: IHost, limits: RelayServerLimits, admits: Callable[[ID], bool]):
        super().__init__(host, limits=limits.relay_limits(), allow_hop=True)
        self.admits = admits
        self.refusals: Counter[str] = Counter()
        self.circuits_opened = 0

    def status(self) -> dict:
        """For `fai node status`: reservations held here, circuits opened, refusals."""
        self.resource_manager._clean_expired()  # py-libp2p cleans only on new requests
        return {
            "reservations": len(self.resource_manager._reservations),
            "max_reservations": self.limits.max_reservations,
            "circuits_opened": self.circuits_opened,
            "refusals": dict(self.refusals),
        }

    async def _handle_reserve(self, stream: INetStream, msg: HopMessage) -> None:
        remote = stream.muxed_conn.peer_id
        if not self.admits(remote):
            await self._refuse(stream, "not_member", remote)
            return
        msg.ClearField("peer")  # reserve for the connection's own peer, never another
        self._free_slots_of_the_gone()
        await super()._handle_reserve(stream, msg)

    async def _handle_connect(self, stream: INetStream, msg: HopMessage) -> None:
        remote = stream.muxed_conn.peer_id
        if not self.admits(remote):
            await self._refuse(stream, "not_member", remote)
            return
        self.circuits_opened += 1
        await super()._handle_connect(stream, msg)

    async def _refuse(self, stream: INetStream, reason: str, remote: ID) -> None:
        self.refusals[reason] += 1
        _ratelog.info(reason, "relay request refused (%s) from %s", reason, remote)
        await self._send_status(stream, StatusCode.PERMISSION_DENIED, "not a fleet member")
        await self._close_stream(stream)

    def _free_slots_of_the_gone(self) -> None:
        """When the relay is full, drop the reservations of peers no longer connected."""
        manager = self.resource_manager
        if manager.can_accept_reservation(ID(b"\x00")):
            return
        connected = set(self.host.get_network().connections)
        for peer in [p for p in manager._reservations if p not in connected]:
            del manager._reservations[peer]

    async def _relay_data(self, src, dst, peer_id, deadline=None, circuit_data_limit=None):
        """Relay one direction, then close this circuit's own streams only.

        The parent's clean-up closes whatever circuit it has filed under `peer_id` (the
        destination), which is another peer's circuit when two reach the same node; it is
        given a key no circuit is filed under, and this one's streams are closed here.
        """
        try:
            await super()._relay_data(src, dst, _UNFILED, deadline, circuit_data_limit)
        finally:
            filed = self._active_relays.get(peer_id)
            if filed is not None and (src in filed or dst in filed):
                del self._active_relays[peer_id]
            await self._close_stream(src)
            await self._close_stream(dst)


#: A peer id no circuit is ever filed under (see `FleetRelayProtocol._relay_data`).
_UNFILED = ID(b"fai-relay-unfiled")


class RelayClient:
    """A node's use of relays: dial circuit addresses and, given `relays`, keep a
    reservation at each so that peers can reach this node through them."""

    def __init__(self, host: IHost, relays: Sequence[str] = ()) -> None:
        self.host = host
        self.relays = [info_from_p2p_addr(multiaddr.Multiaddr(text)) for text in relays]
        roles = RelayRole.STOP | (RelayRole.CLIENT if relays else RelayRole(0))
        #: Accepts circuits addressed to this node (the STOP protocol), when it has relays.
        self.stop = CircuitV2Protocol(host, allow_hop=False)
        self.transport = CircuitV2Transport(host, self.stop, RelayConfig(roles=roles))
        #: relay -> (the connections open when it granted our reservation, when)
        self._reserved_on: dict[ID, tuple[list, float]] = {}
        self.failures: Counter[str] = Counter()

    @property
    def accepts_circuits(self) -> bool:
        return bool(self.relays)

    async def dial(self, addr: multiaddr.Multiaddr) -> None:
        """Connect to a peer through the relay its circuit address names."""
        await self.transport.dial(addr)

    def reserved(self) -> list[str]:
        """The relays where this node holds a reservation on the current connection."""
        return [str(info.peer_id) for info in self.relays if self._holds(info.peer_id)]

    def status(self) -> dict:
        """For `fai node status`: relays in use, reservations held, relayed connections."""
        relayed = 0
        for conns in self.host.get_network().connections.values():
            for conn in conns if isinstance(conns, list) else [conns]:
                addrs = getattr(conn, "get_transport_addresses", list)()
                relayed += any(is_circuit(a) for a in addrs)
        return {
            "relays": [str(info.peer_id) for info in self.relays],
            "reserved_at": self.reserved(),
            "relayed_connections": relayed,
            "failures": dict(self.failures),
        }

    def _holds(self, relay: ID) -> bool:
        """A reservation made over a connection to `relay` that is still open (a relay
        that restarted has forgotten it, and every old connection is gone with it)."""
        held = self._reserved_on.get(relay)
        return held is not None and any(c in held[0] for c in self._connections(relay))

    def _connections(self, relay: ID) -> list:
        conns = self.host.get_network().connections.get(relay) or []
        return conns if isinstance(conns, list) else [conns]

    async def keep_reserved(self) -> None:
        """Forever: every CHECK_EVERY_S, dial each relay not connected and reserve where
        the reservation is not held on the current connection or is due for renewal.
        (py-libp2p's own refresher runs in this nursery too; it stops in an outage.)"""
        if not self.relays:
            return
        async with trio.open_nursery() as nursery:
            while True:
                for info in self.relays:
                    with trio.move_on_after(DIAL_TIMEOUT_S * 3):
                        await self._keep(info, nursery)
                await trio.sleep(CHECK_EVERY_S)

    async def _keep(self, info: PeerInfo, nursery: trio.Nursery) -> None:
        relay = info.peer_id
        if not self._connections(relay):
            try:
                self.host.get_network().unblock_peer(relay)
                with trio.fail_after(DIAL_TIMEOUT_S):
                    await connect_at(self.host, relay, info.addrs)
            except Exception as exc:  # the relay is away: try again next check
                self.failures["dial"] += 1
                _ratelog.info("relay_dial", "relay %s not reachable: %r", relay, exc)
                return
        held = self._reserved_on.get(relay)
        if self._holds(relay) and time.monotonic() - held[1] < RESERVE_EVERY_S:
            return
        if await self._reserve(relay, nursery):
            if not self._holds(relay):
                log.info("reserved a slot at relay %s", relay)
            self._reserved_on[relay] = (list(self._connections(relay)), time.monotonic())
        else:
            self._reserved_on.pop(relay, None)

    async def _reserve(self, relay: ID, nursery: trio.Nursery) -> bool:
        try:
            with trio.fail_after(DIAL_TIMEOUT_S * 2):
                stream = await self.host.new_stream(relay, [HOP_PROTOCOL])
                try:
                    ok = await self.transport.reserve(stream, relay, nursery)
                finally:
                    await stream.close()
        except Exception as exc:  # the relay went away mid-way, or refused
            ok = False
            _ratelog.info("relay_reserve", "reservation at %s failed: %r", relay, exc)
        if not ok:
            self.failures["reserve"] += 1
        return ok
