"""BitDelta fidelity on real sentence embeddings: cosine and nearest-neighbour recall.

Embeds the project's pattern corpus (fai_core/data/patterns.jsonl, >= 1,200 sentences over
8 domains) with the default model, compresses every embedding against the corpus mean
(the library baseline), and reports, per group size and scale type:

- mean and min cos(e, e_hat);
- recall@10: for each original embedding as a query (itself excluded), the share of its
  10 true nearest neighbours among the originals that are also its 10 nearest among the
  reconstructed vectors (what a receiver's library search loses to compression);
- bytes per experience on the wire besides the text.

    .venv/bin/python bench/fidelity.py [--json] [--markdown docs/fidelity.md]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from fai_core import bitdelta
from fai_core.corpus import load_pattern_corpus
from fai_core.embedding import default_embedder

K = 10


def top_k(queries: np.ndarray, database: np.ndarray, k: int) -> np.ndarray:
    sims = queries @ database.T
    np.fill_diagonal(sims, -np.inf)  # queries are the database rows: exclude self
    part = np.argpartition(-sims, k, axis=1)[:, :k]
    return part


def recall_at_k(originals: np.ndarray, reconstructed: np.ndarray, k: int = K) -> float:
    unit = reconstructed / np.linalg.norm(reconstructed, axis=1, keepdims=True)
    truth = top_k(originals, originals, k)
    found = top_k(originals, unit, k)
    hits = [len(set(t) & set(f)) for t, f in zip(truth, found, strict=True)]
    return float(np.mean(hits) / k)


def measure(vectors: np.ndarray, g: int, scale_dtype: str) -> dict:
    base = vectors.mean(axis=0)
    code = bitdelta.encode(vectors, base, g, scale_dtype)
    recon = bitdelta.decode(code, base)
    cos = (recon * vectors).sum(axis=1) / (
        np.linalg.norm(recon, axis=1) * np.linalg.norm(vectors, axis=1)
    )
    d = vectors.shape[1]
    wire_bytes = code.signs.shape[1] + code.scales.shape[1] * code.scales.dtype.itemsize + 3
    return {
        "group": g,
        "scale_dtype": scale_dtype,
        "cos_mean": float(cos.mean()),
        "cos_min": float(cos.min()),
        f"recall_at_{K}": recall_at_k(vectors, recon),
        "bytes_per_experience_excluding_text": wire_bytes,
        "float32_bytes": d * 4,
    }


def markdown(result: dict) -> str:
    lines = [
        "# BitDelta fidelity on real embeddings",
        "",
        f"Measured by `bench/fidelity.py` on {result['sentences']} pattern sentences over "
        f"{result['domains']} domains (fai_core/data/patterns.jsonl), embedded with "
        f"{result['model']} (d = {result['dim']}); baseline = corpus mean. Recall@10: share "
        "of each query's 10 true nearest neighbours (self excluded) still among its 10 "
        "nearest after compression. Bytes: signs + scales + 2 (quality) + 1 (iteration).",
        "",
        "| g | scales | mean cos | min cos | recall@10 | bytes/exp (no text) |",
        "|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['group']} | {r['scale_dtype']} | {r['cos_mean']:.3f} | {r['cos_min']:.3f} | "
            f"{r['recall_at_10']:.3f} | {r['bytes_per_experience_excluding_text']} |"
        )
    lines += [
        "",
        "The paper's Table 4 (cos 0.957 at g = 128; 0.704 at g = 1) is not reproduced: at g = d "
        "a single scale is used, at g = 1 reconstruction is exact, and cosine is bounded by "
        "how far the embeddings sit from their mean (see [docs/design.md, D8](design.md#d8) "
        "and [D9](design.md#d9)).",
        "",
        "Regenerate: `.venv/bin/python bench/fidelity.py --markdown docs/fidelity.md`",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--markdown", help="also write the table to this Markdown file")
    args = parser.parse_args()
    corpus = load_pattern_corpus()
    embedder = default_embedder()
    t0 = time.perf_counter()
    vectors = embedder.embed([text for _, text in corpus])
    embed_s = time.perf_counter() - t0
    d = vectors.shape[1]
    rows = [measure(vectors, g, dt) for g in (16, 64, 128, 256, d) for dt in ("f32", "f16")]
    result = {
        "model": embedder.model_id,
        "dim": d,
        "sentences": len(corpus),
        "domains": len({domain for domain, _ in corpus}),
        "embed_seconds": embed_s,
        "embed_sentences_per_second": len(corpus) / embed_s,
        "rows": rows,
    }
    if args.markdown:
        with open(args.markdown, "w", encoding="utf-8") as fh:
            fh.write(markdown(result))
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(markdown(result))


if __name__ == "__main__":
    main()
