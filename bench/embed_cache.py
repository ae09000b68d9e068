"""Re-embedding CPU per received text, with and without the node's text cache.

    .venv/bin/python bench/embed_cache.py [--json] [--embedder hashing|minilm]
        [--texts N] [--batch R] [--sources 1,3,5]

The same batch set (N corpus texts in batches of R rows, one domain) is received from k
sources, each source signing its own copies. Two arrival schedules:

- `spread`: one batch per round, source after source (copies arrive in later rounds, as
  relayed or repaired copies do);
- `together`: round j holds batch j of every source (copies arrive in the same round).

Each (schedule, k) runs twice on the same inner embedder, through DeltaSoup with the
node's `soup_config`: once with the embedder bare, once behind `CachingEmbedder`. Timed is
the process CPU of DeltaSoup's embed calls (for the cache: hashing, lookups and the inner
model's misses), divided by the texts received (k x N); `ratio` is cached / bare. The
whole round's process CPU per received text is given too, for the share re-embedding has.
One thread: OMP/MKL/OPENBLAS/NUMBA threads, torch's and FAI_EMBED_THREADS are pinned to 1
before loading (a node on 2 shared cores gains nothing from intra-op threads).
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("FAI_EMBED_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from fai_core.corpus import load_pattern_corpus  # noqa: E402
from fai_core.deltasoup import DeltaSoup  # noqa: E402
from fai_core.embed_cache import CachingEmbedder  # noqa: E402
from fai_core.embedding import HashingEmbedder, default_embedder  # noqa: E402
from fai_core.identity import NodeKey  # noqa: E402
from fai_eval import attacks  # noqa: E402
from fai_net.node.resources import soup_config  # noqa: E402

DOMAIN = "coding"
NOW_MS = 1_700_000_000_000


class CpuTimed:
    """Process CPU and texts of every embed call DeltaSoup makes: all threads, so an
    embedder with its own inference threads (onnxruntime, torch) is counted in full."""

    def __init__(self, inner) -> None:
        self.inner, self.model_id, self.dimension = inner, inner.model_id, inner.dimension
        self.cpu_s = 0.0
        self.texts = 0

    def embed(self, texts):
        started = time.process_time()
        try:
            return self.inner.embed(texts)
        finally:
            self.cpu_s += time.process_time() - started
            self.texts += len(texts)


class Counted:
    """Counts the texts that reach the model (the cache's misses, or every text bare)."""

    def __init__(self, inner) -> None:
        self.inner, self.model_id, self.dimension = inner, inner.model_id, inner.dimension
        self.texts = 0

    def embed(self, texts):
        self.texts += len(texts)
        return self.inner.embed(texts)


def corpus_texts(n: int) -> list[str]:
    """N distinct coding-corpus texts (<= 28 words) + " (case K)", as bench/fleet.py's."""
    coding = [t for d, t in load_pattern_corpus() if d == DOMAIN]
    return [" ".join(coding[i % len(coding)].split()[:28]) + f" (case {i})" for i in range(n)]


def source_batches(model, texts: list[str], sources: int, rows: int):
    """Per source, its signed copies of the batch set (same texts, its own key and seqs)."""
    vectors = model.embed(texts)
    out = []
    for s in range(sources):
        key = NodeKey(bytes([s + 1]) * 32)
        out.append(
            [
                attacks.signed_batch(
                    key,
                    texts[i : i + rows],
                    vectors[i : i + rows],
                    domain=DOMAIN,
                    quality=[0.7] * len(texts[i : i + rows]),
                    seq=1 + i // rows,
                    timestamp_ms=NOW_MS,
                    model=model.model_id,
                ).batch
                for i in range(0, len(texts), rows)
            ]
        )
    return out


def schedule(per_source, how: str) -> list[list]:
    """The rounds: `spread` one batch per round source after source, `together` batch j
    of every source in round j."""
    if how == "spread":
        return [[b] for batches in per_source for b in batches]
    return [list(copies) for copies in zip(*per_source, strict=True)]


def run(model, rounds: list[list], cached: bool) -> dict:
    """DeltaSoup over `rounds` with the bare or cached embedder: CPU and counts."""
    counted = Counted(model)
    cache = CachingEmbedder(counted) if cached else None
    timed = CpuTimed(counted if cache is None else cache)
    soup = DeltaSoup(timed, config=soup_config(model.model_id, 300_000, max_cap=64))
    received = sum(len(b) for r in rounds for b in r)
    round_cpu = 0.0
    kept = 0
    for batches in rounds:
        started = time.process_time()
        result = soup.aggregate(batches, NOW_MS)
        round_cpu += time.process_time() - started
        kept += sum(d is None for d in result.row_drop)
    out = {
        "received_texts": received,
        "embedded_by_model": counted.texts,
        "kept_rows": kept,
        "embed_cpu_ms_per_received_text": round(1e3 * timed.cpu_s / received, 4),
        "round_cpu_ms_per_received_text": round(1e3 * round_cpu / received, 4),
    }
    if cache is not None:
        s = cache.stats()
        out.update(hits=s.hits, misses=s.misses, hit_rate=round(s.hit_rate, 4))
    return out


def measure(model, texts: list[str], rows: int, ks: list[int]) -> list[dict]:
    """Every (schedule, k): bare and cached, and the cached / bare CPU ratio."""
    figures = []
    for how in ("spread", "together"):
        for k in ks:
            rounds = schedule(source_batches(model, texts, k, rows), how)
            bare = run(model, rounds, cached=False)
            cached = run(model, rounds, cached=True)
            assert bare["kept_rows"] == cached["kept_rows"], "the cache changed a decision"
            ratio = cached["embed_cpu_ms_per_received_text"] / max(
                bare["embed_cpu_ms_per_received_text"], 1e-9
            )
            figures.append(
                {
                    "schedule": how,
                    "sources": k,
                    "bare": bare,
                    "cached": cached,
                    "embed_cpu_ratio_cached_over_bare": round(ratio, 4),
                }
            )
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--embedder", choices=("hashing", "minilm"), default="hashing")
    parser.add_argument("--texts", type=int, default=200)
    parser.add_argument("--batch", type=int, default=20)
    parser.add_argument("--sources", default="1,3,5")
    args = parser.parse_args()
    if args.embedder == "minilm":
        import torch

        torch.set_num_threads(1)
        model = default_embedder()
    else:
        model = HashingEmbedder(384)
    texts = corpus_texts(args.texts)
    model.embed(texts[:8])  # load and warm the model outside the measurement
    run(model, schedule(source_batches(model, texts[:40], 1, args.batch), "spread"), True)
    ks = [int(k) for k in args.sources.split(",")]
    out = {
        "embedder": model.model_id,
        "backend": type(model).__name__,
        "texts": args.texts,
        "batch_rows": args.batch,
        "threads": 1,
        "figures": measure(model, texts, args.batch, ks),
    }
    if args.json:
        print(json.dumps(out, indent=1))
        return
    for f in out["figures"]:
        print(
            f"{f['schedule']:8} k={f['sources']}  bare "
            f"{f['bare']['embed_cpu_ms_per_received_text']:.3f} ms/text  cached "
            f"{f['cached']['embed_cpu_ms_per_received_text']:.3f} ms/text  ratio "
            f"{f['embed_cpu_ratio_cached_over_bare']:.3f}  hit rate {f['cached']['hit_rate']:.2f}"
        )


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
