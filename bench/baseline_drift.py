"""When should a wire-v2 sender make a new baseline block? The drift threshold, measured.

A sender encodes its deltas against the fleet's reference block until its library holds
`MIN_LIBRARY_ROWS` rows, then against blocks of its library mean, making a new one once the
mean has moved more than a threshold (L2) from the current block (`BaselinePublisher` in
fai_core/baseline_block.py). A stale baseline costs reconstruction fidelity; a new block
costs ~800 bytes per receiver. This replays libraries growing one experience at a time from
the shipped corpus vectors (1,279 MiniLM embeddings; the whole corpus, and each domain
alone, whose mean is far from the reference; seeded random orders; each experience in its
own one-experience batch, as agents produce them) for each threshold, and reports:

- blocks made, and block bytes per experience (what the attached blocks add on the wire);
- cos(reconstruction, embedding): mean and minimum, against an always-fresh float32 mean
  and float32 scales (what version 1 sent); the receiver's `direct_min_cos` check refuses
  a row below 0.6 (docs/wire-format.md), so the minimum is the margin that matters. (The
  receiver stores its own embedding of a received text, so fidelity matters for the
  checks, not for retrieval.)

    .venv/bin/python bench/baseline_drift.py [--json] [--seeds 3]
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from fai_core import bitdelta
from fai_core.baseline_block import MIN_LIBRARY_ROWS, BaselinePublisher, reference_block
from fai_core.corpus import load_pattern_corpus
from fai_eval.scenario import shipped_embeddings

#: inf: never leave the reference block.
THRESHOLDS = (0.0, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, float("inf"))
MODEL = "all-MiniLM-L6-v2"
GROUP = bitdelta.DEFAULT_GROUP_SIZE


def replay(vectors: np.ndarray, order: np.ndarray, threshold: float, min_rows: int) -> dict:
    """One library growing in `order`, one experience per batch, at one drift threshold."""
    publisher = BaselinePublisher(reference_block(MODEL, vectors.shape[1]), threshold, min_rows)
    total = np.zeros(vectors.shape[1])
    cos16, cos32, block_bytes = [], [], 0
    for n, i in enumerate(order, start=1):
        e = vectors[i]
        total += e
        mean = total / n
        made = publisher.blocks_made
        block, _ = publisher.for_batch(mean, n, "coding")
        if publisher.blocks_made != made:
            block_bytes += len(block.data)
        cos16.append(_reconstruction_cos(e, block.values, "f16"))
        cos32.append(_reconstruction_cos(e, mean.astype(np.float32), "f32"))
    cos16_a, cos32_a = np.array(cos16), np.array(cos32)
    return {
        "threshold": threshold,
        "experiences": len(order),
        "blocks_made": publisher.blocks_made,
        "block_bytes_per_experience": block_bytes / len(order),
        "cos_mean_f16": float(cos16_a.mean()),
        "cos_min_f16": float(cos16_a.min()),
        "cos_mean_fresh_f32": float(cos32_a.mean()),
        "cos_min_fresh_f32": float(cos32_a.min()),
    }


def _reconstruction_cos(e: np.ndarray, base: np.ndarray, dtype: str) -> float:
    code = bitdelta.encode(e[None, :], base, GROUP, dtype)
    hat = bitdelta.decode(code, base)[0].astype(np.float64)
    return float(hat @ e / (np.linalg.norm(hat) * np.linalg.norm(e)))


def scenarios(texts_domains: list[str], vectors: np.ndarray) -> dict[str, np.ndarray]:
    """Libraries to replay: the whole corpus (an agent doing everything), and each domain
    alone (a specialised agent, whose mean is far from the reference block's)."""
    out = {"mixed": vectors}
    for domain in sorted(set(texts_domains)):
        out[domain] = vectors[[d == domain for d in texts_domains]]
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", action="store_true")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--min-rows", type=int, default=MIN_LIBRARY_ROWS)
    args = p.parse_args()
    _, vectors = shipped_embeddings("patterns")
    domains = [d for d, _ in load_pattern_corpus()]
    runs = []
    for name, vecs in scenarios(domains, np.asarray(vectors, dtype=np.float32)).items():
        for seed in range(args.seeds):
            order = np.random.default_rng(seed).permutation(len(vecs))
            for t in THRESHOLDS:
                runs.append(
                    {"library": name, "seed": seed, **replay(vecs, order, t, args.min_rows)}
                )
    summary = [_summary(t, [r for r in runs if r["threshold"] == t]) for t in THRESHOLDS]
    report = {"min_rows": args.min_rows, "seeds": args.seeds, "summary": summary, "runs": runs}
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"libraries: mixed + each domain, one experience per batch, {args.seeds} seeds")
    print("threshold  blocks/1k exp  block B/exp  cos mean  cos min   (fresh f32: mean, min)")
    for s in summary:
        print(
            f"{s['threshold']:9.2f}  {s['blocks_per_1000']:13.1f}  "
            f"{s['block_bytes_per_experience']:11.1f}  {s['cos_mean_f16']:.5f}  "
            f"{s['cos_min_f16']:.5f}   "
            f"({s['cos_mean_fresh_f32']:.5f}, {s['cos_min_fresh_f32']:.5f})"
        )


def _summary(threshold: float, runs: list[dict]) -> dict:
    def mean(key: str) -> float:
        return float(np.mean([r[key] for r in runs]))

    def low(key: str) -> float:
        return float(np.min([r[key] for r in runs]))

    return {
        "threshold": threshold,
        "blocks_per_1000": float(
            np.mean([1e3 * r["blocks_made"] / r["experiences"] for r in runs])
        ),
        "block_bytes_per_experience": mean("block_bytes_per_experience"),
        "cos_mean_f16": mean("cos_mean_f16"),
        "cos_min_f16": low("cos_min_f16"),
        "cos_mean_fresh_f32": mean("cos_mean_fresh_f32"),
        "cos_min_fresh_f32": low("cos_min_fresh_f32"),
    }


if __name__ == "__main__":
    main()
