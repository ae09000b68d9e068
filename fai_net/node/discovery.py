"""Who the node talks to: discovery of peers, and membership applied to connections.

Discovery dials the seeds and the live registry advertisements we are not connected to,
never a dropped operator's node; a relayed address (`…/p2p-circuit/p2p/<peer>`) is dialled
through its relay (fai_net/p2p/relay.py). Membership is refreshed (chain reads, in a worker thread)
every `membership_refresh_s`, or as soon as the registry logs a slash, jail or unbond; then
peers whose operator left the live set are dropped for good (hung up on, forgotten by
gossipsub, refused on reconnect, not listed) and readmitted if it comes back. The connected
peers of the fleet, as every other part sees them, are the ones not dropped.
"""

from __future__ import annotations

import logging

import trio
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import info_from_p2p_addr

from fai_core.clock import now_ms
from fai_net.admission.membership import Dropped
from fai_net.node.identity import public_key_of
from fai_net.node.peer_keys import peer_id_of
from fai_net.node.resources import NodeResources
from fai_net.node.state import NodeState
from fai_net.p2p.addresses import is_circuit
from fai_net.p2p.gossip import connect_at, parse_multiaddrs
from fai_net.ratelog import RateLimitedLog

#: Every part logs as the node always has (the CLI's log lines name the logger).
log = logging.getLogger("fai_net.node.node")
_membership_log = RateLimitedLog(log, interval_s=60.0)

#: Between membership refreshes, how often to look for a registry event that ends an
#: operator's liveness (a slash, a jail, an unbond): one cheap chain read.
MEMBERSHIP_WATCH_S = 1.0


