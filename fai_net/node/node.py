"""The FAI node: one trio process that owns a library, a batch store and a libp2p host.

`Node` is the facade. Its resources (identity, library, books, batch store, gate, host, the
metrics and OTLP servers) are opened as one async context (`resources.py`), and its work is
done by parts that each own one job and run in the node's nursery:
- `receive.py`: the gossip validator and the gate's admission hooks; an accepted batch
  joins the fair pending queue (`pending.py`);
- `subscriptions.py`: one topic per domain, with a drain task each (py-libp2p's 32-slot
  subscription channel would otherwise drop messages when full);
- `rounds.py`: merge rounds, at most `round_rows` rows from the queue -> DeltaSoup (its
  re-embedding in a worker thread) -> library merge, then the batches marked merged;
- `broadcast.py`: local experiences into the outbox; a domain's outbox is published every
  `broadcast_interval_s` or as soon as it holds `broadcast_threshold` experiences, paced
  so no publish is dropped;
- `repair_sync.py`: anti-entropy with every connected peer over `/fai/repair/1.0.0`;
- `discovery.py`: seeds and live registry advertisements, never a dropped operator's node;
  membership refreshed every `membership_refresh_s` or as soon as the registry logs a
  slash, jail or unbond, peers whose operator left the live set dropped for good;
- `status.py`, `upkeep.py`, `actions.py`: status and metrics, housekeeping loops, the
  control socket's actions (their table built once).
What the parts share in memory (`state.py`) is created with the node, not when it runs.

The library is not thread-safe, so every library call goes through one worker thread at a
time (`NodeState.lib_limiter`); the batch store and the reputation book are touched only on
the event loop. The control plane never waits on merging: DeltaSoup's re-embedding runs
outside the library limiter, a round holds it only to insert at most `round_rows` rows,
`add` embeds outside it, and `status` answers from memory.
"""

from __future__ import annotations

import logging
import os
import signal
from dataclasses import dataclass

import trio

from fai_core.errors import FaiError
from fai_net.admission.membership import Membership
from fai_net.api.control import serve_control
from fai_net.node.actions import ControlActions
from fai_net.node.baselines import BaselineResolver
from fai_net.node.broadcast import Broadcaster
from fai_net.node.config import NodeConfig
from fai_net.node.discovery import MEMBERSHIP_WATCH_S, Discovery
from fai_net.node.peer_keys import peer_id_text as _peer_id_text
from fai_net.node.receive import Receiver
from fai_net.node.repair_sync import (
    REPAIR_FETCH,
    REPAIR_MAX_PAGES,
    REPAIR_PAGE,
    REPAIR_PEER_BUDGET_S,
    RepairSync,
)
from fai_net.node.resources import (
    AggregatorFactory,
    NodeResources,
    open_node_resources,
    soup_config,
)
from fai_net.node.rounds import MergeRounds
from fai_net.node.state import NodeState, PeerState, Pending, RoundReport
from fai_net.node.status import NodeStatus
from fai_net.node.subscriptions import Subscriptions
from fai_net.node.upkeep import PRUNE_MARGIN_MS, Upkeep
from fai_net.p2p import repair

__all__ = [
    "MEMBERSHIP_WATCH_S",
    "PRUNE_MARGIN_MS",
    "REPAIR_FETCH",
    "REPAIR_MAX_PAGES",
    "REPAIR_PAGE",
    "REPAIR_PEER_BUDGET_S",
    "Node",
    "PeerState",
    "Pending",
    "RoundReport",
    "_peer_id_text",
    "run_node",
    "soup_config",
]

log = logging.getLogger(__name__)


@dataclass
class NodeParts:
    """A running node's parts, built once its resources are open."""

    res: NodeResources
    resolver: BaselineResolver
    receiver: Receiver
    subscriptions: Subscriptions
    rounds: MergeRounds
    broadcaster: Broadcaster
    repair: RepairSync
    discovery: Discovery
    status: NodeStatus
    upkeep: Upkeep
    actions: ControlActions

    @classmethod
    def build(cls, res: NodeResources, state: NodeState) -> NodeParts:
        discovery = Discovery(res, state)
        resolver = BaselineResolver(res, state, discovery.connected_peers)
        receiver = Receiver(res, state, resolver)
        broadcaster = Broadcaster(res, state)

        def baselines() -> dict:
            return {**resolver.status(), "blocks_made": broadcaster.publisher.blocks_made}

        status = NodeStatus(res, state, discovery.connected_peers, discovery.connections, baselines)
        parts = dict(
            resolver=resolver,
            receiver=receiver,
            subscriptions=Subscriptions(res, state, receiver.validator),
            rounds=MergeRounds(res, state, resolver),
            broadcaster=broadcaster,
            repair=RepairSync(res, state, receiver, discovery.connected_peers),
            discovery=discovery,
            status=status,
            upkeep=Upkeep(res, state, status),
        )
        actions = ControlActions(
            res,
            state,
            status=status,
            broadcaster=parts["broadcaster"],
            subscriptions=parts["subscriptions"],
            repair=parts["repair"],
            rounds=parts["rounds"],
        )
        return cls(res=res, actions=actions, **parts)

    def loops(self) -> tuple:
        """The node's long-running tasks, in the order they start."""
        return (
            self.rounds.loop,
            self.broadcaster.loop,
            self.repair.loop,
            self.resolver.loop,
            self.discovery.discovery_loop,
            self.discovery.membership_loop,
            self.res.relay_client.keep_reserved,
            self.upkeep.metrics_loop,
            self.upkeep.prune_loop,
            self.res.ingest.run,
            self.upkeep.calibration_loop,
        )


