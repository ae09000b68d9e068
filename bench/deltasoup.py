"""DeltaSoup aggregation time, and how it grows with the number of received experiences.

Received experiences are synthetic but realistic in geometry: corpus embeddings (shipped,
all-MiniLM-L6-v2, d = 384) plus small noise, so they cluster by domain as real traffic does,
from 12 senders in signed batches of 100. Re-embedding is excluded: the receiver's embedder
here is a table lookup, and its time is measured and subtracted. One core:
OMP/OPENBLAS/MKL thread counts are pinned to 1 before numpy loads.

    .venv/bin/python bench/deltasoup.py [--json] [--sizes 1000,10000,100000] [--eval]

--eval adds the acceptance table (bench/deltasoup_eval.py) to the JSON.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import itertools  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from fai_core.corpus import load_pattern_corpus  # noqa: E402
from fai_core.deltasoup import DeltaSoup  # noqa: E402
from fai_core.embedding import DEFAULT_MODEL  # noqa: E402
from fai_core.identity import NodeKey  # noqa: E402
from fai_eval import attacks  # noqa: E402
from fai_eval.scenario import NOW_MS, shipped_embeddings  # noqa: E402


class DictEmbedder:
    model_id = DEFAULT_MODEL
    dimension = 384

    def __init__(self, table: dict[str, np.ndarray]) -> None:
        self.table = table
        self.seconds = 0.0

    def embed(self, texts: list[str]) -> np.ndarray:
        t = time.perf_counter()
        out = np.stack([self.table[x] for x in texts])
        self.seconds += time.perf_counter() - t
        return out


def make_traffic(n: int, senders: int = 12, seed: int = 0):
    rng = np.random.default_rng(seed)
    corpus = load_pattern_corpus()
    _, vectors = shipped_embeddings("patterns")
    pick = rng.integers(0, len(corpus), n)
    noisy = vectors[pick] + rng.standard_normal((n, 384)).astype(np.float32) * 0.02
    noisy /= np.linalg.norm(noisy, axis=1, keepdims=True)
    texts = [" ".join(corpus[p][1].split()[:25]) + f" (case {i})" for i, p in enumerate(pick)]
    domains = [corpus[p][0] for p in pick]
    table = dict(zip(texts, noisy, strict=True))
    keys = [NodeKey(bytes([i + 1]) * 32) for i in range(senders)]
    batches = []
    by_node_domain: dict[tuple[int, str], list[int]] = {}
    for i in range(n):
        by_node_domain.setdefault((i % senders, domains[i]), []).append(i)
    for (node, dom), idx in sorted(by_node_domain.items()):
        for k in range(0, len(idx), 100):
            part = idx[k : k + 100]
            batches.append(
                attacks.signed_batch(
                    keys[node],
                    [texts[i] for i in part],
                    noisy[part],
                    domain=dom,
                    quality=rng.uniform(0.1, 0.9, len(part)),
                    seq=len(batches),
                    timestamp_ms=NOW_MS,
                    model=DEFAULT_MODEL,
                ).batch
            )
    return batches, table


def time_round(n: int, repeats: int = 3) -> dict:
    batches, table = make_traffic(n)
    best = None
    for _ in range(repeats):
        embedder = DictEmbedder(table)
        soup = DeltaSoup(embedder)
        t = time.perf_counter()
        result = soup.aggregate(batches, NOW_MS)
        total = time.perf_counter() - t
        excl = total - embedder.seconds
        if best is None or excl < best["seconds_excluding_embedding"]:
            t = time.perf_counter()
            result.experiences()
            best = {
                "experiences": n,
                "seconds_excluding_embedding": round(excl, 4),
                "lookup_embedding_seconds": round(embedder.seconds, 4),
                "materialize_experience_objects_seconds": round(time.perf_counter() - t, 4),
                "merged": len(result),
                "kept": sum(d is None for d in result.row_drop),
            }
    return best


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--sizes", default="1000,3000,10000,30000,100000")
    parser.add_argument("--eval", action="store_true")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    time_round(1000, 1)  # warm numba and scipy
    rows = [time_round(n, 3 if n <= 10000 else 1) for n in sizes]
    for a, b in itertools.pairwise(rows):
        ratio = b["experiences"] / a["experiences"]
        growth = b["seconds_excluding_embedding"] / a["seconds_excluding_embedding"]
        b["growth_exponent_vs_previous"] = round(float(np.log(growth) / np.log(ratio)), 2)
    out: dict = {"d": 384, "senders": 12, "rows": rows}
    if args.eval:
        import importlib.util
        import pathlib

        path = pathlib.Path(__file__).with_name("deltasoup_eval.py")
        spec = importlib.util.spec_from_file_location("deltasoup_eval", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        out["acceptance"] = module.evaluate()
    if args.json:
        print(json.dumps(out, indent=1))
    else:
        for r in rows:
            print(r)


if __name__ == "__main__":
    main()
