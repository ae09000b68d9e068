"""The paper's evaluation (section 9, Tables 1-5) redone on the fleet simulator: docs/evaluation.md.

    .venv/bin/python bench/evaluate.py [--jobs 2] [--cache DIR] [--rounds 100]
        [--sizes 10,50,100] [--seeds 42,123,456] [--robust-n 100] [--attacks a,b,...]
        [--bandwidth-sizes 10,50,100,200,500] [--bandwidth-rounds 20]
        [--share-check-sizes 10,50] [--eval-every 1] [--v1-seeds 42,123,456]
        [--out-md docs/evaluation.md] [--img-dir docs/img] [--json] [--quick]

Every number in the Markdown file comes from this script: the simulator runs (fai_core/sim),
the real wire encoder on the shipped corpus (Table 3) and bench/fidelity.py's `measure` on
the shipped vectors (Table 4). The paper's figures are typed in as claims, beside ours.

The runs are independent `fai_eval.sim.simulator.run` calls, spread over `--jobs` spawned
processes (each single-threaded: on a 2-core machine BLAS threads only fight each other).
Each finished run is cached as JSON under `--cache`, keyed by a hash of its full SimConfig
*and* of the fai_core code the simulator imports (plus fai_core/data): a result is only
reusable with the code that produced it, so an edit to the simulator or to DeltaSoup
invalidates the cache instead of silently mixing old and new numbers. An interrupted grid
resumes where it stopped.

The simulated nodes publish the simulator's default wire version (2: the baseline block by
CID). For the bandwidth tables (Tables 3 and 5) each bandwidth run is repeated with
`wire_version=1` (the float32 baseline in every batch) for the seeds in `--v1-seeds`, so both
versions are measured on the same fleet; Table 3 also encodes real corpus batches both ways.

Table 1/5 runs evaluate every `--eval-every` rounds (1 by default, so "rounds to 90%" is not
quantised); Byzantine, extra bandwidth and wire v1 runs evaluate only their final round, which does
not change the dynamics (evaluation draws no random numbers). The f = 0 column of Table 2 is
the Table 1 run of that N, so the clean runs are done once.

`--quick` is a smoke test (N = 10, 10 rounds, one seed, two attacks, robust N = 10) that
writes under the temp directory unless --out-md/--img-dir are given, so it can never
overwrite docs/evaluation.md with toy numbers by accident.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import math
import multiprocessing as mp
import os
import shlex
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import asdict
from pathlib import Path

import numpy as np

import fai_core
from fai_core import baseline_block, bitdelta, wire
from fai_core.baseline_block import make_baseline_block
from fai_core.corpus import load_pattern_corpus
from fai_core.embedding import DEFAULT_MODEL
from fai_core.experience import Experience
from fai_core.identity import NodeKey
from fai_eval import attacks
from fai_eval.scenario import shipped_embeddings
from fai_eval.sim import adversary, simulator, workload
from fai_eval.sim.simulator import METHODS, SimConfig, run

ROOT = Path(__file__).resolve().parent.parent
SEEDS = (42, 123, 456)
DEFAULT_ATTACKS = (
    "random_signs",
    "sign_flip",
    "alie",
    "ipm",
    "gaussian",
    "scale_inflation",
    "mismatch",
    "domain_spoof",
    "confidence_inflation",
    "flooding",
    "plausible_useless",
    "plausible_harmful",
    "adaptive_harmful",
    "stealth_harmful",
)
QUICK_ATTACKS = ("random_signs", "alie")
#: The poisoning-defence table: these attacks at every f, with and without agents that
#: recall for their tasks and report outcomes (SimConfig.feedback), over FEEDBACK_ROUNDS
#: rounds evaluated every FEEDBACK_EVERY (the target reads poisoned@3 at round 50).
FEEDBACK_ATTACKS = ("plausible_harmful", "adaptive_harmful", "stealth_harmful")
FEEDBACK_ROUNDS = 50
FEEDBACK_EVERY = 5
#: Sybils: at f = N/10, each attacker with this many free keys (open membership) against
#: one bonded key per attacker's bond (registry mode), one seed.
SYBIL_ATTACKS = ("plausible_harmful", "domain_spoof")
SYBIL_IDENTITIES = 10
THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")
KB = 1000  # bytes; the paper's "29 KB" is its 28,800-byte batch
TARGET = 0.9  # Table 5: rounds to 90% of the central oracle
ENVELOPE_SIZES = (1, 10, 100)
FIDELITY_GROUPS = (1, 16, 64, 128, 256)  # plus d (one scale per vector)
LABEL = {
    "isolated": "isolated",
    "central": "central oracle",
    "naive": "naive averaging (FAI, no DeltaSoup)",
    "fai": "FAI (DeltaSoup)",
}
COLOR = {"isolated": "tab:gray", "central": "black", "naive": "tab:orange", "fai": "tab:blue"}
#: Line style, width, alpha and marker per method: each curve stays visible when others lie
#: exactly on it (the oracle wide and pale, naive dashed and wider than FAI's solid line).
STYLE = {
    "isolated": ("-", 1.5, 1.0, "o"),
    "central": ("-", 4.0, 0.35, "D"),
    "naive": ("--", 2.2, 1.0, "s"),
    "fai": ("-", 1.0, 1.0, "^"),
}
SHORT = {"isolated": "isolated", "central": "oracle", "naive": "naive", "fai": "FAI"}

# The paper's claims (its section 9; docs/design.md#d30). SWE-bench resolved rate in %;
# not comparable in scale to the retrieval proxy, shown beside it only to compare shapes.
PAPER_T1 = {
    "isolated": ({10: 18.2, 50: 18.2, 100: 18.2}, None),
    "central": ({10: 22.1, 50: 23.4, 100: 24.0}, "up to +5.8"),
    "naive": ({10: 20.1, 50: 21.3, 100: 21.9}, "up to +3.7"),
    "fai": ({10: 21.8, 50: 22.9, 100: 23.7}, "up to +5.5"),
}
PAPER_T2 = {  # N = 100, random signs with scales U(0, 1)
    "naive": {"0": 23.7, "N/10": 21.8, "N/4": 19.4, "N/3": 18.1},
    "fai": {"0": 23.7, "N/10": 23.1, "N/4": 22.8, "N/3": 22.0},
}
PAPER_T2_CLEAN_SHARE = {"naive": None, "fai": 92.8}
PAPER_T3 = (  # representation, bytes/exp, total at M = 100, compression
    ("Float32 embedding (d = 768)", 3072, 307_200, "1x"),
    ("BitDelta (g = 128)", 288, 28_800, "10.7x"),
    ("BitDelta + metadata", 352, 35_200, "8.7x"),
)
PAPER_T4 = {  # g -> mean cos, min cos, compression
    1: (0.704, 0.582, "32x"),
    16: (0.861, 0.793, "16x"),
    64: (0.934, 0.901, "12.1x"),
    128: (0.957, 0.931, "10.7x"),
    256: (0.971, 0.952, "9.1x"),
}
PAPER_T5 = {10: (12, 98.6), 50: (18, 97.9), 100: (23, 98.8)}  # rounds to 90%, final %
PAPER_BANDWIDTH_KB = 29


# -- the grid ------------------------------------------------------------------------------


def code_fingerprint() -> str:
    """Hash of the fai_core and fai_eval modules loaded here (the simulator's whole import
    tree) and of fai_core/data: what a cached result depends on. Edits elsewhere in fai_core
    (the extraction pipeline, say) leave the cache valid; any edit to code the simulator
    runs invalidates it, rather than mixing old and new numbers."""
    base = Path(fai_core.__file__).resolve().parent.parent
    files = {
        Path(mod.__file__).resolve()
        for name, mod in list(sys.modules.items())
        if name.split(".")[0] in ("fai_core", "fai_eval") and getattr(mod, "__file__", None)
    }
    files |= {path.resolve() for path in (base / "fai_core" / "data").rglob("*") if path.is_file()}
    h = hashlib.sha256()
    for path in sorted(files):
        h.update(str(path.relative_to(base)).encode())
        h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()[:16]


def sim_config(
    nodes,
    rounds,
    seed,
    *,
    eval_every,
    byzantine=0,
    attack=None,
    share=True,
    wire_version=None,
    **extra,
) -> dict:
    """A SimConfig as a JSON-normal dict; f = 0 runs all carry the default attack name, so
    the clean run of an N is the same cache entry whichever attack table asks for it.
    `wire_version` None is the simulator's default (the version nodes publish); `extra`
    are other SimConfig fields (feedback, sybils, ...)."""
    kwargs: dict = {"attack": attack} if byzantine and attack else {}
    if wire_version is not None:
        kwargs["wire_version"] = wire_version
    kwargs.update(extra)
    cfg = SimConfig(
        nodes=nodes,
        rounds=rounds,
        seed=seed,
        byzantine=byzantine,
        eval_every=eval_every,
        share=share,
        **kwargs,
    )
    return json.loads(json.dumps(asdict(cfg)))


def cache_key(cfg: dict, fingerprint: str) -> str:
    blob = json.dumps({"config": cfg, "code": fingerprint}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def describe(cfg: dict) -> str:
    text = f"N={cfg['nodes']} R={cfg['rounds']} seed={cfg['seed']}"
    if cfg["byzantine"]:
        text += f" f={cfg['byzantine']} {cfg['attack']}"
    if not cfg["share"]:
        text += " share=False"
    if cfg.get("wire_version", 1) != SimConfig.wire_version:
        text += f" wire v{cfg.get('wire_version', 1)}"
    if cfg.get("feedback"):
        text += " feedback"
    if cfg.get("sybils", "none") != "none":
        text += f" sybils={cfg['sybils']}"
    return text


def _run_one(task: tuple[dict, str, str]) -> tuple[str, float, float]:
    """Worker: one simulation, written atomically so a killed grid leaves no torn file."""
    cfg, path, fingerprint = task
    kwargs = dict(cfg)
    kwargs["latency_ms"] = tuple(kwargs["latency_ms"])
    wall, cpu = time.perf_counter(), time.process_time()
    result = run(SimConfig(**kwargs))
    cpu = time.process_time() - cpu
    wall = time.perf_counter() - wall
    result["meta"] = {"cpu_s": cpu, "wall_s": wall, "code": fingerprint, "pid": os.getpid()}
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(result, fh, default=float)
    os.replace(tmp, path)
    return describe(cfg), cpu, wall


def run_grid(configs: list[dict], cache: Path, jobs: int, fingerprint: str) -> dict[str, dict]:
    cache.mkdir(parents=True, exist_ok=True)
    ignore = cache / ".gitignore"
    if not ignore.exists():
        ignore.write_text("*\n", encoding="utf-8")  # the cache never shows up in git status
    unique = {cache_key(c, fingerprint): c for c in configs}
    todo = [
        (cfg, str(cache / f"{key}.json"), fingerprint)
        for key, cfg in unique.items()
        if not (cache / f"{key}.json").exists()
    ]
    todo.sort(key=lambda t: expected_cost(t[0]), reverse=True)  # the last to finish is short
    log(f"{len(unique)} runs, {len(unique) - len(todo)} cached, {len(todo)} to do, jobs={jobs}")
    t0 = time.perf_counter()

    def report(done) -> None:
        for i, (what, cpu, wall) in enumerate(done, 1):
            elapsed = time.perf_counter() - t0
            log(f"[{i}/{len(todo)}] {what}: {cpu:.1f} CPU-s, {wall:.1f} s ({elapsed:.0f} s in)")

    if todo and jobs <= 1:
        report(map(_run_one, todo))
    elif todo:
        # Leaving the with-block terminates the workers, also on an error or Ctrl-C.
        with mp.get_context("spawn").Pool(min(jobs, len(todo))) as pool:
            report(pool.imap_unordered(_run_one, todo))
    out = {}
    for key in unique:
        with open(cache / f"{key}.json", encoding="utf-8") as fh:
            out[key] = json.load(fh)
    return out


def expected_cost(cfg: dict) -> float:
    """Relative CPU cost, from measured runs at N = 100: flooding costs ~10x a clean run
    whatever f (its copies fill every library), other attacks ~1 + 2 f / N."""
    if cfg["byzantine"] and cfg["attack"] == "flooding":
        factor = 10.0
    else:
        factor = 1 + 2 * cfg["byzantine"] / cfg["nodes"]
    per_eval = 0.25 * cfg["nodes"] / cfg["eval_every"]
    return cfg["nodes"] * cfg["rounds"] * factor + per_eval * cfg["rounds"]


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# -- the plan: which runs feed which table --------------------------------------------------


def fractions(n: int) -> list[tuple[str, int]]:
    """(label, Byzantine count) for f = 0, N/10, N/4, N/3; repeated counts (small N) once."""
    out, seen = [], set()
    for label, f in (("0", 0), ("N/10", n // 10), ("N/4", n // 4), ("N/3", n // 3)):
        if f not in seen:
            seen.add(f)
            out.append((label, f))
    return out


def make_plan(s: argparse.Namespace) -> dict:
    def clean(n, seed):
        return sim_config(n, s.rounds, seed, eval_every=s.eval_every)

    plan: dict = {"t1": {}, "robust": {}, "bandwidth": {}, "share": {}, "v1": {}}
    for n in s.sizes:
        plan["t1"][n] = [clean(n, seed) for seed in s.seeds]
    for attack in s.attacks:
        plan["robust"][attack] = {}
        for label, f in fractions(s.robust_n):
            plan["robust"][attack][label] = [
                clean(s.robust_n, seed)
                if f == 0
                else sim_config(
                    s.robust_n, s.rounds, seed, eval_every=s.rounds, byzantine=f, attack=attack
                )
                for seed in s.seeds
            ]
    for n in s.bandwidth_sizes:
        if n in plan["t1"]:
            plan["bandwidth"][n] = plan["t1"][n]
        else:
            r = s.bandwidth_rounds
            plan["bandwidth"][n] = [sim_config(n, r, s.seeds[0], eval_every=r)]
    for n in s.share_check_sizes:
        on = clean(n, s.seeds[0])
        off = dict(on, share=False)
        plan["share"][n] = {"on": on, "off": off}
    # Wire version 1 beside the default runs, for the bandwidth tables: the same N, rounds
    # and seeds (at most --v1-seeds), evaluated at the final round only (bytes do not
    # depend on evaluation, which draws no random numbers).
    for n, cfgs in plan["bandwidth"].items():
        seeds = [c["seed"] for c in cfgs if c["seed"] in s.v1_seeds]
        r = cfgs[0]["rounds"]
        plan["v1"][n] = [sim_config(n, r, seed, eval_every=r, wire_version=1) for seed in seeds]
    plan["v1"] = {n: cfgs for n, cfgs in plan["v1"].items() if cfgs}
    plan["feedback"], plan["sybil"] = feedback_plan(s), sybil_plan(s)
    return plan


def feedback_plan(s: argparse.Namespace) -> dict:
    """attack -> f label -> "off"/"on" -> one config per seed (FEEDBACK_ROUNDS rounds)."""
    r = min(s.rounds, FEEDBACK_ROUNDS)
    every = min(FEEDBACK_EVERY, r)
    out: dict = {}
    for attack in s.feedback_attacks:
        out[attack] = {}
        for label, f in fractions(s.robust_n):
            out[attack][label] = {
                mode: [
                    sim_config(
                        s.robust_n,
                        r,
                        seed,
                        eval_every=every,
                        byzantine=f,
                        attack=attack,
                        feedback=mode == "on",
                    )
                    for seed in s.seeds
                ]
                for mode in ("off", "on")
            }
    return out


def sybil_plan(s: argparse.Namespace) -> dict:
    """attack -> mode -> one config (f = N/10, first seed, FEEDBACK_ROUNDS rounds): open
    membership with SYBIL_IDENTITIES free keys per attacker, and registry mode where each
    attacker holds one bond (one key)."""
    r = min(s.rounds, FEEDBACK_ROUNDS)
    f = max(1, s.robust_n // 10)
    modes = {
        "open": {"sybils": "open", "sybil_identities": SYBIL_IDENTITIES},
        "registry": {"sybils": "registry"},
    }
    return {
        attack: {
            mode: sim_config(
                s.robust_n, r, s.seeds[0], eval_every=r, byzantine=f, attack=attack, **kw
            )
            for mode, kw in modes.items()
        }
        for attack in s.sybil_attacks
    }


def plan_configs(plan: dict) -> list[dict]:
    out = [c for runs in plan["t1"].values() for c in runs]
    out += [c for by_f in plan["robust"].values() for runs in by_f.values() for c in runs]
    out += [c for runs in plan["bandwidth"].values() for c in runs]
    out += [c for pair in plan["share"].values() for c in pair.values()]
    out += [c for runs in plan["v1"].values() for c in runs]
    out += [
        c
        for by_f in plan["feedback"].values()
        for modes in by_f.values()
        for runs in modes.values()
        for c in runs
    ]
    out += [c for modes in plan["sybil"].values() for c in modes.values()]
    return out


# -- figures ---------------------------------------------------------------------------------


def stat(values) -> dict | None:
    """Mean and sample std (ddof = 1) over seeds; None if nothing was measured."""
    vals = [float(v) for v in values if v is not None]
    if not vals:
        return None
    std = float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0
    return {"mean": float(np.mean(vals)), "std": std, "n": len(vals), "values": vals}


def network_figures(runs: list[dict], first_rounds: int) -> dict:
    """What a set of runs (seeds of one config) sent: bytes, batches, baseline blocks."""
    net = [r["network"] for r in runs]
    return {
        "rounds": runs[0]["config"]["rounds"],
        "seeds": len(runs),
        "wire_version": sorted({x.get("wire_version", 1) for x in net}),
        "gossip": stat(x["gossip_bytes_per_node_per_round"] for x in net),
        "gossip_first_rounds": stat(
            np.mean([p["gossip_bytes_per_node"] for p in r["per_round"][:first_rounds]])
            for r in runs
        ),
        "repair": stat(x["repair_bytes_per_node_per_round"] for x in net),
        "bytes_per_batch": stat(x["bytes_per_batch"] for x in net),
        "bytes_per_experience": stat(x["bytes_per_experience"] for x in net),
        "experiences_per_batch": stat(x["experiences_per_batch"] for x in net),
        "honest_batches": stat(x["honest_batches"] for x in net),
        "batches_per_round": stat(np.mean([p["batches"] for p in r["per_round"]]) for r in runs),
        "latency_p95_ms": stat(x["latency_p95_ms"] for x in net),
        "baseline_blocks_made": stat(x.get("baseline_blocks_made", 0) for x in net),
        "baseline_blocks_attached": stat(x.get("baseline_blocks_attached", 0) for x in net),
        "baseline_fetches": stat(x.get("baseline_fetches", 0) for x in net),
        "baseline_fetch_bytes": stat(
            x.get("baseline_fetch_bytes_per_node_per_round", 0.0) for x in net
        ),
    }


def rounds_to_target(result: dict, method: str, *, final: bool = False) -> int | None:
    """First evaluated round where `method`'s proxy reaches TARGET x the oracle's at the same
    round (rounds where the oracle has nothing yet do not count), or with `final`, TARGET x
    the oracle's final proxy: gossip delivers within a round, so the same-round target is met
    almost at once, and only the final target measures how fast the fleet accumulates."""
    goal = result["final"]["central"]["proxy"]
    for point in result["curves"]:
        central = goal if final else point["central"]["proxy"]
        if central > 0 and point[method]["proxy"] >= TARGET * central:
            return int(point["round"])
    return None


def final_metrics(result: dict) -> list[str]:
    names = ["proxy", "Q"]
    if "poisoned" in result["final"]["fai"]:
        names.append("poisoned")
    return names


def figures(s: argparse.Namespace, plan: dict, res: dict[str, dict], fp: str) -> dict:
    def get(cfg):
        return res[cache_key(cfg, fp)]

    fig: dict = {"t1": {}, "curves": {}, "t5": {}, "robust": {}, "bandwidth": {}, "share": {}}
    for n, cfgs in plan["t1"].items():
        runs = [get(c) for c in cfgs]
        row: dict = {}
        for m in METHODS:
            row[m] = {k: stat(r["final"][m][k] for r in runs) for k in final_metrics(runs[0])}
            row[m]["library"] = stat(r["final"][m]["library"] for r in runs)
            for k in ("proxy", "Q"):
                iso = [r["final"]["isolated"][k] for r in runs]
                mine = [r["final"][m][k] for r in runs]
                row[m][f"{k}_gain"] = stat(b - a for a, b in zip(iso, mine, strict=True))
                row[m][f"{k}_gain_pct"] = stat(
                    100 * (b / a - 1) if a else None for a, b in zip(iso, mine, strict=True)
                )
        row["honest_retention"] = stat(r["deltasoup"]["honest_retention"] for r in runs)
        fig["t1"][n] = row
        rounds = [p["round"] for p in runs[0]["curves"]]
        curve = {"round": rounds}
        for m in METHODS:
            for k in ("proxy", "Q"):
                arr = np.array([[p[m][k] for p in r["curves"]] for r in runs])
                curve[f"{m}_{k}_mean"] = arr.mean(axis=0).tolist()
                curve[f"{m}_{k}_std"] = (
                    arr.std(axis=0, ddof=1) if len(runs) > 1 else np.zeros(len(rounds))
                ).tolist()
        fig["curves"][n] = curve
        t5: dict = {"eval_every": runs[0]["config"]["eval_every"], "seeds": len(runs)}
        t5["rounds_final_central"] = [rounds_to_target(r, "central", final=True) for r in runs]
        for m in ("fai", "naive", "isolated"):
            t5[f"rounds_{m}"] = [rounds_to_target(r, m) for r in runs]
            t5[f"rounds_final_{m}"] = [rounds_to_target(r, m, final=True) for r in runs]
            for k in ("proxy", "Q"):
                t5[f"final_{k}_pct_{m}"] = stat(
                    100 * r["final"][m][k] / r["final"]["central"][k]
                    if r["final"]["central"][k]
                    else None
                    for r in runs
                )
        t5["gossip_kb"] = stat(r["network"]["gossip_bytes_per_node_per_round"] / KB for r in runs)
        t5["repair_kb"] = stat(r["network"]["repair_bytes_per_node_per_round"] / KB for r in runs)
        fig["t5"][n] = t5

    for attack, by_f in plan["robust"].items():
        rows = {}
        for label, cfgs in by_f.items():
            runs = [get(c) for c in cfgs]
            cell = {"f": cfgs[0]["byzantine"], "nodes": cfgs[0]["nodes"]}
            for m in METHODS:
                cell[m] = {k: stat(r["final"][m][k] for r in runs) for k in final_metrics(runs[0])}
            ds = [r["deltasoup"] for r in runs]
            cell["honest_retention"] = stat(d["honest_retention"] for d in ds)
            cell["byzantine_kept_share"] = stat(d["byzantine_kept_share"] for d in ds)
            cell["byzantine_rows_received"] = stat(d["byzantine_rows_received"] for d in ds)
            rows[label] = cell
        fig["robust"][attack] = rows

    for n, cfgs in plan["bandwidth"].items():
        fig["bandwidth"][n] = network_figures([get(c) for c in cfgs], s.bandwidth_rounds)
    # Wire version 1 beside the default runs (same N, rounds, seeds; maybe fewer seeds).
    fig["v1"] = {}
    for n, cfgs in plan["v1"].items():
        runs = [get(c) for c in cfgs]
        row = network_figures(runs, s.bandwidth_rounds)
        row["fai_proxy"] = stat(r["final"]["fai"]["proxy"] for r in runs)
        row["honest_retention"] = stat(r["deltasoup"]["honest_retention"] for r in runs)
        # The default-version runs of the same seeds, for a like-for-like comparison.
        seeds = {c["seed"] for c in cfgs}
        same = [get(c) for c in plan["bandwidth"][n] if c["seed"] in seeds]
        row["default_same_seeds"] = network_figures(same, s.bandwidth_rounds)
        row["default_same_seeds"]["fai_proxy"] = stat(r["final"]["fai"]["proxy"] for r in same)
        row["default_same_seeds"]["honest_retention"] = stat(
            r["deltasoup"]["honest_retention"] for r in same
        )
        fig["v1"][n] = row

    for n, pair in plan["share"].items():
        on, off = get(pair["on"]), get(pair["off"])
        row = {"cpu_on_s": on["meta"]["cpu_s"], "cpu_off_s": off["meta"]["cpu_s"]}
        for m in ("fai", "naive"):
            for k in ("proxy", "Q"):
                a, b = on["final"][m][k], off["final"][m][k]
                row[f"{m}_{k}"] = {"share": a, "exact": b, "diff": a - b}
        fig["share"][n] = row

    fig["feedback"] = feedback_figures(plan["feedback"], get)
    fig["sybil"] = {
        attack: {mode: sybil_cell(get(cfg)) for mode, cfg in modes.items()}
        for attack, modes in plan["sybil"].items()
    }
    fig["t3"] = table3(fig)
    fig["t4"] = table4()
    used = {cache_key(c, fp) for c in plan_configs(plan)}
    cpu = [res[k]["meta"]["cpu_s"] for k in used]
    fig["cpu"] = {"runs": len(cpu), "total_s": float(sum(cpu)), "max_s": float(max(cpu))}
    any_run = next(iter(res.values()))
    fig["settings"] = {
        "rounds": s.rounds,
        "sizes": s.sizes,
        "seeds": s.seeds,
        "robust_n": s.robust_n,
        "attacks": s.attacks,
        "bandwidth_sizes": s.bandwidth_sizes,
        "bandwidth_rounds": s.bandwidth_rounds,
        "share_check_sizes": s.share_check_sizes,
        "eval_every": s.eval_every,
        "v1_seeds": s.v1_seeds,
        "code": fp,
        "sim_defaults": {
            k: v
            for k, v in any_run["config"].items()
            if k not in ("nodes", "rounds", "seed", "byzantine", "attack", "eval_every", "share")
        },
    }
    return fig


def feedback_figures(plan: dict, get) -> dict:
    """Per attack, f label and feedback mode: rows kept, poisoned@3 (final and by round),
    and the retrieval proxy as a share of the same mode's f = 0 figure."""
    out: dict = {}
    for attack, by_f in plan.items():
        out[attack] = {}
        clean = {mode: [get(c) for c in cfgs] for mode, cfgs in by_f["0"].items()}
        for label, modes in by_f.items():
            out[attack][label] = {}
            for mode, cfgs in modes.items():
                runs = [get(c) for c in cfgs]
                base = clean[mode]
                cell = {
                    "f": cfgs[0]["byzantine"],
                    "nodes": cfgs[0]["nodes"],
                    "rounds": cfgs[0]["rounds"],
                    "honest_retention": stat(r["deltasoup"]["honest_retention"] for r in runs),
                    "byzantine_kept_share": stat(
                        r["deltasoup"]["byzantine_kept_share"] for r in runs
                    ),
                    "poisoned": stat(r["final"]["fai"]["poisoned"] for r in runs),
                    "naive_poisoned": stat(r["final"]["naive"]["poisoned"] for r in runs),
                    "proxy_pct": stat(
                        100 * r["final"]["fai"]["proxy"] / b["final"]["fai"]["proxy"]
                        for r, b in zip(runs, base, strict=True)
                    ),
                    # Against the oracle of the same run: every honest lesson, no attacker.
                    "proxy_oracle_pct": stat(
                        100 * r["final"]["fai"]["proxy"] / r["final"]["central"]["proxy"]
                        for r in runs
                    ),
                    "rows_in_library": stat(
                        r.get("adversary", {}).get("byzantine_rows_in_library") for r in runs
                    ),
                    "rows_offered": stat(
                        r.get("adversary", {}).get("byzantine_rows_recallable") for r in runs
                    ),
                    "curve_round": [p["round"] for p in runs[0]["curves"]],
                    "curve_poisoned": np.mean(
                        [[p["fai"]["poisoned"] for p in r["curves"]] for r in runs], axis=0
                    ).tolist(),
                    "curve_naive": np.mean(
                        [[p["naive"]["poisoned"] for p in r["curves"]] for r in runs], axis=0
                    ).tolist(),
                }
                if mode == "on" and cell["f"]:
                    fb = [r["adversary"]["feedback"] for r in runs]
                    cell["byzantine_rows_muted"] = stat(x["byzantine_rows_muted"] for x in fb)
                    cell["honest_rows_muted"] = stat(x["honest_rows_muted"] for x in fb)
                out[attack][label][mode] = cell
    return out


