"""Recall latency of a node, end to end through its control socket, idle and while merging.

    .venv/bin/python bench/recall.py [--json] [--sizes 10000,100000] [--queries 300]
        [--quick] [--no-merge] [--node-threads N] [--keep]

An agent asks its node "what is relevant to my task?": the control action `recall`
({task, domain?, k?, max_distance?}; fai_net/api/recall.py, fai_core/ranking.py). Each call
here is what an agent's call is: a fresh ControlClient connection to a real `fai node run`
process, which embeds the task with the real model (all-MiniLM-L6-v2, the default
`minilm` embedder, loaded from its PyPI package), searches its library for k x
FETCH_FACTOR neighbours, looks up corroboration and feedback in outcomes.sqlite, ranks and
renders. k = 5 (the default); every other call names the task's domain, the others search
every domain the node subscribes to (all eight, hence every row: a filter of 8 domains).
Tasks: 48 hand-written task descriptions, 6 per corpus domain (`TASKS`).

The node's library (bench/recall_build.py has the details, and caches it under
bench/.recall-cache/): the first 10,000 rows are real (the shipped pattern corpus plus
texts composed from its sentences, all embedded by the model); rows beyond 10,000 are
SYNTHETIC (a composed text with a vector mixed from two real embeddings of its domain plus
noise, not the model's embedding of that text), so the 100,000 library is 10% real, 90%
synthetic. Each answer's share of synthetic rows is reported. The library is built with
ExperienceLibrary and `maintain()`: exact search at 10,000, the IVF_SQ index at 100,000.

Per size, in order:

1. **In-process profile** (before the node starts, on its data directory): the calls
   `Recall.recall` makes, timed one by one on the same library and outcome book (embed,
   search, outcome lookups, cached calibration, rank + render), `Recall.recall` itself,
   the calibration rebuild it does every CALIBRATION_TTL_S (a scan of every claim; a
   vectorised build is timed beside it), search at k = 5, 20 (FETCH_FACTOR 4) and 50, and
   search right after an embed vs right after another search (torch's idle OpenMP threads
   spin for a while after an embed and slow LanceDB down on 2 cores). It also checks each
   hit's reported distance against the exact one (1 - cosine, from the stored vector) and,
   with a vector index, times search with refine_factor 1 (exact re-ranking).
2. **Idle**: the node (`--open`, the 8 corpus domains, `--round-interval 0.5`, all else
   default) is started, warmed up (its first recall loads the model), then `--queries`
   recalls, each followed by the two anchors: one bare `embed([task])` of the same model
   in this process, and one `info` call (a control round trip that does no work).
   With a vector index, again after one `add` (**idle+1w**): a fully indexed LanceDB
   table (the state right after maintenance) reports IVF_SQ "cosine" distances at twice
   the cosine distance (squared L2 of unit vectors), so the 0.65 cutoff keeps almost
   nothing; once any row is outside the index (the state after any write), LanceDB
   returns exact distances. Both states are measured; the profile shows the ratio.
3. **Under merge** (unless `--no-merge`): a peer (bench/bare_gossip_peer.py, seeded with
   the node) publishes coding batches of 32 new experiences with their true embeddings,
   signed by 4 fresh keys: a burst of 1,280 rows, then 20 rows/s (the node's open-mode
   forwarder budget is 25 rows/s sustained). Once the node has merged its first rows, the
   same `--queries` recalls and anchors run again. Reported beside them: rows DeltaSoup
   merged into the library in the window (`fai_experiences_merged_total`), rows inserted
   (library size), merge rounds and the largest gap between two (event log), the share of
   the window spent in merge rounds and in the embedder (`fai_round_seconds`,
   `fai_stage_seconds_total{stage="embed"}`, which also counts the recalls' embeddings),
   the pending queue at both ends: merges were happening throughout if the gap is short.

Before the sizes, `embed_probe`: a bare embed in this process alone and beside a thread
re-embedding 64-text batches, at torch's default intra-op threads and at 1.
`--node-threads N` starts the node with OMP_NUM_THREADS=N (torch's intra-op threads);
by default the node gets the environment a user's node gets (this process undoes the
thread pinning bench/fleet.py applies on import).

Speeds are given in ms and as ratios to anchors measured in the same run (the machine is
shared and noisy): recall latency over the median bare embed of the same phase, and over
(median embed + median search of the in-process profile). Target (the issue): recall
p95 <= 30 ms at 100,000 experiences.

A full run (10k and 100k, 300 queries, with merges) takes ~5 minutes on 2 cores once the
cache exists; the first run embeds ~14,000 texts for the cache (2-5 min on a busy
machine) and writes the 100k library (~15 s). `--quick`: 2,000 rows, 40 queries, ~1.5
minutes. Progress goes to stderr; `--json` prints one JSON object.
"""

