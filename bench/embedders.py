"""The embedding backends: int8 ONNX (`minilm`, the default) against float torch (`minilm-torch`).

    .venv/bin/python bench/embedders.py [--json] [--quick] [--no-node | --node-only]

Both run all-MiniLM-L6-v2 under one model id (docs/embedding.md). Per backend, each in a
fresh subprocess (so imports, the model and the RSS are its own): the time from importing
the embedder to the first vector (model load), the RSS after that (psutil), and CPU per
text (user+system of the process, so every intra-op thread counts) embedding the shipped
corpus (fai_core/data/patterns.jsonl, 1,279 sentences) in one call, at one intra-op thread
and at the backend's default (torch: torch.get_num_threads(); onnx: half the cores).

Then, on those vectors, this process compares the backends: cosine of each sentence's two
vectors (mean, min), nearest-neighbour agreement (top-1 equal, top-10 overlap, excluding
the sentence itself), and DeltaSoup at a receiver of backend X fed honest batches from
senders of backend Y, for all four (X, Y): rows kept and the consistency scores against
their thresholds (semantic_cos >= semantic_min_cos, direct_cos >= direct_min_cos,
|ln scale ratio| within scale_ratio_tol + scale_noise_k x noise). The receiver uses the
node's `soup_config`, with the per-sender cap lifted so one round judges every row (the
cap defers floods; it checks nothing about embeddings).

Last (unless --no-node), a node: `python -m fai_net.cli node run --open --domain coding`
with the default embedder; RSS once node.json appears, again after one
`fai experiences add` has made it load the model, and again after it has embedded and
stored the corpus's first 500 sentences (`fai experiences add --file`, 200 per call, the
CLI's import chunk; the node's CPU per text for those is reported beside); then SIGTERM.
Each RSS comes with its anonymous part (/proc/PID/smaps_rollup): the rest is shared
libraries' code pages, clean and reclaimable. The same with `--embedder minilm-torch` when
torch is installed. `--node-only` measures the nodes and nothing else.

Speeds are given as ratios to the torch backend measured in the same run (the machine is
shared and noisy). A full run takes ~2 minutes on 2 cores; --quick uses the corpus's first
256 sentences.
Progress goes to stderr; `--json` prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

BACKENDS = ("minilm", "minilm-torch")


def log(msg: str) -> None:
    print(f"[embedders] {msg}", file=sys.stderr, flush=True)


# -- per backend, in a fresh process -----------------------------------------------------------


def _cpu_per_text(embedder, texts: list[str]) -> dict:
    """CPU (all threads of this process) and wall per text for one embed() of `texts`,
    after a warm-up call, so the first-call allocations are not counted."""
    embedder.embed(texts[:32])
    cpu, wall = time.process_time(), time.perf_counter()
    vectors = embedder.embed(texts)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    n = len(texts)
    return {"cpu_ms_per_text": 1e3 * cpu / n, "wall_ms_per_text": 1e3 * wall / n}, vectors


def child(name: str, n_texts: int, out: Path) -> dict:
    """Measure one backend in this (fresh) process; the corpus vectors go to `out`."""
    import psutil

    started = time.perf_counter()
    from fai_core.embedding import make_embedder

    embedder = make_embedder(name)
    embedder.embed(["load the model before measuring anything"])
    load_s = time.perf_counter() - started
    rss_mb = psutil.Process().memory_info().rss / 2**20
    from fai_core.corpus import load_pattern_corpus

    texts = [t for _, t in load_pattern_corpus()][:n_texts]
    if name == "minilm-torch":
        import torch

        default_threads = torch.get_num_threads()
        at_default, vectors = _cpu_per_text(embedder, texts)
        torch.set_num_threads(1)
        single, _ = _cpu_per_text(embedder, texts)
    else:
        from fai_core.embedding_onnx import OnnxMiniLMEmbedder

        default_threads = embedder.threads
        at_default, vectors = _cpu_per_text(embedder, texts)
        single, _ = _cpu_per_text(OnnxMiniLMEmbedder(threads=1), texts)
    np.save(out, vectors)
    return {
        "model_id": embedder.model_id,
        "load_s": load_s,
        "rss_after_load_mb": rss_mb,
        "default_threads": default_threads,
        "default": at_default,
        "single_thread": single,
    }


def measure_backend(name: str, n_texts: int, workdir: Path) -> tuple[dict, np.ndarray] | None:
    """`child` in a subprocess; None when the backend is not installed (no torch extra)."""
    out = workdir / f"{name}.npy"
    cmd = [sys.executable, __file__, "--child", name, "--n", str(n_texts), "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    if proc.returncode != 0:
        log(f"{name}: failed or not installed:\n{proc.stderr[-2000:]}")
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1]), np.load(out)


# -- comparing the vectors ---------------------------------------------------------------------


def agreement(a: np.ndarray, b: np.ndarray, k: int = 10) -> dict:
    """Cosine between the two backends' vectors of each sentence, and how often each
    sentence's nearest neighbours (itself excluded) are the same under both."""
    cos = (a * b).sum(axis=1)

    def neighbours(x: np.ndarray) -> np.ndarray:
        sim = x @ x.T
        np.fill_diagonal(sim, -np.inf)
        return np.argsort(-sim, axis=1, kind="stable")[:, :k]

    na, nb = neighbours(a), neighbours(b)
    overlap = [len(set(p) & set(q)) / k for p, q in zip(na, nb, strict=True)]
    return {
        "cos_mean": float(cos.mean()),
        "cos_min": float(cos.min()),
        "cos_p1": float(np.percentile(cos, 1)),
        "top1_same": float((na[:, 0] == nb[:, 0]).mean()),
        f"top{k}_overlap": float(np.mean(overlap)),
    }