def sybil_cell(r: dict) -> dict:
    """One Sybil-comparison run: identities, rows kept, poisoned@3, proxy."""
    adv = r.get("adversary", {})
    return {
        "identities": adv.get("byzantine_identities"),
        "f": r["config"]["byzantine"],
        "honest_retention": r["deltasoup"]["honest_retention"],
        "byzantine_kept_share": r["deltasoup"]["byzantine_kept_share"],
        "poisoned": r["final"]["fai"]["poisoned"],
        "naive_poisoned": r["final"]["naive"]["poisoned"],
        "proxy": r["final"]["fai"]["proxy"],
    }


def table3(fig: dict) -> dict:
    """Bytes on the wire: the formulas at our d, real signed envelopes in both wire versions,
    and what the simulated fleet sent (the default runs and the version 1 runs)."""
    corpus = load_pattern_corpus()
    texts, vectors = shipped_embeddings("patterns")
    d = vectors.shape[1]
    g = bitdelta.DEFAULT_GROUP_SIZE
    groups = bitdelta.group_count(d, g)
    out: dict = {
        "dim": d,
        "group": g,
        "float32_bytes": d * 4,
        "sign_bytes": bitdelta.sign_bytes(d),
        "scale_bytes": groups * 4,
        "scale_bytes_f16": groups * 2,
        "envelopes": {},
        "sim": {},
    }
    by_domain: dict[str, list[int]] = defaultdict(list)
    for i, (domain, _) in enumerate(corpus):
        by_domain[domain].append(i)
    for m in ENVELOPE_SIZES:
        sizes: dict[str, list[int]] = defaultdict(list)
        text_bytes = []
        for domain, idx in sorted(by_domain.items()):
            pick = idx[:m]
            for version, size in envelope_sizes(texts, vectors, pick, domain).items():
                sizes[version].append(size)
            text_bytes.append(sum(len(texts[i].encode("utf-8")) for i in pick))
        row: dict = {
            "domains": len(text_bytes),
            "text_per_experience": stat(t / m for t in text_bytes),
        }
        for version, values in sizes.items():
            row[version] = {
                "total": stat(values),
                "per_experience": stat(x / m for x in values),
                "per_experience_without_text": stat(
                    (x - t) / m for x, t in zip(values, text_bytes, strict=True)
                ),
            }
        out["envelopes"][m] = row
    out["block_bytes"] = out["envelopes"][ENVELOPE_SIZES[0]]["block"]["total"]
    for n, b in fig["bandwidth"].items():
        out["sim"][n] = {"default": b, "v1": fig["v1"].get(n)}
    return out


