"""Everything a node opens, opened as one async context and closed in one fixed order.

The node used to create its library, store, gate, host and the rest as attributes inside
`run()`, so they existed only once it had started, and its shutdown had to ask which of them
existed (`hasattr`). Here `open_node_resources` opens them in order on an `AsyncExitStack`,
registering each one's close as it opens: whatever opened is closed, nothing else, and the
closing order is the old shutdown's: unlink the ready file and control socket, stop the
metrics and OTLP servers, close the telemetry ingest, save reputations, close the event log,
the batch store, the outcome book, and last the library (in its worker thread).

The aggregator is built here too, by a factory the caller may choose (`AggregatorFactory`;
the default, `deltasoup_aggregator`, is DeltaSoup with the node's settings), so a node can
run another `fai_core.aggregation.Aggregator` the way the simulator does.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Any

import trio
from libp2p.peer.id import ID
from libp2p.tools.anyio_service import background_trio_service

from fai_core import bitdelta
from fai_core.aggregation import Aggregator
from fai_core.clock import now_ms
from fai_core.deltasoup import DeltaSoup, DeltaSoupConfig
from fai_core.deltasoup_history import SenderHistory
from fai_core.domain_anchors import builtin_anchors
from fai_core.embed_cache import CachingEmbedder
from fai_core.library import ExperienceLibrary
from fai_core.reputation import ReputationBook, atomic_write_json
from fai_net.admission.budgets import ReceiveBudget
from fai_net.admission.gate import BatchGate, GatePolicy
from fai_net.admission.membership import Membership, OpenMembership, RegistryMembership
from fai_net.admission.store import BatchStore
from fai_net.api.metrics import NodeMetrics, serve_metrics
from fai_net.api.outcome_book import OutcomeBook
from fai_net.api.recall import Recall
from fai_net.node.config import NodeConfig
from fai_net.node.events import EventLog
from fai_net.node.identity import NodeIdentity, load_or_create, public_key_of
from fai_net.node.peer_keys import peer_id_text
from fai_net.node.receive import Admission
from fai_net.node.state import NodeState
from fai_net.p2p.addresses import circuit_address
from fai_net.p2p.gossip import GossipSettings, build_host, refuse_peers, running
from fai_net.p2p.relay import FleetRelayProtocol, RelayClient, RelayServerLimits
from fai_net.telemetry.ingest import TelemetryIngest
from fai_net.telemetry.spool import SpoolWriter

#: Every part logs as the node always has (the CLI's log lines name the logger).
log = logging.getLogger("fai_net.node.node")


@dataclass
class NodeResources:
    """What a running node holds open. Every field is set once the context is entered."""

    config: NodeConfig
    identity: NodeIdentity
    embedder: TimedEmbedder
    metrics: NodeMetrics
    library: ExperienceLibrary
    outcomes: OutcomeBook
    store: BatchStore
    events: EventLog
    recaller: Recall
    reputation: ReputationBook
    soup: Aggregator
    membership: Membership
    budget: ReceiveBudget
    admission: Admission
    gate: BatchGate
    host: Any
    pubsub: Any
    router: Any
    relay_client: RelayClient
    relay_server: FleetRelayProtocol | None = None
    ingest: TelemetryIngest | None = None
    metrics_server: Any = None
    metrics_port: int | None = None
    otlp: Any = None
    otlp_writer: SpoolWriter | None = None

    @property
    def peer_id(self):
        return self.identity.peer_id

    @property
    def sender_history(self) -> SenderHistory | None:
        """DeltaSoup's sender histories (`sender_history`)."""
        return sender_history(self.soup)

    @property
    def addrs(self) -> list[str]:
        """Where peers should dial this node, each with /p2p/<peer id>: the announced
        addresses if configured (`--announce`); else, for a node using relays, its circuit
        address at each (its own addresses are the ones peers cannot dial); else the
        addresses the host is bound to."""
        announced = self.config.announce or tuple(map(circuit_address, self.config.relays))
        if announced:
            return [f"{a}/p2p/{self.peer_id}" for a in announced]
        return self.listen_addrs

    @property
    def listen_addrs(self) -> list[str]:
        return [str(a) for a in self.host.get_addrs()]

    def write_ready_file(self, domains: list[str]) -> None:
        """node.json: how to reach this node and what batches it accepts. `model`, `dim`
        and `group` are the fleet parameters a batch must carry (the gate refuses others
        as wrong_model): a client built from docs/wire-format.md reads them here instead
        of copying them from a received batch."""
        atomic_write_json(
            self.config.ready_file,
            {
                "pid": os.getpid(),
                "peer_id": str(self.peer_id),
                "public_key": self.identity.public_key.hex(),
                "addrs": self.addrs,
                "listen_addrs": self.listen_addrs,
                "domains": domains,
                "control_socket": str(self.config.socket_path),
                "metrics_port": self.metrics_port,
                "otlp_port": None if self.otlp is None else self.otlp.port,
                "model": self.embedder.model_id,
                "dim": self.gate.policy.dimension,
                "group": self.gate.policy.group,
                "membership": self.membership.mode,
            },
        )