class TableEmbedder:
    """The receiver's re-embedding: vectors its backend made for these very texts (looked
    up, so four rounds do not embed the corpus four times)."""

    def __init__(self, texts: list[str], vectors: np.ndarray, model_id: str) -> None:
        self._rows = {t: i for i, t in enumerate(texts)}
        self._vectors, self.model_id, self.dimension = vectors, model_id, vectors.shape[1]

    def embed(self, texts: list[str]) -> np.ndarray:
        return self._vectors[[self._rows[t] for t in texts]]


def honest_round(
    corpus: list[tuple[str, str]],
    sender_vectors: np.ndarray,
    receiver,
    *,
    senders: int = 4,
    seed: int = 0,
):
    """One DeltaSoup round at `receiver` (an Embedder) of honest batches: the corpus split
    among `senders`, each encoding its rows (embedded by the senders' backend) against its
    own library mean, one batch per domain. Returns DeltaSoup's RoundResult."""
    from fai_core.deltasoup import DeltaSoup
    from fai_core.identity import NodeKey
    from fai_eval import attacks
    from fai_net.node.resources import soup_config

    ts, batches = 1_700_000_000_000, []
    order = np.random.default_rng(seed).permutation(len(corpus))
    for k, idx in enumerate(np.array_split(order, senders)):
        key, vectors = NodeKey(bytes([k + 1]) * 32), sender_vectors[idx]
        texts, domains = [corpus[i][1] for i in idx], [corpus[i][0] for i in idx]
        for seq, dom in enumerate(sorted(set(domains)), 1):
            sel = [i for i, d in enumerate(domains) if d == dom]
            batches.append(
                attacks.signed_batch(
                    key,
                    [texts[i] for i in sel],
                    vectors[sel],
                    domain=dom,
                    quality=np.full(len(sel), 0.6),
                    seq=seq,
                    timestamp_ms=ts,
                    model=receiver.model_id,
                    baseline=vectors.mean(axis=0),
                ).batch
            )
    config = replace(soup_config(receiver.model_id, 3_600_000), min_cap=1 << 30)
    return DeltaSoup(receiver, config=config).aggregate(batches, ts), config