def envelope_sizes(texts, vectors, pick: list[int], domain: str) -> dict[str, int]:
    """Bytes of one signed batch of corpus experiences `pick` (their shipped vectors, quality
    0.7), baseline = their mean: "v1" (`encode_batch`, float32 baseline inside), "v2"
    (`encode_batch_v2` naming a float16 block of the mean by CID), "v2_attached" (the same
    with the block attached) and "block" (the block alone)."""
    key = NodeKey(bytes(range(32)))
    common = {"key": key, "seq": 1, "timestamp_ms": simulator.START_MS}
    v1 = attacks.signed_batch(
        key,
        [texts[i] for i in pick],
        vectors[pick],
        domain=domain,
        quality=np.full(len(pick), 0.7),
        seq=1,
        timestamp_ms=simulator.START_MS,
        model=DEFAULT_MODEL,
    )
    emb = np.asarray(vectors[pick], dtype=np.float32)
    exps = [
        Experience(texts[i], emb[j], 0.7, domain, key.public_key, simulator.START_MS)
        for j, i in enumerate(pick)
    ]
    block = make_baseline_block(emb.mean(axis=0), DEFAULT_MODEL)
    v2 = wire.encode_batch_v2(exps, baseline=block, attach_baseline=False, **common)
    v2a = wire.encode_batch_v2(exps, baseline=block, attach_baseline=True, **common)
    assert v2.cid == v2a.cid  # the attached block lies outside the signed batch
    return {
        "v1": len(v1.envelope),
        "v2": len(v2.envelope),
        "v2_attached": len(v2a.envelope),
        "block": len(block.data),
    }