@asynccontextmanager
async def open_node_resources(
    config: NodeConfig,
    state: NodeState,
    *,
    add_experiences: Callable[[list[dict]], Awaitable[dict]],
    embedder=None,
    membership: Membership | None = None,
    aggregator: AggregatorFactory | None = None,
) -> AsyncIterator[NodeResources]:
    """Open the node's resources in start-up order; the host is listening on entry."""
    started = False
    try:
        async with AsyncExitStack() as stack:
            res = await _open_local(stack, config, state, embedder, membership, aggregator)
            history = res.sender_history
            if history is not None:
                stack.callback(history.save)  # after the rounds stopped (callbacks run LIFO)
            res.ingest = TelemetryIngest(
                config.spool_path,
                add_experiences,
                lambda: list(state.domains),
                idle_ms=int(config.telemetry_idle_s * 1000),
            )
            stack.callback(res.ingest.close)
            started = True
            stack.callback(_stop_services, res)
            if config.metrics_port is not None:
                res.metrics_server, res.metrics_port = serve_metrics(
                    res.metrics, config.metrics_port
                )
            _start_otlp(res)
            await stack.enter_async_context(
                running(res.host, res.pubsub, res.router, config.listen)
            )
            await _start_relay_services(stack, res)
            yield res
    finally:
        if started:
            log.info("node stopped")


async def _open_local(
    stack: AsyncExitStack, cfg: NodeConfig, state: NodeState, embedder, membership, aggregator
) -> NodeResources:
    """Identity, library, books and store, membership, the gate and the (unstarted) host."""
    _private_dir(cfg.data_dir)
    identity = load_or_create(cfg.data_dir)
    timed = TimedEmbedder(_cached(embedder or _make_embedder(cfg.embedder)))
    library = await trio.to_thread.run_sync(
        lambda: ExperienceLibrary.open(
            cfg.data_dir / "library", timed.dimension, timed, capacity=cfg.library_capacity
        )
    )
    stack.push_async_callback(_close_library, library, state.lib_limiter)
    outcomes = OutcomeBook(cfg.data_dir / "outcomes.sqlite")
    stack.callback(outcomes.close)
    store = BatchStore.open(cfg.data_dir / "batches")
    stack.callback(store.close)
    events = EventLog(cfg.event_log)
    stack.callback(events.close)
    own_newest = store.newest_seq(identity.public_key)
    if own_newest is not None:
        store.ensure_seq_above(own_newest)
    reputation = ReputationBook(
        cfg.data_dir / "reputation.json",
        recovery_half_life_ms=cfg.reputation_half_life_ms,
        clock_ms=now_ms,
    )
    stack.callback(reputation.save)
    metrics = NodeMetrics()
    timed.metrics = metrics
    membership = membership or await trio.to_thread.run_sync(_make_membership, cfg)
    await trio.to_thread.run_sync(membership.refresh)
    budget = ReceiveBudget(cfg.budgets, forwarders=membership.mode == "open")
    admission = Admission(cfg, state, identity, membership, budget)
    host, pubsub, router = build_host(
        identity.key_pair, GossipSettings(mdns=cfg.mdns, seen_ttl=cfg.seen_ttl_s)
    )
    refuse_peers(host, state.dropped_peers.__contains__)
    soup = (aggregator or deltasoup_aggregator)(timed, reputation, cfg)
    relay_server = None
    if cfg.relay_server:
        limits = RelayServerLimits(cfg.relay_reservations, cfg.relay_circuits)
        relay_server = FleetRelayProtocol(host, limits, _fleet_member(membership))
    return NodeResources(
        config=cfg,
        identity=identity,
        embedder=timed,
        metrics=metrics,
        library=library,
        outcomes=outcomes,
        store=store,
        events=events,
        recaller=Recall(library, outcomes, peer_id_text, refused=_refused_check(soup)),
        reputation=reputation,
        soup=soup,
        membership=membership,
        budget=budget,
        admission=admission,
        gate=_open_gate(cfg, store, membership, reputation, timed, metrics, admission),
        host=host,
        pubsub=pubsub,
        router=router,
        relay_client=RelayClient(host, cfg.relays),
        relay_server=relay_server,
    )