def round_summary(result, config) -> dict:
    """Rows kept and the consistency scores' worst values, beside their thresholds."""
    s = result.row_scores
    kept = sum(d is None for d in result.row_drop)
    drops: dict[str, int] = {}
    for d in result.row_drop:
        if d is not None:
            drops[str(d.value)] = drops.get(str(d.value), 0) + 1
    return {
        "rows": len(result.row_drop),
        "kept": kept,
        "kept_share": kept / len(result.row_drop),
        "drops": drops,
        "semantic_cos_min": float(s["semantic_cos"].min()),
        "semantic_cos_median": float(np.median(s["semantic_cos"])),
        "semantic_min_cos": config.semantic_min_cos,
        "direct_cos_min": float(s["direct_cos"].min()),
        "direct_min_cos": config.direct_min_cos,
        "scale_log_ratio_max": float(s["scale_log_ratio"].max()),
        "scale_log_median_max_abs": float(np.abs(s["scale_log_median"]).max()),
        "scale_batch_median_max_abs": float(np.abs(s["scale_batch_median"]).max()),
        "scale_noise_max": float(s["scale_noise"].max()),
        "scale_ratio_tol": config.scale_ratio_tol,
    }


# -- a node ------------------------------------------------------------------------------------


#: Corpus sentences a node embeds and stores after its first embed (`node_rss`).
NODE_TEXTS = 500


def _memory_mb(pid: int) -> tuple[float, float]:
    """(RSS, its anonymous part) of a process, in MiB, from /proc/PID/smaps_rollup."""
    fields = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[2] == "kB":
            fields[parts[0].rstrip(":")] = int(parts[1]) / 1024
    return fields["Rss"], fields["Anonymous"]


def node_rss(embedder: str, workdir: Path) -> dict:
    """RSS of `fai node run --open` once node.json appears, after its first embed, and after
    it has embedded and stored NODE_TEXTS corpus sentences (with their anonymous parts)."""
    import psutil

    from fai_core.corpus import load_pattern_corpus
    from fai_net.devnet.launch import launch_node

    data = workdir / f"node-{embedder}"
    args = ["--data-dir", str(data), "--open", "--domain", "coding", "--embedder", embedder]
    args += ["--metrics-port", "-1"]
    texts = workdir / f"node-{embedder}.jsonl"
    lines = [json.dumps({"text": t}) for _, t in load_pattern_corpus()[:NODE_TEXTS]]
    texts.write_text("\n".join(lines) + "\n", encoding="utf-8")
    add = [sys.executable, "-m", "fai_net.cli", "experiences", "add", "--data-dir", str(data)]
    add += ["--domain", "coding"]
    node = launch_node(args, data_dir=data)
    try:
        started = time.perf_counter()
        node.wait_ready(120)
        ready_s = time.perf_counter() - started
        proc = psutil.Process(node.pid)
        at_start = _memory_mb(node.pid)
        t = time.perf_counter()
        one = ["--text", "run the failing test alone first"]
        subprocess.run(add + one, check=True, capture_output=True, cwd=REPO, timeout=300)
        first_add_s = time.perf_counter() - t
        after_embed = _memory_mb(node.pid)
        cpu, t = sum(proc.cpu_times()[:2]), time.perf_counter()
        run = [*add, "--file", str(texts)]
        subprocess.run(run, check=True, capture_output=True, cwd=REPO, timeout=600)
        cpu, texts_s = sum(proc.cpu_times()[:2]) - cpu, time.perf_counter() - t
        after_texts = _memory_mb(node.pid)
    finally:
        code = node.stop(grace=30)
    return {
        "embedder": embedder,
        "ready_s": ready_s,
        "rss_at_start_mb": at_start[0],
        "anon_at_start_mb": at_start[1],
        "first_add_s": first_add_s,
        "rss_after_first_embed_mb": after_embed[0],
        "anon_after_first_embed_mb": after_embed[1],
        "texts_added": NODE_TEXTS,
        "texts_add_s": texts_s,
        "node_cpu_ms_per_text_added": 1e3 * cpu / NODE_TEXTS,
        f"rss_after_{NODE_TEXTS}_texts_mb": after_texts[0],
        f"anon_after_{NODE_TEXTS}_texts_mb": after_texts[1],
        "exit_code_after_sigterm": code,
    }


