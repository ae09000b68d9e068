"""What the simulated agents do: tasks drawn from real pattern sentences, and what they learn.

The corpus (1,279 pattern sentences over 8 domains, with the shipped all-MiniLM-L6-v2
vectors) is the world. Every pattern has a hidden usefulness u ~ Beta(4, 3), the ground
truth the agents only estimate. Within a domain, task popularity follows Zipf (s = 1) over
a seeded order of the domain's patterns, so popular lessons recur across the fleet: that
recurrence is what sharing can exploit.

Each node has its own profile: 1 or 2 domains with Dirichlet(1) weights, a task rate, an
extraction probability (how often a task ends in a distilled lesson) and an estimation
noise (how well it scores what it learned). A task is a pattern; extracting it yields an
experience with that pattern's text and the node's noisy estimate of its usefulness as
quality. Extraction does not depend on what the node already knows, so every method of
sharing sees exactly the same workload.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fai_core.corpus import CORPUS_DOMAINS, load_pattern_corpus
from fai_eval.attacks import load_harmful_texts
from fai_eval.scenario import shipped_embeddings

ZIPF_S = 1.0
#: Hidden usefulness of a harmful lesson (data/harmful_patterns.jsonl): what using it does
#: to a task, on the reward scale of outcome feedback, so always below "no effect" (0).
HARM_USEFULNESS = (-1.0, -0.3)
#: Fleet-wide knobs of a node profile (ranges of uniform draws).
TASK_RATE = (0.5, 2.0)  # tasks per 60 s round (Poisson mean)
EXTRACT_PROB = (0.1, 0.3)  # share of tasks that end in an extracted experience
QUALITY_NOISE = (0.05, 0.2)  # std of the node's quality estimate around the true usefulness


class World:
    """The corpus as the simulation sees it: texts, true vectors, domains, usefulness."""

    def __init__(self, seed: int) -> None:
        corpus = load_pattern_corpus()
        texts, vectors = shipped_embeddings("patterns")
        if texts != [t for _, t in corpus]:
            raise RuntimeError("shipped embeddings do not match the corpus")
        rng = np.random.default_rng([seed, 1])
        self.texts = texts
        self.vectors = vectors
        self.domain_of = np.array([CORPUS_DOMAINS.index(d) for d, _ in corpus])
        self.domains = CORPUS_DOMAINS
        self.usefulness = rng.beta(4.0, 3.0, len(texts))
        self.index = {t: i for i, t in enumerate(texts)}
        #: Per domain: pattern indices in popularity order, and their Zipf probabilities.
        self.by_domain: list[np.ndarray] = []
        self.popularity: list[np.ndarray] = []
        for k in range(len(CORPUS_DOMAINS)):
            members = rng.permutation(np.flatnonzero(self.domain_of == k))
            w = 1.0 / np.arange(1, len(members) + 1) ** ZIPF_S
            self.by_domain.append(members)
            self.popularity.append(w / w.sum())
        self.harmful_texts, self.harmful_vectors = shipped_embeddings("harmful")
        # The harmful lessons' topics (-1: none of the corpus domains) and hidden usefulness,
        # from a stream of their own so that every draw above is what it was without them.
        topic = {text: dom for dom, text in load_harmful_texts()}
        self.harmful_domain = np.array(
            [CORPUS_DOMAINS.index(topic[t]) if topic[t] in CORPUS_DOMAINS else -1
             for t in self.harmful_texts]
        )  # fmt: skip
        harm_rng = np.random.default_rng([seed, 13])
        self.harmful_usefulness = harm_rng.uniform(*HARM_USEFULNESS, len(self.harmful_texts))
        self.harm_index = {t: i for i, t in enumerate(self.harmful_texts)}


@dataclass
class Profile:
    domains: np.ndarray  # domain indices, 1 or 2
    weights: np.ndarray  # task share per domain
    task_rate: float
    extract_prob: float
    quality_noise: float


def draw_profile(rng: np.random.Generator, n_domains: int) -> Profile:
    k = 1 if rng.random() < 0.5 else 2
    domains = np.sort(rng.choice(n_domains, size=k, replace=False))
    return Profile(
        domains=domains,
        weights=rng.dirichlet(np.ones(k)),
        task_rate=float(rng.uniform(*TASK_RATE)),
        extract_prob=float(rng.uniform(*EXTRACT_PROB)),
        quality_noise=float(rng.uniform(*QUALITY_NOISE)),
    )


def draw_tasks(world: World, profile: Profile, rng: np.random.Generator, n: int) -> np.ndarray:
    """`n` tasks (pattern indices) from the node's distribution."""
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    dom = rng.choice(profile.domains, size=n, p=profile.weights)
    out = np.empty(n, dtype=np.int64)
    for k in np.unique(dom):
        sel = dom == k
        out[sel] = rng.choice(world.by_domain[k], size=int(sel.sum()), p=world.popularity[k])
    return out


def estimate_quality(world: World, patterns: np.ndarray, noise: float, rng) -> np.ndarray:
    """The node's noisy score of what it learned, inside the wire's open interval (0, 1)."""
    q = world.usefulness[patterns] + rng.normal(0.0, noise, len(patterns))
    return np.clip(q, 0.01, 0.99)
