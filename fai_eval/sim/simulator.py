"""The fleet simulator: N agent nodes, four ways of sharing, one simulated network.

FAI's real code does the work that decides outcomes. Honest nodes encode their new
experiences with `wire.encode_batch` (BitDelta against their library mean, DAG-CBOR, CID,
Ed25519 signature) and, like the node's outbox, publish their own record of every new id,
even where a peer's better one won the library; every envelope is decoded and verified with
`wire.decode_envelope`; receivers run `DeltaSoup.aggregate` (with its reputation book, on
the simulated clock) and merge the result under the library's own record order
(`library.record_key`). What the "fai" figures measure is the library as the node's recall
offers it: without the rows that only sources its sender histories now refuse sent
(`SenderHistory.refused`, fai_net/api/recall.py). Stand-ins:
the receiver's re-embedding of texts looks up the shipped all-MiniLM-L6-v2 vectors of the
corpus (`TableEmbedder`, the same model's output, not its cost), and a library is a dict
under that record order (a test replays a node's writes into a real LanceDB library). The
network, the workload and the adversary are simulated: see network.py, workload.py and
adversary.py.

One run computes four methods on the same workload and the same network:

- isolated: a node keeps only what it extracted itself;
- central: an oracle holding the union of every honest experience extracted so far (true
  embeddings, best quality per id), restricted to the node's domains, with no delay;
- naive: every verified batch is merged with no robust filter: per experience id, the
  plain average of the received reconstructions (and of the claimed qualities);
- fai: DeltaSoup, then the library merge.

The two that receive anything are `Aggregator` objects (fai_core.aggregation), built per
receiver by a factory: `AGGREGATORS` maps the report names to the default factories, and
`Simulation(config, aggregator=...)` runs another rule in the "fai" place (its rounds feed
the library each node publishes from, so the traffic follows it). The names are used only
at this edge: in reports, the CLI and bench/evaluate.py's cached results.

Receivers that are bound to behave identically share one execution (`share=True`): nodes
subscribed to the same domains, that received the same batches in every round so far,
hold identical DeltaSoup state, so one `aggregate` call serves them all; a node that fails
or misses a batch splits off with a copy of the state, and folds back in once its state
is the same again. The one approximation this makes is that a node's own batch is part of
its receive round (a real node never aggregates its own batches; for naive averaging the
node's own copy is then its batch's reconstruction, not the original); `share=False` runs
one receiver per node without it, and docs/evaluation.md reports the difference.

Decoding is a pure function of the envelope's bytes, so each envelope is decoded once and
the verified batch handed to every receiver; its CPU cost is measured per batch.
"""

from __future__ import annotations

import copy
import hashlib
import time
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
from threadpoolctl import threadpool_limits

from fai_core import ranking, wire
from fai_core.aggregation import Aggregator, NaiveAverage
from fai_core.baseline_block import (
    DEFAULT_DRIFT_THRESHOLD,
    BaselineBlock,
    BaselinePublisher,
    reference_block,
)
from fai_core.deltasoup import DeltaSoup, DeltaSoupConfig
from fai_core.deltasoup_history import SenderHistory
from fai_core.domain_anchors import builtin_anchors
from fai_core.embedding import DEFAULT_MODEL
from fai_core.errors import WireError
from fai_core.experience import Experience
from fai_core.identity import NodeKey
from fai_core.library import record_key
from fai_core.reputation import ReputationBook
from fai_eval.scenario import TableEmbedder
from fai_eval.sim import adversary, feedback, network, workload

#: Report names of the four methods, in report order (`Simulation._views` maps each to its
#: library view; "naive" and "fai" are also names in `AGGREGATORS`).
METHODS = ("isolated", "central", "naive", "fai")
START_MS = 1_760_000_000_000
#: The node's repair window (fai_net NodeConfig.repair_max_age_ms): repaired batches are
#: judged fresh up to this age, so DeltaSoup rounds use it as T_max, as the node does.
REPAIR_MAX_AGE_MS = 7 * 86_400_000
REPUTATION_HALF_LIFE_MS = 3_600_000
#: Wire v2: bytes of one repair `blocks` exchange besides the block: the request frame
#: (~60 B), the response's framing (~16 B) and the stream's protocol negotiation, rounded up.
BLOCK_FETCH_OVERHEAD = 150
RECENT_ROUNDS = 5  # task history behind a node's task mean (Definition 8)
#: A stored embedding below this cosine to its own text's true embedding no longer points
#: at its text (honest BitDelta reconstructions measure >= 0.757, docs/fidelity.md).
GENUINE_COS = 0.7
#: "Poisoned": a non-genuine row among the top-k retrieved for a task.
POISON_TOP_K = 3
#: The DSO registry's minimum bond in tokens (fai_net/registry/deploy.py DEFAULT_MIN_BOND,
#: the paper's D_min): what one registered identity costs an attacker in registry mode.
MIN_BOND_TOKENS = 10.0
#: Sybil modes: one key per Byzantine node; `sybil_identities` free keys each; as many
#: keys as `sybil_budget` buys at `min_bond` each.
SYBIL_MODES = ("none", "open", "registry")
#: A "poisoned@3 <= this" target, read off the per-round curve (the report's adversary block).
POISON_TARGET = 0.01