class Discovery:
    def __init__(self, res: NodeResources, state: NodeState) -> None:
        self.res, self.state = res, state
        #: Set when this node's own operator is not live (logged once per change).
        self.self_dropped: Dropped | None = None

    def connected_peers(self) -> list[ID]:
        """Connected peers of the fleet: a dropped peer is not one, even in the moment
        between its operator leaving the live set and the hang-up (`apply_membership`)."""
        return [p for p in self.connections() if p not in self.state.dropped_peers]

    def connections(self) -> list[ID]:
        """Every peer with a libp2p connection, dropped or not (the transport's view)."""
        return [p for p in self.res.host.get_connected_peers() if p != self.res.peer_id]

    async def discovery_loop(self) -> None:
        seeds = parse_multiaddrs(self.res.config.seeds + self.res.config.relays)
        while True:
            await self.discover(seeds)
            await trio.sleep(self.res.config.discovery_interval_s)

    def _targets(self, seeds) -> list:
        """The seeds, then every live advertisement's addresses but our own."""
        targets = list(seeds)
        for key, addrs in self.res.membership.live_addresses().items():
            if key == self.res.identity.public_key:
                continue
            peer_id = peer_id_of(key)
            for text in addrs:
                if not text.endswith(f"/p2p/{peer_id}"):  # a relayed one names its relay's
                    text = f"{text}/p2p/{peer_id}"
                try:
                    targets.extend(parse_multiaddrs([text]))
                except ValueError:
                    log.info("skipping bad advertised address %r", text)
        return targets

    async def discover(self, seeds) -> None:
        """Dial the seeds and the live advertisements we are not connected to. Dropped
        operators' nodes are never dialled (`apply_membership` hangs up on them)."""
        res = self.res
        connected = set(self.connected_peers())
        targets = self._targets(seeds)
        few = len(connected) < 4
        for addr in targets:
            try:
                info = info_from_p2p_addr(addr)
            except Exception:  # a seed without /p2p/ is a config error
                log.warning("seed %s has no /p2p/ peer id", addr)
                continue
            if info.peer_id == res.peer_id or info.peer_id in connected:
                continue
            key = public_key_of(info.peer_id)
            if info.peer_id in self.state.dropped_peers:
                continue
            if key is not None and res.membership.is_dropped(key):
                continue
            if key is not None and res.reputation.deprioritised(key) and not few:
                continue
            with trio.move_on_after(5):
                try:
                    # py-libp2p refuses to dial a peer for 60 s after one failed dial: a
                    # seed that was not up yet, or a peer behind a healed partition, would
                    # wait that long whatever our own discovery interval.
                    res.host.get_network().unblock_peer(info.peer_id)
                    if is_circuit(addr):  # host.connect drops relayed addresses
                        await res.relay_client.dial(addr)
                    else:
                        await connect_at(res.host, info.peer_id, info.addrs)
                    self.state.peer(info.peer_id).last_seen_ms = now_ms()
                    self.state.repair_wakeup.set()
                    connected.add(info.peer_id)
                except Exception as exc:  # dial errors are many and expected
                    log.debug("dial %s failed: %s", addr, exc)

    async def membership_loop(self) -> None:
        """Refresh the member set every `membership_refresh_s`, and sooner when the registry
        has logged a slash, jail or unbond since the last refresh (`Membership.changed`,
        one chain read a second): a slashed node is dropped within about a second, without
        re-reading every operator each second."""
        membership = self.res.membership
        refresh_s = self.res.config.membership_refresh_s
        last = trio.current_time()
        while True:
            await trio.sleep(min(MEMBERSHIP_WATCH_S, refresh_s))
            due = trio.current_time() - last >= refresh_s
            if not due:
                try:
                    due = await trio.to_thread.run_sync(membership.changed)
                except Exception as exc:  # the periodic refresh still comes
                    _membership_log.warning("watch", "membership watch failed: %s", exc)
                    continue
                if not due:
                    continue
            last = trio.current_time()
            try:
                await trio.to_thread.run_sync(membership.refresh)
            except Exception as exc:  # a chain hiccup must not stop the node
                log.warning("membership refresh failed: %s", exc)
                continue
            await self.apply_membership()

    async def apply_membership(self) -> None:
        """Act on the snapshot just refreshed, logging once per peer per change: drop the
        peers whose operator left the live set, readmit those that came back, and hang up
        on any dropped peer still connected (a connection that raced the drop)."""
        res, dropped_peers = self.res, self.state.dropped_peers
        dropped = res.membership.dropped()
        now_dropped: dict[ID, Dropped] = {}
        for key, why in dropped.items():
            if key == res.identity.public_key:
                continue
            try:
                now_dropped[peer_id_of(key)] = why
            except Exception:  # a key that is not an Ed25519 point has no peer id
                continue
        for peer in [p for p in dropped_peers if p not in now_dropped]:
            del dropped_peers[peer]
            res.pubsub.readmit(peer)
            operator = res.membership.operator_of(public_key_of(peer) or b"")
            log.warning("readmitting %s (operator %s): live in the registry again", peer, operator)
        for peer, why in now_dropped.items():
            if peer not in dropped_peers:
                dropped_peers[peer] = why
                log.warning(
                    "dropping %s (operator %s): no longer live in the registry (%s)",
                    peer,
                    why.operator,
                    why.reason,
                )
                res.pubsub.exclude(peer)
                self.state.peers.pop(peer, None)
                _forget_addresses(res.host, peer)
        self._note_own_membership(dropped.get(res.identity.public_key))
        for peer in self.connections():
            if peer in dropped_peers:
                await self._hang_up(peer)

    async def _hang_up(self, peer: ID) -> None:
        with trio.move_on_after(5):
            try:
                await self.res.host.disconnect(peer)
            except Exception as exc:  # the connection may be closing already
                log.info("disconnect %s: %s", peer, exc)

    def _note_own_membership(self, why: Dropped | None) -> None:
        """Say once that this node's own operator left the live set (its peers now refuse
        its batches), and once that it is back."""
        if why is not None and self.self_dropped is None:
            log.warning(
                "this node's operator %s is no longer live in the registry (%s): "
                "peers refuse its batches and hang up on it",
                why.operator,
                why.reason,
            )
        elif why is None and self.self_dropped is not None:
            log.warning("this node's operator is live in the registry again")
        self.self_dropped = why


def _forget_addresses(host, peer: ID) -> None:
    """Remove a dropped peer's addresses from the peer store: py-libp2p's auto-connector
    dials peer-store peers with addresses whenever the node has fewer than its low
    watermark (100) of connections, which would re-dial the dropped node every 30 s."""
    try:
        host.get_peerstore().clear_addrs(peer)
    except Exception as exc:  # an unknown peer has no addresses to forget
        log.debug("forgetting %s's addresses: %s", peer, exc)
