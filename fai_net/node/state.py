"""What the node's parts share in memory, created with the node and not only once it runs.

The parts (receive, rounds, broadcast, repair, discovery, control) each own one job, but
some facts belong to all of them: the subscribed domains, what is known of each peer, the
peers dropped with their operator, the queue of batches waiting to merge, and the wake-ups
one part gives another (an accepted batch wakes the round loop; a new subscription wakes
repair). Keeping them in one plain object, built in `Node.__init__`, means no part needs a
reference to another just to read or poke them, and none of them appears only after `run()`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import trio
from libp2p.peer.id import ID

from fai_core.clock import now_ms
from fai_core.wire import Batch
from fai_net.admission.membership import Dropped
from fai_net.node.config import NodeConfig
from fai_net.node.pending import FairQueue


@dataclass
class PeerState:
    last_seen_ms: int = 0
    latency_ms: float | None = None
    sync_failures: int = 0


@dataclass
class Pending:
    batch: Batch
    origin: str  # "gossip" | "repair" | "restart"


@dataclass
class RoundReport:
    batches: int = 0
    merged: int = 0
    inserted: int = 0
    by_domain: dict[str, int] = field(default_factory=dict)
    #: Batches DeltaSoup has decided on completely (no rows left in its backlog).
    done: set[bytes] = field(default_factory=set)


class Wakeup:
    """A loop's wake-up: `set()` from anywhere; the loop waits at most `timeout_s` and then
    re-arms, so a wake-up that came while it worked is kept for its next wait."""

    def __init__(self) -> None:
        self._event = trio.Event()

    def set(self) -> None:
        self._event.set()

    async def wait(self, timeout_s: float) -> None:
        with trio.move_on_after(timeout_s):
            await self._event.wait()
        self._event = trio.Event()


class NodeState:
    """The node's shared, in-memory state (touched only on the event loop, except
    `library_sizes`, which a library thread replaces whole)."""

    def __init__(self, config: NodeConfig) -> None:
        self.domains: list[str] = []
        self.pending: FairQueue[Pending] = FairQueue(config.queue)
        #: Batches left unmerged in the store that did not fit the queue at start.
        self.refill_from_store = False
        #: Library size by domain, refreshed after every merge and add: `status` reads it.
        self.library_sizes: dict[str, int] = {}
        self.peers: dict[ID, PeerState] = {}
        #: Peers whose operator left the live set: refused, not dialled, not listed.
        self.dropped_peers: dict[ID, Dropped] = {}
        self.last_sync_ms: int | None = None
        self.started_ms = now_ms()
        #: One library call at a time: the library is not thread-safe.
        self.lib_limiter = trio.CapacityLimiter(1)
        self.repair_wakeup = Wakeup()
        self.broadcast_wakeup = Wakeup()
        self.round_wakeup = Wakeup()
        self.stopped = trio.Event()

    def peer(self, peer: ID) -> PeerState:
        return self.peers.setdefault(peer, PeerState())


def read_library_sizes(library) -> dict[str, int]:
    """Library size by domain, for `NodeState.library_sizes` (call in a thread holding the
    library limiter)."""
    sizes = library.stats()["domains"]
    return {d: int(v["count"]) if isinstance(v, dict) else int(v) for d, v in sizes.items()}