def _fidelity_module():
    path = Path(__file__).resolve().parent / "fidelity.py"
    spec = importlib.util.spec_from_file_location("_fai_bench_fidelity", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def table4() -> list[dict]:
    """bench/fidelity.py's measurement on the shipped vectors (no model needed)."""
    measure = _fidelity_module().measure
    _, vectors = shipped_embeddings("patterns")
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    d = vectors.shape[1]
    rows = []
    for g in (*FIDELITY_GROUPS, d):
        row = measure(vectors, g, "f32")
        payload = bitdelta.sign_bytes(d) + bitdelta.group_count(d, g) * 4
        row["signs_scales_bytes"] = payload
        row["compression"] = d * 4 / payload
        row["vectors"] = len(vectors)
        rows.append(row)
    return rows


# -- Markdown --------------------------------------------------------------------------------


def pm(x: dict | None, digits: int = 3, comma: bool = False) -> str:
    if x is None:
        return "–"
    spec = f"{',' if comma else ''}.{digits}f"
    if x["n"] > 1:
        return f"{x['mean']:{spec}} ± {x['std']:{spec}}"
    return f"{x['mean']:{spec}}"


def signed_pm(x: dict | None, digits: int = 3) -> str:
    if x is None:
        return "–"
    text = f"{x['mean']:+.{digits}f}"
    return text + (f" ± {x['std']:.{digits}f}" if x["n"] > 1 else "")


def rounds_cell(values: list[int | None]) -> str:
    hit = [v for v in values if v is not None]
    if not hit:
        return "never"
    text = pm(stat(hit), 1) if len(hit) > 1 else str(hit[0])
    if len(hit) < len(values):
        text += f" ({len(hit)}/{len(values)} seeds; never in the others)"
    return text


def paper(value, fmt: str = "{:.1f}") -> str:
    return "–" if value is None else fmt.format(value)


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return out


def ratio(a: dict | None, b: dict | None) -> float | None:
    """a's mean over b's, None if either is missing or b is 0."""
    if not a or not b or not b["mean"]:
        return None
    return a["mean"] / b["mean"]


def span(values: list[float], fmt: str = "{:,.0f}") -> str:
    """'a' or 'a-b' (min-max) of the given values, formatted."""
    lo, hi = fmt.format(min(values)), fmt.format(max(values))
    return lo if lo == hi else f"{lo}-{hi}"


def count_span(values: list[float]) -> str:
    """span() of counts averaged over seeds: whole numbers without decimals."""
    lo, hi = (f"{x:,.0f}" if x == round(x) else f"{x:,.1f}" for x in (min(values), max(values)))
    return lo if lo == hi else f"{lo}-{hi}"


def seeds_note(fig: dict) -> str:
    """How the version 1 runs differ from the default runs in seeds, if they do."""
    fewer = [n for n, v in fig["v1"].items() if v["seeds"] < fig["bandwidth"][n]["seeds"]]
    if not fewer:
        return ""
    return (
        " (version 1 with fewer seeds than the default runs at N = "
        + ", ".join(map(str, fewer))
        + "; ratios compare the same seeds)"
    )


def table3_markdown(fig: dict) -> list[str]:
    t3 = fig["t3"]
    dv = fig["settings"]["sim_defaults"].get("wire_version", 1)
    d, g = t3["dim"], t3["group"]
    f32 = t3["float32_bytes"]
    payload = t3["sign_bytes"] + t3["scale_bytes"]
    payload16 = t3["sign_bytes"] + t3["scale_bytes_f16"]
    env = t3["envelopes"]
    e100 = env.get(100)
    block = t3["block_bytes"]
    rows = [
        [
            "Float32 embedding",
            f"d = 768: {PAPER_T3[0][1]:,}",
            f"{PAPER_T3[0][2]:,}",
            PAPER_T3[0][3],
            f"d = {d}: {f32:,}",
            f"{100 * f32:,}",
            "1x",
        ],
        [
            f"BitDelta (g = {g}): signs + f32 scales (wire v1)",
            f"{PAPER_T3[1][1]:,}",
            f"{PAPER_T3[1][2]:,}",
            PAPER_T3[1][3],
            f"{t3['sign_bytes']} + {t3['scale_bytes']} = {payload}",
            f"{100 * payload:,}",
            f"{f32 / payload:.1f}x",
        ],
        [
            f"BitDelta (g = {g}): signs + f16 scales (wire v2)",
            "–",
            "–",
            "–",
            f"{t3['sign_bytes']} + {t3['scale_bytes_f16']} = {payload16}",
            f"{100 * payload16:,}",
            f"{f32 / payload16:.1f}x",
        ],
    ]
    if e100:
        for version, name, claims in (
            ("v1", "wire v1 (float32 baseline inside)", PAPER_T3[2][1:]),
            ("v2", "wire v2 (baseline block by CID)", ("–", "–", "–")),
            ("v2_attached", "wire v2, baseline block attached", ("–", "–", "–")),
        ):
            e = e100[version]
            rows.append(
                [
                    f"BitDelta + metadata: real signed envelope, M = 100, {name}",
                    *(f"{c:,}" if isinstance(c, int) else c for c in claims),
                    pm(e["per_experience"], 1, True),
                    pm(e["total"], 0, True),
                    f"{f32 / e['per_experience']['mean']:.1f}x",
                ]
            )
    L = [
        "## Table 3: bytes per experience and per batch",
        "",
        "Paper: d = 768 ([docs/design.md#d6](design.md#d6): its 288 bytes are not what its "
        "own format gives). Measured: d = "
        f"{d} (all-MiniLM-L6-v2, the model FAI ships), in both wire versions: version 1 "
        "(`wire.encode_batch`: float32 scales, the float32 baseline inside every batch) and "
        "version 2 (`wire.encode_batch_v2`: float16 scales, the batch names its baseline "
        f"block by CID; the block, {span(block['values'])} bytes of float16 values, travels "
        "attached to a sender's first batch per topic after it changes, or is fetched over "
        "repair). The envelope rows are real corpus experiences with their shipped vectors "
        "(one domain per batch, the first M patterns of each domain, baseline = their mean: "
        "in v2 a float16 block of it, `make_baseline_block`), signed; mean ± std over the "
        f"{e100['domains'] if e100 else '?'} domains. Compression is against d x 4 bytes "
        "of float32 per experience, texts included in the envelope rows.",
        "",
        *table(
            [
                "representation",
                "paper bytes/exp",
                "paper total (M=100)",
                "paper compression",
                "measured bytes/exp",
                "measured total (M=100)",
                "measured compression",
            ],
            rows,
        ),
        "",
        "Real signed envelopes by batch size, version 1 beside version 2 (the same "
        "experiences; per experience = total / M; text = UTF-8 bytes of the pattern texts). "
        "The common v2 envelope names its block; the one with the block attached is what a "
        "sender publishes once per topic after making a new block:",
        "",
    ]
    rows = []
    for m, e in env.items():
        rows.append(
            [
                str(m),
                pm(e["text_per_experience"], 1),
                pm(e["v1"]["total"], 0, True),
                pm(e["v1"]["per_experience"], 1, True),
                pm(e["v1"]["per_experience_without_text"], 1, True),
                pm(e["v2"]["total"], 0, True),
                pm(e["v2"]["per_experience"], 1, True),
                pm(e["v2"]["per_experience_without_text"], 1, True),
                pm(e["v2_attached"]["total"], 0, True),
                pm(e["v2_attached"]["per_experience"], 1, True),
            ]
        )
    L += table(
        [
            "M",
            "text per experience",
            "v1 envelope bytes",
            "v1 per experience",
            "v1 per experience without text",
            "v2 envelope bytes",
            "v2 per experience",
            "v2 per experience without text",
            "v2 with block attached: envelope bytes",
            "v2 with block: per experience",
        ],
        rows,
    )
    sim = t3["sim"]
    L += [
        "",
        f"What the simulated fleet actually sent: honest batches of the default (wire v{dv}) "
        "runs of the bandwidth table below (the Table 1 runs where N is in the grid) and of "
        "runs identical but for `wire_version=1`; baseline blocks are counted per run "
        "(made: distinct blocks published; attached: batches that carried one; fetched: "
        "blocks receivers fetched over repair because the batch they got did not carry it, "
        "bytes counted as repair, not in bytes per batch):",
        "",
    ]
    rows = []
    for n, x in sorted(sim.items()):
        v2, v1 = x["default"], x["v1"]
        cmp = v1["default_same_seeds"] if v1 else None
        r = ratio(v1["bytes_per_experience"], cmp["bytes_per_experience"]) if v1 else None
        rows.append(
            [
                str(n),
                f"{v2['rounds']} x {v2['seeds']}"
                + (f" / {v1['rounds']} x {v1['seeds']}" if v1 else " / –"),
                pm(v1["experiences_per_batch"], 2) if v1 else "–",
                pm(v2["experiences_per_batch"], 2),
                pm(v1["bytes_per_batch"], 0, True) if v1 else "–",
                pm(v2["bytes_per_batch"], 0, True),
                pm(v1["bytes_per_experience"], 0, True) if v1 else "–",
                pm(v2["bytes_per_experience"], 0, True),
                f"{r:.2f}x" if r else "–",
                pm(v2["honest_batches"], 0, True),
                pm(v2["baseline_blocks_made"], 1, True),
                pm(v2["baseline_blocks_attached"], 1, True),
                pm(v2["baseline_fetches"], 1, True),
                pm(v2["baseline_fetch_bytes"], 1),
            ]
        )
    L += table(
        [
            "N",
            f"rounds x seeds v{dv} / v1",
            "experiences per batch v1",
            f"experiences per batch v{dv}",
            "bytes per batch v1",
            f"bytes per batch v{dv}",
            "bytes per experience v1",
            f"bytes per experience v{dv}",
            f"v1 / v{dv} bytes per experience",
            f"honest batches v{dv}",
            "baseline blocks made",
            "blocks attached",
            "blocks fetched",
            "block fetch B/node/round",
        ],
        rows,
    )
    L += ["", *sim_bytes_paragraph(fig, dv), ""]
    return L


def poisoning_markdown(fig: dict, img_rel: str) -> list[str]:
    """The poisoning-defence section: each plausible attack with and without outcome
    feedback, the poisoned@3 curve, and the Sybil comparison."""
    fb, syb = fig.get("feedback", {}), fig.get("sybil", {})
    if not fb and not syb:
        return []
    L = [
        "## Poisoning defence: outcome feedback and Sybils",
        "",
        "Plausible attacks send texts whose embeddings are their own, so no embedding-space "
        "check can see them; only their inflated quality claims (sender histories, "
        "docs/deltasoup.md) and what using them does tell them apart. Recall does not "
        "offer a row once every sender that published it stands refused (docs/recall.md, "
        '"Rows of refused sources"), so poisoned@3 and the proxy measure what recall '
        "offers, and the attack rows per library are given twice: held, and offered. "
        "With feedback on, "
        "every honest agent recalls experiences for its tasks (ranked by utility and "
        "source standing) and reports each outcome from the lesson's hidden value plus "
        "noise (std 0.3); sources that keep hurting are muted (fai_eval/sim/feedback.py). "
        f"Poisoned@{simulator.POISON_TOP_K}: share of held-out tasks with a non-genuine row "
        f"among the top {simulator.POISON_TOP_K}; proxy: FAI's final retrieval proxy as a "
        "share of the same mode's f = 0 run. Mean ± std over seeds.",
        "",
    ]
    header = [
        "attack", "f", "feedback", "Byzantine rows kept", "honest retention",
        f"FAI poisoned@{simulator.POISON_TOP_K}", f"naive poisoned@{simulator.POISON_TOP_K}",
        "FAI proxy % of f=0", "FAI proxy % of oracle", "attack rows per library (offered)",
        "attack rows muted",
    ]  # fmt: skip
    rows = []
    for attack, by_f in fb.items():
        for label, modes in by_f.items():
            for mode, c in modes.items():
                if not c["f"]:
                    continue
                muted = c.get("byzantine_rows_muted")
                rows.append(
                    [
                        f"`{attack}`", f"{label} ({c['f']})", mode,
                        pct_pm(c["byzantine_kept_share"]), pct_pm(c["honest_retention"]),
                        pm(c["poisoned"], 3), pm(c["naive_poisoned"], 3),
                        pct_pm(c["proxy_pct"], 1), pct_pm(c.get("proxy_oracle_pct"), 1),
                        _held_offered(c), pm(muted, 0, comma=True) if muted else "–",
                    ]
                )  # fmt: skip
    if rows:
        first = next(iter(next(iter(fb.values())).values()))["off"]
        L += [
            f"**Outcome feedback** (N = {first['nodes']}, {first['rounds']} rounds)",
            "",
            *table(header, rows),
            "",
            *poison_target_lines(fb),
            f"![poisoning]({img_rel}/poisoning.png)",
            "",
        ]
    if syb:
        L += sybil_markdown(syb)
    return L


def _held_offered(cell: dict) -> str:
    """Attack rows per measured library, "held (offered)", means over seeds."""
    held, offered = cell.get("rows_in_library"), cell.get("rows_offered")
    if held is None:
        return "–"
    return f"{held['mean']:.1f} ({offered['mean']:.1f})" if offered else f"{held['mean']:.1f}"


def poison_target_lines(fb: dict) -> list[str]:
    """Whether FAI's poisoned@3, averaged over seeds, stays at or under the target from
    some evaluated round on, per attack at the largest f, with and without feedback."""
    out = []
    target = simulator.POISON_TARGET
    for attack, by_f in fb.items():
        label = list(by_f)[-1]
        for mode, c in by_f[label].items():
            curve = list(zip(c["curve_round"], c["curve_poisoned"], strict=True))
            within = next(
                (r for i, (r, _) in enumerate(curve) if all(p <= target for _, p in curve[i:])),
                None,
            )
            said = (
                f"at or under {100 * target:.0f}% from round {within} on"
                if within is not None
                else f"never at or under {100 * target:.0f}% to the end"
            )
            out.append(
                f"- `{attack}` f={label} ({c['f']}), feedback {mode}: mean poisoned@"
                f"{simulator.POISON_TOP_K} {said} (final {100 * c['poisoned']['mean']:.1f}%)."
            )
    return [*out, ""] if out else []


def pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}%"


