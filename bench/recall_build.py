"""Libraries for bench/recall.py: real MiniLM embeddings where recall looks, cached on disk.

What a built node directory holds (`bench/.recall-cache/node-<N>-v<VERSION>/`, a node data
directory that `fai node run --data-dir` opens as is):

- `node.key`: the node's identity (local rows are signed by it);
- `library/`: an ExperienceLibrary of N experiences in the 8 corpus domains, opened with
  the node's parameters (d = 384, no capacity, default index threshold), filled with
  `merge` (remote rows, 90%) and `add_local` (10%), then `maintain()` once: compaction,
  the BTREE/BITMAP scalar indices and, at N >= 50,000, the IVF_SQ vector index trained on
  every row, exactly as the library trains it;
- `outcomes.sqlite`: what a node that merged those rows would have: one sighting per
  (id, source), a second and third source for 3% of the ids (corroboration), and 600
  feedback reports on random experiences (utility and source standing tables);
- `build.json`: how it was built (written last: a directory without it is rebuilt).

Rows, and what is real:

- **real** (the first min(N, 10,000) rows): the 1,279 texts of the shipped pattern corpus,
  then texts composed from corpus sentences of one domain by bench/flood_peer.py's `Texts`
  (20-32 words, "(case K)" at the end, K < 10^6), every one embedded by the real model,
  all-MiniLM-L6-v2, in this benchmark (float32; cached in `real-v<VERSION>.npy`);
- **synthetic** (rows beyond 10,000): a `Texts` text (K >= 10^7, which is how
  bench/recall.py recognises one in an answer) with a vector that is *not* the model's
  embedding of that text: the normalised sum of the real embeddings of two random real
  rows of the same domain, plus Gaussian noise (cosine ~0.9 to that sum). These rows lie
  where real ones do, so they are hit by recall and compete in the ranking, as a larger
  real library would; their texts merely do not match their vectors.

Sources: 48 peers (Ed25519 keys from a fixed seed) with a Zipf-like share of the remote
rows, each claiming qualities around its own mean; local rows carry the node's key.

The merge texts (`merge-v<VERSION>.npy`): coding-domain `Texts` (K in [10^6, 10^7)),
embedded by the model, none in any library: what the peer of bench/recall.py publishes,
with their true embeddings, so the node's DeltaSoup accepts and merges them.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import time
import warnings
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import numpy as np
from flood_peer import Texts  # bench/flood_peer.py: the corpus-sentence text composer

from fai_core.corpus import CORPUS_DOMAINS, load_pattern_corpus
from fai_core.experience import Experience
from fai_core.identity import NodeKey

CACHE = Path(__file__).resolve().parent / ".recall-cache"
VERSION = 1
DIM = 384
MODEL = "all-MiniLM-L6-v2"
#: Rows with real embeddings; a library larger than this gets synthetic rows on top.
REAL_ROWS = 10_000
#: Coding texts the merge peer can publish (rows merged during one measurement window).
MERGE_ROWS = 4_000
MERGE_DOMAIN = "coding"
SEED = 20_251_203
N_SOURCES = 48
LOCAL_FRACTION = 0.1
CORROBORATED = 0.03
FEEDBACK_REPORTS = 600
#: Texts' "(case K)" counters: real rows below 10^6, merge texts from 10^6, synthetic 10^7.
MERGE_CASE_BASE = 1_000_000
SYNTHETIC_CASE_BASE = 10_000_000
#: Noise of a synthetic vector relative to its unit mix direction (cos ~ 1/sqrt(1 + t^2)).
SYNTHETIC_NOISE = 0.5
_DAY_MS = 86_400_000

Log = Callable[[str], None]


def _log(msg: str) -> None:
    print(f"[recall {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def case_number(text: str) -> int | None:
    """K of a text ending in "(case K)", else None (corpus texts)."""
    if not text.endswith(")"):
        return None
    _, sep, tail = text.rpartition("(case ")
    if not sep or not tail[:-1].isdigit():
        return None
    return int(tail[:-1])


def is_synthetic(text: str) -> bool:
    k = case_number(text)
    return k is not None and k >= SYNTHETIC_CASE_BASE


def real_texts() -> list[tuple[str, str]]:
    """The REAL_ROWS (domain, text) pairs with real embeddings, in a fixed order."""
    out = list(load_pattern_corpus())
    seen = {t for _, t in out}
    gens = {d: Texts(d, np.random.default_rng([SEED, i])) for i, d in enumerate(CORPUS_DOMAINS)}
    i = 0
    while len(out) < REAL_ROWS:
        domain = CORPUS_DOMAINS[i % len(CORPUS_DOMAINS)]
        i += 1
        text = gens[domain].next()
        if text not in seen:
            seen.add(text)
            out.append((domain, text))
    return out


def merge_texts() -> list[str]:
    """MERGE_ROWS coding texts found in no library (their K is >= MERGE_CASE_BASE)."""
    gen = Texts(MERGE_DOMAIN, np.random.default_rng([SEED, 99]))
    gen.k = MERGE_CASE_BASE
    return [gen.next() for _ in range(MERGE_ROWS)]


def _digest(texts: list[str]) -> str:
    return hashlib.sha256("\n".join(texts).encode()).hexdigest()


def embedded(name: str, texts: list[str], need: int, embed, log: Log = _log) -> np.ndarray:
    """Model embeddings of texts[:need] (float32, unit rows), from the cache, topping it up.

    The cache holds a prefix of `texts`; `embed` (the real model) is only asked for what is
    missing, so a quick run's prefix serves the full run."""
    CACHE.mkdir(parents=True, exist_ok=True)
    meta_path, npy = CACHE / f"{name}-v{VERSION}.json", CACHE / f"{name}-v{VERSION}.npy"
    have = np.zeros((0, DIM), np.float32)
    try:
        meta = json.loads(meta_path.read_text())
        if meta["model"] == MODEL and meta["texts_sha256"] == _digest(texts):
            have = np.load(npy)
    except (OSError, ValueError, KeyError):
        pass
    if len(have) < need:
        todo = texts[len(have) : need]
        log(f"embedding {len(todo)} {name} texts with {MODEL} (cached for later runs)")
        started = time.perf_counter()
        parts = [have]
        for start in range(0, len(todo), 512):
            parts.append(np.asarray(embed(todo[start : start + 512]), np.float32))
            done = start + len(parts[-1])
            rate = done / (time.perf_counter() - started)
            log(f"  {done}/{len(todo)} ({rate:.0f} texts/s)")
        have = np.concatenate(parts)
        np.save(npy, have)
        meta_path.write_text(json.dumps({"model": MODEL, "texts_sha256": _digest(texts)}))
    return have[:need]


