"""A corpus of realistic experience patterns, for measurements on real sentence embeddings.

`data/patterns.jsonl` holds 1,200+ pattern texts (at least 150 per domain in
`CORPUS_DOMAINS`), written by hand for this project in the style agents distil: short,
general, reusable lessons with no user data. Random vectors say little about how BitDelta
compression preserves similarity, how nearest-neighbour recall holds up, or how DeltaSoup's
Byzantine-robust filtering behaves, because real embeddings cluster by topic and phrasing.
Benchmarks and tests embed these texts to measure those properties on realistic input.

This is measurement data, not training data: nothing here is meant to teach a model.
"""

from __future__ import annotations

import json
from importlib.resources import files

CORPUS_DOMAINS: tuple[str, ...] = (
    "coding",
    "writing",
    "data-analysis",
    "devops",
    "research",
    "customer-support",
    "security",
    "design",
)


def load_pattern_corpus() -> list[tuple[str, str]]:
    """Every (domain, text) pair of the corpus, in file order."""
    resource = files("fai_core") / "data" / "patterns.jsonl"
    entries: list[tuple[str, str]] = []
    for line in resource.read_text(encoding="utf-8").splitlines():
        if line:
            record = json.loads(line)
            entries.append((record["domain"], record["text"]))
    return entries