def sybil_markdown(syb: dict) -> list[str]:
    """The Sybil comparison: free keys (open membership) against one bonded key each."""
    header = [
        "attack", "membership", "attacker identities", "Byzantine rows kept",
        "honest retention", f"FAI poisoned@{simulator.POISON_TOP_K}", "FAI proxy",
    ]  # fmt: skip
    rows = []
    for attack, modes in syb.items():
        for mode, c in modes.items():
            what = (
                f"open, {SYBIL_IDENTITIES} free keys per attacker"
                if mode == "open"
                else "registry, one bond per attacker"
            )
            rows.append(
                [
                    f"`{attack}`", what, str(c["identities"]), pct(c["byzantine_kept_share"]),
                    pct(c["honest_retention"]), f"{c['poisoned']:.3f}", f"{c['proxy']:.3f}",
                ]
            )  # fmt: skip
    c0 = next(iter(next(iter(syb.values())).values()))
    return [
        f"**Sybils** ({c0['f']} attacking nodes, one seed): in open membership identities are "
        "free, and each is a vote in the sender histories' medians; in registry mode each "
        "costs a bond (`MIN_BOND_TOKENS` in the simulator, the registry's minimum bond), so "
        "an attacker with one bond runs one key. The same attacker buying "
        f"{SYBIL_IDENTITIES} bonds gets the open row, at {SYBIL_IDENTITIES}x the stake, all "
        "of it slashable.",
        "",
        *table(header, rows),
        "",
    ]


def sim_bytes_paragraph(fig: dict, dv: int) -> list[str]:
    """The reading of the simulated bytes, every figure computed from the runs."""
    t3 = fig["t3"]
    sim = t3["sim"]
    if not sim:
        return []
    f32 = t3["float32_bytes"]
    sizes = sorted(sim)
    cur = [sim[n]["default"] for n in sizes]

    def means(rows, key, scale=1.0):
        return [scale * x[key]["mean"] for x in rows]

    bpe = means(cur, "bytes_per_experience")
    text = (
        f"In wire v{dv} (the default runs, N = {', '.join(map(str, sizes))}) a simulated "
        f"experience cost {span(bpe)} bytes on the wire, "
        f"{span([b / f32 for b in bpe], '{:.2f}')}x its raw float32 embedding ({f32:,} B), at "
        f"{span(means(cur, 'experiences_per_batch'), '{:.2f}')} experiences per batch and "
        f"{span(means(cur, 'bytes_per_batch'))} bytes per batch."
    )
    at = [n for n in sizes if sim[n]["v1"]]
    v1 = [sim[n]["v1"] for n in at]
    same = [x["default_same_seeds"] for x in v1]  # default runs of the v1 runs' seeds
    if v1:
        v1_bpe = means(v1, "bytes_per_experience")
        ratios = [
            ratio(a["bytes_per_experience"], b["bytes_per_experience"])
            for a, b in zip(v1, same, strict=True)
        ]
        share = [100 * f32 / b for b in means(v1, "bytes_per_batch")]
        diff = [
            b["fai_proxy"]["mean"] - a["fai_proxy"]["mean"] for a, b in zip(v1, same, strict=True)
        ]
        text += (
            f" The same runs in wire v1 (N = {', '.join(map(str, at))}{seeds_note(fig)}) cost "
            f"{span(v1_bpe)} bytes per experience, {span([b / f32 for b in v1_bpe], '{:.2f}')}x "
            f"float32, the float32 baseline in every batch being {span(share, '{:.0f}')}% of a "
            f"v1 batch: v{dv} sends {span(ratios, '{:.1f}')}x fewer bytes per experience. "
            f"FAI's final retrieval proxy, v{dv} minus v1 on the same seeds: "
            + (
                "0.0000 at every N"
                if all(abs(x) < 5e-5 for x in diff)
                else ", ".join(f"{x:+.4f} (N = {n})" for x, n in zip(diff, at, strict=True))
            )
            + "; DeltaSoup kept "
            f"{span(means(v1, 'honest_retention', 100), '{:.2f}')}% of the honest rows it "
            f"received in v1, {span(means(same, 'honest_retention', 100), '{:.2f}')}% in v{dv}."
        )
    made = means(cur, "baseline_blocks_made")
    attached = means(cur, "baseline_blocks_attached")
    batches = means(cur, "honest_batches")
    fetch_b = means(cur, "baseline_fetch_bytes")
    repair = means(cur, "repair")
    if any(made) or any(attached):
        att_pct = [100 * a / b for a, b in zip(attached, batches, strict=True) if b]
        rep_pct = [100 * f / r for f, r in zip(fetch_b, repair, strict=True) if r]
        fetches = means(cur, "baseline_fetches")
        text += (
            f" Baseline blocks: {count_span(made)} made per run, attached to "
            f"{span(att_pct, '{:.1f}')}% of honest batches; "
            + (
                f"receivers fetched {count_span(fetches)} blocks per run over repair, "
                f"{span(fetch_b, '{:,.1f}')} B per node per round"
                + (f", {span(rep_pct, '{:.0f}')}% of repair traffic." if rep_pct else ".")
                if any(fetches)
                else "no receiver fetched a block over repair in any run (0 bytes): each "
                "block reached them attached."
            )
        )
    e1 = t3["envelopes"].get(1)
    if e1:
        text += (
            f" What remains is per-batch framing: a one-experience v2 envelope is "
            f"{e1['v2']['total']['mean']:,.0f} bytes without its block, "
            f"{e1['text_per_experience']['mean']:,.0f} of them text (v1: "
            f"{e1['v1']['total']['mean']:,.0f})."
        )
    return [text]


def gossip_sentence(fig: dict, dv: int) -> str:
    """Per-node gossip of the default runs against the version 1 runs, from the figures."""
    both = [(n, b, fig["v1"][n]) for n, b in sorted(fig["bandwidth"].items()) if n in fig["v1"]]
    if dv == 1 or not both:
        return ""
    same = [o["default_same_seeds"] for _, _, o in both]
    share = [100 * ratio(a["gossip"], o["gossip"]) for a, (_, _, o) in zip(same, both, strict=True)]
    first = [b["gossip_first_rounds"]["mean"] / KB for _, b, _ in both]
    return (
        f" In wire v{dv} a node pushes {span(share, '{:.0f}')}% of the gossip bytes it pushes "
        f"in v1 (same N and seeds, all rounds); it still grows with N: "
        f"{', '.join(f'{x:,.1f}' for x in first)} KB per node per round over the first "
        f"{fig['settings']['bandwidth_rounds']} rounds at N = "
        f"{', '.join(str(n) for n, _, _ in both)}."
    )


def wire_sentence(sim: dict) -> str:
    """How the simulated honest nodes encode their batches, from the runs' config."""
    if sim.get("wire_version", 1) == 1:
        return (
            "every batch is encoded by `wire.encode_batch` (wire version 1: BitDelta g = 128 "
            "against the sender's library mean, sent as float32 in every batch, DAG-CBOR, "
            "CID, Ed25519 signature) and"
        )
    return (
        f"every honest batch is encoded by `wire.encode_batch_v{sim['wire_version']}` (wire "
        f"version {sim['wire_version']}: BitDelta g = 128 with float16 scales against a "
        "baseline block named by CID: the fleet's reference block, which every node derives, "
        f"until the sender's library holds {baseline_block.MIN_LIBRARY_ROWS} rows; from "
        "then on a float16 block of its library mean whenever that mean is more than "
        f"{sim['baseline_drift']:g} (L2) from the block in use, the reference included, "
        "attached to the sender's first batch per topic "
        "after each change, fetched over repair by a node that missed it; DAG-CBOR, CID, "
        "Ed25519 signature; Byzantine batches are version 1, which nodes also read) and"
    )


