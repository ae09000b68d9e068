"""`fai sim`: the fleet simulator from the command line (no network, no chain).

The simulator itself lives in fai_eval.sim; this only parses flags and prints what a run
measured. `bench/evaluate.py` drives the full grid behind docs/evaluation.md.
"""

from __future__ import annotations

import argparse
import json
import sys

#: SimConfig.sybils' choices (fai_eval.sim.simulator.SYBIL_MODES; not imported here, so
#: that `fai --help` does not load the simulator).
SYBIL_MODES = ("none", "open", "registry")


def _int_at_least(minimum: int, name: str):
    """An argparse type: an integer of at least `minimum` (`name` is what argparse shows)."""

    def parse(text: str) -> int:
        value = int(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    parse.__name__ = name
    return parse


_positive = _int_at_least(1, "_positive")
_count = _int_at_least(0, "_count")


def _probability(text: str) -> float:
    value = float(text)
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError("must lie in [0, 1)")
    return value


def _non_negative(text: str) -> float:
    value = float(text)
    if not value >= 0.0:
        raise argparse.ArgumentTypeError(f"must be at least 0, got {text}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0.0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
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
    from fai_eval.sim.adversary import ATTACKS
    from fai_eval.sim.simulator import SimConfig, Simulation

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
        wire_version=args.wire_version,
        feedback=args.feedback,
        feedback_noise=args.feedback_noise,
        sybils=args.sybils,
        sybil_identities=args.sybil_identities,
        sybil_budget=args.sybil_budget,
        min_bond=args.min_bond,
        adaptive_rounds=args.adaptive_rounds,
    )

    def progress(done: int, total: int) -> None:
        if not args.json and sys.stderr.isatty():
            print(f"\rround {done}/{total}", end="" if done < total else "\n", file=sys.stderr)

    report = Simulation(config).run(progress)
    if args.json:
        print(json.dumps(report, indent=2, default=float))
        return 0
    print(format_report(report))
    return 0


def _figure(value: float | None, spec: str, reason: str) -> str:
    """A figure, or "n/a (reason)" when the run leaves it undefined: a tiny fleet has no
    delivery latency or no received rows, and that must read as such, not crash or read 0."""
    return f"n/a ({reason})" if value is None else format(value, spec)


def format_report(report: dict) -> str:
    """The human-readable summary of one run (the --json report, condensed).

    Some figures are undefined for legal fleets (one node has no peers; a few nodes may
    share no domain, so no batch is delivered), so each is shown as "n/a (why)" instead.
    """
    from fai_eval.sim.simulator import METHODS
    from fai_net.cli.node import plural

    cfg, final = report["config"], report["final"]
    lines = [
        f"{plural(cfg['nodes'], 'node')} ({cfg['byzantine']} Byzantine, attack "
        f"{cfg['attack']}), {plural(cfg['rounds'], 'round')}, seed {cfg['seed']}",
        f"{'method':10} {'retrieval proxy':>16} {'poisoned@3':>11} {'Q (Def. 8)':>11} "
        f"{'library':>8}",
    ]
    columns = (("proxy", ".3f", 16), ("poisoned", ".3f", 11), ("Q", ".3f", 11))
    for m in METHODS:
        row = final.get(m, {})
        cells = [_figure(row.get(k), spec, "not evaluated").rjust(w) for k, spec, w in columns]
        cells.append(_figure(row.get("library"), ".1f", "not evaluated").rjust(8))
        lines.append(f"{m:10} " + " ".join(cells))
    lines += [_network_line(report), _soup_line(report)]
    if "adversary" in report:
        lines.append(_adversary_line(report))
    return "\n".join(lines)


def _adversary_line(report: dict) -> str:
    """Runs with feedback, Sybils or a plausible attack: identities, FAI's poisoned@3 per
    evaluated round, and what the agents' outcome reports did."""
    adv = report["adversary"]
    curve = ", ".join(f"{p['round']}: {p['fai']:.3f}" for p in adv["poisoned_by_round"])
    target = adv["fai_poisoned_within_target_from_round"]
    reached = "never" if target is None else f"from round {target}"
    text = (
        f"attack identities {adv['byzantine_identities']} ({adv['sybils']} Sybils); "
        f"FAI poisoned@3 by round {curve}; <= {adv['poison_target']:.0%} {reached}"
    )
    fb = adv.get("feedback")
    if fb:
        text += (
            f"; feedback: {fb['reports_on_byzantine_rows']} reports on attack rows, "
            f"{fb['reports_on_honest_rows']} on honest ones, attack rows muted "
            f"{fb['byzantine_rows_muted']}, honest rows muted {fb['honest_rows_muted']}"
        )
    return text


def _network_line(report: dict) -> str:
    """Batches, their size, gossip traffic and delivery latency."""
    net = report["network"]
    if net["honest_batches"]:
        size = (
            f"{net['experiences_per_batch']:.2f} experiences and "
            f"{net['bytes_per_batch']:.0f} bytes per honest batch"
        )
    else:
        size = "size per honest batch " + _figure(None, "", "no honest batch was published")
    if net["latency_p50_ms"] is None or net["latency_p95_ms"] is None:
        latency = _figure(None, "", _no_delivery(report["config"]["nodes"]))
    else:
        latency = f"{net['latency_p50_ms']:.0f}/{net['latency_p95_ms']:.0f} ms"
    return (
        f"batches {net['batches']}, {size}; "
        f"gossip {net['gossip_bytes_per_node_per_round'] / 1000:.1f} KB/node/round; "
        f"delivery p50/p95 {latency}"
    )


def _no_delivery(nodes: int) -> str:
    """Why a run has no delivery latency: nothing was delivered, for one of two reasons."""
    if nodes == 1:
        return "a single node has no peers"
    return "no batch reached another node: in a small fleet nodes may share no domain"


def _soup_line(report: dict) -> str:
    """DeltaSoup's retention, and the failures the network saw."""
    soup, net, timing = report["deltasoup"], report["network"], report["timing"]
    honest = soup["honest_retention"] if soup["honest_rows_received"] else None
    byzantine = ""  # a run without Byzantine nodes has nothing to say about them
    if report["config"]["byzantine"]:
        kept = _figure(soup["byzantine_kept_share"], ".3f", "no Byzantine row was received")
        byzantine = f", Byzantine rows kept {kept}"
    return (
        f"DeltaSoup: honest rows kept "
        f"{_figure(honest, '.3f', 'no honest row was received')}{byzantine}"
        f"; failures {net['failures']}, rejoins {net['rejoins']}, "
        f"repaired {net['repaired']}; {timing['wall_s']:.1f} s"
    )


def add_sim_command(commands) -> None:
    sim = commands.add_parser(
        "sim",
        help="simulate a fleet: isolated, central oracle, naive averaging and FAI",
        description="Discrete-event simulation of N nodes sharing experiences over gossip "
        "(fanout 8, latency U(10,100) ms, 1% loss, failures and rejoins), running FAI's "
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
    sim.add_argument(
        "--wire-version",
        type=int,
        choices=(1, 2),
        default=2,
        help="wire format honest nodes publish (default 2: baseline by reference)",
    )
    sim.add_argument(
        "--feedback",
        action="store_true",
        help="agents recall for their tasks and report outcomes; recall ranks by utility and "
        "standing, and sources that keep hurting are muted",
    )
    sim.add_argument(
        "--feedback-noise",
        type=_non_negative,
        default=0.3,
        help="std of a reported reward around the lesson's hidden value (default 0.3)",
    )
    sim.add_argument(
        "--sybils",
        choices=SYBIL_MODES,
        default="none",
        help="identities per Byzantine node: none (one), open (--sybil-identities free "
        "keys), registry (floor(--sybil-budget / --min-bond) bonded keys)",
    )
    sim.add_argument(
        "--sybil-identities", type=_positive, default=1, help="open mode: keys per attacker"
    )
    sim.add_argument(
        "--sybil-budget",
        type=_non_negative,
        default=10.0,
        help="registry mode: tokens per attacker (default 10)",
    )
    sim.add_argument(
        "--min-bond",
        type=_positive_float,
        default=10.0,
        help="registry mode: the minimum bond per identity in tokens (default 10, D_min)",
    )
    sim.add_argument(
        "--adaptive-rounds",
        type=_count,
        default=20,
        help="adaptive_harmful: honest rounds before it turns harmful (default 20)",
    )
    sim.add_argument("--json", action="store_true", help="print the full report as JSON")
    sim.set_defaults(handler=_sim)