def source_keys() -> list[NodeKey]:
    rng = np.random.default_rng([SEED, 7])
    return [NodeKey(rng.bytes(32)) for _ in range(N_SOURCES)]


def _synthetic(
    n: int, domains: list[str], vectors: np.ndarray, rng: np.random.Generator
) -> tuple[list[tuple[str, str]], np.ndarray]:
    by_domain = {d: np.flatnonzero(np.asarray(domains) == d) for d in CORPUS_DOMAINS}
    gens = {
        d: Texts(d, np.random.default_rng([SEED, 50 + i])) for i, d in enumerate(CORPUS_DOMAINS)
    }
    for gen in gens.values():
        gen.k = SYNTHETIC_CASE_BASE
    pairs, out = [], np.empty((n, DIM), np.float32)
    chosen = rng.integers(0, len(CORPUS_DOMAINS), n)
    for start in range(0, n, 10_000):
        idx = np.arange(start, min(n, start + 10_000))
        mix = np.empty((len(idx), DIM), np.float32)
        for j, row in enumerate(idx):
            d = CORPUS_DOMAINS[chosen[row]]
            a, b = rng.choice(by_domain[d], 2, replace=False)
            mix[j] = vectors[a] + vectors[b]
            pairs.append((d, gens[d].next()))
        mix /= np.linalg.norm(mix, axis=1, keepdims=True)
        noise = rng.standard_normal(mix.shape).astype(np.float32) / np.sqrt(DIM)
        mix += SYNTHETIC_NOISE * noise
        out[idx] = mix / np.linalg.norm(mix, axis=1, keepdims=True)
    return pairs, out