class _Via:
    """A `Node` attribute read from one of its running parts (`Node.part.name`)."""

    def __init__(self, part: str, name: str | None = None) -> None:
        self.part, self.name = part, name

    def __set_name__(self, owner, name: str) -> None:
        self.name = self.name or name

    def __get__(self, node, owner=None):
        if node is None:
            return self
        return getattr(getattr(node.parts, self.part), self.name)


class Node:
    """One FAI node: the facade tests, benchmarks and `run_node` hold.

    What the parts share (`state`) exists from construction; the library, store, gate, host
    and aggregator are opened by `run()` as one async context and exist only inside it
    (`parts` raises before). `aggregator` builds the merge-round aggregator (default
    DeltaSoup: `fai_net.node.resources.deltasoup_aggregator`).
    """

    def __init__(
        self,
        config: NodeConfig,
        *,
        embedder=None,
        membership: Membership | None = None,
        aggregator: AggregatorFactory | None = None,
    ):
        self.config = config
        self._embedder = embedder
        self._membership = membership
        self._aggregator = aggregator
        self.state = NodeState(config)
        self._parts: NodeParts | None = None

    @property
    def parts(self) -> NodeParts:
        if self._parts is None:
            raise RuntimeError("the node is not running: its parts exist inside run()")
        return self._parts

    # -- start-up and shutdown -------------------------------------------------------------

    async def run(self, *, handle_signals: bool = True, task_status=trio.TASK_STATUS_IGNORED):
        cfg, state = self.config, self.state
        async with open_node_resources(
            cfg,
            state,
            add_experiences=self.add_experiences,
            embedder=self._embedder,
            membership=self._membership,
            aggregator=self._aggregator,
        ) as res:
            parts = self._parts = NodeParts.build(res, state)
            res.host.set_stream_handler(repair.PROTOCOL_ID, repair.make_handler(lambda: res.store))
            async with trio.open_nursery() as nursery:
                await nursery.start(serve_control, str(cfg.socket_path), parts.actions.handle)
                parts.rounds.requeue_unmerged()
                await nursery.start(parts.subscriptions.run)
                for loop in parts.loops():
                    nursery.start_soon(loop)
                if handle_signals:
                    nursery.start_soon(_signal_watcher, nursery.cancel_scope)
                nursery.start_soon(_stop_watcher, state.stopped, nursery.cancel_scope)
                res.write_ready_file(state.domains)
                log.info("node %s up on %s", self.peer_id, self.addrs)
                task_status.started(self)

    def stop(self) -> None:
        self.state.stopped.set()

    # -- what the node shares in memory (exists before run) ----------------------------------

    @property
    def stopped(self) -> trio.Event:
        return self.state.stopped

    @property
    def domains(self) -> list[str]:
        return self.state.domains

    @property
    def pending(self):
        return self.state.pending

    @property
    def peers(self):
        return self.state.peers

    @property
    def dropped_peers(self):
        return self.state.dropped_peers

    @property
    def last_sync_ms(self) -> int | None:
        return self.state.last_sync_ms

    @property
    def started_ms(self) -> int:
        return self.state.started_ms

    # -- resources and parts of the running node ---------------------------------------------

    identity = _Via("res")
    embedder = _Via("res")
    metrics = _Via("res")
    library = _Via("res")
    outcomes = _Via("res")
    store = _Via("res")
    recaller = _Via("res")
    reputation = _Via("res")
    soup = _Via("res")
    membership = _Via("res")
    budget = _Via("res")
    gate = _Via("res")
    host = _Via("res")
    pubsub = _Via("res")
    router = _Via("res")
    ingest = _Via("res")
    otlp = _Via("res")
    metrics_port = _Via("res")
    peer_id = _Via("res")
    addrs = _Via("res")

    _validator = _Via("receiver", "validator")
    subscribe = _Via("subscriptions")
    unsubscribe = _Via("subscriptions")
    run_round = _Via("rounds")
    _round_loop = _Via("rounds", "loop")
    broadcast = _Via("broadcaster")
    sync_all = _Via("repair")
    sync_with = _Via("repair")
    _repair_backoff = _Via("repair", "backoff")
    connected_peers = _Via("discovery")
    status = _Via("status")
    peer_table = _Via("status")
    refresh_metrics = _Via("status")
    receive = _Via("actions", "pull")

    async def add_experiences(self, items: list[dict]) -> dict:
        """Embed and store the agent's own experiences; they join the domain's outbox."""
        return await self.parts.broadcaster.add_experiences(items)

    async def publish_raw(self, domain: str, data: bytes) -> None:
        """Publish bytes as they are (tests and the rogue-peer tool); not for honest use. The
        topic's wire version is the envelope's, or the node's own for bytes that say none."""
        from fai_core.wire import envelope_version
        from fai_net.p2p.topics import topic_for

        version = envelope_version(data) or self.config.wire_version
        await self.parts.broadcaster.publish(topic_for(domain, version), data)


async def _signal_watcher(scope: trio.CancelScope) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            log.info("signal %d: shutting down", signum)
            scope.cancel()
            return


async def _stop_watcher(stopped: trio.Event, scope: trio.CancelScope) -> None:
    await stopped.wait()
    scope.cancel()


def run_node(config: NodeConfig) -> None:
    """Blocking entry point for `fai node run`: runs until SIGINT/SIGTERM or `stop`."""
    os.umask(0o077)  # every file the node creates is the owner's alone (0600)
    try:
        trio.run(Node(config).run)
    except BaseExceptionGroup as group:
        # A start-up refusal raised inside a nursery (socket in use, bad address) is a
        # user error: surface the first one plainly instead of a task-group traceback.
        for leaf in _leaves(group):
            if isinstance(leaf, FaiError | ValueError):
                raise leaf from None
        raise


def _leaves(group: BaseExceptionGroup):
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            yield from _leaves(exc)
        else:
            yield exc