def markdown(fig: dict, s: argparse.Namespace, notes: str | None, img_rel: str) -> str:
    st = fig["settings"]
    sim = st["sim_defaults"]
    corpus = load_pattern_corpus()
    n_domains = len({d for d, _ in corpus})
    sizes = list(fig["t1"])
    L: list[str] = [
        "<!-- generated by bench/evaluate.py: do not edit by hand except the Notes section; "
        "regenerate with the command under Regenerate -->",
        "",
        "# Evaluation: the paper's section 9 on the fleet simulator",
        "",
        "What is simulated: the network (one gossip mesh per domain topic with mean degree "
        f"{sim['fanout']}, per-hop latency U({sim['latency_ms'][0]:g}, "
        f"{sim['latency_ms'][1]:g}) ms, {100 * sim['loss']:g}% loss per hop, node failures "
        f"with probability {sim['fail_prob']:g} per node per round lasting "
        f"{sim['mean_down_rounds']:g} rounds on average, repair of missed batches on the next "
        f"round), the workload ({len(corpus):,} real pattern sentences over {n_domains} "
        "domains with the shipped all-MiniLM-L6-v2 vectors; each pattern has a hidden "
        "usefulness ~ Beta(4, 3); per node 1 or 2 domains, tasks drawn Zipf(s = "
        f"{workload.ZIPF_S:g}) over the domain's patterns at {workload.TASK_RATE[0]:g}-"
        f"{workload.TASK_RATE[1]:g} tasks per {sim['round_s']} s round, of which "
        f"{100 * workload.EXTRACT_PROB[0]:g}-{100 * workload.EXTRACT_PROB[1]:g}% end in an "
        "extracted experience scored with noise "
        f"{workload.QUALITY_NOISE[0]:g}-{workload.QUALITY_NOISE[1]:g}) and the adversary "
        f"({adversary.ROWS} rows per batch, {adversary.ROWS * adversary.FLOOD_FACTOR} when "
        "flooding, one batch per Byzantine node per domain per round). What is real code: "
        + wire_sentence(sim)
        + " verified by `wire.decode_envelope`; receivers run `DeltaSoup.aggregate` with its "
        "reputation book and merge with the library's record order. See "
        "fai_eval/sim/simulator.py.",
        "",
        "Four methods run on the same workload and network in each run: isolated (a node "
        "keeps what it extracted), the central oracle (the union of every honest experience, "
        "true embeddings, no delay), naive averaging (every verified row merged, per "
        "experience id the plain mean of received reconstructions: the paper's \"FAI, no "
        'DeltaSoup") and FAI (DeltaSoup, then the library merge).',
        "",
        "Two measures, neither of them SWE-bench. **Retrieval proxy**: per honest node, the "
        "mean over its held-out tasks of the true usefulness of the top-1 experience its "
        "library returns for the task (searched within the task's domain), counted only if "
        "that experience is a genuine pattern of the task's domain"
        + (
            f" whose stored embedding still points at its text (cos >= {simulator.GENUINE_COS:g})"
            if hasattr(simulator, "GENUINE_COS")
            else ""
        )
        + f" and its true embedding has cosine >= {sim['hit_cos']:g} with the task; else 0. "
        "It measures what sharing can change, whether a useful lesson is found for a task, "
        "not whether an agent then solves it: no agent runs, so the paper's resolved rates "
        "cannot be reproduced, and the paper's numbers are shown beside ours only to compare "
        "shapes. **Q** is the paper's Definition 8 fleet quality (mean over nodes of the "
        "library's mean of quality x cosine to the node's recent task mean). Being a mean "
        "over the library, Q falls when a library gains an experience whose quality x "
        "cosine is below the library's current mean, however useful, so Q can rank a "
        "larger library below a smaller one.",
        "",
        f"Grid: N in {{{', '.join(map(str, sizes))}}}, {st['rounds']} rounds of "
        f"{sim['round_s']} s, seeds {', '.join(map(str, st['seeds']))}; figures are mean ± "
        "std over seeds (sample std, ddof = 1) at the final round unless said otherwise.",
        "",
    ]
    if fig["share"]:
        L += [
            "**Shared receivers.** Nodes subscribed to the same domains that received the same "
            "batches share one DeltaSoup execution (`share=True`); the approximation is that a "
            "node's own batch is part of its receive round. The exact per-node mode "
            "(`share=False`) was run beside it (seed "
            f"{st['seeds'][0]}, final round); share minus exact:",
            "",
        ]
        rows = []
        for n, r in fig["share"].items():
            rows.append(
                [
                    str(n),
                    f"{r['fai_proxy']['share']:.4f} / {r['fai_proxy']['exact']:.4f}",
                    f"{r['fai_proxy']['diff']:+.4f}",
                    f"{r['fai_Q']['share']:.4f} / {r['fai_Q']['exact']:.4f}",
                    f"{r['fai_Q']['diff']:+.4f}",
                    f"{r['naive_proxy']['diff']:+.4f}",
                    f"{r['naive_Q']['diff']:+.4f}",
                    f"{r['cpu_on_s']:.1f} / {r['cpu_off_s']:.1f}",
                ]
            )
        L += table(
            [
                "N",
                "FAI proxy share / exact",
                "diff",
                "FAI Q share / exact",
                "diff",
                "naive proxy diff",
                "naive Q diff",
                "CPU s share / exact",
            ],
            rows,
        )
        L.append("")
    L += ["## Notes", "", notes.strip() if notes else NOTES_PLACEHOLDER, ""]

    # Table 1
    L += [
        "## Table 1: sharing by method and fleet size (no Byzantine nodes)",
        "",
        "Paper: SWE-bench resolved rate in %. Measured: retrieval proxy (0-1) and Q at round "
        f"{st['rounds']}. Improvement: the method minus isolated, per seed, at the N where "
        "it is largest (relative in parentheses).",
        "",
    ]
    for k, digits, title in (("proxy", 3, "retrieval proxy"), ("Q", 4, "fleet quality Q")):
        header = ["method"]
        for n in sizes:
            header += [f"paper N={n}", f"{title} N={n}"]
        header += ["paper improvement", "measured improvement"]
        rows = []
        for m in METHODS:
            claims, gain = PAPER_T1[m]
            row = [LABEL[m]]
            for n in sizes:
                row += [paper(claims.get(n)), pm(fig["t1"][n][m][k], digits)]
            row.append(gain or "–")
            if m == "isolated":
                row.append("–")
            else:
                best = max(sizes, key=lambda n, m=m: fig["t1"][n][m][f"{k}_gain"]["mean"])
                g = fig["t1"][best][m]
                pct = g[f"{k}_gain_pct"]
                row.append(
                    f"{signed_pm(g[f'{k}_gain'], digits)} at N={best}"
                    + (f" ({pct['mean']:+.0f}%)" if pct else "")
                )
            rows.append(row)
        L += [f"**{title}**", "", *table(header, rows), ""]
    lib = ", ".join(
        f"N={n}: isolated {fig['t1'][n]['isolated']['library']['mean']:.1f}, FAI "
        f"{fig['t1'][n]['fai']['library']['mean']:.1f}"
        for n in sizes
    )
    L += [
        f"Mean library size per node at the final round: {lib}. DeltaSoup kept "
        + ", ".join(f"{100 * fig['t1'][n]['honest_retention']['mean']:.2f}%" for n in sizes)
        + " of the honest rows it received (N = "
        + ", ".join(map(str, sizes))
        + ").",
        "",
    ]

    # Table 2
    rn = s.robust_n
    rob = fig["robust"]
    attacks_run = list(rob)
    labels = list(next(iter(rob.values()))) if attacks_run else []
    L += [
        f"## Table 2: Byzantine robustness at N = {rn}",
        "",
        "Paper: SWE-bench % under random signs with scales U(0, 1) (our `random_signs`), its "
        "only attack. Measured: final-round figures over the honest nodes for every attack; "
        f"f = 0 is the Table 1 run. N stays {rn}, so f Byzantine nodes replace f honest ones: "
        "the honest nodes measured, and the oracle's union, differ between columns, so "
        "compare methods within a column. Attacks: "
        + "; ".join(f"`{a}`: {adversary.ATTACKS[a]}" for a in attacks_run)
        + ".",
        "",
    ]
    metrics = [("proxy", 3, "retrieval proxy"), ("Q", 4, "fleet quality Q")]
    if attacks_run and "poisoned" in rob[attacks_run[0]][labels[0]]["fai"]:
        metrics.append(("poisoned", 3, "poisoned retrieval rate"))
    f_head = [
        f"f={lab} ({rob[attacks_run[0]][lab]['f']})" if lab != "0" else "f=0" for lab in labels
    ]
    for k, digits, title in metrics:
        header = ["attack", "method", *f_head, f"f={labels[-1]} as % of f=0"]
        rows = []
        if k in ("proxy", "Q"):
            for m in ("naive", "fai"):
                rows.append(
                    ["**paper** (SWE-bench %)", LABEL[m]]
                    + [paper(PAPER_T2[m].get(lab)) for lab in labels]
                    + [paper(PAPER_T2_CLEAN_SHARE[m], "{:.1f}%")]
                )
        plan_rows = []
        for m in ("isolated", "central"):
            # These two never see a Byzantine row: one row serves every attack if they agree.
            same = all(
                rob[a][lab][m][k] == rob[attacks_run[0]][lab][m][k] for a in rob for lab in labels
            )
            plan_rows += (
                [("every attack", attacks_run[0], m)] if same else [(f"`{a}`", a, m) for a in rob]
            )
        plan_rows += [(f"`{a}`", a, m) for a in attacks_run for m in ("naive", "fai")]
        for name, a, m in plan_rows:
            cells = [pm(rob[a][lab][m][k], digits) for lab in labels]
            first, last = rob[a][labels[0]][m][k], rob[a][labels[-1]][m][k]
            share = (
                f"{100 * last['mean'] / first['mean']:.1f}%"
                if first and last and first["mean"] and k != "poisoned"
                else "–"
            )
            rows.append([name, LABEL[m], *cells, share])
        L += [f"**{title}**", "", *table(header, rows), ""]
        if k == "poisoned":
            L += [
                "Share of a node's held-out tasks for which a non-genuine row is among the "
                f"top {getattr(simulator, 'POISON_TOP_K', '?')} retrieved (lower is better).",
                "",
            ]
        above = [
            f"`{a}` f={lab}"
            for a in attacks_run
            for lab in labels
            if k != "poisoned"
            and rob[a][lab]["fai"][k]["mean"] > 1.01 * rob[a][lab]["central"][k]["mean"]
        ]
        if above:
            L += [
                f"FAI's mean {title} exceeds the central oracle's by over 1% in: "
                f"{', '.join(above)}. The "
                "oracle holds honest experiences only. Most attacks send real patterns of the "
                "tagged domain (with forged embeddings, scales or qualities), and FAI stores its "
                "own embedding of every text it keeps, so any attack row that gets through adds "
                "a genuine lesson: for those attacks the retrieval proxy cannot show a filter "
                "failure, and the DeltaSoup table below (Byzantine rows kept) is the evidence.",
                "",
            ]
    header = ["attack"]
    for lab in labels:
        f = fig["robust"][attacks_run[0]][lab]["f"] if attacks_run else 0
        if f:
            header += [f"Byzantine rows kept f={lab} ({f})", f"honest retention f={lab}"]
        else:
            header += ["honest retention f=0"]
    rows = []
    for a in attacks_run:
        row = [f"`{a}`"]
        for lab in labels:
            cell = fig["robust"][a][lab]
            if cell["f"]:
                row.append(pct_pm(cell["byzantine_kept_share"]))
            row.append(pct_pm(cell["honest_retention"]))
        rows.append(row)
    L += [
        "**DeltaSoup**: share of the Byzantine rows received that survived into the merge, and "
        "share of the honest rows received that were kept (counted per receiving node). The "
        "paper gives no such figure (Theorem 4 only bounds the probability).",
        "",
        *table(header, rows),
        "",
    ]

    L += poisoning_markdown(fig, img_rel)

    # Table 3
    L += table3_markdown(fig)

    # Table 4
    d = fig["t3"]["dim"]
    rows = []
    for r in fig["t4"]:
        p = PAPER_T4.get(r["group"])
        rows.append(
            [
                str(r["group"]),
                paper(p[0] if p else None, "{:.3f}"),
                paper(p[1] if p else None, "{:.3f}"),
                p[2] if p else "–",
                f"{r['cos_mean']:.4f}",
                f"{r['cos_min']:.4f}",
                f"{r['recall_at_10']:.3f}",
                f"{r['signs_scales_bytes']:,}",
                f"{r['compression']:.2f}x",
            ]
        )
    g1 = next((r for r in fig["t4"] if r["group"] == 1), None)
    n_vec = fig["t4"][0]["vectors"]
    L += [
        "## Table 4: BitDelta fidelity by group size",
        "",
        "Paper: 1,000 experiences of an unnamed sentence encoder. Measured: "
        f"`bench/fidelity.py`'s `measure` on the {n_vec:,} shipped corpus vectors (d = {d}), "
        "float32 scales, baseline = corpus mean; recall@10 = share of each vector's 10 true "
        "nearest neighbours still among its 10 nearest after compression. Compression = d x 4 "
        "/ (sign bytes + scale bytes).",
        "",
        *table(
            [
                "g",
                "paper mean cos",
                "paper min cos",
                "paper compression",
                "mean cos",
                "min cos",
                "recall@10",
                "signs + scales bytes",
                "compression",
            ],
            rows,
        ),
        "",
        "g = 1 gives every coordinate its own scale, so reconstruction is exact and costs more "
        "than float32 ([docs/design.md#d8](design.md#d8))"
        + (
            f": measured mean cos {g1['cos_mean']:.6f}, compression {g1['compression']:.2f}x"
            if g1
            else ""
        )
        + ". For g >= 16 cosine hardly depends on g: it is bounded by how far the vectors sit "
        "from their mean ([docs/design.md#d9](design.md#d9)), not by the number of scales.",
        "",
    ]

    # Table 5
    ev = fig["t5"][sizes[0]]["eval_every"] if sizes else s.eval_every
    pct = f"{100 * TARGET:.0f}%"
    rows = []
    for n in sizes:
        t5 = fig["t5"][n]
        p = PAPER_T5.get(n)
        rows.append(
            [
                str(n),
                paper(p[0] if p else None, "{}"),
                rounds_cell(t5["rounds_fai"]),
                rounds_cell(t5["rounds_naive"]),
                rounds_cell(t5["rounds_isolated"]),
                rounds_cell(t5["rounds_final_fai"]),
                rounds_cell(t5["rounds_final_naive"]),
                rounds_cell(t5["rounds_final_isolated"]),
                rounds_cell(t5["rounds_final_central"]),
            ]
        )
    L += [
        "## Table 5: convergence and bandwidth",
        "",
        f"Rounds to {pct}, same round: the first evaluated round (every {ev} round"
        f"{'s' if ev != 1 else ''}) at which the method's retrieval proxy reaches {pct} of the "
        "central oracle's at that same round. The simulator delivers every batch in the "
        "round it was published (latency only shapes the delivery percentiles; a DeltaSoup "
        "round runs at the end of each 60 s round), so this target is met at once by "
        "construction; the second set of columns is therefore "
        f"the first round at which the method reaches {pct} of the oracle's *final* (round "
        f"{st['rounds']}) proxy, the oracle itself included: how fast a fleet accumulates "
        "what there is to learn.",
        "",
        *table(
            [
                "N",
                f"paper rounds to {pct}",
                "FAI, same round",
                "naive, same round",
                "isolated, same round",
                "FAI, of final",
                "naive, of final",
                "isolated, of final",
                "central oracle, of final",
            ],
            rows,
        ),
        "",
    ]
    dv = st["sim_defaults"].get("wire_version", 1)
    v1 = fig["v1"]

    def kb(x: dict | None, digits: int) -> str:
        """A B/node/round figure in KB (mean ± std), '–' when not measured."""
        if x is None:
            return "–"
        return pm({**x, "mean": x["mean"] / KB, "std": x["std"] / KB}, digits)

    rows = []
    for n in sizes:
        t5 = fig["t5"][n]
        p = PAPER_T5.get(n)
        rows.append(
            [
                str(n),
                paper(p[1] if p else None, "{:.1f}%"),
                pct_pm(t5["final_proxy_pct_fai"], scale=1),
                pct_pm(t5["final_Q_pct_fai"], scale=1),
                pct_pm(t5["final_proxy_pct_naive"], scale=1),
                pct_pm(t5["final_Q_pct_naive"], scale=1),
                f"{PAPER_BANDWIDTH_KB} KB",
                pm(t5["gossip_kb"], 1),
                kb(v1[n]["gossip"], 1) if n in v1 else "–",
                pm(t5["repair_kb"], 2),
                kb(v1[n]["repair"], 2) if n in v1 else "–",
            ]
        )
    v1_seeds = sorted({v1[n]["seeds"] for n in sizes if n in v1})
    L += [
        f"Final quality at round {st['rounds']} as % of the central oracle (per seed, then "
        "mean ± std), and bandwidth: gossip bytes each live honest node pushed per round "
        "(mean over rounds) and repair bytes it fetched (v2: baseline block fetches "
        f"included); KB = 1,000 bytes. Quality and the v{dv} bandwidth are the Table 1 runs "
        f"(wire v{dv}, the default); v1 is the same runs with `wire_version=1`"
        + (
            f" ({' or '.join(map(str, v1_seeds))} seed{'s' if v1_seeds != [1] else ''})"
            if v1_seeds
            else " (not run)"
        )
        + ".",
        "",
        *table(
            [
                "N",
                "paper final",
                "FAI final proxy",
                "FAI final Q",
                "naive final proxy",
                "naive final Q",
                "paper bandwidth/node/round",
                f"gossip KB/node/round v{dv}",
                "gossip KB/node/round v1",
                f"repair KB/node/round v{dv}",
                "repair KB/node/round v1",
            ],
            rows,
        ),
        "",
    ]
    rows = []
    for n, b in sorted(fig["bandwidth"].items()):
        o = v1.get(n)
        rows.append(
            [
                str(n),
                f"{b['rounds']} x {b['seeds']}" + (f" / {o['rounds']} x {o['seeds']}" if o else ""),
                pm(b["batches_per_round"], 1),
                pm(b["bytes_per_batch"], 0, True),
                pm(o["bytes_per_batch"], 0, True) if o else "–",
                pm(b["gossip_first_rounds"], 0, True),
                pm(o["gossip_first_rounds"], 0, True) if o else "–",
                pm(b["gossip"], 0, True),
                pm(o["gossip"], 0, True) if o else "–",
                pm(b["repair"], 0, True),
                pm(o["repair"], 0, True) if o else "–",
                pm(b["latency_p95_ms"], 0),
            ]
        )
    if rows:
        fr = st["bandwidth_rounds"]
        L += [
            f"Bandwidth against fleet size, wire v{dv} (Table 1 runs where N is in the grid; "
            f"otherwise one seed of {fr} rounds) beside v1 (the same runs with "
            "`wire_version=1`, where run):",
            "",
            *table(
                [
                    "N",
                    f"rounds x seeds v{dv} / v1",
                    f"batches published per round v{dv}",
                    f"bytes per batch v{dv}",
                    "bytes per batch v1",
                    f"gossip B/node/round, first {fr} rounds, v{dv}",
                    f"gossip B/node/round, first {fr} rounds, v1",
                    f"gossip B/node/round, all rounds, v{dv}",
                    "gossip B/node/round, all rounds, v1",
                    f"repair B/node/round v{dv}",
                    "repair B/node/round v1",
                    f"p95 delivery latency ms v{dv}",
                ],
                rows,
            ),
            "",
            "Every node of a topic receives every batch published on it, so per-node gossip "
            "grows with the number of publishers on the node's topics, not with the fanout "
            "alone." + gossip_sentence(fig, dv),
            "",
        ]

    # Plots
    L += [
        "## Plots",
        "",
        f"![retrieval proxy by round]({img_rel}/convergence.png)",
        "",
        "Retrieval proxy against round, mean over seeds with a ± 1 std band, one panel per N.",
        "",
        f"![robustness]({img_rel}/robustness.png)",
        "",
        f"Final retrieval proxy against the Byzantine fraction at N = {rn}, naive averaging "
        "dashed, FAI solid, central oracle dash-dotted, isolated dotted; error bars ± 1 std "
        "over seeds.",
        "",
        f"![bandwidth]({img_rel}/bandwidth.png)",
        "",
        "Gossip and repair bytes per node per round against N, with the paper's constant "
        f"{PAPER_BANDWIDTH_KB} KB"
        + (
            f"; solid: wire v{fig['settings']['sim_defaults'].get('wire_version', 1)} (the "
            "default runs), dashed: the same runs in wire v1"
            if fig["v1"] and fig["settings"]["sim_defaults"].get("wire_version", 1) != 1
            else ""
        )
        + ".",
        "",
    ]

    # Regenerate
    cpu = fig["cpu"]
    L += [
        "## Regenerate",
        "",
        "```sh",
        " ".join([".venv/bin/python bench/evaluate.py", shlex.join(s.argv)]).strip(),
        "```",
        "",
        f"Finished runs are cached under `{s.cache_display}` (keyed by config and a hash of "
        f"the fai_core code the simulator imports, here `{st['code']}`), so a rerun only "
        "redoes what changed. This grid: "
        f"{cpu['runs']} simulator runs, {cpu['total_s']:,.0f} CPU-seconds in total, the "
        f"longest {cpu['max_s']:,.0f} s; `--jobs` runs them in parallel. "
        "`.venv/bin/python bench/evaluate.py --quick` is a smoke test of the whole pipeline "
        "on a toy grid (written under the temp directory).",
        "",
    ]
    return "\n".join(L)