def sender_history(soup: Aggregator) -> SenderHistory | None:
    """The aggregator's sender histories, if it keeps any: DeltaSoup does, another
    `Aggregator` run in its place (`AggregatorFactory`) may not."""
    return getattr(soup, "history", None)


def _refused_check(soup: Aggregator) -> Callable[[str, bytes], bool] | None:
    """What recall asks before it offers a row: does its source stand refused in the row's
    domain? Only an aggregator that keeps sender histories can say."""
    history = sender_history(soup)
    return None if history is None else history.refused


def _fleet_member(membership: Membership) -> Callable[[ID], bool]:
    """Who this node relays for: anyone in open mode, else peers of live operators."""
    if membership.mode == "open":
        return lambda peer: True

    def admits(peer: ID) -> bool:
        key = public_key_of(peer)
        return key is not None and membership.operator_of(key) is not None

    return admits


async def _start_relay_services(stack: AsyncExitStack, res: NodeResources) -> None:
    """The circuit relay protocols, on the running host: accepting circuits addressed to
    this node when it uses relays, and serving as a relay when configured."""
    if res.relay_client.accepts_circuits:
        await stack.enter_async_context(background_trio_service(res.relay_client.stop))
    if res.relay_server is not None:
        await stack.enter_async_context(background_trio_service(res.relay_server))


#: DeltaSoup's sender histories (fai_core.deltasoup_history) in the node's data directory.
SENDER_HISTORY_FILE = "sender_history.npz"

#: Builds the node's aggregator from its embedder (timed), its reputation book and settings.
AggregatorFactory = Callable[[Any, ReputationBook, NodeConfig], Aggregator]


def deltasoup_aggregator(embedder, reputation: ReputationBook, cfg: NodeConfig) -> DeltaSoup:
    """The default: DeltaSoup with the thresholds of `soup_config` and the node's caps, its
    sender histories kept in the data directory (the rounds save them) and judged against
    the built-in domains' anchors (fai_core.domain_anchors)."""
    path = cfg.data_dir / SENDER_HISTORY_FILE
    anchors = builtin_anchors(embedder)
    if anchors is None:
        log.warning(
            "domain anchors off: %s does not separate the built-in domains", embedder.model_id
        )
    return DeltaSoup(
        embedder,
        reputation=reputation,
        config=soup_config(embedder.model_id, cfg.max_age_ms, max_cap=cfg.max_cap_rows),
        history=SenderHistory(embedder.dimension, path, anchors=anchors),
    )


def _open_gate(cfg, store, membership, reputation, embedder, metrics, admission) -> BatchGate:
    return BatchGate(
        store,
        membership,
        reputation,
        GatePolicy(
            embedder.model_id,
            embedder.dimension,
            max_age_ms=cfg.max_age_ms,
            group=bitdelta.DEFAULT_GROUP_SIZE,
            repair_max_age_ms=cfg.repair_max_age_ms,
        ),
        on_reject=metrics.reject,
        on_equivocation=admission.on_equivocation,
        admission=admission.admit,
    )


