"""How the recall cutoff (a cosine distance) separates domains on the shipped corpus.

Every pattern of fai_core/data/patterns.jsonl stands in for a task: for each candidate
cutoff, the share of queries that still find a pattern of their own domain within it,
and the share of cross-domain pairs that fall within it (unrelated results a recall
would return). Uses the shipped all-MiniLM-L6-v2 embeddings: no model is loaded.

    python bench/cutoff.py [--json]
"""

from __future__ import annotations

import argparse
import json
from importlib.resources import files

import numpy as np

from fai_core.corpus import load_pattern_corpus
from fai_core.ranking import MAX_DISTANCE

CUTOFFS = (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8)


def measure() -> dict:
    corpus = load_pattern_corpus()
    path = files("fai_core") / "data" / "patterns.all-MiniLM-L6-v2.f16.npy"
    with path.open("rb") as f:
        vectors = np.load(f).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    domains = np.array([d for d, _ in corpus])
    distance = 1.0 - vectors @ vectors.T
    np.fill_diagonal(distance, np.inf)
    same = domains[:, None] == domains[None, :]
    rows = []
    for cut in CUTOFFS:
        within = distance <= cut
        rows.append(
            {
                "cutoff": cut,
                "queries_with_same_domain_hit": float((within & same).any(axis=1).mean()),
                "cross_domain_pairs_within": float(within[~same].mean()),
            }
        )
    return {"patterns": len(corpus), "default_cutoff": MAX_DISTANCE, "cutoffs": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    report = measure()
    if parser.parse_args().json:
        print(json.dumps(report, indent=2))
        return
    print(f"{report['patterns']} patterns; default cutoff {report['default_cutoff']}")
    print("cutoff  same-domain hit  cross-domain pairs within")
    for row in report["cutoffs"]:
        print(
            f"{row['cutoff']:<7} {row['queries_with_same_domain_hit']:<16.3f} "
            f"{row['cross_domain_pairs_within']:.4f}"
        )


if __name__ == "__main__":
    main()
