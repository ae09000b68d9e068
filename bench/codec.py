"""Codec benchmark: BitDelta speed, bytes per experience, batch encode/decode cost.

Single-threaded by construction (BLAS threads pinned to 1 before numpy loads). Prints a
table, or JSON with --json. Targets from the issue are printed beside the figures; this is
a measurement, not a test, so missing a target is reported, not asserted.

    .venv/bin/python bench/codec.py [--json] [--rows 100000] [--repeat 5]

Wire version 2 beside version 1 (`by_batch_size_v1_v2`): envelope bytes for M = 1..100 real
corpus experiences.
"""

from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from fai_core import bitdelta, dagcbor, wire  # noqa: E402
from fai_core.experience import Experience  # noqa: E402
from fai_core.identity import NodeKey  # noqa: E402

_VOCABULARY = (
    "when a test fails only in ci reproduce locally with the same seed pin the dependency "
    "read the traceback fix the first error run ripgrep before editing add a regression test "
    "check exit codes retry with backoff after timeouts prefer small commits"
)
WORDS = _VOCABULARY.split()


def unit_rows(rng: np.random.Generator, rows: int, dim: int) -> np.ndarray:
    x = rng.standard_normal((rows, dim), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def best_of(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def median_of(fn, repeat: int) -> float:
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bitdelta_speed(rng, dim: int, rows: int, repeat: int, g: int = 128) -> dict:
    x = unit_rows(rng, rows, dim)
    base = x.mean(axis=0)
    bitdelta.encode(x[:1024], base, g)  # warm-up (and JIT, if any)
    code = bitdelta.encode(x, base, g)
    bitdelta.decode(code, base)
    enc = best_of(lambda: bitdelta.encode(x, base, g), repeat)
    dec = best_of(lambda: bitdelta.decode(code, base), repeat)
    return {
        "dim": dim,
        "group": g,
        "rows": rows,
        "encode_us_per_embedding": enc / rows * 1e6,
        "decode_us_per_embedding": dec / rows * 1e6,
        "encode_plus_decode_us": (enc + dec) / rows * 1e6,
    }


def make_experiences(rng, key: NodeKey, n: int, dim: int) -> list[Experience]:
    x = unit_rows(rng, n, dim)
    return [
        Experience.create(
            " ".join(rng.choice(WORDS, 14)) + f" case {i}",
            x[i],
            float(rng.uniform(0.05, 0.95)),
            "coding",
            key.public_key,
            1_700_000_000_000,
            iteration=1,
        )
        for i in range(n)
    ]


def batch_figures(rng, dim: int, scale_dtype: str, repeat: int, g: int = 128) -> dict:
    key = NodeKey(bytes(32))
    exps = make_experiences(rng, key, 100, dim)
    baseline = np.stack([e.embedding for e in exps]).mean(axis=0)

    def encode(items):
        return wire.encode_batch(
            items,
            key=key,
            seq=7,
            timestamp_ms=1_700_000_000_000,
            model="all-MiniLM-L6-v2",
            baseline=baseline,
            group=g,
            scale_dtype=scale_dtype,
        )

    full = encode(exps)
    one = encode(exps[:1])
    text_bytes = [len(dagcbor.encode(e.text)) for e in exps]
    # Marginal cost of one more experience, its pattern text (with CBOR head) excluded.
    marginal = (len(full.envelope) - len(one.envelope) - sum(text_bytes[1:])) / 99
    amortised = (len(full.envelope) - sum(text_bytes)) / 100
    envelope = full.envelope
    return {
        "dim": dim,
        "group": g,
        "scale_dtype": scale_dtype,
        "batch_experiences": 100,
        "envelope_bytes": len(envelope),
        "text_bytes": sum(text_bytes),
        "bytes_per_experience_excluding_text_marginal": marginal,
        "bytes_per_experience_excluding_text_amortised_incl_baseline_and_header": amortised,
        "float32_embedding_bytes": dim * 4,
        "encode_sign_ms": median_of(lambda: encode(exps), repeat) * 1e3,
        "decode_verify_ms": median_of(lambda: wire.decode_envelope(envelope), repeat) * 1e3,
        "decode_verify_reconstruct_ms": median_of(
            lambda: wire.decode_envelope(envelope).batch.embeddings(), repeat
        )
        * 1e3,
    }


def sizes_by_batch_size(repeat: int) -> list[dict]:
    """Envelope bytes, version 1 beside version 2, for batches of M real corpus experiences
    (shipped MiniLM vectors, one domain, the first M patterns; v1 carries the batch mean as
    its float32 baseline, v2 names a block of the same mean, with and without it attached;
    time-based seq and timestamp as a node signs them)."""
    from fai_core.baseline_block import make_baseline_block
    from fai_core.corpus import load_pattern_corpus
    from fai_eval.scenario import shipped_embeddings

    key = NodeKey(bytes(32))
    corpus = load_pattern_corpus()
    _, vectors = shipped_embeddings("patterns")
    coding = [i for i, (d, _) in enumerate(corpus) if d == "coding"][:100]
    exps = [
        Experience.create(corpus[i][1], vectors[i], 0.7, "coding", key.public_key, 0)
        for i in coding
    ]
    stamp = dict(key=key, seq=1_764_800_000_000, timestamp_ms=1_764_800_000_000)
    rows = []
    for m in (1, 2, 5, 10, 100):
        items = exps[:m]
        mean = np.stack([e.embedding for e in items]).mean(axis=0)
        block = make_baseline_block(mean, "all-MiniLM-L6-v2")
        v1 = wire.encode_batch(items, model="all-MiniLM-L6-v2", baseline=mean, **stamp)
        v2 = wire.encode_batch_v2(items, baseline=block, attach_baseline=False, **stamp)
        v2a = wire.encode_batch_v2(items, baseline=block, attach_baseline=True, **stamp)
        text = sum(len(e.text.encode()) for e in items)
        rows.append(
            {
                "experiences": m,
                "text_bytes": text,
                "v1_envelope_bytes": len(v1.envelope),
                "v2_envelope_bytes": len(v2.envelope),
                "v2_with_block_bytes": len(v2a.envelope),
                "baseline_block_bytes": len(block.data),
                "v1_bytes_per_experience": len(v1.envelope) / m,
                "v2_bytes_per_experience": len(v2.envelope) / m,
                "v2_decode_verify_ms": median_of(
                    lambda e=v2.envelope: wire.decode_envelope(e), repeat
                )
                * 1e3,
                "v1_decode_verify_ms": median_of(
                    lambda e=v1.envelope: wire.decode_envelope(e), repeat
                )
                * 1e3,
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    rng = np.random.default_rng(42)
    result = {
        "machine": {
            "python": platform.python_version(),
            "numpy": np.__version__,
            "cpus": os.cpu_count(),
            "threads": 1,
        },
        "bitdelta": [bitdelta_speed(rng, d, args.rows, args.repeat) for d in (384, 768)],
        "batch": [
            batch_figures(rng, d, dt, max(50, args.repeat * 40))
            for d in (384, 768)
            for dt in ("f32", "f16")
        ],
        "by_batch_size_v1_v2": sizes_by_batch_size(max(20, args.repeat * 10)),
        "targets": {
            "one_experience_v2_envelope_bytes": 500,
            "encode_plus_decode_us_384": 0.5,
            "bytes_per_experience_excluding_text_384": 64,
            "decode_verify_ms_100": 2.0,
        },
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print("BitDelta, single thread, g=128, best of", args.repeat)
    for r in result["bitdelta"]:
        print(
            f"  d={r['dim']:4d}  encode {r['encode_us_per_embedding']:.3f} us  "
            f"decode {r['decode_us_per_embedding']:.3f} us  "
            f"sum {r['encode_plus_decode_us']:.3f} us/embedding  (target 0.5 at d=384)"
        )
    print("Batches of 100 experiences, g=128")
    for r in result["batch"]:
        marginal = r["bytes_per_experience_excluding_text_marginal"]
        amortised = r["bytes_per_experience_excluding_text_amortised_incl_baseline_and_header"]
        print(
            f"  d={r['dim']:4d} {r['scale_dtype']}  envelope {r['envelope_bytes']:6d} B  "
            f"non-text/exp marginal {marginal:.1f} B, amortised {amortised:.1f} B  "
            f"encode+sign {r['encode_sign_ms']:.2f} ms  decode+verify {r['decode_verify_ms']:.2f}"
            f" ms (+reconstruct {r['decode_verify_reconstruct_ms']:.2f} ms)"
        )
    print("Version 1 beside version 2, real corpus texts, d=384 (target: M=1 v2 <= 500 B)")
    for r in result["by_batch_size_v1_v2"]:
        print(
            f"  M={r['experiences']:3d}  v1 {r['v1_envelope_bytes']:6d} B  "
            f"v2 {r['v2_envelope_bytes']:6d} B ({r['v2_with_block_bytes']} with its block)  "
            f"per experience {r['v1_bytes_per_experience']:.0f} -> "
            f"{r['v2_bytes_per_experience']:.0f} B  (text {r['text_bytes'] / r['experiences']:.0f})"
        )


if __name__ == "__main__":
    main()
