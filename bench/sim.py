"""Simulator scale: N = 1,000 nodes for 100 rounds (target: <= 10 minutes on 2 cores).

Runs `fai_eval.sim` once (FAI's real encoder, verifier, DeltaSoup and library merge; see
docs/evaluation.md) and reports wall time, where the CPU went, and the run's headline
figures. Single process: the simulator does not use the second core.

    .venv/bin/python bench/sim.py [--nodes 1000] [--rounds 100] [--json]
"""

from __future__ import annotations

import argparse
import json
import resource
import time

from fai_eval.sim.simulator import METHODS, SimConfig, Simulation


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--eval-every", type=int, default=10)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    config = SimConfig(
        nodes=args.nodes, rounds=args.rounds, seed=args.seed, eval_every=args.eval_every
    )
    t0 = time.perf_counter()
    report = Simulation(config).run()
    wall = time.perf_counter() - t0
    timing, net = report["timing"], report["network"]
    out = {
        "nodes": args.nodes,
        "rounds": args.rounds,
        "wall_s": round(wall, 1),
        "target_s": 600,
        "node_rounds_per_s": round(args.nodes * args.rounds / wall, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "cpu_s": {k[4:-2]: round(v, 1) for k, v in timing.items() if k.startswith("cpu_")},
        "deltasoup_runs": timing["soup_runs"],
        "receivers_at_end": timing["receivers_at_end"],
        "batches": net["batches"],
        "deliveries": net["deliveries"],
        "gossip_kb_per_node_per_round": round(net["gossip_bytes_per_node_per_round"] / 1000, 1),
        "latency_p50_p95_ms": [net["latency_p50_ms"], net["latency_p95_ms"]],
        "failures": net["failures"],
        "final_proxy": {m: round(report["final"][m]["proxy"], 4) for m in METHODS},
    }
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        for k, v in out.items():
            print(f"{k:30} {v}")


if __name__ == "__main__":
    main()