NOTES_PLACEHOLDER = "<!-- NOTES: placeholder, to be written by hand -->\n\n_To be written._"


def pct_pm(x: dict | None, scale: float = 100) -> str:
    if x is None:
        return "–"
    if x["n"] > 1:
        return f"{scale * x['mean']:.1f} ± {scale * x['std']:.1f}%"
    return f"{scale * x['mean']:.1f}%"


def existing_notes(path: Path) -> str | None:
    """The hand-written body of an existing file's Notes section, kept across regenerations."""
    if not path.exists():
        return None
    lines = path.read_text(encoding="utf-8").splitlines()
    if "## Notes" not in lines:
        return None
    start = lines.index("## Notes") + 1
    end = next((i for i in range(start, len(lines)) if lines[i].startswith("## ")), len(lines))
    body = "\n".join(lines[start:end]).strip()
    return None if not body or body == NOTES_PLACEHOLDER.strip() else body


# -- plots -----------------------------------------------------------------------------------


def coincident_groups(series: dict[str, object], rtol: float = 1e-9) -> list[list[str]]:
    """Names whose series are numerically equal (same length, equal within float noise),
    in `series` order; only groups of two or more. Coinciding curves are drawn on top of
    each other, so a reader must be told, from the data, rather than see a line missing."""
    groups: list[list[str]] = []
    for name, values in series.items():
        a = np.asarray(values, dtype=float)
        for group in groups:
            b = np.asarray(series[group[0]], dtype=float)
            if a.shape == b.shape and np.allclose(a, b, rtol=rtol, atol=1e-12):
                group.append(name)
                break
        else:
            groups.append([name])
    return [g for g in groups if len(g) > 1]


def coincidence_note(panels: dict[str, dict[str, object]]) -> str | None:
    """'oracle, naive and FAI coincide here (identical values)' for the legend, or None
    when every curve differs: per panel (e.g. "N = 50") the methods whose curves are equal."""
    where: dict[tuple[str, ...], list[str]] = {}
    for panel, series in panels.items():
        for group in coincident_groups(series):
            where.setdefault(tuple(group), []).append(panel)
    parts = []
    for group, at in where.items():
        names = [SHORT.get(m, m) for m in group]
        listed = ", ".join(names[:-1]) + " and " + names[-1]
        if len(at) < len(panels):
            place = "at " + ", ".join(at)
        else:
            place = "here" if len(panels) == 1 else "in every panel"
        parts.append(f"{listed} coincide {place}")
    return "; ".join(parts) + " (identical values)" if parts else None


def _legend(f, axes, note: str | None, ncol: int, width: int) -> int:
    """The figure's shared legend, titled with the coincidence note; returns its lines."""
    import textwrap

    handles, labels = axes[0][0].get_legend_handles_labels()
    title = textwrap.fill(note, width) if note else None
    f.legend(
        handles, labels, loc="lower center", ncol=ncol, fontsize=8, title=title, title_fontsize=8
    )
    return title.count("\n") + 1 if title else 0