from __future__ import annotations

import os

_ENV = dict(os.environ)
# bench/flood.py imports bench/fleet.py, which pins OMP/MKL/... threads to 1 for its fleets
# of processes; this bench measures one node as a user runs it, so the environment is put
# back before torch is ever imported.
import flood  # noqa: E402
from fleet import Proc  # noqa: E402

os.environ.clear()
os.environ.update(_ENV)

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import secrets  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import urllib.request  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import recall_build as rb  # noqa: E402

from fai_core.corpus import CORPUS_DOMAINS  # noqa: E402
from fai_net.api.control import ControlError  # noqa: E402
from fai_net.p2p.topics import topic_for  # noqa: E402

BENCH = Path(__file__).resolve().parent
#: The node's subscriptions (node_args): the 8 corpus domains, every domain of its library.
SUBSCRIBED = list(CORPUS_DOMAINS)
BARE_PEER = BENCH / "bare_gossip_peer.py"
TARGET_P95_MS = 30.0
K = 5
ROWS_PER_BATCH = 32
PEER_KEYS = 4
BURST_BATCHES = 40
SUSTAINED_ROWS_PER_S = 20.0
ROUND_INTERVAL_S = 0.5

#: What agents ask before a task: six per domain, written for this benchmark.
TASKS: dict[str, list[str]] = {
    "coding": [
        "Fix a flaky pytest test that fails only in CI and passes locally",
        "Add type hints to a legacy Python module and get mypy to pass",
        "Find which commit introduced a performance regression in the parser",
        "Refactor a 600-line function into smaller testable units without changing behaviour",
        "Write a retry wrapper for an HTTP client that respects rate limit headers",
        "Upgrade a Django project from 3.2 to 4.2 and fix the deprecation warnings",
    ],
    "writing": [
        "Draft a release announcement for a new version of our command-line tool",
        "Edit a 3,000-word technical blog post to be shorter and clearer",
        "Write an executive summary of a quarterly engineering report",
        "Rewrite an error message so non-technical users know what to do next",
        "Outline a tutorial that teaches beginners how to use git branches",
        "Proofread a grant proposal and tighten its abstract to 200 words",
    ],
    "data-analysis": [
        "Find out why weekly active users dropped 12% after the last release",
        "Clean a CSV export with mixed date formats and duplicate customer rows",
        "Build a dashboard query that computes monthly churn by subscription plan",
        "Check whether an A/B test result on checkout conversion is significant",
        "Join sales data with marketing spend and estimate the return per channel",
        "Detect anomalies in hourly sensor readings that have missing values",
    ],
    "devops": [
        "Reduce the build time of a Docker image that takes 15 minutes in CI",
        "Roll out a Kubernetes deployment with zero downtime and a quick rollback path",
        "Investigate a service whose memory grows until it is OOM-killed every night",
        "Set up alerting for disk usage and certificate expiry on production hosts",
        "Migrate a PostgreSQL database to a new server with minimal downtime",
        "Write a Terraform module for a private network with two subnets",
    ],
    "research": [
        "Summarise recent papers on retrieval-augmented generation for code",
        "Compare three vector databases for a 10 million document search workload",
        "Design an experiment to test whether a new ranking model improves relevance",
        "Collect evidence for and against a claim made in a news article",
        "Review the related work section of a machine learning paper draft",
        "Estimate the market size for a developer tool from public sources",
    ],
    "customer-support": [
        "Answer a customer who was charged twice for the same subscription",
        "Calm an angry user whose data export has been failing for three days",
        "Explain how to reset two-factor authentication after losing a phone",
        "Triage a backlog of 200 support tickets by urgency and topic",
        "Write a macro reply for the most common shipping delay question",
        "Escalate a customer's bug report to engineering with clear reproduction steps",
    ],
    "security": [
        "Rotate an API key that was accidentally committed to a public repository",
        "Review a login endpoint for injection and brute-force weaknesses",
        "Respond to a phishing email reported by several employees",
        "Harden SSH access on a fleet of Linux servers",
        "Audit third-party dependencies for known vulnerabilities before a release",
        "Set up least-privilege IAM roles for a new data pipeline",
    ],
    "design": [
        "Redesign a settings page that users say is confusing",
        "Choose accessible colours for a data visualisation with eight categories",
        "Create a mobile layout for a dashboard that was designed for desktop",
        "Run a usability test of the new onboarding flow with five participants",
        "Design empty states for a project management app",
        "Define a spacing and typography scale for a component library",
    ],
}