async def _close_library(library: ExperienceLibrary, limiter: trio.CapacityLimiter) -> None:
    with trio.CancelScope(shield=True):
        await trio.to_thread.run_sync(library.close, limiter=limiter)


def _start_otlp(res: NodeResources) -> None:
    """The OTLP/HTTP receiver, when configured: spans go straight to the spool."""
    cfg = res.config
    if cfg.otlp_port is None:
        return
    from fai_net.telemetry.otlp_receiver import serve_otlp

    res.otlp_writer = SpoolWriter(cfg.spool_path)
    res.otlp = serve_otlp(cfg.otlp_port, res.otlp_writer, cfg.telemetry_policy())


def _stop_services(res: NodeResources) -> None:
    """The first of the shutdown: the node stops being findable, then stops serving."""
    for path in (res.config.ready_file, res.config.socket_path):
        path.unlink(missing_ok=True)
    if res.metrics_server is not None:
        res.metrics_server.stop()
    if res.otlp is not None:
        res.otlp.stop()
        res.otlp_writer.close()


class TimedEmbedder:
    """Counts the wall time of every embed call: on 2 cores re-embedding received texts
    dominates the receive cost, and the benchmark reports it apart. The node gives it a
    `CachingEmbedder` (fai_core/embed_cache.py), so a text that arrives again (from another
    sender, by repair, after a deferral) is not embedded again; hits and misses are counted
    per stage beside the time."""

    def __init__(self, inner: CachingEmbedder) -> None:
        self.inner = inner
        self.model_id, self.dimension = inner.model_id, inner.dimension
        #: Set once the node's metrics exist (after the library opened), as before.
        self.metrics: NodeMetrics | None = None

    def embed(self, texts):
        """Called by DeltaSoup for received texts (stage `embed`)."""
        return self.embed_as("embed", texts)

    def embed_as(self, stage: str, texts):
        """Wall time: torch may use intra-op threads that thread_time would not see."""
        started = time.perf_counter()
        try:
            vectors, hits, misses = self.inner.embed_counted(texts)
            if self.metrics is not None:
                self.metrics.embed_cache(stage, hits, misses)
            return vectors
        finally:
            if self.metrics is not None:
                self.metrics.spent(stage, time.perf_counter() - started)


def soup_config(model_id: str, max_age_ms: int, *, max_cap: int | None = None) -> DeltaSoupConfig:
    """DeltaSoup's thresholds for the fleet's model: the same for every model.

    `direct_min_cos` bounds cos(BitDelta reconstruction, receiver's own embedding of the
    text): honest MiniLM rows measure >= 0.766 (docs/deltasoup.md), the hashing test
    embedder (v2, dense) >= 0.75 on the shipped corpus, both above the default 0.6.
    """
    # The node's gate and batch store own replay and sequence checks (durably, with the
    # repair window in mind); DeltaSoup's in-memory seq window would refuse old batches that
    # repair legitimately delivers late, so it is opened wide here.
    wide = 1 << 62
    return DeltaSoupConfig(max_age_ms=max_age_ms, seq_window=wide, max_cap=max_cap)


def _private_dir(path) -> None:
    """The data directory holds keys, batches, evidence and the library: owner only."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)


def _make_embedder(name: str):
    from fai_core.embedding import make_embedder

    return make_embedder(name)


def _cached(embedder) -> CachingEmbedder:
    """The node's embedder behind the text cache (once: a caller may pass a cached one)."""
    return embedder if isinstance(embedder, CachingEmbedder) else CachingEmbedder(embedder)


def _make_membership(cfg: NodeConfig) -> Membership:
    if cfg.open_membership:
        log.warning("open membership: any correctly signed batch is accepted (development)")
        return OpenMembership()
    from eth_account import Account
    from web3 import Web3

    from fai_net.registry.client import RegistryClient

    w3 = Web3(Web3.HTTPProvider(cfg.rpc_url, request_kwargs={"timeout": 10}))
    client = RegistryClient(w3, cfg.registry)
    account = None
    if cfg.operator_key_file is not None:
        account = Account.from_key(cfg.operator_key_file.read_text().strip())
    return RegistryMembership(client, account)