@dataclass
class SimConfig:
    nodes: int = 10
    rounds: int = 100
    seed: int = 42
    byzantine: int = 0  # number of Byzantine nodes
    attack: str = "random_signs"
    fanout: int = 8
    loss: float = network.LOSS
    latency_ms: tuple[float, float] = network.LATENCY_MS
    round_s: int = 60
    fail_prob: float = 0.002  # per live node per round
    mean_down_rounds: float = 5.0
    eval_every: int = 5
    eval_tasks: int = 32
    #: Metrics average over at most this many honest nodes (a fixed seeded sample).
    eval_nodes: int = 200
    #: A retrieved experience helps a task when its true embedding is this close to the
    #: task's (the same lesson or a close paraphrase).
    hit_cos: float = 0.8
    share: bool = True
    #: Wire version honest nodes publish (attackers' batches are version 1, which nodes
    #: read too). Version 2 sends the baseline by reference: see `_baseline_fetches`.
    wire_version: int = 2
    #: Version 2: a sender makes a new baseline block past this drift (NodeConfig's).
    baseline_drift: float = DEFAULT_DRIFT_THRESHOLD
    #: Honest agents recall for every task and report outcomes; the node ranks recall by
    #: utility and standing and mutes sources that keep hurting (feedback.py). Off: the
    #: simulator of docs/evaluation.md (nearest-neighbour recall, no reports).
    feedback: bool = False
    #: Std of an agent's reported reward around the lesson's hidden value.
    feedback_noise: float = 0.3
    #: Identities per Byzantine node: see SYBIL_MODES.
    sybils: str = "none"
    #: Open mode: keys per Byzantine node (its own included).
    sybil_identities: int = 1
    #: Registry mode: tokens per attacker; it runs floor(sybil_budget / min_bond) identities.
    sybil_budget: float = MIN_BOND_TOKENS
    min_bond: float = MIN_BOND_TOKENS
    #: adaptive_harmful: rounds of honest publishing before it turns harmful.
    adaptive_rounds: int = adversary.ADAPTIVE_ROUNDS

    def __post_init__(self) -> None:
        checks = [
            (self.nodes >= 1, "nodes must be at least 1"),
            (self.rounds >= 1, "rounds must be at least 1"),
            (0 <= self.byzantine < self.nodes, "byzantine must lie in [0, nodes)"),
            (self.fanout >= 2 and self.fanout % 2 == 0, "fanout must be even and >= 2"),
            (0.0 <= self.loss < 1.0, "loss must lie in [0, 1)"),
            (0.0 <= self.fail_prob < 1.0, "fail_prob must lie in [0, 1)"),
            (self.mean_down_rounds >= 1.0, "mean_down_rounds must be at least 1"),
            (self.eval_every >= 1, "eval_every must be at least 1"),
            (self.eval_tasks >= 1 and self.eval_nodes >= 1, "eval sizes must be at least 1"),
            (0 < self.latency_ms[0] <= self.latency_ms[1], "latency range must be positive"),
            (self.round_s >= 1, "round_s must be at least 1"),
            (self.wire_version in (1, 2), "wire_version must be 1 or 2"),
            (self.baseline_drift > 0, "baseline_drift must be positive"),
            (self.feedback_noise >= 0, "feedback_noise must be non-negative"),
            (self.sybils in SYBIL_MODES, f"sybils must be one of {', '.join(SYBIL_MODES)}"),
            (self.sybil_identities >= 1, "sybil_identities must be at least 1"),
            (self.sybil_budget >= 0 and self.min_bond > 0, "need sybil_budget >= 0 < min_bond"),
            (self.adaptive_rounds >= 0, "adaptive_rounds must be non-negative"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)


#: Builds one receiver's aggregator (called per shared receiver group, or per node): it may
#: use the Simulation's embedder, DeltaSoup thresholds and clock (`now_ms`).
AggregatorFactory = Callable[["Simulation"], Aggregator]


def deltasoup(sim: Simulation) -> DeltaSoup:
    """The "fai" method: DeltaSoup with the run's thresholds, its reputation book on the
    simulated clock (recovery half-life as the node's)."""
    book = ReputationBook(
        threshold=sim.soup_config.reputation_threshold,
        recovery_half_life_ms=REPUTATION_HALF_LIFE_MS,
        clock_ms=lambda: sim.now_ms,
    )
    history = SenderHistory(sim.embedder.dimension, anchors=sim.anchors)
    return DeltaSoup(sim.embedder, reputation=book, config=sim.soup_config, history=history)


def naive_average(sim: Simulation) -> NaiveAverage:
    """The "naive" method: every verified row, averaged per id, no filter."""
    return NaiveAverage()


#: Report name -> factory of the aggregator behind it (the only place names meet objects;
#: "isolated" and "central" receive nothing, so they have none).
AGGREGATORS: dict[str, AggregatorFactory] = {"naive": naive_average, "fai": deltasoup}


@dataclass
class _Receiver:
    topics: tuple[int, ...]
    #: The "fai" method's aggregator: its rounds feed the node's library (`_Node.fai`).
    aggregator: Aggregator
    #: The "naive" method (its `table` is read by `Simulation._naive_view`).
    naive: NaiveAverage = field(default_factory=NaiveAverage)
    members: set[int] = field(default_factory=set)


@dataclass
class _Node:
    idx: int
    key: NodeKey
    profile: workload.Profile
    byzantine: bool
    phase_ms: int
    eval_tasks: np.ndarray
    rng: np.random.Generator  # the node's own task stream
    alive: bool = True
    down_until: int = -1
    down_since: int = -1
    seq: int = 0
    iso: dict[bytes, Experience] = field(default_factory=dict)
    fai: dict[bytes, Experience] = field(default_factory=dict)
    fai_sum: np.ndarray | None = None
    naive_own: NaiveAverage = field(default_factory=NaiveAverage)  # the node's own copies
    recent: deque = field(default_factory=lambda: deque(maxlen=RECENT_ROUNDS))
    receiver: _Receiver | None = None
    repair: list[bytes] = field(default_factory=list)  # CIDs to fetch next round
    repair_due: list[bytes] = field(default_factory=list)  # CIDs fetched this round
    published: list[bytes] = field(default_factory=list)  # CIDs of the node's own batches
    publisher: BaselinePublisher | None = None  # wire v2: its baseline block
    known_blocks: set[bytes] = field(default_factory=set)  # wire v2: blocks it holds
    #: A Byzantine node's publishing keys (its own first; more with Sybils).
    identities: list[NodeKey] = field(default_factory=list)
    #: SimConfig.feedback: the node's outcome book, its agent's noise stream, and the
    #: library version, judged rounds and reports its cached recall view was built at.
    ledger: feedback.OutcomeLedger | None = None
    #: Per experience id of its library, the sources whose copy it merged or made (the
    #: node's sightings table, fai_net/api/outcome_book.py; shared with `ledger`).
    sightings: dict[bytes, set[bytes]] = field(default_factory=dict)
    fb_rng: np.random.Generator | None = None
    fai_version: int = 0
    view: tuple[tuple[int, int, int], feedback.LibraryView] | None = None

    def sight(self, e: Experience) -> None:
        """Note that `e.source` published `e.id` (merged here, or made by this node)."""
        self.sightings.setdefault(e.id, set()).add(e.source)


def _same_state(a: _Receiver, b: _Receiver, now_ms: int) -> bool:
    """Whether two receivers will decide every future batch of the simulation alike.

    Compared: backlogs (both empty), reputation scores (and, for scores below the initial
    one, the stamps their recovery runs from), the newest seq per sender, the replay
    guard's entries younger than its horizon (older ones only matter for a batch delivered
    twice, which the simulated network never does), and the naive averages (equal up to
    float summation order, 1e-9). Aggregators other than DeltaSoup have state this cannot
    compare, so receivers using them never fold back (exact, at some cost in time).
    """
    sa, sb = a.aggregator, b.aggregator
    if sa.backlog_rows() or sb.backlog_rows():
        return False
    if not (isinstance(sa, DeltaSoup) and isinstance(sb, DeltaSoup)):
        return False
    return _same_soup(sa, sb, now_ms) and _same_naive(a.naive, b.naive)


def _same_soup(sa: DeltaSoup, sb: DeltaSoup, now_ms: int) -> bool:
    """Reputation scores (and recovery stamps below the initial score), the replay guard
    and the sender histories."""
    ra, rb = sa.reputation, sb.reputation
    if ra._scores != rb._scores:
        return False
    if any(ra._stamps.get(p) != rb._stamps.get(p) for p, v in ra._scores.items() if v < ra.initial):
        return False
    ga, gb = sa.replay, sb.replay
    if ga._newest != gb._newest or not sa.history.same_as(sb.history):
        return False
    limit = now_ms - (ga.horizon_ms or 0)
    recent_a = {c for c, t in ga._cids.items() if t >= limit}
    return recent_a == {c for c, t in gb._cids.items() if t >= limit}


def _same_naive(a: NaiveAverage, b: NaiveAverage) -> bool:
    """The naive averages: the same ids and copies, sums equal up to summation order."""
    ta, tb = a.table, b.table
    if ta.keys() != tb.keys():
        return False
    for k, (s1, q1, c1, *_) in ta.items():
        s2, q2, c2, *_ = tb[k]
        if c1 != c2 or abs(q1 - q2) > 1e-9 or not np.allclose(s1, s2, rtol=0, atol=1e-9):
            return False
    return True


def _wins(new: Experience, old: Experience | None) -> bool:
    if old is None:
        return True
    if new.quality != old.quality:
        return new.quality > old.quality
    return record_key(new) > record_key(old)


class Simulation:
    """One run: `config` fixes the workload, network and adversary; `aggregator` (default
    `AGGREGATORS["fai"]`, DeltaSoup) builds each receiver's aggregator for the "fai"
    method, so another rule is compared on exactly the same traffic and seeds."""

    def __init__(
        self, config: SimConfig, embedder=None, *, aggregator: AggregatorFactory | None = None
    ) -> None:
        cfg = self.cfg = config
        self.make_aggregator = aggregator or AGGREGATORS["fai"]
        self.make_naive = AGGREGATORS["naive"]
        if cfg.attack not in adversary.ATTACKS:
            raise ValueError(f"unknown attack {cfg.attack!r}")
        self.world = workload.World(cfg.seed)
        self.embedder = embedder or TableEmbedder()
        # Independent streams, so that changing the adversary or the failure rate leaves
        # every honest node's profile and task stream untouched (paired comparisons), and
        # the Byzantine set for a smaller f is a subset of the one for a larger f.
        self.rng = np.random.default_rng([cfg.seed, 0])
        self.fail_rng = np.random.default_rng([cfg.seed, 6])
        self.net_rng = np.random.default_rng([cfg.seed, 2])
        self.adv_rng = np.random.default_rng([cfg.seed, 3])
        n_dom = len(self.world.domains)
        order = np.random.default_rng([cfg.seed, 4]).permutation(cfg.nodes)
        byz = set(order[: cfg.byzantine].tolist())
        round_ms = cfg.round_s * 1000
        self.nodes: list[_Node] = []
        for i in range(cfg.nodes):
            prof = workload.draw_profile(self.rng, n_dom)
            seed = hashlib.sha256(f"fai-sim/{cfg.seed}/{i}".encode()).digest()
            self.nodes.append(
                _Node(
                    idx=i,
                    key=NodeKey(seed),
                    profile=prof,
                    byzantine=i in byz,
                    phase_ms=int(self.rng.integers(0, round_ms)),
                    eval_tasks=workload.draw_tasks(self.world, prof, self.rng, cfg.eval_tasks),
                    rng=np.random.default_rng([cfg.seed, 10, i]),
                )
            )
        self.honest = [n for n in self.nodes if not n.byzantine]
        self._idx_of_key = {n.key.public_key: n.idx for n in self.nodes}
        self._arm(self.nodes)
        pick = np.random.default_rng([cfg.seed, 7]).permutation(len(self.honest))
        self.measured = [self.honest[i] for i in sorted(pick[: cfg.eval_nodes])]
        self.meshes = []
        for k in range(n_dom):
            subs = [n.idx for n in self.nodes if k in n.profile.domains]
            mesh_rng = np.random.default_rng([cfg.seed, 5, k])
            self.meshes.append(network.Mesh.build(np.array(subs, np.int64), cfg.fanout, mesh_rng))
        self.now_ms = START_MS
        self.soup_config = DeltaSoupConfig(seq_window=1 << 62)
        #: The built-in domains' anchors, as a node with the default model has them.
        self.anchors = builtin_anchors(self.embedder)
        self.central: dict[bytes, Experience] = {}
        # Receivers: shared by topic set, or one per honest node.
        by_topics: dict[tuple[int, ...], _Receiver] = {}
        for node in self.honest:
            topics = tuple(int(k) for k in node.profile.domains)
            if cfg.share and topics in by_topics:
                rec = by_topics[topics]
            else:
                rec = _Receiver(topics, self.make_aggregator(self), self.make_naive(self))
                by_topics[topics] = rec
            rec.members.add(node.idx)
            node.receiver = rec
        # Published batches: cid -> (topic, round, size, decoded batch or None).
        self.batches: dict[bytes, tuple[int, int, int, wire.Batch | None]] = {}
        #: Wire v2: every baseline block published, and the batches that carried theirs.
        self.reference = reference_block(DEFAULT_MODEL, self.world.vectors.shape[1])
        self.blocks: dict[bytes, BaselineBlock] = {self.reference.cid: self.reference}
        self.attached: set[bytes] = set()
        self.by_topic_round: dict[tuple[int, int], list[bytes]] = defaultdict(list)
        self.sender_of: dict[bytes, int] = {}
        self.pattern_of: dict[bytes, tuple[int, int]] = {}  # exp id -> (pattern, tag domain)
        self.stats = defaultdict(float)
        self.latency_hist = np.zeros(2001, dtype=np.int64)  # 1 ms bins, last = overflow
        self.curves: list[dict] = []
        d = self.world.vectors.shape[1]
        self._objects: list[Experience] = []
        self._row_of: dict[int, int] = {}
        self._unit = np.zeros((0, d))
        self._pat = np.zeros(0, np.int64)
        self._tag = np.zeros(0, np.int64)
        self._qual = np.zeros(0)
        self._genuine = np.zeros(0, dtype=bool)  # feedback: per row, `_ranked_figures`
        self.per_round: list[dict] = []

    # -- set-up helpers ----------------------------------------------------------------------

    def identities_per_attacker(self) -> int:
        """Keys each Byzantine node publishes under: 1; free ones in open mode; in registry
        mode what its budget bonds (0 if it cannot afford one: it cannot join)."""
        cfg = self.cfg
        if cfg.sybils == "open":
            return cfg.sybil_identities
        if cfg.sybils == "registry":
            return int(cfg.sybil_budget // cfg.min_bond)
        return 1

    def _arm(self, nodes: list[_Node]) -> None:
        """Byzantine nodes' identities (Sybil keys derived from the seed, after the node's
        own), and with feedback each honest node's outcome book and agent noise stream (a
        stream of its own, so the task streams are those of a run without feedback)."""
        cfg = self.cfg
        for node in nodes:
            if node.byzantine:
                keys = [node.key]
                for j in range(1, self.identities_per_attacker()):
                    seed = hashlib.sha256(f"fai-sim/{cfg.seed}/{node.idx}/sybil/{j}".encode())
                    keys.append(NodeKey(seed.digest()))
                node.identities = keys[: self.identities_per_attacker()]
                for key in keys:
                    self._idx_of_key[key.public_key] = node.idx
            elif cfg.feedback:
                node.ledger = feedback.OutcomeLedger(node.sightings)
                node.fb_rng = np.random.default_rng([cfg.seed, 11, node.idx])

    def _split(self, node: _Node) -> None:
        """Give `node` a private copy of its receiver's state (it is about to diverge)."""
        rec = node.receiver
        if rec is None or len(rec.members) == 1:
            return
        rec.members.discard(node.idx)
        memo = {id(self.embedder): self.embedder}
        aggregator = copy.deepcopy(rec.aggregator, memo)
        naive = copy.copy(rec.naive)
        naive.table = {k: [v[0].copy(), *v[1:]] for k, v in rec.naive.table.items()}
        node.receiver = _Receiver(rec.topics, aggregator, naive, {node.idx})
        self.stats["splits"] += 1

    # -- the run -----------------------------------------------------------------------------

    def run(self, progress=None) -> dict:
        # Every matrix here is small: BLAS threads only spin against each other (measured:
        # evaluation 7x slower with two OpenBLAS threads on 2 cores than with one).
        with threadpool_limits(1):
            return self._run(progress)

    def _run(self, progress=None) -> dict:
        t0 = time.perf_counter()
        for r in range(self.cfg.rounds):
            self._round(r)
            if (r + 1) % self.cfg.eval_every == 0 or r + 1 == self.cfg.rounds:
                t = time.perf_counter()
                self.curves.append({"round": r + 1, **self._evaluate()})
                self.stats["cpu_eval_s"] += time.perf_counter() - t
            if progress:
                progress(r + 1, self.cfg.rounds)
        self.stats["wall_s"] = time.perf_counter() - t0
        return self._report()

    def _round(self, r: int) -> None:
        cfg, round_ms = self.cfg, self.cfg.round_s * 1000
        start = START_MS + r * round_ms
        self.now_ms = start
        self._failures(r)
        for node in self.honest:  # what gossip missed last round (or a rejoin) comes now
            node.repair_due += node.repair  # a node that is down keeps its list until it is up
            node.repair = []
        outbox: list[tuple[_Node, int, wire.SignedBatch]] = []
        t = time.perf_counter()
        for node in self.nodes:
            if not node.alive:
                continue
            ts = start + node.phase_ms
            if node.byzantine and cfg.attack != "benign":
                for key in node.identities:
                    for k in node.profile.domains:
                        node.seq += 1
                        sb = adversary.attack_batch(
                            cfg.attack, self.world, key, int(k), seq=node.seq,
                            timestamp_ms=ts, rng=self.adv_rng, round_index=r,
                            honest_rounds=cfg.adaptive_rounds,
                        )  # fmt: skip
                        outbox.append((node, int(k), sb))
            else:
                outbox += self._work(node, ts)
        self.stats["cpu_encode_s"] += time.perf_counter() - t
        inbox = self._spread(r, outbox)
        self.now_ms = start + round_ms
        self._receive(r, inbox)

    def _failures(self, r: int) -> None:
        cfg = self.cfg
        for node in self.nodes:
            if node.alive and cfg.fail_prob > 0 and self.fail_rng.random() < cfg.fail_prob:
                node.alive = False
                node.down_since = r
                node.down_until = r + int(self.fail_rng.geometric(1.0 / cfg.mean_down_rounds))
                self.stats["failures"] += 1
                if not node.byzantine:
                    self._split(node)
            elif not node.alive and r >= node.down_until:
                node.alive = True
                self.stats["rejoins"] += 1
                # Repair: everything published on its topics while it was down.
                for k in node.profile.domains:
                    for rr in range(node.down_since, r):
                        node.repair += self.by_topic_round.get((int(k), rr), [])

    def _work(self, node: _Node, ts: int) -> list:
        """One round of an honest node: tasks, extraction, and its batches per domain."""
        prof, world = node.profile, self.world
        rng = node.rng
        tasks = workload.draw_tasks(world, prof, rng, int(rng.poisson(prof.task_rate)))
        node.recent.append(tasks)
        if node.ledger is not None:
            self._use_recall(node, tasks)
        learned = tasks[rng.random(len(tasks)) < prof.extract_prob]
        if len(learned) == 0:
            return []
        quality = workload.estimate_quality(world, learned, prof.quality_noise, rng)
        new: dict[int, dict[bytes, Experience]] = defaultdict(dict)
        for p, q in zip(learned.tolist(), quality.tolist(), strict=True):
            dom = int(world.domain_of[p])
            e = Experience(
                world.texts[p], world.vectors[p], q, world.domains[dom], node.key.public_key, ts
            )
            self.pattern_of.setdefault(e.id, (p, dom))
            if _wins(e, new[dom].get(e.id)):
                new[dom][e.id] = e
        out = []
        history = self._history(node)
        for dom, exps in sorted(new.items()):
            if history is not None:  # as the node's add_experiences does
                own = list(exps.values())
                history.record_own(
                    world.domains[dom],
                    np.stack([e.embedding for e in own]),
                    [e.quality for e in own],
                )
            for e in exps.values():
                if _wins(e, node.iso.get(e.id)):
                    node.iso[e.id] = e
                if not node.byzantine and _wins(e, self.central.get(e.id)):
                    self.central[e.id] = e
                self._fai_put(node, e)
                node.sight(e)
                node.naive_own.add(e.id, e.embedding, e.quality, e.text, e.domain)
            # As the node's outbox does: publish its own record of each id, even where a
            # peer's record of the same pattern won the library (that peer may be refused
            # later, and then only the fleet's own copies vouch for the pattern).
            send = [exps[i] for i in sorted(exps)]
            node.seq += 1
            sb = self._encode(node, send, ts, world.domains[dom])
            node.published.append(sb.cid)
            out.append((node, dom, sb))
        return out

    def _view(self, node: _Node) -> feedback.LibraryView:
        """The node's library as its recall sees it, rebuilt when the library changed or
        a round was judged (which may refuse, or clear, a source of it)."""
        reports = node.ledger.reports if node.ledger is not None else 0
        version = (node.fai_version, self._judged_rounds(node), reports)
        if node.view is None or node.view[0] != version:
            node.view = (version, feedback.LibraryView(self._recallable(node), self.world.domains))
        return node.view[1]

    @staticmethod
    def _history(node: _Node) -> SenderHistory | None:
        """The sender histories of the node's "fai" receiver, if it keeps any."""
        return getattr(node.receiver.aggregator, "history", None) if node.receiver else None

    def _judged_rounds(self, node: _Node) -> int:
        history = self._history(node)
        return -1 if history is None else history.rounds

    def _refused_check(self, node: _Node):
        """What the node's recall asks of its sender histories (None: it keeps none)."""
        history = self._history(node)
        return None if history is None else history.refused

    def _recallable(self, node: _Node) -> list[Experience]:
        """The node's library as recall offers it: without the rows that only sources its
        sender histories now refuse in the row's domain vouch for, unless its agents found
        them helpful (`fai_core.ranking.vouched_candidate`, as fai_net/api/recall.py)."""
        refused = self._refused_check(node)
        if refused is None:
            return list(node.fai.values())
        book = node.ledger or feedback.OutcomeLedger(node.sightings)
        return [e for e in node.fai.values() if feedback.candidate(e, 0.0, book, refused)]

    def _use_recall(self, node: _Node, tasks: np.ndarray) -> None:
        """The node's agent at work: per task, recall from the library (before this round's
        extractions, which come after the task), use what comes back, report outcomes."""
        if len(tasks) == 0 or not node.fai:
            return
        view, refused = self._view(node), self._refused_check(node)
        for task in tasks.tolist():
            dom = int(self.world.domain_of[task])
            query = self.world.vectors[task].astype(np.float64)
            used = feedback.recall(view, query, dom, node.ledger, refused=refused)
            values = [
                feedback.hidden_value(self.world, e.text, task, self.cfg.hit_cos) for e in used
            ]
            feedback.report_outcomes(
                node.ledger, used, values, self.cfg.feedback_noise, node.fb_rng
            )
            for e in used:
                tag = "byzantine" if self.nodes[self._idx_of_key[e.source]].byzantine else "honest"
                self.stats[f"reports_on_{tag}"] += 1

    def _encode(self, node: _Node, send: list[Experience], ts: int, domain: str):
        """The node's batch in the configured wire version, as its broadcaster builds it."""
        baseline = node.fai_sum / len(node.fai)
        if self.cfg.wire_version == 1:
            return wire.encode_batch(
                send, key=node.key, seq=node.seq, timestamp_ms=ts, model=DEFAULT_MODEL,
                baseline=baseline,
            )  # fmt: skip
        if node.publisher is None:
            node.publisher = BaselinePublisher(self.reference, self.cfg.baseline_drift)
        block, attach = node.publisher.for_batch(baseline, len(node.fai), domain)
        sb = wire.encode_batch_v2(
            send, key=node.key, seq=node.seq, timestamp_ms=ts, baseline=block,
            attach_baseline=attach,
        )  # fmt: skip
        if attach:
            node.publisher.attached(domain)
            self.blocks[block.cid] = block
            self.stats["baseline_blocks_attached"] += 1
        node.known_blocks.add(block.cid)
        return sb

    def _fai_put(self, node: _Node, e: Experience) -> bool:
        old = node.fai.get(e.id)
        if not _wins(e, old):
            return False
        if node.fai_sum is None:
            node.fai_sum = np.zeros(e.dimension)
        node.fai_sum += e.embedding
        if old is not None:
            node.fai_sum -= old.embedding
        node.fai[e.id] = e
        node.fai_version += 1
        return True

    def _spread(self, r: int, outbox) -> dict[int, set[bytes]]:
        """Publish, decode once per envelope, push over the topic meshes."""
        cfg = self.cfg
        inbox: dict[int, set[bytes]] = defaultdict(set)
        per_topic: dict[int, list] = defaultdict(list)
        t = time.perf_counter()
        for node, dom, sb in outbox:
            try:
                signed = wire.decode_envelope(sb.envelope)
                batch = signed.batch
                if not batch.resolved:  # the block a receiver holds or fetches once
                    batch = batch.with_baseline(self.blocks[batch.baseline_cid])
                elif signed.baseline_block is not None:
                    self.attached.add(sb.cid)
            except WireError:
                batch = None
                self.stats["undecodable"] += 1
            self.batches[sb.cid] = (dom, r, len(sb.envelope), batch)
            self.by_topic_round[(dom, r)].append(sb.cid)
            self.sender_of[sb.cid] = node.idx
            per_topic[dom].append((node, sb))
            self.stats["batches"] += 1
            self.stats["experiences"] += len(sb.batch)
            self.stats["honest_batches" if not node.byzantine else "byzantine_batches"] += 1
            if not node.byzantine:
                self.stats["honest_batch_bytes"] += len(sb.envelope)
                self.stats["honest_experiences"] += len(sb.batch)
        self.stats["cpu_decode_s"] += time.perf_counter() - t
        t = time.perf_counter()
        sent = np.zeros(cfg.nodes)
        for dom, items in per_topic.items():
            mesh = self.meshes[dom]
            alive = np.array([self.nodes[m].alive for m in mesh.members])
            pubs = mesh.positions(np.array([n.idx for n, _ in items]))
            spread = network.propagate(
                mesh, pubs, alive, self.net_rng, latency_ms=cfg.latency_ms, loss=cfg.loss
            )
            sizes = np.array([len(sb.envelope) for _, sb in items], dtype=np.float64)
            np.add.at(sent, mesh.members, (spread.sends * sizes[:, None]).sum(axis=0))
            for b, (node, sb) in enumerate(items):
                if cfg.share and not node.byzantine:
                    inbox[node.idx].add(sb.cid)  # see the module docstring
                arr = spread.arrival_ms[b]
                got = np.isfinite(arr)
                got[pubs[b]] = False
                ms = np.minimum(arr[got], 2000).astype(np.int64)
                self.latency_hist += np.bincount(ms, minlength=2001)
                for pos in np.flatnonzero(got):
                    inbox[int(mesh.members[pos])].add(sb.cid)
                missed = np.flatnonzero(~np.isfinite(arr) & alive)
                for pos in missed:
                    m = self.nodes[int(mesh.members[pos])]
                    if m.idx != node.idx and not m.byzantine:
                        m.repair.append(sb.cid)
                        self.stats["missed_by_gossip"] += 1
                self.stats["deliveries"] += int(got.sum())
        self.stats["cpu_network_s"] += time.perf_counter() - t
        live_honest = [n.idx for n in self.honest if n.alive]
        self.per_round.append(
            {
                "round": r,
                "gossip_bytes_per_node": float(sent[live_honest].mean()) if live_honest else 0.0,
                "batches": len(outbox),
            }
        )
        return inbox

    def _receive(self, r: int, inbox: dict[int, set[bytes]]) -> None:
        # Each live honest node's deliveries this round: gossip plus repair from last round.
        deliveries: dict[int, frozenset[bytes]] = {}
        repair_bytes = 0
        for node in self.honest:
            if not node.alive:
                continue
            cids = set(inbox.get(node.idx, ()))
            if node.repair_due:
                fetched = set(node.repair_due) - cids
                repair_bytes += sum(self.batches[c][2] for c in fetched)
                cids |= fetched
                self.stats["repaired"] += len(fetched)
                node.repair_due = []
            deliveries[node.idx] = frozenset(cids)
            repair_bytes += self._baseline_fetches(node, cids)
        self.per_round[-1]["repair_bytes_per_node"] = repair_bytes / max(1, len(deliveries))
        # Group receivers; split members whose deliveries differ from the majority's.
        receivers: dict[int, _Receiver] = {}
        for idx in deliveries:
            rec = self.nodes[idx].receiver
            receivers[id(rec)] = rec
        for rec in list(receivers.values()):
            live = [i for i in sorted(rec.members) if i in deliveries]
            if len(live) < 2:
                continue
            groups: dict[frozenset, list[int]] = defaultdict(list)
            for i in live:
                groups[deliveries[i]].append(i)
            if len(groups) > 1:
                keep = max(groups.values(), key=len)
                for members in groups.values():
                    if members is not keep:
                        for i in members:
                            self._split(self.nodes[i])
                            receivers[id(self.nodes[i].receiver)] = self.nodes[i].receiver
        for rec in receivers.values():
            live = [i for i in sorted(rec.members) if i in deliveries]
            if not live:
                continue
            cids = deliveries[live[0]]
            if not self.cfg.share:
                cids = frozenset(c for c in cids if self.sender_of[c] != live[0])
            self._receive_one(rec, cids, live)
        if self.cfg.share:
            self._rejoin_receivers(receivers.values())

    def _rejoin_receivers(self, receivers) -> None:
        """Fold receivers whose state has become the same as a larger one's back into it.

        A node that failed or missed a batch splits off; once repair has caught it up, its
        DeltaSoup state usually equals its old group's again, and without folding it back
        every failure would cost one DeltaSoup execution per round for the rest of the run.
        """
        by_topics: dict[tuple[int, ...], list[_Receiver]] = defaultdict(list)
        for rec in receivers:
            if rec.members:
                by_topics[rec.topics].append(rec)
        for group in by_topics.values():
            if len(group) < 2:
                continue
            group.sort(key=lambda r: (-len(r.members), min(r.members)))
            kept: list[_Receiver] = []
            for rec in group:
                home = next((k for k in kept if _same_state(k, rec, self.now_ms)), None)
                if home is None:
                    kept.append(rec)
                    continue
                home.members |= rec.members
                for i in rec.members:
                    self.nodes[i].receiver = home
                rec.members = set()
                self.stats["rejoined_receivers"] += 1

    def _baseline_fetches(self, node: _Node, cids: set[bytes]) -> int:
        """Wire v2: bytes `node` spends fetching the baseline blocks of delivered batches
        that did not carry theirs and that it does not hold yet (one repair `blocks`
        exchange each: the block plus `BLOCK_FETCH_OVERHEAD`). Counted as repair bytes."""
        spent = 0
        for cid in sorted(cids, key=lambda c: c not in self.attached):  # attached first
            batch = self.batches[cid][3]
            ref = None if batch is None else batch.baseline_cid
            if ref is None or ref == self.reference.cid or ref in node.known_blocks:
                continue
            node.known_blocks.add(ref)
            if cid not in self.attached:
                spent += len(self.blocks[ref].data) + BLOCK_FETCH_OVERHEAD
                self.stats["baseline_fetches"] += 1
        self.stats["baseline_fetch_bytes"] += spent
        return spent

    def _receive_one(self, rec: _Receiver, cids: frozenset[bytes], members: list[int]) -> None:
        batches = [self.batches[c][3] for c in sorted(cids)]
        batches = [b for b in batches if b is not None]
        rec.naive.aggregate(batches, self.now_ms)  # every verified row, no filter
        if not batches and rec.aggregator.backlog_rows() == 0:
            return
        t = time.perf_counter()
        result = rec.aggregator.aggregate(batches, self.now_ms, max_age_ms=REPAIR_MAX_AGE_MS)
        self.stats["cpu_deltasoup_s"] += time.perf_counter() - t
        self.stats["soup_runs"] += 1
        self.stats["soup_batches"] += len(batches)
        self.stats["node_receive_batches"] += len(batches) * len(members)
        self.stats["node_receive_rounds"] += len(members)
        exps = result.experiences()
        for e in exps:
            self._remember_pattern(e.id, e.text, e.domain)
        t = time.perf_counter()
        for i in members:
            node = self.nodes[i]
            if node.ledger is not None:
                self._merge_with_outcomes(node, exps)
                continue
            for e in exps:
                node.sight(e)
                self._fai_put(node, e)
        self.stats["cpu_merge_s"] += time.perf_counter() - t
        # Row accounting per receiving node: a member's own rows (shared mode) are not
        # received, and backlog rows were counted in the round they arrived.
        group = set(members)
        for o in result.outcomes:
            if o.from_backlog:
                continue
            sender = self.sender_of[o.cid]
            receivers = len(members) - (sender in group)
            tag = "byzantine" if self.nodes[sender].byzantine else "honest"
            self.stats[f"{tag}_rows_received"] += o.rows * receivers
        for key, drop in zip(result.row_sender, result.row_drop, strict=True):
            if drop is not None:
                continue
            sender = self._idx_of_key[key]
            receivers = len(members) - (sender in group)
            tag = "byzantine" if self.nodes[sender].byzantine else "honest"
            self.stats[f"{tag}_rows_kept"] += receivers

    def _merge_with_outcomes(self, node: _Node, exps: list[Experience]) -> None:
        """The node's merge with feedback on (fai_net/node/rounds.py): experiences of a
        source its outcome book mutes are not merged; the rest are sighted, then merged."""
        for e in exps:
            if e.source in node.ledger.muted:
                tag = "byzantine" if self.nodes[self._idx_of_key[e.source]].byzantine else "honest"
                self.stats[f"{tag}_rows_muted"] += 1
                continue
            node.sight(e)
            self._fai_put(node, e)

    # -- measurement -------------------------------------------------------------------------

    def _remember_pattern(self, ident: bytes, text: str, domain: str) -> None:
        """Ground truth of an experience id: its corpus pattern (-1: not one) and tag."""
        if ident not in self.pattern_of:
            pattern = self.world.index.get(text, -1)
            self.pattern_of[ident] = (pattern, self.world.domains.index(domain))

    def _row(self, e: Experience) -> int:
        row = self._row_of.get(id(e))
        if row is None:
            row = self._row_of[id(e)] = len(self._objects)
            self._objects.append(e)
        return row

    def _freeze_rows(self) -> None:
        """Matrices over every Experience object seen by the libraries (grown incrementally)."""
        n_old = len(self._unit)
        new = self._objects[n_old:]
        if new:
            emb = np.stack([e.embedding for e in new]).astype(np.float64)
            unit = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-30)
            self._unit = np.concatenate([self._unit, unit])
            meta = np.array([self.pattern_of[e.id] for e in new]).reshape(-1, 2)
            self._pat = np.concatenate([self._pat, meta[:, 0]])
            self._tag = np.concatenate([self._tag, meta[:, 1]])
            self._qual = np.concatenate([self._qual, [e.quality for e in new]])

    def _library(self, node: _Node, method: str):
        """(unit embeddings, qualities, pattern index, tag domain) of a node's library under
        the method a report name (`METHODS`) stands for."""
        views = {
            "isolated": lambda n: self._objects_view(n.iso.values()),
            "central": lambda n: self._objects_view(
                [e for k in n.profile.domains for e in self._central_by_dom[int(k)]]
            ),
            "naive": self._naive_view,
            "fai": lambda n: self._objects_view(self._recallable(n)),
        }
        return views[method](node)

    def _objects_view(self, exps):
        """The view of a library of Experience objects."""
        rows = np.fromiter((self._row(e) for e in exps), dtype=np.int64)
        self._freeze_rows()
        return self._unit[rows], self._qual[rows], self._pat[rows], self._tag[rows]

    def _naive_base(self, rec: _Receiver):
        """(id -> row, sums, qualities, copies, meta) of a receiver's naive table, once."""
        base = self._naive_cache.get(id(rec))
        if base is None:
            table = rec.naive.table
            ids = list(table)
            d = self.world.vectors.shape[1]
            sums = np.array([table[i][0] for i in ids]).reshape(-1, d)
            q = np.array([table[i][1] for i in ids])
            c = np.array([table[i][2] for i in ids], dtype=np.float64)
            for i in ids:
                self._remember_pattern(i, table[i][3], table[i][4])
            meta = np.array([self.pattern_of[i] for i in ids], dtype=np.int64).reshape(-1, 2)
            where = {k: j for j, k in enumerate(ids)}
            base = self._naive_cache[id(rec)] = (where, sums, q, c, meta)
        return base

    def _naive_view(self, node: _Node):
        """The naive library: the receiver's averages plus the node's own copies."""
        where, sums, q, c, meta = self._naive_base(node.receiver)
        own = node.naive_own.table
        extra = [i for i in own if i not in where]
        if own:
            sums, q, c = sums.copy(), q.copy(), c.copy()
            if self.cfg.share:
                # A shared receiver averaged the node's own batches as received copies; a
                # node holds its own originals instead (naive_own, added below).
                for cid in node.published:
                    b = self.batches[cid][3]
                    emb = b.embeddings()
                    for j, ident in enumerate(b.ids):
                        k = where[ident]
                        sums[k] -= emb[j]
                        q[k] -= float(b.quality[j])
                        c[k] -= 1
            for i, acc in own.items():
                j = where.get(i)
                if j is not None:
                    sums[j] += acc[0]
                    q[j] += acc[1]
                    c[j] += acc[2]
        if extra:
            sums = np.concatenate([sums, np.array([own[i][0] for i in extra])])
            q = np.concatenate([q, [own[i][1] for i in extra]])
            c = np.concatenate([c, [own[i][2] for i in extra]])
            meta = np.concatenate([meta, np.array([self.pattern_of[i] for i in extra])])
        emb = sums / c[:, None]
        unit = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-30)
        return unit, q / c, meta[:, 0], meta[:, 1]

    def _evaluate(self) -> dict:
        world, cfg = self.world, self.cfg
        true_unit = world.vectors / np.linalg.norm(world.vectors, axis=1, keepdims=True)
        out = {}
        self._naive_cache: dict[int, tuple] = {}
        self._central_by_dom = defaultdict(list)
        for e in self.central.values():
            self._central_by_dom[self.pattern_of[e.id][1]].append(e)
        # Register every Experience object first, so the matrices grow once per evaluation.
        for node in self.measured:
            for e in (*node.iso.values(), *node.fai.values()):
                self._row(e)
        for e in self.central.values():
            self._row(e)
        self._freeze_rows()
        for method in METHODS:
            qs, proxies, poisoned, sizes = [], [], [], []
            # With feedback, for "fai": (proxy, poisoned) of nearest-neighbour recall, and of
            # the real ranking with no report counted (what ranking does before feedback).
            nearest: list[tuple[float, float]] = []
            unreported: list[tuple[float, float]] = []
            for node in self.measured:
                unit, q, pat, tag = self._library(node, method)
                recent = np.concatenate(list(node.recent)) if node.recent else node.eval_tasks
                if len(recent) == 0:
                    recent = node.eval_tasks
                task_mean = world.vectors[recent].mean(axis=0).astype(np.float64)
                sizes.append(len(q))
                if len(q) == 0:
                    qs.append(0.0)
                    proxies.append(0.0)
                    poisoned.append(0.0)
                    continue
                tm = task_mean / max(np.linalg.norm(task_mean), 1e-30)
                qs.append(float((q * (unit @ tm)).mean()))
                # A row is genuine when its text is a real pattern of the domain it is filed
                # under and its stored embedding still points at that text.
                p_safe = np.where(pat >= 0, pat, 0)
                genuine = (
                    (pat >= 0)
                    & (world.domain_of[p_safe] == tag)
                    & (np.einsum("md,md->m", unit, true_unit[p_safe]) >= GENUINE_COS)
                )
                tasks = node.eval_tasks
                sims = unit @ true_unit[tasks].T  # (M, tasks): search within the task's domain
                task_dom = world.domain_of[tasks]
                sims[tag[:, None] != task_dom[None, :]] = -np.inf
                cols = np.arange(len(tasks))
                best = sims.argmax(axis=0)
                found = np.isfinite(sims[best, cols])
                rel = np.einsum("td,td->t", true_unit[p_safe[best]], true_unit[tasks])
                hit = found & genuine[best] & (rel >= cfg.hit_cos)
                proxies.append(float(np.where(hit, world.usefulness[p_safe[best]], 0.0).mean()))
                k = min(POISON_TOP_K, len(q))
                top = np.argpartition(-sims, k - 1, axis=0)[:k] if k < len(q) else None
                top = np.argsort(-sims, axis=0)[:k] if top is None else top
                in_domain = np.isfinite(sims[top, cols[None, :]])
                poisoned.append(float((in_domain & ~genuine[top]).any(axis=0).mean()))
                if method == "fai" and node.ledger is not None:
                    nearest.append((proxies[-1], poisoned[-1]))
                    blank = feedback.OutcomeLedger(node.sightings)
                    unreported.append(self._ranked_figures(node, true_unit, blank))
                    proxies[-1], poisoned[-1] = self._ranked_figures(node, true_unit, node.ledger)
            out[method] = {
                "Q": float(np.mean(qs)),
                "proxy": float(np.mean(proxies)),
                "poisoned": float(np.mean(poisoned)),
                "library": float(np.mean(sizes)),
            }
            if nearest:
                out[method]["proxy_nearest"] = float(np.mean([x for x, _ in nearest]))
                out[method]["poisoned_nearest"] = float(np.mean([y for _, y in nearest]))
                out[method]["proxy_unreported"] = float(np.mean([x for x, _ in unreported]))
                out[method]["poisoned_unreported"] = float(np.mean([y for _, y in unreported]))
        return out

    def _ranked_figures(
        self, node: _Node, true_unit: np.ndarray, ledger: feedback.OutcomeLedger
    ) -> tuple[float, float]:
        """With feedback: the node's retrieval proxy and poisoned@3 under its real recall
        ranking (cutoff, utility, standing, calibration, corroboration; feedback.recall)
        with `ledger`'s reports, instead of the nearest neighbours; the same rules for a
        hit and a genuine row."""
        world, view = self.world, self._view(node)
        if len(self._genuine) < len(self._unit):  # rows registered since: extend the flags
            pat, tag, unit = (x[len(self._genuine) :] for x in (self._pat, self._tag, self._unit))
            p_safe = np.where(pat >= 0, pat, 0)
            cos = np.einsum("md,md->m", unit, true_unit[p_safe])
            flags = (pat >= 0) & (world.domain_of[p_safe] == tag) & (cos >= GENUINE_COS)
            self._genuine = np.concatenate([self._genuine, flags])
        proxy, poisoned = [], []
        for task in node.eval_tasks.tolist():
            dom = int(world.domain_of[task])
            got = feedback.recall(
                view, true_unit[task], dom, ledger, POISON_TOP_K, self._refused_check(node)
            )
            rows = [self._row(e) for e in got]
            if not rows:
                proxy.append(0.0)
                poisoned.append(0.0)
                continue
            genuine = self._genuine[rows]
            best = int(self._pat[rows[0]])
            hit = genuine[0] and float(true_unit[best] @ true_unit[task]) >= self.cfg.hit_cos
            proxy.append(float(world.usefulness[best]) if hit else 0.0)
            poisoned.append(float(not genuine.all()))
        return float(np.mean(proxy)), float(np.mean(poisoned))

    def _report(self) -> dict:
        s = self.stats
        hist = self.latency_hist
        total = hist.sum()

        def pct(p: float) -> float | None:
            if total == 0:
                return None
            return float(np.searchsorted(np.cumsum(hist), p * total))

        rounds = self.per_round
        gossip = [x["gossip_bytes_per_node"] for x in rounds]
        classes = {id(n.receiver) for n in self.honest}
        return {
            "config": asdict(self.cfg),
            "curves": self.curves,
            "final": self.curves[-1] if self.curves else {},
            "network": {
                "batches": int(s["batches"]),
                "honest_batches": int(s["honest_batches"]),
                "byzantine_batches": int(s["byzantine_batches"]),
                "experiences": int(s["experiences"]),
                "bytes_per_batch": s["honest_batch_bytes"] / max(1, s["honest_batches"]),
                "bytes_per_experience": s["honest_batch_bytes"] / max(1, s["honest_experiences"]),
                "experiences_per_batch": s["honest_experiences"] / max(1, s["honest_batches"]),
                "deliveries": int(s["deliveries"]),
                "undecodable": int(s["undecodable"]),
                "missed_by_gossip": int(s["missed_by_gossip"]),
                "repaired": int(s["repaired"]),
                "repair_pending": sum(len(set(n.repair) | set(n.repair_due)) for n in self.honest),
                "latency_p50_ms": pct(0.5),
                "latency_p95_ms": pct(0.95),
                "gossip_bytes_per_node_per_round": float(np.mean(gossip)) if gossip else 0.0,
                "repair_bytes_per_node_per_round": float(
                    np.mean([x.get("repair_bytes_per_node", 0.0) for x in rounds])
                ),
                "wire_version": self.cfg.wire_version,
                "baseline_blocks_made": len(self.blocks) - 1,  # the reference is no one's
                "baseline_blocks_attached": int(s["baseline_blocks_attached"]),
                "baseline_fetches": int(s["baseline_fetches"]),
                "baseline_fetch_bytes_per_node_per_round": s["baseline_fetch_bytes"]
                / max(1, len(self.honest) * len(rounds)),
                "failures": int(s["failures"]),
                "rejoins": int(s["rejoins"]),
            },
            "deltasoup": {
                "honest_rows_received": int(s["honest_rows_received"]),
                "honest_rows_kept": int(s["honest_rows_kept"]),
                "byzantine_rows_received": int(s["byzantine_rows_received"]),
                "byzantine_rows_kept": int(s["byzantine_rows_kept"]),
                "honest_retention": s["honest_rows_kept"] / max(1, s["honest_rows_received"]),
                "byzantine_kept_share": (
                    s["byzantine_rows_kept"] / s["byzantine_rows_received"]
                    if s["byzantine_rows_received"]
                    else None
                ),
            },
            "timing": {
                "wall_s": s["wall_s"],
                "node_rounds": self.cfg.nodes * self.cfg.rounds,
                "soup_runs": int(s["soup_runs"]),
                "batches_per_receive_round": (
                    s["node_receive_batches"] / max(1, s["node_receive_rounds"])
                ),
                "receivers_at_end": len(classes),
                "rejoined_receivers": int(s["rejoined_receivers"]),
                "measured_nodes": len(self.measured),
                "splits": int(s["splits"]),
                "cpu_encode_s": s["cpu_encode_s"],
                "cpu_decode_s": s["cpu_decode_s"],
                "decode_ms_per_batch": 1000 * s["cpu_decode_s"] / max(1, s["batches"]),
                "deltasoup_ms_per_batch": (1000 * s["cpu_deltasoup_s"] / max(1, s["soup_batches"])),
                "cpu_network_s": s["cpu_network_s"],
                "cpu_deltasoup_s": s["cpu_deltasoup_s"],
                "cpu_merge_s": s["cpu_merge_s"],
                "cpu_eval_s": s["cpu_eval_s"],
            },
            "per_round": rounds,
            **({"adversary": self._adversary_report()} if self._extended() else {}),
        }

    def _extended(self) -> bool:
        """Whether the run uses what SimConfig's defaults leave off (feedback, Sybils, the
        plausible attacks): only such runs carry the `adversary` block, so a default run's
        report is what it was before these existed."""
        cfg = self.cfg
        plausible = cfg.byzantine > 0 and cfg.attack in adversary.PLAUSIBLE
        return cfg.feedback or cfg.sybils != "none" or plausible

    def _adversary_report(self) -> dict:
        """Sybil identities, poisoned@3 per evaluated round (so "poisoned@3 <= 1% by round
        50" can be read), attack rows in the measured libraries, and what feedback did."""
        fai = [(c["round"], c["fai"]["poisoned"]) for c in self.curves]
        within = next(
            (r for i, (r, _) in enumerate(fai) if all(p <= POISON_TARGET for _, p in fai[i:])),
            None,
        )
        byz = [n for n in self.nodes if n.byzantine]
        attack_keys = {k.public_key for n in byz for k in n.identities}
        rows = [[e for e in n.fai.values() if e.source in attack_keys] for n in self.measured]
        offered = [sum(e.source in attack_keys for e in self._recallable(n)) for n in self.measured]
        out = {
            "sybils": self.cfg.sybils,
            "identities_per_attacker": self.identities_per_attacker() if byz else 0,
            "byzantine_identities": len(attack_keys),
            "poisoned_by_round": [
                {"round": c["round"], **{m: c[m]["poisoned"] for m in METHODS}} for c in self.curves
            ],
            "poison_target": POISON_TARGET,
            "fai_poisoned_within_target_from_round": within,
            "byzantine_rows_in_library": float(np.mean([len(x) for x in rows])),
            # What recall may still offer: rows only sources refused since sent are not.
            "byzantine_rows_recallable": float(np.mean(offered)),
            "harmful_rows_in_library": float(
                np.mean([sum(e.text in self.world.harm_index for e in x) for x in rows])
            ),
        }
        if self.cfg.feedback:
            out["feedback"] = self._feedback_report(attack_keys)
        return out

    def _feedback_report(self, attack_keys: set[bytes]) -> dict:
        """What the measured nodes' outcome books hold at the end: standing of the sources
        reported on (attacker identities vs honest nodes), how many of each are muted, and
        the rows muting kept out (counted per receiving node)."""
        s = self.stats
        standing = {"byzantine": [], "honest": []}
        muted = {"byzantine": [], "honest": []}
        for node in self.measured:
            book = node.ledger
            for src, tally in book.sources.items():
                side = "byzantine" if src in attack_keys else "honest"
                standing[side].append(ranking.standing(tally))
            for side in muted:
                muted[side].append(
                    sum((src in attack_keys) == (side == "byzantine") for src in book.muted)
                )
        return {
            "reports_on_byzantine_rows": int(s["reports_on_byzantine"]),
            "reports_on_honest_rows": int(s["reports_on_honest"]),
            "byzantine_rows_muted": int(s["byzantine_rows_muted"]),
            "honest_rows_muted": int(s["honest_rows_muted"]),
            "byzantine_standing_mean": float(np.mean(standing["byzantine"]))
            if standing["byzantine"]
            else None,
            "honest_standing_mean": float(np.mean(standing["honest"]))
            if standing["honest"]
            else None,
            "byzantine_identities_muted_per_node": float(np.mean(muted["byzantine"])),
            "honest_sources_muted_per_node": float(np.mean(muted["honest"])),
        }


def run(config: SimConfig, progress=None) -> dict:
    return Simulation(config).run(progress)
