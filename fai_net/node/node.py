"""The FAI node: one trio process that owns a library, a batch store and a libp2p host.

Tasks (one nursery, one idea each):
- one drain task per subscribed domain: the gossip validator has already decided on and
  stored each message; the drain only empties py-libp2p's 32-slot subscription channel,
  which would otherwise drop messages when full;
- the round loop: at most `round_rows` rows from the fair pending queue -> DeltaSoup (its
  re-embedding of received texts is CPU-bound, in a worker thread) -> library merge, then
  marks the batches merged;
- the broadcast loop: a domain's outbox is published every `broadcast_interval_s` or as
  soon as it holds `broadcast_threshold` experiences, paced so no publish is dropped;
- the repair loop: anti-entropy with every connected peer over `/fai/repair/1.0.0`;
- discovery: seeds and live registry advertisements, never a dropped operator's node;
- membership: a refresh (chain reads, in a worker thread) every `membership_refresh_s`, or
  as soon as the registry logs a slash, jail or unbond; then peers whose operator left the
  live set are dropped for good (hung up on, forgotten by gossipsub, refused on
  reconnect, not listed) and readmitted if it comes back; metrics, the control socket.

The library is not thread-safe, so every library call goes through one worker thread at a
time (`_lib_limiter`); the batch store and the reputation book are touched only on the event
loop. The control plane never waits on merging: DeltaSoup's re-embedding runs outside the
library limiter, a round holds it only to insert at most `round_rows` rows, `add` embeds
outside it, and `status` answers from memory.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import trio
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import info_from_p2p_addr

from fai_core import bitdelta, dagcbor
from fai_core.clock import now_ms
from fai_core.deltasoup import DeltaSoup, DeltaSoupConfig, Drop
from fai_core.errors import FaiError
from fai_core.experience import Experience, domain_problem
from fai_core.library import ExperienceLibrary
from fai_core.reputation import ReputationBook
from fai_core.wire import Batch, decode_envelope, encode_batch
from fai_net.admission import evidence
from fai_net.admission.budgets import ReceiveBudget
from fai_net.admission.gate import (
    TEMPORARY_REFUSALS,
    BatchGate,
    GatePolicy,
    GateResult,
    RefusalCache,
    Verdict,
)
from fai_net.admission.membership import Dropped, Membership, OpenMembership, RegistryMembership
from fai_net.admission.store import BatchStore
from fai_net.api.control import ControlError, UnknownAction, serve_control, validate_dso_args
from fai_net.api.metrics import NodeMetrics, serve_metrics
from fai_net.api.outcome_book import OutcomeBook
from fai_net.api.recall import CALIBRATION_TTL_S, Recall, RecallQuery
from fai_net.node import seq_clock
from fai_net.node.config import NodeConfig
from fai_net.node.identity import NodeIdentity, load_or_create, public_key_of
from fai_net.node.pending import FairQueue
from fai_net.p2p import repair
from fai_net.p2p.gossip import GossipSettings, build_host, parse_multiaddrs, refuse_peers, running
from fai_net.p2p.topics import domain_of, topic_for
from fai_net.ratelog import RateLimitedLog
from fai_net.telemetry.ingest import TelemetryIngest
from fai_net.telemetry.spool import SpoolWriter

log = logging.getLogger(__name__)
_clock_log = RateLimitedLog(log, interval_s=60.0)
_membership_log = RateLimitedLog(log, interval_s=60.0)

REPAIR_PAGE = 512
REPAIR_FETCH = 64
#: Pages per peer per pass, and seconds per peer per pass: bounds what a peer can cost us.
REPAIR_MAX_PAGES = 64
REPAIR_PEER_BUDGET_S = 60
#: Between membership refreshes, how often to look for a registry event that ends an
#: operator's liveness (a slash, a jail, an unbond): one cheap chain read.
MEMBERSHIP_WATCH_S = 1.0
#: Stored batches are kept this long beyond the repair window, so that an equivocation
#: on a batch repair may still deliver is always caught against the stored first one.
PRUNE_MARGIN_MS = 24 * 3_600_000


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


class Node:
    def __init__(self, config: NodeConfig, *, embedder=None, membership: Membership | None = None):
        self.config = config
        self._embedder = embedder
        self._membership = membership
        self.identity: NodeIdentity | None = None
        self.domains: list[str] = []
        self.pending: FairQueue[Pending] = FairQueue(config.queue)
        #: Batches left unmerged in the store that did not fit the queue at start.
        self._refill_from_store = False
        #: Library size by domain, refreshed after every merge and add: `status` reads it.
        self._library_sizes: dict[str, int] = {}
        self.peers: dict[ID, PeerState] = {}
        #: Peers whose operator left the live set: refused, not dialled, not listed.
        self.dropped_peers: dict[ID, Dropped] = {}
        #: Set when this node's own operator is not live (logged once per change).
        self._self_dropped: Dropped | None = None
        self.last_sync_ms: int | None = None
        self.started_ms = now_ms()
        self._lib_limiter = trio.CapacityLimiter(1)
        self._subscriptions: dict[str, trio.CancelScope] = {}
        self._last_broadcast: dict[str, float] = {}
        self._publish_lock = trio.Lock()
        self._broadcast_locks: dict[str, trio.Lock] = {}
        self._round_lock = trio.Lock()
        self._repair_wakeup = trio.Event()
        self._broadcast_wakeup = trio.Event()
        self._round_wakeup = trio.Event()
        self._refused = RefusalCache(ttl_s=config.seen_ttl_s)
        self._repair_backoff = repair.RepairBackoff()
        self._nursery: trio.Nursery | None = None
        self.otlp = None
        self.stopped = trio.Event()
        self._events = None
        if config.event_log is not None:
            self._events = open(config.event_log, "a", buffering=1)  # noqa: SIM115

    # -- start-up and shutdown -------------------------------------------------------------

    async def run(self, *, handle_signals: bool = True, task_status=trio.TASK_STATUS_IGNORED):
        cfg = self.config
        _private_dir(cfg.data_dir)
        self.identity = load_or_create(cfg.data_dir)
        embedder = _TimedEmbedder(self._embedder or _make_embedder(cfg.embedder), self)
        self.embedder = embedder
        self.library = await trio.to_thread.run_sync(
            lambda: ExperienceLibrary.open(
                cfg.data_dir / "library",
                embedder.dimension,
                embedder,
                capacity=cfg.library_capacity,
            )
        )
        self.store = BatchStore.open(cfg.data_dir / "batches")
        self.outcomes = OutcomeBook(cfg.data_dir / "outcomes.sqlite")
        self.recaller = Recall(self.library, self.outcomes, _peer_id_text)
        own_newest = self.store.newest_seq(self.identity.public_key)
        if own_newest is not None:
            self.store.ensure_seq_above(own_newest)
        self.reputation = ReputationBook(
            cfg.data_dir / "reputation.json",
            recovery_half_life_ms=cfg.reputation_half_life_ms,
            clock_ms=now_ms,
        )
        self.soup = DeltaSoup(
            embedder,
            reputation=self.reputation,
            config=soup_config(embedder.model_id, cfg.max_age_ms, max_cap=cfg.max_cap_rows),
        )
        self.metrics = NodeMetrics()
        self.membership = self._membership or await trio.to_thread.run_sync(_make_membership, cfg)
        await trio.to_thread.run_sync(self.membership.refresh)
        self.budget = ReceiveBudget(cfg.budgets, forwarders=self.membership.mode == "open")
        self.gate = BatchGate(
            self.store,
            self.membership,
            self.reputation,
            GatePolicy(
                embedder.model_id,
                embedder.dimension,
                max_age_ms=cfg.max_age_ms,
                group=bitdelta.DEFAULT_GROUP_SIZE,
                repair_max_age_ms=cfg.repair_max_age_ms,
            ),
            on_reject=self.metrics.reject,
            on_equivocation=self._on_equivocation,
            admission=self._admission,
        )
        self.host, self.pubsub, self.router = build_host(
            self.identity.key_pair, GossipSettings(mdns=cfg.mdns, seen_ttl=cfg.seen_ttl_s)
        )
        refuse_peers(self.host, self.dropped_peers.__contains__)
        self.ingest = TelemetryIngest(
            cfg.spool_path,
            self.add_experiences,
            lambda: list(self.domains),
            idle_ms=int(cfg.telemetry_idle_s * 1000),
        )
        metrics_server = None
        try:
            if cfg.metrics_port is not None:
                metrics_server, self.metrics_port = serve_metrics(self.metrics, cfg.metrics_port)
            else:
                self.metrics_port = None
            self.otlp = self._start_otlp()
            async with running(self.host, self.pubsub, self.router, cfg.listen):
                self.host.set_stream_handler(
                    repair.PROTOCOL_ID, repair.make_handler(lambda: self.store)
                )
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    await nursery.start(serve_control, str(cfg.socket_path), self._control)
                    self._requeue_unmerged()
                    for domain in dict.fromkeys([*cfg.domains, *self._saved_domains()]):
                        await self.subscribe(domain)
                    for loop in (
                        self._round_loop,
                        self._broadcast_loop,
                        self._repair_loop,
                        self._discovery_loop,
                        self._membership_loop,
                        self._metrics_loop,
                        self._prune_loop,
                        self.ingest.run,
                        self._calibration_loop,
                    ):
                        nursery.start_soon(loop)
                    if handle_signals:
                        nursery.start_soon(self._signal_watcher, nursery.cancel_scope)
                    nursery.start_soon(self._stop_watcher, nursery.cancel_scope)
                    self._write_ready_file()
                    log.info("node %s up on %s", self.peer_id, self.addrs)
                    task_status.started(self)
        finally:
            with trio.CancelScope(shield=True):
                await self._shutdown(metrics_server)

    async def _shutdown(self, metrics_server) -> None:
        for path in (self.config.ready_file, self.config.socket_path):
            path.unlink(missing_ok=True)
        if metrics_server is not None:
            metrics_server.stop()
        if getattr(self, "otlp", None) is not None:
            self.otlp.stop()
            self._otlp_writer.close()
        if hasattr(self, "ingest"):
            self.ingest.close()
        if hasattr(self, "reputation"):
            self.reputation.save()
        if self._events is not None:
            self._events.close()
        if hasattr(self, "store"):
            self.store.close()
        if hasattr(self, "outcomes"):
            self.outcomes.close()
        if hasattr(self, "library"):
            await trio.to_thread.run_sync(self.library.close, limiter=self._lib_limiter)
        log.info("node stopped")

    def _start_otlp(self):
        """The OTLP/HTTP receiver, when configured: spans go straight to the spool."""
        cfg = self.config
        if cfg.otlp_port is None:
            return None
        from fai_net.telemetry.otlp_receiver import serve_otlp

        self._otlp_writer = SpoolWriter(cfg.spool_path)
        return serve_otlp(cfg.otlp_port, self._otlp_writer, cfg.telemetry_policy())

    async def _signal_watcher(self, scope: trio.CancelScope) -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                log.info("signal %d: shutting down", signum)
                scope.cancel()
                return

    async def _stop_watcher(self, scope: trio.CancelScope) -> None:
        await self.stopped.wait()
        scope.cancel()

    def _event(self, kind: str, **fields) -> None:
        """One JSON line per batch event, for benchmarks and audits (off by default)."""
        if self._events is not None:
            fields.update(t=time.time(), ev=kind)
            self._events.write(json.dumps(fields) + "\n")

    def stop(self) -> None:
        self.stopped.set()

    @property
    def peer_id(self) -> ID:
        return self.identity.peer_id

    @property
    def addrs(self) -> list[str]:
        return [str(a) for a in self.host.get_addrs()]

    def _write_ready_file(self) -> None:
        from fai_core.reputation import atomic_write_json

        atomic_write_json(
            self.config.ready_file,
            {
                "pid": os.getpid(),
                "peer_id": str(self.peer_id),
                "public_key": self.identity.public_key.hex(),
                "addrs": self.addrs,
                "domains": self.domains,
                "control_socket": str(self.config.socket_path),
                "metrics_port": self.metrics_port,
                "otlp_port": None if self.otlp is None else self.otlp.port,
                "model": self.embedder.model_id,
                "membership": self.membership.mode,
            },
        )

    # -- subscriptions and the gossip validator --------------------------------------------

    async def subscribe(self, domain: str) -> bool:
        if domain in self._subscriptions:
            return False
        topic = topic_for(domain)
        self.gate.domains.add(domain)
        self.pubsub.set_topic_validator(topic, self._validator, False)
        subscription = await self.pubsub.subscribe(topic)
        scope = trio.CancelScope()
        self._subscriptions[domain] = scope
        self.domains = sorted(self._subscriptions)
        self._nursery.start_soon(self._drain, subscription, scope)
        # Repair cursors are kept per domain set, so the new set starts from the beginning
        # of every peer's inventory and fetches the domain's history.
        self._repair_wakeup.set()
        self._save_domains()
        if self.config.ready_file.exists():
            self._write_ready_file()
        return True

    async def unsubscribe(self, domain: str) -> bool:
        scope = self._subscriptions.pop(domain, None)
        if scope is None:
            return False
        scope.cancel()
        self.gate.domains.discard(domain)
        topic = topic_for(domain)
        await self.pubsub.unsubscribe(topic)
        self.pubsub.remove_topic_validator(topic)
        self.domains = sorted(self._subscriptions)
        self._save_domains()
        self._write_ready_file()
        return True

    @property
    def _domains_file(self):
        return self.config.data_dir / "subscriptions.json"

    def _saved_domains(self) -> list[str]:
        """Domains subscribed at run time by an earlier run (the flags' come first).

        A file that does not parse, or holds bad tags, is ignored with a warning: the
        node still starts with its configured domains."""
        try:
            saved = json.loads(self._domains_file.read_text())
        except FileNotFoundError:
            return []
        except (OSError, ValueError) as exc:
            log.warning("ignoring %s: %s", self._domains_file, exc)
            return []
        domains = saved.get("domains") if isinstance(saved, dict) else None
        if not isinstance(domains, list):
            return []
        return [d for d in domains if isinstance(d, str) and not domain_problem(d)]

    def _save_domains(self) -> None:
        from fai_core.reputation import atomic_write_json

        atomic_write_json(self._domains_file, {"domains": self.domains})

    async def _drain(self, subscription, scope: trio.CancelScope) -> None:
        with scope:
            while True:
                await subscription.get()

    def _validator(self, forwarder: ID, msg) -> bool:
        topic = msg.topicIDs[0] if msg.topicIDs else ""
        if forwarder == self.peer_id:
            return True  # our own publish: encoded, stored and committed by _broadcast
        now = now_ms()
        state = self.peers.setdefault(forwarder, PeerState())
        state.last_seen_ms = now
        key = hashlib.sha256(topic.encode() + b"\0" + msg.data).digest()
        if self._refused.seen(key, now / 1000):
            self.metrics.reject("refused_again")
            return False
        over = self.budget.before_decode(str(forwarder), len(msg.data), now / 1000)
        if over is not None:
            # Not cached as refused: the same batch from another forwarder may pass.
            self.metrics.reject(over)
            return False
        cpu = time.thread_time()
        forwarder_key = public_key_of(forwarder)
        result = self.gate.admit(
            msg.data,
            now,
            origin="gossip",
            topic_domain=domain_of(topic) or "",
            forwarder=forwarder_key,
        )
        self.metrics.spent("validate", time.thread_time() - cpu)
        if result.verdict is not Verdict.ACCEPT and result.reason != "forwarder_budget":
            self._refused.add(key, now / 1000)
        return self._after_admit(result, len(msg.data), "gossip", forwarder_key)

    def _principal(self, sender: bytes, forwarder: bytes | None, origin: str) -> object:
        """Whose turn a pending batch waits for (fai_net/node/pending.py): the sender in registry
        mode; in open mode, where keys are free, the peer that handed it to us."""
        if self.membership.mode != "open":
            return sender
        return (origin, forwarder) if forwarder is not None else (origin, sender)

    def _admission(self, signed, forwarder: bytes | None, origin: str, size: int) -> str | None:
        """The gate's last check before storing: queue room, then budgets (see the doc of
        fai_net/admission/budgets.py). Our own batches, back from peers, are always stored."""
        batch = signed.batch
        if batch.sender == self.identity.public_key:
            return None
        rows = len(batch)
        if not self.pending.fits(self._principal(batch.sender, forwarder, origin), rows):
            return "busy"
        return self.budget.admit(
            batch.sender,
            forwarder if origin == "gossip" else None,
            rows,
            size,
            now_ms() / 1000,
            self.membership.stake_weight(batch.sender),
        )

    def _after_admit(
        self, result: GateResult, size: int, origin: str, forwarder: bytes | None = None
    ) -> bool:
        accepted = result.verdict is Verdict.ACCEPT
        self.metrics.received(size, origin, batches=int(accepted))
        if accepted and result.signed.batch.sender == self.identity.public_key:
            # Our own batch, back from a peer after we lost our store: never reuse its seq.
            self.store.ensure_seq_above(result.signed.batch.seq)
            self.store.mark_merged([result.signed.batch.cid])
            return True
        if accepted:
            batch = result.signed.batch
            self._event("accepted", cid=batch.cid_text, origin=origin)
            principal = self._principal(batch.sender, forwarder, origin)
            self.pending.put(principal, Pending(batch, origin), len(batch))
            self.last_sync_ms = now_ms()
            if self.pending.rows >= self.config.round_rows:
                self._round_wakeup.set()
            return True
        if result.verdict is Verdict.IGNORE and result.reason == "duplicate":
            self.metrics.reject("duplicate")
        return False

    def _on_equivocation(self, result: GateResult) -> None:
        if result.conflicting is None:
            return
        try:
            eq = evidence.check(result.conflicting, result.signed.envelope)
            path = evidence.write(self.config.data_dir / "evidence", eq)
            log.warning("equivocation evidence written to %s", path)
        except (evidence.EvidenceError, OSError) as exc:
            log.error("could not record equivocation evidence: %s", exc)

    # -- the receive path ------------------------------------------------------------------

    def _requeue_unmerged(self) -> None:
        """Batches stored but not merged (when the node last stopped, or that did not fit the
        queue since) go into the pending queue, as many as fit; the rest wait in the store
        until the queue and DeltaSoup's backlog are empty again (`_round_loop`)."""
        limits = self.pending.limits
        room = limits.max_batches - len(self.pending)
        self._refill_from_store = False
        if room <= 0:
            return
        envelopes = self.store.unmerged(limit=room)
        for envelope in envelopes:
            try:
                signed = decode_envelope(envelope)
            except Exception:  # a stored batch decoded once; log, don't die
                log.exception("stored batch no longer decodes")
                continue
            batch = signed.batch
            if batch.sender == self.identity.public_key:
                self.store.mark_merged([batch.cid])
                continue
            if self.pending.rows + len(batch) > limits.max_rows:
                self._refill_from_store = True
                return
            # Restarted batches take turns by sender: the forwarder is not known any more.
            self.pending.put(("restart", batch.sender), Pending(batch, "restart"), len(batch))
        self._refill_from_store = len(envelopes) == room

    async def _round_loop(self) -> None:
        while True:
            with trio.move_on_after(self.config.round_interval_s):
                await self._round_wakeup.wait()
            self._round_wakeup = trio.Event()
            if self._refill_from_store and not self.pending and not self.soup.backlog_rows():
                # Nothing is queued or deferred, so every unmerged batch in the store is
                # one that did not fit: safe to load without feeding any batch twice.
                self._requeue_unmerged()
            try:
                await self.run_round()
            except Exception:
                # A round that fails must not take the node down; its batches stay unmerged
                # in the store (retried at the next start) and are counted.
                log.exception("merge round failed")
                self.metrics.reject("round_error")

    async def run_round(self) -> RoundReport:
        """Merge up to `round_rows` pending rows, fairly across principals; returns what the
        library gained. DeltaSoup (and its re-embedding) runs outside the library limiter:
        the library is held only for the insert."""
        async with self._round_lock:
            backlog = self.soup.backlog_rows()
            # At least half the round for new rows, so a deferred backlog cannot starve them.
            budget = self.config.round_rows - min(backlog, self.config.round_rows // 2)
            taken = self.pending.take(budget)
            if not taken and not backlog:
                return RoundReport()
            started = time.perf_counter()
            result = await trio.to_thread.run_sync(self._aggregate_in_thread, taken, now_ms())
            report = await trio.to_thread.run_sync(
                self._merge_in_thread, len(taken), result, limiter=self._lib_limiter
            )
            self.metrics.observe_round(time.perf_counter() - started)
            # Rows DeltaSoup deferred (over a sender's per-round cap) live in its in-memory
            # backlog: their batch stays unmerged in the store until they are merged, so a
            # restart re-queues it (merging is idempotent by experience id).
            self.store.mark_merged(report.done)
            # Only batches DeltaSoup finished: rows deferred to its backlog merge later.
            self._event("merged", cids=[dagcbor.cid_text(c) for c in report.done])
            self.reputation.save()
            return report

    def _aggregate_in_thread(self, taken: list[Pending], now: int):
        """DeltaSoup over the taken batches (the round lock keeps the soup to one thread).

        The gate decided freshness at admission; re-checking it here would refuse (and
        charge) batches that merely waited for this round."""
        cpu = time.thread_time()
        try:
            batches = [p.batch for p in taken]
            return self.soup.aggregate(batches, now, max_age_ms=self.config.repair_max_age_ms)
        finally:
            self.metrics.spent("round", time.thread_time() - cpu)

    def _merge_in_thread(self, n_taken: int, result) -> RoundReport:
        cpu = time.thread_time()
        try:
            report = self._merge(n_taken, result)
            self._library_sizes = self._read_library_sizes()
            return report
        finally:
            self.metrics.spent("round", time.thread_time() - cpu)

    def _merge(self, n_taken: int, result) -> RoundReport:
        report = RoundReport(batches=n_taken)
        waiting = {o.cid for o in result.outcomes if o.deferred_rows}
        report.done |= {o.cid for o in result.outcomes} - waiting
        for drop in result.row_drop:
            if drop is not None and drop is not Drop.DEFERRED:
                self.metrics.drop(drop.value)
        for outcome in result.outcomes:
            if outcome.drop is not None:
                self.metrics.drop(outcome.drop.value, outcome.rows)
        by_source: dict[bytes, list[Experience]] = {}
        muted = self.outcomes.muted()
        for exp in result.experiences():
            if exp.source in muted:  # its lessons kept hurting this node's agents
                self.metrics.drop("outcome_muted")
                continue
            by_source.setdefault(exp.source, []).append(exp)
        self.outcomes.sighted((e.id, e.source) for exps in by_source.values() for e in exps)
        for source, exps in by_source.items():
            merged = self.library.merge(exps, received_from=source)
            report.inserted += merged.inserted
            report.merged += len(exps)
            for exp in exps:
                report.by_domain[exp.domain] = report.by_domain.get(exp.domain, 0) + 1
        self.metrics.merged(len(result))
        return report

    # -- local experiences and broadcast ---------------------------------------------------

    async def add_experiences(self, items: list[dict]) -> dict:
        """Embed and store the agent's own experiences; they join the domain's outbox."""
        for item in items:
            problem = _item_problem(item, self.domains)
            if problem:
                raise ControlError("bad_request", problem)
        texts = [item["text"] for item in items]
        # Outside the library limiter: a merge round's insert must not delay the embedding.
        vectors = await trio.to_thread.run_sync(self.embedder.embed_as, "embed_local", texts)
        key = self.identity.public_key
        created = now_ms()
        exps = []
        for item, vector in zip(items, vectors, strict=True):
            exps.append(
                Experience.create(
                    text=item["text"],
                    embedding=vector,
                    quality=float(item.get("quality", 0.5)),
                    domain=item["domain"],
                    source=key,
                    created_ms=created,
                    iteration=int(item.get("iteration", 0)),
                )
            )

        def add_local():
            added = self.library.add_local(exps)
            self._library_sizes = self._read_library_sizes()
            return added

        result = await trio.to_thread.run_sync(add_local, limiter=self._lib_limiter)
        self.outcomes.sighted((e.id, e.source) for e in exps)
        by_domain: dict[str, list[bytes]] = {}
        for exp in exps:
            by_domain.setdefault(exp.domain, []).append(exp.id)
        for domain, ids in by_domain.items():
            self.store.outbox_add(ids, domain)
            if self.store.outbox_count(domain) >= self.config.broadcast_threshold:
                self._broadcast_wakeup.set()
        return {"added": len(exps), "inserted": result.inserted, "ids": [e.id.hex() for e in exps]}

    async def _broadcast_loop(self) -> None:
        started = trio.current_time()
        while True:
            with trio.move_on_after(1.0):
                await self._broadcast_wakeup.wait()
            self._broadcast_wakeup = trio.Event()
            clock = trio.current_time()
            for domain in self.store.outbox_domains():
                count = self.store.outbox_count(domain)
                last = self._last_broadcast.get(domain, started)
                due = clock - last >= self.config.broadcast_interval_s
                if count >= self.config.broadcast_threshold or (count and due):
                    try:
                        await self.broadcast(domain)
                    except Exception:  # one bad domain must not stop the rest
                        log.exception("broadcast of %s failed", domain)

    async def broadcast(self, domain: str) -> dict:
        """Publish the domain's outbox now, in batches of at most `max_batch`."""
        lock = self._broadcast_locks.setdefault(domain, trio.Lock())
        async with lock:  # the loop and a control call must not publish one outbox twice
            return await self._broadcast(domain)

    async def _broadcast(self, domain: str) -> dict:
        sent, reached, batch_ids = 0, 0, []
        own = self.identity.public_key
        while True:
            ids = self.store.outbox_peek(domain, self.config.max_batch)
            if not ids:
                break
            entries = await trio.to_thread.run_sync(
                lambda ids=ids: [self.library.get(i) for i in ids], limiter=self._lib_limiter
            )
            # Gone (evicted by capacity) or no longer ours: a peer's record of the same pattern
            # (same domain and text, so the same id) with a higher quality replaced ours in
            # the library, and the fleet already has that one.
            gone = [
                i
                for i, e in zip(ids, entries, strict=True)
                if e is None or e.experience.source != own or e.experience.domain != domain
            ]
            if gone:
                self.store.outbox_remove(gone)
            exps = [
                e.experience
                for e in entries
                if e is not None and e.experience.source == own and e.experience.domain == domain
            ]
            if not exps:
                continue
            baseline = await trio.to_thread.run_sync(
                self.library.baseline, limiter=self._lib_limiter
            )
            now = now_ms()
            if not seq_clock.usable(self.store.next_seq(), now):
                # Our counter is ahead of the wall clock: the clock stepped back. Signing
                # now could break the invariant that keeps a lost store from reusing a seq.
                _clock_log.warning(
                    "clock", "clock behind our last seq: holding the %s outbox", domain
                )
                break
            # Durable before anything is signed with it; never below the time floor.
            seq = self.store.reserve_seq(seq_clock.floor(now))
            signed = encode_batch(
                exps,
                key=self.identity.key,
                seq=seq,
                timestamp_ms=now,
                model=self.embedder.model_id,
                baseline=baseline,
                operator_signer=self.membership.operator_signer(),
            )
            self.store.commit_local(signed, [e.id for e in exps], received_ms=now_ms())
            self._event("publishing", cid=signed.batch.cid_text, domain=domain, n=len(exps))
            reached = max(reached, await self._publish(topic_for(domain), signed.envelope))
            sent += len(exps)
            batch_ids.append(signed.batch.cid_text)
        self._last_broadcast[domain] = trio.current_time()
        return {
            "experiences_sent": sent,
            "peers_reached": reached,
            "batch_id": batch_ids[-1] if batch_ids else None,
            "batch_ids": batch_ids,
        }

    async def _publish(self, topic: str, data: bytes) -> int:
        async with self._publish_lock:
            peers = len(self.pubsub.peer_topics.get(topic, ()))
            await self.pubsub.publish(topic, data)
            self.metrics.sent(len(data))
            await trio.sleep(self.config.publish_spacing_s)
            return peers

    async def publish_raw(self, domain: str, data: bytes) -> None:
        """Publish bytes as they are (tests and the rogue-peer tool); not for honest use."""
        await self._publish(topic_for(domain), data)

    # -- repair ----------------------------------------------------------------------------

    async def _repair_loop(self) -> None:
        while True:
            with trio.move_on_after(self.config.repair_interval_s):
                await self._repair_wakeup.wait()
            self._repair_wakeup = trio.Event()
            await self.sync_all()

    def connected_peers(self) -> list[ID]:
        """Connected peers of the fleet: a dropped peer is not one, even in the moment
        between its operator leaving the live set and the hang-up (`_apply_membership`)."""
        return [p for p in self._connections() if p not in self.dropped_peers]

    def _connections(self) -> list[ID]:
        """Every peer with a libp2p connection, dropped or not (the transport's view)."""
        return [p for p in self.host.get_connected_peers() if p != self.peer_id]

    async def sync_all(self, domains: list[str] | None = None) -> int:
        """One repair pass over the connected peers. A peer whose last pass failed is asked
        again only after its back-off (repair.RepairBackoff): a peer that does not speak
        the protocol costs one try (and one log line) per back-off step, not one per pass."""
        accepted = 0
        for peer in self.connected_peers():
            key, now = str(peer), trio.current_time()
            if not self._repair_backoff.should_try(key, now):
                continue
            failure: Exception | None = None
            # A slow or hostile peer gets a bounded share of each pass, never all of it.
            with trio.move_on_after(REPAIR_PEER_BUDGET_S) as budget:
                try:
                    accepted += await self.sync_with(peer, domains)
                except Exception as exc:
                    failure = exc
            if budget.cancelled_caught:
                failure = TimeoutError(f"hit its {REPAIR_PEER_BUDGET_S} s budget")
            if failure is None:
                self._repair_backoff.succeeded(key)
                continue
            self.peers.setdefault(peer, PeerState()).sync_failures += 1
            unsupported = getattr(failure, "code", None) == repair.UNSUPPORTED
            wait = self._repair_backoff.failed(key, now, unsupported=unsupported)
            log.info("repair with %s failed: %s; next try in %.0f s", peer, failure, wait)
        return accepted

    async def sync_with(self, peer: ID, domains: list[str] | None = None) -> int:
        """Fetch every batch `peer` has (in `domains`, default ours) that we lack.

        The cursor into the peer's inventory is saved per (peer, domain set): a cursor that
        skipped other domains' items must not be reused for a different set. It does not
        advance past an item refused for a reason that may pass later (membership snapshot
        behind the chain, clock skew, reputation), so the item is fetched again next time.
        """
        domains = sorted(domains or self.domains)
        if not domains:
            return 0
        key = f"{peer}|{','.join(domains)}"
        cursor = self.store.peer_cursor(key)
        state = self.peers.setdefault(peer, PeerState())
        accepted = 0
        for _ in range(REPAIR_MAX_PAGES):
            started = trio.current_time()
            reply = await repair.request(
                self.host,
                peer,
                {"op": "since", "cursor": cursor, "limit": REPAIR_PAGE, "domains": domains},
            )
            state.latency_ms = round((trio.current_time() - started) * 1000, 2)
            state.last_seen_ms = now_ms()
            items = reply["items"]
            missing = [(it[0], it[1]) for it in items if not self.store.has(it[1])]
            retry_from: int | None = None
            for i in range(0, len(missing), REPAIR_FETCH):
                chunk = dict((cid, pos) for pos, cid in missing[i : i + REPAIR_FETCH])
                want = list(chunk)
                while want:  # a reply may stop short of its size limit: ask for the rest
                    got = await repair.request(self.host, peer, {"op": "get", "cids": want})
                    seen: set[bytes] = set()
                    for envelope in got["envelopes"]:
                        cpu = time.thread_time()
                        result = self.gate.admit(
                            envelope,
                            now_ms(),
                            origin="repair",
                            forwarder=public_key_of(peer),
                            wanted=chunk,
                        )
                        self.metrics.spent("validate", time.thread_time() - cpu)
                        if result.signed is not None:
                            seen.add(result.signed.cid)
                            if result.reason in TEMPORARY_REFUSALS:
                                pos = chunk.get(result.signed.cid, cursor + 1) - 1
                                retry_from = pos if retry_from is None else min(retry_from, pos)
                        if self._after_admit(result, len(envelope), "repair", public_key_of(peer)):
                            accepted += 1
                    rest = [c for c in want if c not in seen]
                    if len(rest) == len(want):
                        break  # no progress: the peer lacks them or sends junk
                    want = rest
            nxt = reply["next"]
            if retry_from is not None:
                nxt = min(nxt, max(cursor, retry_from))
            self.store.set_peer_cursor(key, nxt)
            # A domain-filtered page may be short while more remains: stop on no progress,
            # or on an empty page (a peer answering `next + 1` forever gets nothing).
            if nxt <= cursor or not items:
                break
            cursor = nxt
        if accepted:
            self._round_wakeup.set()
        self.last_sync_ms = now_ms()
        return accepted

    # -- discovery -------------------------------------------------------------------------

    async def _discovery_loop(self) -> None:
        seeds = parse_multiaddrs(self.config.seeds)
        while True:
            await self._discover(seeds)
            await trio.sleep(self.config.discovery_interval_s)

    async def _discover(self, seeds) -> None:
        """Dial the seeds and the live advertisements we are not connected to. Dropped
        operators' nodes are never dialled (`_apply_membership` hangs up on them)."""
        connected = set(self.connected_peers())
        targets = list(seeds)
        for key, addrs in self.membership.live_addresses().items():
            if key == self.identity.public_key:
                continue
            peer_id = ID.from_pubkey(_ed25519_public(key))
            for text in addrs:
                if "/p2p/" not in text:
                    text = f"{text}/p2p/{peer_id}"
                try:
                    targets.extend(parse_multiaddrs([text]))
                except ValueError:
                    log.info("skipping bad advertised address %r", text)
        few = len(connected) < 4
        for addr in targets:
            try:
                info = info_from_p2p_addr(addr)
            except Exception:  # a seed without /p2p/ is a config error
                log.warning("seed %s has no /p2p/ peer id", addr)
                continue
            if info.peer_id == self.peer_id or info.peer_id in connected:
                continue
            key = public_key_of(info.peer_id)
            if info.peer_id in self.dropped_peers:
                continue
            if key is not None and self.membership.is_dropped(key):
                continue
            if key is not None and self.reputation.deprioritised(key) and not few:
                continue
            with trio.move_on_after(5):
                try:
                    await self.host.connect(info)
                    self.peers.setdefault(info.peer_id, PeerState()).last_seen_ms = now_ms()
                    self._repair_wakeup.set()
                    connected.add(info.peer_id)
                except Exception as exc:  # dial errors are many and expected
                    log.debug("dial %s failed: %s", addr, exc)

    async def _membership_loop(self) -> None:
        """Refresh the member set every `membership_refresh_s`, and sooner when the registry
        has logged a slash, jail or unbond since the last refresh (`Membership.changed`,
        one chain read a second): a slashed node is dropped within about a second, without
        re-reading every operator each second."""
        refresh_s = self.config.membership_refresh_s
        last = trio.current_time()
        while True:
            await trio.sleep(min(MEMBERSHIP_WATCH_S, refresh_s))
            due = trio.current_time() - last >= refresh_s
            if not due:
                try:
                    due = await trio.to_thread.run_sync(self.membership.changed)
                except Exception as exc:  # the periodic refresh still comes
                    _membership_log.warning("watch", "membership watch failed: %s", exc)
                    continue
                if not due:
                    continue
            last = trio.current_time()
            try:
                await trio.to_thread.run_sync(self.membership.refresh)
            except Exception as exc:  # a chain hiccup must not stop the node
                log.warning("membership refresh failed: %s", exc)
                continue
            await self._apply_membership()

    async def _apply_membership(self) -> None:
        """Act on the snapshot just refreshed, logging once per peer per change: drop the
        peers whose operator left the live set, readmit those that came back, and hang up
        on any dropped peer still connected (a connection that raced the drop)."""
        dropped = self.membership.dropped()
        now_dropped: dict[ID, Dropped] = {}
        for key, why in dropped.items():
            if key == self.identity.public_key:
                continue
            try:
                now_dropped[ID.from_pubkey(_ed25519_public(key))] = why
            except Exception:  # a key that is not an Ed25519 point has no peer id
                continue
        for peer in [p for p in self.dropped_peers if p not in now_dropped]:
            del self.dropped_peers[peer]
            self.pubsub.readmit(peer)
            operator = self.membership.operator_of(public_key_of(peer) or b"")
            log.warning("readmitting %s (operator %s): live in the registry again", peer, operator)
        for peer, why in now_dropped.items():
            if peer not in self.dropped_peers:
                self.dropped_peers[peer] = why
                log.warning(
                    "dropping %s (operator %s): no longer live in the registry (%s)",
                    peer,
                    why.operator,
                    why.reason,
                )
                self.pubsub.exclude(peer)
                self.peers.pop(peer, None)
                _forget_addresses(self.host, peer)
        self._note_own_membership(dropped.get(self.identity.public_key))
        for peer in self._connections():
            if peer in self.dropped_peers:
                await self._hang_up(peer)

    async def _hang_up(self, peer: ID) -> None:
        with trio.move_on_after(5):
            try:
                await self.host.disconnect(peer)
            except Exception as exc:  # the connection may be closing already
                log.info("disconnect %s: %s", peer, exc)

    def _note_own_membership(self, why: Dropped | None) -> None:
        """Say once that this node's own operator left the live set (its peers now refuse
        its batches), and once that it is back."""
        if why is not None and self._self_dropped is None:
            log.warning(
                "this node's operator %s is no longer live in the registry (%s): "
                "peers refuse its batches and hang up on it",
                why.operator,
                why.reason,
            )
        elif why is None and self._self_dropped is not None:
            log.warning("this node's operator is live in the registry again")
        self._self_dropped = why

    async def _prune_loop(self) -> None:
        """Delete stored batches older than anything the gate may still accept (the repair
        window) plus a margin, so an equivocation is always caught against the first batch
        while repair can deliver the second. Unmerged batches are kept."""
        keep_ms = self.config.repair_max_age_ms + self.config.max_age_ms + PRUNE_MARGIN_MS
        while True:
            await trio.sleep(self.config.prune_interval_s)
            try:
                removed = self.store.prune(now_ms() - keep_ms)
            except Exception:  # a store hiccup must not stop the node
                log.exception("prune failed")
                continue
            if removed:
                log.info("pruned %d stored batches older than %d h", removed, keep_ms // 3_600_000)

    # -- status, metrics, control ----------------------------------------------------------

    async def _calibration_loop(self) -> None:
        """Recall ranks quality claims within their source; the ranks are rebuilt here,
        off the recall path, when the library has changed."""
        while True:
            await trio.sleep(CALIBRATION_TTL_S)
            try:
                await trio.to_thread.run_sync(self.recaller.refresh_calibration)
            except Exception:  # a library read error must not take the node down
                log.exception("quality calibration refresh failed; recall keeps the last")

    async def _metrics_loop(self) -> None:
        while True:
            self._library_sizes = await trio.to_thread.run_sync(
                self._read_library_sizes, limiter=self._lib_limiter
            )
            await self.refresh_metrics()
            self.reputation.save()  # the gate's penalties must survive a SIGKILL too
            await trio.sleep(10.0)

    def _read_library_sizes(self) -> dict[str, int]:
        """Library size by domain (call in a thread holding the library limiter)."""
        sizes = self.library.stats()["domains"]
        return {d: int(v["count"]) if isinstance(v, dict) else int(v) for d, v in sizes.items()}

    async def refresh_metrics(self) -> dict[str, int]:
        """Metrics from memory: library sizes are the ones the last merge or add left, so
        a status call never waits for the library (a round may be inserting)."""
        sizes = dict(self._library_sizes)
        self.metrics.set_library_sizes(sizes)
        self.metrics.set_peers_connected(len(self._connections()))
        self.metrics.set_reputations({k.hex()[:16]: v for k, v in self.reputation.peers().items()})
        return sizes

    async def status(self) -> dict:
        sizes = await self.refresh_metrics()
        return {
            "peers": len(self.connected_peers()),
            "library_size": sum(sizes.values()),
            "last_sync": self.last_sync_ms,
            **self.metrics.traffic(),
            "node_id": str(self.peer_id),
            "domains": self.domains,
            "library_by_domain": sizes,
            "batches_stored": self.store.count(),
            "outbox": self.store.outbox_count(),
            "pending": len(self.pending),
            "pending_rows": self.pending.rows,
            "contained_faults": dict(self.pubsub.faults),
            "rejections": self.metrics.rejections(),
            "drops": self.metrics.drops(),
            "evidence": self.store.evidence_count(),
            "membership": self.membership.mode,
            "telemetry": self._telemetry_status(),
        }

    def _telemetry_status(self) -> dict:
        out = {**self.ingest.stats.to_json(), "spool": dict(self.ingest.held)}
        if self.otlp is not None:
            out["otlp"] = {"port": self.otlp.port, **self.otlp.stats}
        return out

    def peer_table(self) -> list[dict]:
        """The `peers` rows: connected or known peers, minus those whose operator left the
        live set (listed by membership, not by connection: a dropped peer is gone at once,
        even before its connection closes). `operator` is the live operator the peer's key
        belongs to (registry mode), else None."""
        rows = []
        connected = set(self.connected_peers())
        known = connected | {p for p in self.peers if p not in self.dropped_peers}
        for peer in sorted(known, key=str):
            state = self.peers.get(peer, PeerState())
            key = public_key_of(peer)
            rows.append(
                {
                    "node_id": str(peer),
                    "operator": None if key is None else self.membership.operator_of(key),
                    "latency_ms": state.latency_ms,
                    "reputation": None if key is None else round(self.reputation.score(key), 4),
                    "last_seen": state.last_seen_ms or None,
                    "connected": peer in connected,
                }
            )
        return rows

    async def receive(self, domain: str, limit: int) -> dict:
        """Pull the domain from every peer now, merge, and show the newest `limit` merged."""
        before = await trio.to_thread.run_sync(
            self.library.count, domain, limiter=self._lib_limiter
        )
        await self.sync_all([domain])
        report = await self.run_round()
        after = await trio.to_thread.run_sync(self.library.count, domain, limiter=self._lib_limiter)
        # The newest entries of the library, local or merged, whenever they arrived: an
        # in-memory list of this run's merges would answer [] after a restart.
        newest = await trio.to_thread.run_sync(self.library.newest, domain, limit)
        return {
            "experiences_received": report.by_domain.get(domain, 0),
            "library_delta": after - before,
            "experiences": [_received_json(e) for e in newest],
        }

    async def _control(self, action: str, args: dict) -> dict:
        handler = self._actions().get(action)
        if handler is None:
            raise UnknownAction(action)
        return await handler(args)

    def _actions(self) -> dict[str, Callable[[dict], Any]]:
        async def dso(args: dict, action: str):
            args = validate_dso_args(action, args)
            if action == "status":
                return await self.status()
            if action == "peers":
                return {"peers": self.peer_table()}
            if action == "broadcast":
                if args["domain"] not in self.domains:
                    raise ControlError("bad_request", f"not subscribed to {args['domain']}")
                return await self.broadcast(args["domain"])
            return await self.receive(args["domain"], args["limit"])

        async def add(args: dict):
            items = args.get("experiences")
            if not isinstance(items, list) or not items or len(items) > 1000:
                raise ControlError("bad_request", "experiences: a list of 1..1000 items")
            try:
                return await self.add_experiences(items)
            except ControlError:
                raise
            except (KeyError, TypeError, ValueError, FaiError) as exc:
                raise ControlError("bad_request", f"bad experience: {exc}") from None

        async def sub(args: dict):
            try:
                return {"subscribed": await self.subscribe(str(args.get("domain")))}
            except ValueError as exc:
                raise ControlError("bad_request", str(exc)) from None

        async def unsub(args: dict):
            return {"unsubscribed": await self.unsubscribe(str(args.get("domain")))}

        async def search(args: dict):
            query, k, domain = args.get("query"), args.get("k", 10), args.get("domain")
            if not isinstance(query, str) or not isinstance(k, int) or not 1 <= k <= 100:
                raise ControlError("bad_request", "search needs query: str and k in 1..100")
            if domain is not None and domain_problem(domain):
                raise ControlError("bad_request", domain_problem(domain))
            hits = await trio.to_thread.run_sync(
                lambda: self.library.search(query, args.get("domain"), k),
                limiter=self._lib_limiter,
            )
            return {"hits": [_hit_json(h) for h in hits]}

        async def recall(args: dict):
            query = RecallQuery.from_args(args, self.domains)
            return await trio.to_thread.run_sync(self.recaller.recall, query, list(self.domains))

        async def feedback(args: dict):
            return await trio.to_thread.run_sync(self.recaller.feedback, args)

        async def info(args: dict):
            return {"node_id": str(self.peer_id), "addrs": self.addrs, "domains": self.domains}

        async def export(args: dict):
            domain = args.get("domain")
            offset, limit = args.get("offset", 0), args.get("limit", 500)
            if domain is not None and domain_problem(domain):
                raise ControlError("bad_request", domain_problem(domain))
            for name, value, top in (("offset", offset, 1 << 62), ("limit", limit, 1000)):
                if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= top:
                    raise ControlError("bad_request", f"{name} must be an integer in 0..{top}")

            def page() -> list[dict]:
                rows = itertools.islice(self.library.entries(domain), offset, offset + limit)
                return [_entry_json(e) for e in rows]

            items = await trio.to_thread.run_sync(page, limiter=self._lib_limiter)
            return {"items": items, "next": offset + len(items) if len(items) == limit else None}

        async def publish_raw(args: dict):
            # Devnet demonstrations only (--allow-raw-publish): publishes bytes unchecked,
            # e.g. a conflicting batch to show equivocation being caught and slashed.
            if not self.config.allow_raw_publish:
                raise ControlError("forbidden", "start the node with --allow-raw-publish")
            try:
                data = bytes.fromhex(str(args.get("envelope_hex")))
                domain = str(args.get("domain"))
                topic = topic_for(domain)
            except ValueError as exc:
                raise ControlError("bad_request", str(exc)) from None
            await self._publish(topic, data)
            return {"published": len(data)}

        async def batches(args: dict):
            domain = args.get("domain")
            cids = self.store.cids(None if domain is None else str(domain))
            return {"count": len(cids), "cids": sorted(dagcbor.cid_text(c) for c in cids)}

        async def stop(args: dict):
            self.stop()
            return {"stopping": True}

        actions: dict[str, Callable[[dict], Any]] = {
            a: (lambda args, a=a: dso(args, a)) for a in ("status", "broadcast", "receive", "peers")
        }
        actions.update(
            add=add,
            subscribe=sub,
            unsubscribe=unsub,
            search=search,
            recall=recall,
            feedback=feedback,
            info=info,
            stop=stop,
            batches=batches,
            export=export,
            publish_raw=publish_raw,
        )
        return actions


class _TimedEmbedder:
    """Counts the wall time of every embed call: on 2 cores re-embedding received texts
    dominates the receive cost, and the benchmark reports it apart."""

    def __init__(self, inner, node: Node) -> None:
        self.inner, self.node = inner, node
        self.model_id, self.dimension = inner.model_id, inner.dimension

    def embed(self, texts):
        """Called by DeltaSoup for received texts (stage `embed`)."""
        return self.embed_as("embed", texts)

    def embed_as(self, stage: str, texts):
        """Wall time: torch may use intra-op threads that thread_time would not see."""
        started = time.perf_counter()
        try:
            return self.inner.embed(texts)
        finally:
            metrics = getattr(self.node, "metrics", None)
            if metrics is not None:
                metrics.spent(stage, time.perf_counter() - started)


def _item_problem(item: object, domains: list[str]) -> str | None:
    """Why an `add` item cannot become an experience, checked before any embedding work."""
    from fai_core.experience import text_problem

    if not isinstance(item, dict) or not set(item) <= {"text", "domain", "quality", "iteration"}:
        return "each experience is {text, domain, quality?, iteration?}"
    problem = text_problem(item.get("text"))
    if problem:
        return problem[1]
    if item.get("domain") not in domains:
        return f"domain {item.get('domain')!r} is not subscribed (subscribe first)"
    quality = item.get("quality", 0.5)
    if isinstance(quality, bool) or not isinstance(quality, int | float):
        return "quality must be a number in (0, 1)"
    if not 0.0 < float(quality) < 1.0:
        return "quality must be a number in (0, 1)"
    iteration = item.get("iteration", 0)
    if isinstance(iteration, bool) or not isinstance(iteration, int) or not 0 <= iteration < 256:
        return "iteration must be an integer in 0..255"
    return None


def _entry_json(entry) -> dict:
    e = entry.experience
    return {
        "id": e.id.hex(),
        "text": e.text,
        "domain": e.domain,
        "quality": e.quality,
        "iteration": e.iteration,
        "origin": entry.origin,
        "source": e.source.hex(),
        "received_from": entry.received_from.hex() if entry.received_from else None,
        "created_ms": e.created_ms,
    }


def _hit_json(hit) -> dict:
    e = hit.entry
    return {
        "text": e.experience.text,
        "domain": e.experience.domain,
        "quality": round(e.experience.quality, 4),
        "distance": round(hit.distance, 4),
        "origin": e.origin,
        "source": e.experience.source.hex(),
    }


def _received_json(entry) -> dict:
    e = entry.experience
    return {
        "id": e.id.hex(),
        "text": e.text,
        "domain": e.domain,
        "quality": round(e.quality, 4),
        "source": e.source.hex(),
        "source_node": _peer_id_text(e.source),
        "origin": entry.origin,
        "created_ms": int(e.created_ms),
    }


def _forget_addresses(host, peer: ID) -> None:
    """Remove a dropped peer's addresses from the peer store: py-libp2p's auto-connector
    dials peer-store peers with addresses whenever the node has fewer than its low
    watermark (100) of connections, which would re-dial the dropped node every 30 s."""
    try:
        host.get_peerstore().clear_addrs(peer)
    except Exception as exc:  # an unknown peer has no addresses to forget
        log.debug("forgetting %s's addresses: %s", peer, exc)


def _peer_id_text(key: bytes) -> str | None:
    """The libp2p peer id of an experience's source key (what `peers` lists)."""
    try:
        return str(ID.from_pubkey(_ed25519_public(key)))
    except Exception:  # a key that is not a valid Ed25519 point has no peer id
        return None


def _ed25519_public(key: bytes):
    from libp2p.crypto.ed25519 import Ed25519PublicKey

    return Ed25519PublicKey.from_bytes(key)


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
    from fai_core.embedding import HashingEmbedder, default_embedder

    return HashingEmbedder(384) if name == "hashing" else default_embedder()


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