def build_node_dir(n: int, real: list[tuple[str, str]], vectors: np.ndarray, log: Log = _log):
    """The cached node data directory holding an n-experience library (module docstring)."""
    from fai_core.library import ExperienceLibrary
    from fai_net.api.outcome_book import OutcomeBook
    from fai_net.node.identity import load_or_create

    path = CACHE / f"node-{n}-v{VERSION}"
    if (path / "build.json").exists():
        return path, json.loads((path / "build.json").read_text())
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(mode=0o700, parents=True)
    started = time.perf_counter()
    rng = np.random.default_rng([SEED, n])
    n_real = min(n, REAL_ROWS)
    rows = list(real[:n_real])
    vecs = vectors[:n_real]
    if n > n_real:
        log(f"n={n}: {n - n_real} synthetic rows on {n_real} real ones")
        extra, extra_vecs = _synthetic(n - n_real, [d for d, _ in rows], vecs, rng)
        rows += extra
        vecs = np.concatenate([vecs, extra_vecs])
    own = load_or_create(path).public_key
    keys = [k.public_key for k in source_keys()]
    share = 1.0 / np.arange(1, N_SOURCES + 1)
    share /= share.sum()
    style = rng.uniform(0.35, 0.85, N_SOURCES)  # each source's typical quality claim
    local = rng.random(n) < LOCAL_FRACTION
    who = rng.choice(N_SOURCES, n, p=share)
    quality = np.clip(rng.normal(style[who], 0.12), 0.02, 0.98)
    now = time.time_ns() // 1_000_000
    created = now - rng.integers(0, 30 * _DAY_MS, n)
    order = rng.permutation(n)  # real and synthetic rows interleaved in arrival order
    exps: list[Experience] = []
    for i in order:
        domain, text = rows[i]
        exps.append(
            Experience.create(
                text=text,
                embedding=vecs[i],
                quality=float(quality[i]),
                domain=domain,
                source=own if local[i] else keys[who[i]],
                created_ms=int(created[i]),
            )
        )
    log(f"n={n}: {len(exps)} experiences made in {time.perf_counter() - started:.1f} s")
    lib = ExperienceLibrary.open(
        path / "library", DIM, maintain_every=1 << 30, keep_versions=timedelta(0)
    )
    warnings.filterwarnings("ignore", "optimize.cleanup_older_than=0", UserWarning)
    try:
        chunk = 2_000
        for start in range(0, n, chunk):
            part = exps[start : start + chunk]
            mine = [e for e in part if e.source == own]
            theirs = [e for e in part if e.source != own]
            if mine:
                lib.add_local(mine)
            if theirs:
                lib.merge(theirs, received_from=keys[int(rng.integers(0, N_SOURCES))])
        t0 = time.perf_counter()
        report = lib.maintain()
        maintain_s = time.perf_counter() - t0
        count = lib.count()
    finally:
        lib.close()
    # The node reopens with its defaults: keep_versions only matters for the cache's size.
    log(f"n={n}: library written and maintained ({report['vector_index']}, {maintain_s:.1f} s)")
    book = OutcomeBook(path / "outcomes.sqlite")
    try:
        book.sighted((e.id, e.source) for e in exps)
        extra = rng.random(n) < CORROBORATED
        book.sighted(
            (e.id, keys[int(k)])
            for e, flag, k in zip(exps, extra, rng.integers(0, N_SOURCES, n), strict=True)
            if flag
        )
        for i in rng.choice(n, FEEDBACK_REPORTS, replace=False):
            e = exps[i]
            book.record(e.id, e.source, float(rng.choice([1.0, 1.0, 1.0, 0.0, -1.0])))
    finally:
        book.close()
    info = {
        "experiences": count,
        "real_rows": n_real,
        "synthetic_rows": n - n_real,
        "sources": N_SOURCES + 1,
        "local_rows": int(local.sum()),
        "vector_index": report["vector_index"],
        "maintain_s": round(maintain_s, 1),
        "build_s": round(time.perf_counter() - started, 1),
        "model": MODEL,
    }
    (path / "build.json").write_text(json.dumps(info, indent=1))
    return path, info