# -- the run -----------------------------------------------------------------------------------


def compare(measured: dict, vectors: dict, corpus) -> dict:
    """Cosine, neighbours and the four mixed-backend DeltaSoup rounds."""
    out: dict = {}
    if len(vectors) == 2:
        out["int8_vs_float"] = agreement(vectors["minilm"], vectors["minilm-torch"])
    rounds = {}
    texts = [t for _, t in corpus]
    for x in vectors:
        receiver = TableEmbedder(texts, vectors[x], measured[x]["model_id"])
        for y in vectors:
            log(f"DeltaSoup: receiver {x}, senders {y}")
            result, config = honest_round(corpus, vectors[y], receiver)
            rounds[f"receiver={x} senders={y}"] = round_summary(result, config)
    out["deltasoup_honest_rows"] = rounds
    return out


def ratios(measured: dict) -> dict:
    """int8 / torch for CPU per text (single thread, default threads), load and RSS."""
    a, b = measured.get("minilm"), measured.get("minilm-torch")
    if not (a and b):
        return {}
    return {
        "cpu_per_text_single_thread": a["single_thread"]["cpu_ms_per_text"]
        / b["single_thread"]["cpu_ms_per_text"],
        "cpu_per_text_default_threads": a["default"]["cpu_ms_per_text"]
        / b["default"]["cpu_ms_per_text"],
        "wall_per_text_default_threads": a["default"]["wall_ms_per_text"]
        / b["default"]["wall_ms_per_text"],
        "load_s": a["load_s"] / b["load_s"],
        "rss_after_load": a["rss_after_load_mb"] / b["rss_after_load_mb"],
    }


def run(quick: bool, with_node: bool, node_only: bool = False) -> dict:
    from fai_core.corpus import load_pattern_corpus

    corpus = load_pattern_corpus()
    if quick:
        corpus = corpus[:256]
    report: dict = {"texts": len(corpus), "cpu_count": os.cpu_count(), "backends": {}}
    vectors: dict[str, np.ndarray] = {}
    with tempfile.TemporaryDirectory(prefix="fai-embedders-") as tmp:
        work = Path(tmp)
        if node_only:
            names = [n for n in BACKENDS if n != "minilm-torch" or _torch_installed()]
        else:
            for name in BACKENDS:
                log(f"measuring {name} in a fresh process")
                got = measure_backend(name, len(corpus), work)
                if got is not None:
                    report["backends"][name], vectors[name] = got
            report["ratio_int8_over_torch"] = ratios(report["backends"])
            report.update(compare(report["backends"], vectors, corpus))
            names = list(report["backends"])
        if with_node or node_only:
            report["node"] = {}
            for name in names:
                log(f"node with --embedder {name}")
                report["node"][name] = node_rss(name, work)
    return report


def _torch_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("torch") is not None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--quick", action="store_true", help="256 sentences for the comparisons")
    nodes = p.add_mutually_exclusive_group()
    nodes.add_argument("--no-node", action="store_true", help="skip the node RSS measurement")
    nodes.add_argument("--node-only", action="store_true", help="only the node RSS measurement")
    p.add_argument("--child", choices=BACKENDS, help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.n, args.out)))
        return 0
    report = run(args.quick, not args.no_node, args.node_only)
    print(json.dumps(report, indent=1 if args.json else None, sort_keys=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