def convergence_plot(plt, fig: dict, img_dir: Path) -> None:
    """Retrieval proxy by round, one panel per fleet size. Methods often give identical
    curves (FAI on the oracle, say): each keeps its own style and staggered markers, and the
    legend says which coincide, so no method seems to be missing."""
    sizes = list(fig["curves"])
    f, axes = plt.subplots(1, len(sizes), figsize=(4.6 * len(sizes), 3.8), squeeze=False)
    panels = {}
    for ax, n in zip(axes[0], sizes, strict=True):
        c = fig["curves"][n]
        x = np.array(c["round"])
        step = max(len(METHODS), len(x) // 8)
        panels[f"N = {n}"] = {m: c[f"{m}_proxy_mean"] for m in METHODS}
        for i, m in enumerate(METHODS):
            mean, std = np.array(c[f"{m}_proxy_mean"]), np.array(c[f"{m}_proxy_std"])
            style, lw, alpha, marker = STYLE[m]
            # Staggered markers: on coinciding curves each method's marks still show.
            every = (i * step // len(METHODS), step)
            ax.plot(
                x,
                mean,
                style,
                color=COLOR[m],
                label=LABEL[m],
                lw=lw,
                alpha=alpha,
                marker=marker,
                ms=4,
                markevery=every,
            )
            ax.fill_between(x, mean - std, mean + std, color=COLOR[m], alpha=0.15, lw=0)
        ax.set_title(f"N = {n}")
        ax.set_xlabel("round")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("retrieval proxy")
    wide = len(sizes) > 1  # one narrow panel: the legend goes on two lines
    note = coincidence_note(panels)
    extra = _legend(f, axes, note, len(METHODS) if wide else 2, 110 if wide else 60)
    f.tight_layout(rect=(0, (0.08 if wide else 0.16) + 0.04 * extra, 1, 1))
    f.savefig(img_dir / "convergence.png", dpi=120)
    plt.close(f)


def robustness_plot(plt, fig: dict, robust_n: int, img_dir: Path) -> None:
    """Final retrieval proxy against the Byzantine fraction, one panel per attack; the
    legend says which methods coincide (FAI on the oracle, typically)."""
    attack_names = list(fig["robust"])
    cols = min(4, max(1, len(attack_names)))
    rows_n = max(1, math.ceil(len(attack_names) / cols))
    f, axes = plt.subplots(
        rows_n, cols, figsize=(3.6 * cols, 3.0 * rows_n), squeeze=False, sharey=True
    )
    for i, a in enumerate(attack_names):
        ax = axes[i // cols][i % cols]
        cells = list(fig["robust"][a].values())
        x = np.array([c["f"] / c["nodes"] for c in cells])
        for m, style in (("isolated", ":"), ("central", "-."), ("naive", "--"), ("fai", "-")):
            mean = np.array([c[m]["proxy"]["mean"] for c in cells])
            std = np.array([c[m]["proxy"]["std"] for c in cells])
            ax.errorbar(
                x,
                mean,
                yerr=std,
                fmt=style,
                marker=STYLE[m][3],
                ms=4,
                color=COLOR[m],
                label=LABEL[m],
            )
        kept = cells[-1]["byzantine_kept_share"]
        poisoned = cells[-1]["fai"].get("poisoned")
        # The proxy cannot show a filter failure for attacks that send real lessons, nor
        # poisoning that leaves the top hit alone: the title says what DeltaSoup let
        # through at the largest f, and how often it reached an agent's top 3.
        note = f"\nFAI kept {100 * kept['mean']:.1f}% of attack rows" if kept else ""
        if kept and poisoned:
            note += f", poisoned@3 {poisoned['mean']:.2f}"
        ax.set_title(f"{a}{note}", fontsize=9)
        ax.set_xlabel("Byzantine fraction f / N")
        ax.grid(alpha=0.3)
    for j in range(len(attack_names), rows_n * cols):
        axes[j // cols][j % cols].axis("off")
    for row in axes:
        row[0].set_ylabel("retrieval proxy")
    panels = {
        a: {m: [c[m]["proxy"]["mean"] for c in fig["robust"][a].values()] for m in METHODS}
        for a in attack_names
    }
    extra = _legend(f, axes, coincidence_note(panels), 4, 40 * cols)
    f.suptitle(f"Final retrieval proxy at N = {robust_n}", fontsize=11)
    f.tight_layout(rect=(0, (0.1 + 0.04 * extra) / rows_n, 1, 1))
    f.savefig(img_dir / "robustness.png", dpi=120)
    plt.close(f)


def poisoning_plot(plt, fig: dict, img_dir: Path) -> None:
    """Poisoned@3 over rounds at the largest f, per feedback attack: FAI with and without
    outcome feedback, and naive averaging (which merges everything) for scale."""
    fb = fig.get("feedback", {})
    if not fb:
        return
    f, axes = plt.subplots(1, len(fb), figsize=(4.8 * len(fb), 3.6), squeeze=False)
    for ax, (attack, by_f) in zip(axes[0], fb.items(), strict=True):
        label = list(by_f)[-1]
        for mode, style in (("off", "--"), ("on", "-")):
            c = by_f[label][mode]
            ax.plot(c["curve_round"], c["curve_poisoned"], style, color=COLOR["fai"],
                    marker="^", ms=3, label=f"FAI, feedback {mode}")  # fmt: skip
        c = by_f[label]["off"]
        ax.plot(c["curve_round"], c["curve_naive"], ":", color=COLOR["naive"], marker="s", ms=3,
                label="naive averaging")  # fmt: skip
        ax.axhline(simulator.POISON_TARGET, color="black", lw=0.8, alpha=0.5, label="1% target")
        ax.set_title(f"{attack}, f = {label} ({c['f']})", fontsize=10)
        ax.set_xlabel("round")
        ax.set_ylabel(f"poisoned@{simulator.POISON_TOP_K}")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    f.tight_layout()
    f.savefig(img_dir / "poisoning.png", dpi=120)
    plt.close(f)


def plots(fig: dict, s: argparse.Namespace, img_dir: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    img_dir.mkdir(parents=True, exist_ok=True)
    convergence_plot(plt, fig, img_dir)
    robustness_plot(plt, fig, s.robust_n, img_dir)
    poisoning_plot(plt, fig, img_dir)

    bw = sorted(fig["bandwidth"].items())
    v1 = sorted(fig["v1"].items())
    dv = fig["settings"]["sim_defaults"].get("wire_version", 1)
    f, ax = plt.subplots(figsize=(5.6, 4.0))
    if bw:
        n = np.array([k for k, _ in bw], dtype=float)
        series = [(bw, "gossip", f"gossip, wire v{dv}", "tab:blue", "-", "o")]
        series.append((bw, "repair", f"repair, wire v{dv}", "tab:green", "-", "o"))
        if dv != 1 and v1:
            series.append((v1, "gossip", "gossip, wire v1", "tab:blue", "--", "s"))
            series.append((v1, "repair", "repair, wire v1", "tab:green", "--", "s"))
        for rows, key, label, color, ls, marker in series:
            x = np.array([k for k, _ in rows], dtype=float)
            mean = np.array([b[key]["mean"] for _, b in rows])
            std = np.array([b[key]["std"] for _, b in rows])
            keep = mean > 0  # log axis
            if keep.any():
                ax.errorbar(
                    x[keep],
                    mean[keep],
                    yerr=std[keep],
                    marker=marker,
                    ls=ls,
                    color=color,
                    label=label,
                    alpha=0.6 if ls == "--" else 1.0,
                )
        ax.axhline(
            PAPER_BANDWIDTH_KB * KB,
            color="tab:red",
            ls="--",
            label=f"paper: {PAPER_BANDWIDTH_KB} KB/node/round, constant",
        )
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks(n)
        ax.set_xticklabels([str(int(v)) for v in n])
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel("fleet size N")
    ax.set_ylabel("bytes per node per round")
    ax.grid(alpha=0.3, which="both")
    # Below the axes: inside, it would hide points whatever corner it took.
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2)
    f.tight_layout()
    f.savefig(img_dir / "bandwidth.png", dpi=120, bbox_inches="tight")
    plt.close(f)


# -- command line ----------------------------------------------------------------------------


def ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def names(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--jobs", type=int, default=2, help="parallel processes (default 2)")
    p.add_argument("--cache", help="result cache (default bench/.evaluation-cache/)")
    p.add_argument("--rounds", type=int, help="rounds per run (default 100; quick 10)")
    p.add_argument("--sizes", type=ints, help="fleet sizes of Tables 1/5 (default 10,50,100)")
    p.add_argument("--seeds", type=ints, help="seeds (default 42,123,456; quick 42)")
    p.add_argument("--robust-n", type=int, help="N of Table 2 (default 100; quick 10)")
    p.add_argument("--attacks", type=names, help="attacks of Table 2 (default: 13 of them)")
    p.add_argument(
        "--feedback-attacks",
        type=names,
        help="attacks run with and without outcome feedback (default plausible_harmful,"
        "adaptive_harmful,stealth_harmful; '' for none)",
    )
    p.add_argument(
        "--sybil-attacks",
        type=names,
        help="attacks of the Sybil comparison (default plausible_harmful,domain_spoof; '' for "
        "none)",
    )
    p.add_argument(
        "--bandwidth-sizes",
        type=ints,
        help="N of the bandwidth table (default 10,50,100,200,500; N outside --sizes: one "
        "seed, --bandwidth-rounds rounds)",
    )
    p.add_argument("--bandwidth-rounds", type=int, help="rounds of extra runs (default 20)")
    p.add_argument(
        "--share-check-sizes",
        type=ints,
        help="N at which share=False is run beside share=True (default 10,50; '' for none)",
    )
    p.add_argument("--eval-every", type=int, help="evaluation interval of Table 1/5 runs (1)")
    p.add_argument(
        "--v1-seeds",
        type=ints,
        help="seeds of the wire version 1 runs beside the bandwidth runs (default: --seeds; "
        "'' for none)",
    )
    p.add_argument("--quick", action="store_true", help="toy grid for a smoke test")
    p.add_argument("--out-md", help="Markdown output (default docs/evaluation.md)")
    p.add_argument("--img-dir", help="PNG output (default docs/img)")
    p.add_argument("--json", action="store_true", help="print the aggregated figures as JSON")
    s = p.parse_args(argv)
    s.argv = argv
    quick_dir = Path(tempfile.gettempdir()) / "fai-evaluation-quick"
    defaults = {
        "rounds": (100, 10),
        "sizes": ([10, 50, 100], [10]),
        "seeds": (list(SEEDS), [SEEDS[0]]),
        "robust_n": (100, 10),
        "attacks": (list(DEFAULT_ATTACKS), list(QUICK_ATTACKS)),
        "feedback_attacks": (list(FEEDBACK_ATTACKS), ["plausible_harmful"]),
        "sybil_attacks": (list(SYBIL_ATTACKS), ["plausible_harmful"]),
        "bandwidth_sizes": ([10, 50, 100, 200, 500], [10, 20]),
        "bandwidth_rounds": (20, 10),
        "share_check_sizes": ([10, 50], [10]),
        "eval_every": (1, 1),
        "out_md": (str(ROOT / "docs" / "evaluation.md"), str(quick_dir / "evaluation.md")),
        "img_dir": (str(ROOT / "docs" / "img"), str(quick_dir / "img")),
    }
    for name, (full, quick) in defaults.items():
        if getattr(s, name) is None:
            setattr(s, name, quick if s.quick else full)
    if s.v1_seeds is None:
        s.v1_seeds = list(s.seeds)
    s.cache_display = s.cache or "bench/.evaluation-cache/"
    s.cache = Path(s.cache) if s.cache else ROOT / "bench" / ".evaluation-cache"
    unknown = [
        a for a in [*s.attacks, *s.feedback_attacks, *s.sybil_attacks] if a not in adversary.ATTACKS
    ]
    if unknown:
        p.error(f"unknown attack(s) {unknown}; known: {', '.join(adversary.ATTACKS)}")
    if not s.sizes or not s.seeds or s.rounds < 1 or s.eval_every < 1 or s.robust_n < 2:
        p.error("need at least one size and seed, rounds >= 1, eval-every >= 1, robust-n >= 2")
    return s


def main(argv: list[str] | None = None) -> None:
    s = parse_args(sys.argv[1:] if argv is None else argv)
    for var in THREAD_ENV:  # inherited by the spawned workers before they import numpy
        os.environ.setdefault(var, "1")
    fp = code_fingerprint()
    plan = make_plan(s)
    results = run_grid(plan_configs(plan), s.cache, s.jobs, fp)
    if code_fingerprint() != fp:
        log("warning: fai_core/ or fai_eval/ changed during the grid; results may mix code")
    fig = figures(s, plan, results, fp)
    out_md, img_dir = Path(s.out_md), Path(s.img_dir)
    plots(fig, s, img_dir)
    img_rel = os.path.relpath(img_dir.resolve(), out_md.resolve().parent)
    text = markdown(fig, s, existing_notes(out_md), Path(img_rel).as_posix())
    out_md.parent.mkdir(parents=True, exist_ok=True)
    out_md.write_text(text, encoding="utf-8")
    log(f"wrote {out_md} and {img_dir}/{{convergence,robustness,poisoning,bandwidth}}.png")
    if s.json:
        print(json.dumps(fig, indent=2, default=str))


if __name__ == "__main__":
    main()
