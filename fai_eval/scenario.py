"""DeltaSoup under attack, measured on real embeddings: the acceptance scenario.

N nodes, f = N/3 of them Byzantine. The corpus (1,279 pattern sentences, 8 domains) is
shuffled with a fixed seed: 1,000 texts are split evenly over the honest nodes, the rest
form the Byzantine nodes' pool of plausible texts. Every node embeds with the default model
(vectors shipped in data/, see bench/embed_corpus.py), compresses against its own library
mean and sends one signed batch per domain. A receiver (a fresh honest node) aggregates
everything in one round and we count, per attack: honest rows kept, Byzantine rows
rejected, the Byzantine share of kept rows and of merged clusters (a cluster is Byzantine
when no honest row is in it), and the damage: the share of 500 honest queries whose top-10
in the merged set holds a Byzantine cluster.

`TableEmbedder` answers from the shipped vectors and falls back to the real model for
texts it does not know: an explicit test helper, never a default.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from fai_core.corpus import CORPUS_DOMAINS, load_pattern_corpus
from fai_core.deltasoup import DeltaSoup, DeltaSoupConfig, paper_filter_scores
from fai_core.domain_anchors import shipped_vectors
from fai_core.embedding import DEFAULT_MODEL, Embedder, default_embedder
from fai_core.identity import NodeKey
from fai_core.privacy import PrivacyAccountant, privatize
from fai_core.refusals import Drop
from fai_eval import attacks

NOW_MS = 1_760_000_000_000
#: DP runs: clip (= sensitivity) just above the largest honest scale of the scenario
#: (max 0.0467, median 0.038) and delta; epsilon follows from the sigma asked for (Eq. 27).
DP_CLIP = 0.05
DP_DELTA = 1e-5


def dp_epsilon(sigma: float, clip: float = DP_CLIP, delta: float = DP_DELTA) -> float:
    """The epsilon whose Eq. 27 sigma is `sigma` (inverse of privacy.gaussian_sigma)."""
    return clip * math.sqrt(2.0 * math.log(1.25 / delta)) / sigma


def dp_noised(signed, key: NodeKey, sigma: float, rng: np.random.Generator, clip=DP_CLIP):
    """`signed` through privacy.privatize with noise sigma (an unlimited accountant)."""
    acc = PrivacyAccountant(math.inf, 1.0, "basic")
    eps = dp_epsilon(sigma, clip)
    return privatize(signed, key, acc, epsilon=eps, delta=DP_DELTA, clip=clip, rng=rng)


def shipped_embeddings(name: str) -> tuple[list[str], np.ndarray]:
    """(texts, float32 unit vectors) of a shipped embedding file ('patterns' or 'harmful')."""
    return shipped_vectors(name)


class TableEmbedder:
    """Looks texts up in the shipped vectors; unknown texts go to `fallback` (real model)."""

    def __init__(self, fallback: Embedder | None = None) -> None:
        self._table: dict[str, np.ndarray] = {}
        for name in ("patterns", "harmful"):
            texts, vectors = shipped_embeddings(name)
            self._table.update(zip(texts, vectors, strict=True))
        self._fallback = fallback
        self.misses = 0

    @property
    def model_id(self) -> str:
        return DEFAULT_MODEL

    @property
    def dimension(self) -> int:
        return 384

    def embed(self, texts: list[str]) -> np.ndarray:
        out = np.empty((len(texts), 384), dtype=np.float32)
        unknown = [i for i, t in enumerate(texts) if t not in self._table]
        for i, t in enumerate(texts):
            if t in self._table:
                out[i] = self._table[t]
        if unknown:
            self.misses += len(unknown)
            if self._fallback is None:
                self._fallback = default_embedder()
            out[unknown] = self._fallback.embed([texts[i] for i in unknown])
        return out


@dataclass
class Node:
    key: NodeKey
    texts: list[str]
    domains: list[str]
    vectors: np.ndarray
    quality: np.ndarray

    def batches(self, *, ts: int, seq0: int = 1, model: str = DEFAULT_MODEL) -> list:
        base = self.vectors.mean(axis=0)
        out = []
        for k, dom in enumerate(CORPUS_DOMAINS):
            idx = [i for i, d in enumerate(self.domains) if d == dom]
            if idx:
                out.append(
                    attacks.signed_batch(
                        self.key,
                        [self.texts[i] for i in idx],
                        self.vectors[idx],
                        domain=dom,
                        quality=self.quality[idx],
                        seq=seq0 + k,
                        timestamp_ms=ts,
                        model=model,
                        baseline=base,
                    )
                )
        return out


class Scenario:
    def __init__(self, n_nodes: int = 12, seed: int = 7, honest_texts: int = 1000) -> None:
        self.rng = np.random.default_rng(seed)
        corpus = load_pattern_corpus()
        texts, vectors = shipped_embeddings("patterns")
        assert texts == [t for _, t in corpus], "shipped embeddings are stale"
        self.domains = np.array([d for d, _ in corpus])
        self.texts, self.vectors = texts, vectors
        self.index = {t: i for i, t in enumerate(texts)}
        self.n, self.f = n_nodes, n_nodes // 3
        h = n_nodes - self.f
        perm = self.rng.permutation(len(texts))
        per = honest_texts // h
        self.honest_idx = perm[: per * h]
        self.pool_idx = perm[per * h :]
        self.honest = [
            self._node(1000 + i, self.honest_idx[i * per : (i + 1) * per]) for i in range(h)
        ]
        self.byz_keys = [NodeKey(bytes([200 + i]) * 32) for i in range(self.f)]
        self.per_node = per
        hv = vectors[self.honest_idx]
        self.honest_mean, self.honest_std = hv.mean(axis=0), hv.std(axis=0)
        self.queries = self.rng.choice(self.honest_idx, size=500, replace=False)
        self.harmful_texts, self.harmful_vectors = shipped_embeddings("harmful")

    def _node(self, tag: int, idx: np.ndarray, key: NodeKey | None = None) -> Node:
        q = np.clip(self.rng.beta(4, 3, len(idx)), 0.01, 0.99)
        key = key or NodeKey(tag.to_bytes(2, "big") * 16)
        texts = [self.texts[i] for i in idx]
        return Node(key, texts, list(self.domains[idx]), self.vectors[idx], q)

    def honest_batches(self) -> list:
        return [b for node in self.honest for b in node.batches(ts=NOW_MS - 30_000)]

    def byz_share(self, i: int) -> np.ndarray:
        return np.array_split(self.pool_idx, self.f)[i]


def _byzantine(sc: Scenario, attack: str, **kw) -> tuple[list, list]:
    """(batches for the measured round, batches for an earlier round) of all f attackers."""
    ts, out, earlier = NOW_MS - 20_000, [], []
    for i, key in enumerate(sc.byz_keys):
        node = sc._node(0, sc.byz_share(i), key)
        plain = node.batches(ts=ts, seq0=100)
        if attack == "mismatch":
            out += _mismatch_batches(sc, i, key, ts, seq0=200 + len(out))
        elif attack == "replay":
            old = node.batches(ts=NOW_MS - (120_000 if i % 2 == 0 else 600_000), seq0=1)
            out += old
            if i % 2 == 0:
                earlier += old  # seen before: replayed CIDs; the others are stale
        else:
            out += _attacker_batches(sc, attack, i, key, node, plain, ts, kw)
    return out, earlier


def _attacker_batches(
    sc: Scenario, attack: str, i: int, key: NodeKey, node: Node, plain: list, ts: int, kw: dict
) -> list:
    """The batches Byzantine node `i` sends under `attack` (`plain`: its honest-looking ones)."""
    rng = sc.rng
    if attack == "benign":
        return plain
    if attack == "random_signs":
        return [attacks.random_signs(b, key, rng) for b in plain]
    if attack == "sign_flip":
        return [attacks.sign_flip(b, key) for b in plain]
    if attack == "scale_inflation":
        return [attacks.scale_inflation(b, key, kw.get("factor", 3.0)) for b in plain]
    if attack in ("ipm", "alie", "gaussian"):
        return [
            _rebatch(key, b.batch, _forged_embeddings(sc, attack, len(b.batch), kw), ts)
            for b in plain
        ]
    if attack == "confidence_inflation":
        node.quality = np.clip(rng.uniform(0.97, 0.999, len(node.quality)), 0, 0.999)
        return node.batches(ts=ts, seq0=100)
    if attack == "domain_spoof":
        out = []
        for b in plain:
            k = CORPUS_DOMAINS.index(b.batch.domain)
            other = CORPUS_DOMAINS[(k + 1 + int(rng.integers(0, 7))) % 8]
            own = sc.vectors[[sc.index[t] for t in b.batch.texts]]
            out.append(_rebatch(key, b.batch, own, ts, domain=other))
        return out
    if attack in ("flooding", "copies"):
        return _copy_batches(sc, attack, i, key, ts)
    if attack in ("alie_plausible", "alie_plausible_nocap"):
        return _plausible_batches(sc, attack, i, key, ts, kw.get("z", 0.0))
    raise ValueError(f"unknown attack {attack!r}")


def _forged_embeddings(sc: Scenario, attack: str, m: int, kw: dict) -> np.ndarray:
    """`m` made-up embeddings for the IPM, ALIE or Gaussian attack."""
    if attack == "ipm":
        return attacks.ipm_embeddings(sc.honest_mean, m, kw.get("eps", 1.0), sc.rng)
    if attack == "alie":
        return attacks.alie_embeddings(sc.honest_mean, sc.honest_std, m, kw.get("z", 1.0), sc.rng)
    return attacks.gaussian_embeddings(m, 384, kw.get("sigma", 0.05), sc.rng)


def _mismatch_batches(sc: Scenario, i: int, key: NodeKey, ts: int, seq0: int) -> list:
    """Node `i`'s share of the harmful texts, each sent with its nearest honest text's
    embedding, one batch per domain numbered from `seq0`."""
    sims = sc.harmful_vectors @ sc.vectors[sc.honest_idx].T
    nearest = sc.honest_idx[sims.argmax(axis=1)]
    mine = np.array_split(np.arange(len(sc.harmful_texts)), sc.f)[i]
    out = []
    for dom in CORPUS_DOMAINS:
        sel = [j for j in mine if sc.domains[nearest[j]] == dom]
        if sel:
            out.append(
                attacks.signed_batch(
                    key,
                    [sc.harmful_texts[j] for j in sel],
                    sc.vectors[nearest[sel]],
                    domain=dom,
                    quality=np.full(len(sel), 0.8),
                    seq=seq0 + len(out),
                    timestamp_ms=ts,
                    model=DEFAULT_MODEL,
                )
            )
    return out


def _copy_batches(sc: Scenario, attack: str, i: int, key: NodeKey, ts: int) -> list:
    """Copies of honest texts as node `i`'s own: one node's worth, or 10x with its own
    texts for flooding, in chunks of 100."""
    reps = 10 if attack == "flooding" else 1
    want = reps * sc.per_node
    own = list(sc.byz_share(i)) if attack == "flooding" else []
    size = min(want - len(own), len(sc.honest_idx))
    extra = sc.rng.choice(sc.honest_idx, size=size, replace=False).tolist()
    copy = sc._node(0, np.array(own + extra), key)
    return _chunked(copy, ts)


def _plausible_batches(sc: Scenario, attack: str, i: int, key: NodeKey, ts: int, z: float) -> list:
    """ALIE with real texts: per domain, the pool texts nearest to honest mean + z std
    (node `i`'s share of the pool, or the whole pool without the cap)."""
    pool = sc.vectors[sc.pool_idx]
    count = len(sc.pool_idx) if attack.endswith("nocap") else len(sc.byz_share(i))
    idx = []
    for dom in CORPUS_DOMAINS:
        hd = sc.vectors[sc.honest_idx[sc.domains[sc.honest_idx] == dom]]
        target = hd.mean(axis=0) + z * hd.std(axis=0)
        in_dom = np.flatnonzero(sc.domains[sc.pool_idx] == dom)
        pick = attacks.nearest_to(target, pool[in_dom], max(1, count // 8))
        idx += sc.pool_idx[in_dom[pick]].tolist()
    return sc._node(0, np.array(idx), key).batches(ts=ts, seq0=100)


def _rebatch(key, batch, emb, ts, domain=None):
    return attacks.signed_batch(
        key,
        list(batch.texts),
        emb,
        domain=domain or batch.domain,
        quality=batch.quality,
        seq=batch.seq + 50,
        timestamp_ms=ts,
        model=batch.model,
    )


def _chunked(node: Node, ts: int) -> list:
    out = []
    for k in range(0, len(node.texts), 100):
        part = Node(
            node.key,
            node.texts[k : k + 100],
            node.domains[k : k + 100],
            node.vectors[k : k + 100],
            node.quality[k : k + 100],
        )
        out += part.batches(ts=ts, seq0=300 + 10 * k)
    return out


ATTACKS: list[tuple[str, str, dict]] = [
    ("no attack", "none", {}),
    ("byzantine nodes behave honestly", "benign", {}),
    ("random signs, scales U(0,1) (paper)", "random_signs", {}),
    ("sign flip", "sign_flip", {}),
    ("IPM eps=1", "ipm", {"eps": 1.0}),
    ("IPM eps=0.1", "ipm", {"eps": 0.1}),
    ("ALIE z=0.5 (embedding)", "alie", {"z": 0.5}),
    ("ALIE z=1 (embedding)", "alie", {"z": 1.0}),
    ("ALIE z=3 (embedding)", "alie", {"z": 3.0}),
    ("Gaussian sigma=0.05", "gaussian", {"sigma": 0.05}),
    ("scale inflation x1.5", "scale_inflation", {"factor": 1.5}),
    ("scale inflation x3", "scale_inflation", {"factor": 3.0}),
    ("text/embedding mismatch (harmful)", "mismatch", {}),
    ("replay (seen CID / stale)", "replay", {}),
    ("domain-tag spoofing", "domain_spoof", {}),
    ("confidence inflation", "confidence_inflation", {}),
    ("copies of honest experiences", "copies", {}),
    ("flooding ~8.6x per node (all f nodes)", "flooding", {}),
    ("ALIE plausible texts z=0", "alie_plausible", {"z": 0.0}),
    ("ALIE plausible texts z=1", "alie_plausible", {"z": 1.0}),
    ("ALIE plausible z=0, 4x texts (no pool cap)", "alie_plausible_nocap", {"z": 0.0}),
    ("no attack, all nodes DP sigma=0.002 (eps=121)", "none", {"dp_sigma": 0.002}),
    ("no attack, all nodes DP sigma=0.003 (eps=81)", "none", {"dp_sigma": 0.003}),
    (
        "scale inflation x1.5 + DP sigma=0.002",
        "scale_inflation",
        {"factor": 1.5, "dp_sigma": 0.002},
    ),
    ("scale inflation x3 + DP sigma=0.002", "scale_inflation", {"factor": 3.0, "dp_sigma": 0.002}),
]


def run_attack(
    attack: str,
    *,
    n_nodes: int = 12,
    seed: int = 7,
    config: DeltaSoupConfig | None = None,
    embedder: Embedder | None = None,
    dp_sigma: float = 0.0,
    **kw,
) -> dict:
    """One attack; `dp_sigma` > 0: every node (honest and Byzantine) DP-noises its scales
    with that sigma (clip DP_CLIP, times the inflation factor for inflated batches so the
    clip does not undo the attack) before broadcasting."""
    sc = Scenario(n_nodes, seed)
    soup = DeltaSoup(embedder or TableEmbedder(), config=config)
    honest = sc.honest_batches()
    byz, earlier = ([], []) if attack == "none" else _byzantine(sc, attack, **kw)
    if dp_sigma > 0:
        dp_rng = np.random.default_rng(seed + 1)
        keys = {k.public_key: k for k in [n.key for n in sc.honest] + sc.byz_keys}
        honest = [dp_noised(b, keys[b.batch.sender], dp_sigma, dp_rng) for b in honest]
        clip = DP_CLIP * kw.get("factor", 1.0)
        byz = [dp_noised(b, keys[b.batch.sender], dp_sigma, dp_rng, clip) for b in byz]
    if earlier:
        soup.aggregate([b.batch for b in earlier], NOW_MS - 100_000)
    batches = [b.batch for b in honest + byz]
    result = soup.aggregate(batches, NOW_MS)
    honest_keys = {n.key.public_key for n in sc.honest}
    kept_rows: dict[bool, int] = {True: 0, False: 0}
    # Rows deferred in the earlier round (replay scenario) are that round's, not this one's.
    this_round = ~result.row_backlog
    for s, drop, mine in zip(result.row_sender, result.row_drop, this_round, strict=True):
        if drop is None and mine:
            kept_rows[s in honest_keys] += 1
    honest_sent = sum(len(b.batch) for b in honest)
    byz_sent = sum(len(b.batch) for b in byz)
    clusters_honest = np.zeros(len(result), dtype=bool)
    clusters_now = np.zeros(len(result), dtype=bool)  # holds a row received this round
    for s, c, mine in zip(result.row_sender, result.row_cluster, this_round, strict=True):
        if c >= 0 and s in honest_keys:
            clusters_honest[c] = True
        if c >= 0 and mine:
            clusters_now[c] = True
    byz_cluster = ~clusters_honest & clusters_now
    unit = result.embeddings / np.linalg.norm(result.embeddings, axis=1, keepdims=True)
    sims = sc.vectors[sc.queries] @ unit.T
    top = np.argpartition(-sims, 10, axis=1)[:, :10] if len(result) > 10 else None
    damage = float(byz_cluster[top].any(axis=1).mean()) if top is not None else 0.0
    reasons: dict[str, int] = {}
    for o in result.outcomes:
        if o.sender not in honest_keys and not o.from_backlog:
            if o.drop is not None:
                reasons[o.drop.value] = reasons.get(o.drop.value, 0) + o.rows
            for d, c in o.dropped_rows.items():
                reasons[d.value] = reasons.get(d.value, 0) + c
            if o.deferred_rows:
                reasons["deferred"] = reasons.get("deferred", 0) + o.deferred_rows
    total_kept = kept_rows[True] + kept_rows[False]
    return {
        "attack": attack,
        "nodes": n_nodes,
        "byzantine_nodes": sc.f,
        "honest_sent": honest_sent,
        "honest_retention": kept_rows[True] / honest_sent,
        "byzantine_sent": byz_sent,
        "byzantine_rejection": (1 - kept_rows[False] / byz_sent) if byz_sent else None,
        "byzantine_row_share": kept_rows[False] / total_kept if total_kept else 0.0,
        "byzantine_cluster_share": float(byz_cluster.mean()) if len(result) else 0.0,
        "damage_top10": damage,
        "merged": len(result),
        "byzantine_drop_reasons": reasons,
        "honest_drops": {
            d.value: sum(
                1
                for s, x in zip(result.row_sender, result.row_drop, strict=True)
                if x is d and s in honest_keys
            )
            for d in Drop
        },
    }


def paper_filter_on_honest(seed: int = 7, tau: float = 2.0) -> dict:
    """The paper's filter as written, on the honest reconstructions of the scenario."""
    sc = Scenario(12, seed)
    x = np.concatenate([b.batch.embeddings() for b in sc.honest_batches()])
    out = {}
    for mad_scale in (1.0, 1.4826):
        s = paper_filter_scores(x, mad_scale=mad_scale)
        out[f"mad_scale={mad_scale}"] = {
            "median_score": float(np.median(s)),
            "honest_retention": float((s <= tau).mean()),
        }
    return out


def run_heterogeneous(
    *,
    n_nodes: int = 12,
    seed: int = 7,
    rounds: int = 4,
    base: int = 20,
    max_rate: float = 3.0,
    flooding: bool = False,
    drain_rounds: int = 10,
    config: DeltaSoupConfig | None = None,
    embedder: Embedder | None = None,
) -> dict:
    """Honest nodes with heterogeneous rates over several rounds (over-cap rows deferred).

    Honest node i of h sends round(base * r_i) of its texts per round (cyclically), r_i
    evenly spaced in [1, max_rate]; with `flooding`, each of the f Byzantine nodes sends 10x
    base copies of honest texts per round. After `rounds` sending rounds, quiet rounds
    (nothing new) run until the honest backlogs are empty (at most `drain_rounds`). Reports
    honest retention (kept / sent, cumulative) after every round and the Byzantine share of
    kept rows.
    """
    sc = Scenario(n_nodes, seed)
    soup = DeltaSoup(embedder or TableEmbedder(), config=config)
    h = len(sc.honest)
    rates = np.linspace(1.0, max_rate, h)
    honest_keys = {n.key.public_key for n in sc.honest}
    sent = {True: 0, False: 0}
    kept = {True: 0, False: 0}
    per_round = []
    for rnd in range(rounds + drain_rounds):
        ts = NOW_MS + rnd * 60_000
        batches = []
        if rnd < rounds:
            batches = _heterogeneous_batches(sc, rates, rnd, ts, base, flooding)
        elif all(soup.backlog_rows(k) == 0 for k in honest_keys):
            break
        for b in batches:
            sent[b.sender in honest_keys] += len(b)
        result = soup.aggregate(batches, ts + 1000)
        round_kept = _kept_by_side(result, honest_keys)
        for k in (True, False):
            kept[k] += round_kept[k]
        total = round_kept[True] + round_kept[False]
        per_round.append(
            {
                "round": rnd,
                "quiet": rnd >= rounds,
                "honest_retention": kept[True] / sent[True],
                "byzantine_row_share": round_kept[False] / total if total else 0.0,
                "honest_backlog": sum(soup.backlog_rows(k) for k in honest_keys),
                "deferred": sum(o.deferred_rows for o in result.outcomes),
                "over_cap": sum(o.dropped_rows.get(Drop.OVER_CAP, 0) for o in result.outcomes),
            }
        )
    return {
        "nodes": n_nodes,
        "flooding": flooding,
        "rates": [round(float(r), 2) for r in rates],
        "honest_sent": sent[True],
        "honest_retention": kept[True] / sent[True],
        "byzantine_sent": sent[False],
        "byzantine_row_share": kept[False] / (kept[True] + kept[False]),
        "rounds": per_round,
    }


def _kept_by_side(result, honest_keys: set[bytes]) -> dict[bool, int]:
    """Rows an aggregation kept, counted by sender: True honest, False Byzantine."""
    kept = {True: 0, False: 0}
    for s, drop in zip(result.row_sender, result.row_drop, strict=True):
        if drop is None:
            kept[s in honest_keys] += 1
    return kept


def _heterogeneous_batches(
    sc: Scenario, rates: np.ndarray, rnd: int, ts: int, base: int, flooding: bool
) -> list:
    """Sending round `rnd` of run_heterogeneous: round(base * rate) texts from each honest
    node (cyclically), and with `flooding` 10x base honest copies from each Byzantine node."""
    batches = []
    for node, rate in zip(sc.honest, rates, strict=True):
        m = round(base * rate)
        idx = [(rnd * m + j) % len(node.texts) for j in range(m)]
        part = Node(
            node.key,
            [node.texts[i] for i in idx],
            [node.domains[i] for i in idx],
            node.vectors[idx],
            node.quality[idx],
        )
        batches += [b.batch for b in part.batches(ts=ts, seq0=1 + 10 * rnd)]
    if flooding:
        for key in sc.byz_keys:
            pick = sc.rng.choice(sc.honest_idx, size=10 * base, replace=False)
            copy = sc._node(0, pick, key)
            batches += [b.batch for b in copy.batches(ts=ts, seq0=1 + 10 * rnd)]
    return batches