def log(msg: str) -> None:
    print(f"[recall {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def query_plan(n: int) -> list[tuple[str, str | None]]:
    """n (task, domain or None): domains take turns; every other call names its domain."""
    flat = [(d, TASKS[d][j]) for j in range(6) for d in CORPUS_DOMAINS]
    out = []
    for i in range(n):
        domain, task = flat[i % len(flat)]
        filtered = (i + i // len(flat)) % 2 == 1  # each task both ways over two passes
        out.append((task, domain if filtered else None))
    return out


def pct(values: list[float], q: float) -> float | None:
    return None if not values else round(float(np.percentile(np.asarray(values), q)), 2)


def summary(ms: list[float]) -> dict:
    return {
        "n": len(ms),
        "p50": pct(ms, 50),
        "p95": pct(ms, 95),
        "p99": pct(ms, 99),
        "max": round(max(ms), 2) if ms else None,
        "mean": round(float(np.mean(ms)), 2) if ms else None,
    }


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a and b else None


def timed(fn, *args, **kwargs) -> tuple[float, object]:
    started = time.perf_counter()
    out = fn(*args, **kwargs)
    return (time.perf_counter() - started) * 1000.0, out


# -- in-process profile ----------------------------------------------------------------------


def calibration_fast(lib) -> dict[bytes, np.ndarray]:
    """A vectorised build of QualityCalibration's per-source sorted claims (a suggestion,
    timed against the current one): dictionary-encode the source column in Arrow, one
    lexsort, split. Reads the table the way ExperienceLibrary.claims does."""
    import pyarrow.compute as pc

    table = lib._select(None, ["source", "quality"])  # what claims() reads
    encoded = pc.dictionary_encode(table.column("source")).combine_chunks()
    codes = encoded.indices.to_numpy()
    quality = table.column("quality").to_numpy()
    order = np.lexsort((quality, codes))
    counts = np.bincount(codes, minlength=len(encoded.dictionary))
    parts = np.split(quality[order], np.cumsum(counts)[:-1])
    return dict(zip(encoded.dictionary.to_pylist(), parts, strict=True))


def profile(data_dir: Path, embedder, plan: list[tuple[str, str | None]]) -> dict:
    """The stages of Recall.recall, timed in this process on the node's data directory."""
    from fai_core.library import ExperienceLibrary
    from fai_core.ranking import MAX_DISTANCE, QualityCalibration, rank, render, vouched_candidate
    from fai_net.api.outcome_book import OutcomeBook
    from fai_net.api.recall import CALIBRATION_TTL_S, FETCH_FACTOR, Recall, RecallQuery
    from fai_net.node.node import _peer_id_text

    lib = ExperienceLibrary.open(data_dir / "library", rb.DIM, embedder)  # the node's way
    book = OutcomeBook(data_dir / "outcomes.sqlite")
    try:
        rec = Recall(lib, book, _peer_id_text)
        for task, domain in plan[:5]:  # warm: index and page cache, calibration, torch
            rec.recall(RecallQuery(task, domain, K, MAX_DISTANCE), SUBSCRIBED)
        claims_ms, build_ms, fast_ms = [], [], []
        for _ in range(3):
            t, claims = timed(lib.claims)
            claims_ms.append(t)
            build_ms.append(timed(QualityCalibration, claims)[0])
            t, fast = timed(calibration_fast, lib)
            fast_ms.append(t)
        current = QualityCalibration(claims)._sorted
        same = current.keys() == fast.keys() and all(
            np.array_equal(current[s], fast[s]) for s in current
        )
        stages: dict[str, list[float]] = {
            s: []
            for s in ("embed", "search", "outcomes", "calibration", "rank_render", "sum", "recall")
        }
        by_k: dict[int, list[float]] = {K: [], K * FETCH_FACTOR: [], 50: []}
        no_filter, all_domains = [], []
        fetched, kept, kept_exact, over_exact, refined = [], [], [], [], []
        indexed = bool(lib._index_rows)
        started = time.monotonic()
        for task, domain in plan:
            t_embed, vec = timed(lambda t=task: embedder.embed([t])[0])
            # What Recall.recall searches: the query's domain, else every subscribed one.
            where = domain if domain is not None else SUBSCRIBED
            t_search, hits = timed(lib.search, vec, where, K * FETCH_FACTOR)
            fetched.append(len(hits))
            # The distance each hit should have: 1 - cosine, from the stored unit vector.
            exact = [1.0 - float(np.dot(vec, h.entry.experience.embedding)) for h in hits]
            over_exact += [h.distance / x for h, x in zip(hits, exact, strict=True) if x > 1e-3]
            kept_exact.append(sum(x <= MAX_DISTANCE for x in exact))
            hits = [h for h in hits if h.distance <= MAX_DISTANCE]
            kept.append(len(hits))
            ids = [h.entry.experience.id for h in hits]

            def lookups(ids=ids, hits=hits):
                return (
                    book.sources_of(ids),
                    book.tallies(ids),
                    book.source_tallies({h.entry.experience.source for h in hits}),
                )

            t_outcomes, (sources, tallies, source_tallies) = timed(lookups)
            t_cal, calibration = timed(rec.calibration)

            def ranking(
                hits=hits, sources=sources, tallies=tallies, st=source_tallies, cal=calibration
            ):
                entries = {h.entry.experience.id: h.entry for h in hits}
                candidates = [
                    vouched_candidate(
                        h.entry.experience.id,
                        h.entry.experience.domain,
                        h.entry.experience.source,
                        h.distance,
                        h.entry.experience.quality,
                        sources.get(h.entry.experience.id, ()),
                        None,  # the bench's library has no sender histories
                    )
                    for h in hits
                ]
                ranked = rank(
                    candidates,
                    tallies=tallies,
                    source_tallies=st,
                    calibration=cal,
                    max_distance=MAX_DISTANCE,
                    k=K,
                )
                now = time.time_ns() // 1_000_000
                items = [rec._item(r, entries[r.candidate.id], now) for r in ranked]
                return render((i["domain"], i["text"], i["utility"]) for i in items)

            t_rank, _ = timed(ranking)
            query = RecallQuery(task, domain, K, MAX_DISTANCE)
            t_total, _ = timed(rec.recall, query, SUBSCRIBED)
            for name, value in (
                ("embed", t_embed),
                ("search", t_search),
                ("outcomes", t_outcomes),
                ("calibration", t_cal),
                ("rank_render", t_rank),
                ("recall", t_total),
            ):
                stages[name].append(value)
            stages["sum"].append(t_embed + t_search + t_outcomes + t_cal + t_rank)
            for k in by_k:
                by_k[k].append(timed(lib.search, vec, where, k)[0])
            if domain is None:  # the subscription filter when it covers every row's domain
                all_domains.append(timed(lib.search, vec, SUBSCRIBED, K * FETCH_FACTOR)[0])
                no_filter.append(timed(lib.search, vec, None, K * FETCH_FACTOR)[0])
            if indexed:  # the fix suggested for the distances: re-rank on full vectors
                lib._refine_factor = 1
                refined.append(timed(lib.search, vec, where, K * FETCH_FACTOR)[0])
                lib._refine_factor = None
        elapsed = time.monotonic() - started
    finally:
        book.close()
        lib.close()
    return {
        "queries": len(plan),
        "stages_ms": {name: summary(v) for name, v in stages.items()},
        "neighbours_fetched_mean": round(float(np.mean(fetched)), 1),
        "within_cutoff_mean": round(float(np.mean(kept)), 1),
        "within_cutoff_by_exact_distance_mean": round(float(np.mean(kept_exact)), 1),
        "distance_reported_over_exact": {
            "median": round(float(np.median(over_exact)), 3),
            "min": round(float(np.min(over_exact)), 3),
            "max": round(float(np.max(over_exact)), 3),
        },
        "vector_index": indexed,
        "search_ms_by_k": {str(k): summary(v) for k, v in by_k.items()},
        "search_after_embed_minus_after_search_p50_ms": round(
            pct(stages["search"], 50) - pct(by_k[K * FETCH_FACTOR], 50), 2
        ),
        "search_refine_factor_1_ms": summary(refined) if refined else None,
        "search_all_8_domains_vs_no_filter_ms": {
            "all_8_domains": summary(all_domains),
            "no_filter": summary(no_filter),
        },
        "calibration_rebuild_ms": {
            "claims_scan": round(min(claims_ms), 1),
            "build": round(min(build_ms), 1),
            "total": round(min(c + b for c, b in zip(claims_ms, build_ms, strict=True)), 1),
            "vectorised_alternative": round(min(fast_ms), 1),
            "vectorised_matches": same,
            "every_s": CALIBRATION_TTL_S,
        },
        "profile_s": round(elapsed, 1),
    }


def embed_probe(embedder, busy_texts: list[str], plan, n: int) -> dict:
    """Bare embed([task]) latency alone and beside a thread that re-embeds 64-text batches
    (a merge round's work), at torch's default intra-op threads and at 1."""
    import torch

    default = torch.get_num_threads()
    out: dict = {"torch_threads_default": default}
    try:
        for threads in (default, 1):
            torch.set_num_threads(threads)
            alone = [timed(embedder.embed, [t])[0] for t, _ in plan[:n]]
            stop = threading.Event()

            def busy(stop=stop):
                i = 0
                while not stop.is_set():
                    embedder.embed(busy_texts[i : i + 64])
                    i = (i + 64) % max(1, len(busy_texts) - 64)

            worker = threading.Thread(target=busy, daemon=True)
            worker.start()
            time.sleep(0.5)
            loaded = [timed(embedder.embed, [t])[0] for t, _ in plan[:n]]
            stop.set()
            worker.join()
            out[f"threads_{threads}"] = {
                "alone_ms": summary(alone),
                "beside_64_ms": summary(loaded),
            }
    finally:
        torch.set_num_threads(default)
    return out


# -- the node --------------------------------------------------------------------------------


def node_args(data: Path, events: Path) -> list[str]:
    args = ["--data-dir", str(data), "--open", "--round-interval", str(ROUND_INTERVAL_S)]
    for domain in CORPUS_DOMAINS:
        args += ["--domain", domain]
    return [*args, "--event-log", str(events), "--log-level", "warning"]


def scrape(port: int | None) -> dict[str, float]:
    """The node's Prometheus samples this bench reads (name{label} -> value)."""
    from prometheus_client.parser import text_string_to_metric_families

    if not port:
        return {}
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name.startswith(
                ("fai_experiences_", "fai_stage_seconds", "fai_round_seconds", "fai_batches_")
            ) and not s.name.endswith(("_created", "_bucket")):
                label = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
                out[f"{s.name}{{{label}}}" if label else s.name] = s.value
    return out


def measure(client, embedder, plan, *, phase: str) -> dict:
    """Each query: recall (timed at the client), then the two anchors."""
    recall_ms, embed_ms, info_ms, returned, synthetic, top = [], [], [], [], 0, []
    errors: list[str] = []
    slowest: list[tuple[float, float]] = []
    t0 = time.monotonic()
    for i, (task, domain) in enumerate(plan):
        args = {"task": task, "k": K, **({"domain": domain} if domain else {})}
        at = time.monotonic() - t0
        try:
            ms, res = timed(client.call, "recall", **args)
        except ControlError as exc:
            errors.append(str(exc))
            continue
        recall_ms.append(ms)
        slowest.append((ms, at))
        items = res["experiences"]
        returned.append(len(items))
        synthetic += sum(rb.is_synthetic(x["text"]) for x in items)
        if items:
            top.append(items[0]["relevance"])
        embed_ms.append(timed(embedder.embed, [task])[0])
        info_ms.append(timed(client.call, "info")[0])
        if (i + 1) % 100 == 0:
            log(f"  {phase}: {i + 1}/{len(plan)} recalls, p50 {pct(recall_ms, 50)} ms")
    n_items = sum(returned)
    r, e = summary(recall_ms), summary(embed_ms)
    return {
        "recall_ms": r,
        "embed_anchor_ms": e,
        "info_anchor_ms": summary(info_ms),
        "recall_over_embed_anchor": {q: ratio(r[q], e["p50"]) for q in ("p50", "p95", "p99")},
        "errors": len(errors),
        "first_errors": errors[:3],
        "returned_mean": round(n_items / max(1, len(returned)), 2),
        "empty_answers": sum(1 for x in returned if x == 0),
        "synthetic_share_of_returned": round(synthetic / n_items, 3) if n_items else None,
        "top_relevance_mean": round(float(np.mean(top)), 3) if top else None,
        "slowest_ms_at_s": [[round(ms, 1), round(at, 1)] for ms, at in sorted(slowest)[-3:]],
        "window_s": round(time.monotonic() - t0, 1),
    }


def warm_up(client, plan) -> float:
    """The node's first recall loads the model; a few more warm its caches."""
    first, _ = timed(client.call, "recall", task=plan[0][0])
    for task, domain in plan[1:12]:
        client.call("recall", task=task, **({"domain": domain} if domain else {}))
    return first


def merge_envelopes(texts: list[str], vectors: np.ndarray, batches: int) -> list[bytes]:
    """Coding batches of the merge texts with their true embeddings, 4 fresh keys."""
    from fai_core.experience import Experience
    from fai_core.identity import NodeKey
    from fai_core.wire import encode_batch

    keys = [NodeKey(secrets.token_bytes(32)) for _ in range(PEER_KEYS)]
    baseline = vectors.mean(axis=0)
    rng = np.random.default_rng()
    now = time.time_ns() // 1_000_000
    out = []
    for b in range(batches):
        key, seq = keys[b % PEER_KEYS], b // PEER_KEYS + 1
        rows = range(b * ROWS_PER_BATCH, (b + 1) * ROWS_PER_BATCH)
        exps = [
            Experience.create(
                text=texts[i],
                embedding=vectors[i],
                quality=float(rng.uniform(0.4, 0.8)),
                domain=rb.MERGE_DOMAIN,
                source=key.public_key,
                created_ms=now,
            )
            for i in rows
        ]
        batch = encode_batch(
            exps, key=key, seq=seq, timestamp_ms=now, model=rb.MODEL, baseline=baseline
        )
        out.append(batch.envelope)
    return out


def merge_phase(node, client, embedder, plan, texts, vectors, root: Path) -> dict:
    peer_dir = root / f"{node.name}-peer"
    peer_dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, str(BARE_PEER), str(peer_dir), "--topic", topic_for(rb.MERGE_DOMAIN, 2)]
    peer = Proc(f"{node.name}-peer", peer_dir, [*cmd, "--seed", node.addr], "ready.json")
    try:
        peer.launch({**os.environ, "PYTHONUNBUFFERED": "1"}).wait_ready(120)
        deadline = time.monotonic() + 60
        while True:
            try:
                if json.loads((peer_dir / "status.json").read_text())["mesh"] >= 1:
                    break
            except (OSError, ValueError, KeyError):
                pass
            if time.monotonic() > deadline:
                raise TimeoutError("the peer did not join the node's coding mesh")
            time.sleep(0.25)
        peer.popen.send_signal(signal.SIGUSR2)  # it stops writing status.json
        batches = len(texts) // ROWS_PER_BATCH
        envelopes = merge_envelopes(texts, vectors, batches)
        every = ROWS_PER_BATCH / SUSTAINED_ROWS_PER_S
        at = [
            0.1 * b if b < BURST_BATCHES else 0.1 * BURST_BATCHES + every * (b - BURST_BATCHES)
            for b in range(batches)
        ]
        steps = [{"at": a, "hex": e.hex()} for a, e in zip(at, envelopes, strict=True)]
        (peer_dir / "plan.json").write_text(json.dumps(steps))
        size0 = client.call("status")["library_size"]
        (peer_dir / "go.json").write_text(json.dumps({"t0": time.time()}))
        peer.popen.send_signal(signal.SIGUSR1)
        log(f"  peer publishing {batches} batches of {ROWS_PER_BATCH} ({at[-1]:.0f} s)")
        deadline = time.monotonic() + 240
        while client.call("status")["library_size"] <= size0:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing merged in 240 s:\n{node.tail()}")
            time.sleep(0.25)
        port = node.info.get("metrics_port")
        m0, s0, t0 = scrape(port), client.call("status"), time.time()
        log(f"  merging ({s0['pending_rows']} rows pending); measuring recall")
        figures = measure(client, embedder, plan, phase="merge")
        m1, s1, t1 = scrape(port), client.call("status"), time.time()
    finally:
        peer.stop()
    span = t1 - t0
    rounds = [
        e["t"]
        for e in flood.read_events(node.events_path)
        if e.get("ev") == "merged" and t0 <= e["t"] <= t1
    ]
    gaps = np.diff([t0, *rounds, t1])

    def delta(name: str) -> float:
        return m1.get(name, 0.0) - m0.get(name, 0.0)

    merged = delta("fai_experiences_merged_total")
    figures["merges"] = {
        "window_s": round(span, 1),
        "rows_merged": int(merged),
        "rows_merged_per_s": round(merged / span, 1),
        "rows_inserted": s1["library_size"] - s0["library_size"],
        "merge_rounds": len(rounds),
        "largest_gap_between_rounds_s": round(float(gaps.max()), 1),
        "round_time_share": round(delta("fai_round_seconds_sum") / span, 2),
        # Wall time in the node's embedder: re-embedding, and the recalls' own embeddings.
        "embed_wall_share_incl_recalls": round(
            delta("fai_stage_seconds_total{stage=embed}") / span, 2
        ),
        "pending_rows_start_end": [s0["pending_rows"], s1["pending_rows"]],
        "library_size_end": s1["library_size"],
        "drops": {
            k.split("reason=")[1].rstrip("}"): int(delta(k))
            for k in m1
            if k.startswith("fai_experiences_dropped_total") and delta(k)
        },
        "rejections": {
            k.split("reason=")[1].rstrip("}"): int(delta(k))
            for k in m1
            if k.startswith("fai_batches_rejected_total") and delta(k)
        },
    }
    return figures


def launch(node, threads: int | None):
    """Start the node; with `threads`, its torch/OpenMP intra-op threads are pinned (this
    process's own torch is loaded already, so the change is the child's alone)."""
    saved = dict(os.environ)
    if threads:
        os.environ.update({"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)})
    try:
        node.launch()
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return node.wait_ready(300)


def run_size(n: int, args, embedder, real, merge, root: Path) -> dict:
    texts_real, vec_real = real
    src, built = rb.build_node_dir(n, texts_real, vec_real, log)
    data = root / f"n{n}"
    log(f"n={n}: copying the cached node directory (the cache stays pristine)")
    shutil.copytree(src, data)
    (data / "build.json").unlink()
    plan = query_plan(args.queries)
    out: dict = {"experiences": n, "library": built}
    log(f"n={n}: in-process profile ({min(args.queries, args.profile_queries)} queries)")
    out["profile"] = profile(data, embedder, plan[: args.profile_queries])
    node = flood.NodeRun(f"node{n}", data)
    node.args = node_args(data, node.events_path)
    try:
        log(f"n={n}: starting the node")
        t_start, _ = timed(lambda: launch(node, args.node_threads))
        client = node.client(timeout=180)
        out["node_start_ms"] = round(t_start)
        out["first_recall_ms"] = round(warm_up(client, plan))
        log(f"n={n}: idle: {len(plan)} recalls")
        out["idle"] = measure(client, embedder, plan, phase="idle")
        if out["profile"]["vector_index"]:
            # One write leaves rows outside the index, and LanceDB then returns exact
            # distances (see distance_reported_over_exact): the state after any merge.
            text = "Measure recall on a library that just took one write (bench probe)"
            client.call("add", experiences=[{"text": text, "domain": "coding"}])
            log(f"n={n}: idle after one write: {len(plan)} recalls")
            out["idle_after_one_write"] = measure(client, embedder, plan, phase="idle+1")
        if not args.no_merge:
            log(f"n={n}: under merge")
            out["merge"] = merge_phase(node, client, embedder, plan, *merge, root)
            idle, busy = out["idle"]["recall_ms"], out["merge"]["recall_ms"]
            out["merge_over_idle"] = {q: ratio(busy[q], idle[q]) for q in ("p50", "p95", "p99")}
    finally:
        node.stop()
    prof = out["profile"]
    anchor = (prof["stages_ms"]["embed"]["p50"] or 0) + (prof["stages_ms"]["search"]["p50"] or 0)
    for phase in ("idle", "idle_after_one_write"):
        if phase in out:
            out[phase]["recall_over_profile_embed_plus_search"] = {
                q: ratio(out[phase]["recall_ms"][q], anchor) for q in ("p50", "p95", "p99")
            }
    out["meets_target_p95_30ms"] = (out["idle"]["recall_ms"]["p95"] or math.inf) <= TARGET_P95_MS
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--sizes", help="library sizes (default 10000,100000; --quick 2000)")
    p.add_argument("--queries", type=int, help="recalls per phase (default 300; --quick 40)")
    p.add_argument("--profile-queries", type=int, default=None, help="(default 100; quick 20)")
    p.add_argument("--quick", action="store_true", help="a small smoke run")
    p.add_argument("--no-merge", action="store_true", help="skip the under-merge phase")
    p.add_argument("--keep", action="store_true", help="keep the run directory")
    p.add_argument(
        "--node-threads",
        type=int,
        default=None,
        help="OMP_NUM_THREADS for the node (default: unset, torch uses every core)",
    )
    args = p.parse_args(argv)
    sizes = args.sizes or ("2000" if args.quick else "10000,100000")
    args.sizes = [int(s) for s in sizes.split(",") if s]
    args.queries = args.queries or (40 if args.quick else 300)
    args.profile_queries = args.profile_queries or (20 if args.quick else 100)
    merge_rows = 20 * ROWS_PER_BATCH if args.quick else rb.MERGE_ROWS
    if min(args.sizes) < 1 or args.queries < 1:
        p.error("sizes and queries must be positive")

    from fai_core.embedding import default_embedder

    started = time.monotonic()
    load_before = os.getloadavg()
    embedder = default_embedder()
    t_load, _ = timed(embedder.embed, ["load the model"])
    log(f"model loaded in this process in {t_load / 1000:.1f} s")
    real_texts = rb.real_texts()
    need = min(rb.REAL_ROWS, max(args.sizes))
    vec_real = rb.embedded("real", [t for _, t in real_texts], need, embedder.embed, log)
    texts_merge = rb.merge_texts()
    vec_merge = rb.embedded("merge", texts_merge, merge_rows, embedder.embed, log)
    plan = query_plan(args.queries)
    probe = embed_probe(embedder, texts_merge, plan, 20 if args.quick else 60)
    root = Path(tempfile.mkdtemp(prefix="fai-recall-", dir="/tmp"))  # AF_UNIX paths: short
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    results = []
    try:
        for n in args.sizes:
            results.append(
                run_size(
                    n,
                    args,
                    embedder,
                    (real_texts[:need], vec_real),
                    (texts_merge[:merge_rows], vec_merge),
                    root,
                )
            )
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    import torch

    report = {
        "machine": {
            "cores": os.cpu_count(),
            "python": platform.python_version(),
            "torch_threads": torch.get_num_threads(),
            "load_before": [round(x, 2) for x in load_before],
            "load_after": [round(x, 2) for x in os.getloadavg()],
        },
        "model": rb.MODEL,
        "settings": {
            "queries": args.queries,
            "k": K,
            "domain_filter": "every other call",
            "round_interval_s": ROUND_INTERVAL_S,
            "node_omp_threads": args.node_threads,
            "merge_peer": {
                "rows_per_batch": ROWS_PER_BATCH,
                "keys": PEER_KEYS,
                "burst_rows": BURST_BATCHES * ROWS_PER_BATCH,
                "sustained_rows_per_s": SUSTAINED_ROWS_PER_S,
                "rows_available": merge_rows,
            },
            "library": "first 10,000 rows real (MiniLM embeddings of corpus and composed "
            "texts); rows beyond are synthetic (mixed real vectors + noise)",
        },
        "target_p95_ms_at_100k": TARGET_P95_MS,
        "embed_probe": probe,
        "sizes": results,
        "run_dir": str(root) if args.keep else None,
        "elapsed_s": round(time.monotonic() - started, 1),
    }
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        print_table(report)
    return 0


def print_table(r: dict) -> None:
    m = r["machine"]
    print(
        f"{r['model']}, {m['cores']} cores, torch threads {m['torch_threads']}, load "
        f"{m['load_before'][0]} -> {m['load_after'][0]}; target p95 <= {r['target_p95_ms_at_100k']}"
        f" ms at 100k; {r['settings']['queries']} recalls per phase, k={r['settings']['k']}"
    )
    head = f"{'n':>8} {'phase':7} {'p50':>7} {'p95':>7} {'p99':>7} {'max':>7}  {'embed p50':>9}"
    print(head + f" {'p95/embed':>9} {'info p50':>8}  returned synth")
    label = {"idle": "idle", "idle_after_one_write": "idle+1w", "merge": "merge"}
    for s in r["sizes"]:
        for phase in ("idle", "idle_after_one_write", "merge"):
            if phase not in s:
                continue
            x = s[phase]
            rc = x["recall_ms"]
            print(
                f"{s['experiences']:>8} {label[phase]:7} {rc['p50']:>7} {rc['p95']:>7} "
                f"{rc['p99']:>7} {rc['max']:>7}  {x['embed_anchor_ms']['p50']:>9} "
                f"{x['recall_over_embed_anchor']['p95']:>9} {x['info_anchor_ms']['p50']:>8}  "
                f"{x['returned_mean']:>8} {x['synthetic_share_of_returned']}"
            )
        if "merge" in s:
            mg = s["merge"]["merges"]
            print(
                f"{'':>8} merges in window: {mg['rows_merged']} rows "
                f"({mg['rows_merged_per_s']}/s), "
                f"{mg['merge_rounds']} rounds, largest gap "
                f"{mg['largest_gap_between_rounds_s']} s, round time {mg['round_time_share']:.0%}, "
                f"pending rows {mg['pending_rows_start_end']}; merge/idle p95 "
                f"{s['merge_over_idle']['p95']}"
            )
        st = s["profile"]["stages_ms"]
        cal = s["profile"]["calibration_rebuild_ms"]
        print(
            f"{'':>8} in-process p50 ms: "
            + ", ".join(f"{k} {v['p50']}" for k, v in st.items())
            + f"; calibration rebuild {cal['total']} ms "
            f"(vectorised {cal['vectorised_alternative']})"
        )
        prof = s["profile"]
        refined = prof["search_refine_factor_1_ms"]
        print(
            f"{'':>8} search p50 by k: "
            + ", ".join(f"k={k} {v['p50']}" for k, v in prof["search_ms_by_k"].items())
            + (f"; k=20 with refine_factor 1: {refined['p50']}" if refined else "")
            + f"; reported/exact distance {prof['distance_reported_over_exact']['median']}, "
            f"within the cutoff {prof['within_cutoff_mean']} "
            f"(by exact distance {prof['within_cutoff_by_exact_distance_mean']})"
        )
    pr = r["embed_probe"]
    for key, v in pr.items():
        if key.startswith("threads_"):
            print(
                f"bare embed, torch {key}: alone p50 {v['alone_ms']['p50']} p95 "
                f"{v['alone_ms']['p95']}; beside a 64-text embed loop p50 "
                f"{v['beside_64_ms']['p50']} p95 {v['beside_64_ms']['p95']}"
            )


if __name__ == "__main__":
    sys.exit(main())
