"""`fai sim`: the fleet simulator from the command line (no network, no chain).

The simulator itself lives in fai_core.sim; this only parses flags and prints what a run
measured. `bench/evaluate.py` drives the full grid behind docs/evaluation.md.
"""

from __future__ import annotations

import argparse
import json
import sys


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _probability(text: str) -> float:
    value = float(text)
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError("must lie in [0, 1)")
    return value


def _byzantine(text: str) -> str:
    try:
        byzantine_count(text, 100)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def byzantine_count(spec: str, nodes: int) -> int:
    """'5' -> 5; 'N/3' or '1/3' -> a third of the nodes, rounded down; '10%' -> a tenth."""
    usage = "a count (5), a fraction of N (N/3, 1/4) or a percentage (10%)"
    try:
        if spec.endswith("%"):
            percent = int(spec[:-1])
            if not 0 <= percent < 100:
                raise ValueError
            return nodes * percent // 100
        if "/" in spec:
            num_text, den_text = (x.strip() for x in spec.split("/", 1))
            num = 1 if num_text.upper() == "N" else int(num_text)
            den = int(den_text)
            if den <= 0 or not 0 <= num < den:
                raise ValueError
            return nodes * num // den
        count = int(spec)
        if count < 0:
            raise ValueError
        return count
    except ValueError:
        raise ValueError(f"--byzantine {spec!r}: expected {usage}") from None


def _sim(args: argparse.Namespace) -> int:
    from fai_core.sim.adversary import ATTACKS
    from fai_core.sim.simulator import METHODS, SimConfig, Simulation

    if args.list_attacks:
        for name, what in ATTACKS.items():
            print(f"{name:22} {what}")
        return 0
    f = byzantine_count(args.byzantine, args.nodes)
    if not 0 <= f < args.nodes:
        raise ValueError(f"--byzantine {args.byzantine} gives {f} of {args.nodes} nodes")
    if args.attack not in ATTACKS:
        raise ValueError(f"unknown attack {args.attack!r} (see --list-attacks)")
    config = SimConfig(
        nodes=args.nodes,
        rounds=args.rounds,
        seed=args.seed,
        byzantine=f,
        attack=args.attack,
        fail_prob=args.fail_prob,
        loss=args.loss,
        eval_every=min(args.eval_every, args.rounds),
        share=not args.exact,
    )

    def progress(done: int, total: int) -> None:
        if not args.json and sys.stderr.isatty():
            print(f"\rround {done}/{total}", end="" if done < total else "\n", file=sys.stderr)

    report = Simulation(config).run(progress)
    if args.json:
        print(json.dumps(report, indent=2, default=float))
        return 0
    final, net, soup, timing = (
        report["final"],
        report["network"],
        report["deltasoup"],
        report["timing"],
    )
    print(
        f"{args.nodes} nodes ({f} Byzantine, attack {args.attack}), {args.rounds} rounds, "
        f"seed {args.seed}"
    )
    head = ("retrieval proxy", "poisoned@3", "Q (Def. 8)", "library")
    print(f"{'method':10} {head[0]:>16} {head[1]:>11} {head[2]:>11} {head[3]:>8}")
    for m in METHODS:
        row = final[m]
        print(
            f"{m:10} {row['proxy']:16.3f} {row['poisoned']:11.3f} {row['Q']:11.3f} "
            f"{row['library']:8.1f}"
        )
    lat = net["latency_p50_ms"], net["latency_p95_ms"]
    print(
        f"batches {net['batches']}, {net['experiences_per_batch']:.2f} experiences and "
        f"{net['bytes_per_batch']:.0f} bytes per honest batch; "
        f"gossip {net['gossip_bytes_per_node_per_round'] / 1000:.1f} KB/node/round; "
        f"delivery p50/p95 {lat[0]:.0f}/{lat[1]:.0f} ms"
    )
    kept = soup["byzantine_kept_share"]
    print(
        f"DeltaSoup: honest rows kept {soup['honest_retention']:.3f}"
        + (f", Byzantine rows kept {kept:.3f}" if kept is not None else "")
        + f"; failures {net['failures']}, rejoins {net['rejoins']}, "
        f"repaired {net['repaired']}; {timing['wall_s']:.1f} s"
    )
    return 0


def add_sim_command(commands) -> None:
    sim = commands.add_parser(
        "sim",
        help="simulate a fleet: isolated, central oracle, naive averaging and FAI",
        description="Discrete-event simulation of N nodes sharing experiences over gossip "
        "(fanout 8, latency U(10,100) ms, 1%% loss, failures and rejoins), running FAI's "
        "real encoder, verifier, DeltaSoup and library merge. docs/evaluation.md explains "
        "the model and its metrics.",
    )
    sim.add_argument("--nodes", type=_positive, default=10, help="fleet size (default 10)")
    sim.add_argument("--rounds", type=_positive, default=100, help="60 s rounds (default 100)")
    sim.add_argument("--seed", type=int, default=42, help="random seed (default 42)")
    sim.add_argument(
        "--byzantine",
        type=_byzantine,
        default="0",
        help="Byzantine nodes: a count, N/3 or 10%% (default 0)",
    )
    sim.add_argument("--attack", default="random_signs", help="see --list-attacks")
    sim.add_argument("--list-attacks", action="store_true", help="list the attacks and exit")
    sim.add_argument(
        "--fail-prob", type=_probability, default=0.002, help="per node and round (0.002)"
    )
    sim.add_argument("--loss", type=_probability, default=0.01, help="per hop (default 0.01)")
    sim.add_argument("--eval-every", type=_positive, default=5, help="rounds between metrics")
    sim.add_argument(
        "--exact",
        action="store_true",
        help="one DeltaSoup per node (slower; no shared receivers)",
    )
    sim.add_argument("--json", action="store_true", help="print the full report as JSON")
    sim.set_defaults(handler=_sim)
