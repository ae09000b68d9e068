"""Domain anchors: what each built-in domain's texts look like, fixed before any peer speaks.

Why: the sender histories (fai_core.deltasoup_history) build a domain's centroid from the
senders a node has heard. Where attackers are as many as the honest senders of a domain,
or arrive before them, that centroid is theirs, and a receiver subscribed to one domain
never sees the other domains a spoofed row really belongs to. An anchor is a reference no
sender can move: the centroid of the shipped corpus's sentences of the domain
(`data/patterns.jsonl`, about 160 per domain in `CORPUS_DOMAINS`), embedded with the
node's own model, and the median domain margin of those sentences (`margins`: cosine to
their domain's centroid minus the highest cosine to another's).

It is a prior, and says so: a fleet whose work in "devops" drifts from the corpus's
devops sentences has honest senders with lower margins than the anchor's, which is why
the anchor's margin is a floor under the middle of the senders' (`anchored_mid`), never
the yardstick's spread. Domains outside `CORPUS_DOMAINS` have no anchor and keep the
histories' own references.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib.resources import files

import numpy as np

from fai_core.corpus import CORPUS_DOMAINS, load_pattern_corpus
from fai_core.embedding import DEFAULT_MODEL

_EPS = 1e-30


@dataclass(frozen=True)
class DomainAnchors:
    """Per anchored domain: its unit centroid, and the median margin of its own sentences
    with their spread (1.4826 times their median absolute deviation)."""

    centroids: dict[str, np.ndarray]
    margin_mid: dict[str, float]
    margin_sigma: dict[str, float]

    def separation(self) -> float:
        """How well the model tells the domains apart: the median over domains of their
        sentences' median margin divided by its spread."""
        return float(
            np.median(
                [self.margin_mid[d] / max(self.margin_sigma[d], _EPS) for d in self.centroids]
            )
        )

    def margin_of(self, dom: str) -> tuple[float, float] | None:
        """(median margin, spread) of an anchored domain, None for any other."""
        if dom not in self.centroids:
            return None
        return self.margin_mid[dom], self.margin_sigma[dom]

    @classmethod
    def from_vectors(cls, by_domain: dict[str, np.ndarray]) -> DomainAnchors:
        """Anchors from unit text embeddings per domain (at least two domains)."""
        if len(by_domain) < 2 or any(len(v) == 0 for v in by_domain.values()):
            raise ValueError("anchors need at least two domains with sentences each")
        centroids = {}
        for dom, vecs in sorted(by_domain.items()):
            c = np.asarray(vecs, dtype=np.float64).mean(axis=0)
            centroids[dom] = c / max(float(np.linalg.norm(c)), _EPS)
        mids, sigmas = {}, {}
        for dom, vecs in sorted(by_domain.items()):
            m = margins(np.asarray(vecs, dtype=np.float64), dom, centroids)
            mids[dom] = float(np.median(m))
            sigmas[dom] = 1.4826 * float(np.median(np.abs(m - mids[dom])))
        return cls(centroids, mids, sigmas)


def margins(unit: np.ndarray, dom: str, centroids: dict[str, np.ndarray]) -> np.ndarray | None:
    """Per row (unit text embeddings tagged `dom`): its cosine to `dom`'s centroid minus its
    highest cosine to another domain's, or None unless `dom` and another domain have
    centroids. A row written for its domain is nearer that domain's centroid than any
    other's; a row of another domain under a spoofed tag is not. On the shipped corpus the
    margin separates a domain's sentences from other domains' by three times its spread
    per row, where the cosine to the domain's centroid alone separates them by two."""
    others = [c for d, c in sorted(centroids.items()) if d != dom]
    if dom not in centroids or not others:
        return None
    return unit @ centroids[dom] - (unit @ np.stack(others).T).max(axis=1)


def shipped_vectors(name: str) -> tuple[list[str], np.ndarray]:
    """(texts, float32 unit vectors) of a shipped embedding file ('patterns' or 'harmful'),
    computed with `DEFAULT_MODEL` (data/embeddings.meta.json)."""
    data = files("fai_core") / "data"
    meta = json.loads((data / "embeddings.meta.json").read_text("utf-8"))
    entry = meta["files"][name]
    source = "patterns.jsonl" if name == "patterns" else "harmful_patterns.jsonl"
    texts = [json.loads(x)["text"] for x in (data / source).read_text("utf-8").splitlines() if x]
    with (data / entry["npy"]).open("rb") as f:
        vectors = np.load(f).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return texts, vectors


#: Anchors are used only from a model that separates the built-in domains: the median over
#: domains of (median margin / its spread) of their own sentences. all-MiniLM-L6-v2: 0.9-1.3
#: per domain; the hashing test embedder: about 0.25 (bags of words have no topics), under
#: which honest lessons were refused as domain_mismatch in a two-node fleet.
MIN_SEPARATION = 0.5


def builtin_anchors(embedder) -> DomainAnchors | None:
    """Anchors of `CORPUS_DOMAINS` in `embedder`'s space: the shipped vectors when it is the
    default model at its dimension, the corpus embedded by it otherwise (once, at start);
    None when that space does not separate the domains (`MIN_SEPARATION`)."""
    corpus = load_pattern_corpus()
    if embedder.model_id == DEFAULT_MODEL:
        texts, vectors = shipped_vectors("patterns")
        if vectors.shape[1] != embedder.dimension or texts != [t for _, t in corpus]:
            raise ValueError("the shipped corpus vectors do not match the corpus")
    else:
        vectors = np.asarray(embedder.embed([t for _, t in corpus]), dtype=np.float32)
        vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), _EPS)
    domains = np.array([d for d, _ in corpus])
    anchors = DomainAnchors.from_vectors({d: vectors[domains == d] for d in CORPUS_DOMAINS})
    return anchors if anchors.separation() >= MIN_SEPARATION else None


def anchored_mid(sender_mid: float | None, anchor_mid: float | None) -> float | None:
    """The middle a sender's mean margin is measured from: the senders' median, never below
    the anchor's (senders can pull a median down by being many; they cannot pull the
    anchor). Either may be missing."""
    known = [m for m in (sender_mid, anchor_mid) if m is not None]
    return max(known) if known else None
